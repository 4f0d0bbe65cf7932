//! `GET /stats`: one JSON document of what this instance is doing, for the `/dashboard` page and
//! for operators with `curl`. Read-only, built at request time from counters the data path keeps
//! anyway (atomics on tenants, pools and endpoints), so watching costs the data path nothing.
//!
//! Requests per second are computed here, not in the page: the sampler keeps the cumulative
//! request count of every tenant at a few recent `/stats` calls (at least [`SAMPLE_EVERY`] apart,
//! none older than [`WINDOW`]) and divides by the time since the oldest one; before there is such
//! a sample the average since the admin listener started is shown. The response says which
//! (`rate_window_s`). No secret is ever read here: keys and tokens are not part of the output.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::histogram::Histogram;
use serde_json::{Value, json};

use crate::limits::TenantStats;
use crate::shared::Shared;
use crate::snapshot::{Snapshot, Tenant, TenantStatus};

/// Rates are measured over at most this much recent time.
pub const WINDOW: Duration = Duration::from_secs(10);
/// A new sample is kept only when the last one is at least this old.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Tenants listed when the request does not say (`?limit=`).
pub const DEFAULT_LIMIT: usize = 50;

/// Cumulative request counts of every tenant at one moment, keyed by the address of the
/// tenant's `TenantStats` (which reloads carry over), sorted for binary search.
struct Sample {
    at: Instant,
    totals: Vec<(usize, u64)>,
}

/// Remembers recent samples to turn cumulative counters into rates.
pub struct Sampler {
    started: Instant,
    started_unix: u64,
    samples: Mutex<VecDeque<Sample>>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            started_unix: unix_secs(SystemTime::now()),
            samples: Mutex::new(VecDeque::new()),
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn key(s: &TenantStats) -> usize {
    std::ptr::from_ref(s) as usize
}

fn total(s: &TenantStats) -> u64 {
    s.responses
        .by_class
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
}

/// What `/stats` was asked for (`?q=<substring>&limit=<n>`).
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only tenants whose name contains this (lower-cased).
    pub q: Option<String>,
    /// How many tenants to list, busiest first.
    pub limit: usize,
}

impl Query {
    /// Parses a query string; unknown keys and bad values are ignored.
    pub fn parse(query: Option<&str>) -> Self {
        let mut out = Self {
            q: None,
            limit: DEFAULT_LIMIT,
        };
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "q" => {
                    let v = percent_decode(v).to_ascii_lowercase();
                    out.q = (!v.is_empty()).then_some(v);
                }
                "limit" => {
                    if let Ok(n) = v.parse::<usize>() {
                        out.limit = n.clamp(1, 100_000);
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// `%XX` and `+` decoding, lossy on invalid UTF-8 (a search box, nothing more).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The latency quantile `q` (0..1) of a histogram, in milliseconds, interpolated within its
/// bucket the way Prometheus' `histogram_quantile` does. `None` without observations.
///
/// `prometheus-client` does not expose bucket counts, so the histogram is rendered on its own
/// (a few hundred bytes); this runs only for the tenants a `/stats` answer lists.
pub fn quantiles_ms(h: &Histogram, qs: &[f64]) -> Option<Vec<f64>> {
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register("h", "", h.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).ok()?;
    let buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("h_bucket{le=\"")?;
            let (le, n) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, n.trim().parse().ok()?))
        })
        .collect();
    let count = buckets.last()?.1;
    if count == 0 {
        return None;
    }
    Some(
        qs.iter()
            .map(|q| {
                let rank = q * count as f64;
                let mut lower = 0.0;
                let mut below = 0u64;
                for &(upper, cum) in &buckets {
                    if cum as f64 >= rank {
                        if upper.is_infinite() {
                            return lower * 1000.0;
                        }
                        let in_bucket = (cum - below) as f64;
                        let frac = if in_bucket > 0.0 {
                            (rank - below as f64) / in_bucket
                        } else {
                            1.0
                        };
                        return (lower + (upper - lower) * frac) * 1000.0;
                    }
                    lower = upper;
                    below = cum;
                }
                lower * 1000.0
            })
            .collect(),
    )
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// How a tenant's rate limit is enforced right now.
fn limits_mode(t: &Tenant, gw: &Shared) -> &'static str {
    match (&t.limiter, gw.rate_limit_store()) {
        (None, _) => "none",
        (Some(_), None) => "local",
        (Some(_), Some(s)) if s.is_degraded() => "redis_degraded",
        (Some(_), Some(_)) => "redis",
    }
}

