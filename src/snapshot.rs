//! The compiled, immutable configuration a request runs against.
//!
//! Built once per (re)load by `config::compile`, published through one `ArcSwap<Snapshot>`, and
//! taken once per request, so a request sees one consistent config from start to end. Nothing
//! here is parsed or defaulted on the hot path: names are lower-cased, header values built and
//! tables hashed at compile time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;

use crate::headers::TenantHeaderNames;
use crate::limits::{Concurrency, TenantLimiter, TenantStats};
use crate::signing::SigningKey;
use crate::tls::CertStore;
use crate::token::TokenAuth;
use crate::upstream::UpstreamPool;

/// Index of a tenant in `Snapshot::tenants`.
pub type TenantId = u32;

#[derive(Debug)]
pub struct Snapshot {
    /// First 16 hex digits of a SHA-256 over the config file and every file it names
    /// (`config::files_hash`); over the YAML alone when compiled from bytes without files.
    pub content_hash: String,
    /// First 16 hex digits of the SHA-256 of the config file alone.
    pub config_hash: String,
    /// `GET /config/effective`: every key with its default, per-tenant resolved limits, no
    /// secret (`config::effective`).
    pub effective: Arc<serde_json::Value>,
    pub loaded_at: SystemTime,
    pub listeners: Vec<ListenerSpec>,
    pub admin: Option<SocketAddr>,
    /// `admin.metrics_bind` and `admin.token_file`, compiled.
    pub admin_access: crate::admin_access::AdminAccess,
    pub limits: ConnLimits,
    pub sources: Sources,
    pub tenants: Vec<Tenant>,
    /// Lower-case host name → tenant: `<tenant>.<base_domain>` for every base domain, and every
    /// tenant's custom `hosts`.
    pub hosts: HashMap<Box<str>, TenantId>,
    /// Global routes, longest prefix first.
    pub routes: Arc<[Route]>,
    /// Whether any global route requires a token or an API key (they apply to tenant routes too).
    pub global_requirements: bool,
    pub upstreams: HashMap<Box<str>, Arc<UpstreamPool>>,
    pub certs: CertStore,
    pub signing: Signing,
    /// Tenant name → id, for tenants named by a token.
    pub tenant_ids: HashMap<Box<str>, TenantId>,
    /// JWT checking, when `token:` is configured.
    pub token: Option<TokenAuth>,
    /// API keys by SHA-256, when `apikey:` is configured.
    pub apikeys: Option<ApiKeys>,
    pub access_log: bool,
    /// `usage:` (state file, export); read by the gateway at start.
    pub usage: crate::usage::UsageSettings,
    /// `trusted_proxies`: peers whose PROXY header or `x-forwarded-for` names the client.
    pub trusted_proxies: crate::proxy_protocol::TrustedProxies,
    /// `tls.client_auth`, when configured.
    pub client_auth: Option<crate::client_auth::ClientAuth>,
    /// Client certificate SAN (DNS or URI) → tenant, from tenants' `client_cert_sans`.
    pub client_cert_sans: HashMap<Box<str>, TenantId>,
    /// `cluster.rate_limit_store.redis`, when configured.
    pub cluster: Option<crate::cluster::RedisSettings>,
    /// Files this snapshot was compiled from (certificates, keys, JWKS), for the file watcher.
    pub files: Vec<std::path::PathBuf>,
}

#[derive(Debug)]
pub struct ApiKeys {
    pub header: http::HeaderName,
    pub by_hash: HashMap<[u8; 32], TenantId>,
}

