//! Phase "forward": rewrite the request for the upstream (strip, set, sign), send it through the
//! pooled client under the tenant's deadline, and stream the response back.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderName, HeaderValue, Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::body::{self, BoxError, ProxyBody};
use crate::conn::{ActiveRequest, ConnInfo};
use crate::error::{GatewayError, UpstreamFailure};
use crate::headers::{forwarding, hop};
use crate::io::{Observe, ObserveReads};
use crate::limits::TenantStats;
use crate::signing::{SignedFields, unix_now};
use crate::snapshot::{Route, Snapshot, Tenant};
use crate::tenant::Identity;
use crate::upstream::{Endpoint, UpstreamClient};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// What the identity phases learned, for the signed headers.
pub struct Forwarding<'a> {
    pub tenant: &'a Tenant,
    pub identity: Identity,
    pub subject: Option<&'a HeaderValue>,
    /// `token.forward_claims` headers (not covered by the signature).
    pub claims: &'a [(HeaderName, HeaderValue)],
    pub request_id: &'a HeaderValue,
    /// The route's pool signer (key, version, audience).
    pub signer: Option<&'a crate::signing::Signer>,
}

/// Rewrites the request head in place: hop-by-hop and client `x-tenant-*` headers out,
/// forwarding and tenant headers in, signature last (it covers the final method, authority,
/// path and request id).
pub fn rewrite_request_head(
    snap: &Snapshot,
    conn: &ConnInfo,
    fwd: &Forwarding<'_>,
    parts: &mut http::request::Parts,
) -> Result<(), GatewayError> {
    // The authority as the client named it; forwarded unchanged as Host (like Envoy's default).
    let authority = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str())
            .map_err(|_| GatewayError::BadRequest("invalid authority"))?,
        None => parts
            .headers
            .get(HOST)
            .cloned()
            .ok_or(GatewayError::BadRequest("missing Host header"))?,
    };
    let headers = &mut parts.headers;
    hop::strip(headers);
    let names = &snap.signing.names;
    names.strip_client_copies(headers);

    let client = crate::proxy_protocol::client_ip(&snap.trusted_proxies, conn, headers);
    headers.insert(forwarding::X_FORWARDED_FOR.clone(), client);
    headers.insert(
        forwarding::X_FORWARDED_PROTO.clone(),
        if conn.tls {
            forwarding::PROTO_HTTPS.clone()
        } else {
            forwarding::PROTO_HTTP.clone()
        },
    );
    headers.insert(forwarding::X_FORWARDED_HOST.clone(), authority.clone());
    headers.insert(forwarding::X_REQUEST_ID.clone(), fwd.request_id.clone());

    headers.insert(names.id.clone(), fwd.tenant.id_header.clone());
    headers.insert(names.plan.clone(), fwd.tenant.plan_header.clone());
    headers.insert(names.source.clone(), fwd.identity.sources.header_value());
    if let Some(sub) = fwd.subject {
        headers.insert(names.subject.clone(), sub.clone());
    }
    for (name, value) in fwd.claims {
        headers.insert(name.clone(), value.clone());
    }
    let authority_str = authority
        .to_str()
        .map_err(|_| GatewayError::BadRequest("invalid Host header"))?;
    let path_and_query = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let fields = SignedFields {
        request_id: fwd.request_id.to_str().unwrap_or(""),
        method: parts.method.as_str(),
        authority: authority_str,
        path_and_query,
        tenant: &fwd.tenant.name,
        plan: &fwd.tenant.plan,
        // Visible ASCII by construction (`signing::encode_subject` at token time).
        subject: fwd.subject.and_then(|s| s.to_str().ok()).unwrap_or(""),
        source: fwd.identity.sources.as_str(),
    };
    let signature = match &fwd.signer {
        Some(signer) => signer.sign(unix_now(), &fields),
        None => snap.signing.active.sign(unix_now(), &fields),
    };
    headers.insert(
        names.signature.clone(),
        HeaderValue::try_from(signature)
            .map_err(|_| GatewayError::BadRequest("unsignable request"))?,
    );
    headers.insert(HOST, authority);
    Ok(())
}