fn tenant_json(t: &Tenant, gw: &Shared, total: u64, rps: f64) -> Value {
    let s = &t.stats;
    let classes: serde_json::Map<String, Value> = ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                (*c).to_owned(),
                json!(s.responses.by_class[i].load(Ordering::Relaxed)),
            )
        })
        .collect();
    let q = s
        .responses
        .latency()
        .and_then(|h| quantiles_ms(h, &[0.5, 0.99]));
    json!({
        "name": &*t.name,
        "plan": &*t.plan,
        "status": match t.status {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        },
        "requests": total,
        "rps": round2(rps),
        "classes": classes,
        "refused": s.refused.json(),
        "in_flight": t.concurrency.as_ref().map(|c| c.in_use()),
        "max_concurrent": t.concurrency.as_ref().map(|c| c.max()),
        "p50_ms": q.as_ref().map(|q| round2(q[0])),
        "p99_ms": q.as_ref().map(|q| round2(q[1])),
        "quota_left": Value::Null,
        "limits": limits_mode(t, gw),
        "rate": t.limits.rate.map(|r| json!({"per_second": r.per_second, "burst": r.burst})),
    })
}

fn upstreams_json(snap: &Snapshot) -> Value {
    let mut pools: Vec<_> = snap.upstreams.values().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    Value::Array(
        pools
            .into_iter()
            .map(|p| {
                let endpoints: Vec<Value> = p
                    .endpoints()
                    .iter()
                    .map(|e| {
                        json!({
                            "address": format!("{}://{}", e.scheme, e.authority),
                            "healthy": !e.is_ejected(),
                            "failures_in_a_row": e.failures(),
                            "ejections": e.ejections(),
                            "in_flight": e.in_flight(),
                        })
                    })
                    .collect();
                json!({
                    "name": &*p.name,
                    "healthy_endpoints": p.endpoints().iter().filter(|e| !e.is_ejected()).count(),
                    "in_flight": p.endpoints().iter().map(|e| e.in_flight()).sum::<usize>(),
                    "retries": p.retries(),
                    "ejections": p.endpoints().iter().map(|e| e.ejections()).sum::<u64>(),
                    "queued": Value::Null,
                    "endpoints": endpoints,
                })
            })
            .collect(),
    )
}

