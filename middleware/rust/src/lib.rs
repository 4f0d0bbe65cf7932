//! Tenant context for services behind tenant-gateway: verifies the gateway's signed statement of
//! the tenant (`x-tenant-signature`, v1 and v2) and hands it to handlers and background jobs.
//!
//! - [`TenantContextLayer`]: a tower layer. Every request must carry a valid signature (HMAC keys
//!   by kid, Ed25519 public keys or the gateway's JWKS; skew window; expected audience; a
//!   signature already accepted within the window is refused as a replay). A refusal is
//!   `401 {"error":"invalid_tenant_signature"}`; otherwise a [`TenantContext`] goes into the
//!   request's extensions and the inner service runs inside a task-local scope
//!   ([`current_tenant`]).
//! - [`Tenant`]: the axum extractor for that context (401, same JSON, when absent).
//! - [`job_envelope`] / [`run_in_tenant`]: a signed envelope carrying the tenant into a queued job,
//!   byte for byte the format of the Python and Node packages (`middleware/README.md`).
//!
//! Verification is `tenant-gateway-signing`, the gateway's own signer/verifier crate.
//!
//! Layout: `lib.rs` (context, layer, service, extractor), `replay.rs` (the bounded replay
//! guard), `envelope.rs` (RFC 8785 canonical JSON and job envelopes).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response as AxumResponse};
use http::{HeaderValue, Request, Response, StatusCode};
use tenant_gateway_signing::{Verifier, VerifyError, decode_subject, parse_header, unix_now};

mod envelope;
mod replay;

pub use envelope::{
    EnvelopeError, canonical_json, envelope_canonical, job_envelope, make_envelope, open_envelope,
    run_in_tenant, run_in_tenant_sync,
};
pub use replay::{DEFAULT_REPLAY_CACHE_SIZE, ReplayGuard};
/// The verifier crate, for callers that need its types (keys, `encode_subject`, ...).
pub use tenant_gateway_signing as signing;

/// The body of every refusal.
pub const ERROR_BODY: &str = r#"{"error":"invalid_tenant_signature"}"#;

/// The verified tenant of the request (or job) being handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantContext {
    pub tenant: String,
    pub plan: String,
    /// Decoded (the gateway sends `zoë` as `zo%C3%AB`); `None` when the gateway saw no token.
    pub subject: Option<String>,
    /// `x-tenant-source` (e.g. `host,token`); `"job"` inside [`run_in_tenant`].
    pub source: String,
    pub request_id: String,
}

tokio::task_local! {
    static CURRENT: TenantContext;
}

