//! Phase "admit": a tenant's rate limit (GCRA, `governor`), its concurrency cap, and the
//! per-tenant counters the metrics read.
//!
//! Limiters, concurrency caps and counters are runtime state (`runtime::Runtime`): a reload
//! that keeps a tenant's rate keeps its limiter (no fresh burst), a tenant keeps its
//! concurrency slots whatever its cap (a changed cap resizes them, never doubles them), and
//! counters are kept always.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::HeaderValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cluster::{Decision, OnError, QuotaCheck, RedisStore};
use crate::error::GatewayError;
use crate::quota::{self, Meter, QuotaSpec, QuotaState};
use crate::snapshot::Tenant;

/// A tenant's rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, MonotonicClock, StateInformationMiddleware>;

/// The `RateLimit-Policy` / `RateLimit` header names (IETF httpapi ratelimit-headers draft).
pub static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// A tenant's GCRA limiter: `per_second` sustained, `burst` at once.
pub struct TenantLimiter {
    pub rate: Rate,
    gcra: Gcra,
    /// `"tenant";q=<burst>;w=<seconds to refill the burst>`, built once.
    policy: HeaderValue,
}

impl std::fmt::Debug for TenantLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLimiter")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl TenantLimiter {
    pub fn new(rate: Rate) -> Option<Self> {
        let per_second = NonZeroU32::new(rate.per_second)?;
        let burst = NonZeroU32::new(rate.burst)?;
        let quota = Quota::per_second(per_second).allow_burst(burst);
        let window = ceil_secs(Duration::from_secs_f64(
            f64::from(rate.burst) / f64::from(rate.per_second),
        ));
        let policy =
            HeaderValue::try_from(format!("\"tenant\";q={};w={window}", rate.burst)).ok()?;
        Some(Self {
            rate,
            gcra: RateLimiter::direct_with_clock(quota, MonotonicClock)
                .with_middleware::<StateInformationMiddleware>(),
            policy,
        })
    }

    /// Takes one cell. Ok: the `RateLimit` value (remaining, seconds until full). Err: how long
    /// until the next request would be admitted, from the GCRA state.
    pub fn check(&self) -> Result<HeaderValue, Duration> {
        match self.gcra.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let missing = self.rate.burst.saturating_sub(remaining);
                let reset = u64::from(missing).div_ceil(u64::from(self.rate.per_second));
                Ok(ratelimit_value(remaining, reset))
            }
            Err(not_until) => Err(not_until.wait_time_from(MonotonicClock.now())),
        }
    }

    pub fn policy(&self) -> &HeaderValue {
        &self.policy
    }
}

fn ratelimit_value(remaining: u32, reset_secs: u64) -> HeaderValue {
    HeaderValue::try_from(format!("\"tenant\";r={remaining};t={reset_secs}"))
        .unwrap_or_else(|_| HeaderValue::from_static("\"tenant\";r=0;t=1"))
}

/// A tenant's concurrency cap. It outlives reloads (keyed by tenant in the runtime); a reload
/// that changes the cap resizes it: raised, the new slots are free at once; lowered while
/// requests hold slots, the surplus is taken back as they finish, so the cap is never exceeded.
#[derive(Debug)]
pub struct Concurrency {
    max: AtomicU32,
    slots: Arc<Semaphore>,
    /// Slots to take back as they are returned (a lowered cap while they were held).
    debt: AtomicU32,
    held: AtomicU32,
}

impl Concurrency {
    pub fn new(max: u32) -> Self {
        Self {
            max: AtomicU32::new(max),
            slots: Arc::new(Semaphore::new(max as usize)),
            debt: AtomicU32::new(0),
            held: AtomicU32::new(0),
        }
    }

    pub fn max(&self) -> u32 {
        self.max.load(Ordering::Relaxed)
    }

    /// Requests holding a slot now.
    pub fn in_use(&self) -> usize {
        self.held.load(Ordering::Relaxed) as usize
    }

    /// Changes the cap (a reload). Serialised by the reload path.
    pub fn resize(&self, max: u32) {
        let old = self.max.swap(max, Ordering::AcqRel);
        if max > old {
            let mut add = max - old;
            // Slots owed from an earlier lowering are simply not taken back any more.
            while add > 0 {
                let debt = self.debt.load(Ordering::Acquire);
                if debt == 0 {
                    break;
                }
                let pay = debt.min(add);
                if self
                    .debt
                    .compare_exchange(debt, debt - pay, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    add -= pay;
                }
            }
            self.slots.add_permits(add as usize);
        } else if max < old {
            let remove = old - max;
            let forgotten = self.slots.forget_permits(remove as usize) as u32;
            self.debt.fetch_add(remove - forgotten, Ordering::AcqRel);
        }
    }

