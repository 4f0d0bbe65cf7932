//! Cluster mode: tenant rate limits and quotas shared by every replica through Redis.
//!
//! Each tenant's GCRA state (its "theoretical arrival time", integer µs and ns) is one Redis
//! key, updated atomically by a Lua script (`EVALSHA`, falling back to `EVAL` once) that takes
//! the time from Redis `TIME`, so replicas' clocks do not matter; the key expires when the
//! bucket would be full again. A tenant's quota count for a calendar period is one more key
//! (`<prefix><tenant>:quota:<period start>`), expiring at the period's end, checked and
//! incremented by the same script: a quota costs no extra round trip. A request pays at most
//! one round trip, bounded by `timeout_ms` (default 10 ms).
//!
//! Replicas announce themselves every second (`<prefix>_replica:<id>` with a 4 s TTL, and a
//! member of the sorted set `<prefix>_replicas` scored by its expiry), and remember the live
//! count Redis answered. A circuit breaker opens on a failure *rate* over a short window (see
//! [`Breaker`]) and probes again after a jittered delay. While Redis cannot answer, `on_error`
//! decides: `local` (each replica enforces its exact share of the tenant's rate and quota:
//! divided by the last replica count seen, never below `replicas`), `allow`, or `deny` (503).
//! A Redis Cluster node is refused ([`RedisStore::refuse_cluster`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::limits::{Rate, Share};

/// What to do while Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Local,
    Allow,
    Deny,
}

/// Compiled `cluster.rate_limit_store.redis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    pub on_error: OnError,
    pub timeout: Duration,
    /// The floor of the replica count (the count itself is announced in Redis).
    pub replicas: u32,
    /// Failures within `failure_window` before the breaker may open (a minimum)...
    pub failure_threshold: u32,
    /// ... and the share of calls in that window they must be, in percent.
    pub failure_rate_percent: u32,
    pub failure_window: Duration,
    pub open_for: Duration,
    pub key_prefix: String,
}

/// The shared limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `quota_used`: the tenant's shared count in its quota period, this request included.
    Allowed {
        remaining: u32,
        quota_used: Option<u64>,
    },
    Limited {
        retry_after: Duration,
    },
    /// The quota of the period is used up (the rate cell was not taken).
    QuotaExceeded {
        used: u64,
    },
}

/// A quota to check in the same round trip: the key of the tenant's period and its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaCheck {
    pub limit: u64,
    /// The period's start (Unix seconds): part of the key, so each period has its own.
    pub period_start: i64,
    /// Seconds until the period ends (the key's TTL), computed by the gateway's clock.
    pub ttl_secs: i64,
}

/// Rate (GCRA) and quota in one atomic step. KEYS[1]: the tenant's rate key, KEYS[2]: its
/// quota key for the current period. ARGV[1]: emission interval (ns; 0 = no rate), ARGV[2]:
/// tolerance (ns: how far the theoretical arrival time may run ahead of now), ARGV[3]: quota
/// (0 = none), ARGV[4]: the quota key's TTL (s), ARGV[5]: "now" in µs instead of Redis `TIME`
/// (tests only; 0 = `TIME`).
/// Returns {1 allowed | 0 rate limited | 2 over quota, retry_after_ms, remaining, quota_used}.
/// A refused request takes nothing: over quota leaves the rate state alone, and a rate-limited
/// request is not counted against the quota.
///
/// The state is integers: the theoretical arrival time as "<µs>:<ns 0..999>". Lua numbers are
/// doubles, exact up to 2^53: a Unix time in µs (~1.8e15) is, in ns it is not, so the time is
/// kept in µs and the sub-µs part beside it, and all arithmetic is done on differences from
/// now (small numbers). A rate of millions per second (an interval under 1 µs) still advances
/// the state, where milliseconds with three decimals stopped at 2,000,000/s. A value in
/// another format (an older version's) counts as a full bucket. The key expires once the
/// bucket is full again, and lives at least 1 s (a time in the past reads as a full bucket
/// too), so a key of a fast tenant is not dropped and re-made every millisecond.
const GCRA_LUA: &str = r#"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local qlimit = tonumber(ARGV[3])
local now_us, ahead, remaining = 0, 0, 0
if interval > 0 then
  now_us = tonumber(ARGV[5]) or 0
  if now_us <= 0 then
    local t = redis.call('TIME')
    now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  local v = redis.call('GET', KEYS[1])
  if v then
    local us, ns = string.match(v, '^(%d+):(%d+)$')
    if us then
      ahead = (tonumber(us) - now_us) * 1000 + tonumber(ns)
      if ahead < 0 then ahead = 0 end
    end
  end
  ahead = ahead + interval
  if ahead > tolerance then
    return {0, math.ceil((ahead - tolerance) / 1000000), 0, -1}
  end
  remaining = math.floor((tolerance - ahead) / interval)
