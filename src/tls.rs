//! TLS certificates: loaded and checked at compile time, and the store that picks one by SNI
//! (the handshake-time side, reading the *current* snapshot, is `tls_accept`).
//!
//! Lookup order (SPEC): exact SAN, then wildcard SAN (`*.gw.example.com` covers one label),
//! then `tls.default_certificate`. With no match and no default the handshake is refused.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider used everywhere: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A loaded certificate with the names it serves.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the certificate's SANs, lower-case (wildcards as `*.example.com`).
    pub names: Vec<String>,
    /// `notAfter`, as Unix seconds.
    pub not_after: i64,
}

/// Reads a PEM chain and key, checks that the key matches the leaf, and extracts the SANs.
pub fn load_cert(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, String> {
    let cert_pem = crate::files::read_file(cert_path)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert_path.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse certificate {}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert_path.display()));
    }
    let key_pem = crate::files::read_file(key_path)
        .map_err(|e| format!("cannot read private key {}: {e}", key_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("cannot read private key {}: {e}", key_path.display()))?;
    let (names, not_after) = leaf_names(&chain[0])
        .map_err(|e| format!("cannot parse certificate {}: {e}", cert_path.display()))?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        format!(
            "certificate {} and key {} do not match: {e}",
            cert_path.display(),
            key_path.display()
        )
    })?;
    // `from_der` lets an undeterminable match through; we insist on a positive check.
    certified.keys_match().map_err(|e| {
        format!(
            "certificate {} and key {} do not match: {e}",
            cert_path.display(),
            key_path.display()
        )
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

fn leaf_names(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// Certificates by the names they serve; built at compile time, read on every handshake.
#[derive(Default)]
pub struct CertStore {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    count: usize,
    /// (label, notAfter) of every distinct certificate, for the expiry metric.
    expiry: Vec<(String, i64)>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("exact", &self.exact.len())
            .field("wildcard", &self.wildcard.len())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl CertStore {
    /// Adds a certificate under every SAN it carries. Returns the names already taken by
    /// another certificate (the first one added keeps them).
    pub fn add(&mut self, cert: &LoadedCert) -> Vec<String> {
        self.note(cert);
        let mut taken = Vec::new();
        for name in &cert.names {
            let (table, key) = match name.strip_prefix("*.") {
                Some(suffix) => (&mut self.wildcard, suffix),
                None => (&mut self.exact, name.as_str()),
            };
            match table.get(key) {
                Some(existing) if !Arc::ptr_eq(existing, &cert.key) => taken.push(name.clone()),
                Some(_) => {}
                None => {
                    table.insert(key.into(), cert.key.clone());
                }
            }
        }
        taken
    }

    pub fn set_default(&mut self, cert: &LoadedCert) {
        self.note(cert);
        self.default = Some(cert.key.clone());
    }

    fn note(&mut self, cert: &LoadedCert) {
        let label = cert.names.first().cloned().unwrap_or_default();
        if !self
            .expiry
            .iter()
            .any(|(l, t)| *l == label && *t == cert.not_after)
        {
            self.count += 1;
            self.expiry.push((label, cert.not_after));
        }
    }

    /// `(first SAN, notAfter as Unix seconds)` of each certificate.
    pub fn expiries(&self) -> impl Iterator<Item = (&str, i64)> {
        self.expiry.iter().map(|(l, t)| (l.as_str(), *t))
    }

    /// Number of certificates added (default included).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Exact name, then wildcard for the parent domain, then the default.
    pub fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            // rustls hands us the SNI already validated as a DNS name; compare lower-case.
            let lowered;
            let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                lowered = name.to_ascii_lowercase();
                lowered.as_str()
            } else {
                name
            };
            if let Some(k) = self.exact.get(name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return Some(k.clone());
            }
        }
        self.default.clone()
    }
}
