//! The lean upstream path of `http://` pools: per endpoint, a stack of idle HTTP/1.1
//! connections (`hyper::client::conn::http1`), checked out by the request that needs one and
//! checked back in when its response has been read to the end.
//!
//! Nothing sits between a request and its connection but this stack: no pool keyed by
//! scheme and authority, no checkout futures, no connector service. One idle set per endpoint
//! whatever the tenant's plan (the connect timeout is the request's, not the set's), at most
//! `max_connections_per_endpoint` connections per endpoint, and a connection idle for
//! `idle_timeout_ms` is never used again (closed instead), so the gateway gives up a connection
//! before the upstream's own keep-alive timeout closes it under a request.
//!
//! A connection is handed out most recently used first (warm, least likely to have been closed
//! by the upstream); the oldest are dropped from the bottom of the stack as they expire, by a
//! reaper task that runs while the endpoint has idle connections.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

use crate::body::ProxyBody;

/// A pool's connection settings (`upstreams.<pool>.idle_timeout_ms`,
/// `max_connections_per_endpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnSettings {
    /// A connection idle this long is closed rather than reused.
    pub idle_timeout: Duration,
    /// Open connections per endpoint (idle and busy); 0 = unlimited.
    pub max_per_endpoint: usize,
}

impl Default for ConnSettings {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_per_endpoint: 0,
        }
    }
}

/// How long a checked-out idle connection may take to become ready before it is given up.
const READY_WAIT: Duration = Duration::from_millis(500);

/// Below the keep-alive timeouts of common application servers (uvicorn and Node close at 5 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// An endpoint's HTTP/1.1 connections (runtime state: kept across reloads with the endpoint).
#[derive(Debug, Default)]
pub struct Conns {
    /// Idle connections, one stack per worker thread (a connection's task runs on the worker
    /// that opened it, so a request reusing a connection of its own worker needs no wake-up
    /// across threads). A worker whose stack is empty takes from another before it connects.
    stacks: [Mutex<Stack>; STACKS],
    /// Open connections, idle or busy (and those being opened).
    open: AtomicUsize,
    /// Signalled when a connection is checked in or closes (a request at the cap may proceed).
    freed: Notify,
}

/// Idle stacks per endpoint; worker threads beyond this many share them.
const STACKS: usize = 8;

/// The idle stack of the calling thread.
fn own_stack() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STACK: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STACKS;
    }
    STACK.with(|s| *s)
}

#[derive(Debug, Default)]
struct Stack {
    /// Oldest first; checked out from the back.
    idle: VecDeque<Idle>,
    /// A reaper task closes this stack's connections as they expire.
    reaping: bool,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// A connection's request side and the count of bytes read from it (so a failure can tell
/// whether any byte of the response had arrived).
#[derive(Debug)]
struct Conn {
    tx: SendRequest<ProxyBody>,
    read: Arc<AtomicU64>,
}

impl Conns {
    /// Open connections to the endpoint (idle and busy).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Idle connections waiting for a request (some may have been closed by the upstream since).
    pub fn idle(&self) -> usize {
        (0..STACKS).map(|i| self.lock(i).idle.len()).sum()
    }

    fn lock(&self, stack: usize) -> std::sync::MutexGuard<'_, Stack> {
        self.stacks[stack].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection still fresh enough, from this thread's stack if
    /// it has one, else from another; expired ones are dropped (which closes them).
    fn pop(&self, idle_timeout: Duration) -> Option<Conn> {
        let own = own_stack();
        (0..STACKS).find_map(|i| {
            let mut stack = self.lock((own + i) % STACKS);
            while let Some(c) = stack.idle.pop_back() {
                if c.since.elapsed() < idle_timeout && !c.conn.tx.is_closed() {
                    return Some(c.conn);
                }
                // Expired: so are all older ones below it.
                stack.idle.clear();
            }
            None
        })
    }

    fn push(self: &Arc<Self>, conn: Conn, idle_timeout: Duration) {
        let now = Instant::now();
        {
            let own = own_stack();
            let mut stack = self.lock(own);
            Self::expire(&mut stack.idle, now, idle_timeout);
            stack.idle.push_back(Idle { conn, since: now });
            if !stack.reaping
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                stack.reaping = true;
                rt.spawn(Self::reap(Arc::downgrade(self), own, idle_timeout));
            }
        }
        self.freed.notify_one();
    }

