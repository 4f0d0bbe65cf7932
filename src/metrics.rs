//! Prometheus metrics (`prometheus-client`), served on the admin listener's `/metrics`.
//!
//! Gateway-wide series live in [`Metrics`]. Per-tenant series are read at scrape time from the
//! *current* snapshot's tenants (their [`TenantStats`], carried over across reloads), so tenant
//! labels exist only for tenants in the config: cardinality is bounded by the config, and
//! requests that name no configured tenant are counted under `tenant="unknown"`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::limits::TenantStats;
use crate::snapshot::Snapshot;

type Labels = Vec<(&'static str, String)>;

/// Gateway-wide metrics and the registry that renders everything.
pub struct Metrics {
    registry: Registry,
    pub active_connections: Gauge,
    /// HTTP/1 connections waiting for their next request holding no buffers (parked).
    pub parked_connections: Gauge,
    /// `accept` failures by reason (`too_many_open_files`, `other`); accepting backs off.
    pub accept_errors: Family<Labels, Counter>,
    /// Times a listener stopped accepting because `limits.max_connections` were open.
    pub connection_limit_reached: Counter,
    pub tls_handshake_failures: Family<Labels, Counter>,
    /// Connections closed by the gateway before or between requests, by reason.
    pub connections_closed: Family<Labels, Counter>,
    pub upstream_errors: Family<Labels, Counter>,
    /// Client certificates refused in the handshake, by reason.
    pub client_cert_failures: Family<Labels, Counter>,
    pub reloads: Family<Labels, Counter>,
    pub config_generation: Gauge,
    /// 1 while the last reload was refused (the previous config is serving); 0 after a good one.
    pub last_reload_failed: Gauge,
    /// 1 while the cluster rate-limit store is degraded (breaker open or failing).
    pub store_degraded: Gauge,
    /// Replicas sharing the limits as this replica last saw them announced in Redis.
    pub store_replicas: Gauge,
    /// Requests that named no configured tenant.
    pub unknown: Arc<TenantStats>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let active_connections = Gauge::default();
        let parked_connections = Gauge::default();
        let accept_errors = Family::<Labels, Counter>::default();
        let connection_limit_reached = Counter::default();
        let tls_handshake_failures = Family::<Labels, Counter>::default();
        let connections_closed = Family::<Labels, Counter>::default();
        let upstream_errors = Family::<Labels, Counter>::default();
        let reloads = Family::<Labels, Counter>::default();
        let client_cert_failures = Family::<Labels, Counter>::default();
        registry.register(
            "client_cert_failures",
            "Client certificates refused in the TLS handshake, by reason (no_certificate, expired, unknown_ca, ...)",
            client_cert_failures.clone(),
        );
        let config_generation = Gauge::default();
        let store_degraded = Gauge::default();
        let store_replicas = Gauge::default();
        let last_reload_failed = Gauge::default();
        registry.register(
            "config_last_reload_failed",
            "1 while the last config reload was refused and the previous config keeps serving",
            last_reload_failed.clone(),
        );
        registry.register(
            "rate_limit_store_degraded",
            "1 while the shared rate-limit store is failing and on_error applies",
            store_degraded.clone(),
        );
        registry.register(
            "rate_limit_store_replicas",
            "Replicas sharing the limits, as last announced in Redis (the local fallback divides by it)",
            store_replicas.clone(),
        );
        registry.register(
            "active_connections",
            "Client connections open now",
            active_connections.clone(),
        );
        registry.register(
            "parked_connections",
            "HTTP/1 client connections waiting for their next request with no buffers held",
            parked_connections.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts by reason (too_many_open_files, other); the listener backs off 20 ms",
            accept_errors.clone(),
        );
        registry.register(
            "connection_limit_reached",
            "Times a listener paused accepting because limits.max_connections were open",
            connection_limit_reached.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Failed TLS handshakes by reason",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the gateway closed by reason (per_ip_cap, idle, first_byte_timeout)",
            connections_closed.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges by kind",
            upstream_errors.clone(),
        );
        registry.register("reloads", "Config reloads by result", reloads.clone());
        registry.register(
            "config_generation",
            "Generation of the config being served (1 at start)",
            config_generation.clone(),
        );
        let unknown = Arc::new(TenantStats::default());
        registry.register_collector(Box::new(TenantCollector {
            snapshot,
            unknown: unknown.clone(),
        }));
        config_generation.set(1);
        // Every known label value starts at 0, so dashboards and alerts see a series (and a
        // rate of 0) before the first event instead of nothing.
        let known: [(&Family<Labels, Counter>, &str, &[&str]); 4] = [
            (&reloads, "result", &["ok", "error"]),
            (
                &upstream_errors,
                "kind",
                &["connect", "exchange", "no_endpoint", "timeout"],
            ),
            (
                &tls_handshake_failures,
                "reason",
                &["tls_error", "client_closed", "io", "timeout"],
            ),
            (
                &connections_closed,
                "reason",
                &["per_ip_cap", "first_byte_timeout", "idle"],
            ),
        ];
        for (family, label, values) in known {
            for v in values {
                let _ = family.get_or_create(&vec![(label, (*v).to_owned())]);
            }
        }
        Self {
            registry,
            active_connections,
            parked_connections,
            accept_errors,
            connection_limit_reached,
            tls_handshake_failures,
            connections_closed,
            upstream_errors,
            client_cert_failures,
            reloads,
            config_generation,
            last_reload_failed,
            store_degraded,
            store_replicas,
            unknown,
        }
    }

    pub fn count(family: &Family<Labels, Counter>, label: &'static str, value: &str) {
        family.get_or_create(&vec![(label, value.to_owned())]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Per-tenant and per-certificate series, read from the current snapshot at scrape time.
#[derive(Debug)]
struct TenantCollector {
    snapshot: Arc<ArcSwap<Snapshot>>,
    unknown: Arc<TenantStats>,
}

/// Reads one counter of a tenant's stats.
type StatField = fn(&TenantStats) -> &AtomicU64;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Collector for TenantCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.snapshot.load();
        let tenants: Vec<(&str, &TenantStats)> = snap
            .tenants
            .iter()
            .map(|t| (&*t.name, &*t.stats))
            .chain(std::iter::once(("unknown", &*self.unknown)))
            .collect();

        let mut m = encoder.encode_descriptor(
            "tenant_requests",
            "Responses by tenant and status class",
            None,
            MetricType::Counter,
        )?;
        for (name, s) in &tenants {
            for (i, class) in CLASSES.iter().enumerate() {
                let v = s.responses.by_class[i].load(Ordering::Relaxed);
                if v > 0 {
                    ConstCounter::new(v)
                        .encode(m.encode_family(&[("tenant", *name), ("class", *class)])?)?;
                }
            }
        }
        let mut m = encoder.encode_descriptor(
            "tenant_request_duration_seconds",
            "Time from request head to response head, by tenant",
            None,
            MetricType::Histogram,
        )?;
        for (name, s) in &tenants {
            if let Some(h) = s.responses.latency() {
                h.encode(m.encode_family(&[("tenant", *name)])?)?;
            }
        }
        let counters: [(&str, &str, StatField); 5] = [
            (
                "tenant_admitted",
                "Requests admitted by the tenant's limits",
                |s| &s.admitted,
            ),
            ("tenant_rate_limited", "Requests refused with 429", |s| {
                &s.rate_limited
            }),
            (
                "tenant_overloaded",
                "Requests refused at the concurrency cap (503)",
                |s| &s.overloaded,
            ),
            ("tenant_timed_out", "Upstream deadlines missed (504)", |s| {
                &s.timed_out
            }),
            (
                "tenant_body_too_large",
                "Bodies over the tenant's limit (413)",
                |s| &s.body_too_large,
            ),
        ];
        for (metric, help, get) in counters {
            let mut m = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for (name, s) in &tenants {
                ConstCounter::new(get(s).load(Ordering::Relaxed))
                    .encode(m.encode_family(&[("tenant", *name)])?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "certificate_expiry_seconds",
            "Seconds until each configured certificate expires",
            None,
            MetricType::Gauge,
        )?;
        let now = crate::signing::unix_now() as i64;
        for (name, not_after) in snap.certs.expiries() {
            ConstGauge::new(not_after - now).encode(m.encode_family(&[("certificate", name)])?)?;
        }
        encode_saturation(&snap, &mut encoder)?;
        Ok(())
    }
}

/// Reads one gauge value of a capped tenant's concurrency.
type CapField = fn(&crate::limits::Concurrency) -> i64;
/// Reads one value of an upstream pool.
type PoolField = fn(&crate::upstream::UpstreamPool) -> u64;

/// Saturation and health series read at scrape time: capped tenants' slots in use, each pool's
/// endpoints (all, in service), ejections and retries, and the connection cap.
fn encode_saturation(
    snap: &Snapshot,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let caps: [(&str, &str, CapField); 2] = [
        (
            "tenant_in_flight",
            "Requests holding one of the tenant's concurrency slots (tenants with max_concurrent)",
            |c| c.in_use() as i64,
        ),
        (
            "tenant_concurrency_limit",
            "The tenant's max_concurrent (tenants that have one)",
            |c| i64::from(c.max()),
        ),
    ];
    for (metric, help, get) in caps {
        let mut m = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
        for t in &snap.tenants {
            if let Some(c) = &t.concurrency {
                ConstGauge::new(get(c)).encode(m.encode_family(&[("tenant", &*t.name)])?)?;
            }
        }
    }
    let mut pools: Vec<_> = snap.upstreams.values().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let gauges: [(&str, &str, PoolField); 2] = [
        (
            "upstream_endpoints",
            "Endpoints configured in the pool",
            |p| p.endpoints().len() as u64,
        ),
        (
            "upstream_endpoints_healthy",
            "Endpoints of the pool not ejected by passive health checking",
            |p| p.endpoints().iter().filter(|e| !e.is_ejected()).count() as u64,
        ),
    ];
    for (metric, help, get) in gauges {
        let mut m = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
        for p in &pools {
            ConstGauge::new(get(p) as i64).encode(m.encode_family(&[("upstream", &*p.name)])?)?;
        }
    }
    // Fair share (pools with a `capacity`).
    let queues: Vec<_> = pools
        .iter()
        .filter_map(|p| p.capacity().map(|q| (&*p.name, q)))
        .collect();
    type QueueField = fn(&crate::fairshare::FairQueue) -> i64;
    let queue_gauges: [(&str, &str, QueueField); 3] = [
        (
            "upstream_in_flight",
            "Requests holding one of the pool's capacity slots",
            |q| q.in_flight() as i64,
        ),
        (
            "upstream_queued",
            "Requests waiting for a slot of the saturated pool",
            |q| q.queued() as i64,
        ),
        (
            "upstream_capacity_limit",
            "The pool's current max_in_flight (fixed, or the adaptive estimate)",
            |q| q.limit() as i64,
        ),
    ];
    for (metric, help, get) in queue_gauges {
        let mut m = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
        for (name, q) in &queues {
            ConstGauge::new(get(q)).encode(m.encode_family(&[("upstream", *name)])?)?;
        }
    }
    let mut m = encoder.encode_descriptor(
        "upstream_shed",
        "Requests refused with 503 upstream_saturated (waited queue_ms, or the queue was full)",
        None,
        MetricType::Counter,
    )?;
    for (name, q) in &queues {
        ConstCounter::new(q.shed.load(std::sync::atomic::Ordering::Relaxed))
            .encode(m.encode_family(&[("upstream", *name)])?)?;
    }
    let mut m = encoder.encode_descriptor(
        "tenant_queue_wait_seconds",
        "Time requests waited for a slot of a saturated pool (only those that waited)",
        None,
        MetricType::Histogram,
    )?;
    for t in &snap.tenants {
        if let Some(h) = t.stats.queue_wait.get() {
            h.encode(m.encode_family(&[("tenant", &*t.name)])?)?;
        }
    }
    let counters: [(&str, &str, PoolField); 2] = [
        (
            "upstream_ejections",
            "Endpoint ejections by passive health checking (since the pool was configured)",
            |p| p.endpoints().iter().map(|e| e.ejections()).sum(),
        ),
        (
            "upstream_retries",
            "Requests retried on another endpoint after a connect failure",
            |p| p.retries(),
        ),
    ];
    for (metric, help, get) in counters {
        let mut m = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
        for p in &pools {
            ConstCounter::new(get(p)).encode(m.encode_family(&[("upstream", &*p.name)])?)?;
        }
    }
    let m = encoder.encode_descriptor(
        "connection_limit",
        "limits.max_connections: client connections the gateway accepts at once",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(snap.limits.max_connections as i64).encode(m)?;
    Ok(())
}
