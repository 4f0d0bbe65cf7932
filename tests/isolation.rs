//! Noisy-neighbour isolation over real sockets: per-tenant rate limits (GCRA), concurrency caps,
//! upstream deadlines and body limits, set by plan and overridden per tenant.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The standard test config with extra per-tenant settings for acme (YAML lines, indented).
fn acme_with(env: &Env, upstream: &str, extra: &str) -> String {
    with_tenant_lines(&env.config(upstream, upstream), "acme", extra)
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_with_retry_after_and_others_are_unaffected() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let yaml = acme_with(&env, &up.url(), "    rate: { per_second: 5, burst: 10 }\n");
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");

    let mut admitted = 0;
    let mut limited = Vec::new();
    for _ in 0..40 {
        let got = h1(http, get("acme.gw.test", "/")).await;
        // Every response of a limited tenant carries the policy and the current state.
        assert_eq!(got.headers["ratelimit-policy"], "\"tenant\";q=10;w=2");
        assert!(got.headers.contains_key("ratelimit"));
        match got.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => limited.push(got),
            other => panic!("unexpected {other}"),
        }
        // globex has no rate in its plan: never limited, never carries RateLimit headers.
        let other = h1(http, get("globex.gw.test", "/")).await;
        assert_eq!(other.status, StatusCode::OK);
        assert!(!other.headers.contains_key("ratelimit"));
    }
    assert!((10..=12).contains(&admitted), "admitted {admitted}");
    let last = limited.last().expect("some were limited");
    assert_eq!(last.json()["error"], "rate_limited");
    let retry: u64 = last.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert!(
        last.headers["ratelimit"]
            .to_str()
            .expect("ascii")
            .contains("r=0")
    );
    assert_eq!(
        up.requests()
            .iter()
            .filter(|s| s.headers["x-tenant-id"] == "acme")
            .count(),
        admitted
    );

    // After the advertised Retry-After, the tenant is admitted again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(status(http, "acme.gw.test", "/").await, StatusCode::OK);
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_bucket_and_a_raised_quota_starts_a_new_one() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let yaml = acme_with(&env, &up.url(), "    rate: { per_second: 1, burst: 3 }\n");
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");

    for _ in 0..3 {
        assert_eq!(status(http, "acme.gw.test", "/").await, StatusCode::OK);
    }
    assert_eq!(
        status(http, "acme.gw.test", "/").await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Same quota (and a new tenant, so the config really changed): still limited.
    env.write_config(&format!("{yaml}  hooli:\n    plan: free\n"));
    gw.reload().expect("reload");
    assert_eq!(status(http, "hooli.gw.test", "/").await, StatusCode::OK);
    assert_eq!(
        status(http, "acme.gw.test", "/").await,
        StatusCode::TOO_MANY_REQUESTS,
        "an unchanged quota must not hand out a fresh burst"
    );

    // A raised quota is a new bucket.
    env.write_config(&yaml.replace("per_second: 1, burst: 3", "per_second: 100, burst: 200"));
    gw.reload().expect("reload");
    assert_eq!(status(http, "acme.gw.test", "/").await, StatusCode::OK);
}

#[tokio::test]
async fn max_concurrent_two_serves_two_of_six_parallel_requests() {
    let env = Env::new();
    let slow = Upstream::start_with_delay("slow", Duration::from_millis(800)).await;
    let yaml = acme_with(&env, &slow.url(), "    max_concurrent: 2\n");
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");

    let tasks: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { h1(http, get("acme.gw.test", "/")).await }))
        .collect();
    let mut ok = 0;
    let mut overloaded = 0;
    for t in tasks {
        let got = t.await.expect("task");
        match got.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(got.json()["error"], "tenant_overloaded");
                assert!(got.headers.contains_key("retry-after"));
                overloaded += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, overloaded), (2, 4));
    // The slots come back once the responses are done: another tenant was never affected, and
    // acme is served again.
    assert_eq!(status(http, "acme.gw.test", "/").await, StatusCode::OK);
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_at_the_tenants_deadline_and_its_connection_is_dropped() {
    let env = Env::new();
    // An upstream that reads the request and never answers; it reports when the gateway hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<Instant>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    let _ = closed_tx.send(Instant::now());
                    return;
                }
                Ok(Ok(_)) => continue,
                Err(_) => return, // 5 s without a close: the gateway left it hanging
            }
        }
    });
    let url = format!("http://{addr}");
    let yaml = acme_with(
        &env,
        &url,
        "    timeouts: { connect_ms: 1000, request_ms: 800 }\n",
    );
    let (_gw, running) = env.start(&yaml).await;

    let started = Instant::now();
    let got = h1(
        running.addr("http").expect("http"),
        get("acme.gw.test", "/"),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(got.json()["error"], "upstream_timeout");
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(3), closed_rx)
        .await
        .expect("upstream connection closed by the gateway")
        .expect("closed");
    assert!(closed.duration_since(started) < Duration::from_millis(1500));
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_never_reach_the_upstream_whole() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let yaml = acme_with(&env, &up.url(), "    max_body_bytes: 1000\n");
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");

    // Content-Length over the limit: refused before anything is forwarded.
    let req = http::Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "acme.gw.test")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            5000
        ])))
        .expect("request");
    let got = h1(http, req).await;
    assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(got.json()["error"], "body_too_large");
    assert!(
        up.requests().is_empty(),
        "the upstream never saw the request"
    );

    // Chunked, growing past the limit: cut off, 413 (or a reset), never forwarded whole.
    let mut s = TcpStream::connect(http).await.expect("connect");
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: acme.gw.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .expect("head");
    let mut response = Vec::new();
    for _ in 0..10 {
        let chunk = format!("1f4\r\n{}\r\n", "y".repeat(500));
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 413"),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        up.requests()
            .iter()
            .all(|r| !r.body_complete && r.body_len <= 1000),
        "a body over the limit reached the upstream whole"
    );

    // Under the limit, chunked bodies go through.
    let req = http::Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "acme.gw.test")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'z';
            900
        ])))
        .expect("request");
    assert_eq!(h1(http, req).await.status, StatusCode::OK);
    assert!(
        up.requests()
            .iter()
            .any(|r| r.body_complete && r.body_len == 900)
    );
}
