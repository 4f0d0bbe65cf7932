//! End to end: the real `tenant-gateway` binary (v2 signatures, Ed25519, audience `shared`) in
//! front of a real axum app on loopback, the app protected by `TenantContextLayer` with the keys
//! it fetched from the gateway's admin JWKS.
//!
//! The binary is `<target>/debug/tenant-gateway`, built first with `cargo build --bin
//! tenant-gateway` (a no-op when `cargo test --workspace` has just built it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tenant_context::signing::{SignedFields, SigningKey, unix_now};
use tenant_context::{
    EnvelopeError, Tenant, TenantContextLayer, current_tenant, job_envelope, run_in_tenant,
};

const SIGNING_SECRET: &[u8] = b"e2e-signing-secret-0123456789abcdef";
const JWT_SECRET: &[u8] = b"e2e-jwt-secret-0123456789abcdef0123";
const SERVICE_KEY: &[u8] = b"service-key-for-tests";
const ED25519_SEED: [u8; 32] = *b"tenant-context e2e ed25519 seed!";
const DOMAIN: &str = "gw.test";

// === the gateway ===

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the gateway binary and returns its path. `--workspace --all-targets` resolves features
/// exactly as `cargo test --workspace` does, so under the test command this is a no-op; building
/// only `--bin tenant-gateway` unifies features differently and recompiled a dozen dependencies
/// into a second copy.
fn gateway_binary() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp: the binary sits next to it.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--workspace", "--all-targets"])
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build --bin tenant-gateway failed");
    let bin = target.join("debug").join("tenant-gateway");
    assert!(bin.exists(), "no gateway binary at {}", bin.display());
    bin
}

fn ed25519_pkcs8() -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&ED25519_SEED);
    der
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn gateway_config(dir: &Path, gw: u16, admin: u16, app: u16) -> String {
    let d = dir.display();
    format!(
        r#"version: 1
listeners:
  - {{ name: http, bind: "127.0.0.1:{gw}" }}
admin: {{ bind: "127.0.0.1:{admin}" }}
tenancy:
  base_domains: [{DOMAIN}]
  sources: [host, token]
token:
  tenant_claim: tenant_id
  issuer: https://auth.test/
  audience: gateway
  algorithms: [HS256]
  keys:
    - {{ kid: dev-hs, secret_file: {d}/jwt.key }}
signing:
  version: 2
  active_key: k1
  keys:
    - {{ id: k1, secret_file: {d}/signing.key }}
    - {{ id: k2, algorithm: ed25519, private_key_file: {d}/k2.pem }}
plans:
  free: {{ timeouts: {{ connect_ms: 1000, request_ms: 5000 }} }}
  enterprise: {{ timeouts: {{ connect_ms: 1000, request_ms: 5000 }} }}
upstreams:
  shared: {{ endpoints: ["http://127.0.0.1:{app}"], signing_key: k2 }}
routes:
  - {{ path_prefix: /, upstream: shared }}
tenants:
  acme: {{ plan: enterprise }}
  globex: {{ plan: free }}
"#
    )
}

