//! Fair share of a saturated pool (`upstreams.<pool>.capacity`), over real sockets: a light
//! tenant is served beside a heavy one's backlog, weights split the capacity, a lone tenant uses
//! all of it, waiting past `queue_ms` is 503 `upstream_saturated`, a client that goes away leaves
//! the queue, and a reload keeps the queue.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// What the counting upstream saw of one request.
#[derive(Debug, Clone)]
struct Arrival {
    tenant: String,
    path: String,
}

/// An upstream that serves each request in `delay` and records arrivals and concurrency.
struct Counting {
    addr: SocketAddr,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    max: Arc<AtomicUsize>,
}

impl Counting {
    async fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::default();
        let max = Arc::new(AtomicUsize::new(0));
        let current = Arc::new(AtomicUsize::new(0));
        let (a2, m2) = (arrivals.clone(), max.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (arrivals, max, current) = (a2.clone(), m2.clone(), current.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (arrivals, max, current) =
                            (arrivals.clone(), max.clone(), current.clone());
                        async move {
                            let others = current.fetch_add(1, Ordering::SeqCst);
                            max.fetch_max(others + 1, Ordering::SeqCst);
                            arrivals.lock().expect("lock").push(Arrival {
                                tenant: req
                                    .headers()
                                    .get("x-tenant-id")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned(),
                                path: req.uri().path().to_owned(),
                            });
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
        Self {
            addr,
            arrivals,
            max,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().expect("lock").clone()
    }
}

/// Tenants `heavy`, `light`, `w1` (weight 1) and `w3` (weight 3) on the shared pool, which
/// has `capacity`.
fn config(env: &Env, upstream: &str, capacity: &str) -> String {
    env.config(upstream, upstream)
        .replace(
            &format!("shared: {{ endpoints: [\"{upstream}\"] }}"),
            &format!("shared: {{ endpoints: [\"{upstream}\"], capacity: {capacity} }}"),
        )
        .replace(
            "tenants:\n",
            "tenants:\n  heavy: { plan: free }\n  light: { plan: free }\n  w1: { plan: free, weight: 1 }\n  w3: { plan: free, weight: 3 }\n",
        )
}

fn host(tenant: &str) -> String {
    format!("{tenant}.gw.test")
}

#[tokio::test]
async fn a_light_tenant_is_served_beside_a_heavy_backlog() {
    let env = Env::new();
    let up = Counting::start(Duration::from_millis(150)).await;
    let (_gw, running) = env
        .start(&config(
            &env,
            &up.url(),
            "{ max_in_flight: 2, queue_ms: 5000 }",
        ))
        .await;
    let http = running.addr("http").expect("http");
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let got = h1(http, get(&host("heavy"), &format!("/h{i}"))).await;
            assert_eq!(got.status, StatusCode::OK);
            done.lock().expect("lock").push("heavy".into());
        }));
    }
    // Heavy fills both slots and queues 8; then light asks once.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let got = h1(http, get(&host("light"), "/l")).await;
    assert_eq!(got.status, StatusCode::OK);
    done.lock().expect("lock").push("light".into());
    let heavy_before_light = done.lock().expect("lock").len() - 1;
    for t in tasks {
        t.await.expect("task");
    }
    // FIFO would serve light after all ten; fair share serves it at the first free slot.
    assert!(
        heavy_before_light <= 4,
        "light waited behind {heavy_before_light} heavy requests"
    );
    assert_eq!(up.max.load(Ordering::SeqCst), 2, "the cap held");
}

