//! The handshake-time side of TLS: the server config whose certificate resolver and client
//! certificate verifier both read the *current* snapshot on every handshake, so a reload that
//! adds a tenant, renews a certificate or changes the client CA takes effect on the next one.
//!
//! Lookup order (SPEC): exact SAN, then wildcard SAN (`*.gw.example.com` covers one label),
//! then `tls.default_certificate`. With no match and no default the handshake is refused.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use crate::snapshot::Snapshot;
use crate::tls::provider;

/// Resolves certificates from whatever snapshot is current when the handshake starts, so a
/// reload that adds a tenant or renews a certificate takes effect on the next handshake.
pub struct SnapshotCertResolver {
    snapshot: Arc<ArcSwap<Snapshot>>,
}

impl fmt::Debug for SnapshotCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SnapshotCertResolver")
    }
}

impl ResolvesServerCert for SnapshotCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.snapshot.load().certs.lookup(hello.server_name())
    }
}

/// The server-side rustls configuration: aws-lc-rs, TLS 1.2 and 1.3 only, ALPN h2 then
/// http/1.1, certificates from the live snapshot.
pub fn server_config(snapshot: Arc<ArcSwap<Snapshot>>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(SnapshotClientVerifier::new(snapshot.clone())))
        .with_cert_resolver(Arc::new(SnapshotCertResolver { snapshot }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
            schemes: provider()
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
