//! Upstream pools: endpoints, balancing, passive health, and the pooled HTTP client.
//!
//! Pools are part of the snapshot (rebuilt on reload); what they learn while serving is
//! runtime state keyed by identity (`runtime::Runtime`): an endpoint's health and in-flight
//! count by (pool, endpoint, TLS settings), a pool's cursor by its name, the clients and their
//! keep-alive connections by (connect timeout, h2c, TLS settings). A reload that keeps an
//! endpoint keeps its ejection; one that changes a pool's endpoints starts afresh for the
//! changed ones only.

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
use crate::dns::{Bounded, Dns, DnsResolver};

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
    state: Arc<EndpointState>,
    /// For an endpoint named by hostname: its addresses, kept fresh while the endpoint holds
    /// them (runtime state, shared by every endpoint naming the host).
    pub dns: Option<Arc<crate::dns::DnsName>>,
    /// For an endpoint named by IP address: the socket address (no lookup at all).
    pub addr: Option<std::net::SocketAddr>,
}

/// What an endpoint has shown while serving (runtime state; kept across reloads that keep the
/// endpoint).
#[derive(Debug, Default)]
pub struct EndpointState {
    in_flight: AtomicUsize,
    /// Failures in a row (passive health).
    failures: AtomicU32,
    /// Skipped by `pick` until this time (ms on [`clock_ms`]); 0 = in service.
    ejected_until: AtomicU64,
    /// Times passive health checking has ejected this endpoint.
    ejections: AtomicU64,
    /// Its HTTP/1.1 connections (`http://` pools), idle and busy.
    conns: Arc<crate::upstream_h1::Conns>,
}

/// A pool's round-robin cursor and retry count (runtime state, by pool name).
#[derive(Debug, Default)]
pub struct PoolState {
    pub next: AtomicUsize,
    pub retries: AtomicU64,
}

