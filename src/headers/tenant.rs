//! The trusted tenant headers. Names are built once from `signing.header_prefix`; every client
//! header that starts with the prefix is removed before ours are set, so an upstream never sees a
//! client-forged `x-tenant-*` header (linkerd2-proxy's set_identity_header does the same).

use http::HeaderMap;
use http::header::HeaderName;

#[derive(Debug, Clone)]
pub struct TenantHeaderNames {
    /// `x-tenant` (no trailing dash).
    prefix: Box<str>,
    pub id: HeaderName,
    pub plan: HeaderName,
    pub source: HeaderName,
    pub subject: HeaderName,
    pub signature: HeaderName,
}

impl TenantHeaderNames {
    /// `None` if the prefix is not a valid lower-case header name.
    pub fn new(prefix: &str) -> Option<Self> {
        if prefix.is_empty() || prefix.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let name =
            |suffix: &str| HeaderName::from_bytes(format!("{prefix}-{suffix}").as_bytes()).ok();
        Some(Self {
            prefix: prefix.into(),
            id: name("id")?,
            plan: name("plan")?,
            source: name("source")?,
            subject: name("subject")?,
            signature: name("signature")?,
        })
    }

    fn is_ours(&self, name: &HeaderName) -> bool {
        let n = name.as_str();
        n.strip_prefix(&*self.prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    }

    /// Removes every header named `<prefix>` or `<prefix>-*`.
    pub fn strip_client_copies(&self, headers: &mut HeaderMap) {
        // Collect first only when there is something to remove (the common case allocates nothing).
        if !headers.keys().any(|k| self.is_ours(k)) {
            return;
        }
        let ours: Vec<HeaderName> = headers
            .keys()
            .filter(|k| self.is_ours(k))
            .cloned()
            .collect();
        for name in ours {
            headers.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_prefixed_headers() {
        let names = TenantHeaderNames::new("x-tenant").expect("names");
        let mut h = HeaderMap::new();
        h.insert("x-tenant-id", "globex".parse().expect("v"));
        h.append("x-tenant-id", "initech".parse().expect("v"));
        h.insert("x-tenant-signature", "v1;forged".parse().expect("v"));
        h.insert("x-tenant", "x".parse().expect("v"));
        h.insert("x-tenantish", "kept".parse().expect("v"));
        h.insert("x-other", "kept".parse().expect("v"));
        names.strip_client_copies(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["x-other", "x-tenantish"]);
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert!(TenantHeaderNames::new("X-Tenant").is_none());
        assert!(TenantHeaderNames::new("").is_none());
        assert!(TenantHeaderNames::new("x tenant").is_none());
    }
}
