//! Phase "authenticate token": the tenant from a JWT in `Authorization: Bearer`, strictly
//! validated, with a bounded cache of verified tokens.
//!
//! Validation is set explicitly, never left to the library's defaults: signature; `alg` in the
//! configured allow-list *and* of the key's family (an HS256 token cannot be checked against an
//! RSA public key); `exp` required; `nbf` checked when present; `iss` and `aud` required and
//! checked when configured; the configured leeway. `kid` is only ever a map key.
//!
//! Keys come from `token.keys` (PEM public keys, HMAC secrets) and `token.jwks_file`. The JWKS
//! file is re-read when a token names a `kid` nobody knows (at most once per
//! [`JWKS_REFRESH_INTERVAL`]), so a key added by the identity provider is picked up without a
//! reload; a file that fails to read or parse keeps the last good set.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::error::GatewayError;

pub mod jwks;

/// Largest `Authorization` header decoded; anything longer is refused before parsing.
pub const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;

/// How often an unknown `kid` may trigger a re-read of the JWKS file.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Verified tokens kept at most.
pub const CACHE_CAPACITY: usize = 65_536;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub tenant: Box<str>,
    /// `sub`, ready to send as `x-tenant-subject`.
    pub subject: Option<HeaderValue>,
    /// Forwarded claims (`token.forward_claims`), as (header, value).
    pub forwarded: Vec<(HeaderName, HeaderValue)>,
    /// `exp`, Unix seconds.
    pub exp: u64,
}

/// One verification key with the validation rules that go with it.
pub struct VerifyKey {
    key: DecodingKey,
    validation: Validation,
}

/// Everything needed to check tokens; compiled from `token:` and held in the snapshot.
pub struct TokenAuth {
    tenant_claim: Box<str>,
    allowed: Vec<Algorithm>,
    base: Validation,
    keys: HashMap<String, VerifyKey>,
    jwks: Option<Arc<JwksFile>>,
    /// `jwks_url`: fetched in the background; adopted across reloads.
    pub remote: Option<Arc<jwks::RemoteJwks>>,
    forward_claims: Vec<(String, HeaderName)>,
    cache: Arc<TokenCache>,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("tenant_claim", &self.tenant_claim)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The validation rules of a key: the configured algorithms restricted to the key's family.
fn validation_for(
    base: &Validation,
    allowed: &[Algorithm],
    key: &DecodingKey,
) -> Option<Validation> {
    let family = key.family();
    let algorithms: Vec<Algorithm> = allowed
        .iter()
        .copied()
        .filter(|a| a.family() == family)
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let mut v = base.clone();
    v.algorithms = algorithms;
    Some(v)
}

/// Parses an algorithm name from the config.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    let alg = match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    };
    Some(alg)
}

/// The validation every key starts from.
pub fn base_validation(issuer: Option<&str>, audience: Option<&str>, leeway: u64) -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    let mut required = vec!["exp"];
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    match audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            v.validate_aud = true;
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// A JWKS file, its keys, and when it was last read.
struct JwksFile {
    path: PathBuf,
    keys: ArcSwap<HashMap<String, VerifyKey>>,
    last_read: Mutex<Instant>,
    generation: AtomicU64,
    status: SourceStatus,
}

/// When a key source (JWKS file or URL) was last read successfully and why the last attempt
/// failed, for the admin `/config`.
#[derive(Debug, Default)]
pub struct SourceStatus {
    last_ok: Mutex<Option<std::time::SystemTime>>,
    last_error: Mutex<Option<String>>,
}

impl SourceStatus {
    /// A source read successfully now.
    pub fn ok_now() -> Self {
        let s = Self::default();
        s.succeeded();
        s
    }

