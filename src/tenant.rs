//! Phase "resolve tenant": which tenant a request belongs to, from the connection's SNI and the
//! request's Host / `:authority`, with SPEC's agreement rule. Each source is one hash lookup in
//! the snapshot's host table.

use http::header::HOST;
use http::{HeaderValue, Request};

use crate::error::GatewayError;
use crate::snapshot::{Snapshot, TenantId, TenantStatus};
use crate::token::TokenClaims;

/// The sources that named the tenant, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceSet(u8);

impl SourceSet {
    pub const SNI: u8 = 1;
    pub const HOST: u8 = 2;
    pub const TOKEN: u8 = 4;
    pub const APIKEY: u8 = 8;
    pub const CLIENT_CERT: u8 = 16;

    pub fn insert(&mut self, bit: u8) {
        self.0 |= bit;
    }

    /// The same list as text, for logs.
    pub fn as_str(self) -> &'static str {
        const NAMES: [&str; 32] = [
            "",
            "sni",
            "host",
            "sni,host",
            "token",
            "sni,token",
            "host,token",
            "sni,host,token",
            "apikey",
            "sni,apikey",
            "host,apikey",
            "sni,host,apikey",
            "token,apikey",
            "sni,token,apikey",
            "host,token,apikey",
            "sni,host,token,apikey",
            "client_cert",
            "sni,client_cert",
            "host,client_cert",
            "sni,host,client_cert",
            "token,client_cert",
            "sni,token,client_cert",
            "host,token,client_cert",
            "sni,host,token,client_cert",
            "apikey,client_cert",
            "sni,apikey,client_cert",
            "host,apikey,client_cert",
            "sni,host,apikey,client_cert",
            "token,apikey,client_cert",
            "sni,token,apikey,client_cert",
            "host,token,apikey,client_cert",
            "sni,host,token,apikey,client_cert",
        ];
        NAMES[(self.0 & 0x1f) as usize]
    }

    /// `sni,host,token,apikey,client_cert` order, as sent in `x-tenant-source` (no allocation).
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// Who the request is for, and how we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub tenant: TenantId,
    pub sources: SourceSet,
}

/// The host a request names, port stripped: `:authority` / absolute-form URI first
/// (RFC 9112 §3.2.2), else the Host header. Two Host headers or a malformed one → 400.
pub fn request_host<B>(req: &Request<B>) -> Result<Option<&str>, GatewayError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Host header"));
    }
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => match header {
            Some(v) => v
                .to_str()
                .map_err(|_| GatewayError::BadRequest("invalid Host header"))?,
            None => return Ok(None),
        },
    };
    let host = strip_port(raw).ok_or(GatewayError::BadRequest("invalid Host header"))?;
    // A fully qualified name (`acme.gw.example.com.`) names the same host.
    let host = match host.strip_suffix('.') {
        Some(h) if !h.is_empty() && !h.ends_with('.') => h,
        Some(_) => return Err(GatewayError::BadRequest("invalid Host header")),
        None => host,
    };
    Ok(Some(host))
}

/// `name[:port]` → `name`; `[v6]:port` → `[v6]`. `None` for characters a host cannot hold.
pub fn strip_port(authority: &str) -> Option<&str> {
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let host = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let rest = &authority[end + 1..];
        if !(rest.is_empty() || rest.starts_with(':')) {
            return None;
        }
        &authority[..=end]
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return None,
            None => authority,
        }
    };
    let ok = !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        });
    ok.then_some(host)
}