#[tokio::test]
async fn waiting_past_queue_ms_is_503_upstream_saturated() {
    let env = Env::new();
    let up = Counting::start(Duration::from_millis(800)).await;
    let (gw, running) = env
        .start(&config(
            &env,
            &up.url(),
            "{ max_in_flight: 1, queue_ms: 200 }",
        ))
        .await;
    let http = running.addr("http").expect("http");
    let first = tokio::spawn(async move { h1(http, get(&host("heavy"), "/slow")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = h1(http, get(&host("light"), "/waits")).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.json()["error"], "upstream_saturated");
    assert_eq!(got.headers["retry-after"], "1");
    assert_eq!(first.await.expect("task").status, StatusCode::OK);
    assert_eq!(
        up.arrivals().len(),
        1,
        "the shed request never reached the upstream"
    );
    let metrics = gw.metrics().render();
    assert!(
        metrics.contains("gateway_upstream_shed_total{upstream=\"shared\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_upstream_capacity_limit{upstream=\"shared\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_frees_its_place_in_the_queue() {
    let env = Env::new();
    let up = Counting::start(Duration::from_millis(300)).await;
    let (gw, running) = env
        .start(&config(
            &env,
            &up.url(),
            "{ max_in_flight: 1, queue_ms: 5000 }",
        ))
        .await;
    let http = running.addr("http").expect("http");
    let first = tokio::spawn(async move { h1(http, get(&host("heavy"), "/a")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // B queues, then its client hangs up.
    let mut b = TcpStream::connect(http).await.expect("connect");
    b.write_all(b"GET /b HTTP/1.1\r\nHost: heavy.gw.test\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let queued = |gw: &tenant_gateway::Gateway| {
        gw.snapshot().upstreams["shared"]
            .capacity()
            .expect("capacity")
            .queued()
    };
    assert_eq!(queued(&gw), 1);
    drop(b);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(queued(&gw), 0, "the departed client left the queue at once");
    // C is served next; B never reaches the upstream.
    let got = h1(http, get(&host("heavy"), "/c")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(first.await.expect("task").status, StatusCode::OK);
    let paths: Vec<String> = up.arrivals().into_iter().map(|a| a.path).collect();
    assert_eq!(paths, ["/a", "/c"]);
}

/// Runs `clients` request loops per tenant for `for_ms`; returns what the upstream served.
async fn saturate(http: SocketAddr, tenants: &[&str], clients: usize, for_ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(for_ms);
    let mut tasks = Vec::new();
    for t in tenants {
        for _ in 0..clients {
            let h = host(t);
            tasks.push(tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    let got = h1(http, get(&h, "/x")).await;
                    assert_eq!(got.status, StatusCode::OK);
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
}

#[tokio::test]
async fn weights_split_a_saturated_pool() {
    let env = Env::new();
    let up = Counting::start(Duration::from_millis(20)).await;
    let (_gw, running) = env
        .start(&config(
            &env,
            &up.url(),
            "{ max_in_flight: 2, queue_ms: 10000 }",
        ))
        .await;
    let http = running.addr("http").expect("http");
    saturate(http, &["w1", "w3"], 8, 2_000).await;
    let arrivals = up.arrivals();
    // Count only while both tenants were backlogged: the middle of the run.
    let middle = &arrivals[arrivals.len() / 5..arrivals.len() * 4 / 5];
    let n = |t: &str| middle.iter().filter(|a| a.tenant == t).count() as f64;
    let ratio = n("w3") / n("w1");
    assert!(
        (2.7..=3.3).contains(&ratio),
        "w3:w1 = {ratio:.2} ({} / {})",
        n("w3"),
        n("w1")
    );
}

#[tokio::test]
async fn a_lone_tenant_uses_the_whole_capacity() {
    let env = Env::new();
    let up = Counting::start(Duration::from_millis(40)).await;
    let (gw, running) = env
        .start(&config(
            &env,
            &up.url(),
            "{ max_in_flight: 4, queue_ms: 10000 }",
        ))
        .await;
    let http = running.addr("http").expect("http");
    // Work conservation: whenever a request waits, every slot is taken. Sampled from the same
    // (current-thread) runtime, so a sample never falls inside a release.
    let queue = gw.snapshot().upstreams["shared"]
        .capacity()
        .expect("capacity");
    let sampler = tokio::spawn(async move {
        let (mut waiting, mut idle_while_waiting) = (0, 0);
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if queue.queued() > 0 {
                waiting += 1;
                if queue.in_flight() < queue.limit() {
                    idle_while_waiting += 1;
                }
            }
        }
        (waiting, idle_while_waiting)
    });
    saturate(http, &["heavy"], 12, 1_500).await;
    let (waiting, idle_while_waiting) = sampler.await.expect("sampler");
    assert!(
        waiting > 100,
        "the tenant kept a backlog ({waiting} samples)"
    );
    assert_eq!(
        idle_while_waiting, 0,
        "a slot was free while a request waited"
    );
    assert_eq!(
        up.max.load(Ordering::SeqCst),
        4,
        "all four slots used, never more"
    );
    assert!(!up.arrivals().is_empty());
}

#[tokio::test]
async fn a_reload_that_changes_the_cap_keeps_the_queue_and_its_order() {
    let env = Env::new();
    let up = Counting::start(Duration::from_millis(200)).await;
    let yaml = config(&env, &up.url(), "{ max_in_flight: 1, queue_ms: 10000 }");
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let mut tasks = Vec::new();
    for i in 0..5 {
        tasks.push(tokio::spawn(async move {
            h1(http, get(&host("heavy"), &format!("/r{i}")))
                .await
                .status
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queue = gw.snapshot().upstreams["shared"]
        .capacity()
        .expect("capacity");
    assert_eq!(queue.queued(), 4);
    env.write_config(&yaml.replace("max_in_flight: 1,", "max_in_flight: 3,"));
    gw.reload().expect("reload");
    let after = gw.snapshot().upstreams["shared"]
        .capacity()
        .expect("capacity");
    assert!(Arc::ptr_eq(&queue, &after), "the pool kept its queue");
    assert_eq!(after.limit(), 3);
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    let paths: Vec<String> = up.arrivals().into_iter().map(|a| a.path).collect();
    assert_eq!(paths, ["/r0", "/r1", "/r2", "/r3", "/r4"]);
    assert_eq!(
        up.max.load(Ordering::SeqCst),
        3,
        "the raised cap was used at once"
    );
}