end
local used = -1
if qlimit > 0 then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= qlimit then
    return {2, 0, remaining, used}
  end
  used = redis.call('INCR', KEYS[2])
  if used == 1 or redis.call('TTL', KEYS[2]) < 0 then
    redis.call('EXPIRE', KEYS[2], math.max(1, tonumber(ARGV[4])))
  end
end
if interval > 0 then
  local us = now_us + math.floor(ahead / 1000)
  local ns = ahead % 1000
  redis.call('SET', KEYS[1], string.format('%.0f:%.0f', us, ns), 'PX', math.max(1000, math.ceil(ahead / 1000000)))
end
return {1, 0, remaining, used}
"#;

/// A replica's announcement. KEYS[1]: the set of live replicas (member: id, score: expiry in
/// Unix ms), KEYS[2]: this replica's own key. ARGV[1]: its id, ARGV[2]: TTL (ms). Refreshes
/// both, drops members whose expiry has passed, returns how many are live: O(log n) per
/// refresh, one round trip, no `SCAN`.
const ANNOUNCE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
"#;

/// How often a replica announces itself, and how long an announcement lives: a replica that
/// stops (crash, network partition) drops out of the count within `ANNOUNCE_TTL`.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
pub const ANNOUNCE_TTL: Duration = Duration::from_secs(4);

/// The Redis side of cluster limits; lives as long as the gateway (survives reloads).
pub struct RedisStore {
    pub settings: RedisSettings,
    conn: ConnectionManager,
    script: redis::Script,
    announce: redis::Script,
    breaker: Breaker,
    degraded: AtomicBool,
    /// This process's id in the replica set.
    replica_id: String,
    /// Live replicas in the last announcement that Redis answered (0: none answered yet).
    replicas_seen: AtomicU32,
    /// Set when the server turned out to be a Redis Cluster node: never used then.
    refused: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.settings.url)
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}

/// Why Redis did not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreUnavailable {
    BreakerOpen,
    /// No answer within the timeout: the script may still have run in Redis.
    Timeout,
    Error,
    /// The server is a Redis Cluster node (refused, see [`RedisStore::refuse_cluster`]).
    Refused,
}

