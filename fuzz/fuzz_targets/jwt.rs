//! JWT handling: `TokenAuth::bearer` on an arbitrary `Authorization` value, and
//! `TokenAuth::authenticate` / `verify` on arbitrary token text and on correctly signed tokens
//! carrying arbitrary JSON claims (HS256 key `k1`, issuer, audience and forwarded claims set).
//! Never panics, and the cached answer equals the uncached one.
//! Input: `<authorization value>\n<token>\n<claims JSON>`.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use tenant_gateway::signing::unix_now;
use tenant_gateway::token::{TokenAuth, base_validation};

const SECRET: &[u8] = b"fuzz-jwt-secret-0123456789abcdef";

/// Built per input (cheap for an HMAC key) so the verified-token cache never carries state from
/// one input to the next and every finding reproduces alone.
fn token_auth() -> TokenAuth {
    let base = base_validation(Some("https://auth.test/"), Some("gateway"), 30);
    TokenAuth::new(
        "tenant_id",
        vec![Algorithm::HS256, Algorithm::RS256],
        base,
        vec![("k1".into(), DecodingKey::from_secret(SECRET))],
        None,
        vec![
            ("org".into(), HeaderName::from_static("x-tenant-claim-org")),
            (
                "role".into(),
                HeaderName::from_static("x-tenant-claim-role"),
            ),
        ],
    )
    .expect("token auth")
}

/// `authenticate` (through the cache, twice) and `verify` agree.
fn check(auth: &TokenAuth, token: &str, now: u64) {
    let first = auth.authenticate(token, now);
    let cached = auth.authenticate(token, now);
    assert_eq!(first, cached, "{token:?}");
    if first.is_ok() {
        assert_eq!(first.as_deref(), auth.verify(token).as_ref(), "{token:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let auth = token_auth();
    let now = unix_now();
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let authorization = parts.next().unwrap_or_default();
    let token = parts.next().unwrap_or_default();
    let claims = parts.next().unwrap_or_default();

    if let Ok(value) = HeaderValue::from_bytes(authorization) {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        if let Ok(Some(bearer)) = TokenAuth::bearer(&headers) {
            assert!(!bearer.is_empty() && bearer.trim() == bearer);
            check(&auth, bearer, now);
        }
    }

    if let Ok(token) = std::str::from_utf8(token) {
        check(&auth, token, now);
        let _ = auth.verify(token);
    }

    // A token the key really signed: only the claims decide.
    if let Ok(claims) = serde_json::from_slice::<serde_json::Value>(claims) {
        let key = EncodingKey::from_secret(SECRET);
        let mut header = Header::new(Algorithm::HS256);
        if let Ok(token) = jsonwebtoken::encode(&header, &claims, &key) {
            check(&auth, &token, now);
        }
        header.kid = Some("k1".into());
        if let Ok(token) = jsonwebtoken::encode(&header, &claims, &key) {
            check(&auth, &token, now);
            if let Ok(c) = auth.verify(&token) {
                assert!(!c.tenant.is_empty());
                assert_eq!(
                    c.tenant.as_ref(),
                    claims["tenant_id"].as_str().unwrap_or("")
                );
            }
        }
    }
});