    fn permit(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> ConcurrencyPermit {
        self.held.fetch_add(1, Ordering::Relaxed);
        ConcurrencyPermit {
            permit: Some(permit),
            cap: self.clone(),
        }
    }

    /// A slot now, or `None` at the cap.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConcurrencyPermit> {
        let p = self.slots.clone().try_acquire_owned().ok()?;
        Some(self.permit(p))
    }

    /// A slot within `wait`, or `None`.
    pub async fn acquire_within(self: &Arc<Self>, wait: Duration) -> Option<ConcurrencyPermit> {
        let p = tokio::time::timeout(wait, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(self.permit(p))
    }
}

/// One held concurrency slot; returned (or taken back after a lowered cap) when dropped.
#[derive(Debug)]
pub struct ConcurrencyPermit {
    permit: Option<OwnedSemaphorePermit>,
    cap: Arc<Concurrency>,
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        self.cap.held.fetch_sub(1, Ordering::Relaxed);
        let owed = self
            .cap
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if owed && let Some(p) = self.permit.take() {
            p.forget();
        }
    }
}

/// Per-tenant counters (read by metrics; carried over across reloads).
#[derive(Debug, Default)]
pub struct TenantStats {
    pub admitted: AtomicU64,
    pub rate_limited: AtomicU64,
    pub overloaded: AtomicU64,
    pub timed_out: AtomicU64,
    pub body_too_large: AtomicU64,
    /// Requests refused with 429 `quota_exceeded`.
    pub quota_exceeded: AtomicU64,
    /// Request body bytes received from the client, and response body bytes sent to it.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Requests shed by a saturated pool (503 `upstream_saturated`).
    pub saturated: AtomicU64,
    /// Time spent waiting for a pool slot (only requests that waited); made on first use.
    pub queue_wait: std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
    /// Responses by status class and latency (metrics).
    pub responses: crate::metrics::ResponseStats,
    /// 429 and 503 refusals by error code (`/stats`).
    pub refused: crate::stats::Refusals,
}

impl TenantStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a request waited in a saturated pool's queue.
    pub fn observe_queue_wait(&self, waited: std::time::Duration) {
        self.queue_wait
            .get_or_init(crate::metrics::latency_histogram)
            .observe(waited.as_secs_f64());
    }
}

/// What admission hands to the rest of the request.
#[derive(Debug, Default)]
pub struct Admission {
    /// Held until the response body ends.
    pub permit: Option<ConcurrencyPermit>,
}

fn check_local(
    tenant: &Tenant,
    limiter: &TenantLimiter,
    rl: &mut Option<RateLimitHeaders>,
) -> Result<(), GatewayError> {
    match limiter.check() {
        Ok(state) => {
            *rl = Some((limiter.policy().clone(), state));
            Ok(())
        }
        Err(wait) => Err(limited(tenant, limiter, wait, rl)),
    }
}

fn limited(
    tenant: &Tenant,
    limiter: &TenantLimiter,
    wait: Duration,
    rl: &mut Option<RateLimitHeaders>,
) -> GatewayError {
    *rl = Some((
        limiter.policy().clone(),
        ratelimit_value(0, ceil_secs(wait)),
    ));
    TenantStats::bump(&tenant.stats.rate_limited);
    GatewayError::RateLimited { retry_after: wait }
}

fn over_quota(tenant: &Tenant, st: QuotaState, ql: &mut Option<RateLimitHeaders>) -> GatewayError {
    *ql = Some(st.headers());
    TenantStats::bump(&tenant.stats.quota_exceeded);
    GatewayError::QuotaExceeded {
        retry_after: st.retry_after(),
    }
}

/// Quota, then rate, checked on this replica under the tenant's meter entry, so the check and
/// the count are one step; a request refused by either takes nothing from the other.
fn check_locally(
    tenant: &Tenant,
    limiter: Option<&TenantLimiter>,
    quota: Option<QuotaSpec>,
    meter: &Meter,
    now: i64,
    rl: &mut Option<RateLimitHeaders>,
    ql: &mut Option<RateLimitHeaders>,
) -> Result<(), GatewayError> {
    let mut slot = None;
    let mut entry = meter.lock(
        &tenant.name,
        quota::usage_period(quota),
        now,
        &tenant.stats,
        &mut slot,
    );
    let state = quota.map(|spec| QuotaState {
        spec,
        used: entry.requests,
        end: entry.end,
        now,
    });
    if let Some(st) = state
        && st.used >= st.spec.requests
    {
        return Err(over_quota(tenant, st, ql));
    }
    if let Some(l) = limiter {
        check_local(tenant, l, rl)?;
    }
    entry.requests += 1;
    if let Some(mut st) = state {
        st.used += 1;
        *ql = Some(st.headers());
    }
    Ok(())
}

