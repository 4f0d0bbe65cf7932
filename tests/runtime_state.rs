//! State that survives reloads by identity, over real sockets: endpoint health across reloads
//! and certificate renewals, health charged only to the endpoint's own failures, ejection
//! bounded and spread, a concurrency cap resized under load, and racing reloads.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers after `delay`, recording the most requests it served at once.
struct Slow {
    addr: SocketAddr,
    max: Arc<AtomicUsize>,
}

impl Slow {
    async fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let max = Arc::new(AtomicUsize::new(0));
        let current = Arc::new(AtomicUsize::new(0));
        let m2 = max.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (max, current) = (m2.clone(), current.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let (max, current) = (max.clone(), current.clone());
                        async move {
                            let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            current.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, max }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn ejected(gw: &tenant_gateway::Gateway) -> Vec<bool> {
    gw.snapshot().upstreams["shared"]
        .endpoints()
        .iter()
        .map(|e| e.is_ejected())
        .collect()
}

#[tokio::test]
async fn an_ejected_endpoint_stays_ejected_across_reloads_that_keep_it() {
    let env = Env::new();
    let live = Upstream::start("live").await;
    let dead = dead_endpoint().await;
    let health = ", health: { consecutive_failures: 1, ejection_ms: 60000 }";
    let yaml = pool_config(&env, &[&dead, &live.url()], health);
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    for _ in 0..4 {
        assert_eq!(status(http, "globex.gw.test", "/").await, StatusCode::OK);
    }
    assert_eq!(ejected(&gw), [true, false]);

    // A reload that does not touch the pool.
    env.write_config(&yaml.replace("  initech:", "  umbrella: { plan: free }\n  initech:"));
    gw.reload().expect("reload");
    assert_eq!(
        ejected(&gw),
        [true, false],
        "kept across an unrelated reload"
    );

    // A certificate renewal picked up by the file watcher.
    let _watch = tenant_gateway::watch::spawn(gw.clone()).expect("watcher");
    let generation = gw.generation();
    tenant_gateway::devcerts::write(
        env.dir.path(),
        DOMAIN,
        &["acme".to_owned(), "globex".to_owned()],
    )
    .expect("renew certificates");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.generation() == generation && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.generation() > generation, "the watcher reloaded");
    assert_eq!(
        ejected(&gw),
        [true, false],
        "kept across a certificate renewal"
    );

    // A reload that adds an endpoint: the unchanged ones keep their state, the new one starts
    // in service.
    let extra = Upstream::start("extra").await;
    env.write_config(&pool_config(
        &env,
        &[&dead, &live.url(), &extra.url()],
        health,
    ));
    gw.reload().expect("reload");
    assert_eq!(ejected(&gw), [true, false, false]);
}

#[tokio::test]
async fn a_tenants_own_deadline_and_slow_uploads_never_eject_a_shared_endpoint() {
    let env = Env::new();
    let slow = Slow::start(Duration::from_millis(300)).await;
    let health = ", health: { consecutive_failures: 2, ejection_ms: 60000 }";
    let yaml = with_tenant_lines(
        &pool_config(&env, &[&slow.url()], health),
        "globex",
        "    timeouts: { connect_ms: 1000, request_ms: 100 }\n",
    )
    .replace("  initech:", "  umbrella: { plan: free }\n  initech:")
    .replace("plans:", "limits: { body_timeout_ms: 200 }\nplans:");
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    // Ten requests that hit globex's own 100 ms deadline.
    for _ in 0..10 {
        assert_eq!(
            status(http, "globex.gw.test", "/").await,
            StatusCode::GATEWAY_TIMEOUT
        );
    }
    // Five uploads that stall: 408 for the client, nothing for the endpoint.
    for _ in 0..5 {
        let mut s = TcpStream::connect(http).await.expect("connect");
        s.write_all(b"POST / HTTP/1.1\r\nHost: umbrella.gw.test\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .expect("write");
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(3), async {
            use tokio::io::AsyncReadExt;
            s.read(&mut buf).await
        })
        .await
        .expect("answered")
        .expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
    }
    assert_eq!(ejected(&gw), [false], "the endpoint was never charged");
    // Another tenant's next request is served by it (it is the pool's only endpoint).
    assert_eq!(status(http, "umbrella.gw.test", "/").await, StatusCode::OK);
}

#[tokio::test]
async fn ejection_is_bounded_and_an_ejected_endpoints_turns_are_shared_evenly() {
    let env = Env::new();
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dead = dead_endpoint().await;
    let yaml = pool_config(
        &env,
        &[&a.url(), &dead, &b.url()],
        ", health: { consecutive_failures: 1, ejection_ms: 60000 }",
    );
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    for _ in 0..60 {
        assert_eq!(status(http, "globex.gw.test", "/").await, StatusCode::OK);
    }
    assert_eq!(ejected(&gw), [false, true, false]);
    let (na, nb) = (a.requests().len(), b.requests().len());
    // The one request retried away from the dead endpoint lands on one of them.
    assert!(na.abs_diff(nb) <= 2, "a {na}, b {nb}");

    // With the default max_ejection_percent (50), a second failing endpoint of three stays.
    let dead2 = dead_endpoint().await;
    let yaml = pool_config(
        &env,
        &[&a.url(), &dead, &dead2],
        ", health: { consecutive_failures: 1, ejection_ms: 60000 }",
    );
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    for _ in 0..12 {
        status(http, "globex.gw.test", "/").await;
    }
    let out = ejected(&gw).iter().filter(|e| **e).count();
    assert_eq!(out, 1, "{:?}", ejected(&gw));
}

#[tokio::test]
async fn a_concurrency_cap_changed_by_reload_is_never_exceeded() {
    let env = Env::new();
    let slow = Slow::start(Duration::from_millis(600)).await;
    let yaml = with_tenant_lines(
        &env.config(&slow.url(), &slow.url()),
        "globex",
        "    max_concurrent: 2\n",
    );
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let send = || tokio::spawn(async move { status(http, "globex.gw.test", "/").await });
    let first = [send(), send()];
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Lowered to 1 while 2 are in flight: nothing more gets in until both are done.
    env.write_config(&yaml.replace("max_concurrent: 2", "max_concurrent: 1"));
    gw.reload().expect("reload");
    assert_eq!(
        status(http, "globex.gw.test", "/").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    for t in first {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    assert_eq!(slow.max.load(Ordering::SeqCst), 2);
    // Now one at a time.
    slow.max.store(0, Ordering::SeqCst);
    let one = [send(), send()];
    let got: Vec<StatusCode> = futures_util::future::join_all(one)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert!(got.contains(&StatusCode::OK) && got.contains(&StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(slow.max.load(Ordering::SeqCst), 1);
    // Raised to 3: three at once, never four.
    env.write_config(&yaml.replace("max_concurrent: 2", "max_concurrent: 3"));
    gw.reload().expect("reload");
    slow.max.store(0, Ordering::SeqCst);
    let four = [send(), send(), send(), send()];
    let got: Vec<StatusCode> = futures_util::future::join_all(four)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert_eq!(got.iter().filter(|s| **s == StatusCode::OK).count(), 3);
    assert_eq!(slow.max.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn racing_reloads_install_the_file_written_last() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let base = env.config(&up.url(), &up.url());
    let (gw, running) = env.start(&base).await;
    let admin = running.addr("admin").expect("admin");
    let path = env.path("gateway.yaml");
    for round in 0..10 {
        let versions: Vec<String> = (0..3)
            .map(|i| {
                base.replace(
                    "  initech:",
                    &format!("  t{round}x{i}: {{ plan: free }}\n  initech:"),
                )
            })
            .collect();
        // Three writers, each followed by a reload through a different door.
        let (g1, g2) = (gw.clone(), gw.clone());
        let (p1, p2, p3) = (path.clone(), path.clone(), path.clone());
        let (v0, v1, v2) = (
            versions[0].clone(),
            versions[1].clone(),
            versions[2].clone(),
        );
        let a = tokio::task::spawn_blocking(move || {
            std::fs::write(&p1, v0).expect("write");
            let _ = g1.reload();
        });
        let b = tokio::task::spawn_blocking(move || {
            std::fs::write(&p2, v1).expect("write");
            let _ = g2.reload();
        });
        let c = tokio::spawn(async move {
            tokio::task::spawn_blocking(move || std::fs::write(&p3, v2).expect("write"))
                .await
                .expect("write");
            let mut req = get("localhost", "/reload");
            *req.method_mut() = http::Method::POST;
            h1(admin, req).await
        });
        a.await.expect("a");
        b.await.expect("b");
        c.await.expect("c");
        let on_disk = std::fs::read(&path).expect("read");
        let config = h1(admin, get("localhost", "/config")).await.json();
        assert_eq!(
            config["config_hash"],
            tenant_gateway::config::content_hash(&on_disk),
            "round {round}: the served config is the file on disk"
        );
        assert_eq!(config["generation"], gw.generation());
    }
}
