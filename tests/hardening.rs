//! Hostile clients and broken upstreams over real sockets: slow clients, smuggling attempts,
//! oversized requests, HTTP/2 abuse, connection floods, and upstreams that reset, lie about
//! framing or keep failing.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The standard test config with `limits:` set to `limits` (a YAML flow mapping).
fn with_limits(env: &Env, upstream: &str, limits: &str) -> String {
    env.config(upstream, upstream).replace(
        "tls:\n  default_certificate",
        &format!("limits: {limits}\ntls:\n  default_certificate"),
    )
}

/// A gateway on the standard test config (with `limits`, if given) in front of one echo upstream.
async fn start_with_limits(
    limits: Option<&str>,
) -> (Env, Upstream, tenant_gateway::gateway::Running) {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let yaml = match limits {
        Some(l) => with_limits(&env, &up.url(), l),
        None => env.config(&up.url(), &up.url()),
    };
    let (_gw, running) = env.start(&yaml).await;
    (env, up, running)
}

/// Sends `bytes` on a fresh connection and reads until the gateway closes it (at most 3 s).
/// Returns what came back and whether the gateway closed the connection.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_until_closed(&mut s, Duration::from_secs(3)).await
}

async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(limit, s.read_to_end(&mut buf))
        .await
        .is_ok();
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

/// How long until the peer closes `s` (reading and discarding), or `None` after `limit`.
async fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| t.elapsed())
}

// === Clients: request smuggling and malformed heads ===

