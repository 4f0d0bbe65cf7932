//! What the accept phase learned about a connection, shared by its requests and by the phases
//! that need it (forwarding headers, the upgrade splice, the client address): [`ConnInfo`],
//! [`ActiveRequest`], and the raw-head scan ([`HeadScan`], [`HeadScanner`]) the framing checks
//! read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::io::Observe;

/// What the accept phase learned about a connection, shared by its requests.
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The client address, ready to send as `x-forwarded-for`.
    pub client_ip: HeaderValue,
    pub tls: bool,
    /// The TLS server name, lower-case, if the client sent one.
    pub sni: Option<Box<str>>,
    /// What few connections have (a PROXY header, a client certificate): boxed, so the info
    /// of a plain connection, which lives as long as the connection, stays small.
    rare: Option<Box<Rare>>,
    /// When the connection was accepted (the idle clock's origin).
    opened: Instant,
    /// Requests in progress (until their response body has been sent).
    active: AtomicUsize,
    /// When the last request ended, in ms since `opened`.
    idle_since_ms: AtomicU64,
    /// What the raw bytes of the current HTTP/1 request head showed.
    head_scan: HeadScan,
    /// What the connection holds until every reference to it is gone (its connection slots:
    /// an upgraded connection keeps them through the `ActiveRequest` its splice holds).
    _holds: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// The rarely present part of a [`ConnInfo`].
#[derive(Default)]
struct Rare {
    proxied_by: Option<SocketAddr>,
    client_sans: Box<[Box<str>]>,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInfo")
            .field("remote", &self.remote)
            .field("tls", &self.tls)
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, tls: bool, sni: Option<&str>) -> Self {
        Self {
            remote,
            client_ip: HeaderValue::try_from(remote.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            tls,
            sni: sni.map(|s| s.to_ascii_lowercase().into()),
            rare: None,
            opened: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_scan: HeadScan::new(true),
            _holds: None,
        }
    }

    /// Keeps `slot` until the connection info is dropped.
    pub fn holding(mut self, slot: Box<dyn std::any::Any + Send + Sync>) -> Self {
        self._holds = Some(slot);
        self
    }

    /// The connection came through a PROXY header from `peer`.
    pub fn proxied_by(mut self, peer: Option<SocketAddr>) -> Self {
        if peer.is_some() {
            self.rare.get_or_insert_default().proxied_by = peer;
        }
        self
    }

    /// The SANs of the client certificate the handshake verified.
    pub fn with_client_sans(mut self, sans: Vec<Box<str>>) -> Self {
        if !sans.is_empty() {
            self.rare.get_or_insert_default().client_sans = sans.into();
        }
        self
    }

    /// The TCP peer (a trusted load balancer) when a PROXY header named `remote`.
    pub fn proxy_peer(&self) -> Option<SocketAddr> {
        self.rare.as_ref().and_then(|r| r.proxied_by)
    }

    /// DNS and URI SANs of the client certificate the TLS handshake verified.
    pub fn client_sans(&self) -> &[Box<str>] {
        self.rare.as_ref().map_or(&[], |r| &r.client_sans)
    }

    /// The raw-head scan of this connection (HTTP/1 only).
    pub fn head_scan(&self) -> &HeadScan {
        &self.head_scan
    }

    /// How long the connection has had no request in progress; zero while one is.
    pub fn idle_for(&self) -> Duration {
        if self.active.load(Ordering::Acquire) != 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(since)
    }
}

impl crate::io::IdleClock for ConnInfo {
    fn idle_for(&self) -> Duration {
        ConnInfo::idle_for(self)
    }

    fn at_message_start(&self) -> bool {
        self.head_scan.at_message_start()
    }
}

/// Counts a request against its connection until dropped (with the response body), so an
/// idle connection can be told from one streaming a long response.
#[derive(Debug)]
pub struct ActiveRequest(Arc<ConnInfo>);