/// The tenant of the request or job whose task is running, or `None` outside one. Set by the
/// layer around the inner service's future and by [`run_in_tenant`]; a `tokio::spawn`ed task
/// does not inherit it (carry it with [`job_envelope`]).
pub fn current_tenant() -> Option<TenantContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` with `ctx` as the current tenant (the task-local scope the layer uses).
pub async fn scope<F: Future>(ctx: TenantContext, fut: F) -> F::Output {
    CURRENT.scope(ctx, fut).await
}

fn sync_scope<R>(ctx: TenantContext, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(ctx, f)
}

/// Why a request was refused. Never sent to the client (the body is always [`ERROR_BODY`]);
/// given to the [`Builder::on_reject`] hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    Version,
    UnknownKid,
    Alg,
    Audience,
    Stale,
    Mismatch,
    Replay,
}

impl Refusal {
    /// The reason word shared with the Python and Node packages and the test vectors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Version => "version",
            Self::UnknownKid => "unknown_kid",
            Self::Alg => "alg",
            Self::Audience => "audience",
            Self::Stale => "stale",
            Self::Mismatch => "mismatch",
            Self::Replay => "replay",
        }
    }
}

impl From<VerifyError> for Refusal {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Malformed => Self::Malformed,
            VerifyError::Version => Self::Version,
            VerifyError::UnknownKey => Self::UnknownKid,
            VerifyError::Algorithm => Self::Alg,
            VerifyError::Audience => Self::Audience,
            VerifyError::Stale => Self::Stale,
            VerifyError::Mismatch => Self::Mismatch,
        }
    }
}

/// The 401 every refusal gets.
fn refusal_response<B: From<&'static str>>() -> Response<B> {
    let mut res = Response::new(B::from(ERROR_BODY));
    *res.status_mut() = StatusCode::UNAUTHORIZED;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

// === impl Builder ===

type RejectHook = Arc<dyn Fn(Refusal, &http::request::Parts) + Send + Sync>;

/// Configures a [`TenantContextLayer`]; start with [`TenantContextLayer::builder`].
pub struct Builder {
    verifier: Verifier,
    has_keys: bool,
    replay_cache_size: usize,
    exempt_paths: Vec<String>,
    on_reject: Option<RejectHook>,
}

impl Builder {
    /// Trusts the HMAC-SHA256 key `secret` as `kid` (v1, or v2 with `alg=hmac-sha256`).
    pub fn hmac_key(mut self, kid: &str, secret: impl AsRef<[u8]>) -> Self {
        self.verifier = self.verifier.with_key(kid, secret.as_ref());
        self.has_keys = true;
        self
    }

    /// Trusts the Ed25519 public key (32 raw bytes) as `kid`.
    pub fn ed25519_key(mut self, kid: &str, public_key: &[u8]) -> Self {
        self.verifier = self.verifier.with_ed25519_key(kid, public_key);
        self.has_keys = true;
        self
    }

    /// Trusts every OKP/Ed25519 key of a JWKS document, as the gateway serves it at
    /// `GET /.well-known/tenant-signing-keys` on its admin listener (or prints with
    /// `tenant-gateway signing-keys`). Fetching it is the service's business: this crate makes no
    /// outbound request.
    pub fn jwks(mut self, jwks: &str) -> Result<Self, VerifyError> {
        self.verifier = self.verifier.with_jwks(jwks)?;
        self.has_keys = true;
        Ok(self)
    }

    /// Accepts only v2 signatures minted for `audience` (the service's upstream pool name);
    /// v1 signatures, which name no audience, are then refused. Default: any audience.
    pub fn audience(mut self, audience: &str) -> Self {
        self.verifier = self.verifier.with_audience(audience);
        self
    }

    /// The accepted difference between the signature's `ts` and now, either way (default 300 s).
    /// Accepted signatures are remembered this long past their `ts` for the replay guard.
    pub fn max_skew_s(mut self, seconds: u64) -> Self {
        self.verifier = self.verifier.with_skew_seconds(seconds);
        self
    }

    /// How many accepted signatures the replay guard remembers at most (default 100 000; the
    /// oldest go first). Size it above requests/s × 2 × skew to catch every replay.
    pub fn replay_cache_size(mut self, entries: usize) -> Self {
        self.replay_cache_size = entries;
        self
    }

    /// Lets requests for exactly this path through without a signature and without a tenant
    /// (a health check the orchestrator calls directly).
    pub fn exempt_path(mut self, path: &str) -> Self {
        self.exempt_paths.push(path.to_owned());
        self
    }

    /// Called with the reason of each refusal (for logs or metrics; the client never sees it).
    pub fn on_reject(
        mut self,
        hook: impl Fn(Refusal, &http::request::Parts) + Send + Sync + 'static,
    ) -> Self {
        self.on_reject = Some(Arc::new(hook));
        self
    }

    /// The layer. Panics when no key was given (a configuration error found at start-up).
    pub fn build(self) -> TenantContextLayer {
        assert!(
            self.has_keys,
            "TenantContextLayer needs keys: hmac_key, ed25519_key or jwks"
        );
        let skew = self.verifier.skew_seconds();
        TenantContextLayer {
            shared: Arc::new(Shared {
                verifier: self.verifier,
                skew,
                replay: Mutex::new(ReplayGuard::new(self.replay_cache_size)),
                exempt_paths: self.exempt_paths,
                on_reject: self.on_reject,
            }),
        }
    }
}

// === impl TenantContextLayer ===

struct Shared {
    verifier: Verifier,
    skew: u64,
    replay: Mutex<ReplayGuard>,
    exempt_paths: Vec<String>,
    on_reject: Option<RejectHook>,
}

/// A tower layer that verifies the gateway's tenant signature on every request. Clones share
/// one replay guard. Apply it around the whole app (axum: `Router::layer` on the outermost
/// router), so it sees the path and query as the gateway forwarded them.
///
/// ```no_run
/// # fn demo(jwks: &str) -> Result<(), tenant_context::signing::VerifyError> {
/// let layer = tenant_context::TenantContextLayer::builder()
///     .hmac_key("k1", b"secret")
///     .jwks(jwks)?
///     .audience("shared")
///     .max_skew_s(300)
///     .build();
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TenantContextLayer {
    shared: Arc<Shared>,
}