    pub fn succeeded(&self) {
        if let Ok(mut t) = self.last_ok.lock() {
            *t = Some(std::time::SystemTime::now());
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    pub fn failed(&self, error: &str) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error.to_owned());
        }
    }

    /// `{last_ok, last_error}`: Unix seconds of the last good read (null if none), the error of
    /// the last attempt when it failed.
    pub fn json(&self) -> serde_json::Value {
        let last_ok = self
            .last_ok
            .lock()
            .ok()
            .and_then(|t| *t)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        let last_error = self.last_error.lock().ok().and_then(|e| e.clone());
        serde_json::json!({ "last_ok": last_ok, "last_error": last_error })
    }
}

/// Loads the verification keys of a JWKS document (keys without `kid` or of a disallowed
/// algorithm family are skipped).
pub fn jwks_keys(
    text: &str,
    base: &Validation,
    allowed: &[Algorithm],
) -> Result<HashMap<String, VerifyKey>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("invalid JWKS: {e}"))?;
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        if let Some(validation) = validation_for(base, allowed, &key) {
            out.insert(kid, VerifyKey { key, validation });
        }
    }
    Ok(out)
}

impl TokenAuth {
    /// Builds the checker. `keys` are (kid, key); `jwks_file` is read now and on unknown `kid`s.
    pub fn new(
        tenant_claim: &str,
        allowed: Vec<Algorithm>,
        base: Validation,
        keys: Vec<(String, DecodingKey)>,
        jwks_file: Option<(PathBuf, HashMap<String, VerifyKey>)>,
        forward_claims: Vec<(String, HeaderName)>,
    ) -> Result<Self, String> {
        let mut map = HashMap::new();
        for (kid, key) in keys {
            let validation = validation_for(&base, &allowed, &key).ok_or_else(|| {
                format!("key {kid:?}: none of the configured algorithms fits this key type")
            })?;
            map.insert(kid, VerifyKey { key, validation });
        }
        Ok(Self {
            tenant_claim: tenant_claim.into(),
            allowed,
            base,
            keys: map,
            jwks: jwks_file.map(|(path, keys)| {
                Arc::new(JwksFile {
                    path,
                    keys: ArcSwap::from_pointee(keys),
                    // The first unknown kid may re-read at once; then at most once per interval.
                    last_read: Mutex::new(
                        Instant::now()
                            .checked_sub(JWKS_REFRESH_INTERVAL)
                            .unwrap_or_else(Instant::now),
                    ),
                    generation: AtomicU64::new(0),
                    status: SourceStatus::ok_now(),
                })
            }),
            remote: None,
            forward_claims,
            cache: Arc::new(TokenCache::new(CACHE_CAPACITY)),
        })
    }

    /// Each source of verification keys with its key count and, for JWKS files and URLs, the
    /// last good read and the last error (admin `/config`).
    pub fn key_sources(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        if !self.keys.is_empty() {
            out.push(serde_json::json!({
                "source": "keys",
                "kids": self.keys.keys().collect::<std::collections::BTreeSet<_>>(),
                "keys": self.keys.len(),
            }));
        }
        if let Some(f) = &self.jwks {
            let mut v = serde_json::json!({
                "source": "jwks_file",
                "path": f.path.display().to_string(),
                "keys": f.keys.load().len(),
            });
            merge(&mut v, f.status.json());
            out.push(v);
        }
        if let Some(r) = &self.remote {
            let mut v = serde_json::json!({
                "source": "jwks_url",
                "url": r.url.to_string(),
                "keys": r.keys.load().len(),
            });
            merge(&mut v, r.status.json());
            out.push(v);
        }
        out
    }