impl ActiveRequest {
    pub fn new(conn: Arc<ConnInfo>) -> Self {
        conn.active.fetch_add(1, Ordering::AcqRel);
        Self(conn)
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let c = &self.0;
        c.idle_since_ms
            .store(c.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        c.head_scan.restart();
        c.active.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl HeadScan ===

const SCAN_OFF: u8 = 0;
const SCAN_ON: u8 = 1;
const SCAN_RESTART: u8 = 2;
const SCAN_NEVER: u8 = 3;

/// Per-connection state of the head scan, shared by the I/O wrapper and the request path.
#[derive(Debug)]
pub struct HeadScan {
    state: AtomicU8,
    /// `Content-Length` lines in the current head (saturating).
    content_length: AtomicU8,
}

impl HeadScan {
    /// Scanning from the first byte (`enabled`), or never (an HTTP/2 connection).
    pub fn new(enabled: bool) -> Self {
        Self {
            state: AtomicU8::new(if enabled { SCAN_ON } else { SCAN_NEVER }),
            content_length: AtomicU8::new(0),
        }
    }

    /// How many `Content-Length` lines the current request's head carried (0, 1 or 2 = more).
    pub fn content_length_lines(&self) -> u8 {
        self.content_length.load(Ordering::Relaxed)
    }

    /// A response ended: the next bytes start a new head.
    pub fn restart(&self) {
        if self.state.load(Ordering::Relaxed) != SCAN_NEVER {
            self.content_length.store(0, Ordering::Relaxed);
            self.state.store(SCAN_RESTART, Ordering::Relaxed);
        }
    }

    /// No byte of a next request has been read since the last response ended.
    pub fn at_message_start(&self) -> bool {
        self.state.load(Ordering::Relaxed) == SCAN_RESTART
    }

    /// The connection speaks HTTP/2: nothing to scan.
    pub fn disable(&self) {
        if self.state.load(Ordering::Relaxed) != SCAN_NEVER {
            self.state.store(SCAN_NEVER, Ordering::Relaxed);
        }
    }
}

/// Feeds the bytes a client connection reads through [`HeadScan`], one HTTP/1 request head at
/// a time (wrap the connection in [`crate::io::ObserveReads`] with it).
pub struct HeadScanner {
    scan: Arc<ConnInfo>,
    /// The current line's first bytes, lower-cased, and its length so far.
    prefix: [u8; 15],
    line_len: usize,
    /// A non-empty line has been seen in this head (empty lines before it are skipped).
    in_head: bool,
}

const CONTENT_LENGTH_LINE: &[u8; 15] = b"content-length:";

impl HeadScanner {
    pub fn new(conn: Arc<ConnInfo>) -> Self {
        Self {
            scan: conn,
            prefix: [0; 15],
            line_len: 0,
            in_head: false,
        }
    }
}

impl Observe for HeadScanner {
    fn observe(&mut self, bytes: &[u8]) {
        let scan = self.scan.head_scan();
        match scan.state.load(Ordering::Relaxed) {
            SCAN_ON => {}
            SCAN_RESTART => {
                self.line_len = 0;
                self.in_head = false;
                scan.state.store(SCAN_ON, Ordering::Relaxed);
            }
            _ => return,
        }
        // Line by line with memchr: only each line's first 15 bytes are looked at.
        let mut rest = bytes;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            take(&mut self.prefix, &mut self.line_len, &rest[..end], scan);
            let empty = self.line_len == 0 || (self.line_len == 1 && self.prefix[0] == b'\r');
            if empty && self.in_head {
                scan.state.store(SCAN_OFF, Ordering::Relaxed);
                return;
            }
            self.in_head |= !empty;
            self.line_len = 0;
            rest = &rest[end + 1..];
        }
        take(&mut self.prefix, &mut self.line_len, rest, scan);
    }
}

/// Adds part of a line: fills the lower-cased prefix and counts a `Content-Length` line once
/// its first 15 bytes are known.
fn take(prefix: &mut [u8; 15], line_len: &mut usize, part: &[u8], scan: &HeadScan) {
    let have = (*line_len).min(CONTENT_LENGTH_LINE.len());
    let add = part.len().min(CONTENT_LENGTH_LINE.len() - have);
    for (slot, b) in prefix[have..have + add].iter_mut().zip(part) {
        *slot = b.to_ascii_lowercase();
    }
    if have < CONTENT_LENGTH_LINE.len()
        && have + add == CONTENT_LENGTH_LINE.len()
        && prefix == CONTENT_LENGTH_LINE
    {
        let n = scan.content_length.load(Ordering::Relaxed);
        scan.content_length
            .store(n.saturating_add(1).min(2), Ordering::Relaxed);
    }
    *line_len += part.len();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_scan_counts_content_length_lines_across_reads_and_stops_at_the_body() {
        let conn = Arc::new(ConnInfo::new(
            "127.0.0.1:1".parse().expect("addr"),
            false,
            None,
        ));
        let mut s = HeadScanner::new(conn.clone());
        s.observe(b"POST / HTTP/1.1\r\nHost: a\r\nConTent-Len");
        s.observe(b"gth: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(conn.head_scan().content_length_lines(), 1);
        // Body bytes are not scanned.
        s.observe(b"content-length: 1\r\ncontent-length: 2\r\n");
        assert_eq!(conn.head_scan().content_length_lines(), 1);
        // The next head starts fresh.
        conn.head_scan().restart();
        s.observe(b"\r\nGET / HTTP/1.1\r\ncontent-length: 0\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(conn.head_scan().content_length_lines(), 2);
        conn.head_scan().restart();
        conn.head_scan().disable();
        s.observe(b"GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(conn.head_scan().content_length_lines(), 0);
    }
}