/// Milliseconds since the first call: a cheap monotonic clock for ejection deadlines.
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Endpoint {
    /// An endpoint with fresh state.
    pub fn new(scheme: Scheme, authority: Authority) -> Self {
        Self::with_state(scheme, authority, Arc::default())
    }

    /// An endpoint whose health and in-flight count live in `state` (from the runtime).
    pub fn with_state(scheme: Scheme, authority: Authority, state: Arc<EndpointState>) -> Self {
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = authority.host();
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<std::net::IpAddr>()
            .ok();
        let addr = ip
            .map(|ip| std::net::SocketAddr::new(ip, authority.port_u16().unwrap_or(default_port)));
        Self {
            scheme,
            authority,
            h2c: false,
            state,
            dns: None,
            addr,
        }
    }

    /// The endpoint's HTTP/1.1 connections (the lean path of `http://` pools).
    pub fn conns(&self) -> &Arc<crate::upstream_h1::Conns> {
        &self.state.conns
    }

    /// Whether passive health checking has taken this endpoint out of service right now.
    pub fn is_ejected(&self) -> bool {
        let until = self.state.ejected_until.load(Ordering::Relaxed);
        until != 0 && clock_ms() < until
    }

    /// Requests currently between pick and the end of their response body.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// Failures in a row so far (reset by a success or an ejection).
    pub fn failures(&self) -> u32 {
        self.state.failures.load(Ordering::Relaxed)
    }

    /// Times this endpoint has been ejected.
    pub fn ejections(&self) -> u64 {
        self.state.ejections.load(Ordering::Relaxed)
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

/// Passive health checking (outlier ejection, as Envoy bounds it): `consecutive_failures` the
/// endpoint caused, in a row, eject it for `ejection`, while no more than
/// `max_ejection_percent` of the pool is ejected at once (at least one endpoint may be).
#[derive(Debug, Clone, Copy)]
pub struct Health {
    /// 0 = never eject.
    pub consecutive_failures: u32,
    pub ejection: Duration,
    /// Whether a 5xx answer counts as a failure of the endpoint (default: no, it is the
    /// application's answer).
    pub count_5xx: bool,
    pub max_ejection_percent: u32,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection: Duration::from_secs(30),
            count_5xx: false,
            max_ejection_percent: 50,
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
    /// `capacity:`: the pool's fair-share queue (runtime state, by pool name) and the settings
    /// this snapshot gives it when it is activated.
    capacity: Option<(
        Arc<crate::fairshare::FairQueue>,
        crate::fairshare::CapacitySettings,
    )>,
    /// Its connections' idle timeout and per-endpoint cap (`http://` pools).
    pub conn: crate::upstream_h1::ConnSettings,
    /// Resolves hostname endpoints that have no answer yet (`http://` pools).
    pub dns: Option<Arc<crate::dns::Dns>>,
    endpoints: Box<[Arc<Endpoint>]>,
    balance: Balance,
    state: Arc<PoolState>,
}

/// Counts a request against its endpoint until dropped (with the response body).
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.in_flight.fetch_sub(1, Ordering::Relaxed);
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
            capacity: None,
            conn: crate::upstream_h1::ConnSettings::default(),
            dns: None,
            endpoints: endpoints.into_iter().map(Arc::new).collect(),
            balance,
            state: Arc::default(),
        }
    }

    /// Uses `state` (from the runtime) for the cursor and the retry count.
    pub fn with_state(mut self, state: Arc<PoolState>) -> Self {
        self.state = state;
        self
    }

    /// Gives the pool its fair-share queue (from the runtime) and the settings to apply when
    /// the snapshot is activated.
    pub fn set_capacity(
        &mut self,
        queue: Arc<crate::fairshare::FairQueue>,
        settings: crate::fairshare::CapacitySettings,
    ) {
        self.capacity = Some((queue, settings));
    }

    /// The pool's fair-share queue, when it has a `capacity`.
    pub fn capacity(&self) -> Option<Arc<crate::fairshare::FairQueue>> {
        self.capacity.as_ref().map(|(q, _)| q.clone())
    }

    /// Applies this snapshot's `capacity` settings to the (shared) queue.
    pub fn activate(&self) {
        if let Some((queue, settings)) = &self.capacity
            && queue.settings() != *settings
        {
            queue.reconfigure(*settings);
        }
    }

    /// Whether the pool's requests take the lean HTTP/1.1 path ([`crate::upstream_h1`]): plain
    /// `http://` endpoints. `https://` and `h2c://` pools use the pooled client.
    pub fn is_lean(&self) -> bool {
        self.tls.is_none() && self.endpoints.first().is_some_and(|e| !e.h2c)
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Requests retried on another endpoint since this pool was compiled.
    pub fn retries(&self) -> u64 {
        self.state.retries.load(Ordering::Relaxed)
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
    ///
    /// Round robin runs over the endpoints in service only, so an ejected endpoint's turns are
    /// spread evenly over the rest (not all given to its neighbour).
    pub fn pick_except(&self, avoid: Option<&Endpoint>) -> Option<(Arc<Endpoint>, InFlight)> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        if avoid.is_some() {
            self.state.retries.fetch_add(1, Ordering::Relaxed);
        }
        let turn = self.state.next.fetch_add(1, Ordering::Relaxed);
        let chosen = if n == 1 {
            &self.endpoints[0]
        } else {
            let usable =
                |e: &Endpoint| !e.is_ejected() && avoid.is_none_or(|a| !std::ptr::eq(a, e));
            let in_service = self.endpoints.iter().filter(|e| usable(e)).count();
            if in_service == 0 {
                // Panic mode: every endpoint is out; better a likely failure than a certain one
                // (still away from the one that just failed, when there is another).
                let others = |e: &&Arc<Endpoint>| avoid.is_none_or(|a| !std::ptr::eq(a, &***e));
                let k = self.endpoints.iter().filter(others).count().max(1);
                self.endpoints
                    .iter()
                    .filter(others)
                    .nth(turn % k)
                    .unwrap_or(&self.endpoints[turn % n])
            } else {
                match self.balance {
                    Balance::RoundRobin => self
                        .endpoints
                        .iter()
                        .filter(|e| usable(e))
                        .nth(turn % in_service)
                        .unwrap_or(&self.endpoints[turn % n]),
                    // Least in-flight; ties go round-robin so equal endpoints share the load.
                    Balance::LeastRequests => {
                        let start = turn % n;
                        (0..n)
                            .map(|i| &self.endpoints[(start + i) % n])
                            .filter(|e| usable(e))
                            .min_by_key(|e| e.in_flight())
                            .unwrap_or(&self.endpoints[start])
                    }
                }
            }
        };
        chosen.state.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((chosen.clone(), InFlight(chosen.clone())))
    }

    /// Records how an exchange with `endpoint` went (passive health). Only failures the
    /// endpoint caused count: a refused or reset connection, a broken exchange, a 5xx answer
    /// when `count_5xx` is on. A tenant's own deadline or a client's stalled upload never
    /// reaches here. `consecutive_failures` in a row eject the endpoint for `health.ejection`,
    /// unless `max_ejection_percent` of the pool is out already. A success resets the count.
    pub fn report(&self, endpoint: &Endpoint, ok: bool) {
        let threshold = self.health.consecutive_failures;
        if threshold == 0 {
            return;
        }
        let state = &endpoint.state;
        if ok {
            if state.failures.load(Ordering::Relaxed) != 0 {
                state.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let n = state.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < threshold || endpoint.is_ejected() {
            return;
        }
        let total = self.endpoints.len();
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected()).count();
        let allowed = (total * self.health.max_ejection_percent as usize / 100).max(1);
        if ejected >= allowed {
            tracing::warn!(
                upstream = %self.name,
                endpoint = %endpoint.authority,
                failures = n,
                ejected,
                "endpoint failing but not ejected: max_ejection_percent of the pool is out"
            );
            return;
        }
        state.failures.store(0, Ordering::Relaxed);
        let until = clock_ms() + self.health.ejection.as_millis() as u64;
        state.ejected_until.store(until, Ordering::Relaxed);
        state.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            upstream = %self.name,
            endpoint = %endpoint.authority,
            failures = n,
            ejection_ms = self.health.ejection.as_millis() as u64,
            "endpoint ejected after consecutive failures"
        );
    }

    /// Whether a response with `status` counts as a failure of the endpoint.
    pub fn is_failure(&self, status: http::StatusCode) -> bool {
        self.health.count_5xx && status.is_server_error()
    }
}