/// A few random bits without a dependency: std's per-process random hash keys, mixed with the
/// time.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl RedisStore {
    /// Creates the store without connecting: the connection is made lazily and re-made by the
    /// connection manager, so a gateway starts (and serves, per `on_error`) while Redis is down.
    pub fn new(settings: RedisSettings) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| e.to_string())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(settings.timeout.max(Duration::from_millis(100))))
            // One connection attempt per loss, no retries with back-off in between: while a
            // reconnect waits, calls wait on it and end in a timeout, which means "maybe
            // charged"; a refused connection should fail them at once ("not charged"). The
            // next call (or the announcer, every second) tries again.
            .set_number_of_retries(0);
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        Ok(Arc::new(Self {
            breaker: Breaker::new(&settings),
            settings,
            conn,
            script: redis::Script::new(GCRA_LUA),
            announce: redis::Script::new(ANNOUNCE_LUA),
            degraded: AtomicBool::new(false),
            replica_id: format!("{}-{:016x}", std::process::id(), random_u64()),
            replicas_seen: AtomicU32::new(0),
            refused: AtomicBool::new(false),
        }))
    }

    /// True while the breaker is open, the last call failed, or the server was refused.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed) || self.refused.load(Ordering::Relaxed)
    }

    /// `closed`, `open` (skipping Redis until a probe) or `refused` (a Redis Cluster node).
    pub fn breaker_state(&self) -> &'static str {
        if self.refused.load(Ordering::Relaxed) {
            "refused"
        } else if self.breaker.is_open() {
            "open"
        } else {
            "closed"
        }
    }

    /// The replicas sharing the limits: the count seen in the last announcement Redis
    /// answered, never below `replicas` (the configured floor). The local fallback divides by
    /// it; while Redis is down it stays at the last count seen.
    pub fn replicas(&self) -> u32 {
        self.replicas_seen
            .load(Ordering::Relaxed)
            .max(self.settings.replicas)
            .max(1)
    }

    fn record(&self, ok: bool) {
        self.degraded.store(!ok, Ordering::Relaxed);
        if self.breaker.record(ok) {
            tracing::warn!(url = %self.settings.url, "rate-limit store failing; circuit open");
        }
    }

    /// The key of a tenant's quota count for the period starting at `period_start`.
    pub fn quota_key(&self, tenant: &str, period_start: i64) -> String {
        format!("{}{tenant}:quota:{period_start}", self.settings.key_prefix)
    }

    /// One shared step for `key`: its rate (GCRA, when `rate` is set) and its quota (when
    /// `quota` is set), in one script and one round trip, within the configured timeout.
    pub async fn check(
        &self,
        key: &str,
        rate: Option<Rate>,
        quota: Option<QuotaCheck>,
    ) -> Result<Decision, StoreUnavailable> {
        self.check_at(key, rate, quota, 0).await
    }

    /// [`Self::check`] with Redis' clock replaced by `now_us` (Unix µs; 0 = Redis `TIME`), so
    /// tests can send many requests at one instant.
    #[doc(hidden)]
    pub async fn check_at(
        &self,
        key: &str,
        rate: Option<Rate>,
        quota: Option<QuotaCheck>,
        now_us: u64,
    ) -> Result<Decision, StoreUnavailable> {
        if self.refused.load(Ordering::Relaxed) {
            return Err(StoreUnavailable::Refused);
        }
        if !self.breaker.may_call() {
            return Err(StoreUnavailable::BreakerOpen);
        }
        let mut conn = self.conn.clone();
        let share = rate.and_then(|r| Share::of(r, 1));
        let full_key = format!("{}{key}", self.settings.key_prefix);
        let quota_key = match quota {
            Some(q) => self.quota_key(key, q.period_start),
            None => format!("{full_key}:quota:none"),
        };
        let mut invocation = self.script.key(full_key);
        invocation
            .key(quota_key)
            .arg(share.map_or(0, |s| s.interval_ns))
            .arg(share.map_or(0, |s| s.tolerance_ns))
            .arg(quota.map_or(0, |q| q.limit))
            .arg(quota.map_or(1, |q| q.ttl_secs))
            .arg(now_us);
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn);
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok((verdict, retry_ms, remaining, used))) => {
                self.record(true);
                let used = u64::try_from(used).ok();
                Ok(match verdict {
                    1 => Decision::Allowed {
                        remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                        quota_used: used,
                    },
                    2 => Decision::QuotaExceeded {
                        used: used.unwrap_or(0),
                    },
                    _ => Decision::Limited {
                        retry_after: Duration::from_millis(
                            u64::try_from(retry_ms.max(1)).unwrap_or(1),
                        ),
                    },
                })
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "rate-limit store error");
                self.record(false);
                Err(StoreUnavailable::Error)
            }
            Err(_) => {
                self.record(false);
                Err(StoreUnavailable::Timeout)
            }
        }
    }

    /// The tenant's shared quota count for the period starting at `period_start` (admin
    /// endpoint); bounded by the timeout, not recorded by the breaker.
    pub async fn quota_used(
        &self,
        tenant: &str,
        period_start: i64,
    ) -> Result<u64, StoreUnavailable> {
        let mut conn = self.conn.clone();
        let key = self.quota_key(tenant, period_start);
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let call = cmd.query_async::<Option<u64>>(&mut conn);
        match tokio::time::timeout(self.settings.timeout.max(Duration::from_millis(100)), call)
            .await
        {
            Ok(Ok(n)) => Ok(n.unwrap_or(0)),
            Ok(Err(_)) => Err(StoreUnavailable::Error),
            Err(_) => Err(StoreUnavailable::Timeout),
        }
    }

    // === Replica announcement ===

    fn replica_keys(&self) -> (String, String) {
        // `_` cannot start a tenant name (a DNS label): no tenant's key collides with these.
        let p = &self.settings.key_prefix;
        (
            format!("{p}_replicas"),
            format!("{p}_replica:{}", self.replica_id),
        )
    }

    /// Announces this replica once; returns the live replica count Redis answered.
    pub async fn announce(&self) -> Result<u32, StoreUnavailable> {
        let (set, own) = self.replica_keys();
        let mut invocation = self.announce.key(set);
        invocation
            .key(own)
            .arg(&self.replica_id)
            .arg(ANNOUNCE_TTL.as_millis() as u64);
        let mut conn = self.conn.clone();
        let call = invocation.invoke_async::<u32>(&mut conn);
        match tokio::time::timeout(self.settings.timeout.max(Duration::from_millis(250)), call)
            .await
        {
            Ok(Ok(n)) => {
                let before = self.replicas_seen.swap(n, Ordering::Relaxed);
                if before != n {
                    tracing::info!(replicas = n, "replicas sharing the limits");
                }
                Ok(n)
            }
            Ok(Err(_)) => Err(StoreUnavailable::Error),
            Err(_) => Err(StoreUnavailable::Timeout),
        }
    }

    /// Leaves the replica set (shutdown), so the others' count drops at once rather than when
    /// the announcement expires. Best effort, bounded.
    pub async fn retire(&self) {
        let (set, own) = self.replica_keys();
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(set)
            .arg(&self.replica_id)
            .ignore()
            .cmd("DEL")
            .arg(own)
            .ignore();
        let mut conn = self.conn.clone();
        let _ = tokio::time::timeout(
            Duration::from_millis(250),
            pipe.query_async::<()>(&mut conn),
        )
        .await;
    }

    /// Announces this replica every [`ANNOUNCE_EVERY`] until the task is aborted. Until the
    /// server has answered once, each round also checks that it is not a Redis Cluster node.
    pub async fn announce_every(self: Arc<Self>) {
        let mut checked = false;
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !checked {
                match self.refuse_cluster().await {
                    Ok(true) => checked = true,
                    Ok(false) => continue,
                    Err(msg) => {
                        tracing::error!("{msg}");
                        return;
                    }
                }
            }
            if let Err(e) = self.announce().await {
                tracing::debug!(error = ?e, "replica announcement failed");
            }
        }
    }

    // === Redis Cluster ===

    /// Asks the server whether it is a Redis Cluster node (`INFO cluster`). Cluster mode is
    /// not supported: the script touches two keys of a tenant and the replica set, which a
    /// cluster would spread over slots and answer with `MOVED`/`CROSSSLOT` per tenant. A
    /// cluster node is refused: Err(the message), and from then on the store is never used
    /// (`on_error` applies). Ok(true): checked, a plain server; Ok(false): no answer (yet).
    pub async fn refuse_cluster(&self) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("INFO");
        cmd.arg("cluster");
        let call = cmd.query_async::<String>(&mut conn);
        let info =
            match tokio::time::timeout(self.settings.timeout.max(Duration::from_millis(500)), call)
                .await
            {
                Ok(Ok(info)) => info,
                _ => return Ok(false),
            };
        if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
            self.refused.store(true, Ordering::Relaxed);
            return Err(format!(
                "cluster.rate_limit_store.redis: {} is a Redis Cluster node (INFO cluster: \
                 cluster_enabled:1); Redis Cluster is not supported, point the gateway at a \
                 standalone Redis (or a Sentinel-managed primary)",
                self.settings.url
            ));
        }
        Ok(true)
    }
}

