//! Listener lifecycle: accept under a global connection cap, TLS handshake under a deadline
//! (SNI kept with the connection), HTTP/1.1 + HTTP/2 by `hyper_util`'s auto builder with hyper's
//! timer set (so header-read timeouts fire), and a graceful drain with a deadline.

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::conn::{ConnInfo, HeadScanner};
use crate::io::{Home, Lease, ObserveReads};
use crate::metrics::Metrics;
use crate::parking::Parking;
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
    /// The HTTP builder for the current connection limits, shared by this listener's
    /// connections (rebuilt when a reload changes the limits it is made from).
    pub builders: std::sync::Mutex<Option<(BuilderKey, Arc<auto::Builder<TokioExecutor>>)>>,
    /// Where this listener's HTTP/1 connections wait between requests (one shared sweep).
    pub parking: Arc<Parking>,
}

/// The connection limits an HTTP builder is made from.
type BuilderKey = (std::time::Duration, usize, usize, u32, usize, usize);

impl ListenerCtx {
    fn builder(&self, limits: &ConnLimits) -> Arc<auto::Builder<TokioExecutor>> {
        let key = (
            limits.header_timeout,
            limits.max_header_bytes,
            limits.max_headers,
            limits.h2_max_concurrent_streams,
            limits.h2_max_pending_reset_streams,
            limits.h2_max_send_buffer,
        );
        let mut cached = self.builders.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((k, b)) if *k == key => b.clone(),
            _ => {
                let b = Arc::new(builder(limits));
                *cached = Some((key, b.clone()));
                b
            }
        }
    }
}

/// `n` listening sockets on `addr` (all on the port the first one got, when `addr` asks for
/// port 0). With more than one, each has `SO_REUSEPORT`, and the kernel spreads new connections
/// over them by their address hash (nginx's `reuseport`). Returned as std sockets, so each is
/// registered with the runtime that serves it ([`run_std`]).
pub fn bind(addr: std::net::SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut sockets = Vec::with_capacity(n.max(1));
    let mut at = addr;
    for _ in 0..n.max(1) {
        let socket = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if n > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        socket.listen(1024)?;
        let listener = std::net::TcpListener::from(socket);
        at = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(sockets)
}

/// [`run`] on a socket from [`bind`], registered with the runtime this runs on.
pub async fn run_std(
    socket: std::net::TcpListener,
    ctx: ListenerCtx,
    shutdown: watch::Receiver<bool>,
) {
    match TcpListener::from_std(socket) {
        Ok(listener) => run(listener, ctx, shutdown).await,
        Err(e) => {
            tracing::error!(listener = %ctx.name, error = %e, "cannot serve the listener's socket")
        }
    }
}

/// Serves `listener` until `shutdown` turns true, then drains within `limits.shutdown_grace_ms`.
pub async fn run(listener: TcpListener, ctx: ListenerCtx, mut shutdown: watch::Receiver<bool>) {
    let ctx = Arc::new(ctx);
    // The drain signal: every connection holds a receiver; the drain waits for all to drop it.
    let (drain, _) = watch::channel(());
    // The parked connections' idle deadlines are checked a few times per period by one sweep;
    // it ends (waking them all) when the drain begins.
    let sweep = {
        let (parking, shared, drain) = (ctx.parking.clone(), ctx.shared.clone(), drain.subscribe());
        tokio::spawn(async move {
            let tick = || {
                let limits = shared.snapshot().limits;
                check_every(parked_limit(limits.idle_timeout, limits.header_timeout))
                    .min(std::time::Duration::from_secs(1))
            };
            parking.sweep(tick, drain).await
        })
    };
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    let reason = match e.raw_os_error() {
                        Some(libc::EMFILE | libc::ENFILE) => "too_many_open_files",
                        _ => "other",
                    };
                    Metrics::count(&ctx.shared.metrics().accept_errors, "reason", reason);
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
                p = {
                    ctx.shared.metrics().connection_limit_reached.inc();
                    ctx.connections.clone().acquire_owned()
                } => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = shutdown.changed() => break,
            },
        };
        let _ = stream.set_nodelay(true);
        let watcher = drain.subscribe();
        let ctx = ctx.clone();
        // A span per connection (debug level: free unless asked for with RUST_LOG).
        let span = tracing::debug_span!("conn", listener = %ctx.name, %remote);
        // Not boxed: both phases inside are, so the task's own cell stays a few hundred bytes
        // whatever the connection's state (one allocation fewer per connection).
        tokio::spawn(serve_connection(ctx, stream, remote, permit, watcher).instrument(span));
    }
    drop(listener);
    let grace = ctx.shared.snapshot().limits.shutdown_grace;
    let _ = drain.send(());
    let _ = sweep.await;
    tokio::select! {
        _ = drain.closed() => tracing::info!(listener = %ctx.name, "drained"),
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
    let tick = check_every(limit);
    loop {
        tokio::time::sleep(tick).await;
        if conn.idle_for() >= limit {
            return;
        }
    }
}

