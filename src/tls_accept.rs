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
        .with_cert_resolver(Arc::new(SnapshotCertResolver {
            snapshot: snapshot.clone(),
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let resumption = Arc::new(Resumption {
        snapshot,
        tickets: rustls::crypto::aws_lc_rs::Ticketer::new()?,
        cache: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE),
    });
    config.ticketer = resumption.clone();
    config.session_storage = resumption;
    Ok(Arc::new(config))
}

/// TLS 1.2 sessions kept for clients that resume by session ID rather than by ticket (a few
/// hundred bytes each).
const SESSION_CACHE: usize = 4096;

/// Session resumption: stateless tickets (TLS 1.3 and 1.2; the keys are this process's own and
/// rotate every 6 hours, so a client resumes with the replica it last spoke to) and a session
/// cache for TLS 1.2 session IDs. A resumed handshake skips the certificate signature, the
/// costliest step of a full one.
///
/// Only while no client certificate is asked for: a resumed session is not verified again, and
/// `tls.client_auth` (whose CA a reload may change) must judge every connection, so with it on
/// no ticket is issued or accepted and every handshake is a full one.
struct Resumption {
    snapshot: Arc<ArcSwap<Snapshot>>,
    tickets: Arc<dyn rustls::server::ProducesTickets>,
    cache: Arc<dyn rustls::server::StoresServerSessions>,
}

impl Resumption {
    fn allowed(&self) -> bool {
        self.snapshot.load().client_auth.is_none()
    }
}

impl fmt::Debug for Resumption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resumption")
    }
}

impl rustls::server::ProducesTickets for Resumption {
    fn enabled(&self) -> bool {
        self.tickets.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.tickets.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.allowed()
            .then(|| self.tickets.encrypt(plain))
            .flatten()
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.allowed()
            .then(|| self.tickets.decrypt(cipher))
            .flatten()
    }
}

impl rustls::server::StoresServerSessions for Resumption {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.allowed() && self.cache.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.allowed().then(|| self.cache.get(key)).flatten()
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.allowed().then(|| self.cache.take(key)).flatten()
    }

    fn can_cache(&self) -> bool {
        self.allowed() && self.cache.can_cache()
    }
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
