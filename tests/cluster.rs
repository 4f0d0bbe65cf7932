//! Cluster mode against a real `redis-server` (started by each test on a free port): limits
//! shared by replicas, a bounded wait when Redis is down or paused, and recovery.

mod common;

use std::io::{BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tenant_gateway::cluster::{Decision, OnError, RedisSettings, RedisStore};
use tenant_gateway::limits::Rate;

/// The standard config with `acme` (and `globex`) lines added and the cluster store at
/// `redis` with the options `opts` (besides `url` and `key_prefix`).
fn store_config(
    env: &Env,
    upstream: &str,
    redis: &RedisServer,
    acme: &str,
    globex: &str,
    opts: &str,
) -> String {
    with_tenant_lines(
        &with_tenant_lines(&env.config(upstream, upstream), "acme", acme),
        "globex",
        globex,
    )
    .replace(
        "plans:",
        &format!(
            "cluster:\n  rate_limit_store:\n    redis: {{ url: \"{}\", {opts}, key_prefix: \"test:{}:\" }}\nplans:",
            redis.url(),
            redis.port
        ),
    )
}

/// The standard config, acme at 5/s burst 10, limits shared through `redis`.
fn cluster_config(env: &Env, upstream: &str, redis: &RedisServer, on_error: &str) -> String {
    store_config(
        env,
        upstream,
        redis,
        "    rate: { per_second: 5, burst: 10 }\n",
        "",
        &format!(
            "on_error: {on_error}, timeout_ms: 10, replicas: 2, failure_threshold: 3, open_ms: 300"
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
    let (p, http, _) = spawn_gateway_with_admin(config);
    (p, http)
}

/// A gateway process: (process, http listener, admin listener).
fn spawn_gateway_with_admin(
    config: &std::path::Path,
) -> (Proc, std::net::SocketAddr, std::net::SocketAddr) {
    let mut child = Command::new(bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let addrs = wait_for_listeners(&mut stderr, 3);
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stderr.read_to_end(&mut sink);
    });
    (Proc(child), addrs["http"], addrs["admin"])
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

/// Sends requests for `host` (each answered 200) until `/stats` says the breaker is open;
/// within the sliding window (1 s) and a little.
async fn wait_for_open_breaker(
    http: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    host: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while stats(admin).await["instance"]["breaker"] != "open" {
        assert!(Instant::now() < deadline, "the breaker did not open");
        assert_eq!(status(http, host, "/").await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stats(admin: std::net::SocketAddr) -> serde_json::Value {
    h1(admin, get("localhost", "/stats")).await.json()
}

/// Polls `/stats` until `instance.<field>` is `want` (or panics after `within`).
async fn wait_for_instance(
    admin: std::net::SocketAddr,
    field: &str,
    want: serde_json::Value,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let got = stats(admin).await["instance"][field].clone();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instance.{field} is {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_count_themselves_and_their_fallback_shares_add_up_to_one_rate() {
    let env = Env::new();
    let mut redis = RedisServer::start();
    let up = Upstream::start("up").await;
    // No `replicas` floor: the count comes from the replicas' announcements alone.
    let yaml = store_config(
        &env,
        &up.url(),
        &redis,
        "    rate: { per_second: 12, burst: 12 }\n",
        "",
        "on_error: local, timeout_ms: 10",
    );
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for name in ["a", "b", "c"] {
        let cfg = env.path(&format!("{name}.yaml"));
        std::fs::write(&cfg, &yaml).expect("write");
        let (p, http, admin) = spawn_gateway_with_admin(&cfg);
        procs.push(p);
        addrs.push((http, admin));
    }
    for (_, admin) in &addrs {
        wait_for_instance(*admin, "replicas", 3.into(), Duration::from_secs(5)).await;
    }
    assert_eq!(
        redis.command(&format!("ZCARD test:{}:_replicas", redis.port)),
        ":3"
    );
    let metrics = h1(addrs[0].1, get("localhost", "/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("gateway_rate_limit_store_replicas 3"),
        "{text}"
    );

    // Redis gone: each replica enforces a third of 12/s (4/s, 4 cells of burst), so the
    // three together let through about one tenant's rate: 12 + 12/s.
    redis.stop();
    let run_for = Duration::from_secs(3);
    let tasks: Vec<_> = addrs
        .iter()
        .map(|(http, _)| {
            let http = *http;
            tokio::spawn(async move {
                let (mut ok, started) = (0u32, Instant::now());
                while started.elapsed() < run_for {
                    match status(http, "acme.gw.test", "/").await {
                        StatusCode::OK => ok += 1,
                        StatusCode::TOO_MANY_REQUESTS => {}
                        other => panic!("unexpected {other}"),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                ok
            })
        })
        .collect();
    let mut per_replica = Vec::new();
    for t in tasks {
        per_replica.push(t.await.expect("task"));
    }
    let total: u32 = per_replica.iter().sum();
    eprintln!(
        "redis stopped, 3 replicas, 12/s burst 12 for 3 s: admitted {per_replica:?} = {total}"
    );
    // 12 + 12 * 3 = 48 expected; three full rates would be 144.
    assert!(
        (42..=54).contains(&total),
        "three replicas admitted {total} ({per_replica:?})"
    );
    for (_, admin) in &addrs {
        let s = stats(*admin).await;
        // The last count seen is kept while Redis is down, and the outage opened the breaker.
        assert_eq!(s["instance"]["replicas"], 3);
        assert_eq!(s["instance"]["breaker"], "open");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_stays_closed_through_one_slow_command_and_opens_when_redis_dies() {
    let env = Env::new();
    let mut redis = RedisServer::start();
    let up = Upstream::start("up").await;
    // acme never hits its rate; globex's share while Redis cannot answer (4/s burst 4 over
    // the floor of 2 replicas) is 2 cells.
    let yaml = store_config(
        &env,
        &up.url(),
        &redis,
        "    rate: { per_second: 1000, burst: 1000 }\n",
        "    rate: { per_second: 4, burst: 4 }\n",
        "on_error: local, timeout_ms: 20, replicas: 2, open_ms: 5000",
    );
    let (_gw, running) = env.start(&yaml).await;
    let (http, admin) = (
        running.addr("http").expect("http"),
        running.addr("admin").expect("admin"),
    );
    let redis_policy = "\"tenant\";q=1000;w=1";
    for _ in 0..60 {
        let got = h1(http, get("acme.gw.test", "/")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.headers["ratelimit-policy"], redis_policy);
    }

    // One slow command: Redis blocked for 300 ms, the calls in flight meanwhile (8 for acme,
    // 2 for globex) time out. Ten failures in a row, but a small share of the window.
    let port = redis.port;
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let sleeper = std::thread::spawn(move || {
        let r = std::net::TcpStream::connect(("127.0.0.1", port));
        let mut s = r.expect("connect");
        std::io::Write::write_all(&mut s, b"DEBUG SLEEP 0.3\r\n").expect("write");
        let _ = sent_tx.send(());
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut s), &mut line);
        line
    });
    sent_rx.recv().expect("DEBUG SLEEP sent");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..10 {
        let host = if i < 8 {
            "acme.gw.test"
        } else {
            "globex.gw.test"
        };
        slow.push(tokio::spawn(async move { h1(http, get(host, "/")).await }));
    }
    for (i, t) in slow.into_iter().enumerate() {
        let got = t.await.expect("task");
        assert_eq!(got.status, StatusCode::OK);
        if i < 8 {
            // Timed out, so judged by the local share (1000/s over the floor of 2 replicas).
            assert_eq!(got.headers["ratelimit-policy"], "\"tenant\";q=500;w=1");
        }
    }
    let during = started.elapsed();
    assert!(during < Duration::from_millis(200), "{during:?}");
    assert_eq!(sleeper.join().expect("sleeper").trim_end(), "+OK");
    assert_eq!(stats(admin).await["instance"]["breaker"], "closed");
    let got = h1(http, get("acme.gw.test", "/")).await;
    assert_eq!(
        got.headers["ratelimit-policy"], redis_policy,
        "the next request goes to Redis again"
    );

    // A real outage. globex's share is whole: its two timed-out requests above were judged
    // by it without taking its cells (Redis ran their scripts once it woke up).
    redis.stop();
    let got = h1(http, get("globex.gw.test", "/")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["ratelimit-policy"], "\"tenant\";q=2;w=1");
    assert_eq!(got.headers["ratelimit"], "\"tenant\";r=1;t=1");
    // Every call fails now: the breaker opens once failures are half the sliding window.
    wait_for_open_breaker(http, admin, "acme.gw.test").await;
    let got = h1(http, get("acme.gw.test", "/")).await;
    assert_eq!(got.headers["ratelimit-policy"], "\"tenant\";q=500;w=1");
}

#[tokio::test(flavor = "multi_thread")]
async fn ratelimit_headers_on_the_local_and_the_redis_path_before_and_during_an_outage() {
    let env = Env::new();
    let mut redis = RedisServer::start();
    let up = Upstream::start("up").await;
    let acme = "    rate: { per_second: 5, burst: 10 }\n";
    // The local path (no cluster store).
    let (_local_gw, local) = env
        .start(&with_tenant_lines(
            &env.config(&up.url(), &up.url()),
            "acme",
            acme,
        ))
        .await;
    let local = local.addr("http").expect("http");
    for r in [9, 8] {
        let got = h1(local, get("acme.gw.test", "/")).await;
        assert_eq!(got.headers["ratelimit-policy"], "\"tenant\";q=10;w=2");
        assert_eq!(
            got.headers["ratelimit"],
            format!("\"tenant\";r={r};t=1").as_str()
        );
    }

    // The Redis path, then the local share (over the floor of 2 replicas: one cell every
    // 400 ms, 5 at once) while Redis is down.
    let env2 = Env::new();
    let (_gw, shared) = env2
        .start(&store_config(
            &env2,
            &up.url(),
            &redis,
            acme,
            "    rate: { per_second: 1000, burst: 1000 }\n",
            "on_error: local, timeout_ms: 10, replicas: 2, open_ms: 5000",
        ))
        .await;
    let http = shared.addr("http").expect("http");
    for r in [9, 8] {
        let got = h1(http, get("acme.gw.test", "/")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.headers["ratelimit-policy"], "\"tenant\";q=10;w=2");
        assert_eq!(
            got.headers["ratelimit"],
            format!("\"tenant\";r={r};t=1").as_str()
        );
    }
    redis.stop();
    // globex's calls find Redis gone and open the breaker; acme's share is untouched so far.
    let admin = shared.addr("admin").expect("admin");
    wait_for_open_breaker(http, admin, "globex.gw.test").await;
    let mut values = Vec::new();
    for _ in 0..6 {
        let got = h1(http, get("acme.gw.test", "/")).await;
        assert_eq!(got.headers["ratelimit-policy"], "\"tenant\";q=5;w=2");
        values.push((
            got.status,
            got.headers["ratelimit"].to_str().expect("ascii").to_owned(),
        ));
    }
    let ok = StatusCode::OK;
    assert_eq!(
        values[..4],
        [
            (ok, "\"tenant\";r=4;t=1".to_owned()),
            (ok, "\"tenant\";r=3;t=1".to_owned()),
            (ok, "\"tenant\";r=2;t=2".to_owned()),
            (ok, "\"tenant\";r=1;t=2".to_owned()),
        ],
        "{values:?}"
    );
    assert_eq!(values[4], (ok, "\"tenant\";r=0;t=2".to_owned()));
    assert_eq!(values[5].0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(values[5].1, "\"tenant\";r=0;t=1");
}

fn settings(redis: &RedisServer, prefix: &str) -> RedisSettings {
    RedisSettings {
        url: redis.url(),
        on_error: OnError::Deny,
        timeout: Duration::from_secs(1),
        replicas: 1,
        failure_threshold: 5,
        failure_rate_percent: 50,
        failure_window: Duration::from_secs(1),
        open_for: Duration::from_secs(1),
        key_prefix: prefix.to_owned(),
    }
}

#[tokio::test]
async fn the_shared_state_still_advances_at_millions_per_second() {
    let redis = RedisServer::start();
    let store = RedisStore::new(settings(&redis, "hr:")).expect("store");
    // 4,000,000/s: one cell every 250 ns; burst 10 is 2.5 µs of them.
    let rate = Rate {
        per_second: 4_000_000,
        burst: 10,
    };
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_micros() as u64;
    let admitted_at = |now: u64, n: usize| {
        let store = store.clone();
        async move {
            let mut ok = 0;
            for _ in 0..n {
                match store.check_at("acme", Some(rate), None, now).await {
                    Ok(Decision::Allowed { .. }) => ok += 1,
                    Ok(Decision::Limited { .. }) => {}
                    other => panic!("{other:?}"),
                }
            }
            ok
        }
    };
    // At one instant: exactly the burst. A state in ms with three decimals never moved at
    // this rate (0.00025 ms per cell) and admitted all 20.
    assert_eq!(admitted_at(now_us, 20).await, 10);
    // One µs later: four more cells.
    assert_eq!(admitted_at(now_us + 1, 10).await, 4);
    let state = redis.command("GET hr:acme");
    assert!(state.starts_with('$'), "{state}");
    // The state is "<µs>:<ns>": 1 µs + 2.5 µs ahead of the last now.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("connect");
    std::io::Write::write_all(&mut s, b"GET hr:acme\r\n").expect("write");
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        std::io::BufRead::read_line(&mut r, &mut line).expect("read");
    }
    assert_eq!(line.trim_end(), format!("{}:500", now_us + 3));

    // A state in another format (an older version's milliseconds) reads as a full bucket.
    assert_eq!(redis.command("SET hr:old 1796098099123.456"), "+OK");
    match store.check_at("old", Some(rate), None, now_us).await {
        Ok(Decision::Allowed { remaining, .. }) => assert_eq!(remaining, 9),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_breaker_settings_are_config_errors_with_their_paths() {
    let env = Env::new();
    let redis = RedisServer::start();
    for (opts, want) in [
        (
            "failure_rate_percent: 0",
            "cluster.rate_limit_store.redis.failure_rate_percent: must be between 1 and 100",
        ),
        (
            "failure_rate_percent: 101",
            "cluster.rate_limit_store.redis.failure_rate_percent: must be between 1 and 100",
        ),
        (
            "failure_window_ms: 0",
            "cluster.rate_limit_store.redis.failure_window_ms: must be greater than 0",
        ),
        (
            "replicas: 0",
            "cluster.rate_limit_store.redis.replicas: must be greater than 0",
        ),
    ] {
        let yaml = store_config(&env, "http://127.0.0.1:9", &redis, "", "", opts);
        let errors = tenant_gateway::config::load_bytes(yaml.as_bytes())
            .expect_err(opts)
            .to_string();
        assert!(errors.contains(want), "{opts}: {errors}");
    }
}

#[test]
fn a_redis_cluster_node_is_refused_by_check_and_at_start() {
    let env = Env::new();
    let redis = RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ]);
    let yaml = cluster_config(&env, "http://127.0.0.1:9", &redis, "local");
    let cfg = env.write_config(&yaml);
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check passed: {stderr}");
    assert!(
        stderr.contains("is a Redis Cluster node") && stderr.contains("not supported"),
        "{stderr}"
    );
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is a Redis Cluster node"), "{stderr}");

    // A standalone server passes `check`.
    let plain = RedisServer::start();
    let cfg = env.write_config(&cluster_config(&env, "http://127.0.0.1:9", &plain, "local"));
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("standalone Redis, ok"));
}