/// The gateway process; killed when dropped.
struct Gateway {
    child: Child,
    gw: u16,
    admin: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(app_port: u16) -> Gateway {
    let bin = gateway_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("signing.key"), SIGNING_SECRET).expect("write");
    std::fs::write(dir.path().join("jwt.key"), JWT_SECRET).expect("write");
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(ed25519_pkcs8())
    );
    std::fs::write(dir.path().join("k2.pem"), pem).expect("write");
    let (gw, admin) = (free_port(), free_port());
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, gateway_config(dir.path(), gw, admin, app_port)).expect("write");
    let log = dir.path().join("gateway.log");
    let out = std::fs::File::create(&log).expect("log");
    let child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(out.try_clone().expect("log")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start the gateway");
    let mut g = Gateway {
        child,
        gw,
        admin,
        log,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http(admin, "GET", "/readyz", &[("host", "127.0.0.1")], None)
            && r.status == 200
        {
            return g;
        }
        let exited = g.child.try_wait().ok().flatten().is_some();
        if exited || Instant::now() > deadline {
            let log = std::fs::read_to_string(&g.log).unwrap_or_default();
            panic!("gateway did not become ready:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// === a small HTTP/1.1 client (blocking, one request per connection) ===

struct Reply {
    status: u16,
    content_type: String,
    body: Value,
}

fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = dechunk(&body);
    }
    Ok(Reply {
        status,
        content_type: header("content-type").unwrap_or_default(),
        body: serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into())),
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

fn is_refused(r: &Reply) -> bool {
    r.status == 401
        && r.content_type == "application/json"
        && r.body == json!({"error": "invalid_tenant_signature"})
}

fn jwt(tenant: &str, sub: &str) -> String {
    let enc = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let head = enc(json!({"alg": "HS256", "typ": "JWT", "kid": "dev-hs"}));
    let claims = enc(json!({"iss": "https://auth.test/", "aud": "gateway",
        "exp": unix_now() + 600, "tenant_id": tenant, "sub": sub}));
    let key = hmac::Key::new(hmac::HMAC_SHA256, JWT_SECRET);
    let sig = hmac::sign(&key, format!("{head}.{claims}").as_bytes());
    format!(
        "Bearer {head}.{claims}.{}",
        URL_SAFE_NO_PAD.encode(sig.as_ref())
    )
}

// === the app ===

fn whoami_json(t: &tenant_context::TenantContext, headers: &http::HeaderMap) -> Value {
    let received: serde_json::Map<String, Value> = headers
        .iter()
        .filter(|(k, _)| {
            k.as_str().starts_with("x-tenant-") || *k == "x-request-id" || *k == "host"
        })
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                Value::String(v.to_str().unwrap_or("<non-ascii>").to_owned()),
            )
        })
        .collect();
    json!({
        "tenant": t.tenant, "plan": t.plan, "subject": t.subject, "source": t.source,
        "request_id": t.request_id,
        // the task-local agrees with the extractor
        "current": current_tenant().map(|c| c.tenant),
        "received": received,
    })
}

async fn whoami(Tenant(t): Tenant, headers: http::HeaderMap) -> Json<Value> {
    tokio::task::yield_now().await;
    Json(whoami_json(&t, &headers))
}

fn app(jwks: &str, queue: Arc<Mutex<Vec<Value>>>) -> Router {
    let layer = |aud: &str| {
        TenantContextLayer::builder()
            .hmac_key("k1", SIGNING_SECRET)
            .jwks(jwks)
            .expect("jwks")
            .audience(aud)
            .build()
    };
    Router::new()
        .route("/whoami", get(whoami))
        .route("/api/{*rest}", get(whoami))
        .route(
            "/jobs",
            post(move |Json(body): Json<Value>| async move {
                let env = job_envelope(&body, SERVICE_KEY).expect("in a request: a tenant");
                queue.lock().expect("queue").push(env.clone());
                Json(env)
            }),
        )
        .layer(layer("shared"))
        // A service of the dedicated pool: the gateway's signatures for "shared" are refused.
        .route("/strict/whoami", get(whoami).layer(layer("acme-dedicated")))
}

