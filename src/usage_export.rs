//! Usage metering, the running part: `GET /tenants/<id>/usage`, the `usage.export` JSON-lines
//! exporter and the state-file writer.
//!
//! The exporter is owned by the running gateway, not by a snapshot, so a reload neither restarts
//! nor duplicates it. Each flush appends the deltas since the previous successful flush, in one
//! `write` on a file opened with `O_APPEND` (so an external `mv` rotates it safely: the next
//! flush creates a new file); a failed write keeps the deltas for the next flush, so no interval
//! is lost, and the baselines only move after a successful write, so none is written twice.
//! A crash loses at most the interval in progress.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::limits::TenantStats;
use crate::quota::{self, Meter};
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::usage::{ExportSettings, UsageLine, rfc3339};

/// The admin answer for `GET /tenants/<id>/usage`: status and JSON body.
///
/// `requests` is the tenant's count in its quota period (the calendar month without a quota):
/// the shared count from Redis in cluster mode when Redis answers, else this replica's. Bytes
/// are this replica's.
pub async fn tenant_usage(gw: &Shared, id: &str) -> (http::StatusCode, serde_json::Value) {
    let snap = gw.snapshot();
    let Some(&tid) = snap.tenant_ids.get(id) else {
        return (
            http::StatusCode::NOT_FOUND,
            serde_json::json!({"error": "unknown_tenant"}),
        );
    };
    let tenant = snap.tenant(tid);
    let meter = gw.meter();
    let now = meter.clock.now();
    let quota = tenant.limits.quota;
    let entry = meter.current(&tenant.name, quota::usage_period(quota), now, &tenant.stats);
    let mut requests = entry.requests;
    let mut shared = false;
    if let (Some(store), Some(_)) = (gw.rate_limit_store(), quota)
        && let Ok(n) = store.quota_used(&tenant.name, entry.start).await
    {
        requests = n;
        shared = true;
    }
    let q = quota.map(|q| q.requests);
    (
        http::StatusCode::OK,
        serde_json::json!({
            "tenant": &*tenant.name,
            "period": entry.period.as_str(),
            "period_start": rfc3339(entry.start),
            "period_end": rfc3339(entry.end),
            "requests": requests,
            "quota": q,
            "remaining": q.map(|q| q.saturating_sub(requests)),
            "bytes_in": entry.bytes_in(&tenant.stats),
            "bytes_out": entry.bytes_out(&tenant.stats),
            "shared": shared,
        }),
    )
}

// === Export ===

/// Cumulative counters of one tenant at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    by_class: [u64; 5],
    bytes_in: u64,
    bytes_out: u64,
}

impl Counts {
    fn read(s: &TenantStats) -> Self {
        let mut by_class = [0; 5];
        for (slot, c) in by_class.iter_mut().zip(&s.responses.by_class) {
            *slot = c.load(Ordering::Relaxed);
        }
        Self {
            by_class,
            bytes_in: s.bytes_in.load(Ordering::Relaxed),
            bytes_out: s.bytes_out.load(Ordering::Relaxed),
        }
    }

    fn minus(self, base: Self) -> Self {
        let mut by_class = [0; 5];
        for (i, slot) in by_class.iter_mut().enumerate() {
            *slot = self.by_class[i].saturating_sub(base.by_class[i]);
        }
        Self {
            by_class,
            bytes_in: self.bytes_in.saturating_sub(base.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(base.bytes_out),
        }
    }

    fn plus(self, other: Self) -> Self {
        let mut by_class = self.by_class;
        for (slot, n) in by_class.iter_mut().zip(other.by_class) {
            *slot += n;
        }
        Self {
            by_class,
            bytes_in: self.bytes_in + other.bytes_in,
            bytes_out: self.bytes_out + other.bytes_out,
        }
    }

    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

struct Tracked {
    stats: Arc<TenantStats>,
    exported: Counts,
}

struct ExportState {
    /// By tenant name; a tenant whose stats were replaced (removed, then added again) is
    /// flushed under its old counters first.
    tracked: HashMap<Box<str>, Tracked>,
    interval_start_ms: i64,
}

/// The `usage.export` writer; one per running gateway.
pub struct Exporter {
    settings: ExportSettings,
    snapshot: Arc<ArcSwap<Snapshot>>,
    meter: Arc<Meter>,
    /// Also serialises flushes (the timer's and the shutdown's).
    state: Mutex<ExportState>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("path", &self.settings.path)
            .finish_non_exhaustive()
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Exporter {
    pub fn new(
        settings: ExportSettings,
        snapshot: Arc<ArcSwap<Snapshot>>,
        meter: Arc<Meter>,
    ) -> Arc<Self> {
        // Whatever the tenants did before the exporter existed is already counted: start from it.
        let snap = snapshot.load();
        let tracked = snap
            .tenants
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    Tracked {
                        exported: Counts::read(&t.stats),
                        stats: t.stats.clone(),
                    },
                )
            })
            .collect();
        let interval_start_ms = meter.clock.now_ms();
        Arc::new(Self {
            settings,
            snapshot,
            meter,
            state: Mutex::new(ExportState {
                tracked,
                interval_start_ms,
            }),
        })
    }