    /// Drops (closes) the idle connections, oldest first, that have expired or been closed.
    fn expire(idle: &mut VecDeque<Idle>, now: Instant, idle_timeout: Duration) {
        while idle
            .front()
            .is_some_and(|c| now.duration_since(c.since) >= idle_timeout || c.conn.tx.is_closed())
        {
            idle.pop_front();
        }
    }

    /// Closes a stack's idle connections as they expire, while there are any, so a burst's
    /// connections do not outlive `idle_timeout` when no further request comes (HAProxy purges
    /// its idle server connections the same way). Ends when the stack is empty; the next
    /// check-in starts another.
    async fn reap(conns: std::sync::Weak<Self>, stack: usize, idle_timeout: Duration) {
        loop {
            let next = {
                let Some(c) = conns.upgrade() else { return };
                let mut s = c.lock(stack);
                Self::expire(&mut s.idle, Instant::now(), idle_timeout);
                match s.idle.front() {
                    Some(oldest) => oldest.since + idle_timeout,
                    None => {
                        s.reaping = false;
                        return;
                    }
                }
            };
            tokio::time::sleep_until(next.into()).await;
        }
    }

    /// Counts a connection about to be opened, unless `max` are open already (0 = no cap).
    fn reserve(self: &Arc<Self>, max: usize) -> Option<OpenSlot> {
        let mut n = self.open.load(Ordering::Relaxed);
        loop {
            if max != 0 && n >= max {
                return None;
            }
            match self
                .open
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(OpenSlot(self.clone())),
                Err(now) => n = now,
            }
        }
    }
}

/// One open (or opening) connection in [`Conns::open`]; released when the connection closes.
struct OpenSlot(Arc<Conns>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (DNS, refused, timed out): the endpoint's failure.
    Connect(std::io::Error),
    /// The endpoint had `max_connections_per_endpoint` busy connections for the whole connect
    /// timeout: not a failure of the endpoint.
    Saturated,
    /// The exchange failed after the connection was made.
    Exchange(hyper::Error),
}

/// Where an endpoint is: its authority and, when known without a lookup, its address.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub authority: &'a http::uri::Authority,
    /// An endpoint named by IP address.
    pub addr: Option<SocketAddr>,
    /// An endpoint named by hostname: its kept-fresh addresses.
    pub name: Option<&'a crate::dns::DnsName>,
    /// Resolves the hostname when no answer is known yet.
    pub dns: Option<&'a crate::dns::Dns>,
    /// The endpoint's connections.
    pub conns: &'a Arc<Conns>,
}

/// A bodiless request's head, kept to send it again: when a reused connection turned out to be
/// closed (bodiless idempotent requests only), or on another endpoint after a connect failure.
///
/// The fields are copied into one buffer, `name:value\n` each in order, rather than the
/// `HeaderMap` cloned: it is taken for nearly every proxied GET and used almost never, and one
/// copy costs less than half of the clone (no per-field reference counts; `benches/hot_path.rs`,
/// `replay_copy`). A name never holds `:` or `=` and a value never `\n`, so it reads back
/// exactly; a value marked sensitive (never indexed by HPACK) is written `name=value` and stays
/// sensitive.
pub struct Replay {
    method: http::Method,
    uri: http::Uri,
    fields: Vec<u8>,
}

impl Replay {
    pub fn new(method: &http::Method, uri: &http::Uri, headers: &http::HeaderMap) -> Self {
        let size = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 2)
            .sum();
        let mut fields = Vec::with_capacity(size);
        for (name, value) in headers {
            fields.extend_from_slice(name.as_str().as_bytes());
            fields.push(if value.is_sensitive() { b'=' } else { b':' });
            fields.extend_from_slice(value.as_bytes());
            fields.push(b'\n');
        }
        Self {
            method: method.clone(),
            uri: uri.clone(),
            fields,
        }
    }

    /// The request again, with an empty body; `None` if a field does not read back (it always
    /// does: each was a valid name and value when copied).
    pub fn request(&self) -> Option<Request<ProxyBody>> {
        let mut req = Request::new(crate::body::full(Bytes::new()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        let headers = req.headers_mut();
        for line in self.fields.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let at = memchr::memchr2(b':', b'=', line)?;
            let mut value = http::HeaderValue::from_bytes(&line[at + 1..]).ok()?;
            value.set_sensitive(line[at] == b'=');
            headers.append(http::HeaderName::from_bytes(&line[..at]).ok()?, value);
        }
        Some(req)
    }
}

