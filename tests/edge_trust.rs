//! Edge trust, from the attacker's side: every other spelling of a path (HTTP/1.1 raw targets and
//! HTTP/2 `:path`), requirements a tenant route cannot drop, signatures v2 bound to the pool and
//! checked with the published public keys by an independent Ed25519 implementation.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tenant_gateway::signing::{Verifier, VerifyError, unix_now};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HS_SECRET: &str = "edge-trust-jwt-secret-0123456789";

/// SPEC's own routes: `/api/` requires a token, `/` does not; HS256 tokens; acme keeps its own
/// `/` route on its dedicated pool.
fn trust_config(env: &Env, shared: &str, dedicated: &str) -> String {
    std::fs::write(env.path("jwt-hs.secret"), HS_SECRET).expect("write");
    let d = env.dir.path().display();
    env.config(shared, dedicated)
        .replace("sources: [sni, host]", "sources: [sni, host, token]")
        .replace(
            "plans:",
            &format!(
                "token:\n  tenant_claim: tenant_id\n  algorithms: [HS256]\n  keys:\n    - {{ kid: hs-1, secret_file: {d}/jwt-hs.secret }}\nplans:"
            ),
        )
        .replace(
            "  - { path_prefix: /, upstream: shared }",
            "  - { path_prefix: /, upstream: shared }\n  - { path_prefix: /api/, upstream: shared, require: [token] }",
        )
}

fn token(tenant: &str, sub: &str) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("hs-1".into());
    let claims = json!({"tenant_id": tenant, "sub": sub, "exp": unix_now() + 300});
    encode(&h, &claims, &EncodingKey::from_secret(HS_SECRET.as_bytes())).expect("encode")
}

/// One raw HTTP/1.1 request; returns the status code.
async fn raw_h1(addr: SocketAddr, method: &str, target: &str, host: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status for {target:?}: {text:?}"))
}

/// One HTTP/2 (prior knowledge, plain) request with `:path` = `target`; returns the status.
async fn raw_h2(addr: SocketAddr, target: &str, host: &str) -> u16 {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let uri = http::Uri::from_parts({
        let mut p = http::uri::Parts::default();
        p.scheme = Some(http::uri::Scheme::HTTP);
        p.authority = Some(host.parse().expect("authority"));
        p.path_and_query = Some(target.parse().expect("path"));
        p
    })
    .expect("uri");
    let req = Request::get(uri)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send.send_request(req).await.expect("h2 response");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

/// (request target, status, what the upstream must see; `None`: nothing may reach it).
const SPELLINGS: &[(&str, u16, Option<&str>)] = &[
    // The token-only route, spelled every other way: never reached without a token.
    ("/api/orders", 401, None),
    ("//api/orders", 401, None),
    ("///api//orders", 401, None),
    ("/./api/orders", 401, None),
    ("/%61pi/orders", 401, None),
    ("/%61%70%69/orders", 401, None),
    ("/x/../api/orders", 401, None),
    ("/a/b/../../api/orders", 401, None),
    ("/%2e/api/orders", 401, None),
    ("/%2E/api/orders", 401, None),
    ("/x/%2e%2e/api/orders", 401, None),
    ("/x/.%2E/api/orders", 401, None),
    ("/api;jsessionid=1/orders", 401, None),
    ("/api", 401, None),
    ("/api?x=1", 401, None),
    ("/api/./", 401, None),
    // Refused outright: encoded separators, NUL, backslashes, bad escapes, climbing out.
    ("/api%2forders", 400, None),
    ("/api%2Forders", 400, None),
    ("/x/..%2fapi/orders", 400, None),
    ("/x/..%2Fapi/orders", 400, None),
    ("/x%5capi/orders", 400, None),
    ("/x%5Capi/orders", 400, None),
    ("/x\\..\\api\\orders", 400, None),
    ("/api/orders%00", 400, None),
    ("/api/%zz", 400, None),
    ("/api/%4", 400, None),
    ("/api/%", 400, None),
    ("/..", 400, None),
    ("/../api/orders", 400, None),
    ("/%2e%2e/api/orders", 400, None),
    ("/public/..;/api/orders", 400, None),
    ("/public/.;x/api/orders", 400, None),
    // Not the token route: forwarded, normalised.
    ("/apiary", 200, Some("/apiary")),
    ("/apiary/..", 200, Some("/")),
    ("/a/./b/", 200, Some("/a/b/")),
    ("/%7euser/%7Efile", 200, Some("/~user/~file")),
    ("/caf%c3%a9", 200, Some("/caf%C3%A9")),
    ("/%c0%afapi/orders", 200, Some("/%C0%AFapi/orders")),
    ("/a//b?q=%2F..//x", 200, Some("/a/b?q=%2F..//x")),
    ("/API/orders", 200, Some("/API/orders")),
    ("/%41pi/orders", 200, Some("/Api/orders")),
];

#[tokio::test]
async fn every_spelling_of_a_path_is_normalised_and_none_escapes_a_requirement() {
    let env = Env::new();
    let up = Upstream::start("shared").await;
    let (_gw, running) = env.start(&trust_config(&env, &up.url(), &up.url())).await;
    let http = running.addr("http").expect("http");
    for h2 in [false, true] {
        for &(target, want, seen) in SPELLINGS {
            let before = up.requests().len();
            let got = if h2 {
                raw_h2(http, target, "globex.gw.test").await
            } else {
                raw_h1(http, "GET", target, "globex.gw.test").await
            };
            let proto = if h2 { "h2" } else { "h1" };
            assert_eq!(got, want, "{proto} {target:?}");
            let after = up.requests();
            match seen {
                None => assert_eq!(
                    after.len(),
                    before,
                    "{proto} {target:?} reached the upstream"
                ),
                Some(path) => {
                    assert_eq!(after.len(), before + 1, "{proto} {target:?}");
                    assert_eq!(after[before].path, path, "{proto} {target:?}");
                }
            }
        }
    }
    // With the token the route is served, under its normalised path (which is what is signed).
    let mut req = get("globex.gw.test", "/%61pi/./orders");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("globex", "u1"))
            .parse()
            .expect("h"),
    );
    let got = h1(http, req).await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = up.requests().pop().expect("seen");
    assert_eq!(seen.path, "/api/orders");
    let verifier = Verifier::new().with_key("k1", SIGNING_SECRET.as_bytes());
    let mut signed = Request::get(seen.path.as_str()).body(()).expect("req");
    *signed.headers_mut() = seen.headers.clone();
    assert_eq!(verifier.verify_request(&signed), Ok(()));

    // HTTP/1.1 only: targets that are not origin-form.
    for (method, target, want) in [
        ("GET", "http://globex.gw.test/api/orders", 400),
        ("GET", "http://globex.gw.test/", 400),
        ("GET", "*", 400),
        ("OPTIONS", "*", 200),
        ("CONNECT", "globex.gw.test:443", 400),
    ] {
        let before = up.requests().len();
        assert_eq!(
            raw_h1(http, method, target, "globex.gw.test").await,
            want,
            "{method} {target}"
        );
        if want == 400 {
            assert_eq!(up.requests().len(), before, "{method} {target}");
        }
    }
    // A Host with a trailing dot names the same tenant.
    assert_eq!(raw_h1(http, "GET", "/x", "globex.gw.test.").await, 200);
    assert_eq!(raw_h1(http, "GET", "/api/x", "globex.gw.test.").await, 401);
    assert_eq!(raw_h1(http, "GET", "/x", "globex.gw.test..").await, 400);
}

