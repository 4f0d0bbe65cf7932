//! Calendar quotas and usage metering over real sockets: the local count with a pinned clock
//! across month and day boundaries, the RateLimit headers of both policies, the state file
//! across a restart, `/tenants/<id>/usage`, the JSON-lines export through 50 reloads and the
//! `usage --since` command, and the shared count in a real `redis-server`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

fn unix(s: &str) -> i64 {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .expect("rfc3339")
        .unix_timestamp()
}

/// The standard config with `lines` added to acme and `top` before `plans:`.
fn config(env: &Env, up: &str, acme: &str, top: &str) -> String {
    with_tenant_lines(&env.config(up, up), "acme", acme).replace("plans:", &format!("{top}plans:"))
}

async fn get_acme(addr: std::net::SocketAddr) -> Got {
    h1(addr, get("acme.gw.test", "/")).await
}

fn post(host: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", host)
        .body(Full::new(Bytes::from_static(body)))
        .expect("request")
}

#[tokio::test]
async fn a_monthly_quota_runs_out_on_jan_31_and_starts_again_on_feb_1() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let yaml = config(
        &env,
        &up.url(),
        "    quota: { requests: 3, period: month }\n",
        "",
    );
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    gw.meter().clock.set_ms(unix("2026-01-31T23:59:57Z") * 1000);

    for left in [2, 1, 0] {
        let got = get_acme(http).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.headers["ratelimit-policy"], "\"quota\";q=3;w=2678400");
        assert_eq!(
            got.headers["ratelimit"],
            format!("\"quota\";r={left};t=3").as_str()
        );
    }
    let got = get_acme(http).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.json()["error"], "quota_exceeded");
    assert_eq!(got.headers["retry-after"], "3");
    assert_eq!(got.headers["ratelimit"], "\"quota\";r=0;t=3");
    // Another tenant is not affected.
    assert_eq!(status(http, "globex.gw.test", "/").await, StatusCode::OK);

    // Feb 1, 00:00:00 UTC: a new month, 28 days long in 2026.
    gw.meter().clock.set_ms(unix("2026-02-01T00:00:00Z") * 1000);
    let got = get_acme(http).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["ratelimit-policy"], "\"quota\";q=3;w=2419200");
    assert_eq!(got.headers["ratelimit"], "\"quota\";r=2;t=2419200");
    // Feb 29 of a leap year is still February.
    gw.meter().clock.set_ms(unix("2028-02-29T23:59:59Z") * 1000);
    let got = get_acme(http).await;
    assert_eq!(got.headers["ratelimit-policy"], "\"quota\";q=3;w=2505600");
    assert_eq!(got.headers["ratelimit"], "\"quota\";r=2;t=1");
}

#[tokio::test]
async fn a_daily_quota_beside_the_rate_limit_lists_both_policies_and_resets_on_new_year() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let yaml = config(
        &env,
        &up.url(),
        "    rate: { per_second: 1, burst: 10 }\n    quota: { requests: 2, period: day }\n",
        "",
    );
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    gw.meter().clock.set_ms(unix("2026-12-31T23:59:50Z") * 1000);

    let got = get_acme(http).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.headers["ratelimit-policy"],
        "\"tenant\";q=10;w=10, \"quota\";q=2;w=86400"
    );
    assert_eq!(
        got.headers["ratelimit"],
        "\"tenant\";r=9;t=1, \"quota\";r=1;t=10"
    );
    assert_eq!(get_acme(http).await.status, StatusCode::OK);
    let over = get_acme(http).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.json()["error"], "quota_exceeded");
    assert_eq!(over.headers["retry-after"], "10");
    // The refusal carries the "quota" policy alone: the per-second one did not refuse it.
    assert_eq!(over.headers["ratelimit-policy"], "\"quota\";q=2;w=86400");
    assert_eq!(over.headers["ratelimit"], "\"quota\";r=0;t=10");
    // A refused request took no cell of the rate limit: 10 - 2 admitted.
    gw.meter().clock.set_ms(unix("2027-01-01T00:00:00Z") * 1000);
    let got = get_acme(http).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.headers["ratelimit"],
        "\"tenant\";r=7;t=3, \"quota\";r=1;t=86400"
    );
}

