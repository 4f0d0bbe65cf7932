//! The upstream side of `http://` pools (the lean HTTP/1.1 path): keep-alive reuse, one idle set
//! per endpoint whatever the tenant's plan, the idle timeout, the per-endpoint connection cap,
//! and the hidden costs of reusing connections: an upstream that closes an idle connection
//! (before or exactly as a request goes out), `Connection: close` from either side, pipelined
//! client requests, and HTTP/1.0 upstreams.
//!
//! The upstream here is a hand-written HTTP/1.1 server on a raw socket, so each test decides
//! exactly when it answers and when it closes, and counts the connections it accepts.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the raw upstream behaves on each connection.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Closes a connection that has waited this long for its next request (its keep-alive
    /// timeout); default 30 s.
    keep_alive: Option<Duration>,
    /// Answers `Connection: close` and closes after every response.
    close_each: bool,
    /// Answers as an HTTP/1.0 server: no `Content-Length`, the body ends when it closes.
    http10: bool,
    /// Closes the connection without answering when its `n`-th request (1-based) arrives:
    /// the keep-alive race, where the upstream gives up the connection as a request goes out.
    drop_nth: Option<usize>,
    /// Sends half a response head to the `n`-th request on a connection, then closes.
    partial_nth: Option<usize>,
    /// Waits this long before answering.
    delay: Duration,
}

