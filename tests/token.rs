//! Token identity end to end: JWTs (RS256, ES256, HS256, JWKS) and API keys as tenant sources,
//! strictly validated, agreeing with SNI and Host, with a cache that never outlives `exp`.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tenant_gateway::signing::{Verifier, unix_now};

const HS_SECRET: &str = "hs-secret-for-tests-0123456789abcdef";
const ISS: &str = "https://auth.test/";
const AUD: &str = "gateway";

/// Signing material for every key the test config trusts.
struct Keys {
    rsa: rcgen::KeyPair,
    ec: rcgen::KeyPair,
    /// Added to the JWKS file only after the gateway started.
    rotated: rcgen::KeyPair,
}

impl Keys {
    fn new() -> Self {
        Self {
            rsa: rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key"),
            ec: rcgen::KeyPair::generate().expect("ec key"),
            rotated: rcgen::KeyPair::generate().expect("ec key"),
        }
    }
}

fn jwk(kid: &str, key: &rcgen::KeyPair) -> serde_json::Value {
    let raw = key.public_key_raw();
    assert_eq!(raw.len(), 65, "uncompressed P-256 point");
    json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
    })
}

/// Writes the key files and returns the config with a `token:` and `apikey:` section.
fn token_config(env: &Env, keys: &Keys, upstream: &str, leeway: u64) -> String {
    std::fs::write(env.path("jwt-rsa.pub.pem"), keys.rsa.public_key_pem()).expect("write");
    std::fs::write(env.path("jwt-ec.pub.pem"), keys.ec.public_key_pem()).expect("write");
    std::fs::write(env.path("jwt-hs.secret"), HS_SECRET).expect("write");
    std::fs::write(
        env.path("jwks.json"),
        json!({ "keys": [jwk("jwks-1", &keys.ec)] }).to_string(),
    )
    .expect("write");
    let d = env.dir.path().display();
    let api_hash = sha256_hex(b"globex-api-key-1");
    env.config(upstream, upstream)
        .replace("sources: [sni, host]", "sources: [sni, host, token, apikey]")
        .replace(
            "plans:",
            &format!(
                r#"token:
  tenant_claim: tenant_id
  issuer: {ISS}
  audience: {AUD}
  algorithms: [RS256, ES256, HS256]
  leeway_seconds: {leeway}
  forward_claims: [email]
  jwks_file: {d}/jwks.json
  keys:
    - {{ kid: rsa-1, public_key_file: {d}/jwt-rsa.pub.pem }}
    - {{ kid: ec-1, public_key_file: {d}/jwt-ec.pub.pem }}
    - {{ kid: hs-1, secret_file: {d}/jwt-hs.secret }}
apikey: {{ header: x-api-key }}
plans:"#
            ),
        )
        .replace(
            "  - { path_prefix: /, upstream: shared }",
            "  - { path_prefix: /, upstream: shared }\n  - { path_prefix: /api/, upstream: shared, require: [token] }",
        )
        .replace(
            "routes: [ { path_prefix: /, upstream: acme-dedicated } ]",
            "routes: [ { path_prefix: /, upstream: acme-dedicated }, { path_prefix: /api/, upstream: acme-dedicated, require: [token] } ]",
        )
        .replace(
            "  globex:\n    plan: free\n",
            &format!("  globex:\n    plan: free\n    api_keys_sha256: [\"{api_hash}\"]\n"),
        )
}

fn claims(tenant: &str, exp_in: i64) -> serde_json::Value {
    let now = unix_now() as i64;
    json!({
        "tenant_id": tenant, "sub": "user-42", "email": "ada@acme.test",
        "iss": ISS, "aud": AUD, "iat": now, "exp": now + exp_in,
    })
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_owned());
    encode(&h, claims, key).expect("encode")
}

fn rs(keys: &Keys, c: &serde_json::Value) -> String {
    let key = EncodingKey::from_rsa_pem(keys.rsa.serialize_pem().as_bytes()).expect("rsa");
    sign(Algorithm::RS256, "rsa-1", &key, c)
}