/// The `RateLimit-Policy` and `RateLimit` values for a response.
pub type RateLimitHeaders = (HeaderValue, HeaderValue);

/// Admits a request for `tenant` or says why not. `rl` receives the rate-limit headers to put on
/// the response, whatever its status; `ql` the `"quota"` policy's, when the tenant has a quota.
///
/// With a cluster `store`, the tenant's rate and quota are checked in Redis (one script, one
/// round trip, bounded); while the store cannot answer, its `on_error` policy applies, `local`
/// meaning this replica's share of both. Without a store, both are checked here, and `meter`
/// counts the request in the tenant's period either way.
pub async fn admit(
    tenant: &Tenant,
    store: Option<&RedisStore>,
    meter: &Meter,
    rl: &mut Option<RateLimitHeaders>,
    ql: &mut Option<RateLimitHeaders>,
) -> Result<Admission, GatewayError> {
    let now = meter.clock.now();
    let quota = tenant.limits.quota;
    let period = quota::usage_period(quota);
    let limiter = tenant.limiter.as_deref();
    match store.filter(|_| limiter.is_some() || quota.is_some()) {
        None => check_locally(tenant, limiter, quota, meter, now, rl, ql)?,
        Some(store) => {
            let (start, end) = period.bounds(now);
            let check = quota.map(|q| QuotaCheck {
                limit: q.requests,
                period_start: start,
                ttl_secs: end - now,
            });
            match store
                .check(&tenant.name, limiter.map(|l| l.rate), check)
                .await
            {
                Ok(Decision::Allowed {
                    remaining,
                    quota_used,
                }) => {
                    if let Some(l) = limiter {
                        let missing = l.rate.burst.saturating_sub(remaining);
                        let reset = u64::from(missing).div_ceil(u64::from(l.rate.per_second));
                        *rl = Some((l.policy().clone(), ratelimit_value(remaining, reset)));
                    }
                    if let (Some(spec), Some(used)) = (quota, quota_used) {
                        *ql = Some(
                            QuotaState {
                                spec,
                                used,
                                end,
                                now,
                            }
                            .headers(),
                        );
                    }
                    meter.count(&tenant.name, period, now, &tenant.stats);
                }
                Ok(Decision::Limited { retry_after }) => {
                    if let Some(l) = limiter {
                        return Err(limited(tenant, l, retry_after, rl));
                    }
                }
                Ok(Decision::QuotaExceeded { used }) => {
                    if let Some(spec) = quota {
                        let st = QuotaState {
                            spec,
                            used,
                            end,
                            now,
                        };
                        return Err(over_quota(tenant, st, ql));
                    }
                }
                Err(_) => match store.settings.on_error {
                    OnError::Allow => meter.count(&tenant.name, period, now, &tenant.stats),
                    OnError::Deny => return Err(GatewayError::RateLimitUnavailable),
                    // This replica's share of the rate and of the quota; the headers describe
                    // the share being enforced.
                    OnError::Local => {
                        let share = tenant.fallback.as_deref().or(limiter);
                        let replicas = u64::from(store.settings.replicas.max(1));
                        let quota_share = quota.map(|q| QuotaSpec {
                            requests: (q.requests / replicas).max(1),
                            period: q.period,
                        });
                        check_locally(tenant, share, quota_share, meter, now, rl, ql)?;
                    }
                },
            }
        }
    }
    let permit = match &tenant.concurrency {
        None => None,
        Some(c) => {
            let got = match tenant.limits.queue {
                None => c.try_acquire(),
                // A short queue, never past its own deadline.
                Some(wait) => c.acquire_within(wait).await,
            };
            match got {
                Some(p) => Some(p),
                None => {
                    TenantStats::bump(&tenant.stats.overloaded);
                    return Err(GatewayError::TenantOverloaded {
                        retry_after: Duration::from_secs(1),
                    });
                }
            }
        }
    };
    TenantStats::bump(&tenant.stats.admitted);
    Ok(Admission { permit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_with_a_computed_retry_after() {
        let l = TenantLimiter::new(Rate {
            per_second: 5,
            burst: 10,
        })
        .expect("limiter");
        assert_eq!(l.policy(), "\"tenant\";q=10;w=2");
        let first = l.check().expect("admitted");
        assert_eq!(first, "\"tenant\";r=9;t=1");
        for _ in 0..9 {
            assert!(l.check().is_ok());
        }
        let wait = l.check().expect_err("over the burst");
        // One cell every 200 ms at 5/s.
        assert!(
            wait > Duration::from_millis(100) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
    }
}
