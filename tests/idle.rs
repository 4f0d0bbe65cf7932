//! Idle keep-alive connections park: once an HTTP/1 connection has had no request in progress
//! for a moment, the gateway drops hyper's connection state and buffers and waits for the next
//! request's first byte holding only the socket. These tests take the client's side: a
//! keep-alive connection keeps working after an idle period at every stage (before the first
//! request, between requests, pipelined requests arriving together after a pause), over plain
//! TCP and TLS, and HTTP/2 connections are never cut by it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than the gateway's park delay (250 ms).
const PAUSE: Duration = Duration::from_millis(600);

fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: globex.gw.test\r\n\r\n")
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body); returns status and body.
async fn response<S: AsyncRead + Unpin>(s: &mut S, pending: &mut Vec<u8>) -> (u16, Vec<u8>) {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let status: u16 = head[9..12].parse().expect("status");
            let len = content_length(&head);
            while pending.len() < end + 4 + len {
                read_more(s, pending).await;
            }
            let body = pending[end + 4..end + 4 + len].to_vec();
            pending.drain(..end + 4 + len);
            return (status, body);
        }
        read_more(s, pending).await;
    }
}

async fn read_more<S: AsyncRead + Unpin>(s: &mut S, pending: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no answer within 5 s")
        .expect("read");
    assert!(n > 0, "the gateway closed the keep-alive connection");
    pending.extend_from_slice(&buf[..n]);
}

async fn parked(admin: SocketAddr) -> u64 {
    let got = h1(admin, get("admin", "/metrics")).await;
    let text = String::from_utf8_lossy(&got.body).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("gateway_parked_connections "))
        .expect("parked_connections metric")
        .trim()
        .parse()
        .expect("number")
}

/// Idle before the first request, idle between requests (parked, then served again on the
/// same connection), then two pipelined requests in one write after another pause.
async fn keep_alive_survives_idle<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, admin: SocketAddr) {
    let mut pending = Vec::new();
    tokio::time::sleep(PAUSE).await;
    s.write_all(request("/first").as_bytes())
        .await
        .expect("write");
    assert_eq!(response(&mut s, &mut pending).await.0, 200);

    tokio::time::sleep(PAUSE).await;
    assert_eq!(parked(admin).await, 1, "the idle connection is parked");
    s.write_all(request("/second").as_bytes())
        .await
        .expect("write");
    assert_eq!(response(&mut s, &mut pending).await.0, 200);
    assert_eq!(parked(admin).await, 0, "serving again, not parked");

    tokio::time::sleep(PAUSE).await;
    let two = format!("{}{}", request("/third"), request("/fourth"));
    s.write_all(two.as_bytes()).await.expect("write");
    assert_eq!(response(&mut s, &mut pending).await.0, 200);
    assert_eq!(response(&mut s, &mut pending).await.0, 200);

    // A request whose head arrives in two parts across the park delay is still served.
    tokio::time::sleep(PAUSE).await;
    s.write_all(b"GET /split HTTP/1.1\r\nHo")
        .await
        .expect("write");
    tokio::time::sleep(PAUSE).await;
    s.write_all(b"st: globex.gw.test\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(response(&mut s, &mut pending).await.0, 200);
}

#[tokio::test]
async fn a_plain_keep_alive_connection_parks_and_is_served_again() {
    let env = Env::new();
    let up = Upstream::start("shared").await;
    let (_gw, running) = env.start(&env.config(&up.url(), &up.url())).await;
    let s = TcpStream::connect(running.addr("http").expect("http"))
        .await
        .expect("connect");
    keep_alive_survives_idle(s, running.addr("admin").expect("admin")).await;
    let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/first", "/second", "/third", "/fourth", "/split"]);
}

#[tokio::test]
async fn a_tls_keep_alive_connection_parks_and_is_served_again() {
    let env = Env::new();
    let up = Upstream::start("shared").await;
    let (_gw, running) = env.start(&env.config(&up.url(), &up.url())).await;
    let addr = running.addr("https").expect("https");
    let conn = tls_connect(&env, addr, Some("globex.gw.test"), &[b"http/1.1"]).await;
    keep_alive_survives_idle(conn.stream, running.addr("admin").expect("admin")).await;
    assert_eq!(up.requests().len(), 5);
}

#[tokio::test]
async fn a_parked_connection_still_closes_when_idle_and_the_gauge_drops() {
    let env = Env::new();
    let up = Upstream::start("shared").await;
    let yaml = env
        .config(&up.url(), &up.url())
        .replace("admin: {", "limits: { idle_timeout_ms: 1200 }\nadmin: {");
    let (_gw, running) = env.start(&yaml).await;
    let admin = running.addr("admin").expect("admin");
    let mut s = TcpStream::connect(running.addr("http").expect("http"))
        .await
        .expect("connect");
    let mut pending = Vec::new();
    s.write_all(request("/").as_bytes()).await.expect("write");
    assert_eq!(response(&mut s, &mut pending).await.0, 200);
    tokio::time::sleep(PAUSE).await;
    assert_eq!(parked(admin).await, 1);
    // Closed by the idle timeout while parked.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed within the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    assert_eq!(parked(admin).await, 0);
}

#[tokio::test]
async fn http2_connections_are_not_parked_and_keep_their_streams_after_a_pause() {
    let env = Env::new();
    let up = Upstream::start("shared").await;
    let (_gw, running) = env.start(&env.config(&up.url(), &up.url())).await;
    let admin = running.addr("admin").expect("admin");
    let conn = tls_connect(
        &env,
        running.addr("https").expect("https"),
        Some("globex.gw.test"),
        &[b"h2"],
    )
    .await;
    let mut sender = h2_sender(conn).await;
    for _ in 0..2 {
        let got = h2_send(&mut sender, get_h2("globex.gw.test", "/h2")).await;
        assert_eq!(got.status, StatusCode::OK);
        tokio::time::sleep(PAUSE).await;
        assert_eq!(parked(admin).await, 0);
    }

    // HTTP/2 with prior knowledge on the plain listener, too.
    let stream = TcpStream::connect(running.addr("http").expect("http"))
        .await
        .expect("connect");
    let (mut h2c, c) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(c);
    for _ in 0..2 {
        let req = http::Request::builder()
            .uri("http://globex.gw.test/h2c")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let got = h2c
            .send_request(req)
            .await
            .expect("h2c stream after a pause");
        assert_eq!(got.status(), StatusCode::OK);
        tokio::time::sleep(PAUSE).await;
    }
    assert_eq!(parked(admin).await, 0);
}

#[tokio::test]
async fn a_parked_connection_ends_at_once_when_the_gateway_drains() {
    let env = Env::new();
    let up = Upstream::start("shared").await;
    // A long grace period: the drain must not wait for it to end a parked connection.
    let yaml = env
        .config(&up.url(), &up.url())
        .replace("admin: {", "limits: { shutdown_grace_ms: 30000 }\nadmin: {");
    let (_gw, running) = env.start(&yaml).await;
    let admin = running.addr("admin").expect("admin");
    let mut s = TcpStream::connect(running.addr("http").expect("http"))
        .await
        .expect("connect");
    let mut pending = Vec::new();
    s.write_all(request("/").as_bytes()).await.expect("write");
    assert_eq!(response(&mut s, &mut pending).await.0, 200);
    tokio::time::sleep(PAUSE).await;
    assert_eq!(parked(admin).await, 1);
    tokio::time::timeout(Duration::from_secs(10), running.shutdown())
        .await
        .expect("the drain ends the parked connection instead of waiting out the grace period");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
}