/// Sends `req` (origin-form URI, `Host` set) to `endpoint` over an idle connection, or a new
/// one within `connect_timeout`. When a reused connection fails before any response byte, the
/// request is sent again once on a fresh connection: whenever hyper hands it back unsent, and
/// otherwise when `replay` (a bodiless idempotent request's head) says it may be.
///
/// The response comes with its connection: [`Returning`] checks it back in once the body has
/// been read to the end.
pub async fn send(
    endpoint: Target<'_>,
    settings: ConnSettings,
    connect_timeout: Duration,
    req: Request<ProxyBody>,
    replay: impl FnOnce(&Request<ProxyBody>) -> Option<Replay>,
) -> Result<(http::Response<Incoming>, Option<Checkin>), SendError> {
    let conns = endpoint.conns;
    let (mut conn, reused) = checkout(endpoint, settings, connect_timeout).await?;
    let replay = if reused { replay(&req) } else { None };
    let read_before = conn.read.load(Ordering::Relaxed);
    let first = conn.tx.try_send_request(req).await;
    let (conn, resp) = match first {
        Ok(resp) => (conn, resp),
        Err(mut e) => {
            // A fresh connection's failure is the endpoint's; a reused one may simply have been
            // closed by the upstream as the request went out (the keep-alive race): sent again
            // when hyper hands the request back unsent, or when no byte of an answer arrived
            // and the request may be repeated.
            let answered = conn.read.load(Ordering::Relaxed) != read_before;
            let again = match e.take_message() {
                Some(req) => Some(req),
                None if !answered => replay.as_ref().and_then(Replay::request),
                None => None,
            };
            let Some(req) = again.filter(|_| reused) else {
                return Err(SendError::Exchange(e.into_error()));
            };
            tracing::debug!(endpoint = %endpoint.authority, error = %e.error(), "reused upstream connection failed; sending again on a new one");
            let slot = wait_for_slot(conns, settings, connect_timeout).await?;
            let mut conn = connect(endpoint, slot, connect_timeout).await?;
            match conn.tx.try_send_request(req).await {
                Ok(resp) => (conn, resp),
                Err(e) => return Err(SendError::Exchange(e.into_error())),
            }
        }
    };
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // The connection now belongs to the upgrade.
        return Ok((resp, None));
    }
    let checkin = Checkin {
        conn,
        conns: conns.clone(),
        idle_timeout: settings.idle_timeout,
    };
    Ok((resp, Some(checkin)))
}

/// An idle connection to `endpoint` (`true`: reused), or a new one.
async fn checkout(
    endpoint: Target<'_>,
    settings: ConnSettings,
    connect_timeout: Duration,
) -> Result<(Conn, bool), SendError> {
    let conns = endpoint.conns;
    let deadline = tokio::time::Instant::now() + connect_timeout;
    loop {
        while let Some(mut conn) = conns.pop(settings.idle_timeout) {
            // Ready at once, or after a moment when its task is still finishing the exchange it
            // was checked in after; an error when it has closed meanwhile. One still sending an
            // upload the upstream answered early is given up after READY_WAIT.
            let ready = match std::future::poll_fn(|cx| Poll::Ready(conn.tx.poll_ready(cx))).await {
                Poll::Ready(r) => r.is_ok(),
                Poll::Pending => tokio::time::timeout(READY_WAIT, conn.tx.ready())
                    .await
                    .is_ok_and(|r| r.is_ok()),
            };
            if ready {
                return Ok((conn, true));
            }
        }
        if let Some(slot) = conns.reserve(settings.max_per_endpoint) {
            return connect(endpoint, slot, connect_timeout)
                .await
                .map(|conn| (conn, false));
        }
        // At the cap: wait for a connection to be checked in or to close.
        let freed = conns.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if conns.idle() > 0 || conns.open() < settings.max_per_endpoint {
            continue;
        }
        if tokio::time::timeout_at(deadline, freed).await.is_err() {
            return Err(SendError::Saturated);
        }
    }
}