impl TenantContextLayer {
    /// A builder with no keys, skew 300 s, no expected audience, a 100 000-entry replay guard.
    pub fn builder() -> Builder {
        Builder {
            verifier: Verifier::new(),
            has_keys: false,
            replay_cache_size: DEFAULT_REPLAY_CACHE_SIZE,
            exempt_paths: Vec::new(),
            on_reject: None,
        }
    }

    /// Verifies `req` now (signature, skew, audience, then the replay guard) and returns its
    /// tenant. What the service does for every request; public for tests and benchmarks.
    pub fn check<B>(&self, req: &Request<B>) -> Result<TenantContext, Refusal> {
        self.check_at(req, unix_now())
    }

    /// [`TenantContextLayer::check`] at `now` (unix seconds).
    pub fn check_at<B>(&self, req: &Request<B>, now: u64) -> Result<TenantContext, Refusal> {
        let h = req.headers();
        let header = match h.get("x-tenant-signature") {
            None => return Err(Refusal::Missing),
            Some(v) if v.is_empty() => return Err(Refusal::Missing),
            Some(v) => v.to_str().map_err(|_| Refusal::Malformed)?,
        };
        self.shared.verifier.verify_request_at(req, now)?;
        // verify_request_at has checked that each of these is present once and is ASCII.
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let subject = match h.get("x-tenant-subject") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(decode_subject)
                    .ok_or(Refusal::Malformed)?,
            ),
        };
        let ctx = TenantContext {
            tenant: text("x-tenant-id").ok_or(Refusal::Malformed)?,
            plan: text("x-tenant-plan").ok_or(Refusal::Malformed)?,
            subject,
            source: text("x-tenant-source").unwrap_or_default(),
            request_id: text("x-request-id").ok_or(Refusal::Malformed)?,
        };
        // Last, so a refused request never takes a place in the guard.
        let parsed = parse_header(header)?;
        let fresh = self
            .shared
            .replay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check_and_remember(parsed.sig, parsed.ts.saturating_add(self.shared.skew), now);
        if !fresh {
            return Err(Refusal::Replay);
        }
        Ok(ctx)
    }
}

impl<S> tower::Layer<S> for TenantContextLayer {
    type Service = TenantContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantContextService {
            inner,
            layer: self.clone(),
        }
    }
}

// === impl TenantContextService ===

/// The service [`TenantContextLayer`] makes.
#[derive(Clone)]
pub struct TenantContextService<S> {
    inner: S,
    layer: TenantContextLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for TenantContextService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: From<&'static str> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &self.layer.shared;
        if shared.exempt_paths.iter().any(|p| p == req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        match self.layer.check(&req) {
            Ok(ctx) => {
                req.extensions_mut().insert(ctx.clone());
                // `call` itself and the future it returns both run with the tenant set.
                let fut = sync_scope(ctx.clone(), || self.inner.call(req));
                Box::pin(CURRENT.scope(ctx, fut))
            }
            Err(reason) => {
                if let Some(hook) = &shared.on_reject {
                    let (parts, _) = req.into_parts();
                    hook(reason, &parts);
                }
                Box::pin(std::future::ready(Ok(refusal_response())))
            }
        }
    }
}

// === impl Tenant ===

/// The axum extractor: `async fn handler(Tenant(t): Tenant) { t.tenant ... }`. Needs
/// [`TenantContextLayer`] in front of the handler; without a verified tenant the request gets
/// `401 {"error":"invalid_tenant_signature"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub TenantContext);

/// The extractor's rejection: no verified tenant on the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantRejection;

impl IntoResponse for TenantRejection {
    fn into_response(self) -> AxumResponse {
        refusal_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = TenantRejection;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<TenantContext>()
            .cloned()
            .map(Tenant)
            .ok_or(TenantRejection)
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Tenant {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<TenantContext>().cloned().map(Tenant))
    }
}

#[cfg(test)]
mod tests;