fn es(keys: &Keys, c: &serde_json::Value) -> String {
    let key = EncodingKey::from_ec_pem(keys.ec.serialize_pem().as_bytes()).expect("ec");
    sign(Algorithm::ES256, "ec-1", &key, c)
}

fn hs(c: &serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        "hs-1",
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        c,
    )
}

fn with_token(host: &str, path: &str, token: &str) -> Request<Full<Bytes>> {
    let mut req = get(host, path);
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    req
}

async fn acme_tls(env: &Env, running: &tenant_gateway::Running) -> TlsConn {
    let https = running.addr("https").expect("https");
    tls_connect(env, https, Some("acme.gw.test"), &[b"http/1.1"]).await
}

fn assert_invalid_token(got: &Got, what: &str) {
    assert_eq!(
        got.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {:?}",
        got.body
    );
    assert_eq!(got.json()["error"], "invalid_token", "{what}");
    assert_eq!(
        got.headers["www-authenticate"], "Bearer error=\"invalid_token\"",
        "{what}"
    );
}

#[tokio::test]
async fn valid_tokens_name_the_tenant_and_the_subject_is_signed() {
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let (_gw, running) = env.start(&token_config(&env, &keys, &up.url(), 5)).await;
    let http = running.addr("http").expect("http");

    for (name, token) in [
        ("RS256", rs(&keys, &claims("acme", 300))),
        ("ES256", es(&keys, &claims("acme", 300))),
        ("HS256", hs(&claims("acme", 300))),
    ] {
        let got = h1(http, with_token("acme.gw.test", "/api/orders", &token)).await;
        assert_eq!(got.status, StatusCode::OK, "{name}: {:?}", got.body);
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.headers["x-tenant-id"], "acme");
        assert_eq!(s.headers["x-tenant-subject"], "user-42");
        assert_eq!(s.headers["x-tenant-source"], "host,token");
        assert_eq!(s.headers["x-tenant-claim-email"], "ada@acme.test");
        let mut req = Request::builder()
            .method(s.method.as_str())
            .uri(s.path.as_str())
            .body(())
            .expect("request");
        *req.headers_mut() = s.headers.clone();
        let v = Verifier::new().with_key("k1", SIGNING_SECRET.as_bytes());
        v.verify_request(&req)
            .expect("signature covers the subject");
        // The signature covers the subject: a changed subject does not verify.
        req.headers_mut()
            .insert("x-tenant-subject", "someone-else".parse().expect("v"));
        assert!(v.verify_request(&req).is_err());
    }

    // A token alone identifies the tenant (here on a bare IP host).
    let got = h1(
        http,
        with_token("127.0.0.1", "/", &es(&keys, &claims("globex", 300))),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let last = up.requests().pop().expect("seen");
    assert_eq!(last.headers["x-tenant-id"], "globex");
    assert_eq!(last.headers["x-tenant-source"], "token");

    // A client cannot forge the forwarded claim headers either.
    let mut req = with_token("globex.gw.test", "/", &hs(&claims("globex", 300)));
    req.headers_mut()
        .insert("x-tenant-claim-role", "admin".parse().expect("v"));
    assert_eq!(h1(http, req).await.status, StatusCode::OK);
    assert!(
        up.requests()
            .pop()
            .expect("seen")
            .headers
            .get("x-tenant-claim-role")
            .is_none()
    );
}

