//! The rotation runbooks of docs/operations.md, executed: a tenant certificate copied before its
//! key, a signing key added by `secret_file` and reload under traffic, a `secret_env` key added
//! by reload; and what `/config` and `/config/effective` show about them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

/// `gateway_reloads_total{result="error"}` from `/metrics` (0 when the series is absent).
async fn reload_errors(admin: std::net::SocketAddr) -> u64 {
    let body = admin_get(admin, "/metrics").await.body;
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with("gateway_reloads_total{result=\"error\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Issues `<tenant>.gw.test` from the env's CA into `dir`; returns (cert, key) paths.
fn issue(
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

/// Runbook "tenant certificate": copy the new certificate, then the key 300 ms later. The
/// watcher waits for the pair to agree: no failed reload is counted, the new certificate is
/// served, and `/config`'s hash (over the YAML and every file it names) changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_copied_before_its_key_reloads_without_an_error() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let (gw, running) = env.start(&env.config(&up.url(), &up.url())).await;
    let _watch = tenant_gateway::watch::spawn(gw.clone()).expect("watch");
    let https = running.addr("https").expect("https");
    let admin = running.addr("admin").expect("admin");
    let before = tls_connect(&env, https, Some("acme.gw.test"), &[b"http/1.1"])
        .await
        .leaf;
    let cfg = admin_get(admin, "/config").await.json();
    let (hash, config_hash) = (cfg["hash"].clone(), cfg["config_hash"].clone());
    assert!(
        cfg["files"]
            .as_array()
            .expect("files")
            .iter()
            .any(|f| f.as_str().is_some_and(|f| f.ends_with("acme.key"))),
        "{cfg}"
    );

    let new = tempfile::tempdir().expect("tempdir");
    let (cert, key) = issue(&env, new.path(), "acme");
    std::fs::copy(&cert, env.path("acme.crt")).expect("copy cert");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::copy(&key, env.path("acme.key")).expect("copy key");

    assert!(
        eventually(Duration::from_secs(5), || async {
            tls_connect(&env, https, Some("acme.gw.test"), &[b"http/1.1"])
                .await
                .leaf
                != before
        })
        .await,
        "the new certificate is not served"
    );
    // Let any late event settle, then: no failed reload counted or shown.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(reload_errors(admin).await, 0);
    let cfg = admin_get(admin, "/config").await.json();
    assert!(cfg["last_reload_error"].is_null(), "{cfg}");
    assert_ne!(cfg["hash"], hash, "the hash covers the certificate files");
    assert_eq!(cfg["config_hash"], config_hash, "the YAML did not change");
    running.shutdown().await;
}

/// A key that never matches is still refused, after the settle time, and counted once.
#[tokio::test(flavor = "multi_thread")]
async fn a_pair_that_never_agrees_is_counted_after_the_settle_time() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let (gw, running) = env.start(&env.config(&up.url(), &up.url())).await;
    let _watch = tenant_gateway::watch::spawn(gw.clone()).expect("watch");
    let admin = running.addr("admin").expect("admin");
    let started = Instant::now();
    std::fs::copy(env.path("globex.key"), env.path("acme.key")).expect("copy");
    assert!(
        eventually(Duration::from_secs(6), || async {
            reload_errors(admin).await == 1
        })
        .await
    );
    assert!(
        started.elapsed() >= tenant_gateway::watch::SETTLE,
        "counted before the settle time"
    );
    let cfg = admin_get(admin, "/config").await.json();
    assert!(
        cfg["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("do not match")),
        "{cfg}"
    );
    running.shutdown().await;
}

/// Runbook "signing key": write the new secret file, list the key, make it active, reload; no
/// restart, no failed request while traffic runs, and `/config` names the active kid.
#[tokio::test(flavor = "multi_thread")]
async fn a_signing_key_added_by_secret_file_rotates_under_traffic() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let yaml = env.config(&up.url(), &up.url());
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let admin = running.addr("admin").expect("admin");
    assert_eq!(
        admin_get(admin, "/config").await.json()["signing"]["active_kid"],
        "k1"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let s = status(http, "globex.gw.test", "/").await;
                sent.fetch_add(1, Ordering::Relaxed);
                if s != StatusCode::OK {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    std::fs::write(
        env.path("signing-k2.key"),
        "k2-secret-0123456789abcdef-rotated",
    )
    .expect("k2");
    let rotated = yaml.replace("active_key: k1", "active_key: k2").replace(
        "    - { id: k1, secret_file:",
        &format!(
            "    - {{ id: k2, secret_file: {}/signing-k2.key }}\n    - {{ id: k1, secret_file:",
            env.dir.path().display()
        ),
    );
    assert!(rotated.contains("id: k2"), "{rotated}");
    env.write_config(&rotated);
    let got = admin_post(admin, "/reload").await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }

    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during rotation"
    );
    assert!(sent.load(Ordering::Relaxed) > 20);
    let kids: Vec<String> = up
        .requests()
        .iter()
        .filter_map(|s| s.headers.get("x-tenant-signature"))
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').find_map(|p| p.strip_prefix("kid=")))
        .map(str::to_owned)
        .collect();
    assert_eq!(kids.first().map(String::as_str), Some("k1"));
    assert_eq!(kids.last().map(String::as_str), Some("k2"));
    let cfg = admin_get(admin, "/config").await.json();
    assert_eq!(cfg["signing"]["active_kid"], "k2");
    assert_eq!(cfg["signing"]["kids"], serde_json::json!(["k2", "k1"]));
    running.shutdown().await;
}

/// A `secret_env` key added by reload (the environment is fixed at start) is refused with an
/// error that says to use `secret_file`.
#[tokio::test]
async fn a_secret_env_key_added_by_reload_says_to_use_secret_file() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let yaml = env.config(&up.url(), &up.url());
    let (_gw, running) = env.start(&yaml).await;
    let admin = running.addr("admin").expect("admin");
    env.write_config(&yaml.replace(
        "    - { id: k1, secret_file:",
        "    - { id: k2, secret_env: TGW_TEST_ROTATION_K2_NEVER_SET }\n    - { id: k1, secret_file:",
    ));
    let got = admin_post(admin, "/reload").await;
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    let error = got.json()["errors"][0].as_str().expect("error").to_owned();
    assert!(
        error.starts_with("signing.keys[0]: environment variable TGW_TEST_ROTATION_K2_NEVER_SET"),
        "{error}"
    );
    assert!(error.contains("use secret_file"), "{error}");
    running.shutdown().await;
}

