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

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::proxy::{self, ConnInfo};
use crate::snapshot::{ConnLimits, Snapshot};
use crate::tls;

/// The TLS acceptor shared by every TLS listener; certificates come from the live snapshot.
pub fn tls_acceptor(snapshot: Arc<ArcSwap<Snapshot>>) -> Result<TlsAcceptor, rustls::Error> {
    Ok(TlsAcceptor::from(tls::server_config(snapshot)?))
}

/// Everything one listener needs besides its socket.
pub struct ListenerCtx {
    pub name: String,
    pub tls: Option<TlsAcceptor>,
    pub gateway: Arc<Gateway>,
    /// Global cap shared by all listeners (`limits.max_connections`).
    pub connections: Arc<Semaphore>,
}

/// Serves `listener` until `shutdown` turns true, then drains within `limits.shutdown_grace_ms`.
pub async fn run(listener: TcpListener, ctx: ListenerCtx, mut shutdown: watch::Receiver<bool>) {
    let ctx = Arc::new(ctx);
    let graceful = GracefulShutdown::new();
    loop {
        // Take a connection slot before accepting: at the cap, new connections wait in the
        // kernel's backlog instead of costing us memory.
        let permit = tokio::select! {
            p = ctx.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
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
    let grace = ctx.gateway.snapshot().limits.shutdown_grace;
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(listener = %ctx.name, "drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!(listener = %ctx.name, "grace period over; closing remaining connections"),
    }
}

fn builder(limits: &ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    b
}

async fn serve_connection(
    ctx: Arc<ListenerCtx>,
    stream: TcpStream,
    remote: std::net::SocketAddr,
    _permit: OwnedSemaphorePermit,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let limits = ctx.gateway.snapshot().limits;
    let builder = builder(&limits);
    let gw = ctx.gateway.clone();
    let metrics = ctx.gateway.metrics();
    metrics.active_connections.inc();
    // Decrements when the connection ends, however it ends.
    struct Open<'a>(&'a prometheus_client::metrics::gauge::Gauge);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    let _open = Open(&metrics.active_connections);
    match &ctx.tls {
        None => {
            let conn = Arc::new(ConnInfo::new(remote, false, None));
            let service = service_fn(move |req| proxy::handle(gw.clone(), conn.clone(), req));
            let fut = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(fut.into_owned()).await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        }
        Some(acceptor) => {
            let tls_stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
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
            let conn = Arc::new(ConnInfo::new(remote, true, sni));
            let service = service_fn(move |req| proxy::handle(gw.clone(), conn.clone(), req));
            let fut = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service);
            if let Err(e) = watcher.watch(fut.into_owned()).await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        }
    }
}