impl Snapshot {
    /// The tenant a host name (already stripped of its port) belongs to.
    pub fn tenant_for_host(&self, host: &str) -> Option<TenantId> {
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.get(host.to_ascii_lowercase().as_str()).copied()
        } else {
            self.hosts.get(host).copied()
        }
    }

    pub fn tenant(&self, id: TenantId) -> &Tenant {
        &self.tenants[id as usize]
    }

    /// Makes this snapshot's limits the live ones, right before it is swapped in: resizes the
    /// tenants' concurrency caps and the pools' fair-share queues (runtime state shared with the
    /// snapshot being replaced) and starts the JWKS fetcher. Idempotent.
    pub fn activate(&self) {
        for t in &self.tenants {
            if let (Some(c), Some(max)) = (&t.concurrency, t.limits.max_concurrent) {
                c.resize(max);
            }
        }
        for pool in self.upstreams.values() {
            pool.activate();
        }
        if let Some(remote) = self.token.as_ref().and_then(|t| t.remote.as_ref()) {
            remote.ensure_started();
        }
    }

    /// Whether the identity provider's key set (`token.jwks_url`) has been fetched once, or
    /// the start-up grace (`token.jwks_startup_wait_ms`) is over; true without a `jwks_url`.
    pub fn jwks_ready(&self) -> bool {
        self.token
            .as_ref()
            .and_then(|t| t.remote.as_ref())
            .is_none_or(|r| r.is_ready())
    }

    /// Number of distinct routes (global plus per-tenant).
    pub fn route_count(&self) -> usize {
        self.routes.len()
            + self
                .tenants
                .iter()
                .map(|t| t.routes.as_ref().map_or(0, |r| r.len()))
                .sum::<usize>()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub bind: SocketAddr,
    pub tls: bool,
    /// `proxy_protocol`: a PROXY v1/v2 header from a trusted peer precedes everything.
    pub proxy_protocol: bool,
}

/// Connection-level defences (SPEC `limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// 0 = no per-IP cap.
    pub max_connections_per_ip: usize,
    pub max_uri_bytes: usize,
    pub max_headers: usize,
    pub body_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_reset_streams: usize,
    pub shutdown_grace: Duration,
    pub close_upgraded_on_suspend: bool,
    /// How request paths are normalised (`merge_slashes`, `escaped_slashes`).
    pub path: crate::normalize::PathPolicy,
    /// A response body that moves nothing for this long is cut (`stream_idle_timeout_ms`).
    pub stream_idle_timeout: Duration,
    /// HTTP/2 per-stream send buffer (`h2_max_send_buffer_bytes`).
    pub h2_max_send_buffer: usize,
}

/// Which sources may identify a tenant (SPEC `tenancy.sources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sources {
    pub sni: bool,
    pub host: bool,
    pub token: bool,
    pub apikey: bool,
    pub client_cert: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantStatus {
    Active,
    Suspended,
}

/// A tenant's limits: its plan with the tenant's overrides applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantLimits {
    pub rate: Option<Rate>,
    pub max_concurrent: Option<u32>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_body_bytes: Option<u64>,
    /// How long a request may wait for a concurrency slot; `None`: refuse at once.
    pub queue: Option<Duration>,
    /// Requests per UTC calendar period.
    pub quota: Option<crate::quota::QuotaSpec>,
    /// Share of a saturated pool (`weight`, default 1).
    pub weight: u32,
}

pub use crate::limits::Rate;

#[derive(Debug)]
pub struct Tenant {
    pub name: Box<str>,
    pub plan: Box<str>,
    pub status: TenantStatus,
    pub limits: TenantLimits,
    /// The tenant's own routes, longest prefix first; consulted before the global routes.
    pub routes: Option<Box<[Route]>>,
    /// Precomputed `x-tenant-id` / `x-tenant-plan` values.
    pub id_header: HeaderValue,
    pub plan_header: HeaderValue,
    pub limiter: Option<Arc<TenantLimiter>>,
    /// This replica's share of the rate, used while the cluster store cannot answer
    /// (`on_error: local`); the share follows the replica count seen last.
    pub fallback: Option<Arc<crate::limits::FallbackLimiter>>,
    pub concurrency: Option<Arc<Concurrency>>,
    /// The upstream clients of this tenant's connect timeout (shared by tenants with the same).
    pub clients: Arc<crate::upstream::ClientSet>,
    pub stats: Arc<TenantStats>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub path_prefix: Box<str>,
    pub upstream: Arc<UpstreamPool>,
    /// `require: [token]`: the request must carry a valid token even if SNI/Host name the tenant.
    pub require_token: bool,
    pub require_apikey: bool,
}

/// Signing keys and the header names they write.
#[derive(Debug)]
pub struct Signing {
    pub active: Arc<SigningKey>,
    pub keys: Vec<Arc<SigningKey>>,
    /// `signing.version`.
    pub version: crate::signing::SigVersion,
    pub names: TenantHeaderNames,
}
