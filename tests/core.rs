//! Gateway core, end to end over real sockets: tenant resolution from SNI and Host, TLS
//! certificate selection, routing overrides, streaming, header hygiene and signing.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use tenant_gateway::signing::Verifier;

fn verifier() -> Verifier {
    Verifier::new().with_key("k1", SIGNING_SECRET.as_bytes())
}

/// Rebuilds the request the upstream received, for the verifier.
fn as_request(seen: &Seen) -> Request<()> {
    let mut req = Request::builder()
        .method(seen.method.as_str())
        .uri(seen.path.as_str())
        .body(())
        .expect("request");
    *req.headers_mut() = seen.headers.clone();
    req
}

/// The standard config with a shared and a dedicated (acme) upstream, started.
async fn two_pools() -> (Env, Upstream, Upstream, tenant_gateway::Running) {
    let env = Env::new();
    let shared = Upstream::start("shared").await;
    let dedicated = Upstream::start("dedicated").await;
    let (_gw, running) = env
        .start(&env.config(&shared.url(), &dedicated.url()))
        .await;
    (env, shared, dedicated, running)
}

#[tokio::test]
async fn host_names_the_tenant_and_the_signature_verifies_and_spoofed_headers_are_stripped() {
    let (_env, shared, dedicated, running) = two_pools().await;
    let http = running.addr("http").expect("http");

    let req = Request::builder()
        .uri("/orders?page=2")
        .header("host", "globex.gw.test")
        .header("x-tenant-id", "acme")
        .header("x-tenant-plan", "enterprise")
        .header("x-tenant-signature", "v1;kid=k1;ts=1;sig=forged")
        .header("X-Tenant-Subject", "admin")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let got = h1(http, req).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "shared");

    let seen = shared.requests();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    let ids: Vec<_> = s.headers.get_all("x-tenant-id").iter().collect();
    assert_eq!(
        ids,
        ["globex"],
        "client-sent x-tenant-id must never reach the upstream"
    );
    assert_eq!(s.headers["x-tenant-plan"], "free");
    assert_eq!(s.headers["x-tenant-source"], "host");
    assert!(s.headers.get("x-tenant-subject").is_none());
    assert_eq!(s.path, "/orders?page=2");
    verifier()
        .verify_request(&as_request(s))
        .expect("signature verifies");
    // A different key does not verify it.
    assert!(
        Verifier::new()
            .with_key("k1", b"another-secret-of-some-length")
            .verify_request(&as_request(s))
            .is_err()
    );

    // Host with a port and in upper case names the same tenant; a custom domain names acme.
    let got = h1(http, get("GLOBEX.gw.test:8080", "/")).await;
    assert_eq!(got.status, StatusCode::OK);
    let got = h1(http, get("api.acme.example", "/")).await;
    assert_eq!(got.body, "dedicated");
    assert!(
        dedicated
            .requests()
            .iter()
            .all(|s| s.headers["x-tenant-id"] == "acme")
    );
}

#[tokio::test]
async fn unknown_and_suspended_tenants_are_refused_with_specs_json() {
    let env = Env::new();
    let shared = Upstream::start("shared").await;
    let (_gw, running) = env.start(&env.config(&shared.url(), &shared.url())).await;
    let http = running.addr("http").expect("http");

    let got = h1(http, get("nobody.gw.test", "/")).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.json()["error"], "unknown_tenant");
    assert!(!String::from_utf8_lossy(&got.body).contains("nobody"));

    let got = h1(http, get("127.0.0.1", "/")).await;
    assert_eq!(got.json()["error"], "unknown_tenant");

    let got = h1(http, get("initech.gw.test", "/")).await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert_eq!(got.json()["error"], "tenant_suspended");

    let got = h1(http, get("bad host!", "/")).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert!(
        shared.requests().is_empty(),
        "refused requests never reach the upstream"
    );
}

