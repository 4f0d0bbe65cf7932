//! The request path, top to bottom. `handle` runs the phases in order against one snapshot:
//!
//! ```text
//! accept/TLS (SNI) → resolve tenant → authenticate token → admit (limits) → route → forward → respond + log
//! ```
//!
//! Each phase lives in its own module and returns `Result<_, GatewayError>`; the first error
//! becomes the response, written by `GatewayError::into_response`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::admit::admit;
use crate::body::ProxyBody;
use crate::conn::{ActiveRequest, ConnInfo};
use crate::error::GatewayError;
use crate::forward::{Forwarding, Hold, Upgrades, forward};
use crate::headers::forwarding;
use crate::headers::framing::check_request;
use crate::limits::{self, RateLimitHeaders, TenantStats};
use crate::metrics::Metrics;
use crate::normalize::{PathError, PathPolicy, match_path, normalize_path};
use crate::route::select_route;
use crate::shared::Shared;
use crate::signing::unix_now;
use crate::snapshot::Snapshot;
use crate::snapshot::TenantId;
use crate::tenant::{SourceSet, admit_status, agree, apikey_tenant, request_host, resolve_tenant};
use crate::token::TokenAuth;

/// What the phases learned, for the response headers, metrics and the access log.
#[derive(Default)]
pub struct Outcome {
    pub ratelimit: Option<RateLimitHeaders>,
    /// The `"quota"` policy's headers, listed after the per-second policy's.
    pub quota: Option<RateLimitHeaders>,
    pub tenant: Option<TenantId>,
    pub sources: Option<SourceSet>,
    pub route: Option<Box<str>>,
    pub upstream: Option<Box<str>>,
}