#[tokio::test]
async fn a_token_for_another_tenant_is_a_mismatch_on_plain_and_tls() {
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let (_gw, running) = env.start(&token_config(&env, &keys, &up.url(), 5)).await;
    let globex_token = rs(&keys, &claims("globex", 300));

    let got = h1(
        running.addr("http").expect("http"),
        with_token("acme.gw.test", "/", &globex_token),
    )
    .await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert_eq!(got.json()["error"], "tenant_mismatch");

    let conn = acme_tls(&env, &running).await;
    let got = h1_tls(conn, with_token("acme.gw.test", "/", &globex_token)).await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert_eq!(got.json()["error"], "tenant_mismatch");

    // SNI acme with no Host tenant still disagrees with a globex token.
    let conn = acme_tls(&env, &running).await;
    let got = h1_tls(conn, with_token("127.0.0.1", "/", &globex_token)).await;
    assert_eq!(got.json()["error"], "tenant_mismatch");

    // A token naming a tenant that does not exist is as unknown as any other.
    let got = h1(
        running.addr("http").expect("http"),
        with_token("127.0.0.1", "/", &rs(&keys, &claims("nobody", 300))),
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.json()["error"], "unknown_tenant");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn every_kind_of_bad_token_is_401_invalid_token() {
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let (_gw, running) = env.start(&token_config(&env, &keys, &up.url(), 5)).await;
    let http = running.addr("http").expect("http");

    let c = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims("acme", 300);
        f(&mut c);
        c
    };
    let now = unix_now() as i64;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims("acme", 300).to_string());
    let alg_none = format!("{header}.{payload}.");
    let rsa_public_as_hmac = sign(
        Algorithm::HS256,
        "rsa-1",
        &EncodingKey::from_secret(keys.rsa.public_key_pem().as_bytes()),
        &claims("acme", 300),
    );
    let mut bad_sig = rs(&keys, &claims("acme", 300));
    bad_sig.truncate(bad_sig.len() - 4);
    bad_sig.push_str("AAAA");
    let unknown_kid = sign(
        Algorithm::HS256,
        "nope",
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        &claims("acme", 300),
    );
    let cases: Vec<(&str, String)> = vec![
        ("expired", rs(&keys, &c(&|c| c["exp"] = json!(now - 60)))),
        (
            "nbf in the future",
            rs(&keys, &c(&|c| c["nbf"] = json!(now + 600))),
        ),
        (
            "wrong aud",
            rs(&keys, &c(&|c| c["aud"] = json!("someone-else"))),
        ),
        (
            "wrong iss",
            es(&keys, &c(&|c| c["iss"] = json!("https://evil.test/"))),
        ),
        (
            "no exp",
            hs(&c(&|c| {
                c.as_object_mut().expect("object").remove("exp");
            })),
        ),
        (
            "no tenant claim",
            hs(&c(&|c| {
                c.as_object_mut().expect("object").remove("tenant_id");
            })),
        ),
        ("bad signature", bad_sig),
        ("alg none", alg_none),
        (
            "HS256 with the RSA public key (key confusion)",
            rsa_public_as_hmac,
        ),
        ("unknown kid", unknown_kid),
        ("garbage", "not.a.jwt".to_owned()),
        ("empty", String::new()),
    ];
    for (what, token) in &cases {
        let got = h1(http, with_token("acme.gw.test", "/", token)).await;
        assert_invalid_token(&got, what);
    }
    assert!(
        up.requests().is_empty(),
        "no invalid token reached the upstream"
    );
}

#[tokio::test]
async fn an_oversized_authorization_header_is_refused_quickly_and_service_continues() {
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let (_gw, running) = env.start(&token_config(&env, &keys, &up.url(), 5)).await;
    let http = running.addr("http").expect("http");

    let huge = format!("Bearer {}", "a".repeat(200 * 1024));
    let mut req = get("acme.gw.test", "/");
    req.headers_mut()
        .insert("authorization", huge.parse().expect("header"));
    // hyper may close the connection after its 431; either way, an answer and no hang.
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        let stream = tokio::net::TcpStream::connect(http).await.expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.map(|r| r.status())
    })
    .await
    .expect("answered within 5 s");
    if let Ok(status) = outcome {
        assert!(
            status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                || status == StatusCode::UNAUTHORIZED,
            "{status}"
        );
    }
    // Over the 8 KB cap but under the head limit: 401 from the token phase.
    let got = h1(
        http,
        with_token("acme.gw.test", "/", &"a".repeat(10 * 1024)),
    )
    .await;
    assert_invalid_token(&got, "9 KB token");
    let got = h1(
        http,
        with_token("acme.gw.test", "/", &hs(&claims("acme", 300))),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "still serving");
}