    /// The bearer token of a request, if any. `Err` for an oversized or non-ASCII header.
    pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
        let Some(v) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(None);
        };
        if v.len() > MAX_AUTHORIZATION_BYTES {
            return Err(GatewayError::InvalidToken);
        }
        let v = v.to_str().map_err(|_| GatewayError::InvalidToken)?;
        let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            // Another scheme (Basic, ...) is the upstream's business.
            return Ok(None);
        }
        match token.trim() {
            "" => Err(GatewayError::InvalidToken),
            token => Ok(Some(token)),
        }
    }

    /// Checks a token at `now` (Unix seconds): from the cache when it was verified before and
    /// has not expired, else by signature and claims.
    pub fn authenticate(&self, token: &str, now: u64) -> Result<Arc<TokenClaims>, GatewayError> {
        let digest = digest(token);
        if let Some(hit) = self.cache.get(&digest, now) {
            return Ok(hit);
        }
        let (claims, kid) = self.verify_inner(token)?;
        let claims = Arc::new(claims);
        self.cache
            .insert_verified(digest, claims.clone(), kid.map(Arc::from), now);
        Ok(claims)
    }

    /// Checks a token by signature and claims, bypassing the cache (benchmarks use this).
    pub fn verify(&self, token: &str) -> Result<TokenClaims, GatewayError> {
        self.verify_inner(token).map(|(claims, _)| claims)
    }

    /// [`TokenAuth::verify`], with the `kid` that verified the token.
    fn verify_inner(&self, token: &str) -> Result<(TokenClaims, Option<String>), GatewayError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| GatewayError::InvalidToken)?;
        if !self.allowed.contains(&header.alg) {
            return Err(GatewayError::InvalidToken);
        }
        let data = match header.kid.as_deref() {
            Some(kid) => self.verify_with_kid(token, kid)?,
            // No kid: only unambiguous with exactly one static key and no JWKS.
            None if self.keys.len() == 1 && self.jwks.is_none() && self.remote.is_none() => {
                let k = self
                    .keys
                    .values()
                    .next()
                    .ok_or(GatewayError::InvalidToken)?;
                decode(token, k)?
            }
            None => return Err(GatewayError::InvalidToken),
        };
        Ok((self.claims(data)?, header.kid))
    }

    fn verify_with_kid(
        &self,
        token: &str,
        kid: &str,
    ) -> Result<serde_json::Map<String, Value>, GatewayError> {
        if let Some(k) = self.keys.get(kid) {
            return decode(token, k);
        }
        if let Some(remote) = &self.remote {
            if let Some(k) = remote.keys.load().get(kid) {
                return decode(token, k);
            }
            // Unknown to the provider's last set too: ask for a fresh one (rate-limited).
            remote.request_refresh();
        }
        let Some(jwks) = &self.jwks else {
            return Err(GatewayError::InvalidToken);
        };
        if let Some(k) = jwks.keys.load().get(kid) {
            return decode(token, k);
        }
        // Unknown kid: maybe the identity provider rotated. Ask for a re-read (rate-limited,
        // off the request path); this request is refused, later ones see the new set.
        self.refresh_jwks(jwks);
        Err(GatewayError::InvalidToken)
    }

    /// Re-reads the JWKS file in the background if the last read is old enough. Never blocks
    /// the caller and never clears the cache: only tokens verified with a key that disappeared
    /// are forgotten.
    fn refresh_jwks(&self, jwks: &Arc<JwksFile>) {
        {
            let Ok(mut last) = jwks.last_read.try_lock() else {
                return;
            };
            if last.elapsed() < JWKS_REFRESH_INTERVAL {
                return;
            }
            *last = Instant::now();
        }
        let (jwks, cache) = (jwks.clone(), self.cache.clone());
        let (base, allowed) = (self.base.clone(), self.allowed.clone());
        let reread = move || reread_jwks(&jwks, &cache, &base, &allowed);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(reread);
            }
            // Outside a runtime (tools, tests) there is no request path to protect.
            Err(_) => reread(),
        }
    }

    fn claims(&self, mut c: serde_json::Map<String, Value>) -> Result<TokenClaims, GatewayError> {
        let tenant = match c.remove(&*self.tenant_claim) {
            Some(Value::String(t)) if !t.is_empty() => t.into_boxed_str(),
            _ => return Err(GatewayError::InvalidToken),
        };
        let subject = match c.get("sub") {
            // Sent and signed percent-encoded when not visible ASCII (SPEC, signatures v2).
            Some(Value::String(s)) => Some(
                HeaderValue::from_str(&crate::signing::encode_subject(s))
                    .map_err(|_| GatewayError::InvalidToken)?,
            ),
            None => None,
            Some(_) => return Err(GatewayError::InvalidToken),
        };
        let exp = c
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(GatewayError::InvalidToken)?;
        let mut forwarded = Vec::new();
        for (claim, header) in &self.forward_claims {
            let text = match c.get(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                _ => continue,
            };
            if let Ok(v) = HeaderValue::from_str(&text) {
                forwarded.push((header.clone(), v));
            }
        }
        Ok(TokenClaims {
            tenant,
            subject,
            forwarded,
            exp,
        })
    }

    /// Uses `cache` (the runtime's, shared by every snapshot with this token section).
    pub fn share_cache(&mut self, cache: Arc<TokenCache>) {
        self.cache = cache;
    }

    /// Entries in the verified-token cache.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }
}

