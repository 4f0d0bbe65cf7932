//! Usage metering: body byte counters, `GET /tenants/<id>/usage`, the `usage.export` JSON-lines
//! exporter and the `tenant-gateway usage --since` summary.
//!
//! Counters live in each tenant's `TenantStats` (carried across reloads by name); the exporter
//! is owned by the running gateway, not by a snapshot, so a reload neither restarts nor
//! duplicates it. Each flush appends the deltas since the previous successful flush, in one
//! `write` on a file opened with `O_APPEND` (so an external `mv` rotates it safely: the next
//! flush creates a new file); a failed write keeps the deltas for the next flush, so no interval
//! is lost, and the baselines only move after a successful write, so none is written twice.
//! A crash loses at most the interval in progress.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde::{Deserialize, Serialize};

use crate::gateway::Gateway;
use crate::limits::TenantStats;
use crate::quota::{self, Meter};
use crate::snapshot::Snapshot;

/// Compiled `usage:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageSettings {
    /// `usage.state_file`: per-replica quota counts kept across restarts.
    pub state_file: Option<PathBuf>,
    /// `usage.state_interval_s` (default 10).
    pub state_interval: Duration,
    /// `usage.export`.
    pub export: Option<ExportSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    pub path: PathBuf,
    pub interval: Duration,
}

/// Compiles `usage:`, pushing errors with their YAML paths.
pub fn compile(
    errors: &mut crate::config::ConfigErrors,
    raw: Option<&crate::config::raw::RawUsage>,
) -> UsageSettings {
    let Some(raw) = raw else {
        return UsageSettings {
            state_interval: Duration::from_secs(10),
            ..UsageSettings::default()
        };
    };
    let state_s = raw.state_interval_s.unwrap_or(10);
    if state_s == 0 {
        errors.push("usage.state_interval_s", "must be greater than 0");
    }
    let export = raw.export.as_ref().map(|e| {
        let s = e.interval_s.unwrap_or(60);
        if s == 0 {
            errors.push("usage.export.interval_s", "must be greater than 0");
        }
        if e.path.as_os_str().is_empty() {
            errors.push("usage.export.path", "must not be empty");
        }
        ExportSettings {
            path: e.path.clone(),
            interval: Duration::from_secs(s.max(1)),
        }
    });
    UsageSettings {
        state_file: raw.state_file.clone(),
        state_interval: Duration::from_secs(state_s.max(1)),
        export,
    }
}

// === Byte counting ===

/// A body that adds every data byte passing through it to `counter`.
pub struct Counted<B> {
    inner: B,
    stats: Arc<TenantStats>,
    out: bool,
}

impl<B> Counted<B> {
    /// Counts the client's request body into the tenant's `bytes_in`.
    pub fn request(inner: B, stats: Arc<TenantStats>) -> Self {
        Self {
            inner,
            stats,
            out: false,
        }
    }

    /// Counts the response body sent to the client into the tenant's `bytes_out`.
    pub fn response(inner: B, stats: Arc<TenantStats>) -> Self {
        Self {
            inner,
            stats,
            out: true,
        }
    }

    fn counter(&self) -> &AtomicU64 {
        if self.out {
            &self.stats.bytes_out
        } else {
            &self.stats.bytes_in
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.counter()
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response with its body counted into `stats.bytes_out`.
pub fn count_response(
    resp: http::Response<crate::body::ProxyBody>,
    stats: Arc<TenantStats>,
) -> http::Response<crate::body::ProxyBody> {
    resp.map(|b| crate::body::stream(Counted::response(b, stats)))
}

// === GET /tenants/<id>/usage ===

/// The tenant id of an admin path `/tenants/<id>/usage`.
pub fn usage_route(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/tenants/")?.strip_suffix("/usage")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// RFC 3339 UTC, seconds precision.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// The admin answer for `GET /tenants/<id>/usage`: status and JSON body.
///
/// `requests` is the tenant's count in its quota period (the calendar month without a quota):
/// the shared count from Redis in cluster mode when Redis answers, else this replica's. Bytes
/// are this replica's.
pub async fn tenant_usage(gw: &Gateway, id: &str) -> (http::StatusCode, serde_json::Value) {
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

/// One exported line.
#[derive(Debug, Serialize, Deserialize)]
pub struct UsageLine {
    pub tenant: String,
    pub interval_start: String,
    pub interval_end: String,
    pub requests: u64,
    /// Responses by status class: `1xx` .. `5xx` (classes with none are left out).
    pub by_status: BTreeMap<String, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
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

// === tenant-gateway usage --since ===

/// Totals of one tenant over an export file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub by_status: BTreeMap<String, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub lines: u64,
}

/// Parses `--since`: RFC 3339 (`2026-03-01T00:00:00Z`) or Unix seconds.
pub fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| format!("{s:?} is neither RFC 3339 nor Unix seconds"))
}

/// Sums an export file per tenant over the intervals that start at or after `since`.
/// Returns the totals and the number of lines that could not be read.
pub fn sum_export(text: &str, since: i64) -> (BTreeMap<String, Totals>, usize) {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(l) = serde_json::from_str::<UsageLine>(line) else {
            bad += 1;
            continue;
        };
        let Ok(start) = parse_since(&l.interval_start) else {
            bad += 1;
            continue;
        };
        if start < since {
            continue;
        }
        let t = out.entry(l.tenant).or_default();
        t.requests += l.requests;
        for (class, n) in l.by_status {
            *t.by_status.entry(class).or_default() += n;
        }
        t.bytes_in += l.bytes_in;
        t.bytes_out += l.bytes_out;
        t.lines += 1;
    }
    (out, bad)
}

/// Reads and sums `path` (see [`sum_export`]).
pub fn sum_export_file(
    path: &Path,
    since: i64,
) -> std::io::Result<(BTreeMap<String, Totals>, usize)> {
    let text = std::fs::read_to_string(path)?;
    Ok(sum_export(&text, since))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_lines_since_a_time_and_skips_garbage() {
        let text = r#"{"tenant":"acme","interval_start":"2026-03-01T00:00:00Z","interval_end":"2026-03-01T00:01:00Z","requests":3,"by_status":{"2xx":2,"4xx":1},"bytes_in":10,"bytes_out":20}
not json
{"tenant":"acme","interval_start":"2026-02-28T23:59:00Z","interval_end":"2026-03-01T00:00:00Z","requests":100,"by_status":{"2xx":100},"bytes_in":1,"bytes_out":1}
{"tenant":"acme","interval_start":"2026-03-01T00:01:00Z","interval_end":"2026-03-01T00:02:00Z","requests":1,"by_status":{"2xx":1},"bytes_in":5,"bytes_out":6}
{"tenant":"globex","interval_start":"2026-03-01T00:01:00Z","interval_end":"2026-03-01T00:02:00Z","requests":1,"by_status":{"5xx":1},"bytes_in":0,"bytes_out":7}
"#;
        let since = parse_since("2026-03-01T00:00:00Z").expect("since");
        assert_eq!(parse_since(&since.to_string()), Ok(since));
        let (t, bad) = sum_export(text, since);
        assert_eq!(bad, 1);
        assert_eq!(t["acme"].requests, 4);
        assert_eq!(t["acme"].by_status["2xx"], 3);
        assert_eq!((t["acme"].bytes_in, t["acme"].bytes_out), (15, 26));
        assert_eq!(t["globex"].by_status["5xx"], 1);
        assert!(parse_since("yesterday").is_err());
    }
}
