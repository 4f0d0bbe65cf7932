//! The YAML file as written by the operator (`version: 1`; every key: docs/configuration.md).
//!
//! These types only describe the shape of the file: every struct denies unknown fields, and
//! nothing here is validated beyond what serde checks. `compile` turns them into a `Snapshot`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub version: u32,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub tenancy: RawTenancy,
    #[serde(default)]
    pub token: Option<RawToken>,
    #[serde(default)]
    pub apikey: Option<RawApiKey>,
    pub signing: RawSigning,
    #[serde(default)]
    pub plans: BTreeMap<String, RawPlan>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenant>,
    #[serde(default)]
    pub cluster: Option<RawCluster>,
    /// One JSON line per request on the `access` log target.
    #[serde(default)]
    pub access_log: bool,
    /// Peers (CIDRs) whose PROXY header or `x-forwarded-for` names the real client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Usage metering: quota state across restarts, JSON-lines export.
    #[serde(default)]
    pub usage: Option<RawUsage>,
    /// How upstream hostnames are resolved.
    #[serde(default)]
    pub dns: Option<RawDns>,
}

/// `dns:`: the resolver of upstream endpoints named by hostname.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// `ip:port` of the nameservers to ask; default: those of `/etc/resolv.conf`.
    #[serde(default)]
    pub nameservers: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    /// Per-replica quota counts, kept across restarts.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// How often the state file is written; default 10.
    #[serde(default)]
    pub state_interval_s: Option<u64>,
    #[serde(default)]
    pub export: Option<RawUsageExport>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsageExport {
    pub path: PathBuf,
    /// Default 60.
    #[serde(default)]
    pub interval_s: Option<u64>,
}

