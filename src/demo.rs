//! `tenant-gateway demo`: demo upstreams that echo what they received (and check the
//! signature), throwaway certificates when `certs/` has none, `config/demo.yaml`, and curl
//! lines that show tenant resolution, spoofed headers being stripped, and the signature.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::signing::Verifier;

/// Serves an echo upstream on `listener` until the task is dropped. Each response is JSON:
/// which upstream answered, the method, path, every header it received, the body's length and
/// SHA-256, and whether `x-tenant-signature` verified with `verifier`.
pub async fn serve_echo(listener: TcpListener, name: String, verifier: Arc<Verifier>) {
    let name: Arc<str> = name.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        let verifier = verifier.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| echo(name.clone(), verifier.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn echo(
    name: Arc<str>,
    verifier: Arc<Verifier>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let signature_valid = verifier.verify_request(&req).is_ok();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    let json = serde_json::json!({
        "upstream": &*name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "headers": headers,
        "body_bytes": body.len(),
        "body_sha256": digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "signature_valid": signature_valid,
    });
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(&json).unwrap_or_default(),
    )));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Makes dev certificates in `dir` unless it already holds a `.crt` file.
pub fn ensure_certs(dir: &Path, domain: &str, tenants: &[String]) -> std::io::Result<bool> {
    let has_certs = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.path().extension().is_some_and(|x| x == "crt"))
        })
        .unwrap_or(false);
    if has_certs {
        return Ok(false);
    }
    crate::devcerts::write(dir, domain, tenants)?;
    Ok(true)
}

/// The curl lines the demo prints, each preceded by `# expect <status>: <what it shows>`.
pub fn curl_lines(http: SocketAddr, https: SocketAddr, ca: &str, domain: &str) -> String {
    let tls = |tenant: &str| {
        format!(
            "curl -sS --cacert {ca} --resolve {tenant}.{domain}:{port}:{ip} https://{tenant}.{domain}:{port}",
            port = https.port(),
            ip = https.ip()
        )
    };
    let plain = format!("curl -sS http://{http}");
    let mut out = String::new();
    let mut line = |expect: u16, what: &str, cmd: String| {
        out.push_str(&format!("# expect {expect}: {what}\n{cmd}\n\n"));
    };
    line(
        200,
        "SNI and Host name acme; acme's dedicated upstream answers; signature_valid is true",
        format!("{}/hello", tls("acme")),
    );
    line(
        200,
        "the same over HTTP/2",
        format!("{}/hello", tls("acme")).replacen("curl -sS", "curl -sS --http2", 1),
    );
    line(
        200,
        "globex by Host on the plain listener; the spoofed x-tenant-id: acme never reaches the upstream",
        format!(
            "{plain}/orders -H 'Host: globex.{domain}' -H 'x-tenant-id: acme' -H 'x-tenant-signature: forged'"
        ),
    );
    line(
        421,
        "SNI names acme, Host names globex: misdirected_request",
        format!("{}/ -H 'Host: globex.{domain}'", tls("acme")),
    );
    line(
        404,
        "no such tenant: unknown_tenant",
        format!("{plain}/ -H 'Host: nobody.{domain}'"),
    );
    line(
        403,
        "initech is suspended: tenant_suspended",
        format!("{plain}/ -H 'Host: initech.{domain}'"),
    );
    out
}
