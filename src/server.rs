//! Listener lifecycle: accept under a global connection cap, TLS handshake under a deadline
//! (SNI kept with the connection), HTTP/1.1 + HTTP/2 by `hyper_util`'s auto builder with hyper's
//! timer set (so header-read timeouts fire), and a graceful drain with a deadline.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::conn::{ConnInfo, HeadScanner};
use crate::io::ObserveReads;
use crate::metrics::Metrics;
use crate::proxy;
use crate::shared::Shared;
use crate::snapshot::{ConnLimits, Snapshot};

/// The TLS acceptor shared by every TLS listener; certificates come from the live snapshot.
pub fn tls_acceptor(snapshot: Arc<ArcSwap<Snapshot>>) -> Result<TlsAcceptor, rustls::Error> {
    Ok(TlsAcceptor::from(crate::tls_accept::server_config(
        snapshot,
    )?))
}

/// Everything one listener needs besides its socket.
pub struct ListenerCtx {
    pub name: String,
    pub tls: Option<TlsAcceptor>,
    pub shared: Arc<Shared>,
    /// Global cap shared by all listeners (`limits.max_connections`).
    pub connections: Arc<Semaphore>,
    /// `listeners[].proxy_protocol`: a PROXY header from a trusted peer comes first.
    pub proxy_protocol: bool,
}

/// Serves `listener` until `shutdown` turns true, then drains within `limits.shutdown_grace_ms`.
pub async fn run(listener: TcpListener, ctx: ListenerCtx, mut shutdown: watch::Receiver<bool>) {
    let ctx = Arc::new(ctx);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // At the cap, this listener stops accepting until a slot frees: the one connection
        // already accepted waits unserved and the rest wait in the kernel's backlog.
        let permit = match ctx.connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::select! {
                p = ctx.connections.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = shutdown.changed() => break,
            },
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let ctx = ctx.clone();
        // A span per connection (debug level: free unless asked for with RUST_LOG).
        let span = tracing::debug_span!("conn", listener = %ctx.name, %remote);
        tokio::spawn(
            async move {
                serve_connection(ctx, stream, remote, permit, watcher).await;
            }
            .instrument(span),
        );
    }
    drop(listener);
    let grace = ctx.shared.snapshot().limits.shutdown_grace;
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(listener = %ctx.name, "drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!(listener = %ctx.name, "grace period over; closing remaining connections"),
    }
}

fn builder(limits: &ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // hyper answers a head over `max_buf_size` or with more than `max_headers` fields with a
    // bare 431 and closes; the gateway's JSON 431/414 cover what hyper lets through.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        // Rapid reset (CVE-2023-44487): streams reset by the client before we accepted them,
        // and streams we had to reset for protocol errors, both end in GOAWAY past the cap.
        .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
        .max_local_error_reset_streams(1024)
        .max_send_buf_size(limits.h2_max_send_buffer)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    b
}

/// What a connection holds while it lives: its slot under the global cap, its count against
/// its client IP (`limits.max_connections_per_ip`) and the active-connections gauge. It lives in
/// the connection's `ConnInfo`, so an upgraded connection (WebSocket), whose splice holds the
/// `ConnInfo` of its last request, keeps all three until it closes.
struct ConnSlot {
    gw: Arc<Shared>,
    /// Counted against this IP, when the per-IP cap is on.
    ip: Option<std::net::IpAddr>,
    _permit: OwnedSemaphorePermit,
}