#[tokio::test]
async fn keep_forwards_escaped_slashes_and_merge_slashes_can_be_turned_off() {
    let env = Env::new();
    let up = Upstream::start("shared").await;
    let yaml = trust_config(&env, &up.url(), &up.url()).replace(
        "plans:",
        "limits: { escaped_slashes: keep, merge_slashes: false }\nplans:",
    );
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    assert_eq!(raw_h1(http, "GET", "/a%2fb", "globex.gw.test").await, 200);
    assert_eq!(up.requests().pop().expect("seen").path, "/a%2fb");
    assert_eq!(
        raw_h1(http, "GET", "/a//b/./c", "globex.gw.test").await,
        200
    );
    assert_eq!(up.requests().pop().expect("seen").path, "/a//b/c");
    // Still refused under `keep`: NUL, backslash, climbing out, and the token route.
    assert_eq!(raw_h1(http, "GET", "/a%00", "globex.gw.test").await, 400);
    assert_eq!(raw_h1(http, "GET", "/a\\b", "globex.gw.test").await, 400);
    assert_eq!(raw_h1(http, "GET", "/..", "globex.gw.test").await, 400);
    assert_eq!(raw_h1(http, "GET", "/%61pi/x", "globex.gw.test").await, 401);
}

#[tokio::test]
async fn a_tenant_route_cannot_drop_a_global_requirement() {
    let env = Env::new();
    let shared = Upstream::start("shared").await;
    let dedicated = Upstream::start("dedicated").await;
    let yaml = trust_config(&env, &shared.url(), &dedicated.url());
    // acme's own table has only `/` (to its dedicated pool); the global `/api/` still binds it.
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    for path in ["/api/orders", "//api/orders", "/%61pi/orders", "/api"] {
        let got = h1(http, get("acme.gw.test", path)).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    assert!(dedicated.requests().is_empty());
    let mut req = get("acme.gw.test", "/api/orders");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("acme", "u1"))
            .parse()
            .expect("h"),
    );
    let got = h1(http, req).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.body, "dedicated",
        "the tenant's route still picks the upstream"
    );
    assert_eq!(status(http, "acme.gw.test", "/other").await, StatusCode::OK);

    // `check --explain` says so.
    let out = std::process::Command::new(bin())
        .args(["check", "--explain", "--config"])
        .arg(env.path("gateway.yaml"))
        .output()
        .expect("run check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let acme: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("tenant acme "))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    let acme = acme.join("\n");
    let api = acme
        .lines()
        .find(|l| l.trim_start().starts_with("/api/ "))
        .unwrap_or_else(|| panic!("no /api/ line in {text}"));
    assert!(api.contains("acme-dedicated"), "{api}");
    assert!(api.contains("require: token"), "{api}");
    let root = acme
        .lines()
        .find(|l| l.trim_start().starts_with("/ "))
        .unwrap_or_else(|| panic!("no / line in {text}"));
    assert!(root.contains("require: -"), "{root}");
}