#[tokio::test]
async fn a_key_added_to_the_jwks_file_after_start_is_accepted_without_restart() {
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let (_gw, running) = env.start(&token_config(&env, &keys, &up.url(), 5)).await;
    let http = running.addr("http").expect("http");

    let jwks_es = |kid: &str, key: &rcgen::KeyPair| {
        let k = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("ec");
        sign(Algorithm::ES256, kid, &k, &claims("acme", 300))
    };
    // The key already in the JWKS file works.
    let got = h1(
        http,
        with_token("acme.gw.test", "/", &jwks_es("jwks-1", &keys.ec)),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    // The identity provider rotates: the new key is published in the file.
    std::fs::write(
        env.path("jwks.json"),
        json!({ "keys": [jwk("jwks-1", &keys.ec), jwk("jwks-2", &keys.rotated)] }).to_string(),
    )
    .expect("write jwks");
    // The unknown kid asks for a re-read off the request path (never a blocking read on a
    // worker); the token is accepted as soon as it has completed.
    let rotated = jwks_es("jwks-2", &keys.rotated);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let got = loop {
        let got = h1(http, with_token("acme.gw.test", "/", &rotated)).await;
        if got.status == StatusCode::OK || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    // A token signed by a key nobody published stays invalid.
    let stranger = rcgen::KeyPair::generate().expect("key");
    let got = h1(
        http,
        with_token("acme.gw.test", "/", &jwks_es("jwks-3", &stranger)),
    )
    .await;
    assert_invalid_token(&got, "unpublished kid");
}

#[tokio::test]
async fn a_cached_token_is_never_accepted_after_its_exp() {
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let (gw, running) = env.start(&token_config(&env, &keys, &up.url(), 0)).await;
    let http = running.addr("http").expect("http");

    // A token that expires in 2 s, used (and cached) right away.
    let token = rs(&keys, &claims("acme", 2));
    let exp = unix_now() + 2;
    let got = h1(http, with_token("acme.gw.test", "/", &token)).await;
    assert_eq!(got.status, StatusCode::OK);
    let got = h1(http, with_token("acme.gw.test", "/", &token)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(gw.snapshot().token.as_ref().expect("token").cache_len(), 1);
    // Past exp (leeway 0), the cached entry must not let it through.
    let deadline = Instant::now() + Duration::from_secs(6);
    while unix_now() <= exp {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = h1(http, with_token("acme.gw.test", "/", &token)).await;
    assert_invalid_token(&got, "expired after caching");
}

#[tokio::test]
async fn routes_can_require_a_token_and_api_keys_are_a_source() {
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let (_gw, running) = env.start(&token_config(&env, &keys, &up.url(), 5)).await;
    let http = running.addr("http").expect("http");

    // /api/ insists on a token even though the Host names the tenant.
    let got = h1(http, get("acme.gw.test", "/api/orders")).await;
    assert_invalid_token(&got, "missing token on a require: [token] route");
    let got = h1(http, get("acme.gw.test", "/public")).await;
    assert_eq!(got.status, StatusCode::OK);

    let key = |host: &str, key: &str| {
        let mut r = get(host, "/");
        r.headers_mut().insert("x-api-key", key.parse().expect("v"));
        r
    };
    let got = h1(http, key("127.0.0.1", "globex-api-key-1")).await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = up.requests().pop().expect("seen");
    assert_eq!(seen.headers["x-tenant-id"], "globex");
    assert_eq!(seen.headers["x-tenant-source"], "apikey");
    let got = h1(http, key("globex.gw.test", "globex-api-key-1")).await;
    assert_eq!(
        up.requests().pop().expect("seen").headers["x-tenant-source"],
        "host,apikey"
    );
    assert_eq!(got.status, StatusCode::OK);
    let got = h1(http, key("acme.gw.test", "globex-api-key-1")).await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert_eq!(got.json()["error"], "tenant_mismatch");
    let got = h1(http, key("globex.gw.test", "wrong-key")).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert_eq!(got.json()["error"], "invalid_api_key");
}

/// `require: [apikey]` on a global route: enforced for the tenant on global routes (globex) and
/// for the tenant with its own table (acme), under every spelling of the path, and only there.
#[tokio::test]
async fn a_route_that_requires_an_api_key_refuses_requests_without_one() {
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let yaml = token_config(&env, &keys, &up.url(), 5).replace(
        "  - { path_prefix: /, upstream: shared }\n",
        "  - { path_prefix: /, upstream: shared }\n  - { path_prefix: /billing/, upstream: shared, require: [apikey] }\n",
    );
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let with_key = |host: &str, path: &str| {
        let mut r = get(host, path);
        r.headers_mut()
            .insert("x-api-key", "globex-api-key-1".parse().expect("v"));
        r
    };

    for host in ["globex.gw.test", "acme.gw.test"] {
        for path in [
            "/billing/invoices",
            "/billing",
            "//billing/invoices",
            "/%62illing/invoices",
            "/x/../billing/invoices",
            "/billing;v=1/invoices",
        ] {
            let got = h1(http, get(host, path)).await;
            assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{host}{path}");
            assert_eq!(got.json()["error"], "invalid_api_key", "{host}{path}");
        }
        // Outside the prefix nothing is required.
        let got = h1(http, get(host, "/billingx")).await;
        assert_eq!(got.status, StatusCode::OK, "{host}/billingx");
    }
    let before = up.requests().len();
    let got = h1(http, with_key("globex.gw.test", "/billing/invoices")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        up.requests().len(),
        before + 1,
        "served once a key is given"
    );
}

/// A token or API key whose source is not in `tenancy.sources` only corroborates: alone it
/// names no tenant (404), beside a Host it agrees with it is served, against one it is a 403.
#[tokio::test]
async fn a_credential_that_is_not_a_tenancy_source_never_names_the_tenant_alone() {
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let yaml = token_config(&env, &keys, &up.url(), 5).replace(
        "sources: [sni, host, token, apikey]",
        "sources: [sni, host]",
    );
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let token = rs(&keys, &claims("acme", 300));

    let got = h1(http, with_token("127.0.0.1", "/public", &token)).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "a token alone");
    assert_eq!(got.json()["error"], "unknown_tenant");
    let mut keyed = get("127.0.0.1", "/public");
    keyed
        .headers_mut()
        .insert("x-api-key", "globex-api-key-1".parse().expect("v"));
    let got = h1(http, keyed).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "an API key alone");

    let got = h1(http, with_token("acme.gw.test", "/public", &token)).await;
    assert_eq!(got.status, StatusCode::OK, "the token agrees with the Host");
    let got = h1(http, with_token("globex.gw.test", "/public", &token)).await;
    assert_eq!(
        got.status,
        StatusCode::FORBIDDEN,
        "the token names another tenant"
    );
    assert_eq!(got.json()["error"], "tenant_mismatch");
}

/// An identity provider serving a JWKS document that the test can change or take down.
struct Idp {
    url: String,
    doc: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn idp(initial: String) -> Idp {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().expect("addr")
    );
    let doc = std::sync::Arc::new(std::sync::Mutex::new(Some(initial)));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (d, f) = (doc.clone(), fetches.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (d, f) = (d.clone(), f.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let (d, f) = (d.clone(), f.clone());
                    async move {
                        f.fetch_add(1, Ordering::Relaxed);
                        let body = d.lock().expect("lock").clone();
                        let resp = match body {
                            Some(b) => http::Response::new(Full::new(Bytes::from(b))),
                            None => http::Response::builder()
                                .status(503)
                                .body(Full::new(Bytes::new()))
                                .expect("response"),
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    Idp { url, doc, fetches }
}

#[tokio::test]
async fn jwks_url_is_fetched_refreshed_on_an_unknown_kid_and_kept_when_the_idp_is_down() {
    use std::sync::atomic::Ordering;
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let provider = idp(json!({ "keys": [jwk("idp-1", &keys.ec)] }).to_string()).await;
    let yaml = token_config(&env, &keys, &up.url(), 5).replace(
        &format!("  jwks_file: {}/jwks.json\n", env.dir.path().display()),
        &format!(
            "  jwks_url: {}\n  allow_insecure_jwks_url: true\n",
            provider.url
        ),
    );
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let token_for = |kid: &str, key: &rcgen::KeyPair| {
        let k = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("ec");
        sign(Algorithm::ES256, kid, &k, &claims("acme", 300))
    };
    let poll_ok = |token: String| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = h1(http, with_token("acme.gw.test", "/", &token)).await;
            if got.status == StatusCode::OK {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Fetched at start.
    assert!(
        poll_ok(token_for("idp-1", &keys.ec)).await,
        "key from jwks_url accepted"
    );

    // Rotation: the provider publishes a new key; a token naming it triggers a re-fetch.
    *provider.doc.lock().expect("lock") =
        Some(json!({ "keys": [jwk("idp-1", &keys.ec), jwk("idp-2", &keys.rotated)] }).to_string());
    let before = provider.fetches.load(Ordering::Relaxed);
    assert!(
        poll_ok(token_for("idp-2", &keys.rotated)).await,
        "rotated key accepted"
    );
    assert!(provider.fetches.load(Ordering::Relaxed) > before);

    // Provider down: the last good set keeps serving; unknown kids do not hammer it.
    *provider.doc.lock().expect("lock") = None;
    let stranger = rcgen::KeyPair::generate().expect("key");
    let fetches = provider.fetches.load(Ordering::Relaxed);
    for _ in 0..20 {
        let got = h1(
            http,
            with_token("acme.gw.test", "/", &token_for("nope", &stranger)),
        )
        .await;
        assert_invalid_token(&got, "unknown kid while the provider is down");
    }
    assert!(
        provider.fetches.load(Ordering::Relaxed) <= fetches + 1,
        "re-fetches are rate-limited"
    );
    let got = h1(
        http,
        with_token("acme.gw.test", "/", &token_for("idp-2", &keys.rotated)),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "last good set still serving");
}

/// The fetcher's pace: a provider that fails is retried after 1 s, then 2 s, 4 s … (never in a
/// tight loop), and one that answered is not asked again until the refresh interval or an
/// unknown kid.
#[tokio::test]
async fn jwks_url_fetches_back_off_while_the_provider_fails_and_rest_once_it_answered() {
    use std::sync::atomic::Ordering;
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;

    let down = idp(String::new()).await;
    *down.doc.lock().expect("lock") = None;
    let (_gw, _running) = env
        .start(&jwks_url_config(&env, &keys, &up.url(), &down))
        .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let attempts = down.fetches.load(Ordering::Relaxed);
    assert!(
        (2..=4).contains(&attempts),
        "attempts at about 0, 1 and 3 s, not every 250 ms: {attempts} in 3.5 s"
    );

    let good = idp(json!({ "keys": [jwk("idp-1", &keys.ec)] }).to_string()).await;
    let (_gw2, _running2) = env
        .start(&jwks_url_config(&env, &keys, &up.url(), &good))
        .await;
    assert!(
        eventually(5, || async { good.fetches.load(Ordering::Relaxed) >= 1 }).await,
        "fetched at start"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        good.fetches.load(Ordering::Relaxed),
        1,
        "a provider that answered is not asked again within the refresh interval"
    );
}

/// A gateway whose keys come from `jwks_url` (the `Idp`), with the standard token config.
fn jwks_url_config(env: &Env, keys: &Keys, upstream: &str, idp: &Idp) -> String {
    token_config(env, keys, upstream, 5).replace(
        &format!("  jwks_file: {}/jwks.json\n", env.dir.path().display()),
        &format!("  jwks_url: {}\n  allow_insecure_jwks_url: true\n", idp.url),
    )
}

fn idp_token(kid: &str, key: &rcgen::KeyPair, c: &serde_json::Value) -> String {
    let k = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("ec");
    sign(Algorithm::ES256, kid, &k, c)
}

/// Polls `check` every 50 ms for up to `secs`.
async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_reload_that_changes_the_audience_applies_to_keys_from_jwks_url() {
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let provider = idp(json!({ "keys": [jwk("idp-1", &keys.ec)] }).to_string()).await;
    let yaml = jwks_url_config(&env, &keys, &up.url(), &provider);
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let old_audience = idp_token("idp-1", &keys.ec, &claims("acme", 300));
    assert!(
        eventually(10, || async {
            h1(http, with_token("acme.gw.test", "/", &old_audience))
                .await
                .status
                == StatusCode::OK
        })
        .await
    );
    // Same jwks_url, new audience: the token minted for the old one is refused at once.
    env.write_config(&yaml.replace(
        &format!("  audience: {AUD}\n"),
        "  audience: another-gateway\n",
    ));
    gw.reload().expect("reload");
    let got = h1(http, with_token("acme.gw.test", "/", &old_audience)).await;
    assert_invalid_token(&got, "old audience after the reload");
    // A token for the new audience is accepted once the new section's keys are fetched.
    let mut c = claims("acme", 300);
    c["aud"] = "another-gateway".into();
    let new_audience = idp_token("idp-1", &keys.ec, &c);
    assert!(
        eventually(10, || async {
            h1(http, with_token("acme.gw.test", "/", &new_audience))
                .await
                .status
                == StatusCode::OK
        })
        .await
    );
}

#[tokio::test]
async fn a_key_withdrawn_by_the_provider_takes_its_cached_tokens_with_it() {
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let provider =
        idp(json!({ "keys": [jwk("idp-1", &keys.ec), jwk("idp-2", &keys.rotated)] }).to_string())
            .await;
    let (_gw, running) = env
        .start(&jwks_url_config(&env, &keys, &up.url(), &provider))
        .await;
    let http = running.addr("http").expect("http");
    let withdrawn = idp_token("idp-1", &keys.ec, &claims("acme", 300));
    let kept = idp_token("idp-2", &keys.rotated, &claims("acme", 300));
    // Both verified, and cached.
    for t in [&withdrawn, &kept] {
        assert!(
            eventually(10, || async {
                h1(http, with_token("acme.gw.test", "/", t)).await.status == StatusCode::OK
            })
            .await
        );
    }
    // The provider drops idp-1; the next refetch (asked for by an unknown kid, at most once
    // per 5 s) forgets the tokens it verified.
    *provider.doc.lock().expect("lock") =
        Some(json!({ "keys": [jwk("idp-2", &keys.rotated)] }).to_string());
    let stranger = rcgen::KeyPair::generate().expect("key");
    let unknown = idp_token("nobody", &stranger, &claims("acme", 300));
    assert!(
        eventually(15, || async {
            h1(http, with_token("acme.gw.test", "/", &unknown)).await;
            h1(http, with_token("acme.gw.test", "/", &withdrawn))
                .await
                .status
                == StatusCode::UNAUTHORIZED
        })
        .await,
        "a cached token of a withdrawn key is refused after the refetch"
    );
    let got = h1(http, with_token("acme.gw.test", "/", &kept)).await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "the other key's tokens still pass"
    );
}

#[tokio::test]
async fn readyz_waits_for_the_first_jwks_fetch() {
    let env = Env::new();
    let keys = Keys::new();
    let up = Upstream::start("up").await;
    let provider = idp(String::new()).await;
    *provider.doc.lock().expect("lock") = None; // the provider answers 503 for now
    let (_gw, running) = env
        .start(&jwks_url_config(&env, &keys, &up.url(), &provider))
        .await;
    let admin = running.addr("admin").expect("admin");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = h1(admin, get("localhost", "/readyz")).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.json()["jwks_loaded"], false);
    *provider.doc.lock().expect("lock") =
        Some(json!({ "keys": [jwk("idp-1", &keys.ec)] }).to_string());
    assert!(
        eventually(10, || async {
            h1(admin, get("localhost", "/readyz")).await.status == StatusCode::OK
        })
        .await,
        "ready once the provider answered"
    );
}

#[tokio::test]
async fn a_plain_http_jwks_url_is_refused_unless_allowed() {
    let env = Env::new();
    let keys = Keys::new();
    let provider = idp(String::new()).await;
    let yaml = jwks_url_config(&env, &keys, "http://127.0.0.1:9", &provider)
        .replace("  allow_insecure_jwks_url: true\n", "");
    let path = env.write_config(&yaml);
    let err = tenant_gateway::config::load(&path).expect_err("refused");
    assert!(err.to_string().contains("token.jwks_url"), "{err}");
}