    /// Appends one line per tenant with activity since the last flush. Returns the number of
    /// lines written.
    pub fn flush(&self) -> std::io::Result<usize> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let snap = self.snapshot.load_full();
        let end_ms = self.meter.clock.now_ms();
        let start = rfc3339(state.interval_start_ms.div_euclid(1000));
        let end = rfc3339(end_ms.div_euclid(1000));
        // (name, stats, counts now, delta): the snapshot's tenants, then any tracked tenant the
        // snapshot no longer has (its last requests are exported once, then it is forgotten).
        let mut pending: Vec<(Box<str>, Arc<TenantStats>, Counts, Counts)> = Vec::new();
        let mut replaced: Vec<(Box<str>, Counts)> = Vec::new();
        for t in &snap.tenants {
            let now = Counts::read(&t.stats);
            let base = match state.tracked.get(&t.name) {
                Some(tr) if Arc::ptr_eq(&tr.stats, &t.stats) => tr.exported,
                Some(tr) => {
                    replaced.push((t.name.clone(), Counts::read(&tr.stats).minus(tr.exported)));
                    Counts::default()
                }
                None => Counts::default(),
            };
            pending.push((t.name.clone(), t.stats.clone(), now, now.minus(base)));
        }
        let gone: Vec<Box<str>> = state
            .tracked
            .keys()
            .filter(|n| !snap.tenant_ids.contains_key(&**n))
            .cloned()
            .collect();
        for name in &gone {
            if let Some(tr) = state.tracked.get(name) {
                replaced.push((name.clone(), Counts::read(&tr.stats).minus(tr.exported)));
            }
        }
        let mut out = Vec::new();
        let mut lines = 0;
        let mut write_line = |name: &str, d: Counts| {
            if d.is_zero() {
                return;
            }
            let line = UsageLine {
                tenant: name.to_owned(),
                interval_start: start.clone(),
                interval_end: end.clone(),
                requests: d.by_class.iter().sum(),
                by_status: CLASSES
                    .iter()
                    .zip(d.by_class)
                    .filter(|(_, n)| *n > 0)
                    .map(|(c, n)| ((*c).to_owned(), n))
                    .collect(),
                bytes_in: d.bytes_in,
                bytes_out: d.bytes_out,
            };
            if let Ok(mut v) = serde_json::to_vec(&line) {
                v.push(b'\n');
                out.extend_from_slice(&v);
                lines += 1;
            }
        };
        // One line per tenant and interval, old counters (if replaced) included.
        let mut deltas: BTreeMap<&str, Counts> = BTreeMap::new();
        for (name, d) in replaced
            .iter()
            .map(|(n, d)| (n, d))
            .chain(pending.iter().map(|(n, _, _, d)| (n, d)))
        {
            let e = deltas.entry(name).or_default();
            *e = e.plus(*d);
        }
        for (name, d) in deltas {
            write_line(name, d);
        }
        if !out.is_empty() {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.settings.path)?;
            f.write_all(&out)?;
            f.sync_data()?;
        }
        // Written (or nothing to write): the next interval starts here.
        for name in gone {
            state.tracked.remove(&name);
        }
        for (name, stats, now, _) in pending {
            state.tracked.insert(
                name,
                Tracked {
                    stats,
                    exported: now,
                },
            );
        }
        state.interval_start_ms = end_ms;
        Ok(lines)
    }

    /// Flushes every `interval` until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.settings.interval).await;
            let me = self.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.flush()).await {
                tracing::warn!(path = %self.settings.path.display(), error = %e, "usage export failed; the counts stay for the next interval");
            }
        }
    }
}

/// Saves the meter to `usage.state_file` every `interval` until aborted.
pub async fn save_state_every(
    meter: Arc<Meter>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let (m, s) = (meter.clone(), snapshot.clone());
        let _ = tokio::task::spawn_blocking(move || save_state(&m, &s)).await;
    }
}

/// Writes the state file now (start of shutdown, timer).
pub fn save_state(meter: &Meter, snapshot: &ArcSwap<Snapshot>) {
    let snap = snapshot.load();
    let stats = |name: &str| snap.tenant_ids.get(name).map(|&id| &*snap.tenant(id).stats);
    if let Err(e) = meter.save(stats) {
        tracing::warn!(error = %e, "usage state file not written");
    }
}
