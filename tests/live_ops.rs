//! Live operations: reload by file replacement (rename), by `POST /reload`; certificate renewal
//! on disk; refused reloads that keep the old config; the admin API; metrics; graceful drain.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

/// Replaces `path` the way editors and ConfigMaps do: write a sibling, rename over.
fn replace_by_rename(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_replaced_by_rename_is_picked_up_and_a_broken_one_is_refused() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let yaml = env.config(&up.url(), &up.url());
    let (gw, running) = env.start(&yaml).await;
    let _watch = tenant_gateway::watch::spawn(gw.clone()).expect("watch");
    let http = running.addr("http").expect("http");
    let admin = running.addr("admin").expect("admin");
    assert_eq!(
        status(http, "hooli.gw.test", "/").await,
        StatusCode::NOT_FOUND
    );

    let path = env.path("gateway.yaml");
    replace_by_rename(&path, &format!("{yaml}  hooli:\n    plan: free\n"));
    assert!(
        eventually(Duration::from_secs(2), || async {
            status(http, "hooli.gw.test", "/").await == StatusCode::OK
        })
        .await,
        "tenant added by rename not served within 2 s"
    );
    let cfg = admin_get(admin, "/config").await.json();
    assert_eq!(cfg["generation"], 2);
    assert_eq!(cfg["tenants"], 4);
    assert!(cfg["last_reload_error"].is_null());

    // A broken file: the old config keeps serving and /config shows the error.
    replace_by_rename(&path, &format!("{yaml}  hooli:\n    plan: platinum\n"));
    assert!(
        eventually(Duration::from_secs(6), || async {
            !admin_get(admin, "/config").await.json()["last_reload_error"].is_null()
        })
        .await
    );
    let cfg = admin_get(admin, "/config").await.json();
    assert!(
        cfg["last_reload_error"]
            .as_str()
            .expect("error")
            .contains("tenants.hooli.plan"),
        "{cfg}"
    );
    assert_eq!(cfg["generation"], 2);
    assert_eq!(status(http, "hooli.gw.test", "/").await, StatusCode::OK);

    // Fixing it clears the error.
    replace_by_rename(&path, &yaml);
    assert!(
        eventually(Duration::from_secs(2), || async {
            status(http, "hooli.gw.test", "/").await == StatusCode::NOT_FOUND
        })
        .await
    );
    assert!(admin_get(admin, "/config").await.json()["last_reload_error"].is_null());
    running.shutdown().await;
}

#[tokio::test]
async fn post_reload_applies_a_new_file_and_reports_errors() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let yaml = env.config(&up.url(), &up.url());
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let admin = running.addr("admin").expect("admin");

    env.write_config(&format!("{yaml}  hooli:\n    plan: free\n"));
    let got = admin_post(admin, "/reload").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["generation"], 2);
    assert_eq!(status(http, "hooli.gw.test", "/").await, StatusCode::OK);

    env.write_config(&yaml.replace("active_key: k1", "active_key: nope"));
    let got = admin_post(admin, "/reload").await;
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        got.json()["errors"][0]
            .as_str()
            .expect("error")
            .contains("signing.active_key")
    );
    assert_eq!(status(http, "hooli.gw.test", "/").await, StatusCode::OK);

    assert_eq!(admin_get(admin, "/healthz").await.status, StatusCode::OK);
    assert_eq!(admin_get(admin, "/readyz").await.status, StatusCode::OK);
    assert_eq!(
        admin_get(admin, "/reload").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        admin_get(admin, "/nope").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_renewed_on_disk_is_served_and_a_mismatched_pair_is_refused() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let (gw, running) = env.start(&env.config(&up.url(), &up.url())).await;
    let _watch = tenant_gateway::watch::spawn(gw.clone()).expect("watch");
    let https = running.addr("https").expect("https");
    let admin = running.addr("admin").expect("admin");

    let before = tls_connect(&env, https, Some("acme.gw.test"), &[b"http/1.1"])
        .await
        .leaf;

    // Renewal: a new acme certificate and key (same CA), written by rename, no config edit.
    let renewed = tempfile::tempdir().expect("tempdir");
    std::fs::copy(env.path("ca.crt"), renewed.path().join("ca.crt")).expect("copy");
    let issued = issue_with_env_ca(&env, renewed.path(), "acme");
    std::fs::rename(&issued.1, env.path("acme.key")).expect("rename key");
    std::fs::rename(&issued.0, env.path("acme.crt")).expect("rename cert");
    assert!(
        eventually(Duration::from_secs(3), || async {
            tls_connect(&env, https, Some("acme.gw.test"), &[b"http/1.1"])
                .await
                .leaf
                != before
        })
        .await,
        "renewed certificate not served"
    );
    let renewed_leaf = tls_connect(&env, https, Some("acme.gw.test"), &[b"http/1.1"])
        .await
        .leaf;

    // A certificate whose key does not match is refused; the served one stays.
    std::fs::copy(env.path("globex.key"), env.path("acme.key")).expect("copy");
    assert!(
        eventually(Duration::from_secs(6), || async {
            admin_get(admin, "/config").await.json()["last_reload_error"]
                .as_str()
                .is_some_and(|e| e.contains("do not match"))
        })
        .await
    );
    let now = tls_connect(&env, https, Some("acme.gw.test"), &[b"http/1.1"]).await;
    assert_eq!(now.leaf, renewed_leaf);
}

