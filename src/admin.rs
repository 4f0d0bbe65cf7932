//! The admin listener (loopback by default): `GET /healthz`, `GET /readyz`, `GET /metrics`,
//! `GET /config`, `POST /reload`. Plain HTTP/1.1; it never serves tenant traffic.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::gateway::Gateway;

/// Serves the admin API on `listener` until `shutdown` turns true.
pub async fn run(listener: TcpListener, gw: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(route(&gw, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

async fn route(gw: &Arc<Gateway>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "alive"})),
        (&Method::GET, "/readyz") => {
            let draining = gw.is_draining();
            let store = match gw.rate_limit_store() {
                None => "disabled",
                Some(s) if s.is_degraded() => "degraded",
                Some(_) => "ok",
            };
            let status = if draining {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            json(
                status,
                serde_json::json!({
                    "ready": !draining,
                    "config_loaded": true,
                    "listeners_bound": true,
                    "draining": draining,
                    "rate_limit_store": store,
                }),
            )
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            {
                if let Some(s) = gw.rate_limit_store() {
                    gw.metrics().store_degraded.set(i64::from(s.is_degraded()));
                }
                gw.metrics().render()
            },
        ),
        (&Method::GET, "/config") => {
            let snap = gw.snapshot();
            let loaded_at = snap
                .loaded_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            json(
                StatusCode::OK,
                serde_json::json!({
                    "generation": gw.generation(),
                    "hash": snap.content_hash,
                    "loaded_at": loaded_at,
                    "tenants": snap.tenants.len(),
                    "routes": snap.route_count(),
                    "upstreams": snap.upstreams.len(),
                    "certificates": snap.certs.len(),
                    "last_reload_error": gw.last_reload_error(),
                }),
            )
        }
        (&Method::GET, "/.well-known/tenant-signing-keys") => {
            let snap = gw.snapshot();
            json(
                StatusCode::OK,
                crate::signing::jwks(snap.signing.keys.iter().map(|k| &**k)),
            )
        }
        (&Method::GET, p) if crate::usage::usage_route(p).is_some() => {
            let id = crate::usage::usage_route(p).unwrap_or_default();
            let (status, body) = crate::usage::tenant_usage(gw, id).await;
            json(status, body)
        }
        (&Method::POST, "/reload") => {
            let g = gw.clone();
            match tokio::task::spawn_blocking(move || g.reload()).await {
                Ok(Ok(generation)) => json(
                    StatusCode::OK,
                    serde_json::json!({"reloaded": true, "generation": generation}),
                ),
                Ok(Err(errors)) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({
                        "reloaded": false,
                        "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    }),
                ),
                Err(_) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"reloaded": false}),
                ),
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/config" | "/reload") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method_not_allowed"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found"}),
        ),
    }
}