/// What a forwarded request holds until its response body has been sent: the tenant's
/// concurrency slot (if it has a cap), the pool's slot (if it has a capacity) and the
/// connection's active-request count.
pub struct Hold {
    pub permit: Option<crate::limits::ConcurrencyPermit>,
    /// The pool's fair-share slot, when the pool has a `capacity`.
    pub pool_slot: Option<crate::fairshare::Slot>,
    pub active: ActiveRequest,
}

/// What the upgrade splice needs from the running gateway, borrowed until a 101 arrives: the
/// live snapshot (the tenant is re-checked after a reload), the reload notifications and the
/// count of open upgraded connections (a drain waits for them).
#[derive(Clone, Copy)]
pub struct Upgrades<'a> {
    pub cell: &'a Arc<arc_swap::ArcSwap<Snapshot>>,
    pub reloads: &'a tokio::sync::watch::Sender<u64>,
    pub open: &'a Arc<std::sync::atomic::AtomicUsize>,
}

/// Sends the rewritten request to an endpoint of the route's pool and streams the answer back.
///
/// `hold` is kept until the response body has been sent. A body over the tenant's
/// `max_body_bytes` is refused up front when `Content-Length` says so, and cut off (never
/// forwarded whole) when it grows past the limit while streaming; a body that stalls for
/// `limits.body_timeout_ms` is cut off with 408. An idempotent request without a body is
/// retried once on another endpoint when the first could not be connected to; nothing is
/// retried once bytes may have reached an upstream.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    upgrades: Upgrades<'_>,
    client: &UpstreamClient,
    snap: &Snapshot,
    conn: &ConnInfo,
    fwd: &Forwarding<'_>,
    route: &Route,
    mut req: Request<Incoming>,
    hold: Hold,
) -> Result<Response<ProxyBody>, GatewayError> {
    // An HTTP/1.1 upgrade (WebSocket) keeps its Upgrade/Connection pair for the upstream; after
    // a 101 the two upgraded connections are spliced.
    let upgrade = upgrade_protocol(&req);
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // gRPC needs `te: trailers` end to end; TE is otherwise hop-by-hop.
    let te_trailers = parts.headers.get_all(TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    let limits = &fwd.tenant.limits;
    if let Some(max) = limits.max_body_bytes
        && content_length(&parts.headers).is_some_and(|len| len > max)
    {
        TenantStats::bump(&fwd.tenant.stats.body_too_large);
        return Err(GatewayError::BodyTooLarge);
    }
    let bodiless = body.is_end_stream();
    let cut = Arc::new(AtomicU8::new(CUT_NONE));
    let body = body::stream(RequestBody {
        inner: crate::usage::Counted::request(body, fwd.tenant.stats.clone()),
        remaining: limits.max_body_bytes.unwrap_or(u64::MAX),
        stall: StallTimer::new(snap.limits.body_timeout),
        cut: cut.clone(),
    });
    rewrite_request_head(snap, conn, fwd, &mut parts)?;
    if let Some(protocol) = &upgrade {
        parts.headers.insert(UPGRADE, protocol.clone());
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    let pool = &route.upstream;
    let (mut endpoint, mut in_flight) = pool.pick().ok_or(GatewayError::UpstreamUnavailable(
        UpstreamFailure::NoEndpoint,
    ))?;
    // Only idempotent requests whose (empty) body cannot have been sent are sent again: on
    // another endpoint after a connect failure (where another exists), or on a fresh
    // connection when a reused one was closed under them (the lean path decides that itself).
    let replayable = bodiless && upgrade.is_none() && is_idempotent(&parts.method);
    let retry =
        (pool.retry_connect_failure && replayable && pool.endpoints().len() > 1).then(|| {
            (
                crate::upstream_h1::Replay::new(&parts.method, &parts.uri, &parts.headers),
                parts.extensions.clone(),
            )
        });
    let target = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let lean = pool.is_lean();
    parts.uri = endpoint_uri(&endpoint, &target, lean)?;
    parts.version = endpoint_version(&endpoint);
    let mut upstream_req = Request::from_parts(parts, body);
    let mut retried = false;

    // Dropping the request future on timeout drops its upstream connection too: a connection
    // with a request in flight is never returned to the pool.
    let deadline = tokio::time::Instant::now() + limits.request_timeout;
    let (resp, checkin) = loop {
        let sending = send(
            client,
            pool,
            &endpoint,
            limits.connect_timeout,
            upstream_req,
            replayable,
        );
        let result = tokio::time::timeout_at(deadline, sending).await;
        match result {
            // The tenant's own deadline (which also covers a slow upload): never charged to the
            // endpoint, or one tenant's short `request_ms` would eject a shared endpoint.
            Err(_) => {
                TenantStats::bump(&fwd.tenant.stats.timed_out);
                return Err(GatewayError::UpstreamTimeout);
            }
            Ok(Err(_)) if cut.load(Ordering::Relaxed) == CUT_TOO_LARGE => {
                TenantStats::bump(&fwd.tenant.stats.body_too_large);
                return Err(GatewayError::BodyTooLarge);
            }
            Ok(Err(_)) if cut.load(Ordering::Relaxed) == CUT_STALLED => {
                return Err(GatewayError::RequestTimeout);
            }
            // The client's upload broke (it went away mid-body): not the endpoint's failure.
            Ok(Err(_)) if cut.load(Ordering::Relaxed) == CUT_CLIENT => {
                return Err(GatewayError::BadRequest("the request body was cut off"));
            }
            Ok(Err(failure)) => {
                // Refused, reset, or a broken exchange: the endpoint's failure. Busy (every
                // connection allowed to it in use) is not.
                let (connect, timed_out) = match &failure {
                    Failed::Connect { timed_out, .. } => (true, *timed_out),
                    Failed::Saturated => (true, false),
                    Failed::Exchange(_) => (false, false),
                };
                if !matches!(failure, Failed::Saturated) {
                    pool.report(&endpoint, false);
                }
                if timed_out && retry.is_none() {
                    TenantStats::bump(&fwd.tenant.stats.timed_out);
                    return Err(GatewayError::UpstreamTimeout);
                }
                tracing::warn!(upstream = %pool.name, endpoint = %endpoint.authority, error = %failure, "upstream request failed");
                match (&retry, connect && !retried) {
                    (Some((replay, extensions)), true)
                        if let Some(mut again) = replay.request() =>
                    {
                        retried = true;
                        (endpoint, in_flight) = pool.pick_except(Some(&endpoint)).ok_or(
                            GatewayError::UpstreamUnavailable(UpstreamFailure::NoEndpoint),
                        )?;
                        *again.uri_mut() = endpoint_uri(&endpoint, &target, lean)?;
                        *again.version_mut() = endpoint_version(&endpoint);
                        *again.extensions_mut() = extensions.clone();
                        upstream_req = again;
                        tracing::debug!(endpoint = %endpoint.authority, "retrying on another endpoint after a connect failure");
                    }
                    _ => {
                        return Err(match failure {
                            Failed::Saturated => {
                                TenantStats::bump(&fwd.tenant.stats.saturated);
                                GatewayError::UpstreamSaturated
                            }
                            Failed::Connect { .. } => {
                                GatewayError::UpstreamUnavailable(UpstreamFailure::Connect)
                            }
                            Failed::Exchange(_) => {
                                GatewayError::UpstreamUnavailable(UpstreamFailure::Exchange)
                            }
                        });
                    }
                }
            }
            Ok(Ok(sent)) => {
                pool.report(&endpoint, !pool.is_failure(sent.0.status()));
                break sent;
            }
        }
    };
    let guard = (in_flight, hold);
    if let (Some(protocol), Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
        (upgrade, client_upgrade, resp.status())
    {
        let watch = UpgradeWatch {
            idle: snap.limits.idle_timeout,
            tenant: fwd.tenant.name.clone(),
            close_on_suspend: snap.limits.close_upgraded_on_suspend,
            cell: upgrades.cell.clone(),
            reloads: upgrades.reloads.subscribe(),
            open: upgrades.open.clone(),
        };
        return Ok(splice_upgrade(resp, client_upgrade, protocol, watch, guard));
    }
    let (mut rparts, rbody) = resp.into_parts();
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and a proxy must remove the
    // Content-Length before forwarding; hyper re-frames the body for the client.
    // Anything but plain `chunked` is a body the client could not decode once the (hop-by-hop)
    // encoding is stripped: refuse it rather than forward it blindly.
    if let Some(te) = rparts.headers.get(TRANSFER_ENCODING) {
        if !te.as_bytes().eq_ignore_ascii_case(b"chunked") {
            tracing::warn!(upstream = %pool.name, endpoint = %endpoint.authority, "upstream response with an unsupported Transfer-Encoding");
            pool.report(&endpoint, false);
            return Err(GatewayError::UpstreamUnavailable(UpstreamFailure::Exchange));
        }
        rparts.headers.remove(CONTENT_LENGTH);
    }
    hop::strip(&mut rparts.headers);
    Ok(Response::from_parts(
        rparts,
        body::stream(Guarded::new(
            crate::upstream_h1::Returning::new(rbody, checkin),
            guard,
            snap.limits.stream_idle_timeout,
        )),
    ))
}

/// Why sending to an endpoint failed, whichever client sent it.
enum Failed {
    /// No connection could be made; `timed_out`: `connect_ms` ran out.
    Connect { timed_out: bool, error: String },
    /// Every connection the endpoint allows was busy for the whole connect timeout.
    Saturated,
    /// The exchange broke after the connection was made.
    Exchange(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect { error, .. } | Self::Exchange(error) => f.write_str(error),
            Self::Saturated => f.write_str("every connection to the endpoint is busy"),
        }
    }
}

/// Sends one request to `endpoint`: over the pool's own HTTP/1.1 connections for `http://`
/// pools ([`crate::upstream_h1`]), through the pooled client for `https://` and `h2c://`.
async fn send(
    client: &UpstreamClient,
    pool: &crate::upstream::UpstreamPool,
    endpoint: &Arc<Endpoint>,
    connect_timeout: Duration,
    req: Request<ProxyBody>,
    replayable: bool,
) -> Result<(Response<Incoming>, Option<crate::upstream_h1::Checkin>), Failed> {
    use crate::upstream_h1::{Replay, SendError};
    if !pool.is_lean() {
        return client.request(req).await.map(|r| (r, None)).map_err(|e| {
            let error = error_chain(&e);
            if e.is_connect() {
                Failed::Connect {
                    timed_out: is_timeout(&e),
                    error,
                }
            } else {
                Failed::Exchange(error)
            }
        });
    }
    let replay = |req: &Request<ProxyBody>| {
        replayable.then(|| Replay::new(req.method(), req.uri(), req.headers()))
    };
    let target = crate::upstream_h1::Target {
        authority: &endpoint.authority,
        addr: endpoint.addr,
        name: endpoint.dns.as_deref(),
        dns: pool.dns.as_deref(),
        conns: endpoint.conns(),
    };
    crate::upstream_h1::send(target, pool.conn, connect_timeout, req, replay)
        .await
        .map_err(|e| match e {
            SendError::Connect(io) => Failed::Connect {
                timed_out: io.kind() == std::io::ErrorKind::TimedOut,
                error: format!("connect: {}", error_chain(&io)),
            },
            SendError::Saturated => Failed::Saturated,
            SendError::Exchange(e) => Failed::Exchange(error_chain(&e)),
        })
}

/// The request target for `endpoint`: origin-form for the lean HTTP/1.1 path (it writes the
/// URI as given), absolute for the pooled client (it picks the connection by it).
fn endpoint_uri(
    endpoint: &Endpoint,
    target: &PathAndQuery,
    lean: bool,
) -> Result<Uri, GatewayError> {
    if lean {
        return Ok(Uri::from(target.clone()));
    }
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(endpoint.scheme.clone());
    uri.authority = Some(endpoint.authority.clone());
    uri.path_and_query = Some(target.clone());
    Uri::from_parts(uri).map_err(|_| GatewayError::BadRequest("invalid request target"))
}

/// Upstreams speak HTTP/1.1, or HTTP/2 for h2c:// pools, whatever the client spoke.
fn endpoint_version(endpoint: &Endpoint) -> Version {
    if endpoint.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    }
}

/// RFC 9110 §9.2.2.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The protocol of an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade: <p>`).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req.headers().get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    asks.then(|| req.headers().get(UPGRADE).cloned()).flatten()
}