/// `/config/effective` is the config with defaults filled in and no secret: neither the signing
/// secret, nor a private key, nor the admin token, nor a password in the Redis URL.
#[tokio::test]
async fn the_effective_config_holds_no_secret() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let dead = dead_endpoint().await;
    std::fs::write(env.path("admin-token"), "admin-token-0123456789abcdef").expect("token");
    let yaml = env
        .config(&up.url(), &up.url())
        .replace(
            "admin: { bind: \"127.0.0.1:0\" }",
            &format!(
                "admin: {{ bind: \"127.0.0.1:0\", token_file: {}/admin-token }}",
                env.dir.path().display()
            ),
        )
        .replace(
            "signing:\n",
            &format!(
                "apikey: {{ header: x-api-key }}\ntoken:\n  algorithms: [RS256]\n  jwks_url: \"{dead}/jwks.json\"\n  allow_insecure_jwks_url: true\n  jwks_startup_wait_ms: 0\ncluster:\n  rate_limit_store: {{ redis: {{ url: \"redis://:hunter2-redis-password@127.0.0.1:1\" }} }}\nsigning:\n"
            ),
        );
    let api_key_hash = sha256_hex(b"globex-api-key-0123456789");
    let yaml = with_tenant_lines(
        &yaml,
        "globex",
        &format!("    api_keys_sha256: [\"{api_key_hash}\"]\n"),
    );
    let (_gw, running) = env.start(&yaml).await;
    let admin = running.addr("admin").expect("admin");
    let authorized = |path: &str| {
        Request::builder()
            .uri(path)
            .header("host", "localhost")
            .header("authorization", "Bearer admin-token-0123456789abcdef")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    assert_eq!(
        admin_get(admin, "/config/effective").await.status,
        StatusCode::UNAUTHORIZED
    );
    let got = h1(admin, authorized("/config/effective")).await;
    assert_eq!(got.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&got.body).into_owned();
    let effective = got.json();
    // Defaults are filled in, tenants' limits resolved.
    assert_eq!(effective["limits"]["max_connections"], 20_000);
    assert_eq!(
        effective["tenancy"]["sources"],
        serde_json::json!(["sni", "host"])
    );
    assert_eq!(
        effective["resolved_tenant_limits"]["globex"]["request_timeout_ms"],
        5_000
    );
    let mut secrets = vec![
        SIGNING_SECRET.to_owned(),
        "admin-token-0123456789abcdef".to_owned(),
        "hunter2-redis-password".to_owned(),
        api_key_hash.clone(),
    ];
    for key in ["ca.key", "default.key", "acme.key", "globex.key"] {
        let pem = std::fs::read_to_string(env.path(key)).expect("key");
        // Every line of the base64 body.
        secrets.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----") && l.len() > 16)
                .map(str::to_owned),
        );
    }
    for s in &secrets {
        assert!(
            !text.contains(s.as_str()),
            "{s:?} appears in /config/effective"
        );
    }
    assert!(text.contains("<redacted>"), "{text}");

    // The JWKS source is listed with its error (the IdP is down) and no key.
    assert!(
        eventually(Duration::from_secs(3), || async {
            let cfg = h1(admin, authorized("/config")).await.json();
            cfg["token_key_sources"][0]["last_error"].is_string()
        })
        .await
    );
    let cfg = h1(admin, authorized("/config")).await;
    let cfg_text = String::from_utf8_lossy(&cfg.body).into_owned();
    let cfg = cfg.json();
    let source = &cfg["token_key_sources"][0];
    assert_eq!(source["source"], "jwks_url");
    assert_eq!(source["keys"], 0);
    assert!(source["last_ok"].is_null(), "{source}");
    for s in &secrets {
        assert!(!cfg_text.contains(s.as_str()), "{s:?} appears in /config");
    }
    running.shutdown().await;
}
