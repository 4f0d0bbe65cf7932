//! Upstream endpoints named by hostname: asynchronous resolution, every address used, refreshed
//! on the record's TTL (or `upstreams.<pool>.dns_refresh_ms`).
//!
//! `compile` registers each hostname an endpoint names ([`Dns::name`]); the returned
//! [`DnsName`] is runtime state held by the endpoint, and while something holds it a background
//! task re-resolves it when its answer expires. The connector's resolver ([`DnsResolver`]) reads
//! the current answer without waiting, rotating the starting address so successive connections
//! spread over every address; the connector falls back to the next address when one refuses.
//! Nothing on the request path calls the blocking `getaddrinfo`: lookups go through
//! hickory-resolver (`/etc/hosts`, then the nameservers of `/etc/resolv.conf` or `dns.nameservers`).
//! A failed refresh keeps the last good answer (a DNS outage does not take a pool down), as
//! Envoy's strict-DNS clusters do.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hyper_util::client::legacy::connect::dns::Name;

/// The shortest and longest time an answer is used before it is asked again.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Retry delay after a failed refresh, doubled up to the maximum.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The resolver of one `dns:` section (runtime state, by its nameservers) and the hostnames
/// registered with it.
pub struct Dns {
    /// `dns.nameservers`; empty = the system's (`/etc/resolv.conf`).
    nameservers: Vec<SocketAddr>,
    resolver: OnceLock<Result<TokioResolver, String>>,
    names: DashMap<Box<str>, Weak<DnsName>>,
    lookups: AtomicU64,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("nameservers", &self.nameservers)
            .field("names", &self.names.len())
            .finish_non_exhaustive()
    }
}

/// One hostname's current answer (runtime state, held by the endpoints that name it).
#[derive(Debug)]
pub struct DnsName {
    host: Box<str>,
    addrs: Mutex<Arc<[IpAddr]>>,
    /// Where the next connection starts in `addrs`.
    cursor: AtomicUsize,
    /// Fixed refresh interval in ms (0 = the record's TTL); several pools naming one host share
    /// the shortest.
    refresh_ms: AtomicU64,
    /// Successful lookups so far.
    resolved: AtomicU64,
}

/// A lookup's answer: addresses and how long they may be used.
struct Answer {
    addrs: Arc<[IpAddr]>,
    ttl: Duration,
}

impl Dns {
    /// A resolver using `nameservers` (`ip:port`), or the system's when empty.
    pub fn new(nameservers: Vec<SocketAddr>) -> Self {
        Self {
            nameservers,
            resolver: OnceLock::new(),
            names: DashMap::new(),
            lookups: AtomicU64::new(0),
        }
    }

    /// Lookups sent so far (first resolutions and refreshes).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The state of `host`, shared with every other endpoint naming it, with a refresh task
    /// when called inside a runtime (`check` compiles without one and resolves nothing).
    /// `refresh` is `dns_refresh_ms` (`None`: follow the record's TTL).
    pub fn name(self: &Arc<Self>, host: &str, refresh: Option<Duration>) -> Arc<DnsName> {
        let refresh_ms = refresh.map_or(0, |d| (d.as_millis() as u64).max(1));
        if let Some(existing) = self.names.get(host).and_then(|w| w.upgrade()) {
            if refresh_ms != 0 {
                let _ =
                    existing
                        .refresh_ms
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                            (cur == 0 || refresh_ms < cur).then_some(refresh_ms)
                        });
            }
            return existing;
        }
        self.names.retain(|_, w| w.strong_count() > 0);
        let name = Arc::new(DnsName {
            host: host.into(),
            addrs: Mutex::new(Arc::from(Vec::new())),
            cursor: AtomicUsize::new(0),
            refresh_ms: AtomicU64::new(refresh_ms),
            resolved: AtomicU64::new(0),
        });
        self.names.insert(host.into(), Arc::downgrade(&name));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(refresh_loop(self.clone(), Arc::downgrade(&name)));
        }
        name
    }

    fn resolver(&self) -> Result<&TokioResolver, String> {
        self.resolver
            .get_or_init(|| build_resolver(&self.nameservers))
            .as_ref()
            .map_err(Clone::clone)
    }

    async fn lookup(&self, host: &str) -> Result<Answer, String> {
        let resolver = self.resolver()?;
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let found = resolver
            .lookup_ip(host)
            .await
            .map_err(|e| format!("DNS lookup of {host}: {e}"))?;
        let addrs: Vec<IpAddr> = found.iter().collect();
        if addrs.is_empty() {
            return Err(format!("DNS lookup of {host}: no addresses"));
        }
        let ttl = found
            .valid_until()
            .saturating_duration_since(Instant::now());
        Ok(Answer {
            addrs: addrs.into(),
            ttl,
        })
    }

    /// The addresses to try for `host`, starting at a different one each call. Answers from
    /// the registered name without waiting; resolves now when nothing is known yet.
    pub(crate) async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let name = self.names.get(host).and_then(|w| w.upgrade());
        if let Some(name) = &name
            && let Some(addrs) = name.rotated()
        {
            return Ok(addrs);
        }
        let answer = self.lookup(host).await?;
        match name {
            Some(name) => {
                name.store(answer.addrs);
                Ok(name.rotated().unwrap_or_default())
            }
            None => Ok(answer.addrs.to_vec()),
        }
    }
}