/// A slot for a new connection, waiting (within `connect_timeout`) when the endpoint is at its
/// cap.
async fn wait_for_slot(
    conns: &Arc<Conns>,
    settings: ConnSettings,
    connect_timeout: Duration,
) -> Result<OpenSlot, SendError> {
    let deadline = tokio::time::Instant::now() + connect_timeout;
    loop {
        let freed = conns.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if let Some(slot) = conns.reserve(settings.max_per_endpoint) {
            return Ok(slot);
        }
        if tokio::time::timeout_at(deadline, freed).await.is_err() {
            return Err(SendError::Saturated);
        }
    }
}

/// Opens a connection to `endpoint` (every address in turn, all within `timeout`) and starts
/// driving it; `slot` is held until the connection closes.
async fn connect(
    endpoint: Target<'_>,
    slot: OpenSlot,
    timeout: Duration,
) -> Result<Conn, SendError> {
    let read = Arc::new(AtomicU64::new(0));
    let opening = async {
        let stream = ReadCounted {
            inner: tcp_connect(endpoint).await?,
            read: read.clone(),
        };
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, ProxyBody>(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>((tx, conn))
    };
    let (tx, conn) = match tokio::time::timeout(timeout, opening).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(SendError::Connect(e)),
        Err(_) => return Err(SendError::Connect(crate::dns::connect_timed_out(timeout))),
    };
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Conn { tx, read })
}

/// A socket that counts the bytes read from it.
struct ReadCounted {
    inner: tokio::net::TcpStream,
    read: Arc<AtomicU64>,
}

impl tokio::io::AsyncRead for ReadCounted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for ReadCounted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn tcp_connect(endpoint: Target<'_>) -> std::io::Result<tokio::net::TcpStream> {
    let port = endpoint.authority.port_u16().unwrap_or(80);
    let known = endpoint.name.and_then(|name| name.rotated());
    let addrs: Vec<SocketAddr> = match (&endpoint.addr, known, endpoint.dns) {
        (Some(addr), _, _) => vec![*addr],
        (None, Some(ips), _) => ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
        (None, None, Some(dns)) => dns
            .resolve(endpoint.authority.host().trim_end_matches('.'))
            .await
            .map_err(std::io::Error::other)?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
        (None, None, None) => {
            return Err(std::io::Error::other(format!(
                "no address for {}",
                endpoint.authority
            )));
        }
    };
    let mut last = None;
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no addresses")))
}

/// A connection whose response is being read; checked back in as idle when it is read to the
/// end (dropped with the response otherwise, which closes the connection).
pub struct Checkin {
    conn: Conn,
    conns: Arc<Conns>,
    idle_timeout: Duration,
}

impl Checkin {
    fn done(self) {
        self.conns.push(self.conn, self.idle_timeout);
    }
}

/// A response body that checks its connection back in when it ends.
pub struct Returning {
    body: Incoming,
    checkin: Option<Checkin>,
}

impl Returning {
    pub fn new(body: Incoming, checkin: Option<Checkin>) -> Self {
        let mut this = Self { body, checkin };
        if this.body.is_end_stream() {
            // No body at all (HEAD, 204, 304, Content-Length: 0): reusable now.
            this.check_in();
        }
        this
    }

    fn check_in(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.done();
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.check_in(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.check_in(),
            Poll::Ready(Some(Err(_))) => self.checkin = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_reads_back_every_field_in_order_with_its_sensitivity() {
        let mut headers = http::HeaderMap::new();
        let mut secret = http::HeaderValue::from_static("Bearer a=b:c");
        secret.set_sensitive(true);
        headers.append("accept", "text/html".parse().expect("value"));
        headers.append("authorization", secret);
        headers.append("accept", "application/json".parse().expect("value"));
        headers.append("x-note", "k=v: w\t x".parse().expect("value"));
        headers.append("x-empty", http::HeaderValue::from_static(""));
        let uri: http::Uri = "/a/b?c=d".parse().expect("uri");
        let req = Replay::new(&http::Method::HEAD, &uri, &headers)
            .request()
            .expect("reads back");
        assert_eq!(req.method(), http::Method::HEAD);
        assert_eq!(req.uri(), &uri);
        assert_eq!(req.headers(), &headers);
        let fields: Vec<_> = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes(), v.is_sensitive()))
            .collect();
        let want: Vec<(&str, &[u8], bool)> = vec![
            ("accept", b"text/html", false),
            ("accept", b"application/json", false),
            ("authorization", b"Bearer a=b:c", true),
            ("x-note", b"k=v: w\t x", false),
            ("x-empty", b"", false),
        ];
        assert_eq!(fields, want);
    }
}
