//! Protocols through the gateway: WebSocket (HTTP/1.1 upgrade, plain and TLS) with the tenant
//! rules applied before the upgrade, and server-sent events streamed without buffering.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket echo upstream; records the tenant header of every upgrade it accepted.
// tungstenite's handshake callback signature returns its (large) error response type.
#[allow(clippy::result_large_err)]
async fn ws_echo() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp| {
                    let tenant = req
                        .headers()
                        .get("x-tenant-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    seen.lock().expect("lock").push(tenant);
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

/// Whether a WebSocket to globex can be opened within about a second (a slot was freed).
async fn eventually_opens(http: std::net::SocketAddr) -> bool {
    for _ in 0..40 {
        let stream = TcpStream::connect(http).await.expect("connect");
        if tokio_tungstenite::client_async(ws_request("globex.gw.test"), stream)
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

fn ws_request(host: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    format!("ws://{host}/ws")
        .into_client_request()
        .expect("request")
}

#[tokio::test]
async fn websocket_echo_through_the_gateway_plain_and_tls() {
    let env = Env::new();
    let (url, seen) = ws_echo().await;
    let (_gw, running) = env.start(&env.config(&url, &url)).await;

    let stream = TcpStream::connect(running.addr("http").expect("http"))
        .await
        .expect("connect");
    let (mut ws, resp) = tokio_tungstenite::client_async(ws_request("globex.gw.test"), stream)
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("frame").expect("ok"),
        Message::text("hello")
    );
    ws.close(None).await.expect("close");

    let tls = tls_connect(
        &env,
        running.addr("https").expect("https"),
        Some("acme.gw.test"),
        &[b"http/1.1"],
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::client_async(ws_request("acme.gw.test"), tls.stream)
        .await
        .expect("upgrade over TLS");
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(
        ws.next().await.expect("frame").expect("ok"),
        Message::binary(vec![1u8, 2, 3])
    );
    assert_eq!(*seen.lock().expect("lock"), ["globex", "acme"]);

    // SNI acme, Host globex: refused before any upgrade reaches the upstream.
    let tls = tls_connect(
        &env,
        running.addr("https").expect("https"),
        Some("acme.gw.test"),
        &[b"http/1.1"],
    )
    .await;
    let err = tokio_tungstenite::client_async(ws_request("globex.gw.test"), tls.stream)
        .await
        .expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST)
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(seen.lock().expect("lock").len(), 2);
}

#[tokio::test]
async fn an_upgraded_connection_keeps_its_connection_slots_until_it_closes() {
    let env = Env::new();
    let (url, _) = ws_echo().await;
    let yaml = env
        .config(&url, &url)
        .replace("plans:", "limits: { max_connections_per_ip: 3 }\nplans:");
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let open = || async move {
        let stream = TcpStream::connect(http).await.expect("connect");
        tokio_tungstenite::client_async(ws_request("globex.gw.test"), stream).await
    };
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (mut ws, _) = open().await.expect("upgrade");
        ws.send(Message::text("ping")).await.expect("send");
        assert!(ws.next().await.is_some(), "echo");
        sockets.push(ws);
    }
    // Three upgraded connections from 127.0.0.1: the fourth connection is refused at once.
    assert!(
        open().await.is_err(),
        "a fourth connection from the same IP must be refused while three WebSockets are open"
    );
    let metrics = gw.metrics().render();
    assert!(
        metrics.contains("gateway_active_connections 3"),
        "the gauge counts upgraded connections:\n{metrics}"
    );
    // Closing one frees its slot.
    let mut first = sockets.remove(0);
    first.close(None).await.expect("close");
    while first.next().await.is_some() {}
    drop(first);
    assert!(
        eventually_opens(http).await,
        "closing a WebSocket frees its connection slot"
    );
}

#[tokio::test]
async fn an_open_websocket_holds_a_concurrency_slot() {
    let env = Env::new();
    let (url, _) = ws_echo().await;
    let yaml = with_tenant_lines(&env.config(&url, &url), "globex", "    max_concurrent: 2\n");
    let (_gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");
    let open = || async move {
        let stream = TcpStream::connect(http).await.expect("connect");
        tokio_tungstenite::client_async(ws_request("globex.gw.test"), stream).await
    };
    let (mut first, _) = open().await.expect("first");
    let (_second, _) = open().await.expect("second");
    match open().await.expect_err("third refused") {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("unexpected {other:?}"),
    }
    first.close(None).await.expect("close");
    while first.next().await.is_some() {}
    drop(first);
    assert!(
        eventually_opens(http).await,
        "closing a WebSocket frees its slot"
    );
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let env = Env::new();
    // An SSE upstream: one event every 100 ms, 8 in all.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    let (tx, rx) =
                        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                    tokio::spawn(async move {
                        for i in 0..8 {
                            let ev = Frame::data(Bytes::from(format!("data: {i}\n\n")));
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    });
                    let body = StreamBody::new(tokio_stream_from(rx));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(body)
                            .expect("response"),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let (_gw, running) = env.start(&env.config(&url, &url)).await;
    let stream = TcpStream::connect(running.addr("http").expect("http"))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = sender
        .send_request(get("globex.gw.test", "/events"))
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let started = Instant::now();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
            arrivals.push(started.elapsed());
        }
    }
    assert_eq!(text.matches("data: ").count(), 8, "{text}");
    // Event i is sent at ~i*100 ms: each arrives within that 100 ms, not at the end.
    assert!(arrivals.len() >= 7, "{arrivals:?}");
    for (i, at) in arrivals.iter().enumerate().skip(1) {
        let sent = Duration::from_millis(100 * i as u64);
        assert!(
            *at < sent + Duration::from_millis(100),
            "event {i} arrived at {at:?}"
        );
    }
}

/// A `Stream` over an mpsc receiver (what tokio-stream's ReceiverStream does).
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// An h2c (HTTP/2 prior knowledge) gRPC-style upstream: echoes the message and ends with
/// `grpc-status: 0` in the trailers. Records (version, te, tenant) of each call.
async fn grpc_upstream() -> (String, Arc<Mutex<Vec<(http::Version, String, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("h2c://{}", listener.local_addr().expect("addr"));
    let seen: Arc<Mutex<Vec<(http::Version, String, String)>>> = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let h = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned()
                            };
                            seen.lock().expect("lock").push((
                                req.version(),
                                h("te"),
                                h("x-tenant-id"),
                            ));
                            let msg = req.into_body().collect().await.expect("body").to_bytes();
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().expect("v"));
                            let frames = futures_util::stream::iter(vec![
                                Ok::<_, Infallible>(Frame::data(msg)),
                                Ok(Frame::trailers(trailers)),
                            ]);
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(StreamBody::new(frames))
                                    .expect("response"),
                            )
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, seen)
}

