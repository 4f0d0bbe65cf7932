//! Client identity at the edge: client certificates (mTLS, `tls.client_auth`) and the
//! `client_cert` tenancy source.
//!
//! The CA is compiled into the snapshot like every certificate (so it is watched and reloaded
//! with them); the rustls server config holds a `tls_accept::SnapshotClientVerifier` that asks
//! the *current* snapshot on every handshake. `mode: required` refuses a handshake without a
//! valid certificate; `optional` accepts one without a certificate but still refuses an invalid
//! one. Refusals are counted by reason (`gateway_client_cert_failures{reason}`).
//!
//! A verified certificate's DNS and URI SANs (e.g. `spiffe://acme.example/billing`) are kept
//! with the connection; a tenant whose `client_cert_sans` lists one of them is the certificate's
//! tenant, and it must agree with every other source (403 `tenant_mismatch`; `tenant::join_cert`).
//! Compiling `tls.client_auth` and `client_cert_sans` is `config::edge`.

use std::sync::Arc;

use rustls::CertificateError;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;

use crate::config::raw::RawClientAuthMode;

/// Compiled `tls.client_auth`.
#[derive(Clone)]
pub struct ClientAuth {
    pub required: bool,
    pub(crate) verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

pub(crate) fn build_verifier(
    ca_file: &std::path::Path,
    mode: RawClientAuthMode,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let pem = crate::files::read_file(ca_file)
        .map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("cannot parse {}: {e}", ca_file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("invalid CA certificate in {}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("no CA certificate in {}", ca_file.display()));
    }
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider());
    let builder = match mode {
        RawClientAuthMode::Optional => builder.allow_unauthenticated(),
        RawClientAuthMode::Required => builder,
    };
    builder.build().map_err(|e| e.to_string())
}

/// DNS names compare case-insensitively; URIs (SPIFFE IDs) exactly.
pub(crate) fn normalize_san(s: &str) -> String {
    if s.contains(':') {
        s.to_owned()
    } else {
        s.to_ascii_lowercase()
    }
}

/// The DNS and URI SANs of a (verified) leaf certificate.
pub fn cert_sans(der: &CertificateDer<'_>) -> Vec<Box<str>> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => out.push(n.to_ascii_lowercase().into()),
                GeneralName::URI(u) => out.push((*u).into()),
                _ => {}
            }
        }
    }
    out
}

/// Why a handshake failed on the client certificate, for `client_cert_failures{reason}`;
/// `None` when the failure was something else.
pub fn failure_reason(e: &std::io::Error) -> Option<&'static str> {
    let err = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match err {
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::Revoked => "revoked",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "invalid_purpose"
            }
            _ => "invalid_certificate",
        },
        _ => return None,
    })
}