/// How often an idle limit is checked: a few times per period, at most every 10 ms.
fn check_every(limit: std::time::Duration) -> std::time::Duration {
    (limit / 4).max(std::time::Duration::from_millis(10))
}

/// How long a connection may wait for its next request: the idle timeout, bounded by the
/// header timeout as hyper bounds it.
fn parked_limit(idle: std::time::Duration, header: std::time::Duration) -> std::time::Duration {
    idle.min(header)
}

/// A connection's serving loop, boxed (see [`serve`]).
type Serving =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send + 'static>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One connection: the accept phase (PROXY header, caps, TLS handshake or first byte), then its
/// serving loop. Each is boxed and only one lives at a time, so what a connection holds while it
/// waits is the small serving loop, not the handshake's state.
async fn serve_connection(
    ctx: Arc<ListenerCtx>,
    stream: TcpStream,
    remote: std::net::SocketAddr,
    permit: OwnedSemaphorePermit,
    watcher: watch::Receiver<()>,
) {
    let Some(serving) = Box::pin(accept(ctx, stream, remote, permit, watcher)).await else {
        return;
    };
    if let Err(e) = serving.await {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

/// The accept phase of a connection; `None` when it ends there.
async fn accept(
    ctx: Arc<ListenerCtx>,
    mut stream: TcpStream,
    remote: std::net::SocketAddr,
    permit: OwnedSemaphorePermit,
    watcher: watch::Receiver<()>,
) -> Option<Serving> {
    let limits = ctx.shared.snapshot().limits;
    let metrics = ctx.shared.metrics();
    // PROXY protocol: the client is who the trusted balancer says (before the per-IP cap).
    let (remote, proxied_by) = if ctx.proxy_protocol {
        let trusted = ctx.shared.snapshot().trusted_proxies.clone();
        // Boxed (as the handshake and the serving loop below): the task keeps only the state
        // of the phase it is in, so a waiting connection's task stays small.
        match Box::pin(crate::proxy_protocol::accept(
            &mut stream,
            remote,
            &trusted,
            limits.header_timeout,
        ))
        .await
        {
            Ok(client) => (client.unwrap_or(remote), Some(remote)),
            Err(refused) => {
                tracing::debug!(%remote, reason = refused.as_str(), "PROXY header refused; closing");
                Metrics::count(&metrics.connections_closed, "reason", refused.as_str());
                return None;
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
        return None;
    };
    let slot: Box<dyn std::any::Any + Send + Sync> = Box::new(slot);
    let builder = ctx.builder(&limits);
    let timeouts = (limits.idle_timeout, limits.header_timeout);
    match &ctx.tls {
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
                return None;
            }
            // HTTP/2 with prior knowledge starts with its preface (`PRI * HTTP/2.0`); only
            // HTTP/1 connections park between requests.
            let h1 = first[0] != b'P' || !starts_h2_preface(&stream).await;
            let conn = Arc::new(
                ConnInfo::new(remote, false, None)
                    .proxied_by(proxied_by)
                    .holding(slot),
            );
            Some(Box::pin(serve(
                builder,
                stream,
                conn,
                ctx.clone(),
                watcher,
                timeouts,
                h1,
            )))
        }
        Some(acceptor) => {
            let tls_stream = match Box::pin(tokio::time::timeout(
                limits.handshake_timeout,
                acceptor.accept(stream),
            ))
            .await
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
                    return None;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    Metrics::count(&metrics.tls_handshake_failures, "reason", "timeout");
                    return None;
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
            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            if h2 {
                conn.head_scan().disable();
            }
            Some(Box::pin(serve(
                builder,
                tls_stream,
                conn,
                ctx.clone(),
                watcher,
                timeouts,
                !h2,
            )))
        }
    }
}

/// How long an HTTP/1 connection has had no request in progress before it parks: hyper's
/// connection (its read and write buffers, its state) is dropped and the task waits for the
/// next request's first byte holding only the socket (and, over TLS, the rustls session).
/// Long enough that a busy keep-alive client never parks between its requests.
const PARK_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// Counts a connection in `parked_connections` while it lives.
struct ParkedGauge(prometheus_client::metrics::gauge::Gauge);

impl ParkedGauge {
    fn new(g: &prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for ParkedGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether the bytes waiting on a plain connection begin the HTTP/2 preface (`PRI * HTTP/2.0`).
async fn starts_h2_preface(stream: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
    let mut head = [0u8; 16];
    match stream.peek(&mut head).await {
        Ok(n) => n > 0 && PREFACE.starts_with(&head[..n.min(PREFACE.len())]),
        Err(_) => false,
    }
}

/// A client stream the serving loop can wait on between requests without reading from it.
trait Waiting: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {
    /// Ready when the next request's first bytes are there (or the client closed: hyper then
    /// reads the end and the connection ends). Nothing is buffered, and no future is held,
    /// while it waits: the socket's own read readiness carries the waker.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

impl Waiting for TcpStream {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut byte = [0u8; 1];
        self.poll_peek(cx, &mut tokio::io::ReadBuf::new(&mut byte))
            .map(|_| ())
    }
}

impl Waiting for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Plaintext rustls already holds (a request that came with the last one) is ready now.
        let (tcp, tls) = self.get_mut();
        let pending = tls.process_new_packets().map_or(true, |s| {
            s.plaintext_bytes_to_read() > 0 || s.peer_has_closed()
        });
        if pending {
            return Poll::Ready(());
        }
        tcp.poll_ready(cx)
    }
}

/// Why a waiting connection stopped waiting.
enum Woke {
    /// The next request's first bytes are there.
    Request,
    /// The drain began.
    Drain,
    /// No request has been in progress for the limit.
    Idle,
}

/// Waits for the next request holding nothing but the socket: its waker sits in the stream's
/// read readiness and in one `parking` slot (the shared sweep wakes it when `limit` may have
/// passed, and at the drain).
async fn wait_for_request<S: Waiting>(
    stream: &mut S,
    drain: &watch::Receiver<()>,
    conn: &ConnInfo,
    limit: std::time::Duration,
    parking: &Parking,
) -> Woke {
    let mut spot = parking.spot();
    std::future::poll_fn(|cx| {
        if stream.poll_ready(cx).is_ready() {
            return Poll::Ready(Woke::Request);
        }
        if drain.has_changed().unwrap_or(true) {
            return Poll::Ready(Woke::Drain);
        }
        let idle = conn.idle_for();
        if idle >= limit {
            return Poll::Ready(Woke::Idle);
        }
        spot.wait_until(cx.waker(), tokio::time::Instant::now() + (limit - idle));
        Poll::Pending
    })
    .await
}

/// How a lease of the connection to hyper ended.
enum Served {
    /// hyper's connection ended (`draining`: the drain had begun).
    Ended {
        result: Result<(), BoxError>,
        draining: bool,
    },
    /// No request was in progress for the idle timeout.
    Idle,
}

/// Serves one lease of the connection with a fresh hyper connection until it ends, the drain
/// closes it, or it has been idle for `idle_limit`.
async fn serve_lease<S: Waiting>(
    builder: &auto::Builder<TokioExecutor>,
    lease: Lease<S, ConnInfo>,
    gw: &Arc<Shared>,
    conn: &Arc<ConnInfo>,
    drain: &mut watch::Receiver<()>,
    idle_limit: std::time::Duration,
) -> Served {
    let (g, c) = (gw.clone(), conn.clone());
    let service = service_fn(move |req| proxy::handle(g.clone(), c.clone(), req));
    let io = ObserveReads::new(lease, HeadScanner::new(conn.clone()));
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut draining = false;
    loop {
        tokio::select! {
            r = served.as_mut() => return Served::Ended { result: r, draining },
            _ = drain.changed(), if !draining => {
                draining = true;
                served.as_mut().graceful_shutdown();
            }
            _ = idle(conn, idle_limit) => return Served::Idle,
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 on one accepted connection until it ends, the drain closes it,
/// or it has been idle (no request in progress) for `limits.idle_timeout`. An HTTP/1 connection
/// (`h1`) parks between requests once idle for [`PARK_AFTER`] (see [`Lease`]) and is served by
/// a fresh hyper connection when its next request arrives.
async fn serve<S: Waiting>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut stream: S,
    conn: Arc<ConnInfo>,
    ctx: Arc<ListenerCtx>,
    mut drain: watch::Receiver<()>,
    (idle_limit, header_timeout): (std::time::Duration, std::time::Duration),
    h1: bool,
) -> Result<(), BoxError> {
    let (gw, parking) = (&ctx.shared, &*ctx.parking);
    let home: Home<S> = Arc::default();
    let parked_limit = parked_limit(idle_limit, header_timeout);
    let closed_idle = |gw: &Shared, conn: &ConnInfo| {
        tracing::debug!(remote = %conn.remote, "idle connection closed");
        Metrics::count(&gw.metrics().connections_closed, "reason", "idle");
    };
    let mut parked: Option<ParkedGauge> = None;
    loop {
        match wait_for_request(&mut stream, &drain, &conn, parked_limit, parking).await {
            Woke::Request => drop(parked.take()),
            Woke::Drain => return Ok(()),
            Woke::Idle => {
                closed_idle(gw, &conn);
                return Ok(());
            }
        }
        let lease = Lease::new(stream, home.clone(), conn.clone(), h1.then_some(PARK_AFTER));
        // Boxed: hyper's connection, its timers and the drain future exist only while the
        // connection is leased; a parked connection's loop holds none of them.
        let served = Box::pin(serve_lease(
            &builder, lease, gw, &conn, &mut drain, idle_limit,
        ))
        .await;
        let draining = match served {
            Served::Idle => {
                closed_idle(gw, &conn);
                return Ok(());
            }
            Served::Ended { result, draining } => {
                result?;
                draining
            }
        };
        // Gone with an upgrade (the splice holds the stream) or closed by either side.
        let taken = home.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some((s, true)) = taken else {
            return Ok(());
        };
        if draining {
            return Ok(());
        }
        stream = s;
        parked = Some(ParkedGauge::new(&gw.metrics().parked_connections));
    }
}
