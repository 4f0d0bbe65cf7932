//! Signed tenant headers: the gateway signs, upstream services verify.
//!
//! The header is `x-tenant-signature: v1;kid=<id>;ts=<unix seconds>;sig=<base64url, no padding>`
//! where `sig` is HMAC-SHA256 over the canonical lines (SPEC.md, "What the upstream receives"):
//!
//! ```text
//! v1\n<ts>\n<x-request-id>\n<METHOD>\n<authority, lower-case>\n<path and query>\n<tenant>\n<plan>\n<subject or empty>
//! ```
//!
//! An upstream verifies with [`Verifier`]: it looks the key up by `kid`, recomputes the MAC over
//! what *it* received (so a changed method, path, host or tenant fails), compares in constant
//! time, and rejects a `ts` outside its skew window (default 300 s) so an old request cannot be
//! replayed forever.

use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The version tag that opens both the header value and the canonical string.
pub const VERSION: &str = "v1";

/// Default accepted clock skew between gateway and upstream, in seconds.
pub const DEFAULT_SKEW_SECONDS: u64 = 300;

/// What a signature covers, apart from the timestamp.
#[derive(Debug, Clone, Copy)]
pub struct SignedFields<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    /// The authority as forwarded; compared lower-case.
    pub authority: &'a str,
    pub path_and_query: &'a str,
    pub tenant: &'a str,
    pub plan: &'a str,
    /// JWT `sub`, or empty when no token was used.
    pub subject: &'a str,
}

/// The canonical string, exactly as signed. Useful for debugging an upstream's verifier.
pub fn canonical(ts: u64, f: &SignedFields<'_>) -> String {
    format!(
        "{VERSION}\n{ts}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        f.request_id,
        f.method,
        f.authority.to_ascii_lowercase(),
        f.path_and_query,
        f.tenant,
        f.plan,
        f.subject
    )
}

fn mac(key: &hmac::Key, ts: u64, f: &SignedFields<'_>) -> hmac::Tag {
    // Feed the pieces straight into the MAC: no canonical string is built on the hot path.
    let mut ctx = hmac::Context::with_key(key);
    let ts_text = ts.to_string();
    ctx.update(VERSION.as_bytes());
    ctx.update(b"\n");
    ctx.update(ts_text.as_bytes());
    ctx.update(b"\n");
    ctx.update(f.request_id.as_bytes());
    ctx.update(b"\n");
    ctx.update(f.method.as_bytes());
    ctx.update(b"\n");
    update_lowercase(&mut ctx, f.authority.as_bytes());
    ctx.update(b"\n");
    ctx.update(f.path_and_query.as_bytes());
    ctx.update(b"\n");
    ctx.update(f.tenant.as_bytes());
    ctx.update(b"\n");
    ctx.update(f.plan.as_bytes());
    ctx.update(b"\n");
    ctx.update(f.subject.as_bytes());
    ctx.sign()
}

fn update_lowercase(ctx: &mut hmac::Context, bytes: &[u8]) {
    if bytes.iter().any(u8::is_ascii_uppercase) {
        ctx.update(&bytes.to_ascii_lowercase());
    } else {
        ctx.update(bytes);
    }
}

/// One HMAC key with its id (`kid`).
pub struct SigningKey {
    id: Box<str>,
    key: hmac::Key,
}

