//! Test harness: real sockets only. A gateway on port 0 with real TLS (certificates made by
//! `devcerts`, i.e. rcgen), echo upstreams that record what they received, and hyper clients
//! speaking HTTP/1.1 and HTTP/2 over TCP or rustls.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tenant_gateway::gateway::{Gateway, Running};
use tokio::net::{TcpListener, TcpStream};

pub const SIGNING_SECRET: &str = "test-signing-secret-0123456789abcdef";
pub const DOMAIN: &str = "gw.test";

/// What an echo upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    pub body_sha256: String,
    /// False when the body ended in an error (cut off by the gateway or the client).
    pub body_complete: bool,
}

/// An in-process upstream that records every request and answers 200 with its own name.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        Self::start_with_delay(name, std::time::Duration::ZERO).await
    }

    /// An upstream that waits `delay` before answering each request.
    pub async fn start_with_delay(name: &str, delay: std::time::Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (seen2, name2) = (seen.clone(), name.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, name) = (seen2.clone(), name2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (seen, name) = (seen.clone(), name.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let collected = body.collect().await.map(|b| b.to_bytes());
                            let body_complete = collected.is_ok();
                            let body = collected.unwrap_or_default();
                            seen.lock().expect("lock").push(Seen {
                                method: parts.method.to_string(),
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map_or("/".into(), |p| p.to_string()),
                                headers: parts.headers.clone(),
                                body_len: body.len(),
                                body_sha256: sha256_hex(&body),
                                body_complete,
                            });
                            tokio::time::sleep(delay).await;
                            let resp = Response::builder()
                                .header("x-upstream", name.as_str())
                                .header("connection", "x-upstream-hop")
                                .header("x-upstream-hop", "must-not-reach-client")
                                .body(Full::new(Bytes::from(name)))
                                .expect("response");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            name: name.to_owned(),
            seen,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A temp dir with dev certificates for `gw.test` (acme, globex) and a signing key file.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        tenant_gateway::devcerts::write(
            dir.path(),
            DOMAIN,
            &["acme".to_owned(), "globex".to_owned()],
        )
        .expect("dev certs");
        std::fs::write(dir.path().join("signing.key"), SIGNING_SECRET).expect("signing key");
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Standard config: plain and TLS listeners on port 0, acme with its own cert and a
    /// dedicated pool, globex on the shared pool, initech suspended.
    pub fn config(&self, shared: &str, dedicated: &str) -> String {
        let d = self.dir.path().display();
        format!(
            r#"version: 1
listeners:
  - {{ name: https, bind: "127.0.0.1:0", tls: true }}
  - {{ name: http, bind: "127.0.0.1:0" }}
admin: {{ bind: "127.0.0.1:0" }}
tls:
  default_certificate: {{ cert: {d}/default.crt, key: {d}/default.key }}
tenancy:
  base_domains: [{DOMAIN}]
  sources: [sni, host]
signing:
  active_key: k1
  keys:
    - {{ id: k1, secret_file: {d}/signing.key }}
plans:
  free: {{ timeouts: {{ connect_ms: 1000, request_ms: 5000 }} }}
  enterprise: {{ timeouts: {{ connect_ms: 1000, request_ms: 5000 }} }}
upstreams:
  shared: {{ endpoints: ["{shared}"] }}
  acme-dedicated: {{ endpoints: ["{dedicated}"] }}
routes:
  - {{ path_prefix: /, upstream: shared }}
tenants:
  acme:
    plan: enterprise
    hosts: [api.acme.example]
    tls: {{ cert: {d}/acme.crt, key: {d}/acme.key }}
    routes: [ {{ path_prefix: /, upstream: acme-dedicated }} ]
  globex:
    plan: free
    tls: {{ cert: {d}/globex.crt, key: {d}/globex.key }}
  initech:
    plan: free
    status: suspended
"#
        )
    }

    pub fn write_config(&self, yaml: &str) -> PathBuf {
        let p = self.path("gateway.yaml");
        std::fs::write(&p, yaml).expect("write config");
        p
    }

    /// Starts an in-process gateway on `yaml`.
    pub async fn start(&self, yaml: &str) -> (Arc<Gateway>, Running) {
        let path = self.write_config(yaml);
        let gw = Gateway::from_file(&path).unwrap_or_else(|e| panic!("config: {e}"));
        let running = gw.start().await.expect("start gateway");
        (gw, running)
    }

    pub fn ca(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(self.path("ca.crt"))
            .expect("ca")
            .collect::<Result<_, _>>()
            .expect("ca pem")
    }
}

/// Adds `lines` (YAML, indented four spaces, newline-terminated) to `tenant`'s entry of a config
/// written by [`Env::config`], right after its `plan:` line.
pub fn with_tenant_lines(yaml: &str, tenant: &str, lines: &str) -> String {
    let head = format!("  {tenant}:\n");
    let at = yaml
        .find(&head)
        .unwrap_or_else(|| panic!("no tenant {tenant}"))
        + head.len();
    let end = at + yaml[at..].find('\n').expect("plan line") + 1;
    format!("{}{lines}{}", &yaml[..end], &yaml[end..])
}

/// The `Content-Length` of an HTTP/1.1 message head (0 when absent or unreadable).
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// The status of one HTTP/1.1 GET for `host` and `path`.
pub async fn status(addr: SocketAddr, host: &str, path: &str) -> StatusCode {
    h1(addr, get(host, path)).await.status
}

/// A response, fully read.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

async fn read(resp: Response<Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        version: parts.version,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// One HTTP/1.1 request on a fresh plain connection.
pub async fn h1(addr: SocketAddr, req: Request<Full<Bytes>>) -> Got {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    read(sender.send_request(req).await.expect("send")).await
}

/// A TLS connection's outcome: the certificate the server chose and the negotiated ALPN.
pub struct TlsConn {
    pub stream: tokio_rustls::client::TlsStream<TcpStream>,
    pub leaf: CertificateDer<'static>,
}

impl TlsConn {
    /// DNS names in the server certificate's SANs.
    pub fn leaf_names(&self) -> Vec<String> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(self.leaf.as_ref()).expect("x509");
        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("has san");
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect()
    }
}

/// Connects with TLS. `sni: None` sends no SNI (the server name is the IP address).
pub async fn tls_connect(
    env: &Env,
    addr: SocketAddr,
    sni: Option<&str>,
    alpn: &[&[u8]],
) -> TlsConn {
    let mut roots = rustls::RootCertStore::empty();
    for c in env.ca() {
        roots.add(c).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(tenant_gateway::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name: ServerName<'static> = match sni {
        Some(s) => ServerName::try_from(s.to_owned()).expect("name"),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let stream = TcpStream::connect(addr).await.expect("connect");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, stream)
        .await
        .expect("tls handshake");
    let leaf = stream.get_ref().1.peer_certificates().expect("peer certs")[0].clone();
    TlsConn { stream, leaf }
}

/// One HTTP/1.1 request over TLS.
pub async fn h1_tls(conn: TlsConn, req: Request<Full<Bytes>>) -> Got {
    let (mut sender, c) = hyper::client::conn::http1::handshake(TokioIo::new(conn.stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(c);
    read(sender.send_request(req).await.expect("send")).await
}

/// An HTTP/2 sender over TLS (ALPN h2), for several streams on one connection.
pub async fn h2_sender(conn: TlsConn) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    assert_eq!(conn.stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, c) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(conn.stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(c);
    sender
}

pub async fn h2_send(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Got {
    read(sender.send_request(req).await.expect("send")).await
}

/// Request for HTTP/2: the authority goes in the URI, not a Host header.
pub fn get_h2(authority: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(format!("https://{authority}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tenant-gateway")
}

/// Reads the gateway's JSON log lines until every listener has reported its address.
pub fn wait_for_listeners(
    stderr: &mut impl std::io::BufRead,
    want: usize,
) -> std::collections::HashMap<String, SocketAddr> {
    let mut out = std::collections::HashMap::new();
    let mut line = String::new();
    while out.len() < want {
        line.clear();
        if stderr.read_line(&mut line).expect("read stderr") == 0 {
            panic!("gateway exited before listening");
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["fields"]["message"] == "listening" {
            let name = v["fields"]["listener"].as_str().expect("name").to_owned();
            let addr = v["fields"]["addr"]
                .as_str()
                .expect("addr")
                .parse()
                .expect("addr");
            out.insert(name, addr);
        }
    }
    out
}

pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An address where nothing listens (a port just released): connections are refused.
pub async fn dead_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

/// The standard config whose shared pool is `endpoints` with pool options `extra`.
pub fn pool_config(env: &Env, endpoints: &[&str], extra: &str) -> String {
    let list = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    env.config("PLACEHOLDER", "PLACEHOLDER")
        .replace(
            "shared: { endpoints: [\"PLACEHOLDER\"] }",
            &format!("shared: {{ endpoints: [{list}]{extra} }}"),
        )
        .replace("PLACEHOLDER", endpoints[0])
}

/// A real `redis-server` for the cluster and quota tests (scripts/test.sh installs it); stopped
/// when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    _dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// A fresh `redis-server` on a free loopback port (no persistence), in its own temp dir.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A fresh `redis-server` with `extra` arguments (e.g. `--cluster-enabled yes`).
    pub fn start_with(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut r = Self {
            port,
            child: None,
            _dir: tempfile::tempdir().expect("tempdir"),
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        r.restart();
        r
    }

    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            // `DEBUG SLEEP` (a slow command) from the tests' local connections.
            .args([
                "--appendonly",
                "no",
                "--enable-debug-command",
                "local",
                "--dir",
            ])
            .arg(self._dir.path())
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.command("PING") != "+PONG" {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends one inline command; returns the first reply line ("" if Redis is unreachable).
    pub fn command(&self, cmd: &str) -> String {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        if s.write_all(format!("{cmd}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut line = String::new();
        let _ = std::io::BufReader::new(&mut s).read_line(&mut line);
        line.trim_end().to_owned()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// GET `path` on the admin listener.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Got {
    h1(addr, get("localhost", path)).await
}

/// POST `path` (empty body) on the admin listener.
pub async fn admin_post(addr: SocketAddr, path: &str) -> Got {
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    h1(addr, req).await
}

/// Polls until `f` returns true or `within` passes.
pub async fn eventually<F, Fut>(within: std::time::Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}
