//! Phase "admit": a tenant's quota and rate (on this replica, or in the cluster store) and its
//! concurrency cap, in that order. The limiters, caps and counters themselves are runtime state
//! in [`crate::limits`].

use std::time::Duration;

use crate::cluster::{Decision, OnError, QuotaCheck, RedisStore, StoreUnavailable};
use crate::error::GatewayError;
use crate::limits::{
    ConcurrencyPermit, FallbackLimiter, RateLimitHeaders, TenantLimiter, TenantStats, ceil_secs,
    ratelimit_value,
};
use crate::quota::{self, Meter, QuotaSpec, QuotaState};
use crate::snapshot::Tenant;

/// What admission hands to the rest of the request.
#[derive(Debug, Default)]
pub struct Admission {
    /// Held until the response body ends.
    pub permit: Option<ConcurrencyPermit>,
}

/// The rate a request is checked against on this replica.
#[derive(Clone, Copy)]
enum LocalRate<'a> {
    /// The tenant's whole rate (no cluster store).
    Full(&'a TenantLimiter),
    /// This replica's share while the cluster store cannot answer; `take: false` decides
    /// without taking a cell (the script timed out, so Redis may have charged it already).
    Share {
        limiter: &'a FallbackLimiter,
        replicas: u32,
        take: bool,
    },
}

impl LocalRate<'_> {
    fn check(self) -> Result<RateLimitHeaders, (Duration, RateLimitHeaders)> {
        match self {
            Self::Full(l) => l
                .check()
                .map(|state| (l.policy().clone(), state))
                .map_err(|wait| {
                    (
                        wait,
                        (l.policy().clone(), ratelimit_value(0, ceil_secs(wait))),
                    )
                }),
            Self::Share {
                limiter,
                replicas,
                take,
            } => limiter.check(replicas, take),
        }
    }
}

fn limited(
    tenant: &Tenant,
    headers: RateLimitHeaders,
    wait: Duration,
    rl: &mut Option<RateLimitHeaders>,
) -> GatewayError {
    *rl = Some(headers);
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
    rate: Option<LocalRate<'_>>,
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
    if let Some(r) = rate {
        match r.check() {
            Ok(headers) => *rl = Some(headers),
            Err((wait, headers)) => return Err(limited(tenant, headers, wait, rl)),
        }
    }
    entry.requests += 1;
    if let Some(mut st) = state {
        st.used += 1;
        *ql = Some(st.headers());
    }
    Ok(())
}

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
        None => check_locally(
            tenant,
            limiter.map(LocalRate::Full),
            quota,
            meter,
            now,
            rl,
            ql,
        )?,
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
                        let headers = (
                            l.policy().clone(),
                            ratelimit_value(0, ceil_secs(retry_after)),
                        );
                        return Err(limited(tenant, headers, retry_after, rl));
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
                Err(why) => match store.settings.on_error {
                    OnError::Allow => meter.count(&tenant.name, period, now, &tenant.stats),
                    OnError::Deny => return Err(GatewayError::RateLimitUnavailable),
                    // This replica's exact share of the rate and of the quota, divided by the
                    // replica count seen last; the headers describe the share being enforced.
                    // A timed-out script may have run in Redis and charged the request there:
                    // the share then decides without taking a cell (never charged twice).
                    OnError::Local => {
                        let replicas = store.replicas();
                        let rate = tenant.fallback.as_deref().map(|limiter| LocalRate::Share {
                            limiter,
                            replicas,
                            take: why != StoreUnavailable::Timeout,
                        });
                        let quota_share = quota.map(|q| QuotaSpec {
                            requests: (q.requests / u64::from(replicas)).max(1),
                            period: q.period,
                        });
                        check_locally(tenant, rate, quota_share, meter, now, rl, ql)?;
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