/// Resolves the tenant from SNI and Host; a suspended tenant is refused here.
///
/// A source that names no tenant (e.g. SNI for a shared API host) abstains; two sources that
/// name different tenants are a 421. With no source naming a tenant: 404.
pub fn resolve_tenant(
    snap: &Snapshot,
    sni: Option<&str>,
    host: Option<&str>,
) -> Result<Option<Identity>, GatewayError> {
    let mut sources = SourceSet::default();
    let by_sni = sni
        .filter(|_| snap.sources.sni)
        .and_then(|s| snap.tenant_for_host(s));
    let by_host = host
        .filter(|_| snap.sources.host)
        .and_then(|h| snap.tenant_for_host(h));
    let tenant = match (by_sni, by_host) {
        (Some(a), Some(b)) if a != b => return Err(GatewayError::Misdirected),
        (Some(a), b) => {
            sources.insert(SourceSet::SNI);
            if b.is_some() {
                sources.insert(SourceSet::HOST);
            }
            a
        }
        (None, Some(b)) => {
            sources.insert(SourceSet::HOST);
            b
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(Identity { tenant, sources }))
}

/// Adds the token's and the API key's tenants to what SNI/Host said: every source that names a
/// tenant must name the same one (403 `tenant_mismatch` otherwise). A token naming a tenant
/// that is not configured is `unknown_tenant`, like any other unknown tenant.
pub fn agree(
    snap: &Snapshot,
    conn: Option<Identity>,
    token: Option<&TokenClaims>,
    apikey: Option<TenantId>,
) -> Result<Option<Identity>, GatewayError> {
    let mut identity = conn;
    if let Some(claims) = token {
        let t = *snap
            .tenant_ids
            .get(&*claims.tenant)
            .ok_or(GatewayError::UnknownTenant)?;
        identity = Some(join(identity, t, SourceSet::TOKEN, snap.sources.token)?);
    }
    if let Some(t) = apikey {
        identity = Some(join(identity, t, SourceSet::APIKEY, snap.sources.apikey)?);
    }
    match identity {
        // A token or key whose source may not identify a tenant alone only corroborates.
        Some(id) if id.sources == SourceSet::default() => Ok(None),
        other => Ok(other),
    }
}

fn join(
    current: Option<Identity>,
    tenant: TenantId,
    bit: u8,
    may_identify: bool,
) -> Result<Identity, GatewayError> {
    match current {
        Some(id) if id.tenant != tenant => Err(GatewayError::TenantMismatch),
        Some(mut id) => {
            id.sources.insert(bit);
            Ok(id)
        }
        None => {
            let mut sources = SourceSet::default();
            if may_identify {
                sources.insert(bit);
            }
            Ok(Identity { tenant, sources })
        }
    }
}

/// The tenant an API key belongs to: `Ok(None)` without the header, 401 for an unknown key.
pub fn apikey_tenant<B>(
    snap: &Snapshot,
    req: &Request<B>,
) -> Result<Option<TenantId>, GatewayError> {
    let Some(keys) = &snap.apikeys else {
        return Ok(None);
    };
    let Some(value) = req.headers().get(&keys.header) else {
        return Ok(None);
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    keys.by_hash
        .get(&hash)
        .copied()
        .map(Some)
        .ok_or(GatewayError::InvalidApiKey)
}

/// The last check of the identity phases: a tenant must have been found and be active.
pub fn admit_status(snap: &Snapshot, id: Option<Identity>) -> Result<Identity, GatewayError> {
    let id = id.ok_or(GatewayError::UnknownTenant)?;
    match snap.tenant(id.tenant).status {
        TenantStatus::Active => Ok(id),
        TenantStatus::Suspended => Err(GatewayError::TenantSuspended),
    }
}

/// Phase "resolve tenant", client-certificate part: joins the tenant named by the connection's
/// certificate SANs to what SNI/Host said. Different tenants → 403 `tenant_mismatch`. When
/// `client_cert` is not an allowed source the certificate only corroborates.
pub fn join_cert(
    snap: &Snapshot,
    sans: &[Box<str>],
    by_conn: Option<Identity>,
) -> Result<Option<Identity>, GatewayError> {
    let mut by_cert: Option<TenantId> = None;
    for san in sans {
        if let Some(&t) = snap.client_cert_sans.get(san) {
            if by_cert.is_some_and(|b| b != t) {
                return Err(GatewayError::TenantMismatch);
            }
            by_cert = Some(t);
        }
    }
    let Some(tenant) = by_cert else {
        return Ok(by_conn);
    };
    match by_conn {
        Some(id) if id.tenant != tenant => Err(GatewayError::TenantMismatch),
        Some(mut id) => {
            if snap.sources.client_cert {
                id.sources.insert(SourceSet::CLIENT_CERT);
            }
            Ok(Some(id))
        }
        None => {
            let mut sources = SourceSet::default();
            if snap.sources.client_cert {
                sources.insert(SourceSet::CLIENT_CERT);
            }
            Ok(Some(Identity { tenant, sources }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports_and_rejects_garbage() {
        assert_eq!(strip_port("acme.gw.test:8443"), Some("acme.gw.test"));
        assert_eq!(strip_port("acme.gw.test"), Some("acme.gw.test"));
        assert_eq!(strip_port("[::1]:80"), Some("[::1]"));
        assert_eq!(strip_port("a.b:x"), None);
        assert_eq!(strip_port("user@a.b"), None);
        assert_eq!(strip_port("a b"), None);
        assert_eq!(strip_port(""), None);
        assert_eq!(strip_port(":80"), None);
        assert_eq!(strip_port("[::1]x"), None);
    }

    #[test]
    fn source_header_lists_sources_in_order() {
        let mut s = SourceSet::default();
        s.insert(SourceSet::TOKEN);
        s.insert(SourceSet::SNI);
        assert_eq!(s.header_value(), "sni,token");
    }
}