// === impl Breaker ===

/// The circuit breaker in front of Redis. It opens when, over the last `window`, at least
/// `failure_threshold` calls failed *and* they were at least `failure_rate` percent of the
/// calls (Envoy's outlier detection and resilience4j's breaker work the same way: a rate over a
/// sliding window, with a minimum number of calls). One slow command (a `BGSAVE` fork, a
/// `DEBUG SLEEP`) that times out the calls in flight at that moment is a small share of a busy
/// window and leaves it closed; a real outage fails every call and opens it within a few.
/// Open, it skips Redis for `open_for` with ±50 % jitter (replicas that opened together do not
/// probe together), then lets one probe through: success closes it, failure reopens it.
struct Breaker {
    window: Mutex<Window>,
    /// Milliseconds since `epoch` until which the breaker is open (0: closed).
    open_until: AtomicU64,
    epoch: Instant,
    window_ms: u64,
    failure_threshold: u32,
    failure_rate: u32,
    open_for: Duration,
}

/// Calls and failures of the current window and of the one before it; the previous window
/// counts in proportion to how much of it still overlaps the sliding window.
#[derive(Default)]
struct Window {
    started_ms: u64,
    calls: u32,
    failures: u32,
    prev_calls: u32,
    prev_failures: u32,
}

impl Breaker {
    fn new(settings: &RedisSettings) -> Self {
        Self {
            window: Mutex::new(Window::default()),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
            window_ms: (settings.failure_window.as_millis() as u64).max(1),
            failure_threshold: settings.failure_threshold.max(1),
            failure_rate: settings.failure_rate_percent.clamp(1, 100),
            open_for: settings.open_for,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Relaxed) != 0
    }