impl ConnSlot {
    /// `None` when `ip` already holds `cap` connections (`cap` 0: no per-IP cap).
    fn take(
        gw: Arc<Shared>,
        ip: std::net::IpAddr,
        cap: usize,
        permit: OwnedSemaphorePermit,
    ) -> Option<Self> {
        let counted = if cap == 0 {
            None
        } else {
            let mut n = gw.per_ip.entry(ip).or_insert(0);
            if *n >= cap {
                return None;
            }
            *n += 1;
            Some(ip)
        };
        gw.metrics().active_connections.inc();
        Some(Self {
            gw,
            ip: counted,
            _permit: permit,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.gw.metrics().active_connections.dec();
        if let Some(ip) = self.ip {
            // Remove the entry at zero so the map holds only IPs with open connections.
            self.gw.per_ip.remove_if_mut(&ip, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
    }
}

/// Resolves once the connection has had no request in progress for `limit` (checked a few
/// times per period). HTTP/1.1 keep-alive connections are also closed by hyper's header-read
/// timer, which starts when it waits for the next request.
async fn idle(conn: &ConnInfo, limit: std::time::Duration) {
    let tick = (limit / 4).max(std::time::Duration::from_millis(10));
    loop {
        tokio::time::sleep(tick).await;
        if conn.idle_for() >= limit {
            return;
        }
    }
}

async fn serve_connection(
    ctx: Arc<ListenerCtx>,
    mut stream: TcpStream,
    remote: std::net::SocketAddr,
    permit: OwnedSemaphorePermit,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let limits = ctx.shared.snapshot().limits;
    let metrics = ctx.shared.metrics();
    // PROXY protocol: the client is who the trusted balancer says (before the per-IP cap).
    let (remote, proxied_by) = if ctx.proxy_protocol {
        let trusted = ctx.shared.snapshot().trusted_proxies.clone();
        match crate::proxy_protocol::accept(&mut stream, remote, &trusted, limits.header_timeout)
            .await
        {
            Ok(client) => (client.unwrap_or(remote), Some(remote)),
            Err(refused) => {
                tracing::debug!(%remote, reason = refused.as_str(), "PROXY header refused; closing");
                Metrics::count(&metrics.connections_closed, "reason", refused.as_str());
                return;
            }
        }
    } else {
        (remote, None)
    };
    let Some(slot) = ConnSlot::take(
        ctx.shared.clone(),
        remote.ip(),
        limits.max_connections_per_ip,
        permit,
    ) else {
        tracing::debug!(%remote, "per-IP connection cap reached; closing");
        Metrics::count(&metrics.connections_closed, "reason", "per_ip_cap");
        return;
    };
    let slot: Box<dyn std::any::Any + Send + Sync> = Box::new(slot);
    let builder = builder(&limits);
    let gw = ctx.shared.clone();
    let served = match &ctx.tls {
        None => {
            // hyper's header timer starts with the first byte; a client that connects and
            // sends nothing is closed after the same deadline.
            // (`readable()` can report a fresh socket ready; `peek` waits for a real byte.)
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(limits.header_timeout, stream.peek(&mut first)).await,
                Ok(Ok(1))
            ) {
                tracing::debug!(%remote, "no request within the header timeout; closing");
                Metrics::count(&metrics.connections_closed, "reason", "first_byte_timeout");
                return;
            }
            let conn = Arc::new(
                ConnInfo::new(remote, false, None)
                    .proxied_by(proxied_by)
                    .holding(slot),
            );
            serve(&builder, stream, conn, gw, watcher, limits.idle_timeout).await
        }
        Some(acceptor) => {
            let tls_stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        if let Some(reason) = crate::client_auth::failure_reason(&e) {
                            Metrics::count(&metrics.client_cert_failures, "reason", reason);
                        }
                        let reason = match e.kind() {
                            std::io::ErrorKind::InvalidData => "tls_error",
                            std::io::ErrorKind::UnexpectedEof => "client_closed",
                            _ => "io",
                        };
                        Metrics::count(&metrics.tls_handshake_failures, "reason", reason);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        Metrics::count(&metrics.tls_handshake_failures, "reason", "timeout");
                        return;
                    }
                };
            let sni = tls_stream.get_ref().1.server_name();
            let sans = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(crate::client_auth::cert_sans)
                .unwrap_or_default();
            let conn = Arc::new(
                ConnInfo::new(remote, true, sni)
                    .proxied_by(proxied_by)
                    .with_client_sans(sans)
                    .holding(slot),
            );
            if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                conn.head_scan().disable();
            }
            serve(&builder, tls_stream, conn, gw, watcher, limits.idle_timeout).await
        }
    };
    if let Err(e) = served {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

/// Serves HTTP/1.1 and HTTP/2 on one accepted connection until it ends, the drain closes it,
/// or it has been idle (no request in progress) for `idle_limit`.
async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    conn: Arc<ConnInfo>,
    gw: Arc<Shared>,
    watcher: hyper_util::server::graceful::Watcher,
    idle_limit: std::time::Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let c = conn.clone();
    let g = gw.clone();
    let service = service_fn(move |req| proxy::handle(g.clone(), c.clone(), req));
    let io = ObserveReads::new(io, HeadScanner::new(conn.clone()));
    let fut = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::select! {
        r = watcher.watch(fut.into_owned()) => r,
        _ = idle(&conn, idle_limit) => {
            tracing::debug!(remote = %conn.remote, "idle connection closed");
            Metrics::count(&gw.metrics().connections_closed, "reason", "idle");
            Ok(())
        }
    }
}