/// Issues `<tenant>.gw.test` from the env's CA into `dir`; returns (cert, key) paths.
fn issue_with_env_ca(
    env: &Env,
    dir: &std::path::Path,
    tenant: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(env.path("ca.key")).expect("ca key"))
            .expect("ca key");
    let ca_pem = std::fs::read_to_string(env.path("ca.crt")).expect("ca cert");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![format!("{tenant}.{DOMAIN}")]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let (c, k) = (
        dir.join(format!("{tenant}.crt")),
        dir.join(format!("{tenant}.key")),
    );
    std::fs::write(&c, cert.pem()).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    (c, k)
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_with_per_tenant_series() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let (_gw, running) = env.start(&env.config(&up.url(), &up.url())).await;
    let http = running.addr("http").expect("http");
    for _ in 0..3 {
        assert_eq!(status(http, "acme.gw.test", "/").await, StatusCode::OK);
    }
    assert_eq!(
        status(http, "nobody.gw.test", "/").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(http, "other-nobody.gw.test", "/").await,
        StatusCode::NOT_FOUND
    );

    let got = admin_get(running.addr("admin").expect("admin"), "/metrics").await;
    assert_eq!(got.status, StatusCode::OK);
    let text = String::from_utf8(got.body.to_vec()).expect("utf-8");
    // Every sample line is `name{labels} value` with a numeric value; every name is declared.
    let mut declared = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            declared.insert(rest.split(' ').next().expect("name").to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample");
        assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
        let name = series.split('{').next().expect("name");
        assert!(
            declared.iter().any(|d| name.starts_with(d.as_str())),
            "undeclared {name}"
        );
        if let Some(labels) = series.split_once('{').map(|(_, l)| l) {
            assert!(labels.ends_with('}'), "{line}");
        }
    }
    assert!(
        text.contains(r#"gateway_tenant_requests_total{tenant="acme",class="2xx"} 3"#),
        "{text}"
    );
    assert!(text.contains(r#"gateway_tenant_requests_total{tenant="unknown",class="4xx"} 2"#));
    assert!(text.contains(r#"gateway_tenant_request_duration_seconds_count{tenant="acme"} 3"#));
    assert!(
        !text.contains("nobody"),
        "unknown tenant names never become labels"
    );
    assert!(text.contains("gateway_certificate_expiry_seconds{certificate=\"acme.gw.test\"}"));
    assert!(text.contains("gateway_active_connections"));
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_readyz_turns_503() {
    let env = Env::new();
    let slow = Upstream::start_with_delay("slow", Duration::from_millis(700)).await;
    let (_gw, running) = env.start(&env.config(&slow.url(), &slow.url())).await;
    let http = running.addr("http").expect("http");
    let admin = running.addr("admin").expect("admin");

    let in_flight = tokio::spawn(async move { h1(http, get("acme.gw.test", "/")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let drain = tokio::spawn(running.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = admin_get(admin, "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["draining"], true);
    // No new connections once draining.
    assert!(tokio::net::TcpStream::connect(http).await.is_err());

    let got = in_flight.await.expect("request");
    assert_eq!(got.status, StatusCode::OK, "the in-flight request finished");
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("drain ends")
        .expect("join");
}

/// Listening sockets on `port` (from /proc/net/tcp: state 0A is LISTEN).
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
        })
        .count()
}

#[tokio::test]
async fn worker_runtimes_accept_on_their_own_sockets_and_drain_together() {
    let env = Env::new();
    let up = Upstream::start("shared").await;
    let path = env.write_config(&env.config(&up.url(), &up.url()));
    let gw = tenant_gateway::gateway::Gateway::from_file(&path).expect("config");
    // Two more current-thread runtimes on their own threads, as `--workers 3` makes them.
    let workers: Vec<tokio::runtime::Handle> = (0..2)
        .map(|_| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let handle = rt.handle().clone();
            std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
            handle
        })
        .collect();
    let running = gw.start_on(&workers).await.expect("start");
    let addr = running.addr("http").expect("http");
    assert_eq!(listening_sockets(addr.port()), 3, "one socket per runtime");
    // Fresh connections are spread over the three sockets by the kernel (by address hash):
    // every one is served, so every runtime accepts and serves its own.
    for i in 0..60 {
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            h1(addr, get("globex.gw.test", &format!("/{i}"))),
        )
        .await
        .expect("answered");
        assert_eq!(got.status, StatusCode::OK);
    }
    assert_eq!(up.requests().len(), 60);
    tokio::time::timeout(Duration::from_secs(10), running.shutdown())
        .await
        .expect("every runtime's listener drains");
    assert_eq!(listening_sockets(addr.port()), 0, "all sockets closed");
}