/// Adds the fields of the object `from` to the object `into`.
fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// Reads the JWKS file again; on success installs the new set and forgets the tokens verified
/// with keys that are gone. A file that fails to read or parse keeps the last good set.
fn reread_jwks(jwks: &JwksFile, cache: &TokenCache, base: &Validation, allowed: &[Algorithm]) {
    match crate::files::read_text(&jwks.path)
        .map_err(|e| e.to_string())
        .and_then(|t| jwks_keys(&t, base, allowed))
    {
        Ok(keys) => {
            tracing::info!(path = %jwks.path.display(), keys = keys.len(), "JWKS re-read");
            install_keys(&jwks.keys, keys, cache);
            jwks.generation.fetch_add(1, Ordering::Relaxed);
            jwks.status.succeeded();
        }
        Err(e) => {
            jwks.status.failed(&e);
            tracing::warn!(path = %jwks.path.display(), error = %e, "JWKS re-read failed; keeping the last good set");
        }
    }
}

/// Installs a newly read key set and forgets the cached tokens verified with a key it no longer
/// lists (a key withdrawn by the identity provider takes its tokens with it).
pub fn install_keys(
    slot: &ArcSwap<HashMap<String, VerifyKey>>,
    keys: HashMap<String, VerifyKey>,
    cache: &TokenCache,
) {
    let gone: std::collections::HashSet<String> = slot
        .load()
        .keys()
        .filter(|k| !keys.contains_key(*k))
        .cloned()
        .collect();
    slot.store(Arc::new(keys));
    cache.forget_kids(&gone);
}

fn decode(token: &str, k: &VerifyKey) -> Result<serde_json::Map<String, Value>, GatewayError> {
    jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &k.key, &k.validation)
        .map(|d| d.claims)
        .map_err(|_| GatewayError::InvalidToken)
}