// === the test ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_in_front_of_an_axum_app() {
    // The app's port first (the gateway config names it), then the gateway, then the app
    // with the keys from the gateway's JWKS.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app_port = listener.local_addr().expect("addr").port();
    let g = tokio::task::spawn_blocking(move || start_gateway(app_port))
        .await
        .expect("gateway");
    let (gw, admin) = (g.gw, g.admin);
    let jwks = blocking(move || {
        http(
            admin,
            "GET",
            "/.well-known/tenant-signing-keys",
            &[("host", "127.0.0.1")],
            None,
        )
    })
    .await
    .expect("jwks");
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.body["keys"][0]["kid"], "k2", "{}", jwks.body);
    let queue = Arc::new(Mutex::new(Vec::new()));
    let router = app(&jwks.body.to_string(), queue.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let host = |t: &str| format!("{t}.{DOMAIN}:{gw}");
    let via = |t: &str,
               method: &str,
               path: &str,
               extra: Vec<(&'static str, String)>,
               body: Option<Value>| {
        let host = host(t);
        let (method, path) = (method.to_owned(), path.to_owned());
        blocking(move || {
            let mut h: Vec<(&str, &str)> = vec![("host", &host)];
            h.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
            http(gw, &method, &path, &h, body.as_ref())
        })
    };
    let direct = |headers: Vec<(String, String)>| {
        blocking(move || {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            http(app_port, "GET", "/whoami", &h, None)
        })
    };

    // 1. The tenant reaches the handler through the extractor (and the task-local).
    let r = via("acme", "GET", "/whoami", vec![], None)
        .await
        .expect("request");
    assert_eq!(r.status, 200, "{}", r.body);
    let j = &r.body;
    assert_eq!(
        (
            &j["tenant"],
            &j["plan"],
            &j["subject"],
            &j["source"],
            &j["current"]
        ),
        (
            &json!("acme"),
            &json!("enterprise"),
            &Value::Null,
            &json!("host"),
            &json!("acme")
        )
    );
    let sig = j["received"]["x-tenant-signature"]
        .as_str()
        .expect("sig")
        .to_owned();
    assert!(sig.starts_with("v2;kid=k2;alg=ed25519;"), "{sig}");
    assert!(sig.contains(";aud=shared;"), "{sig}");
    let received: Vec<(String, String)> = j["received"]
        .as_object()
        .expect("received")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
        .collect();

    // A token's subject, not ASCII: sent percent-encoded, signed, decoded for the handler.
    let r = via(
        "globex",
        "GET",
        "/api/orders?limit=10&cursor=a%2Fb",
        vec![("authorization", jwt("globex", "zoë"))],
        None,
    )
    .await
    .expect("request");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (
            &r.body["tenant"],
            &r.body["plan"],
            &r.body["subject"],
            &r.body["source"]
        ),
        (
            &json!("globex"),
            &json!("free"),
            &json!("zoë"),
            &json!("host,token")
        )
    );
    assert_eq!(r.body["received"]["x-tenant-subject"], "zo%C3%AB");

    // 2. Straight to the app: replayed, forged, missing, nothing at all.
    let with = |changes: &[(&str, Option<&str>)]| {
        let mut h = received.clone();
        for (k, v) in changes {
            h.retain(|(name, _)| name != k);
            if let Some(v) = v {
                h.push(((*k).to_owned(), (*v).to_owned()));
            }
        }
        h
    };
    let r = direct(received.clone()).await.expect("request");
    assert!(is_refused(&r), "replayed: {} {}", r.status, r.body);
    let r = direct(with(&[("x-tenant-id", Some("globex"))]))
        .await
        .expect("request");
    assert!(is_refused(&r), "forged tenant");
    let flipped = format!(
        "{}{}",
        &sig[..sig.len() - 3],
        if sig.ends_with("AAA") { "BBB" } else { "AAA" }
    );
    let r = direct(with(&[("x-tenant-signature", Some(&flipped))]))
        .await
        .expect("request");
    assert!(is_refused(&r), "forged signature");
    let r = direct(with(&[("x-tenant-signature", None)]))
        .await
        .expect("request");
    assert!(is_refused(&r), "missing");
    let r = direct(vec![("host".into(), host("acme"))])
        .await
        .expect("request");
    assert!(is_refused(&r), "nothing at all");

    // Stale, from the future, another audience (and, as a control, fresh) with the gateway's key.
    let key = SigningKey::ed25519_pkcs8("k2", &ed25519_pkcs8()).expect("key");
    let minted = |ts: u64, rid: &str, aud: &str| {
        let h = host("acme");
        let f = SignedFields {
            request_id: rid,
            method: "GET",
            authority: &h,
            path_and_query: "/whoami",
            tenant: "acme",
            plan: "enterprise",
            subject: "",
            source: "host",
        };
        let sig = key.sign_v2(ts, &f, aud);
        with(&[
            ("x-request-id", Some(rid)),
            ("x-tenant-source", Some("host")),
            ("x-tenant-signature", Some(&sig)),
        ])
    };
    let now = unix_now();
    assert!(
        is_refused(
            &direct(minted(now - 1000, "stale-1", "shared"))
                .await
                .expect("request")
        ),
        "stale"
    );
    assert!(
        is_refused(
            &direct(minted(now + 1000, "future-1", "shared"))
                .await
                .expect("request")
        ),
        "future"
    );
    assert!(
        is_refused(
            &direct(minted(now, "aud-1", "acme-dedicated"))
                .await
                .expect("request")
        ),
        "audience"
    );
    let r = direct(minted(now, "fresh-1", "shared"))
        .await
        .expect("request");
    assert_eq!(r.status, 200, "control: a fresh one passes: {}", r.body);

    // Wrong audience through the gateway: it signs for "shared", /strict/ expects "acme-dedicated".
    let r = via("acme", "GET", "/strict/whoami", vec![], None)
        .await
        .expect("request");
    assert!(is_refused(&r), "wrong audience: {} {}", r.status, r.body);

    // 3. Jobs queued in requests, run later on one worker, interleaved.
    let tenants = ["acme", "globex", "acme", "globex"];
    for (i, t) in tenants.iter().enumerate() {
        let r = via(t, "POST", "/jobs", vec![], Some(json!({"n": i, "for": t})))
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["tenant"], *t);
    }
    let queued: Vec<Value> = queue.lock().expect("queue").drain(..).collect();
    // As if read back from a queue.
    let queued: Vec<Value> =
        serde_json::from_str(&serde_json::to_string(&queued).expect("json")).expect("json");
    assert_eq!(queued.len(), 4);
    assert_eq!(current_tenant(), None);

    let job = |payload: Value| async move {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let t = current_tenant().expect("a job has a tenant");
            seen.push((t.tenant, t.plan, t.source));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (payload, seen)
    };
    // All four on one task: their polls interleave at every await.
    let (a, b, c, d) = tokio::join!(
        run_in_tenant(&queued[0], SERVICE_KEY, job),
        run_in_tenant(&queued[1], SERVICE_KEY, job),
        run_in_tenant(&queued[2], SERVICE_KEY, job),
        run_in_tenant(&queued[3], SERVICE_KEY, job),
    );
    let plans = |t: &str| if t == "acme" { "enterprise" } else { "free" };
    for (i, got) in [a, b, c, d].into_iter().enumerate() {
        let (payload, seen) = got.expect("a valid envelope runs");
        let t = tenants[i];
        assert_eq!(payload, json!({"n": i, "for": t}));
        assert_eq!(
            seen,
            vec![(t.to_owned(), plans(t).to_owned(), "job".to_owned()); 3],
            "job {i}"
        );
    }
    assert_eq!(current_tenant(), None, "nothing leaks out of a job");
    // One after another on the same worker: nothing between jobs.
    for (i, env) in queued.iter().enumerate() {
        let got = run_in_tenant(env, SERVICE_KEY, |p| async move { (current_tenant(), p) }).await;
        let (ctx, _) = got.expect("runs");
        assert_eq!(ctx.map(|c| c.tenant).as_deref(), Some(tenants[i]));
        assert_eq!(current_tenant(), None);
    }

    // A tampered envelope is refused and runs nothing.
    let ran = Arc::new(Mutex::new(0));
    for (field, value) in [
        ("tenant", json!("globex")),
        ("plan", json!("free")),
        ("payload", json!({"n": 0, "for": "globex"})),
        ("subject", json!("mallory")),
    ] {
        let mut env = queued[0].clone();
        env[field] = value;
        let ran = ran.clone();
        let got = run_in_tenant(&env, SERVICE_KEY, |_| async move {
            *ran.lock().expect("lock") += 1
        })
        .await;
        assert_eq!(got, Err(EnvelopeError::Signature), "{field}");
    }
    let ran2 = ran.clone();
    let got = run_in_tenant(&queued[0], b"another service", |_| async move {
        *ran2.lock().expect("lock") += 1
    })
    .await;
    assert_eq!(got, Err(EnvelopeError::Signature));
    assert_eq!(*ran.lock().expect("lock"), 0);
    drop(g);
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}
