//! Upstream pools: endpoints, balancing, and the pooled HTTP client that forwards to them.
//!
//! Pools are part of the snapshot (rebuilt on reload); the client and its keep-alive
//! connections belong to the gateway and survive reloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
}

impl Endpoint {
    pub fn new(scheme: Scheme, authority: Authority) -> Self {
        Self {
            scheme,
            authority,
            h2c: false,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Requests currently between pick and the end of their response body.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
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

#[derive(Debug)]
pub struct UpstreamPool {
    pub name: Box<str>,
    pub tls: Option<Arc<UpstreamTls>>,
    endpoints: Box<[Arc<Endpoint>]>,
    balance: Balance,
    next: AtomicUsize,
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
            endpoints: endpoints.into_iter().map(Arc::new).collect(),
            balance,
            next: AtomicUsize::new(0),
        }
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Chooses an endpoint and counts the request against it. `None` for an empty pool.
    pub fn pick(&self) -> Option<(Arc<Endpoint>, InFlight)> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let chosen = match self.balance {
            Balance::RoundRobin => &self.endpoints[start],
            // Least in-flight; ties go round-robin so equal endpoints share the load.
            Balance::LeastRequests => (0..n)
                .map(|i| &self.endpoints[(start + i) % n])
                .min_by_key(|e| e.in_flight())
                .unwrap_or(&self.endpoints[start]),
        };
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((chosen.clone(), InFlight(chosen.clone())))
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
