//! Signed tenant headers: the gateway signs, upstream services verify.
//!
//! This crate is tenant-gateway's own signer (re-exported as `tenant_gateway::signing`) and the
//! verifier the Rust middleware (`tenant-context`) uses: one implementation for both sides.
//!
//! Two versions of `x-tenant-signature` (SPEC "What the upstream receives" and "Signatures,
//! second version"):
//!
//! ```text
//! v1;kid=<id>;ts=<unix s>;sig=<b64url>                      HMAC-SHA256
//!   v1\n<ts>\n<x-request-id>\n<METHOD>\n<authority>\n<path?query>\n<tenant>\n<plan>\n<subject>
//! v2;kid=<id>;alg=<ed25519|hmac-sha256>;ts=<unix s>;aud=<pool>;sig=<b64url>
//!   v2\n<ts>\n<x-request-id>\n<METHOD>\n<authority>\n<path?query>\n<tenant>\n<plan>\n<subject>\n<source>\n<audience>
//! ```
//!
//! The authority is compared lower-case; `sig` is base64url without padding. v2 adds the
//! agreeing sources (`x-tenant-source`) and the audience, the name of the upstream pool the
//! request was sent to, so a signature minted for one pool is refused by a service expecting
//! another; with Ed25519 keys, services hold only public keys (published as a JWKS).
//!
//! A subject that is not visible ASCII is sent and signed percent-encoded ([`encode_subject`]).
//!
//! An upstream verifies with [`Verifier`]: it looks the key up by `kid`, recomputes the
//! signature over what *it* received (so a changed method, path, host, tenant or source
//! fails), compares in constant time, and rejects a `ts` outside its skew window (default 300 s)
//! so an old request cannot be replayed forever.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The version tag of the first format.
pub const VERSION: &str = "v1";
/// The version tag of the second format.
pub const VERSION_2: &str = "v2";

/// Default accepted clock skew between gateway and upstream, in seconds.
pub const DEFAULT_SKEW_SECONDS: u64 = 300;

/// Which header format the gateway writes (`signing.version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigVersion {
    #[default]
    V1,
    V2,
}

/// How a key signs (`signing.keys[].algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha256,
    Ed25519,
}

impl Algorithm {
    /// The name used in the config and in the v2 header's `alg=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::Ed25519 => "ed25519",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hmac-sha256" => Some(Self::HmacSha256),
            "ed25519" => Some(Self::Ed25519),
            _ => None,
        }
    }
}

/// What a signature covers, apart from the timestamp (and, in v2, the audience).
#[derive(Debug, Clone, Copy)]
pub struct SignedFields<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    /// The authority as forwarded; compared lower-case.
    pub authority: &'a str,
    pub path_and_query: &'a str,
    pub tenant: &'a str,
    pub plan: &'a str,
    /// JWT `sub` as sent (see [`encode_subject`]), or empty when no token was used.
    pub subject: &'a str,
    /// The agreeing sources as sent in `x-tenant-source` (signed by v2 only).
    pub source: &'a str,
}

/// The canonical v1 string, exactly as signed. Useful for debugging an upstream's verifier.
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

/// The canonical v2 string, exactly as signed.
pub fn canonical_v2(ts: u64, f: &SignedFields<'_>, audience: &str) -> String {
    let mut out = canonical(ts, f);
    out.replace_range(..VERSION.len(), VERSION_2);
    out.push('\n');
    out.push_str(f.source);
    out.push('\n');
    out.push_str(audience);
    out
}

fn mac_v1(key: &hmac::Key, ts: u64, f: &SignedFields<'_>) -> hmac::Tag {
    // Feed the pieces straight into the MAC: no canonical string is built on the hot path.
    let mut ctx = hmac::Context::with_key(key);
    let mut ts_buf = itoa::Buffer::new();
    ctx.update(VERSION.as_bytes());
    ctx.update(b"\n");
    ctx.update(ts_buf.format(ts).as_bytes());
    ctx.update(b"\n");
    ctx.update(f.request_id.as_bytes());
    ctx.update(b"\n");
    ctx.update(f.method.as_bytes());
    ctx.update(b"\n");
    ctx.update(lowercase(f.authority).as_bytes());
    for part in [f.path_and_query, f.tenant, f.plan, f.subject] {
        ctx.update(b"\n");
        ctx.update(part.as_bytes());
    }
    ctx.sign()
}

fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// The v2 canonical bytes, built into one buffer (Ed25519 signs a whole message).
fn message_v2(ts: u64, f: &SignedFields<'_>, audience: &str) -> Vec<u8> {
    let mut ts_buf = itoa::Buffer::new();
    let parts = [
        VERSION_2,
        ts_buf.format(ts),
        f.request_id,
        f.method,
        &lowercase(f.authority),
        f.path_and_query,
        f.tenant,
        f.plan,
        f.subject,
        f.source,
        audience,
    ];
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(p.as_bytes());
    }
    out
}

/// Percent-encodes a subject that is not entirely visible ASCII: every byte of its UTF-8
/// outside `0x21..=0x7E`, and `%` itself, becomes `%XX` (upper-case hex). A visible-ASCII
/// subject without `%` is returned as it is. `zoë` → `zo%C3%AB`.
pub fn encode_subject(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'%') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// Reverses [`encode_subject`]; `None` when the result is not UTF-8 or an escape is malformed.
pub fn decode_subject(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// === impl SigningKey ===

enum Material {
    Hmac(Box<hmac::Key>),
    Ed25519(Ed25519KeyPair),
}

/// One signing key with its id (`kid`): an HMAC secret or an Ed25519 private key.
pub struct SigningKey {
    id: Box<str>,
    material: Material,
}

impl SigningKey {
    /// An HMAC-SHA256 key from raw secret bytes.
    pub fn new(id: &str, secret: &[u8]) -> Self {
        Self {
            id: id.into(),
            material: Material::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, secret))),
        }
    }

    /// An Ed25519 key from a PKCS#8 document (DER).
    pub fn ed25519_pkcs8(id: &str, der: &[u8]) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(der))
            .map_err(|e| format!("not an Ed25519 PKCS#8 private key: {e}"))?;
        Ok(Self {
            id: id.into(),
            material: Material::Ed25519(pair),
        })
    }

    /// An Ed25519 key from a PKCS#8 PEM file's contents (`-----BEGIN PRIVATE KEY-----`).
    pub fn ed25519_pem(id: &str, pem: &[u8]) -> Result<Self, String> {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PKCS#8 PEM private key: {e}"))?;
        Self::ed25519_pkcs8(id, der.secret_pkcs8_der())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.material {
            Material::Hmac(_) => Algorithm::HmacSha256,
            Material::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// The raw 32-byte public key of an Ed25519 key; `None` for HMAC.
    pub fn public_key(&self) -> Option<&[u8]> {
        match &self.material {
            Material::Ed25519(pair) => Some(pair.public_key().as_ref()),
            Material::Hmac(_) => None,
        }
    }

    /// The public key as a JWK (`OKP`/`Ed25519`); `None` for HMAC keys, which are never published.
    pub fn public_jwk(&self) -> Option<serde_json::Value> {
        let x = self.public_key()?;
        Some(serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "kid": &*self.id,
            "x": URL_SAFE_NO_PAD.encode(x),
            "alg": "EdDSA",
            "use": "sig",
        }))
    }

    /// The v1 header value `v1;kid=..;ts=..;sig=..` (HMAC keys; an Ed25519 key signs v2).
    pub fn sign(&self, ts: u64, fields: &SignedFields<'_>) -> String {
        match &self.material {
            Material::Hmac(key) => {
                let tag = mac_v1(key, ts, fields);
                format!(
                    "{VERSION};kid={};ts={ts};sig={}",
                    self.id,
                    URL_SAFE_NO_PAD.encode(tag.as_ref())
                )
            }
            Material::Ed25519(_) => self.sign_v2(ts, fields, ""),
        }
    }

    /// The v2 header value `v2;kid=..;alg=..;ts=..;aud=..;sig=..` for `audience` (the pool).
    pub fn sign_v2(&self, ts: u64, fields: &SignedFields<'_>, audience: &str) -> String {
        let msg = message_v2(ts, fields, audience);
        let sig = match &self.material {
            Material::Hmac(key) => URL_SAFE_NO_PAD.encode(hmac::sign(key, &msg).as_ref()),
            Material::Ed25519(pair) => URL_SAFE_NO_PAD.encode(pair.sign(&msg).as_ref()),
        };
        format!(
            "{VERSION_2};kid={};alg={};ts={ts};aud={audience};sig={sig}",
            self.id,
            self.algorithm().as_str()
        )
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

/// The public keys of `keys` as a JWKS document (Ed25519 keys only; HMAC secrets are never
/// published). Served at `/.well-known/tenant-signing-keys` and by `tenant-gateway signing-keys`.
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> serde_json::Value {
    let keys: Vec<_> = keys
        .into_iter()
        .filter_map(SigningKey::public_jwk)
        .collect();
    serde_json::json!({ "keys": keys })
}

/// How one upstream pool's requests are signed: the key, the version and the audience.
#[derive(Debug, Clone)]
pub struct Signer {
    pub key: std::sync::Arc<SigningKey>,
    pub version: SigVersion,
    /// The pool's name (v2 `aud=`).
    pub audience: Box<str>,
}

impl Signer {
    /// The header value for `fields` at `ts`.
    pub fn sign(&self, ts: u64, fields: &SignedFields<'_>) -> String {
        match self.version {
            SigVersion::V1 => self.key.sign(ts, fields),
            SigVersion::V2 => self.key.sign_v2(ts, fields, &self.audience),
        }
    }
}

// === impl Verifier ===

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature header is malformed")]
    Malformed,
    #[error("unsupported signature version")]
    Version,
    #[error("unknown key id")]
    UnknownKey,
    #[error("algorithm does not match the key")]
    Algorithm,
    #[error("signature was minted for another audience")]
    Audience,
    #[error("timestamp outside the accepted skew window")]
    Stale,
    #[error("signature does not match the request")]
    Mismatch,
}