fn digest(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

// === impl TokenCache ===

/// A cached verification: the claims and the `kid` that verified them.
#[derive(Clone)]
struct Entry {
    claims: Arc<TokenClaims>,
    kid: Option<Arc<str>>,
}

/// Verified tokens by the SHA-256 of the token text, bounded with O(1) eviction: two
/// generations of at most `capacity / 2` entries each. Inserts go to the current one; when it
/// is full it becomes the previous one and the old previous one is dropped whole (no scan). A
/// hit in the previous generation moves the entry to the current one, so tokens in use survive
/// any number of rotations while a flood of one-off tokens only ever pushes out other one-off
/// tokens. An entry is never returned at or after its token's `exp`.
pub struct TokenCache {
    gens: std::sync::RwLock<Generations>,
    /// Entries in the current generation.
    current_len: std::sync::atomic::AtomicUsize,
    half: usize,
}

#[derive(Default)]
struct Generations {
    current: DashMap<[u8; 32], Entry>,
    previous: DashMap<[u8; 32], Entry>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            gens: std::sync::RwLock::new(Generations::default()),
            current_len: std::sync::atomic::AtomicUsize::new(0),
            half: (capacity / 2).max(1),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Generations> {
        self.gens.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &[u8; 32], now: u64) -> Option<Arc<TokenClaims>> {
        let g = self.read();
        if let Some(hit) = g.current.get(key) {
            if hit.claims.exp > now {
                return Some(hit.claims.clone());
            }
            drop(hit);
            g.current.remove(key);
            return None;
        }
        let (key, entry) = g.previous.remove(key)?;
        if entry.claims.exp <= now {
            return None;
        }
        let claims = entry.claims.clone();
        if g.current.insert(key, entry).is_none() {
            self.current_len.fetch_add(1, Ordering::Relaxed);
        }
        Some(claims)
    }

    pub fn insert(&self, key: [u8; 32], claims: Arc<TokenClaims>, now: u64) {
        self.insert_verified(key, claims, None, now);
    }

    fn insert_verified(
        &self,
        key: [u8; 32],
        claims: Arc<TokenClaims>,
        kid: Option<Arc<str>>,
        now: u64,
    ) {
        if claims.exp <= now {
            return;
        }
        if self.current_len.load(Ordering::Relaxed) >= self.half {
            self.rotate();
        }
        let g = self.read();
        if g.current.insert(key, Entry { claims, kid }).is_none() {
            self.current_len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The current generation becomes the previous one; the old previous one is dropped.
    fn rotate(&self) {
        let dropped = {
            let mut g = self.gens.write().unwrap_or_else(|p| p.into_inner());
            if self.current_len.load(Ordering::Relaxed) < self.half {
                return; // another thread rotated first
            }
            let current = std::mem::take(&mut g.current);
            self.current_len.store(0, Ordering::Relaxed);
            std::mem::replace(&mut g.previous, current)
        };
        drop(dropped);
    }

    /// Forgets every token verified with one of `kids` (keys withdrawn by the provider).
    pub fn forget_kids(&self, kids: &std::collections::HashSet<String>) {
        if kids.is_empty() {
            return;
        }
        let g = self.read();
        let keep = |e: &Entry| e.kid.as_deref().is_none_or(|k| !kids.contains(k));
        g.current.retain(|_, e| keep(e));
        g.previous.retain(|_, e| keep(e));
        self.current_len.store(g.current.len(), Ordering::Relaxed);
    }

    pub fn clear(&self) {
        let mut g = self.gens.write().unwrap_or_else(|p| p.into_inner());
        *g = Generations::default();
        self.current_len.store(0, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        let g = self.read();
        g.current.len() + g.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Arc<TokenClaims> {
        Arc::new(TokenClaims {
            tenant: "acme".into(),
            subject: None,
            forwarded: Vec::new(),
            exp,
        })
    }

    #[test]
    fn cache_never_returns_a_token_at_or_after_its_exp() {
        let cache = TokenCache::new(8);
        cache.insert([1; 32], claims(1_000), 900);
        assert!(cache.get(&[1; 32], 999).is_some());
        assert!(cache.get(&[1; 32], 1_000).is_none());
        assert!(
            cache.get(&[1; 32], 999).is_none(),
            "expired entry was removed"
        );
    }

    #[test]
    fn cache_is_bounded_and_keeps_tokens_in_use() {
        let cache = TokenCache::new(4);
        cache.insert([0; 32], claims(1_000), 0);
        // A flood of one-off tokens: the cache never holds more than its capacity...
        for i in 1..=100u8 {
            cache.insert([i; 32], claims(1_000), 0);
            assert!(cache.len() <= 4, "{}", cache.len());
            // ...and a token in use keeps its hit through every rotation.
            assert!(cache.get(&[0; 32], 10).is_some(), "lost at {i}");
        }
        assert!(
            cache.get(&[50; 32], 10).is_none(),
            "old one-off tokens are gone"
        );
        assert!(cache.get(&[100; 32], 10).is_some(), "the newest is cached");
        // Expired tokens are never cached.
        cache.insert([200; 32], claims(5), 10);
        assert!(cache.get(&[200; 32], 1).is_none());
    }

    #[test]
    fn withdrawn_keys_take_their_tokens_with_them() {
        let cache = TokenCache::new(8);
        cache.insert_verified([1; 32], claims(1_000), Some("old".into()), 0);
        cache.insert_verified([2; 32], claims(1_000), Some("new".into()), 0);
        cache.forget_kids(&["old".to_owned()].into_iter().collect());
        assert!(cache.get(&[1; 32], 1).is_none());
        assert!(cache.get(&[2; 32], 1).is_some());
    }

    #[test]
    fn bearer_is_case_insensitive_and_size_capped() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "bearer abc.def.ghi".parse().expect("v"));
        assert_eq!(TokenAuth::bearer(&h), Ok(Some("abc.def.ghi")));
        h.insert("authorization", "Basic Zm9v".parse().expect("v"));
        assert_eq!(TokenAuth::bearer(&h), Ok(None));
        h.insert("authorization", "Bearer".parse().expect("v"));
        assert_eq!(TokenAuth::bearer(&h), Err(GatewayError::InvalidToken));
        h.insert(
            "authorization",
            format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_BYTES))
                .parse()
                .expect("v"),
        );
        assert_eq!(TokenAuth::bearer(&h), Err(GatewayError::InvalidToken));
        // The cap is 8 KiB of header value, inclusive.
        let token = "a".repeat(8 * 1024 - "Bearer ".len());
        h.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("v"),
        );
        assert_eq!(TokenAuth::bearer(&h), Ok(Some(token.as_str())));
        h.insert(
            "authorization",
            format!("Bearer {token}a").parse().expect("v"),
        );
        assert_eq!(TokenAuth::bearer(&h), Err(GatewayError::InvalidToken));
    }

    #[test]
    fn every_configurable_algorithm_parses_to_itself_and_nothing_else_does() {
        use Algorithm::*;
        for (name, alg) in [
            ("HS256", HS256),
            ("HS384", HS384),
            ("HS512", HS512),
            ("RS256", RS256),
            ("RS384", RS384),
            ("RS512", RS512),
            ("PS256", PS256),
            ("PS384", PS384),
            ("PS512", PS512),
            ("ES256", ES256),
            ("ES384", ES384),
            ("EdDSA", EdDSA),
        ] {
            assert_eq!(parse_algorithm(name), Some(alg), "{name}");
        }
        for name in ["none", "None", "hs256", "HS256 ", "ES512", "RS", ""] {
            assert_eq!(parse_algorithm(name), None, "{name:?}");
        }
    }

    /// A checker of HS256 tokens with a `tenant` claim and the given static keys.
    fn hs_auth(keys: &[(&str, &[u8])], jwks: bool) -> TokenAuth {
        TokenAuth::new(
            "tenant",
            vec![Algorithm::HS256],
            base_validation(None, None, 0),
            keys.iter()
                .map(|(kid, secret)| (kid.to_string(), DecodingKey::from_secret(secret)))
                .collect(),
            jwks.then(|| (PathBuf::from("/nonexistent/jwks.json"), HashMap::new())),
            Vec::new(),
        )
        .expect("token auth")
    }

    /// Two HS256 secrets for the tests' static keys.
    const A: &[u8] = b"secret-a-0123456789abcdef0123456";
    const B: &[u8] = b"secret-b-0123456789abcdef0123456";

    fn now_secs() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn hs_token(kid: Option<&str>, secret: &[u8]) -> String {
        hs_token_with(kid, secret, serde_json::json!({ "tenant": "acme" }))
    }

    /// A token with `claims` and an `exp` five minutes ahead.
    fn hs_token_with(kid: Option<&str>, secret: &[u8], mut claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        claims["exp"] = (now_secs() + 300).into();
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .expect("sign")
    }

    #[test]
    fn the_tenant_claim_must_be_a_non_empty_string() {
        let secret = A;
        let auth = hs_auth(&[("a", secret)], false);
        for tenant in [
            serde_json::json!(""),
            serde_json::json!(7),
            serde_json::json!(null),
            serde_json::json!(["acme"]),
        ] {
            let token = hs_token_with(Some("a"), secret, serde_json::json!({ "tenant": tenant }));
            assert_eq!(
                auth.verify(&token),
                Err(GatewayError::InvalidToken),
                "{tenant}"
            );
        }
        let none = hs_token_with(Some("a"), secret, serde_json::json!({ "sub": "u1" }));
        assert_eq!(auth.verify(&none), Err(GatewayError::InvalidToken));
    }

    #[test]
    fn forwarded_claims_carry_strings_numbers_and_booleans_only() {
        let secret = A;
        let mut auth = hs_auth(&[("a", secret)], false);
        auth.forward_claims = ["plan", "seats", "beta", "roles", "org"]
            .iter()
            .map(|c| {
                (
                    c.to_string(),
                    HeaderName::from_bytes(format!("x-claim-{c}").as_bytes()).expect("name"),
                )
            })
            .collect();
        let token = hs_token_with(
            Some("a"),
            secret,
            serde_json::json!({ "tenant": "acme", "plan": "pro", "seats": 42, "beta": true,
                "roles": ["admin"], "org": { "id": 1 } }),
        );
        let claims = auth.verify(&token).expect("verified");
        let got: Vec<(&str, &str)> = claims
            .forwarded
            .iter()
            .map(|(h, v)| (h.as_str(), v.to_str().expect("ascii")))
            .collect();
        assert_eq!(
            got,
            [
                ("x-claim-plan", "pro"),
                ("x-claim-seats", "42"),
                ("x-claim-beta", "true")
            ]
        );
    }

    #[test]
    fn the_cache_holds_one_entry_per_verified_token() {
        let secret = A;
        let auth = hs_auth(&[("a", secret)], false);
        assert_eq!(auth.cache_len(), 0);
        assert!(auth.cache.is_empty());
        let now = now_secs();
        for sub in ["u1", "u2", "u1"] {
            let token = hs_token_with(
                Some("a"),
                secret,
                serde_json::json!({ "tenant": "acme", "sub": sub }),
            );
            assert!(auth.authenticate(&token, now).is_ok());
        }
        assert_eq!(auth.cache_len(), 2);
        assert!(!auth.cache.is_empty());
        auth.cache.clear();
        assert_eq!(auth.cache_len(), 0);
        assert!(auth.cache.is_empty());
    }

    #[test]
    fn a_token_without_kid_verifies_only_against_a_single_static_key() {
        let (a, b) = (A, B);
        // One static key, nothing else: unambiguous.
        let one = hs_auth(&[("a", a)], false);
        assert_eq!(
            one.verify(&hs_token(None, a)).map(|c| c.tenant),
            Ok("acme".into())
        );
        assert_eq!(
            one.verify(&hs_token(None, b)),
            Err(GatewayError::InvalidToken)
        );
        // Two keys, or a JWKS besides: which key is meant is not said, so no key is tried,
        // even the one that signed it.
        let two = hs_auth(&[("a", a), ("b", b)], false);
        for secret in [a, b] {
            assert_eq!(
                two.verify(&hs_token(None, secret)),
                Err(GatewayError::InvalidToken)
            );
        }
        assert_eq!(
            two.verify(&hs_token(Some("b"), b)).map(|c| c.tenant),
            Ok("acme".into())
        );
        let with_jwks = hs_auth(&[("a", a)], true);
        assert_eq!(
            with_jwks.verify(&hs_token(None, a)),
            Err(GatewayError::InvalidToken)
        );
        assert_eq!(
            with_jwks.verify(&hs_token(Some("a"), a)).map(|c| c.tenant),
            Ok("acme".into())
        );
    }

    #[test]
    fn an_unknown_kid_rereads_the_jwks_file_at_once_then_at_most_once_per_interval() {
        use base64::Engine as _;
        let (a, b) = (A, B);
        let jwk = |kid: &str, secret: &[u8]| {
            serde_json::json!({ "kty": "oct", "alg": "HS256", "kid": kid,
                "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret) })
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        let write = |keys: Vec<serde_json::Value>| {
            std::fs::write(&path, serde_json::json!({ "keys": keys }).to_string()).expect("write")
        };
        write(vec![jwk("a", a)]);
        let (base, allowed) = (base_validation(None, None, 0), vec![Algorithm::HS256]);
        let keys = jwks_keys(
            &std::fs::read_to_string(&path).expect("read"),
            &base,
            &allowed,
        )
        .expect("jwks");
        let auth = TokenAuth::new(
            "tenant",
            allowed,
            base,
            Vec::new(),
            Some((path.clone(), keys)),
            Vec::new(),
        )
        .expect("token auth");
        let rereads = || {
            auth.jwks
                .as_ref()
                .expect("jwks")
                .generation
                .load(Ordering::Relaxed)
        };
        assert!(auth.verify(&hs_token(Some("a"), a)).is_ok());
        assert_eq!(rereads(), 0, "a known kid reads nothing");
        // The first unknown kid re-reads at once (outside a runtime: before returning).
        assert_eq!(
            auth.verify(&hs_token(Some("b"), b)),
            Err(GatewayError::InvalidToken)
        );
        assert_eq!(rereads(), 1);
        // The provider adds the key: within the interval, unknown kids read nothing more.
        write(vec![jwk("a", a), jwk("b", b)]);
        for _ in 0..3 {
            assert_eq!(
                auth.verify(&hs_token(Some("b"), b)),
                Err(GatewayError::InvalidToken)
            );
        }
        assert_eq!(
            rereads(),
            1,
            "at most one re-read per JWKS_REFRESH_INTERVAL"
        );
        // Once the interval has passed, the next unknown kid reads the file and the key is in.
        *auth
            .jwks
            .as_ref()
            .expect("jwks")
            .last_read
            .lock()
            .expect("lock") -= JWKS_REFRESH_INTERVAL;
        assert_eq!(
            auth.verify(&hs_token(Some("b"), b)),
            Err(GatewayError::InvalidToken)
        );
        assert_eq!(rereads(), 2);
        assert_eq!(
            auth.verify(&hs_token(Some("b"), b)).map(|c| c.tenant),
            Ok("acme".into())
        );
    }

    #[test]
    fn a_key_source_reports_its_last_good_read_and_its_last_error() {
        let s = SourceStatus::default();
        assert_eq!(
            s.json(),
            serde_json::json!({ "last_ok": null, "last_error": null })
        );
        let s = SourceStatus::ok_now();
        assert!(
            s.json()["last_ok"]
                .as_u64()
                .is_some_and(|t| t > 1_700_000_000)
        );
        s.failed("connection refused");
        let j = s.json();
        assert!(j["last_ok"].is_u64(), "a failure keeps the last good read");
        assert_eq!(j["last_error"], "connection refused");
        s.succeeded();
        assert_eq!(s.json()["last_error"], serde_json::Value::Null);
    }

    #[test]
    fn key_sources_list_the_static_keys_and_the_jwks_file() {
        assert!(
            hs_auth(&[], true)
                .key_sources()
                .iter()
                .all(|v| v["source"] != "keys")
        );
        let sources = hs_auth(&[("b", b"x"), ("a", b"y")], true).key_sources();
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0]["source"], "keys");
        assert_eq!(sources[0]["kids"], serde_json::json!(["a", "b"]));
        assert_eq!(sources[0]["keys"], 2);
        assert_eq!(sources[1]["source"], "jwks_file");
        assert_eq!(sources[1]["path"], "/nonexistent/jwks.json");
        // With the file's read status.
        assert!(sources[1]["last_ok"].is_u64(), "{}", sources[1]);
        assert_eq!(sources[1]["last_error"], serde_json::Value::Null);
    }
}