/// A config with signatures v2: Ed25519 `e1` for the shared pool (the active key), HMAC `kd`
/// for acme's dedicated pool only.
fn v2_config(env: &Env, shared: &str, dedicated: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    std::fs::write(env.path("e1.pem"), key.serialize_pem()).expect("write");
    std::fs::write(env.path("kd.key"), "dedicated-deployment-secret-0123").expect("write");
    let d = env.dir.path().display();
    trust_config(env, shared, dedicated)
        .replace(
            &format!("signing:\n  active_key: k1\n  keys:\n    - {{ id: k1, secret_file: {d}/signing.key }}"),
            &format!(
                "signing:\n  version: 2\n  active_key: e1\n  keys:\n    - {{ id: e1, algorithm: ed25519, private_key_file: {d}/e1.pem }}\n    - {{ id: kd, secret_file: {d}/kd.key }}"
            ),
        )
        .replace(
            &format!("acme-dedicated: {{ endpoints: [\"{dedicated}\"] }}"),
            &format!("acme-dedicated: {{ endpoints: [\"{dedicated}\"], signing_key: kd }}"),
        )
}

async fn admin_get(addr: SocketAddr, path: &str) -> String {
    let got = h1(addr, get("localhost", path)).await;
    assert_eq!(got.status, StatusCode::OK, "{path}");
    String::from_utf8(got.body.to_vec()).expect("utf-8")
}

fn as_request(seen: &Seen) -> Request<()> {
    let mut r = Request::builder()
        .method(seen.method.as_str())
        .uri(seen.path.as_str())
        .body(())
        .expect("req");
    *r.headers_mut() = seen.headers.clone();
    r
}

/// Verifies a received v2 request with Python's `cryptography` (an independent Ed25519
/// implementation) against the JWKS; prints "ok" or the reason.
const PY_VERIFY: &str = r#"
import base64, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
c = json.load(sys.stdin)
h = {k.lower(): v for k, v in c["headers"].items()}
parts = dict(p.split("=", 1) for p in h["x-tenant-signature"].split(";")[1:])
assert h["x-tenant-signature"].startswith("v2;"), "not v2"
key = next(k for k in c["jwks"]["keys"] if k["kid"] == parts["kid"])
assert key["kty"] == "OKP" and key["crv"] == "Ed25519"
b64 = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
pub = Ed25519PublicKey.from_public_bytes(b64(key["x"]))
canonical = "\n".join(["v2", parts["ts"], h["x-request-id"], c["method"], h["host"].lower(),
    c["path"], h["x-tenant-id"], h["x-tenant-plan"], h.get("x-tenant-subject", ""),
    h.get("x-tenant-source", ""), parts["aud"]])
pub.verify(b64(parts["sig"]), canonical.encode())
print("ok", parts["aud"])
"#;