fn grpc_call(msg: &'static [u8]) -> http::Request<http_body_util::Full<Bytes>> {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(msg);
    http::Request::builder()
        .method("POST")
        .uri("https://acme.gw.test/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(Bytes::from(framed)))
        .expect("request")
}

#[tokio::test]
async fn grpc_unary_over_tls_to_an_h2c_upstream_and_grpc_errors() {
    let env = Env::new();
    let (url, seen) = grpc_upstream().await;
    let yaml = with_tenant_lines(
        &env.config(&url, &url),
        "acme",
        "    rate: { per_second: 1, burst: 1 }\n",
    );
    let (_gw, running) = env.start(&yaml).await;
    let tls = tls_connect(
        &env,
        running.addr("https").expect("https"),
        Some("acme.gw.test"),
        &[b"h2"],
    )
    .await;
    let mut h2 = h2_sender(tls).await;

    let resp = h2.send_request(grpc_call(b"hi")).await.expect("call");
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers passed through");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[5..], b"hi");
    let calls = seen.lock().expect("lock").clone();
    assert_eq!(
        calls,
        [(
            http::Version::HTTP_2,
            "trailers".to_owned(),
            "acme".to_owned()
        )]
    );

    // Over the rate: a gRPC status, not an HTTP error page.
    let resp = h2.send_request(grpc_call(b"again")).await.expect("call");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "8");
    assert_eq!(resp.headers()["grpc-message"], "rate_limited");
    assert_eq!(seen.lock().expect("lock").len(), 1);
}

/// An HTTPS upstream that requires a client certificate from `dir`'s CA; answers "mtls-ok".
async fn mtls_upstream(dir: &std::path::Path) -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = tenant_gateway::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.crt")).expect("ca") {
        roots.add(c.expect("ca pem")).expect("root");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("default.crt"))
            .expect("cert")
            .collect::<Result<_, _>>()
            .expect("pem");
    let key = PrivateKeyDer::from_pem_file(dir.join("default.key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
                        "mtls-ok",
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// A client certificate (clientAuth) from `dir`'s CA.
fn client_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).expect("ca key"))
            .expect("ca key");
    let ca_pem = std::fs::read_to_string(dir.join("ca.crt")).expect("ca");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["gateway.upstream.test".to_owned()]).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let (c, k) = (dir.join("client.crt"), dir.join("client.key"));
    std::fs::write(&c, cert.pem()).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    (c, k)
}