struct RawUpstream {
    addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// Connections open right now, and the most ever open at once.
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// Request heads received, in order (including those dropped unanswered).
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(b: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let requests: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let (a, o, p, r) = (
            accepted.clone(),
            open.clone(),
            peak.clone(),
            requests.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                let (o, r) = (o.clone(), r.clone());
                tokio::spawn(async move {
                    serve(s, b, &r).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            accepted,
            open,
            peak,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The request lines received.
    fn requests(&self) -> Vec<String> {
        self.heads()
            .iter()
            .map(|h| h.lines().next().unwrap_or("").to_owned())
            .collect()
    }

    /// The request heads received, whole.
    fn heads(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

/// Serves one connection: reads request heads (and `Content-Length` bodies), answers each.
async fn serve(mut s: TcpStream, b: Behaviour, seen: &std::sync::Mutex<Vec<String>>) {
    let mut buf = Vec::new();
    let mut n = 0;
    let keep_alive = b.keep_alive.unwrap_or(Duration::from_secs(30));
    loop {
        // One request head (and body).
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = match tokio::time::timeout(keep_alive, s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return, // closed, or keep-alive timeout
                Ok(Ok(k)) => k,
            };
            buf.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len = content_length(&head);
        n += 1;
        seen.lock().expect("lock").push(head.clone());
        if b.drop_nth == Some(n) {
            return;
        }
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        buf.drain(..head_end + len);
        tokio::time::sleep(b.delay).await;
        if b.partial_nth == Some(n) {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
            return;
        }
        let answer = if b.http10 {
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from 1.0".to_owned()
        } else if b.close_each {
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_owned()
        } else {
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned()
        };
        if s.write_all(answer.as_bytes()).await.is_err() || b.http10 || b.close_each {
            return;
        }
    }
}

/// A gateway whose shared pool is `up` with pool options `pool_extra`; keep the second value
/// alive for as long as the gateway should run.
async fn gateway(
    env: &Env,
    up: &RawUpstream,
    pool_extra: &str,
) -> (
    SocketAddr,
    (
        Arc<tenant_gateway::gateway::Gateway>,
        tenant_gateway::gateway::Running,
    ),
) {
    let yaml = pool_config(env, &[&up.url()], pool_extra);
    let (gw, running) = env.start(&yaml).await;
    (running.addr("http").expect("http"), (gw, running))
}

#[tokio::test]
async fn keep_alive_connections_are_reused_across_requests_and_tenants_of_every_plan() {
    let env = Env::new();
    let up = RawUpstream::start(Behaviour::default()).await;
    // acme (enterprise) and globex (free) get different connect timeouts, and both go to the
    // shared pool: still one idle set for the endpoint.
    let yaml = pool_config(&env, &[&up.url()], "")
        .replace(
            "enterprise: { timeouts: { connect_ms: 1000",
            "enterprise: { timeouts: { connect_ms: 700",
        )
        .replace(
            "    routes: [ { path_prefix: /, upstream: acme-dedicated } ]\n",
            "",
        );
    let (_gw, running) = env.start(&yaml).await;
    let addr = running.addr("http").expect("http");
    for i in 0..10 {
        let host = if i % 2 == 0 {
            "acme.gw.test"
        } else {
            "globex.gw.test"
        };
        assert_eq!(status(addr, host, "/").await, StatusCode::OK, "request {i}");
    }
    assert_eq!(up.requests().len(), 10);
    assert_eq!(
        up.accepted(),
        1,
        "ten sequential requests from two plans share one upstream connection"
    );
}

#[tokio::test]
async fn an_upstream_that_closed_an_idle_connection_costs_no_request() {
    let env = Env::new();
    // The upstream's keep-alive (150 ms) is shorter than the gateway's idle timeout (4 s).
    let up = RawUpstream::start(Behaviour {
        keep_alive: Some(Duration::from_millis(150)),
        ..Behaviour::default()
    })
    .await;
    let (addr, _keep) = gateway(&env, &up, "").await;
    for i in 0..4 {
        assert_eq!(
            status(addr, "globex.gw.test", "/").await,
            StatusCode::OK,
            "request {i}"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        up.requests().len(),
        4,
        "each request reached the upstream once"
    );
    assert_eq!(up.accepted(), 4, "each went out on a fresh connection");
}

#[tokio::test]
async fn a_request_written_as_the_upstream_closes_is_sent_again_when_it_is_safe() {
    let env = Env::new();
    // Every connection's second request is met by a close without an answer.
    let up = RawUpstream::start(Behaviour {
        drop_nth: Some(2),
        ..Behaviour::default()
    })
    .await;
    let (addr, _keep) = gateway(&env, &up, "").await;
    assert_eq!(status(addr, "globex.gw.test", "/one").await, StatusCode::OK);
    // A GET: sent again on a fresh connection, with the same head byte for byte (repeated
    // fields, a value holding ':' and spaces, the signature).
    let two = http::Request::get("/two")
        .header("host", "globex.gw.test")
        .header("accept", "text/html")
        .header("accept", "application/json")
        .header("x-note", "a: b,  c\t d")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(h1(addr, two).await.status, StatusCode::OK);
    assert_eq!(
        up.requests(),
        [
            "GET /one HTTP/1.1",
            "GET /two HTTP/1.1",
            "GET /two HTTP/1.1"
        ]
    );
    assert_eq!(up.accepted(), 2);
    let heads = up.heads();
    assert_eq!(heads[1], heads[2], "the replay is the same request");
    for field in [
        "accept: text/html\r\n",
        "accept: application/json\r\n",
        "x-note: a: b,  c\t d\r\n",
        "x-tenant-signature: ",
    ] {
        assert!(heads[2].contains(field), "{field:?} in {}", heads[2]);
    }

    // A POST with a body may have been acted on: never sent twice, the client gets 502.
    let post = http::Request::post("/pay")
        .header("host", "globex.gw.test")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"amount=1",
        )))
        .expect("request");
    assert_eq!(h1(addr, post).await.status, StatusCode::BAD_GATEWAY);
    let posts = up
        .requests()
        .iter()
        .filter(|l| l.starts_with("POST"))
        .count();
    assert_eq!(posts, 1, "a POST is never replayed");
}

#[tokio::test]
async fn a_response_cut_after_its_first_byte_is_not_sent_again() {
    let env = Env::new();
    let up = RawUpstream::start(Behaviour {
        partial_nth: Some(2),
        ..Behaviour::default()
    })
    .await;
    let (addr, _keep) = gateway(&env, &up, "").await;
    assert_eq!(status(addr, "globex.gw.test", "/one").await, StatusCode::OK);
    assert_eq!(
        status(addr, "globex.gw.test", "/two").await,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        up.requests().iter().filter(|l| l.contains("/two")).count(),
        1,
        "the upstream had started answering: the request is not repeated"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_when_it_expires_and_never_reused() {
    let env = Env::new();
    let up = RawUpstream::start(Behaviour::default()).await;
    let (addr, _keep) = gateway(&env, &up, ", idle_timeout_ms: 200").await;
    assert_eq!(status(addr, "globex.gw.test", "/").await, StatusCode::OK);
    assert_eq!(status(addr, "globex.gw.test", "/").await, StatusCode::OK);
    assert_eq!(up.accepted(), 1, "reused within the idle timeout");
    // Closed once expired, with no further request to notice it.
    assert!(
        eventually(Duration::from_secs(2), || async {
            up.open.load(Ordering::SeqCst) == 0
        })
        .await,
        "the idle connection is closed when it expires"
    );
    assert_eq!(status(addr, "globex.gw.test", "/").await, StatusCode::OK);
    assert_eq!(
        up.accepted(),
        2,
        "a fresh connection after the idle timeout"
    );
    assert_eq!(up.open.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connection_close_from_either_side() {
    let env = Env::new();
    // The upstream closes after every response.
    let up = RawUpstream::start(Behaviour {
        close_each: true,
        ..Behaviour::default()
    })
    .await;
    let (addr, _keep) = gateway(&env, &up, "").await;
    for _ in 0..5 {
        assert_eq!(status(addr, "globex.gw.test", "/").await, StatusCode::OK);
    }
    assert_eq!(up.accepted(), 5);
    assert_eq!(up.requests().len(), 5, "no request lost or doubled");

    // The client asks to close: its connection closes, the upstream connection stays.
    let up = RawUpstream::start(Behaviour::default()).await;
    let (addr, _keep) = gateway(&env, &up, "").await;
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: globex.gw.test\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the gateway closes the client connection")
            .expect("read");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    assert_eq!(
        up.accepted(),
        1,
        "the client's Connection: close is hop-by-hop: the upstream connection is kept"
    );
}

#[tokio::test]
async fn pipelined_client_requests_are_answered_in_order() {
    let env = Env::new();
    let up = RawUpstream::start(Behaviour::default()).await;
    let (addr, _keep) = gateway(&env, &up, "").await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let three: String = ["/a", "/b", "/c"]
        .iter()
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: globex.gw.test\r\n\r\n"))
        .collect();
    s.write_all(three.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while out.windows(12).filter(|w| w == b"HTTP/1.1 200").count() < 3 || !out.ends_with(b"ok") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("three answers within 5 s")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        up.requests(),
        ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /c HTTP/1.1"]
    );
}

#[tokio::test]
async fn an_http_1_0_upstream_answer_ends_with_its_connection() {
    let env = Env::new();
    let up = RawUpstream::start(Behaviour {
        http10: true,
        ..Behaviour::default()
    })
    .await;
    let (addr, _keep) = gateway(&env, &up, "").await;
    for _ in 0..3 {
        let got = h1(addr, get("globex.gw.test", "/")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(&got.body[..], b"hello from 1.0");
    }
    assert_eq!(up.accepted(), 3, "an HTTP/1.0 connection is never reused");
}

#[tokio::test]
async fn max_connections_per_endpoint_caps_the_connections_and_queues_within_connect_ms() {
    let env = Env::new();
    let up = RawUpstream::start(Behaviour {
        delay: Duration::from_millis(200),
        ..Behaviour::default()
    })
    .await;
    let (addr, _keep) = gateway(&env, &up, ", max_connections_per_endpoint: 2").await;
    let answers = futures_join(addr, 6).await;
    assert!(answers.iter().all(|s| *s == StatusCode::OK), "{answers:?}");
    assert!(
        up.peak.load(Ordering::SeqCst) <= 2,
        "at most two connections at once, saw {}",
        up.peak.load(Ordering::SeqCst)
    );
    assert_eq!(up.accepted(), 2);

    // A request that cannot get a connection within its connect timeout is refused with 503.
    let up = RawUpstream::start(Behaviour {
        delay: Duration::from_millis(1500),
        ..Behaviour::default()
    })
    .await;
    let (addr, _keep) = gateway(&env, &up, ", max_connections_per_endpoint: 1").await;
    let answers = futures_join(addr, 2).await;
    assert!(answers.contains(&StatusCode::OK), "{answers:?}");
    assert!(
        answers.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "the second waits connect_ms (1 s) for the busy connection, then 503: {answers:?}"
    );
    assert_eq!(up.accepted(), 1);
}

async fn futures_join(addr: SocketAddr, n: usize) -> Vec<StatusCode> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { status(addr, "globex.gw.test", "/").await }))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

#[tokio::test]
async fn check_refuses_connection_settings_that_cannot_apply() {
    let env = Env::new();
    let cases = [
        (", idle_timeout_ms: 0", "idle_timeout_ms"),
        (
            ", max_connections_per_endpoint: 0",
            "max_connections_per_endpoint",
        ),
    ];
    for (extra, key) in cases {
        let yaml = pool_config(&env, &["http://127.0.0.1:9"], extra);
        let path = env.write_config(&yaml);
        let err = tenant_gateway::gateway::Gateway::from_file(&path)
            .err()
            .unwrap_or_else(|| panic!("{extra} accepted"));
        assert!(err.to_string().contains(key), "{err}");
    }
    let yaml = pool_config(&env, &["h2c://127.0.0.1:9"], ", idle_timeout_ms: 1000");
    let path = env.write_config(&yaml);
    let err = tenant_gateway::gateway::Gateway::from_file(&path)
        .err()
        .expect("idle_timeout_ms on an h2c pool accepted");
    assert!(err.to_string().contains("http:// pools only"), "{err}");
}
