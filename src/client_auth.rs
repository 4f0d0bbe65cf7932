//! Client identity at the edge: client certificates (mTLS, `tls.client_auth`) and the
//! `client_cert` tenancy source.
//!
//! The CA is compiled into the snapshot like every certificate (so it is watched and reloaded
//! with them); the rustls server config holds a [`SnapshotClientVerifier`] that asks the
//! *current* snapshot on every handshake. `mode: required` refuses a handshake without a valid
//! certificate; `optional` accepts one without a certificate but still refuses an invalid one.
//! Refusals are counted by reason (`gateway_client_cert_failures{reason}`).
//!
//! A verified certificate's DNS and URI SANs (e.g. `spiffe://acme.example/billing`) are kept
//! with the connection; a tenant whose `client_cert_sans` lists one of them is the certificate's
//! tenant, and it must agree with every other source (403 `tenant_mismatch`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::config::ConfigErrors;
use crate::config::raw::{RawClientAuthMode, RawConfig, RawSource};
use crate::error::GatewayError;
use crate::proxy_protocol::TrustedProxies;
use crate::snapshot::{ListenerSpec, Snapshot, TenantId};
use crate::tenant::{Identity, SourceSet};

/// Compiled `tls.client_auth`.
#[derive(Clone)]
pub struct ClientAuth {
    pub required: bool,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

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

fn build_verifier(
    ca_file: &std::path::Path,
    mode: RawClientAuthMode,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let pem = crate::config::read_file(ca_file)
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

/// DNS names compare case-insensitively; URIs (SPIFFE IDs) exactly.
fn normalize_san(s: &str) -> String {
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

// === impl SnapshotClientVerifier ===

/// Verifies client certificates with the current snapshot's `tls.client_auth`, so a reload
/// that changes the CA takes effect on the next handshake. Without `client_auth` it asks for
/// no certificate.
pub struct SnapshotClientVerifier {
    snapshot: Arc<ArcSwap<Snapshot>>,
    schemes: Vec<SignatureScheme>,
}

impl SnapshotClientVerifier {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        Self {
            snapshot,
            schemes: crate::tls::provider()
                .signature_verification_algorithms
                .supported_schemes(),
        }
    }

    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.snapshot
            .load()
            .client_auth
            .as_ref()
            .map(|c| c.verifier.clone())
            .ok_or(rustls::Error::General(
                "client authentication is not configured".into(),
            ))
    }
}

impl std::fmt::Debug for SnapshotClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotClientVerifier")
    }
}

impl ClientCertVerifier for SnapshotClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.snapshot.load().client_auth.is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.snapshot
            .load()
            .client_auth
            .as_ref()
            .is_some_and(|c| c.required)
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from a snapshot that a reload may drop; clients with one
        // certificate send it regardless.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}