#[tokio::test]
async fn sni_selects_the_tenant_certificate_and_must_agree_with_host() {
    let (env, shared, dedicated, running) = two_pools().await;
    let https = running.addr("https").expect("https");

    let acme = tls_connect(&env, https, Some("acme.gw.test"), &[b"http/1.1"]).await;
    assert_eq!(acme.leaf_names(), ["acme.gw.test"]);
    let got = h1_tls(acme, get("acme.gw.test", "/x")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "dedicated");
    let seen = dedicated.requests();
    assert_eq!(seen[0].headers["x-tenant-source"], "sni,host");
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
    verifier()
        .verify_request(&as_request(&seen[0]))
        .expect("signature");

    let globex = tls_connect(&env, https, Some("globex.gw.test"), &[b"http/1.1"]).await;
    assert_eq!(globex.leaf_names(), ["globex.gw.test"]);

    // A tenant without its own certificate gets the wildcard default by name.
    let other = tls_connect(&env, https, Some("initech.gw.test"), &[b"http/1.1"]).await;
    assert!(other.leaf_names().contains(&"*.gw.test".to_owned()));

    // No SNI at all: the default certificate.
    let none = tls_connect(&env, https, None, &[b"http/1.1"]).await;
    assert!(none.leaf_names().contains(&"*.gw.test".to_owned()));

    // SNI acme, Host globex: 421, and nothing forwarded.
    let before = shared.requests().len() + dedicated.requests().len();
    let acme = tls_connect(&env, https, Some("acme.gw.test"), &[b"http/1.1"]).await;
    let got = h1_tls(acme, get("globex.gw.test", "/")).await;
    assert_eq!(got.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(got.json()["error"], "misdirected_request");
    assert_eq!(shared.requests().len() + dedicated.requests().len(), before);
}

#[tokio::test]
async fn http2_over_tls_checks_every_stream() {
    let (env, shared, dedicated, running) = two_pools().await;
    let https = running.addr("https").expect("https");

    let conn = tls_connect(&env, https, Some("acme.gw.test"), &[b"h2", b"http/1.1"]).await;
    let mut h2 = h2_sender(conn).await;
    let got = h2_send(&mut h2, get_h2("acme.gw.test", "/h2")).await;
    assert_eq!(got.version, http::Version::HTTP_2);
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "dedicated");
    let seen = dedicated.requests();
    assert_eq!(seen[0].headers["host"], "acme.gw.test");
    verifier()
        .verify_request(&as_request(&seen[0]))
        .expect("signature");

    // A second stream on the same connection naming another tenant is misdirected.
    let got = h2_send(&mut h2, get_h2("globex.gw.test", "/")).await;
    assert_eq!(got.status, StatusCode::MISDIRECTED_REQUEST);
    assert!(shared.requests().is_empty());
}

#[tokio::test]
async fn tenant_route_override_picks_the_dedicated_pool() {
    let (_env, shared, dedicated, running) = two_pools().await;
    let http = running.addr("http").expect("http");

    for _ in 0..3 {
        assert_eq!(
            h1(http, get("acme.gw.test", "/api/x")).await.body,
            "dedicated"
        );
        assert_eq!(
            h1(http, get("globex.gw.test", "/api/x")).await.body,
            "shared"
        );
    }
    assert_eq!(dedicated.requests().len(), 3);
    assert_eq!(shared.requests().len(), 3);
}

#[tokio::test]
async fn longest_prefix_wins_and_round_robin_spreads_requests() {
    let env = Env::new();
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let api = Upstream::start("api").await;
    let yaml = env
        .config(&a.url(), &a.url())
        .replace(
            &format!("shared: {{ endpoints: [\"{}\"] }}", a.url()),
            &format!(
                "shared: {{ endpoints: [\"{}\", \"{}\"], balance: round_robin }}\n  api: {{ endpoints: [\"{}\"], balance: least_requests }}",
                a.url(),
                b.url(),
                api.url()
            ),
        )
        .replace(
            "  - { path_prefix: /, upstream: shared }",
            "  - { path_prefix: /, upstream: shared }\n  - { path_prefix: /api/, upstream: api }",
        );
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    assert_eq!(h1(http, get("globex.gw.test", "/api/v1")).await.body, "api");
    assert_eq!(h1(http, get("globex.gw.test", "/apix")).await.body.len(), 1);
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(h1(http, get("globex.gw.test", "/")).await.body);
    }
    assert_eq!(bodies.iter().filter(|b| *b == "a").count(), 2, "{bodies:?}");
    assert_eq!(bodies.iter().filter(|b| *b == "b").count(), 2, "{bodies:?}");
}