/// Collects log output in memory.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn https_upstream_with_ca_and_client_certificate_and_a_wrong_ca_is_502() {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let env = Env::new();
    let upstream_ca = tempfile::tempdir().expect("tempdir");
    tenant_gateway::devcerts::write(upstream_ca.path(), "upstream.test", &[]).expect("certs");
    let (cc, ck) = client_cert(upstream_ca.path());
    let addr = mtls_upstream(upstream_ca.path()).await;
    let url = format!("https://{addr}");
    let pool = |ca: &std::path::Path| {
        format!(
            "acme-dedicated: {{ endpoints: [\"{url}\"], tls: {{ ca_file: {}, server_name: api.upstream.test, client_cert: {{ cert: {}, key: {} }} }} }}",
            ca.display(),
            cc.display(),
            ck.display()
        )
    };
    let base = env.config("http://127.0.0.1:9", &url);
    let dedicated_line = format!("acme-dedicated: {{ endpoints: [\"{url}\"] }}");
    let good = base.replace(&dedicated_line, &pool(&upstream_ca.path().join("ca.crt")));
    let (_gw, running) = env.start(&good).await;
    let got = h1(
        running.addr("http").expect("http"),
        get("acme.gw.test", "/"),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.body, "mtls-ok");
    running.shutdown().await;

    // The tenants' CA does not vouch for the upstream: 502, and the log says why.
    let env2 = Env::new();
    let bad = base.replace(&dedicated_line, &pool(&env2.path("ca.crt")));
    let (_gw, running) = env.start(&bad).await;
    let got = h1(
        running.addr("http").expect("http"),
        get("acme.gw.test", "/"),
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.json()["error"], "upstream_unavailable");
    let text = String::from_utf8_lossy(&logs.0.lock().expect("lock")).to_string();
    assert!(
        text.contains("upstream request failed") && text.contains("invalid peer certificate"),
        "{text}"
    );
}

async fn open_ws(
    http: std::net::SocketAddr,
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let stream = TcpStream::connect(http).await.expect("connect");
    tokio_tungstenite::client_async(req, stream)
        .await
        .map(|(ws, _)| ws)
}

/// True if the server side ends the WebSocket within `within`.
async fn closed_within(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    within: Duration,
) -> bool {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn websockets_close_when_idle_or_when_the_tenant_is_suspended_and_tokens_must_agree() {
    let env = Env::new();
    let (url, seen) = ws_echo().await;
    std::fs::write(env.path("jwt.secret"), "ws-test-hmac-secret-0123456789").expect("write");
    let yaml = env
        .config(&url, &url)
        .replace(
            "tls:\n  default_certificate",
            "limits: { idle_timeout_ms: 400 }\ntls:\n  default_certificate",
        )
        .replace("sources: [sni, host]", "sources: [sni, host, token]")
        .replace(
            "plans:",
            &format!(
                "token: {{ algorithms: [HS256], keys: [ {{ kid: k, secret_file: {} }} ] }}\nplans:",
                env.path("jwt.secret").display()
            ),
        );
    let (gw, running) = env.start(&yaml).await;
    let http = running.addr("http").expect("http");

    // A token for globex on acme's host: 403 before the upgrade reaches the upstream.
    let claims = serde_json::json!({"tenant_id": "globex", "exp": tenant_gateway::signing::unix_now() + 300});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"ws-test-hmac-secret-0123456789"),
    )
    .expect("token");
    let mut req = ws_request("acme.gw.test");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    match open_ws(http, req).await.expect_err("refused") {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(seen.lock().expect("lock").is_empty());

    // Busy connections stay open past the idle timeout; a quiet one is closed.
    let mut busy = open_ws(http, ws_request("acme.gw.test"))
        .await
        .expect("open");
    for _ in 0..8 {
        busy.send(Message::text("ping")).await.expect("send");
        assert_eq!(
            busy.next().await.expect("frame").expect("ok"),
            Message::text("ping")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        closed_within(&mut busy, Duration::from_secs(2)).await,
        "idle connection closed"
    );

    // A reload that suspends the tenant closes its open WebSocket.
    let mut ws = open_ws(http, ws_request("globex.gw.test"))
        .await
        .expect("open");
    ws.send(Message::text("x")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("frame").expect("ok"),
        Message::text("x")
    );
    env.write_config(&with_tenant_lines(
        &yaml,
        "globex",
        "    status: suspended\n",
    ));
    gw.reload().expect("reload");
    assert!(
        closed_within(&mut ws, Duration::from_millis(300)).await,
        "closed on suspend"
    );
}

#[tokio::test]
async fn a_drain_waits_for_open_websockets_within_the_grace_period() {
    let env = Env::new();
    let (url, _) = ws_echo().await;
    let (_gw, running) = env.start(&env.config(&url, &url)).await;
    let http = running.addr("http").expect("http");
    let mut ws = open_ws(http, ws_request("acme.gw.test"))
        .await
        .expect("open");

    let drain = tokio::spawn(running.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !drain.is_finished(),
        "the drain waits for the open WebSocket"
    );
    ws.send(Message::text("still here")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("frame").expect("ok"),
        Message::text("still here")
    );
    ws.close(None).await.expect("close");
    while ws.next().await.is_some() {}
    drop(ws);
    tokio::time::timeout(Duration::from_secs(3), drain)
        .await
        .expect("drain ends once the WebSocket closed")
        .expect("join");
}