#[tokio::test]
async fn usage_endpoint_counts_requests_and_bytes_exactly_and_a_restart_keeps_the_count() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let state = env.path("usage-state.json");
    let yaml = config(
        &env,
        &up.url(),
        "    quota: { requests: 4, period: hour }\n",
        &format!("usage: {{ state_file: {} }}\n", state.display()),
    );
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let admin = running.addr("admin").expect("admin");
    let mut bytes_out = 0;
    for body in [&b"hello"[..], b"", b"0123456789"] {
        let got = h1(http, post("acme.gw.test", body)).await;
        assert_eq!(got.status, StatusCode::OK);
        bytes_out += got.body.len();
    }
    let usage = h1(admin, get("localhost", "/tenants/acme/usage")).await;
    assert_eq!(usage.status, StatusCode::OK);
    let u = usage.json();
    assert_eq!(u["tenant"], "acme");
    assert_eq!(u["requests"], 3);
    assert_eq!(u["quota"], 4);
    assert_eq!(u["remaining"], 1);
    assert_eq!(u["bytes_in"], 15);
    assert_eq!(u["bytes_out"], bytes_out as u64);
    let start = u["period_start"].as_str().expect("start");
    let end = u["period_end"].as_str().expect("end");
    assert_eq!(unix(end) - unix(start), 3600);
    assert!(start.ends_with(":00:00Z"), "{start}");
    assert_eq!(
        h1(admin, get("localhost", "/tenants/nobody/usage"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    running.shutdown().await;
    drop(gw);
    assert!(state.exists(), "state file written at shutdown");

    // A new process (same config, same state file) goes on from 3 of 4.
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let admin = running.addr("admin").expect("admin");
    let u = h1(admin, get("localhost", "/tenants/acme/usage"))
        .await
        .json();
    assert_eq!(
        (u["requests"].as_u64(), u["bytes_in"].as_u64()),
        (Some(3), Some(15))
    );
    assert_eq!(get_acme(http).await.status, StatusCode::OK);
    let over = get_acme(http).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.json()["error"], "quota_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_loses_and_duplicates_no_line_through_50_reloads_and_usage_sums_it() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let export = env.path("usage.jsonl");
    let yaml = config(
        &env,
        &up.url(),
        "",
        &format!(
            "usage: {{ export: {{ path: {}, interval_s: 1 }} }}\n",
            export.display()
        ),
    );
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let cfg = env.path("gateway.yaml");

    let traffic = tokio::spawn(async move {
        let (mut ok, mut notfound, mut bytes_in, mut bytes_out) = (0u64, 0u64, 0u64, 0u64);
        let deadline = Instant::now() + Duration::from_millis(3500);
        while Instant::now() < deadline {
            let got = h1(http, post("acme.gw.test", b"abc")).await;
            assert_eq!(got.status, StatusCode::OK);
            ok += 1;
            bytes_in += 3;
            bytes_out += got.body.len() as u64;
            // A suspended tenant's 403s are its usage too (4xx).
            let got = h1(http, get("initech.gw.test", "/")).await;
            assert_eq!(got.status, StatusCode::FORBIDDEN);
            notfound += 1;
        }
        (ok, notfound, bytes_in, bytes_out)
    });
    for i in 0..50 {
        // Alternate two spellings of the same config, so every reload swaps a snapshot.
        let text = if i % 2 == 0 {
            format!("{yaml}\n# {i}\n")
        } else {
            yaml.clone()
        };
        std::fs::write(&cfg, text).expect("write");
        gw.reload().expect("reload");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let (ok, forbidden, bytes_in, bytes_out) = traffic.await.expect("traffic");
    running.shutdown().await;

    let text = std::fs::read_to_string(&export).expect("export file");
    let mut seen = std::collections::HashSet::new();
    let (mut acme_2xx, mut initech_4xx, mut acme_in, mut acme_out) = (0, 0, 0, 0);
    let mut lines = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        lines += 1;
        let key = (
            v["tenant"].as_str().expect("tenant").to_owned(),
            v["interval_start"].as_str().expect("start").to_owned(),
        );
        assert!(seen.insert(key.clone()), "duplicate line {key:?}");
        match key.0.as_str() {
            "acme" => {
                acme_2xx += v["by_status"]["2xx"].as_u64().unwrap_or(0);
                acme_in += v["bytes_in"].as_u64().expect("in");
                acme_out += v["bytes_out"].as_u64().expect("out");
            }
            "initech" => initech_4xx += v["by_status"]["4xx"].as_u64().unwrap_or(0),
            other => panic!("unexpected tenant {other}"),
        }
    }
    assert!(
        lines >= 4,
        "one line per active tenant per interval: {lines}"
    );
    assert_eq!(acme_2xx, ok);
    assert_eq!(initech_4xx, forbidden);
    assert_eq!((acme_in, acme_out), (bytes_in, bytes_out));
    eprintln!("{ok} + {forbidden} requests, 50 reloads, {lines} lines, none lost or duplicated");

    // The command line sums the same file.
    let out = Command::new(bin())
        .args(["usage", "--since", "0", "--json", "--file"])
        .arg(&export)
        .output()
        .expect("usage command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    let acme: serde_json::Value = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .find(|v| v["tenant"] == "acme")
        .expect("acme totals");
    assert_eq!(acme["requests"].as_u64(), Some(ok));
    assert_eq!(acme["bytes_in"].as_u64(), Some(bytes_in));
    // --since after every interval: nothing.
    let out = Command::new(bin())
        .args([
            "usage",
            "--since",
            "2999-01-01T00:00:00Z",
            "--json",
            "--file",
        ])
        .arg(&export)
        .output()
        .expect("usage command");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_quota_and_usage_keys_are_config_errors_with_their_paths() {
    let env = Env::new();
    let yaml = config(
        &env,
        "http://127.0.0.1:9",
        "    quota: { requests: 0, period: month }\n",
        "usage: { export: { path: x.jsonl, interval_s: 0 } }\n",
    );
    let errors = tenant_gateway::config::load_bytes(yaml.as_bytes())
        .expect_err("invalid")
        .to_string();
    assert!(
        errors.contains("tenants.acme.quota.requests: must be greater than 0"),
        "{errors}"
    );
    assert!(
        errors.contains("usage.export.interval_s: must be greater than 0"),
        "{errors}"
    );
    let yaml = config(
        &env,
        "http://127.0.0.1:9",
        "    quota: { requests: 5, period: week }\n",
        "",
    );
    let errors = tenant_gateway::config::load_bytes(yaml.as_bytes())
        .expect_err("invalid")
        .to_string();
    assert!(errors.contains("tenants.acme.quota.period"), "{errors}");
}

// === Redis ===

fn redis_config(env: &Env, up: &str, redis: &RedisServer, on_error: &str) -> String {
    config(
        env,
        up,
        "    rate: { per_second: 1000, burst: 1000 }\n    quota: { requests: 20, period: hour }\n",
        &format!(
            "cluster:\n  rate_limit_store:\n    redis: {{ url: \"redis://127.0.0.1:{}\", on_error: {on_error}, timeout_ms: 50, replicas: 2, failure_threshold: 3, open_ms: 300, key_prefix: \"q:\" }}\n",
            redis.port
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_hourly_quota_in_redis_and_follow_on_error_when_it_is_gone() {
    let (env_a, env_b) = (Env::new(), Env::new());
    let mut redis = RedisServer::start();
    let up = Upstream::start("up").await;
    let (gw_a, ra) = env_a
        .start(&redis_config(&env_a, &up.url(), &redis, "local"))
        .await;
    let (gw_b, b) = env_b
        .start(&redis_config(&env_b, &up.url(), &redis, "deny"))
        .await;
    let now = unix("2026-03-05T10:59:00Z") * 1000;
    gw_a.meter().clock.set_ms(now);
    gw_b.meter().clock.set_ms(now);
    let (a, b) = (ra.addr("http").expect("a"), b.addr("http").expect("b"));

    let mut passed = 0;
    let mut first_refusal = None;
    for i in 0..30 {
        let got = get_acme(if i % 2 == 0 { a } else { b }).await;
        match got.status {
            StatusCode::OK => {
                passed += 1;
                assert_eq!(
                    got.headers["ratelimit"],
                    format!("\"tenant\";r=999;t=1, \"quota\";r={};t=60", 20 - passed).as_str(),
                    "request {i}"
                );
            }
            StatusCode::TOO_MANY_REQUESTS => {
                first_refusal.get_or_insert(got);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(passed, 20, "exactly the quota passes across two replicas");
    let refused = first_refusal.expect("the 21st is refused");
    assert_eq!(refused.json()["error"], "quota_exceeded");
    assert_eq!(refused.headers["retry-after"], "60");
    assert_eq!(refused.headers["ratelimit-policy"], "\"quota\";q=20;w=3600");
    assert_eq!(refused.headers["ratelimit"], "\"quota\";r=0;t=60");
    // One key per tenant and period, expiring at the period's end (by the gateway's clock).
    let key = format!("q:acme:quota:{}", unix("2026-03-05T10:00:00Z"));
    assert_eq!(redis.command(&format!("GET {key}")), "$2");
    let ttl: i64 = redis.command(&format!("TTL {key}"))[1..]
        .parse()
        .expect("ttl");
    assert!((55..=60).contains(&ttl), "ttl {ttl}");
    // The admin endpoint reads the shared count.
    let u = h1(
        ra.addr("admin").expect("admin"),
        get("localhost", "/tenants/acme/usage"),
    )
    .await
    .json();
    assert_eq!(
        (u["requests"].as_u64(), u["remaining"].as_u64()),
        (Some(20), Some(0))
    );
    assert_eq!(u["shared"], true);

    // Redis gone: `deny` answers 503 at once, `local` enforces its share (20 / 2 replicas,
    // counted since the period began on this replica: it admitted 10 already).
    redis.stop();
    let started = Instant::now();
    let got = get_acme(b).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.json()["error"], "rate_limit_unavailable");
    let got = get_acme(a).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.json()["error"], "quota_exceeded");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    // Next hour: the local share (10) applies while Redis is down.
    gw_a.meter()
        .clock
        .set_ms(unix("2026-03-05T11:00:00Z") * 1000);
    let mut ok = 0;
    for _ in 0..15 {
        if get_acme(a).await.status == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(
        ok, 10,
        "the replica's share of the quota while Redis is down"
    );
}
