//! Client identity at the edge, over real sockets: client certificates made here with rcgen
//! (a SPIFFE URI SAN names the tenant; expired, foreign-CA and missing certificates refused and
//! counted by reason), and the real client address from PROXY v1/v2 headers of trusted peers or
//! from a trusted peer's `x-forwarded-for`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SPIFFE: &str = "spiffe://acme.example/billing";

/// A client CA and a leaf it signed.
struct ClientPki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

impl ClientPki {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        ca.distinguished_name = dn;
        let cert = ca.self_signed(&key).expect("ca");
        Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(ca, key),
        }
    }

    fn leaf(&self, uri: &str, expired: bool) -> Identity {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().expect("ia5")));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            p.not_before = time::OffsetDateTime::from_unix_timestamp(1_500_000_000).expect("t");
            p.not_after = time::OffsetDateTime::from_unix_timestamp(1_600_000_000).expect("t");
        }
        let cert = p.signed_by(&key, &self.issuer).expect("leaf");
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }
}

fn clone(id: &Identity) -> Identity {
    (id.0.clone(), id.1.clone_key())
}

fn mtls_config(env: &Env, up: &str, ca_file: &std::path::Path, mode: &str) -> String {
    with_tenant_lines(
        &env.config(up, up),
        "acme",
        &format!("    client_cert_sans: [\"{SPIFFE}\"]\n"),
    )
    .replace(
        "tls:\n",
        &format!(
            "tls:\n  client_auth: {{ ca_file: {}, mode: {mode} }}\n",
            ca_file.display()
        ),
    )
    .replace("sources: [sni, host]", "sources: [sni, host, client_cert]")
}

/// A client config trusting the test CA, with an optional client certificate and only the
/// given TLS versions (all safe defaults when empty). Resumes sessions it was given.
fn client_config(
    env: &Env,
    client: Option<Identity>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in env.ca() {
        roots.add(c).expect("root");
    }
    let b = rustls::ClientConfig::builder_with_provider(tenant_gateway::tls::provider());
    let b = if versions.is_empty() {
        b.with_safe_default_protocol_versions()
    } else {
        b.with_protocol_versions(versions)
    }
    .expect("versions")
    .with_root_certificates(roots);
    Arc::new(match client {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).expect("client cert"),
        None => b.with_no_client_auth(),
    })
}

/// One HTTP/1.1 request over TLS with an optional client certificate; `Err` when the
/// handshake or the exchange fails.
async fn mtls_get(
    env: &Env,
    addr: SocketAddr,
    sni: Option<&str>,
    host: &str,
    client: Option<Identity>,
) -> Result<Got, String> {
    let cfg = client_config(env, client, &[]);
    tls_get(cfg, addr, sni, host).await.map(|(got, _)| got)
}

/// One HTTP/1.1 request over a new TLS connection made with `cfg`; also says whether the
/// handshake was a full one or resumed a session.
async fn tls_get(
    cfg: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: Option<&str>,
    host: &str,
) -> Result<(Got, rustls::HandshakeKind), String> {
    let name: ServerName<'static> = match sni {
        Some(s) => ServerName::try_from(s.to_owned()).expect("name"),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(get(host, "/"))
        .await
        .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = resp.into_parts();
    use http_body_util::BodyExt;
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((
        Got {
            status: parts.status,
            headers: parts.headers,
            version: parts.version,
            body,
        },
        kind,
    ))
}

async fn metrics(admin: SocketAddr) -> String {
    String::from_utf8(h1(admin, get("localhost", "/metrics")).await.body.to_vec()).expect("utf8")
}

