//! A tenant's rate limiter (GCRA, `governor`), its concurrency cap, and the per-tenant counters
//! the metrics and `/stats` read (state types; the "admit" phase that uses them is
//! `admit`).
//!
//! Limiters, concurrency caps and counters are runtime state (`runtime::Runtime`): a reload
//! that keeps a tenant's rate keeps its limiter (no fresh burst), a tenant keeps its
//! concurrency slots whatever its cap (a changed cap resizes them, never doubles them), and
//! counters are kept always.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::HeaderValue;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::GatewayError;

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

pub(crate) fn ceil_secs(d: Duration) -> u64 {
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

/// `"tenant";r=<remaining>;t=<reset>`, written without the formatting machinery: it is on
/// every limited response.
pub(crate) fn ratelimit_value(remaining: u32, reset_secs: u64) -> HeaderValue {
    const NAME: &[u8] = b"\"tenant\";r=";
    let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (r, t) = (
        r.format(remaining).as_bytes(),
        t.format(reset_secs).as_bytes(),
    );
    let mut v = Vec::with_capacity(NAME.len() + r.len() + 3 + t.len());
    v.extend_from_slice(NAME);
    v.extend_from_slice(r);
    v.extend_from_slice(b";t=");
    v.extend_from_slice(t);
    HeaderValue::from_maybe_shared(Bytes::from(v))
        .unwrap_or_else(|_| HeaderValue::from_static("\"tenant\";r=0;t=1"))
}

// === impl FallbackLimiter ===

/// The GCRA parameters of a share of a rate, in nanoseconds: one cell every `interval_ns`,
/// admitted while the theoretical arrival time is at most `tolerance_ns` ahead of now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub interval_ns: u64,
    pub tolerance_ns: u64,
}

/// Lua doubles are exact up to 2^53: parameters sent to the cluster script stay below it
/// (104 days), far beyond any sensible burst window.
const MAX_NS: u64 = 1 << 53;

impl Share {
    /// `1/replicas` of `rate`, exactly: 5/s over 3 replicas is one cell every 600 ms (5/3 per
    /// second, not 1), 2/s over 3 one every 1.5 s (not 1/s each). The burst window stays
    /// `burst / per_second` seconds, so each replica holds `burst / replicas` cells of it, and
    /// at least one (a replica that could never admit anything would be no share at all).
    /// Intervals are rounded down to the nanosecond: a share is never short by more than 1 ns
    /// per cell. `None` for a zero rate.
    pub fn of(rate: Rate, replicas: u32) -> Option<Self> {
        if rate.per_second == 0 || rate.burst == 0 {
            return None;
        }
        let per = u128::from(rate.per_second);
        let ns = |x: u128| u64::try_from(x).unwrap_or(u64::MAX).clamp(1, MAX_NS);
        let interval_ns = ns(1_000_000_000 * u128::from(replicas.max(1)) / per);
        let tolerance_ns = ns(1_000_000_000 * u128::from(rate.burst) / per).max(interval_ns);
        Some(Self {
            interval_ns,
            tolerance_ns,
        })
    }

    /// Cells admitted at once from a full bucket.
    pub fn cells(&self) -> u64 {
        self.tolerance_ns / self.interval_ns
    }