/// Answers the client's upgrade with the upstream's 101 and copies bytes both ways until either
/// side closes. `guard` (the endpoint's in-flight count and the tenant's concurrency slot) lives
/// as long as the upgraded connection.
///
/// The splice ends when either side closes, after `idle_timeout` without a byte either way, or
/// (when `close_upgraded_on_suspend`) when a reload suspends or removes the tenant.
fn splice_upgrade<G: Send + 'static>(
    mut upstream_resp: Response<Incoming>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    protocol: HeaderValue,
    watch: UpgradeWatch,
    guard: G,
) -> Response<ProxyBody> {
    let upstream_upgrade = hyper::upgrade::on(&mut upstream_resp);
    let (mut rparts, _) = upstream_resp.into_parts();
    hop::strip(&mut rparts.headers);
    rparts.headers.insert(UPGRADE, protocol);
    rparts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    watch.open.fetch_add(1, Ordering::Relaxed);
    let open = OpenUpgrade(watch.open.clone());
    tokio::spawn(async move {
        let _guard = (guard, open);
        let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) else {
            return;
        };
        let last = Arc::new(AtomicU64::new(0));
        let started = std::time::Instant::now();
        let mut client = ObserveReads::new(
            hyper_util::rt::TokioIo::new(client),
            Activity {
                last: last.clone(),
                started,
            },
        );
        let mut upstream = ObserveReads::new(
            hyper_util::rt::TokioIo::new(upstream),
            Activity {
                last: last.clone(),
                started,
            },
        );
        let tenant = watch.tenant.clone();
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            _ = idle(last, started, watch.idle) => {
                tracing::debug!(%tenant, "upgraded connection idle; closing");
            }
            _ = suspended(watch) => {
                tracing::info!(%tenant, "tenant suspended or removed; closing upgraded connection");
            }
        }
    });
    Response::from_parts(rparts, body::full(Bytes::new()))
}