#[tokio::test]
async fn a_spiffe_certificate_identifies_its_tenant_and_must_agree_with_the_host() {
    let env = Env::new();
    let pki = ClientPki::new("client CA");
    let ca_file = env.path("client-ca.crt");
    std::fs::write(&ca_file, &pki.ca_pem).expect("ca");
    let up = Upstream::start("up").await;
    let (_gw, running) = env
        .start(&mtls_config(&env, &up.url(), &ca_file, "optional"))
        .await;
    let https = running.addr("https").expect("https");
    let acme = pki.leaf(SPIFFE, false);

    // The certificate alone (no SNI, a Host no tenant owns) names acme.
    let got = mtls_get(&env, https, None, "127.0.0.1", Some(clone(&acme)))
        .await
        .expect("acme by certificate");
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    let seen = up.requests().pop().expect("forwarded");
    assert_eq!(seen.headers["x-tenant-id"], "acme");
    assert_eq!(seen.headers["x-tenant-source"], "client_cert");

    // With SNI and Host of acme: all three agree.
    let got = mtls_get(
        &env,
        https,
        Some("acme.gw.test"),
        "acme.gw.test",
        Some(clone(&acme)),
    )
    .await
    .expect("acme");
    assert_eq!(got.status, StatusCode::OK);
    let seen = up.requests().pop().expect("forwarded");
    assert_eq!(seen.headers["x-tenant-source"], "sni,host,client_cert");

    // The same certificate for globex: 403 tenant_mismatch.
    let got = mtls_get(
        &env,
        https,
        Some("globex.gw.test"),
        "globex.gw.test",
        Some(acme),
    )
    .await
    .expect("answered");
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert_eq!(got.json()["error"], "tenant_mismatch");

    // optional: no certificate is fine.
    let got = mtls_get(&env, https, Some("globex.gw.test"), "globex.gw.test", None)
        .await
        .expect("no certificate in optional mode");
    assert_eq!(got.status, StatusCode::OK);
    // ...but an invalid one is not.
    let err = mtls_get(
        &env,
        https,
        Some("globex.gw.test"),
        "globex.gw.test",
        Some(pki.leaf(SPIFFE, true)),
    )
    .await;
    assert!(
        err.is_err(),
        "an expired certificate is refused even in optional mode"
    );
}

#[tokio::test]
async fn required_mode_refuses_missing_expired_and_foreign_certificates_counting_each() {
    let env = Env::new();
    let pki = ClientPki::new("client CA");
    let other = ClientPki::new("someone else's CA");
    let ca_file = env.path("client-ca.crt");
    std::fs::write(&ca_file, &pki.ca_pem).expect("ca");
    let up = Upstream::start("up").await;
    let (_gw, running) = env
        .start(&mtls_config(&env, &up.url(), &ca_file, "required"))
        .await;
    let https = running.addr("https").expect("https");
    let admin = running.addr("admin").expect("admin");
    let sni = Some("acme.gw.test");

    for (what, id) in [
        ("no certificate", None),
        ("expired", Some(pki.leaf(SPIFFE, true))),
        ("another CA", Some(other.leaf(SPIFFE, false))),
    ] {
        let r = mtls_get(&env, https, sni, "acme.gw.test", id).await;
        assert!(r.is_err(), "{what}: {:?}", r.map(|g| g.status));
    }
    let ok = mtls_get(
        &env,
        https,
        sni,
        "acme.gw.test",
        Some(pki.leaf(SPIFFE, false)),
    )
    .await
    .expect("a good certificate");
    assert_eq!(ok.status, StatusCode::OK);
    assert!(
        up.requests().len() == 1,
        "only the good certificate got through"
    );

    let text = metrics(admin).await;
    for reason in ["no_certificate", "expired", "unknown_ca"] {
        let line = format!("gateway_client_cert_failures_total{{reason=\"{reason}\"}} 1");
        assert!(text.contains(&line), "missing {line}:\n{text}");
    }
}

#[test]
fn client_cert_keys_are_checked_at_compile_time() {
    let env = Env::new();
    let yaml = with_tenant_lines(
        &env.config("http://127.0.0.1:9", "http://127.0.0.1:9"),
        "acme",
        "    client_cert_sans: [\"spiffe://x\"]\n",
    )
    .replace("sources: [sni, host]", "sources: [sni, host, client_cert]")
    .replace("plans:", "trusted_proxies: [\"10.0.0.0/33\"]\nplans:")
    .replace(
        "  - { name: http, bind: \"127.0.0.1:0\" }",
        "  - { name: http, bind: \"127.0.0.1:0\", proxy_protocol: true }",
    );
    let errors = tenant_gateway::config::load_bytes(yaml.as_bytes())
        .expect_err("invalid")
        .to_string();
    for want in [
        "tenancy.sources: client_cert is listed but tls.client_auth is not configured",
        "tenants.acme.client_cert_sans: tls.client_auth is not configured",
        "trusted_proxies[0]:",
    ] {
        assert!(errors.contains(want), "missing {want:?} in\n{errors}");
    }
}

