//! Quotas over UTC calendar periods (`plans.<p>.quota: { requests, period }`) and the per-replica
//! usage meter behind them.
//!
//! The [`Meter`] is owned by the running gateway (it outlives reloads) and keyed by tenant name:
//! per tenant, the current period's start, the requests admitted in it on this replica, and the
//! byte counters' baselines. Without a cluster store the meter *is* the quota; with one, Redis
//! holds the shared count and the meter is this replica's share while Redis cannot answer. When
//! `usage.state_file` is set the meter is saved there (temp file + rename, so a reader or a crash
//! sees the old file or the new one, never half of one) every `usage.state_interval_s` and at
//! shutdown, and loaded at start: a restart loses at most one interval of counts.
//!
//! Time comes from a [`Clock`] that tests can set, so month and day boundaries are tested
//! without waiting for them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime};

use crate::limits::TenantStats;

/// A UTC calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Minute,
    Hour,
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// `[start, end)` of the period holding `now` (Unix seconds, UTC).
    pub fn bounds(self, now: i64) -> (i64, i64) {
        let fixed = |len: i64| {
            let start = now.div_euclid(len) * len;
            (start, start + len)
        };
        match self {
            Self::Minute => fixed(60),
            Self::Hour => fixed(3_600),
            Self::Day => fixed(86_400),
            Self::Month => {
                let dt =
                    OffsetDateTime::from_unix_timestamp(now).unwrap_or(OffsetDateTime::UNIX_EPOCH);
                let (year, month) = (dt.year(), dt.month());
                let (next_year, next_month) = match month {
                    Month::December => (year + 1, Month::January),
                    m => (year, m.next()),
                };
                let first = |y: i32, m: Month| {
                    Date::from_calendar_date(y, m, 1)
                        .map(|d| d.midnight().assume_utc().unix_timestamp())
                        .unwrap_or(now)
                };
                (first(year, month), first(next_year, next_month))
            }
        }
    }
}

/// A compiled quota: at most `requests` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSpec {
    pub requests: u64,
    pub period: Period,
}

impl QuotaSpec {
    /// `"quota";q=<n>;w=<period seconds>` for the period holding `now`.
    pub fn policy(&self, now: i64) -> HeaderValue {
        let (start, end) = self.period.bounds(now);
        header(format!("\"quota\";q={};w={}", self.requests, end - start))
    }
}

fn header(s: String) -> HeaderValue {
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("\"quota\""))
}

/// `"quota";r=<left>;t=<seconds to the period's end>`.
pub fn quota_value(remaining: u64, reset_secs: i64) -> HeaderValue {
    header(format!("\"quota\";r={remaining};t={}", reset_secs.max(0)))
}