/// What an upgraded connection watches while it lives.
struct UpgradeWatch {
    idle: std::time::Duration,
    tenant: Box<str>,
    close_on_suspend: bool,
    cell: Arc<arc_swap::ArcSwap<Snapshot>>,
    reloads: tokio::sync::watch::Receiver<u64>,
    /// The gateway's count of open upgraded connections.
    open: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts an upgraded connection while it lives.
struct OpenUpgrade(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OpenUpgrade {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once nothing has moved for `limit` (checked a few times per period).
async fn idle(last: Arc<AtomicU64>, started: std::time::Instant, limit: std::time::Duration) {
    let tick = (limit / 4).max(std::time::Duration::from_millis(10));
    loop {
        tokio::time::sleep(tick).await;
        let quiet_since = std::time::Duration::from_millis(last.load(Ordering::Relaxed));
        if started.elapsed().saturating_sub(quiet_since) >= limit {
            return;
        }
    }
}

/// Resolves when a reload suspends or removes the tenant (never, if not configured).
async fn suspended(mut w: UpgradeWatch) {
    if !w.close_on_suspend {
        return std::future::pending().await;
    }
    while w.reloads.changed().await.is_ok() {
        let snap = w.cell.load();
        let active = snap
            .tenant_ids
            .get(&w.tenant)
            .is_some_and(|id| snap.tenant(*id).status == crate::snapshot::TenantStatus::Active);
        if !active {
            return;
        }
    }
    std::future::pending().await
}

/// Records when bytes last arrived on an upgraded connection (ms since `started`).
struct Activity {
    last: Arc<AtomicU64>,
    started: std::time::Instant,
}

impl Observe for Activity {
    fn observe(&mut self, _bytes: &[u8]) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// An error with its causes, `a: b: c` (the TLS reason sits deep in a connect error).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

/// Whether an error's cause chain holds an I/O timeout (the connector's connect timeout).
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = err.source();
    }
    false
}

const CUT_NONE: u8 = 0;
const CUT_TOO_LARGE: u8 = 1;
const CUT_STALLED: u8 = 2;
const CUT_CLIENT: u8 = 3;

/// The client's request body on its way upstream. It fails (so the upstream sees a cut-off
/// body, never a complete one) once more than `remaining` bytes have passed, or when no bytes
/// arrive for `timeout` (slow POST); `cut` tells the caller which, for the 413 or 408.
///
/// The stall timer is allocated only when the body first has to wait, so bodies that arrive
/// with their head cost nothing extra.
pub struct RequestBody<B> {
    inner: B,
    remaining: u64,
    stall: StallTimer,
    cut: Arc<AtomicU8>,
}

/// A deadline that moves with progress: allocated the first time a body has to wait, re-armed
/// when a frame has passed since, and ready once nothing moved for `timeout`.
struct StallTimer {
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame passed since the timer was last set.
    progressed: bool,
}

impl StallTimer {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            timer: None,
            progressed: false,
        }
    }

