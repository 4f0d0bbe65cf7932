//! The admin listener (loopback by default): `GET /healthz`, `GET /readyz`, `GET /metrics`,
//! `GET /config`, `GET /stats`, `GET /dashboard`, `POST /reload`. Plain HTTP/1.1; it never
//! serves tenant traffic.
//!
//! `admin.metrics_bind` adds a second listener that serves only `/metrics`, `/healthz` and
//! `/readyz`, so Prometheus can scrape from the network while control stays on loopback.
//! `admin.token_file` makes `POST` endpoints, `/stats`, `/dashboard` and `/config` require
//! `Authorization: Bearer <token>` (or HTTP Basic with the token as password, so a browser can
//! open the dashboard); the token is compared in constant time and never logged or shown.

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

use crate::config::errors::ConfigErrors;
use crate::shared::Shared;
use crate::stats::{self, Sampler};

/// The dashboard page: one self-contained file (inline CSS and JS, no external assets).
const DASHBOARD: &str = include_str!("dashboard.html");

// === listeners ===

/// What the admin API needs from the running gateway: its shared state, and a reload (`POST
/// /reload`), which only the gateway can do (it owns the runtime state and the config path).
pub trait AdminHost: Send + Sync + 'static {
    fn shared(&self) -> &Shared;
    fn reload(&self) -> Result<u64, ConfigErrors>;
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    /// Everything on the admin API.
    Full,
    /// `/metrics`, `/healthz`, `/readyz` only (`admin.metrics_bind`).
    ScrapeOnly,
}

/// Serves the admin API on `listener` until `shutdown` turns true.
pub async fn run(listener: TcpListener, gw: Arc<dyn AdminHost>, shutdown: watch::Receiver<bool>) {
    serve(listener, gw, shutdown, Surface::Full).await
}

/// Serves only `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` turns true.
pub async fn run_metrics(
    listener: TcpListener,
    gw: Arc<dyn AdminHost>,
    shutdown: watch::Receiver<bool>,
) {
    serve(listener, gw, shutdown, Surface::ScrapeOnly).await
}

async fn serve(
    listener: TcpListener,
    gw: Arc<dyn AdminHost>,
    mut shutdown: watch::Receiver<bool>,
    surface: Surface,
) {
    let sampler = Arc::new(Sampler::new());
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let gw = gw.clone();
        let sampler = sampler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let gw = gw.clone();
                let sampler = sampler.clone();
                async move { Ok::<_, Infallible>(route(&gw, &sampler, surface, req).await) }
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

fn unauthorized(basic: bool) -> Response<Full<Bytes>> {
    let mut r = json(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({"error": "unauthorized"}),
    );
    // A browser asks for Basic credentials (the token as password) on the dashboard.
    let challenge = if basic {
        "Basic realm=\"tenant-gateway admin\""
    } else {
        "Bearer realm=\"tenant-gateway admin\""
    };
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static(challenge),
    );
    r
}

async fn route(
    host: &Arc<dyn AdminHost>,
    sampler: &Sampler,
    surface: Surface,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let gw = host.shared();
    let path = req.uri().path();
    if surface == Surface::ScrapeOnly && !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found"}),
        );
    }
    let protected = req.method() == Method::POST
        || matches!(
            path,
            "/stats" | "/dashboard" | "/config" | "/config/effective"
        );
    if protected && !gw.snapshot().admin_access.authorized(req.headers()) {
        return unauthorized(path == "/dashboard");
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "alive"})),
        (&Method::GET, "/readyz") => {
            let draining = gw.is_draining();
            let store = match gw.rate_limit_store() {
                None => "disabled",
                Some(s) if s.is_degraded() => "degraded",
                Some(_) => "ok",
            };
            // Not ready until the identity provider's keys are in (or the grace is over).
            let jwks = gw.snapshot().jwks_ready();
            let ready = !draining && jwks;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(
                status,
                serde_json::json!({
                    "ready": ready,
                    "config_loaded": true,
                    "listeners_bound": true,
                    "draining": draining,
                    "jwks_loaded": jwks,
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
                    gw.metrics().store_replicas.set(i64::from(s.replicas()));
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
                    "config_hash": snap.config_hash,
                    "gateway_version": env!("CARGO_PKG_VERSION"),
                    "files": snap.files.iter().map(|f| f.display().to_string()).collect::<std::collections::BTreeSet<_>>(),
                    "signing": {
                        "active_kid": snap.signing.active.id(),
                        "kids": snap.signing.keys.iter().map(|k| k.id()).collect::<Vec<_>>(),
                        "version": match snap.signing.version {
                            crate::signing::SigVersion::V1 => 1,
                            crate::signing::SigVersion::V2 => 2,
                        },
                    },
                    "token_key_sources": snap.token.as_ref().map(|t| t.key_sources()).unwrap_or_default(),
                }),
            )
        }
        (&Method::GET, "/config/effective") => {
            let snap = gw.snapshot();
            json(StatusCode::OK, (*snap.effective).clone())
        }
        (&Method::GET, "/stats") => {
            let query = stats::Query::parse(req.uri().query());
            let mut r = json(StatusCode::OK, stats::collect(gw, sampler, &query));
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            r
        }
        (&Method::GET, "/dashboard") => {
            let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD);
            let h = r.headers_mut();
            // The page loads nothing from anywhere but this listener.
            h.insert(
                http::header::CONTENT_SECURITY_POLICY,
                http::HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'",
                ),
            );
            h.insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            h.insert(
                http::header::X_FRAME_OPTIONS,
                http::HeaderValue::from_static("DENY"),
            );
            r
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
            let (status, body) = crate::usage_export::tenant_usage(gw, id).await;
            json(status, body)
        }
        (&Method::POST, "/reload") => {
            let g = host.clone();
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
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/config" | "/config/effective" | "/reload"
            | "/stats" | "/dashboard",
        ) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method_not_allowed"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found"}),
        ),
    }
}