/// hyper's service entry point: never fails; every refusal is an HTTP response.
pub async fn handle(
    gw: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let snap = gw.snapshot();
    let request_id = forwarding::request_id(req.headers().get(&forwarding::X_REQUEST_ID));
    let method = req.method().clone();
    let path = snap.access_log.then(|| req.uri().path().to_owned());
    let client = snap
        .access_log
        .then(|| crate::proxy_protocol::client_ip(&snap.trusted_proxies, &conn, req.headers()));
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut out = Outcome::default();
    let span =
        tracing::debug_span!("request", request_id = request_id.to_str().unwrap_or(""), %method);
    let http1 = req.version() < http::Version::HTTP_2;
    let active = ActiveRequest::new(conn.clone());
    let mut resp = match run_phases(&gw, &snap, &conn, req, &request_id, &mut out, active)
        .instrument(span)
        .await
    {
        Ok(resp) => resp,
        Err(err) => {
            match &err {
                GatewayError::UpstreamUnavailable(kind) => {
                    Metrics::count(&gw.metrics().upstream_errors, "kind", kind.as_str())
                }
                GatewayError::UpstreamTimeout => {
                    Metrics::count(&gw.metrics().upstream_errors, "kind", "timeout")
                }
                _ => {}
            }
            if let Some(id) = out.tenant {
                snap.tenant(id).stats.refused.count(&err);
            }
            let close = http1 && err.closes_connection();
            let mut resp = if grpc {
                err.into_grpc_response()
            } else {
                err.into_response()
            };
            if close {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    };
    let headers = resp.headers_mut();
    if let Some((policy, state)) = out.ratelimit.take() {
        headers.insert(limits::RATELIMIT_POLICY.clone(), policy);
        headers.insert(limits::RATELIMIT.clone(), state);
    }
    if let Some((policy, state)) = out.quota.take() {
        crate::quota::append_policy(headers, &limits::RATELIMIT_POLICY, policy);
        crate::quota::append_policy(headers, &limits::RATELIMIT, state);
    }
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    let tenant = out.tenant.map(|id| snap.tenant(id));
    match tenant {
        Some(t) => t.stats.responses.observe(status, elapsed),
        None => gw.metrics().unknown.responses.observe(status, elapsed),
    }
    if let Some(t) = tenant {
        resp = crate::usage::count_response(resp, t.stats.clone());
    }
    if let Some(path) = path {
        let bytes = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        tracing::info!(
            target: "access",
            request_id = request_id.to_str().unwrap_or(""),
            remote = %conn.remote,
            client = client.as_ref().and_then(|c| c.to_str().ok()).unwrap_or(""),
            tls = conn.tls,
            method = %method,
            path = %path,
            tenant = tenant.map_or("-", |t| &*t.name),
            source = out.sources.map_or("", |s| s.as_str()),
            route = out.route.as_deref().unwrap_or("-"),
            upstream = out.upstream.as_deref().unwrap_or("-"),
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            bytes,
            "request"
        );
    }
    resp.headers_mut()
        .insert(forwarding::X_REQUEST_ID.clone(), request_id);
    Ok(resp)
}

async fn run_phases(
    gw: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    request_id: &HeaderValue,
    out: &mut Outcome,
    active: ActiveRequest,
) -> Result<Response<ProxyBody>, GatewayError> {
    if req.version() == http::Version::HTTP_2 {
        conn.head_scan().disable();
    }
    check_request(&req, &snap.limits, conn.head_scan().content_length_lines())?;
    // normalise: one path for routing, signing and forwarding
    normalize_target(&mut req, snap.limits.path)?;
    // resolve tenant (connection sources)
    let host = request_host(&req)?;
    let by_conn = resolve_tenant(snap, conn.sni.as_deref(), host)?;
    let by_conn = crate::tenant::join_cert(snap, conn.client_sans(), by_conn)?;
    // authenticate token (and API key)
    let claims = match (&snap.token, TokenAuth::bearer(req.headers())?) {
        (Some(auth), Some(token)) => Some(auth.authenticate(token, unix_now())?),
        _ => None,
    };
    let by_key = apikey_tenant(snap, &req)?;
    let identity = agree(snap, by_conn, claims.as_deref(), by_key)?;
    if let Some(id) = identity {
        out.tenant = Some(id.tenant);
        out.sources = Some(id.sources);
    }
    let identity = admit_status(snap, identity)?;
    let tenant = snap.tenant(identity.tenant);
    // route
    let path = match req.uri().path() {
        // `OPTIONS *` goes where the root goes, under the root's requirements.
        "*" => "/",
        p => p,
    };
    let (route, required) = select_route(snap, tenant, &match_path(path))?;
    if snap.access_log {
        out.route = Some(route.path_prefix.clone());
        out.upstream = Some(route.upstream.name.clone());
    }
    if required.token && claims.is_none() {
        return Err(GatewayError::TokenRequired);
    }
    if required.apikey && by_key.is_none() {
        return Err(GatewayError::InvalidApiKey);
    }
    // admit (limits)
    let admission = admit(
        tenant,
        gw.rate_limit_store(),
        gw.meter(),
        &mut out.ratelimit,
        &mut out.quota,
    )
    .await?;
    // forward
    let fwd = Forwarding {
        tenant,
        identity,
        subject: claims.as_ref().and_then(|c| c.subject.as_ref()),
        claims: claims.as_ref().map_or(&[], |c| c.forwarded.as_slice()),
        request_id,
        signer: route.upstream.signer.as_ref(),
    };
    let client = tenant.clients.for_pool(&route.upstream);
    // fair share of the pool (only pools with a `capacity`)
    let pool_slot = match route.upstream.capacity() {
        None => None,
        Some(queue) => {
            let (slot, waited) = queue
                .acquire(&tenant.name, tenant.limits.weight)
                .await
                .map_err(|_| {
                    TenantStats::bump(&tenant.stats.saturated);
                    GatewayError::UpstreamSaturated
                })?;
            if !waited.is_zero() {
                tenant.stats.observe_queue_wait(waited);
            }
            Some(slot)
        }
    };
    let hold = Hold {
        permit: admission.permit,
        pool_slot,
        active,
    };
    let upgrades = Upgrades {
        cell: &gw.snapshot,
        reloads: &gw.reloads,
        open: &gw.upgraded,
    };
    forward(upgrades, client, snap, conn, &fwd, route, req, hold).await
}

/// Normalises the request target in place (SPEC "Request normalisation"): origin-form only
/// (or `*` for OPTIONS), the path as `normalize::normalize_path` makes it, the query untouched.
/// HTTP/2 requests carry their scheme and authority in the URI; only `:path` is looked at.
pub fn normalize_target<B>(req: &mut Request<B>, policy: PathPolicy) -> Result<(), GatewayError> {
    let uri = req.uri();
    if req.version() < http::Version::HTTP_2
        && (uri.scheme().is_some() || uri.authority().is_some())
    {
        return Err(GatewayError::InvalidPath(PathError::NotOriginForm));
    }
    let Some(pq) = uri.path_and_query() else {
        return Err(GatewayError::InvalidPath(PathError::NotOriginForm));
    };
    if pq.as_str() == "*" && req.method() == http::Method::OPTIONS {
        return Ok(());
    }
    let Some(path) = normalize_path(pq.path(), policy).map_err(GatewayError::InvalidPath)? else {
        return Ok(());
    };
    let target = match pq.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(target)
            .map_err(|_| GatewayError::InvalidPath(PathError::BadEscape))?,
    );
    *req.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|_| GatewayError::InvalidPath(PathError::NotOriginForm))?;
    Ok(())
}