    fn progress(&mut self) {
        self.progressed = true;
    }

    /// Called while the body has nothing to give: `Ready` once it has waited `timeout`.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let next = tokio::time::Instant::now() + self.timeout;
        let timer = match &mut self.timer {
            Some(t) => {
                if self.progressed {
                    t.as_mut().reset(next);
                }
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(next))),
        };
        self.progressed = false;
        timer.as_mut().poll(cx)
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.progress();
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.cut.store(CUT_TOO_LARGE, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(
                            "request body over the tenant's limit".into()
                        )));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.cut.store(CUT_CLIENT, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.stall.poll_stalled(cx) {
                Poll::Ready(()) => {
                    this.cut.store(CUT_STALLED, Ordering::Relaxed);
                    Poll::Ready(Some(Err("request body stalled".into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream's response body on its way to the client, holding `guard` (the endpoint's
/// in-flight count, the tenant's concurrency slot, the connection's active request) until the
/// body has been sent or dropped.
///
/// A body that moves nothing for `limits.stream_idle_timeout_ms` is cut, either way:
/// - the upstream sends nothing after the head: the next poll past the deadline fails;
/// - the client reads nothing: hyper stops polling the body, so a watchdog (started only once a
///   body needs more than one frame) takes the upstream body and the guard away, which frees
///   the upstream connection and the tenant's slot; the client's stream then fails.
pub struct Guarded<B, G> {
    state: GuardState<B, G>,
    timeout: Duration,
    /// The upstream-stall timer.
    stall: StallTimer,
}

enum GuardState<B, G> {
    /// Not past its first frame: no watchdog, no shared state.
    Direct(B, G),
    /// Streaming: the watchdog may take the parts away.
    Watched(Arc<Watched<B, G>>),
    Cut,
}

/// What a streaming response shares with its watchdog.
struct Watched<B, G> {
    parts: std::sync::Mutex<Option<(B, G)>>,
    /// When the client last took a frame, in ms since `started`.
    last_ms: AtomicU64,
    started: std::time::Instant,
    /// Wakes the watchdog when the body ends or is dropped.
    done: tokio::sync::Notify,
}

impl<B, G> Guarded<B, G> {
    pub fn new(inner: B, guard: G, timeout: Duration) -> Self {
        Self {
            state: GuardState::Direct(inner, guard),
            timeout,
            stall: StallTimer::new(timeout),
        }
    }
}

impl<B, G> Drop for Guarded<B, G> {
    fn drop(&mut self) {
        if let GuardState::Watched(w) = &self.state {
            w.done.notify_one();
        }
    }
}

/// Cuts a streaming response whose client has read nothing for `timeout`.
async fn watch_client<B, G>(w: Arc<Watched<B, G>>, timeout: Duration) {
    loop {
        let last = Duration::from_millis(w.last_ms.load(Ordering::Relaxed));
        let deadline = tokio::time::Instant::from_std(w.started + last + timeout);
        tokio::select! {
            _ = w.done.notified() => return,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if Arc::strong_count(&w) == 1 {
            return;
        }
        let quiet = w
            .started
            .elapsed()
            .saturating_sub(Duration::from_millis(w.last_ms.load(Ordering::Relaxed)));
        if quiet >= timeout {
            let parts = w.parts.lock().map(|mut p| p.take()).unwrap_or(None);
            if parts.is_some() {
                tracing::info!(
                    timeout_ms = timeout.as_millis() as u64,
                    "client read nothing for the stream idle timeout; response cut"
                );
            }
            drop(parts);
            return;
        }
    }
}

impl<B, G> Body for Guarded<B, G>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    G: Unpin + Send + 'static,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.state {
            GuardState::Direct(inner, _) => {
                let p = Pin::new(&mut *inner).poll_frame(cx);
                if matches!(p, Poll::Ready(Some(Ok(_)))) && !inner.is_end_stream() {
                    // More than one frame: from here on the client's reading is watched.
                    let GuardState::Direct(inner, guard) =
                        std::mem::replace(&mut this.state, GuardState::Cut)
                    else {
                        unreachable!("matched Direct above")
                    };
                    let started = std::time::Instant::now();
                    let w = Arc::new(Watched {
                        parts: std::sync::Mutex::new(Some((inner, guard))),
                        last_ms: AtomicU64::new(0),
                        started,
                        done: tokio::sync::Notify::new(),
                    });
                    if tokio::runtime::Handle::try_current().is_ok() {
                        tokio::spawn(watch_client(w.clone(), this.timeout));
                    }
                    this.state = GuardState::Watched(w);
                }
                p
            }
            GuardState::Watched(w) => {
                w.last_ms
                    .store(w.started.elapsed().as_millis() as u64, Ordering::Relaxed);
                let mut parts = match w.parts.lock() {
                    Ok(p) => p,
                    Err(poisoned) => poisoned.into_inner(),
                };
                match parts.as_mut() {
                    Some((inner, _)) => Pin::new(inner).poll_frame(cx),
                    None => {
                        drop(parts);
                        this.state = GuardState::Cut;
                        return Poll::Ready(Some(Err(
                            "response cut: the client read nothing for the stream idle timeout"
                                .into(),
                        )));
                    }
                }
            }
            GuardState::Cut => return Poll::Ready(None),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                if let GuardState::Watched(w) = &this.state {
                    w.done.notify_one();
                }
                Poll::Ready(other.map(|r| r.map_err(Into::into)))
            }
            // The upstream has nothing to send.
            Poll::Pending => match this.stall.poll_stalled(cx) {
                Poll::Ready(()) => {
                    tracing::info!(
                        timeout_ms = this.timeout.as_millis() as u64,
                        "upstream sent nothing for the stream idle timeout; response cut"
                    );
                    let old = std::mem::replace(&mut this.state, GuardState::Cut);
                    if let GuardState::Watched(w) = &old {
                        w.done.notify_one();
                    }
                    drop(old);
                    Poll::Ready(Some(Err(
                        "response cut: the upstream sent nothing for the stream idle timeout"
                            .into(),
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            GuardState::Direct(inner, _) => inner.is_end_stream(),
            GuardState::Watched(w) => w
                .parts
                .lock()
                .map(|p| p.as_ref().is_none_or(|(inner, _)| inner.is_end_stream()))
                .unwrap_or(true),
            GuardState::Cut => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            GuardState::Direct(inner, _) => inner.size_hint(),
            GuardState::Watched(w) => w
                .parts
                .lock()
                .ok()
                .and_then(|p| p.as_ref().map(|(inner, _)| inner.size_hint()))
                .unwrap_or_default(),
            GuardState::Cut => SizeHint::default(),
        }
    }
}