/// The parts of a `x-tenant-signature` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSignature<'a> {
    pub version: SigVersion,
    pub kid: &'a str,
    /// v2 only.
    pub alg: Option<Algorithm>,
    pub ts: u64,
    /// v2 only.
    pub aud: Option<&'a str>,
    pub sig: &'a str,
}

/// Parses `v1;kid=..;ts=..;sig=..` or `v2;kid=..;alg=..;ts=..;aud=..;sig=..` (fields in this
/// order, as the gateway writes them).
pub fn parse_header(value: &str) -> Result<ParsedSignature<'_>, VerifyError> {
    let mut parts = value.split(';');
    let version = match parts.next() {
        Some(VERSION) => SigVersion::V1,
        Some(VERSION_2) => SigVersion::V2,
        Some(v) if v.starts_with('v') && !v.contains('=') => return Err(VerifyError::Version),
        _ => return Err(VerifyError::Malformed),
    };
    let mut field = |name: &str| -> Result<&str, VerifyError> {
        let part = parts.next().ok_or(VerifyError::Malformed)?;
        let (k, v) = part.split_once('=').ok_or(VerifyError::Malformed)?;
        if k != name || v.is_empty() {
            return Err(VerifyError::Malformed);
        }
        Ok(v)
    };
    let kid = field("kid")?;
    let alg = match version {
        SigVersion::V1 => None,
        SigVersion::V2 => Some(Algorithm::parse(field("alg")?).ok_or(VerifyError::Algorithm)?),
    };
    let ts = field("ts")?;
    // Digits only: `u64::from_str` would also take `+5`, a second spelling of one header.
    if ts.len() > 19 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::Malformed);
    }
    let ts = ts.parse().map_err(|_| VerifyError::Malformed)?;
    let aud = match version {
        SigVersion::V1 => None,
        SigVersion::V2 => Some(field("aud")?),
    };
    let sig = field("sig")?;
    if parts.next().is_some() {
        return Err(VerifyError::Malformed);
    }
    Ok(ParsedSignature {
        version,
        kid,
        alg,
        ts,
        aud,
        sig,
    })
}

enum VerifyKey {
    Hmac(Box<hmac::Key>),
    Ed25519(Vec<u8>),
}

/// Checks signatures for an upstream service: keys by `kid` (HMAC secrets and Ed25519 public
/// keys), a skew window, and optionally the audience (the pool) the service belongs to.
pub struct Verifier {
    keys: HashMap<String, VerifyKey>,
    skew_seconds: u64,
    audience: Option<String>,
}

impl Verifier {
    /// A verifier with no keys, the default skew window (300 s) and no expected audience.
    pub fn new() -> Self {
        Self {
            keys: HashMap::new(),
            skew_seconds: DEFAULT_SKEW_SECONDS,
            audience: None,
        }
    }

