//! Cluster mode against a real `redis-server` (started by each test on a free port): limits
//! shared by replicas, a bounded wait when Redis is down or paused, and recovery.

mod common;

use std::io::{BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

/// The standard config, acme at 5/s burst 10, limits shared through `redis`.
fn cluster_config(env: &Env, upstream: &str, redis: &RedisServer, on_error: &str) -> String {
    with_tenant_lines(
        &env.config(upstream, upstream),
        "acme",
        "    rate: { per_second: 5, burst: 10 }\n",
    )
    .replace(
            "plans:",
            &format!(
                "cluster:\n  rate_limit_store:\n    redis: {{ url: \"{}\", on_error: {on_error}, timeout_ms: 10, replicas: 2, failure_threshold: 3, open_ms: 300, key_prefix: \"test:{}:\" }}\nplans:",
                redis.url(),
                redis.port
            ),
        )
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_gateway(config: &std::path::Path) -> (Proc, std::net::SocketAddr) {
    let mut child = Command::new(bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let addrs = wait_for_listeners(&mut stderr, 2);
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stderr.read_to_end(&mut sink);
    });
    (Proc(child), addrs["http"])
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateway_processes_share_one_tenant_limit() {
    let env = Env::new();
    let redis = RedisServer::start();
    let up = Upstream::start("up").await;
    let yaml = cluster_config(&env, &up.url(), &redis, "local");
    let a_cfg = env.path("a.yaml");
    let b_cfg = env.path("b.yaml");
    std::fs::write(&a_cfg, &yaml).expect("write");
    std::fs::write(&b_cfg, &yaml).expect("write");
    let (_a, a) = spawn_gateway(&a_cfg);
    let (_b, b) = spawn_gateway(&b_cfg);

    let mut admitted = 0;
    for i in 0..40 {
        let addr = if i % 2 == 0 { a } else { b };
        let got = h1(addr, get("acme.gw.test", "/")).await;
        match got.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => assert!(got.headers.contains_key("retry-after")),
            other => panic!("unexpected {other}: {:?}", got.body),
        }
    }
    assert!(
        (10..=12).contains(&admitted),
        "admitted {admitted} of 40 across two replicas"
    );
}

/// Sends `n` requests; returns (statuses, the slowest request's duration).
async fn burst(addr: std::net::SocketAddr, n: usize) -> (Vec<StatusCode>, Duration) {
    let mut statuses = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        statuses.push(status(addr, "acme.gw.test", "/").await);
        slowest = slowest.max(started.elapsed());
    }
    (statuses, slowest)
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_falls_back_per_on_error_without_waiting() {
    let env = Env::new();
    let mut redis = RedisServer::start();
    let up = Upstream::start("up").await;

    let (_gw, local) = env
        .start(&cluster_config(&env, &up.url(), &redis, "local"))
        .await;
    let env2 = Env::new();
    let (_gw2, deny) = env2
        .start(&cluster_config(&env2, &up.url(), &redis, "deny"))
        .await;
    // Warm both up while Redis answers.
    assert_eq!(
        h1(local.addr("http").expect("http"), get("acme.gw.test", "/"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        h1(deny.addr("http").expect("http"), get("acme.gw.test", "/"))
            .await
            .status,
        StatusCode::OK
    );

    redis.stop();
    // local: this replica's share (5/s burst 10 over 2 replicas: burst 5) keeps flowing.
    let (statuses, slowest) = burst(local.addr("http").expect("http"), 20).await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert!(
        (4..=7).contains(&ok),
        "local share admitted {ok}: {statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS)
    );
    assert!(
        slowest < Duration::from_millis(150),
        "slowest request {slowest:?}"
    );
    eprintln!("redis stopped, on_error local: slowest request {slowest:?}");
    let ready = h1(
        local.addr("admin").expect("admin"),
        get("localhost", "/readyz"),
    )
    .await;
    assert_eq!(ready.json()["rate_limit_store"], "degraded");
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "a degraded store does not make the replica unready"
    );

    // deny: 503, also without waiting.
    let (statuses, slowest) = burst(deny.addr("http").expect("http"), 10).await;
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(
        slowest < Duration::from_millis(150),
        "slowest request {slowest:?}"
    );
    eprintln!("redis stopped, on_error deny: slowest request {slowest:?}");
    let got = h1(deny.addr("http").expect("http"), get("acme.gw.test", "/")).await;
    assert_eq!(got.json()["error"], "rate_limit_unavailable");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_redis_costs_at_most_the_timeout_and_limits_resume_when_it_is_back() {
    let env = Env::new();
    let mut redis = RedisServer::start();
    let up = Upstream::start("up").await;
    let (_gw, running) = env
        .start(&cluster_config(&env, &up.url(), &redis, "allow"))
        .await;
    let http = running.addr("http").expect("http");
    assert_eq!(status(http, "acme.gw.test", "/").await, StatusCode::OK);

    // Paused for 3 s: every request is answered (allow) well before the pause ends.
    assert_eq!(redis.command("CLIENT PAUSE 3000 ALL"), "+OK");
    let (statuses, slowest) = burst(http, 15).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert!(
        slowest < Duration::from_millis(150),
        "slowest request {slowest:?}"
    );
    eprintln!("redis paused (CLIENT PAUSE), on_error allow: slowest request {slowest:?}");

    // Redis gone, then back on the same port: shared limiting resumes without a restart.
    redis.stop();
    let _ = burst(http, 3).await;
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Once the breaker's probe reaches the new Redis, the tenant's key appears there.
        let _ = h1(http, get("acme.gw.test", "/")).await;
        if redis.command(&format!("EXISTS test:{}:acme", redis.port)) == ":1" {
            break;
        }
        assert!(Instant::now() < deadline, "limits did not return to Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (statuses, _) = burst(http, 20).await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert!(ok <= 11, "shared limit enforced again: {ok} admitted");
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS));
}
