//! Cluster mode: tenant rate limits and quotas shared by every replica through Redis.
//!
//! A tenant's quota count for a calendar period is one more key (`<prefix><tenant>:quota:<period
//! start>`), expiring at the period's end, checked and incremented by the same script as the
//! rate: a quota costs no extra round trip.
//! Each tenant's GCRA state (its "theoretical arrival time") is one Redis key, updated
//! atomically by a Lua script (`EVALSHA`, falling back to `EVAL` once) that takes the time from
//! Redis `TIME`, so replicas' clocks do not matter; the key expires when the bucket would be full
//! again. A request pays at most one round trip, bounded by `timeout_ms` (default 10 ms). After
//! `failure_threshold` failures in a row a circuit breaker skips Redis for `open_ms`, then lets
//! one probe through. While Redis cannot answer, `on_error` decides: `local` (each replica
//! enforces its share, the tenant's rate divided by `replicas`), `allow`, or `deny` (503).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::limits::Rate;

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
    pub replicas: u32,
    pub failure_threshold: u32,
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
/// quota key for the current period. ARGV[1]: emission interval (ms; 0 = no rate), ARGV[2]:
/// burst, ARGV[3]: quota (0 = none), ARGV[4]: the quota key's TTL (s).
/// Returns {1 allowed | 0 rate limited | 2 over quota, retry_after_ms, remaining, quota_used}.
/// A refused request takes nothing: over quota leaves the rate state alone, and a rate-limited
/// request is not counted against the quota.
const GCRA_LUA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local qlimit = tonumber(ARGV[3])
local now, new_tat, remaining = 0, 0, 0
if interval > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  local tolerance = interval * burst
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  new_tat = tat + interval
  local allow_at = new_tat - tolerance
  if allow_at > now then
    return {0, math.ceil(allow_at - now), 0, -1}
  end
  remaining = math.floor((now + tolerance - new_tat) / interval)
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
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
end
return {1, 0, remaining, used}
"#;

/// The Redis side of cluster limits; lives as long as the gateway (survives reloads).
pub struct RedisStore {
    pub settings: RedisSettings,
    conn: ConnectionManager,
    script: redis::Script,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open (0: closed).
    open_until: AtomicU64,
    epoch: Instant,
    degraded: AtomicBool,
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
    Timeout,
    Error,
}

impl RedisStore {
    /// Creates the store without connecting: the connection is made lazily and re-made by the
    /// connection manager, so a gateway starts (and serves, per `on_error`) while Redis is down.
    pub fn new(settings: RedisSettings) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| e.to_string())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        Ok(Arc::new(Self {
            settings,
            conn,
            script: redis::Script::new(GCRA_LUA),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
            degraded: AtomicBool::new(false),
        }))
    }

    /// True while the breaker is open or the last call failed.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Open breaker: skip Redis, except for one probe once the open period is over.
    fn may_call(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        // Exactly one caller wins the probe; the others keep skipping for another period.
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    now + self.settings.open_for.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn record(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            self.open_until.store(0, Ordering::Relaxed);
            self.degraded.store(false, Ordering::Relaxed);
            return;
        }
        self.degraded.store(true, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.settings.failure_threshold && self.open_until.load(Ordering::Relaxed) == 0 {
            let until = self.now_ms() + self.settings.open_for.as_millis() as u64;
            self.open_until.store(until.max(1), Ordering::Relaxed);
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
        if !self.may_call() {
            return Err(StoreUnavailable::BreakerOpen);
        }
        let mut conn = self.conn.clone();
        let interval_ms = rate.map_or(0.0, |r| 1000.0 / f64::from(r.per_second));
        let full_key = format!("{}{key}", self.settings.key_prefix);
        let quota_key = match quota {
            Some(q) => self.quota_key(key, q.period_start),
            None => format!("{full_key}:quota:none"),
        };
        let mut invocation = self.script.key(full_key);
        invocation
            .key(quota_key)
            .arg(interval_ms)
            .arg(rate.map_or(0, |r| r.burst))
            .arg(quota.map_or(0, |q| q.limit))
            .arg(quota.map_or(1, |q| q.ttl_secs));
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn);
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok((verdict, retry_ms, remaining, used))) => {
                self.record(true);
                let used = u64::try_from(used).ok();
                Ok(match verdict {
                    1 => Decision::Allowed {
                        remaining: u32::try_from(remaining.max(0)).unwrap_or(0),
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
}

/// A tenant's per-replica share of its rate, for `on_error: local`.
pub fn local_share(rate: Rate, replicas: u32) -> Rate {
    let n = replicas.max(1);
    Rate {
        per_second: (rate.per_second / n).max(1),
        burst: (rate.burst / n).max(1),
    }
}