/// `plans.<p>.quota`: requests per UTC calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub requests: u64,
    pub period: crate::quota::Period,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub bind: String,
    #[serde(default)]
    pub tls: bool,
    /// Expect a PROXY protocol (v1 or v2) header from a `trusted_proxies` peer first.
    #[serde(default)]
    pub proxy_protocol: bool,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: String,
    /// A second listener serving only `/metrics`, `/healthz` and `/readyz` (for scrapers).
    #[serde(default)]
    pub metrics_bind: Option<String>,
    /// A file holding the bearer token that `POST` endpoints, `/stats`, `/dashboard` and
    /// `/config` require; absent = no token (loopback-only admin).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// Connection-level defences; the defaults are SPEC's.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub handshake_timeout_ms: u64,
    pub header_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_header_bytes: u64,
    pub max_connections: u64,
    /// Connections from one client IP at a time; 0 = no per-IP cap.
    pub max_connections_per_ip: u64,
    /// Longest request target (path and query) accepted; longer → 414.
    pub max_uri_bytes: u64,
    /// Most request header fields accepted; more → 431.
    pub max_headers: u64,
    /// Longest wait for the next piece of a request body (slow POST); then 408.
    pub body_timeout_ms: u64,
    /// HTTP/2: streams a client may have open at once on one connection.
    pub h2_max_concurrent_streams: u64,
    /// HTTP/2: streams a client may reset before the gateway accepted them (rapid reset,
    /// CVE-2023-44487); past it the connection gets GOAWAY.
    pub h2_max_pending_reset_streams: u64,
    pub shutdown_grace_ms: u64,
    /// Close a tenant's upgraded connections (WebSockets) when a reload suspends or removes it.
    pub close_upgraded_on_suspend: bool,
    /// Merge repeated slashes in the path (`//a` → `/a`) before routes are matched.
    pub merge_slashes: bool,
    /// `%2F` / `%5C` in a path: `reject` (400 `invalid_path`) or `keep` (forwarded as sent).
    pub escaped_slashes: RawEscapedSlashes,
    /// A response body that moves no byte for this long, because the upstream sends nothing or
    /// the client reads nothing, is cut and its tenant slot and upstream connection freed.
    pub stream_idle_timeout_ms: u64,
    /// HTTP/2: most response bytes buffered per stream for a client that reads slowly.
    pub h2_max_send_buffer_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawEscapedSlashes {
    #[default]
    Reject,
    Keep,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 5_000,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_header_bytes: 32_768,
            max_connections: 20_000,
            max_connections_per_ip: 0,
            max_uri_bytes: 8_192,
            max_headers: 100,
            body_timeout_ms: 30_000,
            h2_max_concurrent_streams: 256,
            h2_max_pending_reset_streams: 20,
            shutdown_grace_ms: 30_000,
            close_upgraded_on_suspend: true,
            merge_slashes: true,
            escaped_slashes: RawEscapedSlashes::Reject,
            stream_idle_timeout_ms: 300_000,
            h2_max_send_buffer_bytes: 131_072,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub default_certificate: Option<RawCertRef>,
    /// Client certificates (mTLS) checked against `ca_file`.
    #[serde(default)]
    pub client_auth: Option<RawClientAuth>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    pub ca_file: PathBuf,
    /// `optional` (default) or `required`.
    #[serde(default)]
    pub mode: RawClientAuthMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawClientAuthMode {
    #[default]
    Optional,
    Required,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertRef {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawSource {
    Sni,
    Host,
    Token,
    Apikey,
    #[serde(rename = "client_cert")]
    ClientCert,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTenancy {
    pub base_domains: Vec<String>,
    pub sources: Vec<RawSource>,
}

impl Default for RawTenancy {
    fn default() -> Self {
        Self {
            base_domains: Vec::new(),
            sources: vec![
                RawSource::Sni,
                RawSource::Host,
                RawSource::Token,
                RawSource::Apikey,
            ],
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub keys: Vec<RawJwtKey>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Claims sent upstream as `<prefix>-claim-<name>` headers (not covered by the signature).
    #[serde(default)]
    pub forward_claims: Vec<String>,
    /// `/readyz` stays 503 until `jwks_url` has been fetched once, or this long after start.
    #[serde(default = "default_jwks_startup_wait_ms")]
    pub jwks_startup_wait_ms: u64,
    /// Allow an `http://` `jwks_url` (keys fetched in clear; for tests and loopback only).
    #[serde(default)]
    pub allow_insecure_jwks_url: bool,
}

fn default_jwks_startup_wait_ms() -> u64 {
    10_000
}

fn default_tenant_claim() -> String {
    "tenant_id".to_owned()
}

fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtKey {
    pub kid: String,
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub header: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    #[serde(default = "default_header_prefix")]
    pub header_prefix: String,
    pub active_key: String,
    pub keys: Vec<RawSigningKey>,
    /// Header format: 1 (default, HMAC) or 2 (audience, source, Ed25519).
    #[serde(default = "one")]
    pub version: u32,
}

fn one() -> u32 {
    1
}

/// A signing key: an HMAC secret (`secret_env` / `secret_file`) or an Ed25519 private key
/// (`algorithm: ed25519`, `private_key_file`, PKCS#8 PEM).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigningKey {
    pub id: String,
    /// `hmac-sha256` (default) or `ed25519`.
    #[serde(default)]
    pub algorithm: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
}

fn default_header_prefix() -> String {
    "x-tenant".to_owned()
}

/// A secret named by where it lives, never by its value.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    pub id: String,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[serde(default)]
    pub connect_ms: Option<u64>,
    #[serde(default)]
    pub request_ms: Option<u64>,
}

/// A plan; every field may also be set on a tenant to override it.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    #[serde(default)]
    pub rate: Option<RawRate>,
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    #[serde(default)]
    pub timeouts: Option<RawTimeouts>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// How long a request may wait for a concurrency slot (default: not at all).
    #[serde(default)]
    pub queue_ms: Option<u64>,
    #[serde(default)]
    pub quota: Option<RawQuota>,
    /// Share of a saturated pool's capacity (`upstreams.<pool>.capacity`); default 1.
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    #[default]
    RoundRobin,
    LeastRequests,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub balance: RawBalance,
    /// For `https://` endpoints.
    #[serde(default)]
    pub tls: Option<RawUpstreamTls>,
    /// Passive health checking (outlier ejection); on by default.
    #[serde(default)]
    pub health: RawHealth,
    /// Retry an idempotent request without a body once, on another endpoint, when the
    /// connection to the first one could not be made. Default true.
    #[serde(default = "yes")]
    pub retry_connect_failure: bool,
    /// The `signing.keys[].id` that signs this pool's requests; default `signing.active_key`.
    #[serde(default)]
    pub signing_key: Option<String>,
    /// Fair share of the pool between tenants at saturation; absent = unlimited.
    #[serde(default)]
    pub capacity: Option<RawCapacity>,
    /// Re-resolve hostname endpoints at this interval instead of the record's TTL.
    #[serde(default)]
    pub dns_refresh_ms: Option<u64>,
    /// Close an idle upstream connection after this long instead of reusing it (default 4000,
    /// below the 5 s keep-alive of uvicorn and Node). `http://` pools.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Open connections per endpoint, idle and busy; a request waits up to its `connect_ms` for
    /// one to free up, then gets 503. Default unlimited. `http://` pools.
    #[serde(default)]
    pub max_connections_per_endpoint: Option<u32>,
}

/// `capacity: { max_in_flight: 64, queue_ms: 1000 }` (or `max_in_flight: { adaptive: { min, max } }`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapacity {
    pub max_in_flight: RawMaxInFlight,
    #[serde(default = "default_queue_ms")]
    pub queue_ms: u64,
    /// Waiting requests one tenant may have in this pool's queue; more are shed at once.
    #[serde(default = "default_max_queued_per_tenant")]
    pub max_queued_per_tenant: u32,
    /// Waiting requests in this pool's queue, all tenants together.
    #[serde(default = "default_max_queued")]
    pub max_queued: u32,
}

fn default_queue_ms() -> u64 {
    1_000
}

fn default_max_queued_per_tenant() -> u32 {
    1_024
}

fn default_max_queued() -> u32 {
    16_384
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawMaxInFlight {
    Fixed(u32),
    Adaptive { adaptive: RawAdaptive },
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptive {
    pub min: u32,
    pub max: u32,
}

fn yes() -> bool {
    true
}

/// An endpoint that fails `consecutive_failures` times in a row (connect errors, resets,
/// timeouts, 5xx answers) is skipped for `ejection_ms`. `consecutive_failures: 0` turns it off.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    pub consecutive_failures: u32,
    pub ejection_ms: u64,
    /// Whether a 5xx answer counts as a failure of the endpoint (default false: it is the
    /// application's answer, not the endpoint's failure).
    pub count_5xx: bool,
    /// At most this share of the pool is ejected at once (at least one endpoint may be).
    pub max_ejection_percent: u32,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection_ms: 30_000,
            count_5xx: false,
            max_ejection_percent: 50,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM CA bundle to verify the upstream with; default: the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate to present (mTLS to a dedicated deployment).
    #[serde(default)]
    pub client_cert: Option<RawCertRef>,
    /// SNI and the name verified in the upstream's certificate; default: the endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path_prefix: String,
    pub upstream: String,
    #[serde(default)]
    pub require: Vec<RawSource>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawTenantStatus {
    #[default]
    Active,
    Suspended,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub plan: String,
    #[serde(default)]
    pub status: RawTenantStatus,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub tls: Option<RawCertRef>,
    #[serde(default)]
    pub routes: Option<Vec<RawRoute>>,
    #[serde(default)]
    pub api_keys_sha256: Vec<String>,
    // Plan overrides.
    #[serde(default)]
    pub rate: Option<RawRate>,
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    #[serde(default)]
    pub timeouts: Option<RawTimeouts>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub queue_ms: Option<u64>,
    #[serde(default)]
    pub quota: Option<RawQuota>,
    /// DNS or URI SANs of client certificates that identify this tenant (`client_cert` source).
    #[serde(default)]
    pub client_cert_sans: Vec<String>,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    #[serde(default)]
    pub rate_limit_store: Option<RawRateLimitStore>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimitStore {
    pub redis: RawRedis,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: String,
    /// local (default) | allow | deny
    #[serde(default)]
    pub on_error: Option<String>,
    /// Per call; default 10.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The least number of replicas the `local` fallback divides by; the count itself is
    /// announced by the replicas in Redis. Default 1.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Failures within `failure_window_ms` before the circuit may open; default 5.
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    /// ... and the percentage of the window's calls they must be; default 50.
    #[serde(default)]
    pub failure_rate_percent: Option<u32>,
    /// The sliding window of the failure rate; default 1000.
    #[serde(default)]
    pub failure_window_ms: Option<u64>,
    /// How long the open circuit skips Redis before a probe; default 1000.
    #[serde(default)]
    pub open_ms: Option<u64>,
    /// Default "tgw:rl:".
    #[serde(default)]
    pub key_prefix: Option<String>,
}