    /// `"tenant";q=<cells at once>;w=<seconds to refill them>`.
    pub fn policy(&self) -> HeaderValue {
        HeaderValue::try_from(format!(
            "\"tenant\";q={};w={}",
            self.cells(),
            ceil_secs(Duration::from_nanos(self.tolerance_ns))
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("\"tenant\""))
    }
}

/// A tenant's share of its rate on this replica while the cluster store cannot answer
/// (`on_error: local`). Its state is one atomic (the theoretical arrival time); the share is
/// computed per call from the replica count seen last, so it follows the cluster's size
/// without a reload. Runtime state: kept across reloads that keep the tenant's rate.
#[derive(Debug)]
pub struct FallbackLimiter {
    pub rate: Rate,
    /// Theoretical arrival time, nanoseconds since `epoch` (0: a full bucket).
    tat: AtomicU64,
    epoch: Instant,
}

/// What a fallback check says: admitted (cells left, time until the bucket is full again) or
/// refused (time until the next cell).
pub type ShareDecision = Result<(u64, Duration), Duration>;

impl FallbackLimiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            tat: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Checks one cell of `share` at `now_ns` (nanoseconds since this limiter was made); takes
    /// it when `take` (else only says whether it would be admitted).
    pub fn decide_at(&self, share: Share, now_ns: u64, take: bool) -> ShareDecision {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let new_tat = tat.max(now_ns).saturating_add(share.interval_ns);
            let ahead = new_tat - now_ns;
            if ahead > share.tolerance_ns {
                return Err(Duration::from_nanos(ahead - share.tolerance_ns));
            }
            let out = (
                (share.tolerance_ns - ahead) / share.interval_ns,
                Duration::from_nanos(ahead),
            );
            if !take {
                return Ok(out);
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(out),
                Err(current) => tat = current,
            }
        }
    }

    /// This replica's share of the rate when `replicas` share it, checked now; the
    /// `RateLimit-Policy` and `RateLimit` values describe the share. Err: the wait and the
    /// headers of the refusal.
    pub fn check(
        &self,
        replicas: u32,
        take: bool,
    ) -> Result<RateLimitHeaders, (Duration, RateLimitHeaders)> {
        let Some(share) = Share::of(self.rate, replicas) else {
            let none = HeaderValue::from_static("\"tenant\"");
            return Ok((none.clone(), none));
        };
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match self.decide_at(share, now, take) {
            Ok((remaining, full_in)) => Ok((
                share.policy(),
                ratelimit_value(
                    u32::try_from(remaining).unwrap_or(u32::MAX),
                    ceil_secs(full_in),
                ),
            )),
            Err(wait) => Err((wait, (share.policy(), ratelimit_value(0, ceil_secs(wait))))),
        }
    }
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
    pub responses: ResponseStats,
    /// 429 and 503 refusals by error code (`/stats`).
    pub refused: Refusals,
}

impl TenantStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a request waited in a saturated pool's queue.
    pub fn observe_queue_wait(&self, waited: std::time::Duration) {
        self.queue_wait
            .get_or_init(latency_histogram)
            .observe(waited.as_secs_f64());
    }
}

/// The `RateLimit-Policy` and `RateLimit` values for a response.
pub type RateLimitHeaders = (HeaderValue, HeaderValue);

/// Latency buckets, seconds: 0.5 ms .. ~16 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

/// Response counts by status class and the latency histogram of one tenant.
///
/// The histogram (about 400 bytes) is made on the tenant's first response: a config with
/// 10,000 mostly idle tenants does not pay for 10,000 of them, and an idle tenant has no
/// latency series (its counters, at zero, are not exported either).
#[derive(Debug, Default)]
pub struct ResponseStats {
    /// 1xx..5xx.
    pub by_class: [AtomicU64; 5],
    latency: std::sync::OnceLock<Histogram>,
}

impl ResponseStats {
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.latency
            .get_or_init(latency_histogram)
            .observe(elapsed.as_secs_f64());
    }

    /// The latency histogram, once the tenant has had a response.
    pub fn latency(&self) -> Option<&Histogram> {
        self.latency.get()
    }
}

/// The codes a 429 or 503 refusal is counted under; anything else with those statuses is `other`.
pub const REFUSAL_CODES: [(u16, &str); 7] = [
    (429, "rate_limited"),
    (429, "quota_exceeded"),
    (503, "tenant_overloaded"),
    (503, "upstream_saturated"),
    (503, "upstream_unavailable"),
    (503, "rate_limit_unavailable"),
    (503, "other"),
];

/// A tenant's 429 and 503 refusals by error code.
#[derive(Debug, Default)]
pub struct Refusals([AtomicU64; REFUSAL_CODES.len()]);