// === PROXY protocol and x-forwarded-for ===

fn proxy_config(env: &Env, up: &str, trusted: &str) -> String {
    env.config(up, up)
        .replace(
            "  - { name: http, bind: \"127.0.0.1:0\" }",
            "  - { name: http, bind: \"127.0.0.1:0\", proxy_protocol: true }\n  - { name: plain, bind: \"127.0.0.1:0\" }",
        )
        .replace(
            "plans:",
            &format!("trusted_proxies: [{trusted}]\nlimits: {{ max_connections_per_ip: 1 }}\nplans:"),
        )
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: globex.gw.test\r\nConnection: close\r\n\r\n";

/// Writes `prefix` and a request; returns whatever comes back before the close ("" if the
/// gateway closed without answering).
async fn raw(addr: SocketAddr, prefix: &[u8], request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(prefix).await;
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

#[tokio::test]
async fn proxy_headers_from_a_trusted_peer_set_the_client_address() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let (_gw, running) = env
        .start(&proxy_config(&env, &up.url(), "\"127.0.0.0/8\""))
        .await;
    let http = running.addr("http").expect("http");

    let got = raw(
        http,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8080\r\n",
        REQUEST,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(
        up.requests().pop().expect("seen").headers["x-forwarded-for"],
        "203.0.113.7"
    );

    let got = raw(http, &v2([198, 51, 100, 9], 50000), REQUEST).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(
        up.requests().pop().expect("seen").headers["x-forwarded-for"],
        "198.51.100.9"
    );

    // A v1 UNKNOWN (the balancer's own health check) keeps the peer's address.
    let got = raw(http, b"PROXY UNKNOWN\r\n", REQUEST).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(
        up.requests().pop().expect("seen").headers["x-forwarded-for"],
        "127.0.0.1"
    );

    // The per-IP cap (1) counts the real client: a second connection as 203.0.113.7 is closed
    // while the first is open; another client still gets in.
    let mut first = TcpStream::connect(http).await.expect("connect");
    first
        .write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8080\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = raw(
        http,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51001 8080\r\n",
        REQUEST,
    )
    .await;
    assert_eq!(second, "", "same client over its cap");
    let other = raw(
        http,
        b"PROXY TCP4 203.0.113.8 127.0.0.1 51002 8080\r\n",
        REQUEST,
    )
    .await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    first.write_all(REQUEST).await.expect("write");
    let mut out = Vec::new();
    first.read_to_end(&mut out).await.expect("read");
    assert!(out.starts_with(b"HTTP/1.1 200"));

    // Malformed or missing headers close the connection without an answer.
    for bad in [
        &b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n"[..],
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8080 and more junk that never ends ......................\r\n",
        b"",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x99\x00\x00",
    ] {
        assert_eq!(raw(http, bad, REQUEST).await, "", "{:?}", String::from_utf8_lossy(bad));
    }
    let text = String::from_utf8(
        h1(
            running.addr("admin").expect("admin"),
            get("localhost", "/metrics"),
        )
        .await
        .body
        .to_vec(),
    )
    .expect("utf8");
    assert!(
        text.contains("gateway_connections_closed_total{reason=\"proxy_malformed\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("gateway_connections_closed_total{reason=\"per_ip_cap\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_peer_closes_the_connection() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let (_gw, running) = env
        .start(&proxy_config(&env, &up.url(), "\"10.0.0.0/8\""))
        .await;
    let http = running.addr("http").expect("http");
    let got = raw(
        http,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8080\r\n",
        REQUEST,
    )
    .await;
    assert_eq!(got, "");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn x_forwarded_for_counts_only_from_a_trusted_peer_right_most_untrusted_entry_wins() {
    let env = Env::new();
    let up = Upstream::start("up").await;
    let xff = |v: &'static str| {
        let mut r = get("globex.gw.test", "/");
        r.headers_mut()
            .insert("x-forwarded-for", http::HeaderValue::from_static(v));
        r
    };
    // Loopback trusted (as a balancer would be): the right-most untrusted entry.
    let (_gw, running) = env
        .start(&proxy_config(
            &env,
            &up.url(),
            "\"127.0.0.0/8\", \"10.0.0.0/8\"",
        ))
        .await;
    let plain = running.addr("plain").expect("plain");
    h1(plain, xff("6.6.6.6, 1.2.3.4, 10.0.0.3")).await;
    assert_eq!(
        up.requests().pop().expect("seen").headers["x-forwarded-for"],
        "1.2.3.4"
    );
    h1(plain, xff("1.2.3.4, nonsense")).await;
    assert_eq!(
        up.requests().pop().expect("seen").headers["x-forwarded-for"],
        "127.0.0.1"
    );
    drop(running);

    // Loopback not trusted: the header is the client's word only; the peer is the client.
    let env2 = Env::new();
    let (_gw, running) = env2
        .start(&proxy_config(&env2, &up.url(), "\"10.0.0.0/8\""))
        .await;
    h1(running.addr("plain").expect("plain"), xff("1.2.3.4")).await;
    assert_eq!(
        up.requests().pop().expect("seen").headers["x-forwarded-for"],
        "127.0.0.1"
    );
}

// === TLS session resumption ===

#[tokio::test]
async fn tls_sessions_resume_for_the_same_name_only_in_tls_1_3_and_1_2() {
    use rustls::HandshakeKind::{Full, Resumed};
    let env = Env::new();
    let up = Upstream::start("up").await;
    let (_gw, running) = env.start(&env.config(&up.url(), &up.url())).await;
    let https = running.addr("https").expect("https");
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = client_config(&env, None, &[versions]);
        let host = "globex.gw.test";
        let kinds = [
            tls_get(cfg.clone(), https, Some(host), host).await,
            tls_get(cfg.clone(), https, Some(host), host).await,
        ]
        .map(|r| {
            let (got, kind) = r.expect("served");
            assert_eq!(got.status, StatusCode::OK);
            kind
        });
        assert_eq!(kinds, [Full, Resumed], "{versions:?}");
        let seen = up.requests().pop().expect("forwarded");
        assert_eq!(seen.headers["x-tenant-id"], "globex", "{versions:?}");
        // Another tenant's name does not resume globex's session (RFC 6066: the name must
        // match), and its tenant is its own.
        let (got, kind) = tls_get(cfg.clone(), https, Some("acme.gw.test"), "acme.gw.test")
            .await
            .expect("served");
        assert_eq!((got.status, kind), (StatusCode::OK, Full), "{versions:?}");
        let seen = up.requests().pop().expect("forwarded");
        assert_eq!(seen.headers["x-tenant-id"], "acme", "{versions:?}");
    }
}

#[tokio::test]
async fn with_client_certificates_asked_for_no_session_is_resumed() {
    let env = Env::new();
    let pki = ClientPki::new("client CA");
    let ca_file = env.path("client-ca.crt");
    std::fs::write(&ca_file, &pki.ca_pem).expect("ca");
    let up = Upstream::start("up").await;
    let (_gw, running) = env
        .start(&mtls_config(&env, &up.url(), &ca_file, "optional"))
        .await;
    let https = running.addr("https").expect("https");
    // A resumed session would skip the certificate check (and a reload may change the CA):
    // every connection, with a certificate or without, is a full handshake.
    for client in [Some(pki.leaf(SPIFFE, false)), None] {
        for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let cfg = client_config(&env, client.as_ref().map(clone), &[versions]);
            for _ in 0..3 {
                let (got, kind) = tls_get(cfg.clone(), https, Some("acme.gw.test"), "acme.gw.test")
                    .await
                    .expect("served");
                assert_eq!(got.status, StatusCode::OK);
                assert_eq!(kind, rustls::HandshakeKind::Full, "{versions:?}");
            }
        }
    }
}