/// Appends `value` to the header list `name` (one comma-separated list, as the RateLimit draft
/// puts several policies in one field).
pub fn append_policy(headers: &mut http::HeaderMap, name: &http::HeaderName, value: HeaderValue) {
    let joined = match headers.get(name) {
        Some(existing) => {
            let mut v = existing.as_bytes().to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(value.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or(value)
        }
        None => value,
    };
    headers.insert(name.clone(), joined);
}

// === Clock ===

/// Wall-clock time for periods, settable in tests.
#[derive(Debug, Default)]
pub struct Clock {
    /// Unix milliseconds to report instead of the system time; `i64::MIN` (or 0) = system.
    fixed_ms: AtomicI64,
}

impl Clock {
    /// Unix milliseconds now.
    pub fn now_ms(&self) -> i64 {
        match self.fixed_ms.load(Ordering::Relaxed) {
            0 => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            fixed => fixed,
        }
    }

    /// Unix seconds now.
    pub fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Pins the clock at `unix_ms` (tests).
    pub fn set_ms(&self, unix_ms: i64) {
        self.fixed_ms.store(unix_ms, Ordering::Relaxed);
    }

    /// Moves a pinned clock forward (tests).
    pub fn advance(&self, by: Duration) {
        self.fixed_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

// === Meter ===

/// One tenant's current period on this replica.
#[derive(Debug, Clone)]
pub struct Entry {
    pub period: Period,
    pub start: i64,
    pub end: i64,
    /// Requests admitted in this period (by this replica).
    pub requests: u64,
    /// Bytes counted in this period before this process started (from the state file).
    carried_in: u64,
    carried_out: u64,
    /// The tenant's cumulative byte counters when this period (or process) started.
    base_in: u64,
    base_out: u64,
}

impl Entry {
    fn new(period: Period, now: i64, stats: &TenantStats) -> Self {
        let (start, end) = period.bounds(now);
        Self {
            period,
            start,
            end,
            requests: 0,
            carried_in: 0,
            carried_out: 0,
            base_in: stats.bytes_in.load(Ordering::Relaxed),
            base_out: stats.bytes_out.load(Ordering::Relaxed),
        }
    }

    /// Starts a new period when `now` has left this one (or the period kind changed).
    fn roll(&mut self, period: Period, now: i64, stats: &TenantStats) {
        if period != self.period || now < self.start || now >= self.end {
            *self = Self::new(period, now, stats);
        }
    }

    pub fn bytes_in(&self, stats: &TenantStats) -> u64 {
        self.carried_in
            + stats
                .bytes_in
                .load(Ordering::Relaxed)
                .saturating_sub(self.base_in)
    }

    pub fn bytes_out(&self, stats: &TenantStats) -> u64 {
        self.carried_out
            + stats
                .bytes_out
                .load(Ordering::Relaxed)
                .saturating_sub(self.base_out)
    }
}

/// The per-replica usage meter (see the module doc). Owned by the gateway; survives reloads.
#[derive(Debug, Default)]
pub struct Meter {
    entries: DashMap<Box<str>, Arc<Mutex<Entry>>>,
    pub clock: Clock,
    state_file: Option<PathBuf>,
}

/// The period a tenant's usage is counted over: its quota's, else the calendar month.
pub fn usage_period(quota: Option<QuotaSpec>) -> Period {
    quota.map_or(Period::Month, |q| q.period)
}

impl Meter {
    /// A meter that saves to and restores from `state_file` (when set).
    pub fn new(state_file: Option<PathBuf>) -> Self {
        let meter = Self {
            state_file,
            ..Self::default()
        };
        if let Some(path) = &meter.state_file {
            match load_state(path) {
                Ok(state) => meter.restore(state),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "usage state file unreadable; counting from zero")
                }
            }
        }
        meter
    }

    /// The tenant's entry, rolled to the period holding `now`, locked. Never held across an
    /// `.await`.
    pub fn lock<'a>(
        &self,
        name: &str,
        period: Period,
        now: i64,
        stats: &TenantStats,
        slot: &'a mut Option<Arc<Mutex<Entry>>>,
    ) -> MutexGuard<'a, Entry> {
        let cell = match self.entries.get(name) {
            Some(e) => e.clone(),
            None => self
                .entries
                .entry(name.into())
                .or_insert_with(|| Arc::new(Mutex::new(Entry::new(period, now, stats))))
                .clone(),
        };
        let cell = slot.insert(cell);
        let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
        guard.roll(period, now, stats);
        guard
    }

    /// Counts one admitted request for the tenant (when Redis decided, or no quota applies).
    pub fn count(&self, name: &str, period: Period, now: i64, stats: &TenantStats) {
        let mut slot = None;
        self.lock(name, period, now, stats, &mut slot).requests += 1;
    }

    /// A copy of the tenant's current period.
    pub fn current(&self, name: &str, period: Period, now: i64, stats: &TenantStats) -> Entry {
        let mut slot = None;
        self.lock(name, period, now, stats, &mut slot).clone()
    }

    fn restore(&self, state: State) {
        for (name, t) in state.tenants {
            // A count from an earlier period is reset on first use, like any other.
            let (start, end) = t.period.bounds(t.start);
            self.entries.insert(
                name.into(),
                Arc::new(Mutex::new(Entry {
                    period: t.period,
                    start,
                    end,
                    requests: t.requests,
                    carried_in: t.bytes_in,
                    carried_out: t.bytes_out,
                    base_in: 0,
                    base_out: 0,
                })),
            );
        }
    }

    /// Writes the state file (when configured): every tenant's current period, atomically.
    /// `stats` gives a tenant's byte counters by name (from the current snapshot).
    pub fn save<'a>(&self, stats: impl Fn(&str) -> Option<&'a TenantStats>) -> std::io::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let zero = TenantStats::default();
        let mut tenants = BTreeMap::new();
        for e in self.entries.iter() {
            let entry = e.value().lock().unwrap_or_else(|p| p.into_inner()).clone();
            let s = stats(e.key()).unwrap_or(&zero);
            tenants.insert(
                e.key().to_string(),
                SavedTenant {
                    period: entry.period,
                    start: entry.start,
                    requests: entry.requests,
                    bytes_in: entry.bytes_in(s),
                    bytes_out: entry.bytes_out(s),
                },
            );
        }
        let state = State {
            version: 1,
            saved_at: self.clock.now(),
            tenants,
        };
        let bytes = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
        write_atomically(path, &bytes)
    }

    pub fn has_state_file(&self) -> bool {
        self.state_file.is_some()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    version: u32,
    saved_at: i64,
    tenants: BTreeMap<String, SavedTenant>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedTenant {
    period: Period,
    start: i64,
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
}

fn load_state(path: &Path) -> std::io::Result<State> {
    let bytes = crate::files::read_file(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes `bytes` to `path` through a temp file in the same directory, fsynced, then renamed
/// over `path`: readers see the old contents or the new, never a torn file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is synced (best effort).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// What a quota check says about the tenant's period, for the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    pub spec: QuotaSpec,
    pub used: u64,
    pub end: i64,
    pub now: i64,
}

impl QuotaState {
    pub fn remaining(&self) -> u64 {
        self.spec.requests.saturating_sub(self.used)
    }

    /// The `RateLimit-Policy` and `RateLimit` values of the `"quota"` policy.
    pub fn headers(&self) -> (HeaderValue, HeaderValue) {
        (
            self.spec.policy(self.now),
            quota_value(self.remaining(), self.end - self.now),
        )
    }

    /// Until the period ends.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.end - self.now).unwrap_or(0).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .expect("rfc3339")
            .unix_timestamp()
    }

    #[test]
    fn calendar_periods_in_utc() {
        let p = Period::Month;
        assert_eq!(
            p.bounds(ts("2026-01-31T23:59:59Z")),
            (ts("2026-01-01T00:00:00Z"), ts("2026-02-01T00:00:00Z"))
        );
        assert_eq!(
            p.bounds(ts("2026-02-01T00:00:00Z")),
            (ts("2026-02-01T00:00:00Z"), ts("2026-03-01T00:00:00Z"))
        );
        // Leap year February has 29 days; a common year's 28.
        let (s, e) = p.bounds(ts("2028-02-29T12:00:00Z"));
        assert_eq!((e - s) / 86_400, 29);
        let (s, e) = p.bounds(ts("2027-02-28T23:59:59Z"));
        assert_eq!((e - s) / 86_400, 28);
        assert_eq!(e, ts("2027-03-01T00:00:00Z"));
        // December rolls into the next year.
        assert_eq!(
            p.bounds(ts("2026-12-31T23:59:59Z")),
            (ts("2026-12-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            Period::Day.bounds(ts("2026-12-31T23:59:59Z")),
            (ts("2026-12-31T00:00:00Z"), ts("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            Period::Hour.bounds(ts("2026-03-05T10:59:59Z")),
            (ts("2026-03-05T10:00:00Z"), ts("2026-03-05T11:00:00Z"))
        );
        assert_eq!(Period::Minute.bounds(119), (60, 120));
        // Before 1970 still floors downwards.
        assert_eq!(Period::Minute.bounds(-1), (-60, 0));
    }

    #[test]
    fn headers_name_the_quota_policy() {
        let st = QuotaState {
            spec: QuotaSpec {
                requests: 20,
                period: Period::Hour,
            },
            used: 5,
            end: ts("2026-03-05T11:00:00Z"),
            now: ts("2026-03-05T10:59:00Z"),
        };
        let (policy, value) = st.headers();
        assert_eq!(policy, "\"quota\";q=20;w=3600");
        assert_eq!(value, "\"quota\";r=15;t=60");
        let mut h = http::HeaderMap::new();
        h.insert("ratelimit", HeaderValue::from_static("\"tenant\";r=9;t=1"));
        append_policy(&mut h, &http::HeaderName::from_static("ratelimit"), value);
        assert_eq!(h["ratelimit"], "\"tenant\";r=9;t=1, \"quota\";r=15;t=60");
    }

    #[test]
    fn the_meter_resets_at_the_boundary_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("usage.json");
        let stats = TenantStats::default();
        let meter = Meter::new(Some(file.clone()));
        meter.clock.set_ms(ts("2026-01-31T23:59:58Z") * 1000);
        for _ in 0..3 {
            meter.count("acme", Period::Month, meter.clock.now(), &stats);
        }
        stats.bytes_in.fetch_add(100, Ordering::Relaxed);
        meter.save(|_| Some(&stats)).expect("save");

        let again = Meter::new(Some(file.clone()));
        again.clock.set_ms(ts("2026-01-31T23:59:59Z") * 1000);
        let fresh = TenantStats::default();
        let e = again.current("acme", Period::Month, again.clock.now(), &fresh);
        assert_eq!((e.requests, e.bytes_in(&fresh)), (3, 100));
        // Feb 1: a new month starts at zero.
        again.clock.advance(Duration::from_secs(1));
        let e = again.current("acme", Period::Month, again.clock.now(), &fresh);
        assert_eq!((e.requests, e.bytes_in(&fresh)), (0, 0));
        assert_eq!(e.start, ts("2026-02-01T00:00:00Z"));
        // A garbage state file is ignored, never a panic.
        std::fs::write(&file, b"{not json").expect("write");
        let m = Meter::new(Some(file));
        assert_eq!(m.current("acme", Period::Month, 0, &fresh).requests, 0);
    }
}