impl SigningKey {
    /// Makes a key from raw secret bytes.
    pub fn new(id: &str, secret: &[u8]) -> Self {
        Self {
            id: id.into(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Returns the full header value `v1;kid=..;ts=..;sig=..`.
    pub fn sign(&self, ts: u64, fields: &SignedFields<'_>) -> String {
        let tag = mac(&self.key, ts, fields);
        format!(
            "{VERSION};kid={};ts={ts};sig={}",
            self.id,
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature header is malformed")]
    Malformed,
    #[error("unsupported signature version")]
    Version,
    #[error("unknown key id")]
    UnknownKey,
    #[error("timestamp outside the accepted skew window")]
    Stale,
    #[error("signature does not match the request")]
    Mismatch,
}

/// The parts of a `x-tenant-signature` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSignature<'a> {
    pub kid: &'a str,
    pub ts: u64,
    pub sig: &'a str,
}

/// Parses `v1;kid=..;ts=..;sig=..` (fields in this order, as the gateway writes them).
pub fn parse_header(value: &str) -> Result<ParsedSignature<'_>, VerifyError> {
    let mut parts = value.split(';');
    match parts.next() {
        Some(VERSION) => {}
        Some(v) if v.starts_with('v') && !v.contains('=') => return Err(VerifyError::Version),
        _ => return Err(VerifyError::Malformed),
    }
    let mut field = |name: &str| -> Result<&str, VerifyError> {
        let part = parts.next().ok_or(VerifyError::Malformed)?;
        let (k, v) = part.split_once('=').ok_or(VerifyError::Malformed)?;
        if k != name || v.is_empty() {
            return Err(VerifyError::Malformed);
        }
        Ok(v)
    };
    let kid = field("kid")?;
    let ts = field("ts")?.parse().map_err(|_| VerifyError::Malformed)?;
    let sig = field("sig")?;
    if parts.next().is_some() {
        return Err(VerifyError::Malformed);
    }
    Ok(ParsedSignature { kid, ts, sig })
}

/// Checks signatures for an upstream service: keys by `kid`, and a skew window.
pub struct Verifier {
    keys: HashMap<String, hmac::Key>,
    skew_seconds: u64,
}

impl Verifier {
    /// A verifier with no keys and the default skew window (300 s).
    pub fn new() -> Self {
        Self {
            keys: HashMap::new(),
            skew_seconds: DEFAULT_SKEW_SECONDS,
        }
    }

    /// Adds (or replaces) the key known as `kid`.
    pub fn with_key(mut self, kid: &str, secret: &[u8]) -> Self {
        self.keys
            .insert(kid.to_owned(), hmac::Key::new(hmac::HMAC_SHA256, secret));
        self
    }

    /// Sets the accepted difference between `ts` and now, in seconds, either way.
    pub fn with_skew_seconds(mut self, skew: u64) -> Self {
        self.skew_seconds = skew;
        self
    }

    /// Verifies `header` against the request the upstream actually received, at `now`
    /// (unix seconds).
    pub fn verify_at(
        &self,
        header: &str,
        fields: &SignedFields<'_>,
        now: u64,
    ) -> Result<(), VerifyError> {
        let parsed = parse_header(header)?;
        let key = self.keys.get(parsed.kid).ok_or(VerifyError::UnknownKey)?;
        if parsed.ts.abs_diff(now) > self.skew_seconds {
            return Err(VerifyError::Stale);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(parsed.sig)
            .map_err(|_| VerifyError::Malformed)?;
        let expected = mac(key, parsed.ts, fields);
        // Constant-time comparison.
        if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_ref(), &sig).is_err() {
            return Err(VerifyError::Mismatch);
        }
        Ok(())
    }

    /// Verifies at the current system time.
    pub fn verify(&self, header: &str, fields: &SignedFields<'_>) -> Result<(), VerifyError> {
        self.verify_at(header, fields, unix_now())
    }

    /// Verifies a request from its parts as an upstream sees them: the signature and tenant
    /// headers (with the default `x-tenant` prefix), the `x-request-id`, the Host and the URI.
    pub fn verify_request<B>(&self, req: &http::Request<B>) -> Result<(), VerifyError> {
        self.verify_request_at(req, unix_now())
    }

    /// [`Verifier::verify_request`] at a given time.
    pub fn verify_request_at<B>(
        &self,
        req: &http::Request<B>,
        now: u64,
    ) -> Result<(), VerifyError> {
        let h = req.headers();
        let get = |name: &str| -> Result<&str, VerifyError> {
            h.get(name)
                .ok_or(VerifyError::Malformed)?
                .to_str()
                .map_err(|_| VerifyError::Malformed)
        };
        let authority = match h.get(http::header::HOST) {
            Some(v) => v.to_str().map_err(|_| VerifyError::Malformed)?,
            None => req
                .uri()
                .authority()
                .map(|a| a.as_str())
                .ok_or(VerifyError::Malformed)?,
        };
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let fields = SignedFields {
            request_id: get("x-request-id")?,
            method: req.method().as_str(),
            authority,
            path_and_query,
            tenant: get("x-tenant-id")?,
            plan: get("x-tenant-plan")?,
            subject: h
                .get("x-tenant-subject")
                .map(|v| v.to_str().map_err(|_| VerifyError::Malformed))
                .transpose()?
                .unwrap_or(""),
        };
        self.verify_at(get("x-tenant-signature")?, &fields, now)
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> SignedFields<'static> {
        SignedFields {
            request_id: "req-1",
            method: "GET",
            authority: "Acme.GW.example.com",
            path_and_query: "/api/orders?x=1",
            tenant: "acme",
            plan: "enterprise",
            subject: "user-7",
        }
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let key = SigningKey::new("k1", b"secret");
        let header = key.sign(1_000, &fields());
        assert!(header.starts_with("v1;kid=k1;ts=1000;sig="));
        let v = Verifier::new().with_key("k1", b"secret");
        assert_eq!(v.verify_at(&header, &fields(), 1_000), Ok(()));
    }

    #[test]
    fn mac_matches_the_documented_canonical_string() {
        // An upstream that builds the canonical string itself must get the same MAC.
        let key = SigningKey::new("k1", b"secret");
        let header = key.sign(42, &fields());
        let sig = parse_header(&header).map(|p| p.sig.to_owned());
        let c = canonical(42, &fields());
        assert_eq!(
            c,
            "v1\n42\nreq-1\nGET\nacme.gw.example.com\n/api/orders?x=1\nacme\nenterprise\nuser-7"
        );
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, b"secret"), c.as_bytes());
        assert_eq!(sig, Ok(URL_SAFE_NO_PAD.encode(tag.as_ref())));
    }

    #[test]
    fn rejects_stale_and_future_timestamps() {
        let header = SigningKey::new("k1", b"s").sign(10_000, &fields());
        let v = Verifier::new().with_key("k1", b"s");
        assert_eq!(v.verify_at(&header, &fields(), 10_300), Ok(()));
        assert_eq!(
            v.verify_at(&header, &fields(), 10_301),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            v.verify_at(&header, &fields(), 9_699),
            Err(VerifyError::Stale)
        );
    }

    #[test]
    fn rejects_changed_request_parts() {
        let header = SigningKey::new("k1", b"s").sign(5, &fields());
        let v = Verifier::new().with_key("k1", b"s");
        let changed = [
            SignedFields {
                method: "POST",
                ..fields()
            },
            SignedFields {
                path_and_query: "/api/admin",
                ..fields()
            },
            SignedFields {
                tenant: "globex",
                ..fields()
            },
            SignedFields {
                subject: "",
                ..fields()
            },
            SignedFields {
                authority: "evil.example.com",
                ..fields()
            },
        ];
        for f in changed {
            assert_eq!(v.verify_at(&header, &f, 5), Err(VerifyError::Mismatch));
        }
    }

    #[test]
    fn rejects_unknown_kid_wrong_key_and_garbage() {
        let header = SigningKey::new("k2", b"s").sign(5, &fields());
        let v = Verifier::new().with_key("k1", b"s");
        assert_eq!(
            v.verify_at(&header, &fields(), 5),
            Err(VerifyError::UnknownKey)
        );
        let v = Verifier::new().with_key("k2", b"other");
        assert_eq!(
            v.verify_at(&header, &fields(), 5),
            Err(VerifyError::Mismatch)
        );
        for bad in [
            "",
            "v1",
            "v2;kid=k1;ts=1;sig=AA",
            "v1;kid=k1;ts=x;sig=AA",
            "v1;ts=1;kid=k1;sig=AA",
            "v1;kid=k1;ts=1;sig=AA;extra=1",
            "v1;kid=k2;ts=5;sig=!!!",
        ] {
            assert!(v.verify_at(bad, &fields(), 5).is_err(), "{bad}");
        }
    }
}