    /// Adds (or replaces) the HMAC key known as `kid`.
    pub fn with_key(mut self, kid: &str, secret: &[u8]) -> Self {
        self.keys.insert(
            kid.to_owned(),
            VerifyKey::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, secret))),
        );
        self
    }

    /// Adds (or replaces) the Ed25519 public key (32 raw bytes) known as `kid`.
    pub fn with_ed25519_key(mut self, kid: &str, public_key: &[u8]) -> Self {
        self.keys
            .insert(kid.to_owned(), VerifyKey::Ed25519(public_key.to_vec()));
        self
    }

    /// Adds every `OKP`/`Ed25519` key of a JWKS document (as the gateway publishes it).
    pub fn with_jwks(mut self, jwks: &str) -> Result<Self, VerifyError> {
        let doc: serde_json::Value =
            serde_json::from_str(jwks).map_err(|_| VerifyError::Malformed)?;
        let keys = doc["keys"].as_array().ok_or(VerifyError::Malformed)?;
        for k in keys {
            if k["kty"] != "OKP" || k["crv"] != "Ed25519" {
                continue;
            }
            let (Some(kid), Some(x)) = (k["kid"].as_str(), k["x"].as_str()) else {
                return Err(VerifyError::Malformed);
            };
            let x = URL_SAFE_NO_PAD
                .decode(x)
                .map_err(|_| VerifyError::Malformed)?;
            if x.len() != 32 {
                return Err(VerifyError::Malformed);
            }
            self = self.with_ed25519_key(kid, &x);
        }
        Ok(self)
    }

    /// Sets the accepted difference between `ts` and now, in seconds, either way.
    pub fn with_skew_seconds(mut self, skew: u64) -> Self {
        self.skew_seconds = skew;
        self
    }

    /// The accepted skew, in seconds (default 300).
    pub fn skew_seconds(&self) -> u64 {
        self.skew_seconds
    }

    /// Accepts only v2 signatures minted for `audience` (the service's pool name); v1
    /// signatures, which name no audience, are then refused.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.audience = Some(audience.to_owned());
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
        match (&parsed.alg, key) {
            (None | Some(Algorithm::HmacSha256), VerifyKey::Hmac(_))
            | (Some(Algorithm::Ed25519), VerifyKey::Ed25519(_)) => {}
            _ => return Err(VerifyError::Algorithm),
        }
        if let Some(expected) = &self.audience
            && parsed.aud != Some(expected.as_str())
        {
            return Err(VerifyError::Audience);
        }
        if parsed.ts.abs_diff(now) > self.skew_seconds {
            return Err(VerifyError::Stale);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(parsed.sig)
            .map_err(|_| VerifyError::Malformed)?;
        let ok = match (parsed.aud, key) {
            (None, VerifyKey::Hmac(k)) => {
                let expected = mac_v1(k, parsed.ts, fields);
                aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_ref(), &sig).is_ok()
            }
            (Some(aud), VerifyKey::Hmac(k)) => {
                hmac::verify(k, &message_v2(parsed.ts, fields, aud), &sig).is_ok()
            }
            (Some(aud), VerifyKey::Ed25519(pk)) => {
                signature::UnparsedPublicKey::new(&signature::ED25519, pk)
                    .verify(&message_v2(parsed.ts, fields, aud), &sig)
                    .is_ok()
            }
            (None, VerifyKey::Ed25519(_)) => false,
        };
        if ok {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
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
            let mut all = h.get_all(name).iter();
            let v = all.next().ok_or(VerifyError::Malformed)?;
            if all.next().is_some() {
                return Err(VerifyError::Malformed);
            }
            v.to_str().map_err(|_| VerifyError::Malformed)
        };
        let optional = |name: &str| -> Result<&str, VerifyError> {
            if h.contains_key(name) {
                get(name)
            } else {
                Ok("")
            }
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
            subject: optional("x-tenant-subject")?,
            source: optional("x-tenant-source")?,
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
            source: "host,token",
        }
    }

    /// A fixed Ed25519 key (RFC 8032 test 1 seed) in PKCS#8 v1 DER.
    fn ed25519_key(id: &str) -> SigningKey {
        let seed = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ];
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&seed);
        SigningKey::ed25519_pkcs8(id, &der).expect("ed25519 key")
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
    fn v2_signs_the_documented_canonical_string() {
        let c = canonical_v2(42, &fields(), "shared");
        assert_eq!(
            c,
            "v2\n42\nreq-1\nGET\nacme.gw.example.com\n/api/orders?x=1\nacme\nenterprise\nuser-7\nhost,token\nshared"
        );
        let key = SigningKey::new("k2", b"secret");
        let header = key.sign_v2(42, &fields(), "shared");
        let parsed = parse_header(&header).expect("parses");
        assert_eq!(parsed.alg, Some(Algorithm::HmacSha256));
        assert_eq!(parsed.aud, Some("shared"));
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, b"secret"), c.as_bytes());
        assert_eq!(parsed.sig, URL_SAFE_NO_PAD.encode(tag.as_ref()));
        // Ed25519 signs the same bytes; the published public key verifies them.
        let ed = ed25519_key("e1");
        let header = ed.sign_v2(42, &fields(), "shared");
        assert!(header.starts_with("v2;kid=e1;alg=ed25519;ts=42;aud=shared;sig="));
        let sig = URL_SAFE_NO_PAD
            .decode(parse_header(&header).expect("parses").sig)
            .expect("b64");
        let pk = ed.public_key().expect("public key");
        assert!(
            signature::UnparsedPublicKey::new(&signature::ED25519, pk)
                .verify(c.as_bytes(), &sig)
                .is_ok()
        );
    }

    #[test]
    fn v2_verifies_through_the_published_jwks_and_binds_the_audience() {
        let ed = ed25519_key("e1");
        let jwks = jwks([&ed, &SigningKey::new("h1", b"secret")]).to_string();
        assert!(
            !jwks.contains("h1"),
            "HMAC keys are never published: {jwks}"
        );
        let header = ed.sign_v2(100, &fields(), "shared");
        let v = Verifier::new().with_jwks(&jwks).expect("jwks");
        assert_eq!(v.verify_at(&header, &fields(), 100), Ok(()));
        let shared = Verifier::new()
            .with_jwks(&jwks)
            .expect("jwks")
            .with_audience("shared");
        assert_eq!(shared.verify_at(&header, &fields(), 100), Ok(()));
        let other = Verifier::new()
            .with_jwks(&jwks)
            .expect("jwks")
            .with_audience("acme-dedicated");
        assert_eq!(
            other.verify_at(&header, &fields(), 100),
            Err(VerifyError::Audience)
        );
        // Rewriting aud= in the header breaks the signature.
        let forged = header.replace("aud=shared", "aud=acme-dedicated");
        assert_eq!(
            other.verify_at(&forged, &fields(), 100),
            Err(VerifyError::Mismatch)
        );
        // v1 names no audience: refused where one is expected.
        let v1 = SigningKey::new("k1", b"secret").sign(100, &fields());
        let with_hmac = Verifier::new()
            .with_key("k1", b"secret")
            .with_audience("shared");
        assert_eq!(
            with_hmac.verify_at(&v1, &fields(), 100),
            Err(VerifyError::Audience)
        );
    }

    #[test]
    fn v2_covers_the_source_and_every_v1_field() {
        let key = SigningKey::new("k2", b"s");
        let header = key.sign_v2(5, &fields(), "shared");
        let v = Verifier::new().with_key("k2", b"s");
        assert_eq!(v.verify_at(&header, &fields(), 5), Ok(()));
        for f in [
            SignedFields {
                source: "host",
                ..fields()
            },
            SignedFields {
                subject: "",
                ..fields()
            },
            SignedFields {
                method: "POST",
                ..fields()
            },
            SignedFields {
                request_id: "req-2",
                ..fields()
            },
            SignedFields {
                plan: "free",
                ..fields()
            },
        ] {
            assert_eq!(v.verify_at(&header, &f, 5), Err(VerifyError::Mismatch));
        }
        // v1 does not cover the source (documented), v2 does.
        let v1 = key.sign(5, &fields());
        let f = SignedFields {
            source: "host",
            ..fields()
        };
        assert_eq!(v.verify_at(&v1, &f, 5), Ok(()));
    }

    #[test]
    fn a_key_verifies_only_with_its_own_algorithm() {
        let ed = ed25519_key("k");
        let header = ed.sign_v2(5, &fields(), "shared");
        // The same kid known as an HMAC key: refused before any MAC is computed.
        let v = Verifier::new().with_key("k", b"s");
        assert_eq!(
            v.verify_at(&header, &fields(), 5),
            Err(VerifyError::Algorithm)
        );
        let hmac_header = SigningKey::new("k", b"s").sign_v2(5, &fields(), "shared");
        let pk = ed.public_key().expect("pk").to_vec();
        let v = Verifier::new().with_ed25519_key("k", &pk);
        assert_eq!(
            v.verify_at(&hmac_header, &fields(), 5),
            Err(VerifyError::Algorithm)
        );
        // A v1 header for an Ed25519 kid is refused too.
        let v1 = SigningKey::new("k", b"s").sign(5, &fields());
        assert_eq!(v.verify_at(&v1, &fields(), 5), Err(VerifyError::Algorithm));
        // A forged Ed25519 signature fails.
        let mut forged = header.clone();
        forged.truncate(forged.len() - 4);
        forged.push_str("AAAA");
        let v = Verifier::new().with_ed25519_key("k", &pk);
        assert!(v.verify_at(&forged, &fields(), 5).is_err());
        assert_eq!(v.verify_at(&header, &fields(), 5), Ok(()));
    }

    #[test]
    fn subjects_outside_visible_ascii_are_percent_encoded() {
        assert_eq!(encode_subject("user-7"), "user-7");
        assert_eq!(encode_subject("zoë"), "zo%C3%AB");
        assert_eq!(encode_subject("a b%"), "a%20b%25");
        assert_eq!(encode_subject(""), "");
        assert_eq!(decode_subject("zo%C3%AB").as_deref(), Some("zoë"));
        assert_eq!(decode_subject("a%20b%25").as_deref(), Some("a b%"));
        assert_eq!(decode_subject("%FF"), None);
        assert_eq!(decode_subject("%4"), None);
        for s in ["zoë", "a b", "100%", "東京", "\u{0}x"] {
            assert_eq!(decode_subject(&encode_subject(s)).as_deref(), Some(s));
        }
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
        let v = v.with_skew_seconds(10);
        assert_eq!(
            v.verify_at(&header, &fields(), 10_011),
            Err(VerifyError::Stale)
        );
        assert_eq!(v.verify_at(&header, &fields(), 10_010), Ok(()));
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
            SignedFields {
                request_id: "other",
                ..fields()
            },
            SignedFields {
                plan: "free",
                ..fields()
            },
        ];
        for f in changed {
            assert_eq!(v.verify_at(&header, &f, 5), Err(VerifyError::Mismatch));
        }
        // The authority is compared lower-case.
        let f = SignedFields {
            authority: "acme.gw.example.com",
            ..fields()
        };
        assert_eq!(v.verify_at(&header, &f, 5), Ok(()));
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
            "v3;kid=k1;ts=1;sig=AA",
            "v1;kid=k1;ts=x;sig=AA",
            "v1;kid=k1;ts=+5;sig=AA",
            "v1;ts=1;kid=k1;sig=AA",
            "v1;kid=k1;ts=1;sig=AA;extra=1",
            "v1;kid=k2;ts=5;sig=!!!",
            "v2;kid=k2;ts=5;sig=AA",
            "v2;kid=k2;alg=rsa;ts=5;aud=x;sig=AA",
            "v2;kid=k2;alg=hmac-sha256;ts=5;sig=AA",
            "v2;kid=k2;alg=hmac-sha256;ts=5;aud=;sig=AA",
        ] {
            assert!(v.verify_at(bad, &fields(), 5).is_err(), "{bad}");
        }
        assert_eq!(parse_header("v9;kid=a"), Err(VerifyError::Version));
    }

    #[test]
    fn verify_request_reads_what_the_upstream_received() {
        let key = SigningKey::new("k1", b"s");
        let now = unix_now();
        let header = key.sign_v2(now, &fields(), "shared");
        let req = |sig: &str, source: &str| {
            http::Request::builder()
                .method("GET")
                .uri("/api/orders?x=1")
                .header("host", "Acme.GW.example.com")
                .header("x-request-id", "req-1")
                .header("x-tenant-id", "acme")
                .header("x-tenant-plan", "enterprise")
                .header("x-tenant-subject", "user-7")
                .header("x-tenant-source", source)
                .header("x-tenant-signature", sig)
                .body(())
                .expect("request")
        };
        let v = Verifier::new().with_key("k1", b"s");
        assert_eq!(v.verify_request(&req(&header, "host,token")), Ok(()));
        assert_eq!(
            v.verify_request(&req(&header, "host")),
            Err(VerifyError::Mismatch)
        );
        let mut dup = req(&header, "host,token");
        dup.headers_mut()
            .append("x-tenant-id", http::HeaderValue::from_static("globex"));
        assert_eq!(v.verify_request(&dup), Err(VerifyError::Malformed));
    }

    // === what cargo-mutants showed the tests above did not pin down ===

    #[test]
    fn verify_checks_at_the_current_time() {
        let key = SigningKey::new("k1", b"s");
        let v = Verifier::new().with_key("k1", b"s");
        assert!(unix_now() > 1_700_000_000, "a real clock");
        assert_eq!(
            v.verify(&key.sign(unix_now(), &fields()), &fields()),
            Ok(())
        );
        assert_eq!(
            v.verify(&key.sign(1_000, &fields()), &fields()),
            Err(VerifyError::Stale)
        );
        let other = SignedFields {
            tenant: "globex",
            ..fields()
        };
        assert_eq!(
            v.verify(&key.sign(unix_now(), &fields()), &other),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(v.skew_seconds(), DEFAULT_SKEW_SECONDS);
        assert_eq!(v.with_skew_seconds(10).skew_seconds(), 10);
    }

    #[test]
    fn a_pool_signer_writes_a_header_its_verifier_accepts() {
        let key = std::sync::Arc::new(SigningKey::new("k1", b"s"));
        assert_eq!(key.id(), "k1");
        let debug = format!("{key:?}");
        assert!(
            debug.contains("k1") && debug.contains("HmacSha256"),
            "{debug}"
        );
        for version in [SigVersion::V1, SigVersion::V2] {
            let signer = Signer {
                key: key.clone(),
                version,
                audience: "shared".into(),
            };
            let header = signer.sign(5, &fields());
            let v = Verifier::new().with_key("k1", b"s");
            assert_eq!(v.verify_at(&header, &fields(), 5), Ok(()), "{header}");
            let expect_aud = version == SigVersion::V2;
            assert_eq!(header.contains(";aud=shared;"), expect_aud, "{header}");
        }
    }

    #[test]
    fn a_visible_ascii_subject_is_not_copied() {
        assert!(matches!(encode_subject("user-7"), Cow::Borrowed(_)));
        assert!(matches!(encode_subject("50%"), Cow::Owned(_)));
    }

    #[test]
    fn header_fields_are_read_strictly() {
        for (bad, err) in [
            ("x", VerifyError::Malformed),
            ("kid=1", VerifyError::Malformed),
            ("v=1;kid=k1;ts=5;sig=AA", VerifyError::Malformed),
            ("v9", VerifyError::Version),
            ("v1;key=k1;ts=5;sig=AA", VerifyError::Malformed),
            ("v1;kid=;ts=5;sig=AA", VerifyError::Malformed),
            ("v1;kid=k1;ts=+5;sig=AA", VerifyError::Malformed),
            ("v1;kid=k1;ts=5a;sig=AA", VerifyError::Malformed),
            (
                "v1;kid=k1;ts=99999999999999999999;sig=AA",
                VerifyError::Malformed,
            ),
        ] {
            assert_eq!(parse_header(bad).map(|_| ()), Err(err), "{bad}");
        }
        // The largest timestamps that fit are still read (19 digits).
        let p = parse_header("v1;kid=k1;ts=1000000000000000000;sig=AA").expect("19 digits");
        assert_eq!(p.ts, 1_000_000_000_000_000_000);
    }

    #[test]
    fn a_jwks_yields_only_its_ed25519_keys() {
        let x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let jwks = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "X25519", "kid": "dh", "x": x},
            {"kty": "EC", "crv": "Ed25519", "kid": "ec", "x": x},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ok", "x": x},
        ]})
        .to_string();
        let v = Verifier::new().with_jwks(&jwks).expect("jwks");
        let header = |kid: &str| format!("v2;kid={kid};alg=ed25519;ts=5;aud=a;sig=AA");
        assert_eq!(
            v.verify_at(&header("dh"), &fields(), 5),
            Err(VerifyError::UnknownKey)
        );
        assert_eq!(
            v.verify_at(&header("ec"), &fields(), 5),
            Err(VerifyError::UnknownKey)
        );
        assert_eq!(
            v.verify_at(&header("ok"), &fields(), 5),
            Err(VerifyError::Mismatch)
        );
    }
}
