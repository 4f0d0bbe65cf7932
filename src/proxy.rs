//! The request path, top to bottom. `handle` runs the phases in order against one snapshot:
//!
//! ```text
//! accept/TLS (SNI) → resolve tenant → authenticate token → admit (limits) → route → forward → respond + log
//! ```
//!
//! Each phase lives in its own module and returns `Result<_, GatewayError>`; the first error
//! becomes the response, written by `GatewayError::into_response`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::error::GatewayError;
use crate::forward::{Forwarding, forward};
use crate::gateway::Gateway;
use crate::headers::forwarding;
use crate::limits::{self, RateLimitHeaders, admit};
use crate::route::select_route;
use crate::signing::unix_now;
use crate::snapshot::Snapshot;
use crate::tenant::{admit_status, agree, apikey_tenant, request_host, resolve_tenant};
use crate::token::TokenAuth;

/// What the accept phase learned about a connection, shared by its requests.
#[derive(Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The client address, ready to send as `x-forwarded-for`.
    pub client_ip: HeaderValue,
    pub tls: bool,
    /// The TLS server name, lower-case, if the client sent one.
    pub sni: Option<Box<str>>,
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, tls: bool, sni: Option<&str>) -> Self {
        Self {
            remote,
            client_ip: HeaderValue::try_from(remote.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            tls,
            sni: sni.map(|s| s.to_ascii_lowercase().into()),
        }
    }
}

/// hyper's service entry point: never fails; every refusal is an HTTP response.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let snap = gw.snapshot();
    let request_id = forwarding::request_id(req.headers().get(&forwarding::X_REQUEST_ID));
    let method = req.method().clone();
    let mut rl = None;
    let mut resp = match run_phases(&gw, &snap, &conn, req, &request_id, &mut rl).await {
        Ok(resp) => resp,
        Err(err) => {
            tracing::debug!(request_id = ?request_id, %method, error = %err, "request refused");
            err.into_response()
        }
    };
    let headers = resp.headers_mut();
    headers.insert(forwarding::X_REQUEST_ID.clone(), request_id);
    if let Some((policy, state)) = rl {
        headers.insert(limits::RATELIMIT_POLICY.clone(), policy);
        headers.insert(limits::RATELIMIT.clone(), state);
    }
    tracing::trace!(
        status = resp.status().as_u16(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "response"
    );
    Ok(resp)
}

async fn run_phases(
    gw: &Gateway,
    snap: &Snapshot,
    conn: &ConnInfo,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    rl: &mut Option<RateLimitHeaders>,
) -> Result<Response<ProxyBody>, GatewayError> {
    // resolve tenant (connection sources)
    let host = request_host(&req)?;
    let by_conn = resolve_tenant(snap, conn.sni.as_deref(), host)?;
    // authenticate token (and API key)
    let claims = match (&snap.token, TokenAuth::bearer(req.headers())?) {
        (Some(auth), Some(token)) => Some(auth.authenticate(token, unix_now())?),
        _ => None,
    };
    let by_key = apikey_tenant(snap, &req)?;
    let identity = agree(snap, by_conn, claims.as_ref(), by_key)?;
    let identity = admit_status(snap, identity)?;
    let tenant = snap.tenant(identity.tenant);
    // route
    let route = select_route(snap, tenant, req.uri().path())?;
    if route.require_token && claims.is_none() {
        return Err(GatewayError::TokenRequired);
    }
    if route.require_apikey && by_key.is_none() {
        return Err(GatewayError::InvalidApiKey);
    }
    // admit (limits)
    let admission = admit(tenant, rl).await?;
    // forward
    let fwd = Forwarding {
        tenant,
        identity,
        subject: claims.as_ref().and_then(|c| c.subject.as_ref()),
        claims: claims.as_ref().map_or(&[], |c| c.forwarded.as_slice()),
        request_id,
    };
    let client = gw.client_for(tenant.limits.connect_timeout);
    forward(&client, snap, conn, &fwd, route, req, admission.permit).await
}
