//! Caps that hold: a response whose client stops reading, or whose upstream stops sending, is
//! cut after `limits.stream_idle_timeout_ms` and gives back the tenant's slot. In a test binary
//! of its own, so the process RSS it checks is the gateway's alone.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers every request with a 50 MB body (or, with `stall`, a head and a
/// few bytes, then nothing), written as fast as the reader takes it.
async fn big_upstream(stall: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let len = 50 * 1024 * 1024;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                if stall {
                    let _ = s.write_all(&[b'x'; 1000]).await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..len / chunk.len() {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_response_nobody_moves_is_cut_and_frees_the_tenant_slot() {
    for stall in [false, true] {
        let env = Env::new();
        let url = big_upstream(stall).await;
        let yaml = with_tenant_lines(&env.config(&url, &url), "globex", "    max_concurrent: 1\n")
            .replace("plans:", "limits: { stream_idle_timeout_ms: 500 }\nplans:");
        let (_gw, running) = env.start(&yaml).await;
        let http = running.addr("http").expect("http");
        let rss_before = rss_kb();
        // A client that reads the head and a little of the body, then stops reading.
        let mut stuck = TcpStream::connect(http).await.expect("connect");
        stuck
            .write_all(b"GET /big HTTP/1.1\r\nHost: globex.gw.test\r\n\r\n")
            .await
            .expect("write");
        let mut first = [0u8; 1024];
        let n = stuck.read(&mut first).await.expect("read");
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        // Its slot is taken: the next request is refused...
        let busy = status(http, "globex.gw.test", "/next").await;
        assert_eq!(busy, StatusCode::SERVICE_UNAVAILABLE, "stall={stall}");
        // ...until the stream idle timeout cuts the response and frees it.
        let mut freed = false;
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut s = TcpStream::connect(http).await.expect("connect");
            s.write_all(b"GET /next HTTP/1.1\r\nHost: globex.gw.test\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).await.is_ok() && &head[9..12] == b"200" {
                freed = true;
                break;
            }
        }
        assert!(freed, "stall={stall}: the slot was never freed");
        let grown_mb = rss_kb().saturating_sub(rss_before) / 1024;
        eprintln!(
            "stall={stall}: rss before {rss_before} kB, after {} kB",
            rss_kb()
        );
        assert!(grown_mb < 20, "stall={stall}: RSS grew {grown_mb} MB");
        drop(stuck);
    }
}