impl DnsName {
    /// The current addresses (empty until the first answer).
    pub fn addresses(&self) -> Arc<[IpAddr]> {
        self.addrs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Successful lookups of this name so far.
    pub fn resolved(&self) -> u64 {
        self.resolved.load(Ordering::Relaxed)
    }

    fn store(&self, addrs: Arc<[IpAddr]>) {
        *self.addrs.lock().unwrap_or_else(|p| p.into_inner()) = addrs;
        self.resolved.fetch_add(1, Ordering::Relaxed);
    }

    /// The addresses, starting at the next one each call (`None` until the first answer).
    pub(crate) fn rotated(&self) -> Option<Vec<IpAddr>> {
        let addrs = self.addresses();
        if addrs.is_empty() {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % addrs.len();
        Some(
            addrs[start..]
                .iter()
                .chain(&addrs[..start])
                .copied()
                .collect(),
        )
    }

    /// How long an answer with `ttl` is used before the next lookup.
    fn next_refresh(&self, ttl: Duration) -> Duration {
        match self.refresh_ms.load(Ordering::Relaxed) {
            0 => ttl.clamp(MIN_REFRESH, MAX_REFRESH),
            ms => Duration::from_millis(ms),
        }
    }
}

/// Resolves `name` now and again whenever its answer expires, for as long as an endpoint holds
/// it. A failed lookup keeps the last answer and is retried with a growing delay.
async fn refresh_loop(dns: Arc<Dns>, name: Weak<DnsName>) {
    let mut retry = RETRY_MIN;
    loop {
        let Some(host) = name.upgrade().map(|n| n.host.clone()) else {
            return;
        };
        let wait = match dns.lookup(&host).await {
            Ok(answer) => {
                let Some(n) = name.upgrade() else { return };
                let changed = *n.addresses() != *answer.addrs;
                if changed && n.resolved() > 0 {
                    tracing::info!(host = %host, addresses = ?answer.addrs, "upstream addresses changed");
                }
                n.store(answer.addrs);
                retry = RETRY_MIN;
                n.next_refresh(answer.ttl)
            }
            Err(e) => {
                tracing::warn!(error = %e, "upstream DNS refresh failed; keeping the last answer");
                let wait = retry;
                retry = (retry * 2).min(RETRY_MAX);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn build_resolver(nameservers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("reading the system DNS configuration: {e}"))?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    // Every address of both families; the connector tries them in turn.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // This module keeps the answers and decides when to ask again; a second cache inside the
    // resolver would hide a `dns_refresh_ms` shorter than the TTL.
    opts.cache_size = 0;
    builder
        .build()
        .map_err(|e| format!("building the DNS resolver: {e}"))
}

/// The connector's resolver: the registered answer, rotated, without a blocking call.
#[derive(Clone, Debug)]
pub struct DnsResolver(pub Arc<Dns>);

impl tower_service::Service<Name> for DnsResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let dns = self.0.clone();
        Box::pin(async move {
            let addrs = dns
                .resolve(name.as_str())
                .await
                .map_err(std::io::Error::other)?;
            Ok(addrs
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

/// A connector whose whole connection set-up (DNS, TCP, TLS handshake) is bounded by
/// `connect_ms`; on expiry the error is a `TimedOut` I/O error (a connect failure).
#[derive(Clone, Debug)]
pub struct Bounded<C> {
    pub inner: C,
    pub timeout: Duration,
}

impl<C> tower_service::Service<http::Uri> for Bounded<C>
where
    C: tower_service::Service<http::Uri> + Send,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = C::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let timeout = self.timeout;
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(connect_timed_out(timeout)) as _),
            }
        })
    }
}

/// The error of a connection set-up (DNS, TCP, TLS) that `connect_ms` cut short: a `TimedOut`
/// I/O error, which the forward phase reports as an upstream timeout.
pub fn connect_timed_out(timeout: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "connect_ms ({} ms) elapsed before the connection was ready (DNS, TCP and TLS)",
            timeout.as_millis()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(addrs: &[&str]) -> DnsName {
        let n = DnsName {
            host: "svc".into(),
            addrs: Mutex::new(Arc::from(Vec::new())),
            cursor: AtomicUsize::new(0),
            refresh_ms: AtomicU64::new(0),
            resolved: AtomicU64::new(0),
        };
        n.store(addrs.iter().map(|a| a.parse().expect("ip")).collect());
        n
    }

    #[test]
    fn each_call_starts_at_the_next_address() {
        let n = name(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        let firsts: Vec<String> = (0..6)
            .map(|_| n.rotated().expect("addresses")[0].to_string())
            .collect();
        assert_eq!(
            firsts,
            [
                "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.3"
            ]
        );
        // Every call still offers every address, so a refused one falls through to the rest.
        assert_eq!(n.rotated().expect("addresses").len(), 3);
    }

    #[test]
    fn nothing_known_yet_is_none() {
        let n = name(&[]);
        assert!(n.rotated().is_none());
    }

    #[test]
    fn refresh_follows_the_ttl_within_bounds_unless_fixed() {
        let n = name(&["10.0.0.1"]);
        assert_eq!(
            n.next_refresh(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(n.next_refresh(Duration::ZERO), MIN_REFRESH);
        assert_eq!(n.next_refresh(Duration::from_secs(86_400)), MAX_REFRESH);
        n.refresh_ms.store(250, Ordering::Relaxed);
        assert_eq!(
            n.next_refresh(Duration::from_secs(30)),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn pools_naming_one_host_share_it_and_the_shortest_refresh() {
        let dns = Arc::new(Dns::new(Vec::new()));
        let a = dns.name("svc.internal", None);
        let b = dns.name("svc.internal", Some(Duration::from_millis(800)));
        let c = dns.name("svc.internal", Some(Duration::from_millis(2000)));
        assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&b, &c));
        assert_eq!(a.refresh_ms.load(Ordering::Relaxed), 800);
        drop((a, b, c));
        let d = dns.name("svc.internal", None);
        assert_eq!(
            d.refresh_ms.load(Ordering::Relaxed),
            0,
            "a forgotten name starts afresh"
        );
    }
}