    fn jittered_open_for(&self) -> u64 {
        let ms = (self.open_for.as_millis() as u64).max(1);
        ms / 2 + random_u64() % ms.max(1)
    }

    /// Open breaker: skip Redis, except for one probe once the open period is over.
    fn may_call(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        // Exactly one caller wins the probe; the others keep skipping for another period (and
        // if the probe never reports, a new one goes after it).
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    (now + self.jittered_open_for()).max(1),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Records one call's outcome; true when this failure opened the breaker.
    fn record(&self, ok: bool) -> bool {
        let now = self.now_ms();
        if ok && self.open_until.load(Ordering::Relaxed) != 0 {
            // The probe (or a call from before the opening) got through: close, start afresh.
            self.open_until.store(0, Ordering::Relaxed);
            *self.window.lock().unwrap_or_else(|p| p.into_inner()) = Window {
                started_ms: now,
                ..Window::default()
            };
            return false;
        }
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_sub(w.started_ms);
        if elapsed >= 2 * self.window_ms {
            *w = Window {
                started_ms: now,
                ..Window::default()
            };
        } else if elapsed >= self.window_ms {
            *w = Window {
                started_ms: w.started_ms + self.window_ms,
                prev_calls: w.calls,
                prev_failures: w.failures,
                ..Window::default()
            };
        }
        w.calls = w.calls.saturating_add(1);
        if ok {
            return false;
        }
        w.failures = w.failures.saturating_add(1);
        if self.is_open() {
            // A failed probe: stay open for another (jittered) period.
            self.open_until
                .store((now + self.jittered_open_for()).max(1), Ordering::Relaxed);
            return false;
        }
        // The previous window's share still inside the sliding window, in per mille.
        let overlap = 1000 - (now.saturating_sub(w.started_ms) * 1000 / self.window_ms).min(1000);
        let calls = u64::from(w.calls) * 1000 + u64::from(w.prev_calls) * overlap;
        let failures = u64::from(w.failures) * 1000 + u64::from(w.prev_failures) * overlap;
        let open = failures >= u64::from(self.failure_threshold) * 1000
            && failures * 100 >= calls * u64::from(self.failure_rate);
        if open {
            self.open_until
                .store((now + self.jittered_open_for()).max(1), Ordering::Relaxed);
            *w = Window {
                started_ms: now,
                ..Window::default()
            };
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RedisSettings {
        RedisSettings {
            url: "redis://127.0.0.1:1".into(),
            on_error: OnError::Local,
            timeout: Duration::from_millis(10),
            replicas: 1,
            failure_threshold: 5,
            failure_rate_percent: 50,
            failure_window: Duration::from_millis(60_000),
            open_for: Duration::from_millis(60_000),
            key_prefix: "t:".into(),
        }
    }

    #[test]
    fn a_few_failures_among_many_successes_leave_the_breaker_closed() {
        let b = Breaker::new(&settings());
        for _ in 0..100 {
            assert!(!b.record(true));
        }
        // Ten timeouts in a row (a slow command with ten calls in flight) are 9 % of the window.
        for _ in 0..10 {
            assert!(!b.record(false));
        }
        assert!(!b.is_open() && b.may_call());
    }

    #[test]
    fn a_failure_rate_over_the_threshold_opens_it_and_one_probe_goes_through() {
        let b = Breaker::new(&settings());
        for _ in 0..4 {
            assert!(!b.record(true));
        }
        // 4 failures: under the minimum; the 5th is 5 of 9 calls (>= 50 %): open.
        for _ in 0..4 {
            assert!(!b.record(false));
        }
        assert!(b.record(false));
        assert!(b.is_open() && !b.may_call());
        // The open period is jittered around 60 s: between 30 and 90 s from now.
        let until = b.open_until.load(Ordering::Relaxed);
        assert!((30_000..90_100).contains(&until), "{until}");
        // Past it, exactly one caller probes; its success closes the breaker.
        b.open_until.store(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.may_call());
        assert!(!b.may_call());
        assert!(!b.record(true));
        assert!(!b.is_open() && b.may_call());
    }
}