/// Builds the `/stats` document (schema in docs/operations.md, "Dashboard and /stats").
pub fn collect(gw: &Shared, sampler: &Sampler, query: &Query) -> Value {
    let snap = gw.snapshot();
    let now = Instant::now();
    let now_unix = unix_secs(SystemTime::now());

    // Every tenant's cumulative count (10,000 tenants: 50,000 relaxed loads).
    let mut current: Vec<(usize, u64)> = snap
        .tenants
        .iter()
        .map(|t| (key(&t.stats), total(&t.stats)))
        .collect();
    current.sort_unstable_by_key(|(k, _)| *k);

    let (rates_base, window) = {
        let mut samples = sampler.samples.lock().unwrap_or_else(|p| p.into_inner());
        while samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) > WINDOW)
        {
            samples.pop_front();
        }
        let base = samples
            .front()
            .filter(|s| now.duration_since(s.at) >= SAMPLE_EVERY)
            .map(|s| (Some(s.totals.clone()), now.duration_since(s.at)));
        if samples
            .back()
            .is_none_or(|s| now.duration_since(s.at) >= SAMPLE_EVERY)
        {
            samples.push_back(Sample {
                at: now,
                totals: current.clone(),
            });
        }
        base.unwrap_or((None, now.duration_since(sampler.started)))
    };
    let secs = window.as_secs_f64().max(0.001);
    let rate_of = |k: usize, total: u64| -> f64 {
        let before = match &rates_base {
            None => 0,
            Some(base) => base
                .binary_search_by_key(&k, |(k, _)| *k)
                .map_or(0, |i| base[i].1),
        };
        total.saturating_sub(before) as f64 / secs
    };

    let mut rows: Vec<(&Tenant, u64, f64)> = snap
        .tenants
        .iter()
        .filter(|t| query.q.as_deref().is_none_or(|q| t.name.contains(q)))
        .map(|t| {
            let k = key(&t.stats);
            let total = current
                .binary_search_by_key(&k, |(k, _)| *k)
                .map_or(0, |i| current[i].1);
            (t, total, rate_of(k, total))
        })
        .collect();
    let matched = rows.len();
    // Busiest first: by current rate, then by requests since start, then by name.
    let by_traffic = |a: &(&Tenant, u64, f64), b: &(&Tenant, u64, f64)| {
        b.2.total_cmp(&a.2)
            .then(b.1.cmp(&a.1))
            .then(a.0.name.cmp(&b.0.name))
    };
    if rows.len() > query.limit {
        rows.select_nth_unstable_by(query.limit - 1, by_traffic);
        rows.truncate(query.limit);
    }
    rows.sort_by(by_traffic);
    let tenants: Vec<Value> = rows
        .iter()
        .map(|(t, total, rps)| tenant_json(t, gw, *total, *rps))
        .collect();

    let mut certs: Vec<Value> = snap
        .certs
        .expiries()
        .map(|(name, not_after)| {
            json!({
                "name": name,
                "not_after": not_after,
                "days_left": round2((not_after - now_unix as i64) as f64 / 86_400.0),
            })
        })
        .collect();
    certs.sort_by(|a, b| a["not_after"].as_i64().cmp(&b["not_after"].as_i64()));

    let metrics = gw.metrics();
    let reloads = |result: &str| {
        metrics
            .reloads
            .get_or_create(&vec![("result", result.to_owned())])
            .get()
    };
    let upstream_errors: serde_json::Map<String, Value> =
        ["connect", "exchange", "no_endpoint", "timeout"]
            .iter()
            .map(|k| {
                let n = metrics
                    .upstream_errors
                    .get_or_create(&vec![("kind", (*k).to_owned())])
                    .get();
                ((*k).to_owned(), json!(n))
            })
            .collect();
    let last_error = gw.last_reload_error();
    let generation = gw.generation();
    json!({
        "instance": {
            "started_at": sampler.started_unix,
            "uptime_s": round2(now.duration_since(sampler.started).as_secs_f64()),
            "now": now_unix,
            "active_connections": metrics.active_connections.get(),
            "draining": gw.is_draining(),
            "rate_limit_store": match gw.rate_limit_store() {
                None => "local",
                Some(s) if s.is_degraded() => "redis_degraded",
                Some(_) => "redis",
            },
            "replicas": gw.rate_limit_store().map(|s| s.replicas()),
            "breaker": gw.rate_limit_store().map(|s| s.breaker_state()),
        },
        "config": {
            "generation": generation,
            "hash": snap.content_hash,
            "loaded_at": unix_secs(snap.loaded_at),
            "last_reload": if last_error.is_some() {
                "error"
            } else if generation > 1 {
                "ok"
            } else {
                "none"
            },
            "last_reload_error": last_error,
            "reloads_ok": reloads("ok"),
            "reloads_failed": reloads("error"),
            "signing_kid": snap.signing.active.id(),
            "tenants": snap.tenants.len(),
            "routes": snap.route_count(),
        },
        "rate_window_s": round2(secs),
        "tenants_total": snap.tenants.len(),
        "tenants_matched": matched,
        "tenants": tenants,
        "upstreams": upstreams_json(&snap),
        "upstream_errors": upstream_errors,
        "certificates": certs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = crate::limits::latency_histogram();
        assert!(quantiles_ms(&h, &[0.5]).is_none());
        for _ in 0..99 {
            h.observe(0.0007); // bucket (0.5 ms, 1 ms]
        }
        h.observe(0.1); // bucket (64 ms, 128 ms]
        let q = quantiles_ms(&h, &[0.5, 0.99, 1.0]).expect("observed");
        assert!(q[0] > 0.5 && q[0] <= 1.0, "{q:?}");
        assert!(q[1] > 0.5 && q[1] <= 1.0, "{q:?}");
        assert!(q[2] > 64.0 && q[2] <= 128.0, "{q:?}");
    }

    #[test]
    fn queries_parse_without_panicking() {
        let q = Query::parse(Some("q=Ac%6De+x&limit=7&x"));
        assert_eq!(q.q.as_deref(), Some("acme x"));
        assert_eq!(q.limit, 7);
        for odd in [
            "q=%", "q=%4", "q=%zz", "limit=-1", "limit=0", "&&=", "q=%ff%fe",
        ] {
            let q = Query::parse(Some(odd));
            assert!(q.limit >= 1);
        }
        assert_eq!(Query::parse(None).limit, DEFAULT_LIMIT);
    }
}
