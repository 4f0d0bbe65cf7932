//! Upstream pools: endpoints, balancing, and the pooled HTTP client that forwards to them.
//!
//! Pools are part of the snapshot (rebuilt on reload); the client and its keep-alive
//! connections belong to the gateway and survive reloads.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequests,
}

#[derive(Debug)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub authority: Authority,
    /// HTTP/2 with prior knowledge (`h2c://`), e.g. gRPC.
    pub h2c: bool,
    in_flight: AtomicUsize,
    /// Failures in a row (passive health).
    failures: AtomicU32,
    /// Skipped by `pick` until this time (ms on [`clock_ms`]); 0 = in service.
    ejected_until: AtomicU64,
    /// Times passive health checking has ejected this endpoint.
    ejections: AtomicU64,
}

/// Milliseconds since the first call: a cheap monotonic clock for ejection deadlines.
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Endpoint {
    pub fn new(scheme: Scheme, authority: Authority) -> Self {
        Self {
            scheme,
            authority,
            h2c: false,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    /// Whether passive health checking has taken this endpoint out of service right now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && clock_ms() < until
    }

    /// Requests currently between pick and the end of their response body.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Failures in a row so far (reset by a success or an ejection).
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Times this endpoint has been ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }
}

/// TLS settings of an `https://` pool, compiled.
#[derive(Debug)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: Option<String>,
    /// Identifies these settings (paths and file contents), so equal settings share a client.
    pub fingerprint: String,
}

/// Passive health checking: `consecutive_failures` in a row eject an endpoint for `ejection`.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    /// 0 = never eject.
    pub consecutive_failures: u32,
    pub ejection: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
pub struct UpstreamPool {
    pub name: Box<str>,
    pub tls: Option<Arc<UpstreamTls>>,
    pub health: Health,
    /// Retry idempotent, bodiless requests once on another endpoint after a connect failure.
    pub retry_connect_failure: bool,
    /// Signs this pool's requests (key, version, audience = the pool's name); `None` in pools
    /// built outside `compile`, which then use the snapshot's default signer.
    pub signer: Option<crate::signing::Signer>,
    /// `capacity:`: the pool's fair-share queue (runtime state: kept across reloads that keep
    /// the pool, see `Snapshot::adopt_state`).
    capacity: arc_swap::ArcSwapOption<crate::fairshare::FairQueue>,
    endpoints: Box<[Arc<Endpoint>]>,
    balance: Balance,
    next: AtomicUsize,
    /// Requests sent again on another endpoint (`pick_except` with an endpoint to avoid).
    retries: AtomicU64,
}

