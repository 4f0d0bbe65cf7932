//! `token.jwks_url`: the identity provider's key set, fetched with the gateway's own HTTP(S)
//! client in the background. Fetched at start, refreshed every [`REFRESH_EVERY`], re-fetched
//! when a token names an unknown `kid` (at most once per [`crate::token::JWKS_REFRESH_INTERVAL`]),
//! and the last good set keeps serving while the provider is down or answers garbage.
//!
//! The set is runtime state of its token section (`runtime::AuthState`): a reload that keeps
//! the section (URL, issuer, audience, leeway, algorithms, keys) keeps the running fetcher; one
//! that changes any of them gets a new one, with the new validation. A fetch that drops a key
//! drops the cached tokens verified with it. `/readyz` waits for the first fetch (or the
//! start-up grace).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Uri;
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::{Algorithm, Validation};
use tokio::sync::Notify;

use crate::token::{JWKS_REFRESH_INTERVAL, VerifyKey, jwks_keys};
use crate::upstream::{UpstreamTls, client};

/// Periodic refresh, whatever happens.
pub const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// Largest JWKS document accepted.
pub const MAX_BYTES: usize = 1 << 20;

pub struct RemoteJwks {
    pub url: Uri,
    pub keys: ArcSwap<HashMap<String, VerifyKey>>,
    base: Validation,
    allowed: Vec<Algorithm>,
    tls: Arc<UpstreamTls>,
    wake: Notify,
    last_fetch: Mutex<Option<Instant>>,
    started: std::sync::atomic::AtomicBool,
    /// Verified tokens of this token section, pruned when a key disappears.
    cache: Arc<crate::token::TokenCache>,
    fetched: std::sync::atomic::AtomicBool,
    created: Instant,
    startup_wait: Duration,
    grace_logged: std::sync::atomic::AtomicBool,
    /// Last good fetch and last error, for the admin `/config`.
    pub status: super::SourceStatus,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    pub fn new(
        url: Uri,
        base: Validation,
        allowed: Vec<Algorithm>,
        tls: Arc<UpstreamTls>,
        cache: Arc<crate::token::TokenCache>,
        startup_wait: Duration,
    ) -> Self {
        Self {
            url,
            keys: ArcSwap::from_pointee(HashMap::new()),
            base,
            allowed,
            tls,
            wake: Notify::new(),
            last_fetch: Mutex::new(None),
            started: std::sync::atomic::AtomicBool::new(false),
            cache,
            fetched: std::sync::atomic::AtomicBool::new(false),
            created: Instant::now(),
            startup_wait,
            grace_logged: std::sync::atomic::AtomicBool::new(false),
            status: super::SourceStatus::default(),
        }
    }

    /// True once a fetch succeeded, or the start-up grace is over (logged loudly, once).
    pub fn is_ready(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.fetched.load(Ordering::Acquire) {
            return true;
        }
        if self.created.elapsed() < self.startup_wait {
            return false;
        }
        if !self.grace_logged.swap(true, Ordering::AcqRel) {
            tracing::error!(url = %self.url, wait_ms = self.startup_wait.as_millis() as u64, "JWKS not fetched within token.jwks_startup_wait_ms; ready anyway, tokens signed by the identity provider are refused until it answers");
        }
        true
    }

    /// Asks the fetcher for a fresh set (an unknown `kid` was seen); rate-limited.
    pub fn request_refresh(&self) {
        let due = self
            .last_fetch
            .lock()
            .map(|l| l.is_none_or(|t| t.elapsed() >= JWKS_REFRESH_INTERVAL))
            .unwrap_or(false);
        if due {
            self.wake.notify_one();
        }
    }

    /// Starts the background fetcher once (needs a Tokio runtime; a no-op without one). It
    /// stops when the last snapshot using this set is gone.
    pub fn ensure_started(self: &Arc<Self>) {
        if self.started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.started
                .store(false, std::sync::atomic::Ordering::Release);
            return;
        };
        rt.spawn(fetch_loop(self.clone()));
    }

    async fn fetch_once(&self) -> Result<usize, String> {
        *self.last_fetch.lock().map_err(|_| "poisoned")? = Some(Instant::now());
        // The JWKS host is resolved per fetch (fetches are minutes apart), asynchronously.
        let dns = std::sync::Arc::new(crate::dns::Dns::new(Vec::new()));
        let c = client(Duration::from_secs(2), false, Some(&self.tls), dns);
        let req = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(crate::body::full(bytes::Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(5), c.request(req))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            Limited::new(resp.into_body(), MAX_BYTES).collect(),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| "not UTF-8".to_owned())?;
        let keys = jwks_keys(text, &self.base, &self.allowed)?;
        let n = keys.len();
        super::install_keys(&self.keys, keys, &self.cache);
        self.fetched
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(n)
    }
}

async fn fetch_loop(jwks: Arc<RemoteJwks>) {
    let mut failures = 0u32;
    loop {
        let wait = match jwks.fetch_once().await {
            Ok(n) => {
                jwks.status.succeeded();
                tracing::info!(url = %jwks.url, keys = n, "JWKS fetched");
                failures = 0;
                REFRESH_EVERY
            }
            Err(e) => {
                jwks.status.failed(&e);
                tracing::warn!(url = %jwks.url, error = %e, "JWKS fetch failed; keeping the last good set");
                // Retry soon (1, 2, 4 … 30 s): a gateway waiting for its first set is not ready.
                failures = failures.saturating_add(1);
                Duration::from_secs(1u64 << failures.min(5).saturating_sub(1))
                    .min(Duration::from_secs(30))
            }
        };
        // Until the next attempt or an unknown-kid wake-up; stop once no snapshot uses the set.
        let next = Instant::now() + wait;
        loop {
            if Arc::strong_count(&jwks) == 1 {
                return;
            }
            tokio::select! {
                _ = jwks.wake.notified() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if Instant::now() >= next {
                        break;
                    }
                }
            }
        }
    }
}