/// The pooled client to upstreams (`http://`, `h2c://`, `https://`): hostnames resolved by
/// [`crate::dns`], DNS + TCP + TLS bounded by the connect timeout.
pub type UpstreamClient = Client<Bounded<HttpsConnector<HttpConnector<DnsResolver>>>, ProxyBody>;

/// The clients of one connect timeout, one per kind of pool, resolved at compile time so a
/// request finds its client without a lookup (plain and h2c pools) or with one string compare
/// per TLS pool. The clients and their idle connections are runtime state: they outlive
/// reloads.
pub struct ClientSet {
    pub plain: Arc<UpstreamClient>,
    pub h2c: Arc<UpstreamClient>,
    /// By the TLS settings' fingerprint.
    pub tls: Vec<(String, Arc<UpstreamClient>)>,
}

impl std::fmt::Debug for ClientSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSet")
            .field("tls", &self.tls.len())
            .finish_non_exhaustive()
    }
}

impl ClientSet {
    /// The client for requests to `pool`.
    pub fn for_pool(&self, pool: &UpstreamPool) -> &UpstreamClient {
        match &pool.tls {
            Some(tls) => self
                .tls
                .iter()
                .find(|(fp, _)| *fp == tls.fingerprint)
                .map_or(&*self.plain, |(_, c)| &**c),
            None if pool.endpoints.first().is_some_and(|e| e.h2c) => &self.h2c,
            None => &self.plain,
        }
    }
}

/// Builds an upstream client with its own keep-alive pool, TCP_NODELAY and the given connect
/// timeout, which bounds DNS, TCP and the TLS handshake together. The gateway keeps one per
/// distinct `connect_ms` (one per plan, typically).
pub fn client(
    connect_timeout: Duration,
    h2c: bool,
    tls: Option<&UpstreamTls>,
    dns: Arc<Dns>,
) -> UpstreamClient {
    // The connector's own timeout is per address (it moves on to the next address of a
    // hostname when one does not answer); `Bounded` caps the whole set-up.
    let mut http = HttpConnector::new_with_resolver(DnsResolver(dns));
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
    let connector = Bounded {
        inner: builder.enable_http1().enable_http2().wrap_connector(http),
        timeout: connect_timeout,
    };
    Client::builder(TokioExecutor::new())
        .http2_only(h2c)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(crate::upstream_h1::DEFAULT_IDLE_TIMEOUT)
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
            max_ejection_percent: 100,
            ..Health::default()
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
    fn an_ejected_endpoints_turns_are_spread_over_the_rest_and_ejection_is_bounded() {
        let mut p = pool(Balance::RoundRobin);
        p.health = Health {
            consecutive_failures: 1,
            ..Health::default()
        };
        let eps = p.endpoints().to_vec();
        p.report(&eps[1], false);
        assert!(eps[1].is_ejected());
        let mut counts = [0usize; 3];
        for _ in 0..100 {
            let (e, _) = p.pick().expect("endpoint");
            let i = eps.iter().position(|x| Arc::ptr_eq(x, &e)).expect("known");
            counts[i] += 1;
        }
        assert_eq!(counts, [50, 0, 50], "evenly over the two in service");
        // 50 % of three is one endpoint: a second failing endpoint stays in service.
        p.report(&eps[2], false);
        assert!(!eps[2].is_ejected());
        // A retry still avoids the endpoint that just failed.
        for _ in 0..5 {
            let (e, _) = p.pick_except(Some(&eps[0])).expect("endpoint");
            assert!(Arc::ptr_eq(&e, &eps[2]));
        }
    }

    #[test]
    fn health_state_outlives_the_pool_that_shares_it() {
        let state: Arc<EndpointState> = Arc::default();
        let mut first = UpstreamPool::new(
            "p",
            vec![Endpoint::with_state(
                Scheme::HTTP,
                "127.0.0.1:1".parse().expect("authority"),
                state.clone(),
            )],
            Balance::RoundRobin,
        );
        first.health.consecutive_failures = 1;
        first.report(&first.endpoints()[0].clone(), false);
        let second = UpstreamPool::new(
            "p",
            vec![Endpoint::with_state(
                Scheme::HTTP,
                "127.0.0.1:1".parse().expect("authority"),
                state,
            )],
            Balance::RoundRobin,
        );
        assert!(second.endpoints()[0].is_ejected());
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