/// Counts a request against its endpoint until dropped (with the response body).
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UpstreamPool {
    pub fn new(name: &str, endpoints: Vec<Endpoint>, balance: Balance) -> Self {
        Self {
            name: name.into(),
            tls: None,
            health: Health::default(),
            retry_connect_failure: true,
            signer: None,
            capacity: arc_swap::ArcSwapOption::empty(),
            endpoints: endpoints.into_iter().map(Arc::new).collect(),
            balance,
            next: AtomicUsize::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// Gives the pool a fair-share queue with `settings` (compile time).
    pub fn set_capacity(&mut self, settings: crate::fairshare::CapacitySettings) {
        self.capacity =
            arc_swap::ArcSwapOption::from_pointee(crate::fairshare::FairQueue::new(settings));
    }

    /// The pool's fair-share queue, when it has a `capacity`.
    pub fn capacity(&self) -> Option<Arc<crate::fairshare::FairQueue>> {
        self.capacity.load_full()
    }

    /// The settings this pool was compiled with, when it has a `capacity`.
    pub fn capacity_settings(&self) -> Option<crate::fairshare::CapacitySettings> {
        self.capacity.load().as_ref().map(|q| q.settings())
    }

    /// Takes over the queue of the pool this one replaces (reload).
    pub fn adopt_capacity(&self, queue: Arc<crate::fairshare::FairQueue>) {
        self.capacity.store(Some(queue));
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Requests retried on another endpoint since this pool was compiled.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Chooses an endpoint and counts the request against it. `None` for an empty pool.
    ///
    /// Ejected endpoints are skipped while any other is in service; when every endpoint is
    /// ejected the pool ignores ejection (Envoy's "panic mode"): better a likely failure than
    /// a certain one.
    pub fn pick(&self) -> Option<(Arc<Endpoint>, InFlight)> {
        self.pick_except(None)
    }

    /// Like [`pick`](Self::pick), avoiding `avoid` when another endpoint is in service (retries).
    pub fn pick_except(&self, avoid: Option<&Endpoint>) -> Option<(Arc<Endpoint>, InFlight)> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        if avoid.is_some() {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let usable = |e: &Endpoint| !e.is_ejected() && avoid.is_none_or(|a| !std::ptr::eq(a, e));
        let candidates = (0..n).map(|i| &self.endpoints[(start + i) % n]);
        let chosen = match self.balance {
            Balance::RoundRobin => candidates.clone().find(|e| usable(e)),
            // Least in-flight; ties go round-robin so equal endpoints share the load.
            Balance::LeastRequests => candidates
                .clone()
                .filter(|e| usable(e))
                .min_by_key(|e| e.in_flight()),
        }
        .unwrap_or(&self.endpoints[start]);
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((chosen.clone(), InFlight(chosen.clone())))
    }

    /// Records how an exchange with `endpoint` went (passive health). A failure is a connect
    /// error, a reset, a timeout or a 5xx answer; `consecutive_failures` of them in a row eject
    /// the endpoint for `health.ejection`. A success puts the count back to zero.
    pub fn report(&self, endpoint: &Endpoint, ok: bool) {
        let threshold = self.health.consecutive_failures;
        if threshold == 0 {
            return;
        }
        if ok {
            if endpoint.failures.load(Ordering::Relaxed) != 0 {
                endpoint.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let n = endpoint.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold {
            endpoint.failures.store(0, Ordering::Relaxed);
            let until = clock_ms() + self.health.ejection.as_millis() as u64;
            endpoint.ejected_until.store(until, Ordering::Relaxed);
            endpoint.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                upstream = %self.name,
                endpoint = %endpoint.authority,
                failures = n,
                ejection_ms = self.health.ejection.as_millis() as u64,
                "endpoint ejected after consecutive failures"
            );
        }
    }
}

/// The pooled client to upstreams (`http://`, `h2c://`, `https://`).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// Builds an upstream client with its own keep-alive pool, TCP_NODELAY and the given connect
/// timeout. The gateway keeps one per distinct `connect_ms` (one per plan, typically).
pub fn client(connect_timeout: Duration, h2c: bool, tls: Option<&UpstreamTls>) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    // Plain pools never use the TLS side; it still needs a config.
    let config = match tls {
        Some(t) => (*t.config).clone(),
        None => rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }),
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let name = tls
        .and_then(|t| t.server_name.clone())
        .and_then(|n| rustls_pki_types::ServerName::try_from(n).ok());
    let builder = match name {
        Some(name) => {
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let connector = builder.enable_http1().enable_http2().wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .http2_only(h2c)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: Balance) -> UpstreamPool {
        let eps = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|a| Endpoint::new(Scheme::HTTP, a.parse().expect("authority")))
            .collect();
        UpstreamPool::new("p", eps, balance)
    }

    #[test]
    fn round_robin_cycles_through_endpoints() {
        let p = pool(Balance::RoundRobin);
        let picks: Vec<String> = (0..6)
            .filter_map(|_| p.pick().map(|(e, _)| e.authority.to_string()))
            .collect();
        assert_eq!(
            picks,
            [
                "127.0.0.1:1",
                "127.0.0.1:2",
                "127.0.0.1:3",
                "127.0.0.1:1",
                "127.0.0.1:2",
                "127.0.0.1:3"
            ]
        );
    }

    #[test]
    fn an_endpoint_failing_in_a_row_is_ejected_and_comes_back_after_the_cool_down() {
        let mut p = pool(Balance::RoundRobin);
        p.health = Health {
            consecutive_failures: 3,
            ejection: Duration::from_millis(150),
        };
        let bad = p.endpoints()[1].clone();
        p.report(&bad, false);
        p.report(&bad, false);
        p.report(&bad, true); // a success in between resets the count
        p.report(&bad, false);
        p.report(&bad, false);
        assert!(!bad.is_ejected());
        p.report(&bad, false);
        assert!(bad.is_ejected());
        for _ in 0..10 {
            let (e, _) = p.pick().expect("endpoint");
            assert_ne!(e.authority, bad.authority, "an ejected endpoint was picked");
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(!bad.is_ejected());
        assert!(
            (0..3).any(|_| p.pick().is_some_and(|(e, _)| e.authority == bad.authority)),
            "back in service after the cool-down"
        );
        // All ejected: panic mode still picks.
        for e in p.endpoints().to_vec() {
            for _ in 0..3 {
                p.report(&e, false);
            }
        }
        assert!(p.pick().is_some());
        // A retry avoids the endpoint that just failed.
        let p = pool(Balance::LeastRequests);
        let first = p.endpoints()[0].clone();
        for _ in 0..5 {
            let (e, _) = p.pick_except(Some(&first)).expect("endpoint");
            assert_ne!(e.authority, first.authority);
        }
    }

    #[test]
    fn least_requests_avoids_busy_endpoints_and_releases_on_drop() {
        let p = pool(Balance::LeastRequests);
        let (a, ga) = p.pick().expect("endpoint");
        let (b, gb) = p.pick().expect("endpoint");
        let (c, _gc) = p.pick().expect("endpoint");
        let mut seen = [
            a.authority.clone(),
            b.authority.clone(),
            c.authority.clone(),
        ];
        seen.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(seen.len(), 3);
        assert_ne!(a.authority, b.authority);
        assert_ne!(b.authority, c.authority);
        drop(ga);
        // `a` is now the only idle endpoint.
        let (d, _gd) = p.pick().expect("endpoint");
        assert_eq!(d.authority, a.authority);
        drop(gb);
        assert_eq!(b.in_flight(), 0);
    }
}
