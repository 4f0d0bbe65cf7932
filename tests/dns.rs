//! Upstream endpoints named by hostname, over real sockets: a real UDP nameserver (a small one
//! written here, answering A queries from a table the test changes), upstreams on several
//! loopback addresses sharing one port, and the gateway resolving through `dns.nameservers`.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UdpSocket};

/// A nameserver answering every A query with `addrs` (TTL `ttl`), AAAA with no records, or
/// nothing at all while `silent`.
struct Nameserver {
    addr: SocketAddr,
    answer: Arc<Mutex<(Vec<Ipv4Addr>, u32, bool)>>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Nameserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Nameserver {
    async fn start(addrs: &[Ipv4Addr], ttl: u32) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().expect("addr");
        let answer = Arc::new(Mutex::new((addrs.to_vec(), ttl, false)));
        let queries = Arc::new(AtomicUsize::new(0));
        let (a, q) = (answer.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                let (addrs, ttl, silent) = a.lock().expect("lock").clone();
                if silent {
                    continue;
                }
                if let Some(reply) = reply(&buf[..n], &addrs, ttl) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        Self {
            addr,
            answer,
            queries,
            task,
        }
    }

    fn set(&self, addrs: &[Ipv4Addr], ttl: u32) {
        let mut a = self.answer.lock().expect("lock");
        a.0 = addrs.to_vec();
        a.1 = ttl;
    }

    fn silence(&self) {
        self.answer.lock().expect("lock").2 = true;
    }
}

/// A DNS response to `query`: its header and question echoed, the A records when it asks for
/// A (type 1), none otherwise.
fn reply(query: &[u8], addrs: &[Ipv4Addr], ttl: u32) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + query[i] as usize;
    }
    let qend = i + 5;
    let question = query.get(12..qend)?;
    let qtype = u16::from_be_bytes([query[i + 1], query[i + 2]]);
    let answers: &[Ipv4Addr] = if qtype == 1 { addrs } else { &[] };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[..2]); // id
    out.extend_from_slice(&[0x81, 0x80]); // response, recursion desired + available, NOERROR
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 0x0c]); // the name: a pointer to the question
        out.extend_from_slice(&[0, 1, 0, 1]); // A, IN
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// An upstream on `ip:port` that counts requests and closes every connection after answering,
/// so each request through the gateway needs a new connection (and a fresh choice of address).
struct Counted {
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn counted(ip: Ipv4Addr, port: u16) -> Option<Counted> {
    let listener = TcpListener::bind((ip, port)).await.ok()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    h.fetch_add(1, Ordering::Relaxed);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("connection", "close")
                                .body(Full::new(Bytes::from(ip.to_string())))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Some(Counted { hits, task })
}

/// Upstreams on 127.0.0.2, .3 and .4, all on one port (a hostname endpoint names one port).
async fn upstreams() -> (u16, Vec<Counted>) {
    for _ in 0..20 {
        let first = TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let port = first.local_addr().expect("addr").port();
        drop(first);
        let mut all = Vec::new();
        for last in [2, 3, 4] {
            match counted(Ipv4Addr::new(127, 0, 0, last), port).await {
                Some(c) => all.push(c),
                None => break,
            }
        }
        if all.len() == 3 {
            return (port, all);
        }
    }
    panic!("no port free on 127.0.0.2-4");
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn config(env: &Env, ns: SocketAddr, endpoint: &str, extra: &str) -> String {
    let yaml = pool_config(env, &[endpoint], extra);
    format!("{yaml}dns:\n  nameservers: [\"{ns}\"]\n")
}

async fn send(addr: SocketAddr, n: usize) {
    for _ in 0..n {
        assert_eq!(status(addr, "globex.gw.test", "/x").await, StatusCode::OK);
    }
}

fn hits(ups: &[Counted]) -> Vec<usize> {
    ups.iter().map(|u| u.hits.load(Ordering::Relaxed)).collect()
}

/// Sends requests until one reaches upstream `idx`, for at most `limit`.
async fn until_served_by(addr: SocketAddr, ups: &[Counted], idx: usize, limit: Duration) {
    let start = Instant::now();
    let before = ups[idx].hits.load(Ordering::Relaxed);
    while ups[idx].hits.load(Ordering::Relaxed) == before {
        assert!(
            start.elapsed() < limit,
            "traffic never moved to the new address: hits {:?}",
            hits(ups)
        );
        send(addr, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_hostname_endpoint_uses_every_address_and_follows_the_records_ttl() {
    let env = Env::new();
    let (port, ups) = upstreams().await;
    let ns = Nameserver::start(&[ip(2), ip(3)], 1).await;
    let yaml = config(
        &env,
        ns.addr,
        &format!("http://svc.internal.test:{port}"),
        "",
    );
    let (_gw, running) = env.start(&yaml).await;
    let addr = running.addr("http").expect("http listener");

    send(addr, 10).await;
    let h = hits(&ups);
    assert_eq!(
        h[0] + h[1],
        10,
        "every request served by the two addresses: {h:?}"
    );
    assert!(
        h[0] >= 4 && h[1] >= 4,
        "both addresses share the connections: {h:?}"
    );
    assert_eq!(h[2], 0);

    // The record changes; its 1 s TTL brings the gateway to the new address without a reload.
    ns.set(&[ip(4)], 1);
    until_served_by(addr, &ups, 2, Duration::from_secs(10)).await;
    let before = hits(&ups);
    send(addr, 6).await;
    let after = hits(&ups);
    assert_eq!(
        (
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ),
        (0, 0, 6),
        "the old addresses are no longer used"
    );
}

#[tokio::test]
async fn dns_refresh_ms_re_resolves_before_a_long_ttl_expires() {
    let env = Env::new();
    let (port, ups) = upstreams().await;
    let ns = Nameserver::start(&[ip(2)], 3600).await;
    let yaml = config(
        &env,
        ns.addr,
        &format!("http://svc.internal.test:{port}"),
        ", dns_refresh_ms: 200",
    );
    let (_gw, running) = env.start(&yaml).await;
    let addr = running.addr("http").expect("http listener");
    send(addr, 3).await;
    assert_eq!(hits(&ups)[0], 3);

    // Re-resolved in the background, with no request waiting on it.
    let asked = ns.queries.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        ns.queries.load(Ordering::Relaxed) > asked,
        "dns_refresh_ms asks again while the hour-long TTL runs"
    );
    ns.set(&[ip(3)], 3600);
    until_served_by(addr, &ups, 1, Duration::from_secs(10)).await;
}

/// The standard config with `connect_ms: 300` and `request_ms: 30000` for globex's plan.
fn short_connect(yaml: String) -> String {
    yaml.replace(
        "free: { timeouts: { connect_ms: 1000,",
        "free: { timeouts: { connect_ms: 300,",
    )
    .replace(
        "request_ms: 5000 } }\n  enterprise",
        "request_ms: 30000 } }\n  enterprise",
    )
}

/// A globex request fails (502/504) well before `request_ms` (30 s): `what` counted against
/// `connect_ms` (300 ms; a retry may spend it twice).
async fn assert_bounded_by_connect_ms(running: &tenant_gateway::gateway::Running, what: &str) {
    let start = Instant::now();
    let got = h1(
        running.addr("http").expect("http listener"),
        get("globex.gw.test", "/x"),
    )
    .await;
    assert!(
        got.status == StatusCode::BAD_GATEWAY || got.status == StatusCode::GATEWAY_TIMEOUT,
        "{:?} {:?}",
        got.status,
        got.body
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{what} must count against connect_ms: {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_nameserver_that_never_answers_is_bounded_by_connect_ms() {
    let env = Env::new();
    let (port, _ups) = upstreams().await;
    let ns = Nameserver::start(&[ip(2)], 60).await;
    ns.silence();
    let yaml = short_connect(config(
        &env,
        ns.addr,
        &format!("http://svc.internal.test:{port}"),
        "",
    ));
    let (_gw, running) = env.start(&yaml).await;
    // The resolver's own timeouts (5 s, twice) would take ten seconds.
    assert_bounded_by_connect_ms(&running, "DNS").await;
    assert!(
        ns.queries.load(Ordering::Relaxed) > 0,
        "the nameserver was asked"
    );
}

#[tokio::test]
async fn a_tls_handshake_that_stalls_is_bounded_by_connect_ms() {
    let env = Env::new();
    // Accepts TCP and never says a word: the TLS handshake never completes.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let stalled = listener.local_addr().expect("addr");
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    let d = env.dir.path().display();
    let yaml = short_connect(pool_config(
        &env,
        &[&format!("https://{stalled}")],
        &format!(", tls: {{ ca_file: {d}/ca.crt, server_name: upstream.gw.test }}"),
    ));
    let (_gw, running) = env.start(&yaml).await;
    assert_bounded_by_connect_ms(&running, "the TLS handshake").await;
}

#[tokio::test]
async fn check_refuses_a_malformed_host_and_a_zero_refresh() {
    let env = Env::new();
    for (endpoint, extra, expect) in [
        (
            "http://bad_host!.test:80",
            "",
            "neither an IP address nor a hostname",
        ),
        (
            "http://svc.test:80",
            ", dns_refresh_ms: 0",
            "dns_refresh_ms",
        ),
    ] {
        let yaml = pool_config(&env, &[endpoint], extra);
        let raw: tenant_gateway::config::raw::RawConfig =
            serde_yaml::from_str(&yaml).expect("yaml");
        let err = tenant_gateway::config::compile(&raw, "h").expect_err("refused");
        assert!(err.to_string().contains(expect), "{endpoint}: {err}");
    }
    let yaml = format!(
        "{}dns:\n  nameservers: [\"not-an-ip\"]\n",
        pool_config(&env, &["http://svc.test:80"], "")
    );
    let raw: tenant_gateway::config::raw::RawConfig = serde_yaml::from_str(&yaml).expect("yaml");
    let err = tenant_gateway::config::compile(&raw, "h").expect_err("refused");
    assert!(err.to_string().contains("dns.nameservers[0]"), "{err}");
}