#[tokio::test]
async fn a_3mb_post_streams_through_intact() {
    let env = Env::new();
    let shared = Upstream::start("shared").await;
    let (_gw, running) = env.start(&env.config(&shared.url(), &shared.url())).await;
    let http = running.addr("http").expect("http");

    let body: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let digest = sha256_hex(&body);
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "globex.gw.test")
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let got = h1(http, req).await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = shared.requests();
    assert_eq!(seen[0].body_len, body.len());
    assert_eq!(seen[0].body_sha256, digest);

    // The same over HTTP/2 and TLS.
    let https = running.addr("https").expect("https");
    let conn = tls_connect(&env, https, Some("globex.gw.test"), &[b"h2"]).await;
    let mut h2 = h2_sender(conn).await;
    let req = Request::builder()
        .method("PUT")
        .uri("https://globex.gw.test/upload")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    assert_eq!(h2_send(&mut h2, req).await.status, StatusCode::OK);
    assert_eq!(shared.requests()[1].body_sha256, digest);
}

#[tokio::test]
async fn upstream_down_is_a_502_json_error() {
    let env = Env::new();
    // A port that was just free: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (_gw, running) = env
        .start(&env.config(&format!("http://{dead}"), &format!("http://{dead}")))
        .await;
    let got = h1(
        running.addr("http").expect("http"),
        get("globex.gw.test", "/"),
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.json()["error"], "upstream_unavailable");
    assert!(!String::from_utf8_lossy(&got.body).contains(&dead.port().to_string()));
    assert!(got.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_forwarding_headers_set() {
    let env = Env::new();
    let shared = Upstream::start("shared").await;
    let (_gw, running) = env.start(&env.config(&shared.url(), &shared.url())).await;
    let http = running.addr("http").expect("http");

    let req = Request::builder()
        .uri("/")
        .header("host", "globex.gw.test")
        .header("connection", "keep-alive, x-hop-secret")
        .header("x-hop-secret", "do-not-forward")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let got = h1(http, req).await;
    assert_eq!(got.status, StatusCode::OK);
    // The upstream's own hop-by-hop headers do not reach the client either.
    assert!(got.headers.get("x-upstream-hop").is_none());
    assert_eq!(got.headers["x-upstream"], "shared");
    let generated = got.headers["x-request-id"].clone();
    assert_eq!(generated.len(), 32);

    let s = &shared.requests()[0];
    for gone in ["x-hop-secret", "keep-alive", "proxy-authorization"] {
        assert!(s.headers.get(gone).is_none(), "{gone} was forwarded");
    }
    assert_eq!(s.headers["x-end-to-end"], "kept");
    assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(s.headers["x-forwarded-proto"], "http");
    assert_eq!(s.headers["x-forwarded-host"], "globex.gw.test");
    assert_eq!(s.headers["x-request-id"], generated);

    // A sane client request id is kept end to end; a hostile one is replaced.
    let mut req = get("globex.gw.test", "/");
    req.headers_mut()
        .insert("x-request-id", "trace-42.a_b:c".parse().expect("v"));
    let got = h1(http, req).await;
    assert_eq!(got.headers["x-request-id"], "trace-42.a_b:c");
    assert_eq!(
        shared.requests()[1].headers["x-request-id"],
        "trace-42.a_b:c"
    );
    let mut req = get("globex.gw.test", "/");
    req.headers_mut()
        .insert("x-request-id", "evil\"id with spaces".parse().expect("v"));
    let got = h1(http, req).await;
    assert_ne!(got.headers["x-request-id"], "evil\"id with spaces");
    assert_eq!(
        shared.requests()[2].headers["x-request-id"],
        got.headers["x-request-id"]
    );
}
