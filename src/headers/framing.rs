//! Request framing and size checks that run before any phase: the defences against request
//! smuggling (RFC 9112 §6.3) and oversized request targets or header sets.
//!
//! hyper already refuses a malformed `Transfer-Encoding`, a non-numeric or conflicting
//! `Content-Length`, obs-fold and bare CR with 400 and a closed connection. What hyper lets
//! through and an edge proxy must not: `Content-Length` together with `Transfer-Encoding`
//! (hyper reads it as chunked), `Transfer-Encoding` listed twice, and repeated identical
//! `Content-Length` headers. The gateway re-frames whatever it forwards, so these checks keep a
//! front-end/back-end disagreement about where a request ends from ever reaching an upstream.
//!
//! hyper drops a `Content-Length` it finds next to `Transfer-Encoding` before the request
//! reaches us, so [`HeadScanner`] watches the raw bytes of each HTTP/1 request head for a
//! `Content-Length` line (a few hundred bytes per request; bodies and HTTP/2 are not scanned).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Request, Version};

use crate::error::GatewayError;
use crate::snapshot::ConnLimits;

/// Refuses ambiguous framing (HTTP/1.x), an over-long request target and too many headers.
/// `raw_content_lengths`: the `Content-Length` lines the raw head carried ([`HeadScan`]);
/// hyper hides one next to `Transfer-Encoding` and folds identical repeats into one.
pub fn check_request<B>(
    req: &Request<B>,
    limits: &ConnLimits,
    raw_content_lengths: u8,
) -> Result<(), GatewayError> {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(GatewayError::UriTooLong);
    }
    let headers = req.headers();
    // HTTP/1 caps the count in hyper's parser; HTTP/2 has only a byte budget.
    if headers.len() > limits.max_headers {
        return Err(GatewayError::HeadersTooLarge);
    }
    if matches!(req.version(), Version::HTTP_10 | Version::HTTP_11) {
        let mut te = headers.get_all(TRANSFER_ENCODING).iter();
        if let Some(first) = te.next() {
            if raw_content_lengths > 0 || headers.contains_key(CONTENT_LENGTH) {
                return Err(GatewayError::BadRequest(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            if te.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
                return Err(GatewayError::BadRequest("unsupported Transfer-Encoding"));
            }
        }
        let mut cl = headers.get_all(CONTENT_LENGTH).iter();
        if raw_content_lengths > 1 || (cl.next().is_some() && cl.next().is_some()) {
            return Err(GatewayError::BadRequest("more than one Content-Length"));
        }
    }
    Ok(())
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
    scan: Arc<crate::proxy::ConnInfo>,
    /// The current line's first bytes, lower-cased, and its length so far.
    prefix: [u8; 15],
    line_len: usize,
    /// A non-empty line has been seen in this head (empty lines before it are skipped).
    in_head: bool,
}

const CONTENT_LENGTH_LINE: &[u8; 15] = b"content-length:";

impl HeadScanner {
    pub fn new(conn: Arc<crate::proxy::ConnInfo>) -> Self {
        Self {
            scan: conn,
            prefix: [0; 15],
            line_len: 0,
            in_head: false,
        }
    }
}

impl crate::io::Observe for HeadScanner {
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
    use crate::io::Observe;

    fn limits() -> ConnLimits {
        crate::config::compile::default_limits()
    }

    fn req(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/x").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let l = limits();
        let h11 = Version::HTTP_11;
        for (hs, ok) in [
            (&[("content-length", "5")][..], true),
            (&[("transfer-encoding", "chunked")][..], true),
            (&[("transfer-encoding", "Chunked")][..], true),
            (
                &[("content-length", "5"), ("transfer-encoding", "chunked")][..],
                false,
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ][..],
                false,
            ),
            (&[("transfer-encoding", "gzip, chunked")][..], false),
            (
                &[("content-length", "5"), ("content-length", "5")][..],
                false,
            ),
        ] {
            assert_eq!(check_request(&req(h11, hs), &l, 0).is_ok(), ok, "{hs:?}");
        }
    }

    #[test]
    fn the_head_scan_counts_content_length_lines_across_reads_and_stops_at_the_body() {
        let conn = Arc::new(crate::proxy::ConnInfo::new(
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

    #[test]
    fn long_targets_and_many_headers_are_refused() {
        let l = limits();
        let long = Request::builder()
            .uri(format!("/{}", "a".repeat(l.max_uri_bytes)))
            .body(())
            .expect("request");
        assert_eq!(check_request(&long, &l, 0), Err(GatewayError::UriTooLong));
        let names: Vec<String> = (0..=l.max_headers).map(|i| format!("x-h{i}")).collect();
        let hs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        assert_eq!(
            check_request(&req(Version::HTTP_2, &hs), &l, 0),
            Err(GatewayError::HeadersTooLarge)
        );
    }
}
