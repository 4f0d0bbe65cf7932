//! The edge identity part of compilation: `tls.client_auth`, `trusted_proxies` and their
//! cross-checks.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::client_auth::{ClientAuth, build_verifier, normalize_san};
use crate::config::errors::ConfigErrors;
use crate::config::raw::{RawClientAuthMode, RawConfig, RawSource};
use crate::proxy_protocol::TrustedProxies;
use crate::snapshot::{ListenerSpec, TenantId};

/// The edge identity settings compiled from one config.
pub struct EdgeIdentity {
    pub client_auth: Option<ClientAuth>,
    pub trusted_proxies: TrustedProxies,
    /// Files to watch (the CA bundle).
    pub files: Vec<PathBuf>,
}

/// Compiles `tls.client_auth`, `trusted_proxies` and their cross-checks, pushing errors with
/// their YAML paths.
pub fn compile_edge(
    errors: &mut ConfigErrors,
    raw: &RawConfig,
    listeners: &[ListenerSpec],
) -> EdgeIdentity {
    let mut files = Vec::new();
    let client_auth = raw
        .tls
        .as_ref()
        .and_then(|t| t.client_auth.as_ref())
        .and_then(|ca| {
            files.push(ca.ca_file.clone());
            match build_verifier(&ca.ca_file, ca.mode) {
                Ok(v) => Some(ClientAuth {
                    required: ca.mode == RawClientAuthMode::Required,
                    verifier: v,
                }),
                Err(e) => {
                    errors.push("tls.client_auth.ca_file", e);
                    None
                }
            }
        });
    let client_auth_configured = raw.tls.as_ref().is_some_and(|t| t.client_auth.is_some());
    if client_auth_configured && !listeners.iter().any(|l| l.tls) {
        errors.push(
            "tls.client_auth",
            "client certificates need a TLS listener (listeners[].tls: true)",
        );
    }
    if raw.tenancy.sources.contains(&RawSource::ClientCert) && !client_auth_configured {
        errors.push(
            "tenancy.sources",
            "client_cert is listed but tls.client_auth is not configured",
        );
    }
    let mut cidrs = Vec::new();
    for (i, c) in raw.trusted_proxies.iter().enumerate() {
        match crate::proxy_protocol::Cidr::parse(c) {
            Some(cidr) => cidrs.push(cidr),
            None => errors.push(
                format!("trusted_proxies[{i}]"),
                format!("{c:?} is not an IP address or CIDR (10.0.0.0/8, fd00::/8)"),
            ),
        }
    }
    if raw.trusted_proxies.is_empty() {
        for (i, l) in raw.listeners.iter().enumerate() {
            if l.proxy_protocol {
                errors.push(
                    format!("listeners[{i}].proxy_protocol"),
                    "set trusted_proxies: a PROXY header is only accepted from a trusted peer",
                );
            }
        }
    }
    EdgeIdentity {
        client_auth,
        trusted_proxies: TrustedProxies::new(cidrs),
        files,
    }
}

/// Records a tenant's `client_cert_sans` in `table`; a SAN listed by two tenants is an error.
pub fn claim_sans(
    errors: &mut ConfigErrors,
    table: &mut HashMap<Box<str>, TenantId>,
    path: &str,
    sans: &[String],
    id: TenantId,
    client_auth: bool,
) {
    if !sans.is_empty() && !client_auth {
        errors.push(
            format!("{path}.client_cert_sans"),
            "tls.client_auth is not configured",
        );
    }
    for (i, san) in sans.iter().enumerate() {
        let key = normalize_san(san);
        if key.is_empty() {
            errors.push(format!("{path}.client_cert_sans[{i}]"), "must not be empty");
            continue;
        }
        if table
            .insert(key.into(), id)
            .is_some_and(|other| other != id)
        {
            errors.push(
                format!("{path}.client_cert_sans[{i}]"),
                format!("{san:?} is already listed by another tenant"),
            );
        }
    }
}