impl Refusals {
    /// Counts `err` when it is a 429 or a 503 (one atomic add; nothing otherwise).
    pub fn count(&self, err: &GatewayError) {
        let status = err.status().as_u16();
        if status != 429 && status != 503 {
            return;
        }
        let code = err.code();
        let i = REFUSAL_CODES
            .iter()
            .position(|(s, c)| *s == status && *c == code)
            .unwrap_or(REFUSAL_CODES.len() - 1);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts by status, then code (`/stats`).
    pub fn json(&self) -> serde_json::Value {
        let mut by_status = serde_json::Map::new();
        for (i, (status, code)) in REFUSAL_CODES.iter().enumerate() {
            let entry = by_status
                .entry(status.to_string())
                .or_insert_with(|| serde_json::json!({}));
            entry[*code] = serde_json::json!(self.0[i].load(Ordering::Relaxed));
        }
        serde_json::Value::Object(by_status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratelimit_value_spells_both_numbers_at_their_extremes() {
        assert_eq!(ratelimit_value(0, 0), "\"tenant\";r=0;t=0");
        assert_eq!(
            ratelimit_value(u32::MAX, u64::MAX),
            "\"tenant\";r=4294967295;t=18446744073709551615"
        );
    }

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

    /// Cells a share admits in `secs` seconds of requests every millisecond (fake time).
    fn admitted_over(rate: Rate, replicas: u32, secs: u64) -> u64 {
        let l = FallbackLimiter::new(rate);
        let share = Share::of(rate, replicas).expect("share");
        (0..secs * 1000)
            .filter(|ms| l.decide_at(share, ms * 1_000_000, true).is_ok())
            .count() as u64
    }

    #[test]
    fn a_replica_share_is_exact_not_rounded_to_whole_requests() {
        // 5/s burst 5 over 3 replicas: 5/3 per second each, ~100 in 60 s plus the burst share
        // (one cell); integer division gave 1/s (60).
        let rate = Rate {
            per_second: 5,
            burst: 5,
        };
        let n = admitted_over(rate, 3, 60);
        assert!((100..=102).contains(&n), "5/s over 3 replicas: {n} in 60 s");
        // Three replicas together: the tenant's rate, not 3/s.
        assert!((300..=306).contains(&(3 * n)), "{}", 3 * n);
        // 2/s over 3 replicas: one cell every 1.5 s (40 in 60 s), not 1/s each (60).
        let n = admitted_over(
            Rate {
                per_second: 2,
                burst: 2,
            },
            3,
            60,
        );
        assert!((40..=41).contains(&n), "2/s over 3 replicas: {n} in 60 s");
        // One replica: exactly the rate (and the burst at once).
        let n = admitted_over(
            Rate {
                per_second: 7,
                burst: 7,
            },
            1,
            10,
        );
        assert!((76..=77).contains(&n), "7/s burst 7 alone: {n} in 10 s");
    }

    #[test]
    fn a_share_keeps_the_burst_window_and_at_least_one_cell() {
        let rate = Rate {
            per_second: 5,
            burst: 10,
        };
        let one = Share::of(rate, 1).expect("share");
        assert_eq!(
            (one.interval_ns, one.tolerance_ns, one.cells()),
            (200_000_000, 2_000_000_000, 10)
        );
        let three = Share::of(rate, 3).expect("share");
        assert_eq!((three.interval_ns, three.cells()), (600_000_000, 3));
        assert_eq!(three.policy(), "\"tenant\";q=3;w=2");
        // Burst 2 over 3 replicas: one cell each, never zero.
        let tiny = Share::of(
            Rate {
                per_second: 2,
                burst: 2,
            },
            3,
        )
        .expect("share");
        assert_eq!(tiny.cells(), 1);
        assert!(
            Share::of(
                Rate {
                    per_second: 0,
                    burst: 1
                },
                1
            )
            .is_none()
        );
        // Extremes never overflow.
        let max = Share::of(
            Rate {
                per_second: 1,
                burst: u32::MAX,
            },
            u32::MAX,
        )
        .expect("share");
        assert!(max.tolerance_ns >= max.interval_ns);
    }

    #[test]
    fn a_peek_decides_without_taking_a_cell() {
        let rate = Rate {
            per_second: 1,
            burst: 2,
        };
        let l = FallbackLimiter::new(rate);
        let share = Share::of(rate, 1).expect("share");
        for _ in 0..5 {
            assert!(l.decide_at(share, 0, false).is_ok());
        }
        assert!(l.decide_at(share, 0, true).is_ok());
        assert!(l.decide_at(share, 0, true).is_ok());
        let wait = l.decide_at(share, 0, false).expect_err("empty");
        assert_eq!(wait, Duration::from_secs(1));
        // Headers of the share on this replica: one of the two cells left after the first.
        let l = FallbackLimiter::new(rate);
        let (policy, value) = l.check(1, true).expect("admitted");
        assert_eq!(policy, "\"tenant\";q=2;w=2");
        assert_eq!(value, "\"tenant\";r=1;t=1");
    }

    #[test]
    fn refusals_count_429_and_503_by_code() {
        let r = Refusals::default();
        r.count(&GatewayError::RateLimited {
            retry_after: Duration::from_secs(1),
        });
        r.count(&GatewayError::TenantOverloaded {
            retry_after: Duration::from_secs(1),
        });
        r.count(&GatewayError::NoRoute);
        let j = r.json();
        assert_eq!(j["429"]["rate_limited"], 1);
        assert_eq!(j["503"]["tenant_overloaded"], 1);
        assert_eq!(j["503"]["other"], 0);
    }
}