#[tokio::test]
async fn ambiguous_framing_is_400_closes_the_connection_and_never_reaches_the_upstream() {
    let (_env, up, running) = start_with_limits(None).await;
    let http = running.addr("http").expect("http");
    let h = "Host: globex.gw.test\r\n";
    let cases = [
        // CL.TE: a front end honouring Content-Length would see the smuggled GET as a body.
        (
            "CL.TE",
            format!(
                "POST / HTTP/1.1\r\n{h}Content-Length: 47\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n{h}\r\n"
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n2e\r\nGET /smuggled HTTP/1.1\r\n{h}\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "duplicate CL, different",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ),
        (
            "duplicate CL, same",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        ),
        (
            "TE twice",
            format!(
                "POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE not chunked",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE chunked, identity",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE on HTTP/1.0",
            format!("POST / HTTP/1.0\r\n{h}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "space before colon",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\n{h}X-Folded: a\r\n b\r\n\r\n"),
        ),
        (
            "negative CL",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: -1\r\n\r\n"),
        ),
        (
            "CL with sign",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: +5\r\n\r\nhello"),
        ),
    ];
    for (name, bytes) in &cases {
        let (resp, closed) = raw(http, bytes.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400 "), "{name}: {resp}");
        assert_eq!(
            resp.matches("HTTP/1.1 ").count(),
            1,
            "{name}: one answer only: {resp}"
        );
        assert!(closed, "{name}: the connection must be closed");
    }
    assert!(
        up.requests().is_empty(),
        "nothing may reach the upstream: {:?}",
        up.requests()
            .iter()
            .map(|r| (&r.method, &r.path))
            .collect::<Vec<_>>()
    );
    // On a keep-alive connection, a request with Content-Length and a later chunked one are
    // both fine: each head is judged on its own.
    let mut s = TcpStream::connect(http).await.expect("connect");
    let mut buf = vec![0u8; 4096];
    for req in [
        format!("POST /one HTTP/1.1\r\n{h}Content-Length: 5\r\n\r\nhello"),
        format!(
            "POST /two HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
    ] {
        s.write_all(req.as_bytes()).await.expect("write");
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        let resp = String::from_utf8_lossy(&buf[..n]);
        assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    }
    assert_eq!(up.requests().len(), 2);

    // The gateway's own refusals are JSON; a well-framed request still goes through.
    let (resp, _) = raw(http, cases[0].1.as_bytes()).await;
    assert!(resp.contains("\"error\":\"bad_request\""), "{resp}");
    assert_eq!(status(http, "globex.gw.test", "/").await, StatusCode::OK);
}

#[tokio::test]
async fn invalid_host_headers_are_400() {
    let (_env, up, running) = start_with_limits(None).await;
    let http = running.addr("http").expect("http");
    for (name, head) in [
        (
            "two Host headers",
            "Host: globex.gw.test\r\nHost: acme.gw.test\r\n",
        ),
        ("empty Host", "Host: \r\n"),
        ("space in Host", "Host: glo bex.gw.test\r\n"),
        ("path in Host", "Host: globex.gw.test/x\r\n"),
        ("userinfo in Host", "Host: me@globex.gw.test\r\n"),
        ("bad port", "Host: globex.gw.test:http\r\n"),
    ] {
        let req = format!("GET / HTTP/1.1\r\n{head}\r\n");
        let (resp, closed) = raw(http, req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400 "), "{name}: {resp}");
        assert!(closed, "{name}: closed after a framing error");
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn oversized_heads_long_targets_and_header_floods_are_refused() {
    let (env, up, running) = start_with_limits(Some(
        "{ max_header_bytes: 16384, max_uri_bytes: 2048, max_headers: 40 }",
    ))
    .await;
    let http = running.addr("http").expect("http");
    let host = "Host: globex.gw.test\r\n";

    let big = format!(
        "GET / HTTP/1.1\r\n{host}X-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (resp, closed) = raw(http, big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
    assert!(closed);

    let mut many = format!("GET / HTTP/1.1\r\n{host}");
    for i in 0..41 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (resp, closed) = raw(http, many.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
    assert!(closed);

    let long = format!("GET /{} HTTP/1.1\r\n{host}\r\n", "a".repeat(4_000));
    let (resp, closed) = raw(http, long.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 414 "), "{resp}");
    assert!(resp.contains("\"error\":\"uri_too_long\""), "{resp}");
    assert!(closed);

    // HTTP/2 has no header count in the parser: the gateway counts.
    let https = running.addr("https").expect("https");
    let mut sender =
        h2_sender(tls_connect(&env, https, Some("globex.gw.test"), &[b"h2"]).await).await;
    let mut req = get_h2("globex.gw.test", "/");
    for i in 0..45 {
        req.headers_mut().insert(
            http::HeaderName::try_from(format!("x-h{i}")).expect("name"),
            http::HeaderValue::from_static("v"),
        );
    }
    let got = h2_send(&mut sender, req).await;
    assert_eq!(got.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(got.json()["error"], "headers_too_large");
    let got = h2_send(&mut sender, get_h2("globex.gw.test", "/")).await;
    assert_eq!(got.status, StatusCode::OK, "the connection keeps serving");
    assert_eq!(
        up.requests().len(),
        1,
        "only the well-formed request went upstream"
    );
}

// === Clients: slow and idle ===

#[tokio::test]
async fn slow_heads_silent_connections_and_stalled_handshakes_are_closed() {
    let (_env, up, running) = start_with_limits(Some(
        "{ header_timeout_ms: 400, handshake_timeout_ms: 400 }",
    ))
    .await;
    let http = running.addr("http").expect("http");
    let https = running.addr("https").expect("https");
    let limit = Duration::from_secs(5);

    // Slowloris: a head that never ends.
    let mut s = TcpStream::connect(http).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: glo")
        .await
        .expect("write");
    let t = closed_after(&mut s, limit).await.expect("closed");
    assert!(
        t >= Duration::from_millis(300) && t < Duration::from_secs(2),
        "{t:?}"
    );

    // A byte every 100 ms does not extend the deadline.
    let mut s = TcpStream::connect(http).await.expect("connect");
    let t = Instant::now();
    let mut closed = false;
    for b in b"GET / HTTP/1.1\r\nHost: globex.gw.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed || closed_after(&mut s, limit).await.is_some());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // A connection that sends nothing at all.
    let mut s = TcpStream::connect(http).await.expect("connect");
    let t = closed_after(&mut s, limit).await.expect("closed");
    assert!(t < Duration::from_secs(2), "{t:?}");

    // TLS: no ClientHello, and half a ClientHello.
    let mut s = TcpStream::connect(https).await.expect("connect");
    let t = closed_after(&mut s, limit).await.expect("closed");
    assert!(t < Duration::from_secs(2), "{t:?}");
    let mut s = TcpStream::connect(https).await.expect("connect");
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    let t = closed_after(&mut s, limit).await.expect("closed");
    assert!(t < Duration::from_secs(2), "{t:?}");

    assert!(up.requests().is_empty());
    assert_eq!(status(http, "globex.gw.test", "/").await, StatusCode::OK);
}

#[tokio::test]
async fn idle_connections_close_but_a_long_request_is_not_idle() {
    let env = Env::new();
    let up = Upstream::start_with_delay("slow", Duration::from_millis(1500)).await;
    let yaml = with_limits(
        &env,
        &up.url(),
        "{ header_timeout_ms: 10000, idle_timeout_ms: 500 }",
    );
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let https = running.addr("https").expect("https");

    // HTTP/1.1 keep-alive: served, then closed once idle (well before the header timeout).
    let mut s = TcpStream::connect(http).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: globex.gw.test\r\n\r\n")
        .await
        .expect("write");
    let t = Instant::now();
    let (resp, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(closed, "idle keep-alive connection closed");
    let idle = t.elapsed() - Duration::from_millis(1500);
    assert!(idle < Duration::from_secs(2), "{idle:?}");

    // HTTP/2: a request longer than the idle timeout completes; the idle connection then closes.
    let conn = tls_connect(&env, https, Some("globex.gw.test"), &[b"h2"]).await;
    let (mut sender, c) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(conn.stream))
            .await
            .expect("h2 handshake");
    let driver = tokio::spawn(c);
    let got = h2_send(&mut sender, get_h2("globex.gw.test", "/")).await;
    assert_eq!(got.status, StatusCode::OK, "a 1.5 s request is not idle");
    let t = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was closed");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_stalled_request_body_is_408_and_a_slow_but_steady_one_passes() {
    let (_env, up, running) = start_with_limits(Some("{ body_timeout_ms: 400 }")).await;
    let http = running.addr("http").expect("http");

    let mut s = TcpStream::connect(http).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: globex.gw.test\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .expect("write");
    let t = Instant::now();
    let (resp, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 408 "), "{resp}");
    assert!(resp.contains("\"error\":\"request_timeout\""), "{resp}");
    assert!(closed);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        up.requests().iter().all(|r| !r.body_complete),
        "a stalled body never reaches the upstream whole"
    );

    // 10 bytes every 150 ms for 1.5 s: never stalled for 400 ms, so it goes through.
    let mut s = TcpStream::connect(http).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: globex.gw.test\r\nContent-Length: 100\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(b"0123456789").await.expect("write");
    }
    let (resp, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(
        up.requests()
            .iter()
            .any(|r| r.body_complete && r.body_len == 100)
    );
}

// === Clients: connection caps ===

#[tokio::test]
async fn connection_caps_per_ip_and_global() {
    let (env, up, running) = start_with_limits(Some("{ max_connections_per_ip: 2 }")).await;
    let http = running.addr("http").expect("http");
    let hold = |addr| async move {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        s
    };
    let a = hold(http).await;
    let _b = hold(http).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = TcpStream::connect(http).await.expect("connect");
    let _ = c
        .write_all(b"GET / HTTP/1.1\r\nHost: globex.gw.test\r\n\r\n")
        .await;
    let (resp, closed) = read_until_closed(&mut c, Duration::from_secs(2)).await;
    assert!(
        closed && resp.is_empty(),
        "the third connection from one IP is closed: {resp}"
    );
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(status(http, "globex.gw.test", "/").await, StatusCode::OK);
    running.shutdown().await;

    // Global cap: the third connection waits in the backlog until a slot frees.
    let yaml = with_limits(&env, &up.url(), "{ max_connections: 2 }");
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let a = hold(http).await;
    let _b = hold(http).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = tokio::spawn(async move { status(http, "globex.gw.test", "/").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served past the global cap");
    drop(a);
    let got = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("served once a slot freed")
        .expect("task");
    assert_eq!(got, StatusCode::OK);
}

#[tokio::test]
async fn a_thousand_idle_connections_do_not_stop_service() {
    let (env, _up, running) = start_with_limits(None).await;
    let http = running.addr("http").expect("http");
    let https = running.addr("https").expect("https");
    let mut idle = Vec::new();
    for i in 0..1000 {
        let addr = if i % 2 == 0 { http } else { https };
        let mut s = TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 0 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: glo")
                .await
                .expect("write");
        }
        idle.push(s);
    }
    let t = Instant::now();
    assert_eq!(status(http, "globex.gw.test", "/").await, StatusCode::OK);
    let got = h1_tls(
        tls_connect(&env, https, Some("globex.gw.test"), &[b"http/1.1"]).await,
        get("globex.gw.test", "/"),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

// === Clients: HTTP/2 ===

/// A minimal HTTP/2 frame writer and reader, to send what well-behaved clients never send.
mod h2raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const GOAWAY: u8 = 7;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Connection preface + empty SETTINGS.
    pub fn preface() -> Vec<u8> {
        let mut v = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        v.extend(frame(SETTINGS, 0, 0, &[]));
        v
    }

    /// HPACK for `GET http://<authority>/` plus extra literal headers (no Huffman, no indexing).
    pub fn get_block(authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut b = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
        b.push(0x01); // :authority, literal without indexing, name index 1
        b.push(authority.len() as u8);
        b.extend_from_slice(authority.as_bytes());
        for (n, v) in extra {
            b.push(0x00);
            b.push(n.len() as u8);
            b.extend_from_slice(n.as_bytes());
            b.push(v.len() as u8);
            b.extend_from_slice(v.as_bytes());
        }
        b
    }

    pub struct Frame {
        pub kind: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    pub async fn read_frame(s: &mut TcpStream) -> Option<Frame> {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.ok()?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.ok()?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Some(Frame {
            kind: head[3],
            stream,
            payload,
        })
    }

    pub async fn connect(addr: std::net::SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&preface()).await.expect("preface");
        s
    }
}

#[tokio::test]
async fn http2_limits_are_advertised_and_abuse_is_refused() {
    use h2raw::*;
    let (_env, up, running) = start_with_limits(Some("{ h2_max_concurrent_streams: 50, max_header_bytes: 16384, h2_max_pending_reset_streams: 10 }")).await;
    let http = running.addr("http").expect("http");
    let limit = Duration::from_secs(3);

    // The server's SETTINGS carry the stream and header-list caps.
    let mut s = connect(http).await;
    let settings = tokio::time::timeout(limit, read_frame(&mut s))
        .await
        .expect("settings in time")
        .expect("settings");
    assert_eq!(settings.kind, SETTINGS);
    let values: Vec<(u16, u32)> = settings
        .payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert!(
        values.contains(&(0x3, 50)),
        "MAX_CONCURRENT_STREAMS: {values:?}"
    );
    assert!(
        values.contains(&(0x6, 16384)),
        "MAX_HEADER_LIST_SIZE: {values:?}"
    );

    // A connection-specific header is a malformed HTTP/2 request: the stream is reset.
    let block = get_block("globex.gw.test", &[("connection", "keep-alive")]);
    s.write_all(&frame(HEADERS, 0x5, 1, &block))
        .await
        .expect("write");
    let reset = tokio::time::timeout(limit, async {
        while let Some(f) = read_frame(&mut s).await {
            if (f.kind == RST_STREAM && f.stream == 1) || f.kind == GOAWAY {
                return Some(f);
            }
        }
        None
    })
    .await
    .expect("answer in time")
    .expect("RST_STREAM");
    assert_eq!(reset.payload[..4], [0, 0, 0, 1], "PROTOCOL_ERROR");

    // Rapid reset: open and cancel streams in a burst; the gateway ends the connection.
    let mut s = connect(http).await;
    let mut burst = Vec::new();
    for i in 0..500u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, 0x5, id, &get_block("globex.gw.test", &[])));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let _ = s.write_all(&burst).await;
    let goaway = tokio::time::timeout(limit, async {
        while let Some(f) = read_frame(&mut s).await {
            if f.kind == GOAWAY {
                return Some(f);
            }
        }
        None
    })
    .await
    .expect("GOAWAY in time")
    .expect("GOAWAY");
    let code = u32::from_be_bytes([
        goaway.payload[4],
        goaway.payload[5],
        goaway.payload[6],
        goaway.payload[7],
    ]);
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM");
    let _ = DATA;
    assert!(
        up.requests().len() < 100,
        "most cancelled streams never reached the upstream: {}",
        up.requests().len()
    );
    assert_eq!(status(http, "globex.gw.test", "/").await, StatusCode::OK);
}

// === Upstreams ===

/// An upstream that answers every request with `answer`, then closes the connection.
/// Returns its address and the number of requests it read.
async fn canned_upstream(answer: &'static [u8]) -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(Mutex::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                *seen.lock().expect("count") += 1;
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, count)
}

/// Status and whether the body arrived complete, over HTTP/1.1 or HTTP/2 (TLS).
async fn fetch(env: &Env, addr: SocketAddr, h2: bool) -> (StatusCode, Result<Bytes, String>) {
    let conn = tls_connect(
        env,
        addr,
        Some("globex.gw.test"),
        if h2 { &[b"h2"] } else { &[b"http/1.1"] },
    )
    .await;
    let resp = if h2 {
        let mut sender = h2_sender(conn).await;
        sender
            .send_request(get_h2("globex.gw.test", "/"))
            .await
            .expect("response head")
    } else {
        let (mut sender, c) = hyper::client::conn::http1::handshake(TokioIo::new(conn.stream))
            .await
            .expect("h1 handshake");
        tokio::spawn(c);
        sender
            .send_request(get("globex.gw.test", "/"))
            .await
            .expect("response head")
    };
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .map_err(|_| "body timed out".to_owned())
        .and_then(|r| r.map(|b| b.to_bytes()).map_err(|e| e.to_string()));
    (status, body)
}

#[tokio::test]
async fn an_upstream_reset_mid_body_aborts_the_clients_response() {
    let env = Env::new();
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a hundred bytes, then the upstream goes away......................"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nfirst sixteen by\r\n"[..],
    ] {
        let answer: &'static [u8] = Box::leak(answer.to_vec().into_boxed_slice());
        let (addr, _) = canned_upstream(answer).await;
        let url = format!("http://{addr}");
        let (_gw, running) = env.start(&env.config(&url, &url)).await;
        let https = running.addr("https").expect("https");
        for h2 in [false, true] {
            let (status, body) = fetch(&env, https, h2).await;
            assert_eq!(status, StatusCode::OK);
            assert!(
                body.is_err(),
                "h2={h2}: a truncated body must not look complete: {body:?}"
            );
        }
        running.shutdown().await;
    }
}

#[tokio::test]
async fn upstream_framing_conflicts_are_reframed_and_bad_heads_are_502() {
    let env = Env::new();
    // Both Content-Length and Transfer-Encoding: chunked wins, the length is dropped.
    let (addr, _) = canned_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let url = format!("http://{addr}");
    let (_gw, running) = env.start(&env.config(&url, &url)).await;
    let https = running.addr("https").expect("https");
    for h2 in [false, true] {
        let (status, body) = fetch(&env, https, h2).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.as_deref(), Ok(&b"hello"[..]), "h2={h2}");
    }
    let http = running.addr("http").expect("http");
    let (resp, _) = raw(
        http,
        b"GET / HTTP/1.1\r\nHost: globex.gw.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !resp.to_ascii_lowercase().contains("content-length: 3"),
        "{resp}"
    );
    running.shutdown().await;

    for answer in [
        &b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok"[..],
        &b"HTTP/1.1 200 OK\r\nX-Bad\0: a\r\nContent-Length: 2\r\n\r\nok"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok"[..],
        &b"HTTP/9.9 200 OK\r\n\r\n"[..],
    ] {
        let answer: &'static [u8] = Box::leak(answer.to_vec().into_boxed_slice());
        let (addr, _) = canned_upstream(answer).await;
        let url = format!("http://{addr}");
        let (_gw, running) = env.start(&env.config(&url, &url)).await;
        let http = running.addr("http").expect("http");
        let got = h1(http, get("globex.gw.test", "/")).await;
        assert_eq!(
            got.status,
            StatusCode::BAD_GATEWAY,
            "{}",
            String::from_utf8_lossy(answer)
        );
        assert_eq!(got.json()["error"], "upstream_unavailable");
        running.shutdown().await;
    }
}

#[tokio::test]
async fn idempotent_requests_are_retried_once_on_connect_failure_and_posts_never() {
    let env = Env::new();
    let up = Upstream::start("live").await;
    let dead = dead_endpoint().await;
    let yaml = pool_config(
        &env,
        &[&dead, &up.url()],
        ", health: { consecutive_failures: 0 }",
    );
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    for i in 0..10 {
        let get = http::Request::get(format!("/get/{i}"))
            .header("host", "globex.gw.test")
            .header("accept", "text/html")
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert_eq!(
            h1(http, get).await.status,
            StatusCode::OK,
            "GET {i} retried on the live endpoint"
        );
    }
    // Retried or not, each arrives whole: both `accept` values, signed.
    for seen in up.requests() {
        let accept: Vec<_> = seen.headers.get_all("accept").iter().collect();
        assert_eq!(accept, ["text/html", "application/json"], "{}", seen.path);
        assert!(seen.headers.contains_key("x-tenant-signature"));
    }
    let mut posts = Vec::new();
    for i in 0..10 {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("/post/{i}"))
            .header("host", "globex.gw.test")
            .body(Full::new(Bytes::from_static(b"payload")))
            .expect("request");
        posts.push(h1(http, req).await.status);
    }
    let failed = posts
        .iter()
        .filter(|s| **s == StatusCode::BAD_GATEWAY)
        .count();
    assert_eq!(failed, 5, "POSTs are never retried: {posts:?}");
    assert_eq!(up.requests().len(), 15);
    running.shutdown().await;

    // Retries can be turned off.
    let yaml = pool_config(
        &env,
        &[&dead, &up.url()],
        ", retry_connect_failure: false, health: { consecutive_failures: 0 }",
    );
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let mut gets = Vec::new();
    for _ in 0..10 {
        gets.push(status(http, "globex.gw.test", "/").await);
    }
    assert_eq!(
        gets.iter()
            .filter(|s| **s == StatusCode::BAD_GATEWAY)
            .count(),
        5,
        "{gets:?}"
    );
}

#[tokio::test]
async fn an_endpoint_failing_in_a_row_is_ejected_and_traffic_goes_to_the_others() {
    let env = Env::new();
    let up = Upstream::start("live").await;
    let (broken, broken_hits) =
        canned_upstream(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
    let broken = format!("http://{broken}");
    let yaml = pool_config(
        &env,
        &[&broken, &up.url()],
        // 5xx answers count only when the pool opts in.
        ", health: { consecutive_failures: 2, ejection_ms: 60000, count_5xx: true }",
    );
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(status(http, "globex.gw.test", "/").await);
    }
    let failed = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(
        failed, 2,
        "ejected after two failures in a row: {statuses:?}"
    );
    assert_eq!(*broken_hits.lock().expect("count"), 2);
    assert_eq!(up.requests().len(), 18);
}