fn python_verifies(seen: &Seen, jwks: &serde_json::Value) -> String {
    let headers: serde_json::Map<String, serde_json::Value> = seen
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().expect("ascii header"))))
        .collect();
    let case = json!({"headers": headers, "method": seen.method, "path": seen.path, "jwks": jwks});
    let mut child = std::process::Command::new("python3")
        .args(["-c", PY_VERIFY])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(case.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python3");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

#[tokio::test]
async fn v2_signatures_are_bound_to_the_pool_and_verify_with_the_published_keys() {
    let env = Env::new();
    let shared = Upstream::start("shared").await;
    let dedicated = Upstream::start("dedicated").await;
    let yaml = v2_config(&env, &shared.url(), &dedicated.url());
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let admin = running.addr("admin").expect("admin");

    // The JWKS: the Ed25519 key only; the HMAC secret is never published.
    let jwks_text = admin_get(admin, "/.well-known/tenant-signing-keys").await;
    let jwks: serde_json::Value = serde_json::from_str(&jwks_text).expect("json");
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{jwks_text}");
    assert_eq!(keys[0]["kid"], "e1");
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    // `tenant-gateway signing-keys` prints the same set.
    let out = std::process::Command::new(bin())
        .args(["signing-keys", "--config"])
        .arg(env.path("gateway.yaml"))
        .output()
        .expect("signing-keys");
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(printed, jwks);

    // A shared-pool request with a non-ASCII subject.
    let mut req = get("globex.gw.test", "/api/orders?page=2");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("globex", "zoë"))
            .parse()
            .expect("h"),
    );
    assert_eq!(h1(http, req).await.status, StatusCode::OK);
    let seen = shared.requests().pop().expect("seen");
    let sig = seen.headers["x-tenant-signature"].to_str().expect("ascii");
    assert!(sig.starts_with("v2;kid=e1;alg=ed25519;ts="), "{sig}");
    assert!(sig.contains(";aud=shared;sig="), "{sig}");
    assert_eq!(seen.headers["x-tenant-subject"], "zo%C3%AB");
    assert_eq!(seen.headers["x-tenant-source"], "host,token");
    assert_eq!(python_verifies(&seen, &jwks), "ok shared");

    // The crate's verifier: right audience accepted, another pool's refused.
    let for_pool = |aud: &str| {
        Verifier::new()
            .with_jwks(&jwks_text)
            .expect("jwks")
            .with_audience(aud)
    };
    assert_eq!(
        for_pool("shared").verify_request(&as_request(&seen)),
        Ok(())
    );
    assert_eq!(
        for_pool("acme-dedicated").verify_request(&as_request(&seen)),
        Err(VerifyError::Audience)
    );
    // Tampering with the source (or the subject) is detected.
    for (name, value) in [("x-tenant-source", "host"), ("x-tenant-subject", "zoe")] {
        let mut tampered = as_request(&seen);
        tampered
            .headers_mut()
            .insert(name, value.parse().expect("h"));
        assert_eq!(
            for_pool("shared").verify_request(&tampered),
            Err(VerifyError::Mismatch),
            "{name}"
        );
    }

    // acme's dedicated pool is signed with its own HMAC key, audience acme-dedicated.
    assert_eq!(status(http, "acme.gw.test", "/x").await, StatusCode::OK);
    let seen_d = dedicated.requests().pop().expect("seen");
    let sig_d = seen_d.headers["x-tenant-signature"]
        .to_str()
        .expect("ascii");
    assert!(
        sig_d.starts_with("v2;kid=kd;alg=hmac-sha256;") && sig_d.contains(";aud=acme-dedicated;"),
        "{sig_d}"
    );
    let dedicated_key = Verifier::new().with_key("kd", b"dedicated-deployment-secret-0123");
    assert_eq!(dedicated_key.verify_request(&as_request(&seen_d)), Ok(()));
    // The dedicated deployment's key verifies nothing of the shared pool's...
    assert_eq!(
        dedicated_key.verify_request(&as_request(&seen)),
        Err(VerifyError::UnknownKey)
    );
    // ...and a shared-pool service holding only the public keys refuses what it could mint.
    let fields = tenant_gateway::signing::SignedFields {
        request_id: "r",
        method: "GET",
        authority: "globex.gw.test",
        path_and_query: "/api/orders",
        tenant: "globex",
        plan: "enterprise",
        subject: "",
        source: "host",
    };
    let minted =
        tenant_gateway::signing::SigningKey::new("kd", b"dedicated-deployment-secret-0123")
            .sign_v2(unix_now(), &fields, "shared");
    assert_eq!(
        for_pool("shared").verify_at(&minted, &fields, unix_now()),
        Err(VerifyError::UnknownKey)
    );
}

#[tokio::test]
async fn v1_signatures_still_verify_and_carry_an_encoded_subject() {
    let env = Env::new();
    let up = Upstream::start("shared").await;
    let (_gw, running) = env.start(&trust_config(&env, &up.url(), &up.url())).await;
    let http = running.addr("http").expect("http");
    let mut req = get("globex.gw.test", "/api/x");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("globex", "zoë"))
            .parse()
            .expect("h"),
    );
    assert_eq!(h1(http, req).await.status, StatusCode::OK);
    let seen = up.requests().pop().expect("seen");
    assert!(
        seen.headers["x-tenant-signature"]
            .to_str()
            .expect("ascii")
            .starts_with("v1;kid=k1;")
    );
    assert_eq!(seen.headers["x-tenant-subject"], "zo%C3%AB");
    let v = Verifier::new().with_key("k1", SIGNING_SECRET.as_bytes());
    assert_eq!(v.verify_request(&as_request(&seen)), Ok(()));
}
