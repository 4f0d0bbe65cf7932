//! Raw config → `Snapshot`. Every check that can be made before serving is made here, and
//! every error is collected (not just the first) with its YAML path.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::{Scheme, Uri};
use http::{HeaderName, HeaderValue};

use super::ConfigErrors;
use super::raw::*;
use crate::dns::Dns;
use crate::headers::TenantHeaderNames;
use crate::limits::{Concurrency, TenantLimiter};
use crate::runtime::Runtime;
use crate::signing::{Algorithm, SigVersion, Signer, SigningKey};
use crate::snapshot::*;
use crate::tls::{CertStore, LoadedCert, load_cert};
use crate::token::{self, TokenAuth};
use crate::upstream::{Balance, Endpoint, UpstreamPool, UpstreamTls};
use jsonwebtoken::DecodingKey;

const DEFAULT_CONNECT_MS: u64 = 5_000;
const DEFAULT_REQUEST_MS: u64 = 30_000;

/// The connection limits of a config that sets none (SPEC's defaults).
pub fn default_limits() -> ConnLimits {
    let rt = Runtime::default();
    let mut c = Compiler {
        errors: ConfigErrors::default(),
        certs_by_path: HashMap::new(),
        files: Vec::new(),
        rt: &rt,
    };
    c.limits(&RawLimits::default())
}

/// Compiles a parsed config with fresh runtime state (`check`, tools, tests).
pub fn compile(raw: &RawConfig, content_hash: &str) -> Result<Snapshot, ConfigErrors> {
    compile_with(raw, content_hash, &Runtime::default())
}

/// Compiles a parsed config. `content_hash` identifies the file it came from; runtime state
/// (limiters, slots, counters, endpoint health, queues, clients, token caches) is looked up in
/// `rt` by identity, so what this config did not change carries on as it was.
pub fn compile_with(
    raw: &RawConfig,
    content_hash: &str,
    rt: &Runtime,
) -> Result<Snapshot, ConfigErrors> {
    rt.prune();
    let mut c = Compiler {
        errors: ConfigErrors::default(),
        certs_by_path: HashMap::new(),
        files: Vec::new(),
        rt,
    };
    if raw.version != 1 {
        c.err("version", format!("unsupported version {}", raw.version));
    }
    let listeners = c.listeners(&raw.listeners);
    let cluster = raw
        .cluster
        .as_ref()
        .and_then(|cl| cl.rate_limit_store.as_ref())
        .and_then(|s| c.redis(&s.redis));
    let admin = raw
        .admin
        .as_ref()
        .and_then(|a| c.socket_addr("admin.bind", &a.bind));
    let admin_access = crate::admin_access::AdminAccess::compile(raw.admin.as_ref(), &mut c.errors);
    c.files.extend(admin_access.token_file.iter().cloned());
    let limits = c.limits(&raw.limits);
    let sources = c.sources(raw);
    let signing = c.signing(&raw.signing);
    let plans = c.plans(&raw.plans);
    let version = if raw.signing.version == 2 {
        SigVersion::V2
    } else {
        SigVersion::V1
    };
    let dns = c.dns(raw.dns.as_ref());
    let upstreams = c.upstreams(&raw.upstreams, signing.as_ref(), version, &dns);
    let routes: Arc<[Route]> = c.routes("routes", &raw.routes, &upstreams, raw).into();
    let base_domains = c.base_domains(&raw.tenancy.base_domains);

    let mut certs = CertStore::default();
    if let Some(default) = raw
        .tls
        .as_ref()
        .and_then(|t| t.default_certificate.as_ref())
        && let Some(cert) = c.cert("tls.default_certificate", default)
    {
        certs.set_default(&cert);
        // The default also serves its own SANs by name (e.g. a `*.gw.example.com` wildcard).
        certs.add(&cert);
    }

    let identity = super::edge::compile_edge(&mut c.errors, raw, &listeners);
    c.files.extend(identity.files.iter().cloned());
    let usage = crate::usage::compile(&mut c.errors, raw.usage.as_ref());
    let mut client_cert_sans: HashMap<Box<str>, TenantId> = HashMap::new();
    let mut tenants = Vec::with_capacity(raw.tenants.len());
    let mut hosts: HashMap<Box<str>, TenantId> = HashMap::new();
    let mut host_owner: HashMap<Box<str>, String> = HashMap::new();
    let mut api_keys: HashMap<[u8; 32], TenantId> = HashMap::new();
    let mut tenant_ids: HashMap<Box<str>, TenantId> = HashMap::new();
    let mut plan_headers: HashMap<String, HeaderValue> = HashMap::new();
    let mut client_sets: HashMap<Duration, Arc<crate::upstream::ClientSet>> = HashMap::new();
    for (name, t) in &raw.tenants {
        let path = format!("tenants.{name}");
        let id = tenants.len() as TenantId;
        if !is_dns_label(name) {
            c.err(
                &path,
                "tenant name must be a lower-case DNS label (a-z, 0-9, '-', at most 63)",
            );
        }
        for base in &base_domains {
            claim_host(
                &mut c,
                &mut hosts,
                &mut host_owner,
                format!("{name}.{base}"),
                id,
                name,
                &path,
            );
        }
        for (i, h) in t.hosts.iter().enumerate() {
            let hpath = format!("{path}.hosts[{i}]");
            match normalize_host(h) {
                Some(h) => claim_host(&mut c, &mut hosts, &mut host_owner, h, id, name, &hpath),
                None => c.err(&hpath, format!("invalid host name {h:?}")),
            }
        }
        if let Some(tls) = &t.tls
            && let Some(cert) = c.cert(&format!("{path}.tls"), tls)
        {
            for taken in certs.add(&cert) {
                c.err(
                    format!("{path}.tls"),
                    format!("name {taken:?} is already served by another certificate"),
                );
            }
        }
        let plan = match plans.get(&t.plan) {
            Some(p) => *p,
            None => {
                c.err(format!("{path}.plan"), format!("unknown plan {:?}", t.plan));
                PlanFields::default()
            }
        };
        let limits = c.tenant_limits(&path, plan, t);
        let own_routes = t.routes.as_ref().map(|r| {
            c.routes(&format!("{path}.routes"), r, &upstreams, raw)
                .into_boxed_slice()
        });
        for (i, k) in t.api_keys_sha256.iter().enumerate() {
            let kpath = format!("{path}.api_keys_sha256[{i}]");
            match decode_sha256_hex(k) {
                Some(hash) => {
                    if api_keys.insert(hash, id).is_some_and(|other| other != id) {
                        c.err(
                            kpath,
                            "this API key hash is already listed by another tenant",
                        );
                    }
                }
                None => c.err(
                    kpath,
                    "must be 64 hex digits (the SHA-256 of the key, never the key)",
                ),
            }
        }
        super::edge::claim_sans(
            &mut c.errors,
            &mut client_cert_sans,
            &path,
            &t.client_cert_sans,
            id,
            identity.client_auth.is_some(),
        );
        tenant_ids.insert(name.as_str().into(), id);
        tenants.push(Tenant {
            name: name.as_str().into(),
            plan: t.plan.as_str().into(),
            status: match t.status {
                RawTenantStatus::Active => TenantStatus::Active,
                RawTenantStatus::Suspended => TenantStatus::Suspended,
            },
            routes: own_routes,
            id_header: header_value(&mut c, &path, name),
            // One shared value per plan (a clone shares the bytes): 10,000 tenants on three
            // plans hold three allocations, not 10,000.
            plan_header: match plan_headers.get(t.plan.as_str()) {
                Some(v) => HeaderValue::clone(v),
                None => {
                    let v = header_value(&mut c, &format!("{path}.plan"), &t.plan);
                    plan_headers.insert(t.plan.clone(), v.clone());
                    v
                }
            },
            limiter: limits.rate.and_then(|r| c.limiter(name, r)),
            fallback: cluster.as_ref().and(limits.rate).map(|r| {
                c.rt.fallbacks
                    .get_or_insert_with((name.as_str().into(), r), || {
                        crate::limits::FallbackLimiter::new(r)
                    })
            }),
            // Keyed by tenant alone: a changed cap resizes the same slots on activation.
            concurrency: limits.max_concurrent.filter(|m| *m > 0).map(|m| {
                c.rt.concurrency
                    .get_or_insert_with(name.as_str().into(), || Concurrency::new(m))
            }),
            stats: c
                .rt
                .tenant_stats
                .get_or_insert_with(name.as_str().into(), Default::default),
            clients: client_sets
                .entry(limits.connect_timeout)
                .or_insert_with(|| c.client_set(limits.connect_timeout, &upstreams, &dns))
                .clone(),
            limits,
        });
    }

    // A configured certificate that failed to load has its own error ("cannot read certificate
    // ..."); this one is only for a config that names none.
    let certs_configured = raw
        .tls
        .as_ref()
        .is_some_and(|t| t.default_certificate.is_some())
        || raw.tenants.values().any(|t| t.tls.is_some());
    if listeners.iter().any(|l| l.tls) && certs.is_empty() && !certs_configured {
        c.err(
            "tls",
            "a TLS listener needs certificates: set tls.default_certificate or a tenant's tls",
        );
    }
    let token = raw
        .token
        .as_ref()
        .and_then(|t| c.token(t, &raw.signing.header_prefix));
    let apikeys =
        raw.apikey
            .as_ref()
            .and_then(|a| match HeaderName::from_bytes(a.header.as_bytes()) {
                Ok(header) => Some(ApiKeys {
                    header,
                    by_hash: std::mem::take(&mut api_keys),
                }),
                Err(_) => {
                    c.err(
                        "apikey.header",
                        format!("invalid header name {:?}", a.header),
                    );
                    None
                }
            });
    if raw.apikey.is_none() && !api_keys.is_empty() {
        c.err(
            "apikey",
            "tenants list api_keys_sha256 but apikey.header is not configured",
        );
    }

    let signing = signing.map(|(active, keys)| Signing {
        active,
        keys,
        version,
        names: TenantHeaderNames::new(&raw.signing.header_prefix)
            .unwrap_or_else(|| TenantHeaderNames::new("x-tenant").expect("static prefix")),
    });
    if TenantHeaderNames::new(&raw.signing.header_prefix).is_none() {
        c.err(
            "signing.header_prefix",
            "must be a lower-case header name prefix such as x-tenant",
        );
    }

    match (c.errors.is_empty(), signing) {
        (true, Some(signing)) => Ok(Snapshot {
            content_hash: content_hash.to_owned(),
            config_hash: content_hash.to_owned(),
            effective: std::sync::Arc::new(super::effective::effective(raw, &tenants)),
            loaded_at: SystemTime::now(),
            listeners,
            admin,
            admin_access,
            limits,
            sources,
            tenants,
            hosts,
            global_requirements: routes.iter().any(|r| r.require_token || r.require_apikey),
            routes,
            upstreams,
            certs,
            signing,
            tenant_ids,
            token,
            apikeys,
            access_log: raw.access_log,
            usage,
            trusted_proxies: identity.trusted_proxies,
            client_auth: identity.client_auth,
            client_cert_sans,
            cluster,
            files: c
                .certs_by_path
                .keys()
                .flat_map(|(c, k)| [c.clone(), k.clone()])
                .chain(raw.token.as_ref().and_then(|t| t.jwks_file.clone()))
                .chain(std::mem::take(&mut c.files))
                .collect(),
        }),
        _ => Err(c.errors),
    }
}

fn claim_host(
    c: &mut Compiler,
    hosts: &mut HashMap<Box<str>, TenantId>,
    owner: &mut HashMap<Box<str>, String>,
    host: String,
    id: TenantId,
    tenant: &str,
    path: &str,
) {
    let host: Box<str> = host.into();
    if let Some(other) = owner.get(&host) {
        if other != tenant {
            c.err(
                path,
                format!("host {host:?} is already claimed by tenant {other:?}"),
            );
        }
        return;
    }
    owner.insert(host.clone(), tenant.to_owned());
    hosts.insert(host, id);
}

fn header_value(c: &mut Compiler, path: &str, v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or_else(|_| {
        c.err(path, format!("{v:?} cannot be sent as a header value"));
        HeaderValue::from_static("")
    })
}

/// A DNS label: 1..=63 of `a-z0-9-`, not starting or ending with '-'.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Lower-cases and checks a host name (dot-separated DNS labels, no port, no trailing dot).
fn normalize_host(h: &str) -> Option<String> {
    let h = h.to_ascii_lowercase();
    if h.len() > 253 || h.split('.').any(|l| !is_dns_label(l)) {
        return None;
    }
    Some(h)
}

#[derive(Debug, Clone, Copy, Default)]
struct PlanFields {
    rate: Option<RawRate>,
    max_concurrent: Option<u32>,
    connect_ms: Option<u64>,
    request_ms: Option<u64>,
    max_body_bytes: Option<u64>,
    queue_ms: Option<u64>,
    quota: Option<RawQuota>,
    weight: Option<u32>,
}

struct Compiler<'a> {
    errors: ConfigErrors,
    /// Runtime state, looked up by identity.
    rt: &'a Runtime,
    /// Certificates already loaded in this compile, so one file pair is read once.
    certs_by_path: HashMap<(PathBuf, PathBuf), Option<Arc<LoadedCert>>>,
    /// Other files the config names (upstream CA bundles and client certificates), watched.
    files: Vec<PathBuf>,
}

impl Compiler<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(path, message);
    }

    fn socket_addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(path, format!("invalid address {s:?} (expected IP:PORT)"));
                None
            }
        }
    }

    fn listeners(&mut self, raw: &[RawListener]) -> Vec<ListenerSpec> {
        if raw.is_empty() {
            self.err("listeners", "at least one listener is required");
        }
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, l) in raw.iter().enumerate() {
            let path = format!("listeners[{i}]");
            if !names.insert(l.name.as_str()) {
                self.err(
                    format!("{path}.name"),
                    format!("duplicate listener {:?}", l.name),
                );
            }
            if let Some(bind) = self.socket_addr(&format!("{path}.bind"), &l.bind) {
                out.push(ListenerSpec {
                    name: l.name.clone(),
                    bind,
                    tls: l.tls,
                    proxy_protocol: l.proxy_protocol,
                });
            }
        }
        out
    }

    fn limits(&mut self, l: &RawLimits) -> ConnLimits {
        let fields = [
            ("handshake_timeout_ms", l.handshake_timeout_ms),
            ("header_timeout_ms", l.header_timeout_ms),
            ("idle_timeout_ms", l.idle_timeout_ms),
            ("max_header_bytes", l.max_header_bytes),
            ("max_connections", l.max_connections),
            ("max_uri_bytes", l.max_uri_bytes),
            ("max_headers", l.max_headers),
            ("body_timeout_ms", l.body_timeout_ms),
            ("h2_max_concurrent_streams", l.h2_max_concurrent_streams),
            ("stream_idle_timeout_ms", l.stream_idle_timeout_ms),
            ("h2_max_send_buffer_bytes", l.h2_max_send_buffer_bytes),
        ];
        for (name, v) in fields {
            if v == 0 {
                self.err(format!("limits.{name}"), "must be greater than 0");
            }
        }
        if l.max_header_bytes > 1 << 20 {
            self.err("limits.max_header_bytes", "must be at most 1048576");
        }
        ConnLimits {
            handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            header_timeout: Duration::from_millis(l.header_timeout_ms),
            idle_timeout: Duration::from_millis(l.idle_timeout_ms),
            max_header_bytes: l.max_header_bytes as usize,
            max_connections: l.max_connections as usize,
            max_connections_per_ip: l.max_connections_per_ip as usize,
            max_uri_bytes: l.max_uri_bytes as usize,
            max_headers: l.max_headers as usize,
            body_timeout: Duration::from_millis(l.body_timeout_ms),
            h2_max_concurrent_streams: u32::try_from(l.h2_max_concurrent_streams)
                .unwrap_or(u32::MAX),
            h2_max_pending_reset_streams: l.h2_max_pending_reset_streams as usize,
            shutdown_grace: Duration::from_millis(l.shutdown_grace_ms),
            close_upgraded_on_suspend: l.close_upgraded_on_suspend,
            path: crate::normalize::PathPolicy {
                merge_slashes: l.merge_slashes,
                escaped_slashes: match l.escaped_slashes {
                    super::raw::RawEscapedSlashes::Reject => {
                        crate::normalize::EscapedSlashes::Reject
                    }
                    super::raw::RawEscapedSlashes::Keep => crate::normalize::EscapedSlashes::Keep,
                },
            },
            stream_idle_timeout: Duration::from_millis(l.stream_idle_timeout_ms),
            h2_max_send_buffer: usize::try_from(l.h2_max_send_buffer_bytes).unwrap_or(usize::MAX),
        }
    }

    fn sources(&mut self, raw: &RawConfig) -> Sources {
        let mut s = Sources::default();
        for src in &raw.tenancy.sources {
            match src {
                RawSource::Sni => s.sni = true,
                RawSource::Host => s.host = true,
                RawSource::Token => s.token = true,
                RawSource::Apikey => s.apikey = true,
                RawSource::ClientCert => s.client_cert = true,
            }
        }
        if raw.tenancy.sources.is_empty() {
            self.err("tenancy.sources", "at least one source is required");
        }
        s
    }

    fn base_domains(&mut self, raw: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (i, d) in raw.iter().enumerate() {
            match normalize_host(d) {
                Some(d) => out.push(d),
                None => self.err(
                    format!("tenancy.base_domains[{i}]"),
                    format!("invalid domain {d:?}"),
                ),
            }
        }
        out
    }

    /// Reads a file the config names and remembers it: it is watched (a rewritten secret file
    /// reloads) and part of the `/config` hash.
    fn read_named(&mut self, file: &Path) -> std::io::Result<Vec<u8>> {
        self.files.push(file.to_path_buf());
        crate::files::read_file(file)
    }

    fn secret(&mut self, path: &str, env: Option<&str>, file: Option<&Path>) -> Option<Vec<u8>> {
        match (env, file) {
            (Some(var), None) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(v.into_bytes()),
                _ => {
                    self.err(
                        path,
                        format!(
                            "environment variable {var} is not set or empty (the environment \
                             is read once, at start: a key added or rotated without a restart \
                             must use secret_file)"
                        ),
                    );
                    None
                }
            },
            (None, Some(file)) => match self.read_named(file) {
                Ok(v) => {
                    let trimmed = v.trim_ascii();
                    if trimmed.is_empty() {
                        self.err(path, format!("secret file {} is empty", file.display()));
                        None
                    } else {
                        Some(trimmed.to_vec())
                    }
                }
                Err(e) => {
                    self.err(
                        path,
                        format!("cannot read secret file {}: {e}", file.display()),
                    );
                    None
                }
            },
            _ => {
                self.err(path, "set exactly one of secret_env or secret_file");
                None
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn signing(&mut self, raw: &RawSigning) -> Option<(Arc<SigningKey>, Vec<Arc<SigningKey>>)> {
        let mut keys = Vec::new();
        let mut ids = HashSet::new();
        if !matches!(raw.version, 1 | 2) {
            self.err(
                "signing.version",
                format!("unsupported version {} (1 or 2)", raw.version),
            );
        }
        for (i, k) in raw.keys.iter().enumerate() {
            let path = format!("signing.keys[{i}]");
            if k.id.is_empty()
                || !k
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                self.err(format!("{path}.id"), "key id must be [A-Za-z0-9_-]+");
            }
            if !ids.insert(k.id.as_str()) {
                self.err(format!("{path}.id"), format!("duplicate key id {:?}", k.id));
            }
            let algorithm = match k.algorithm.as_deref().map(Algorithm::parse) {
                None => Algorithm::HmacSha256,
                Some(Some(a)) => a,
                Some(None) => {
                    self.err(
                        format!("{path}.algorithm"),
                        "must be hmac-sha256 or ed25519",
                    );
                    continue;
                }
            };
            match algorithm {
                Algorithm::HmacSha256 => {
                    if k.private_key_file.is_some() {
                        self.err(
                            format!("{path}.private_key_file"),
                            "only ed25519 keys have a private_key_file; HMAC keys use secret_env or secret_file",
                        );
                        continue;
                    }
                    if let Some(secret) =
                        self.secret(&path, k.secret_env.as_deref(), k.secret_file.as_deref())
                    {
                        if secret.len() < 16 {
                            self.err(&path, "signing secret must be at least 16 bytes");
                        }
                        keys.push(Arc::new(SigningKey::new(&k.id, &secret)));
                    }
                }
                Algorithm::Ed25519 => {
                    if raw.version != 2 {
                        self.err(
                            format!("{path}.algorithm"),
                            "ed25519 keys sign version 2 headers: set signing.version: 2",
                        );
                    }
                    let (None, None, Some(file)) =
                        (&k.secret_env, &k.secret_file, &k.private_key_file)
                    else {
                        self.err(
                            &path,
                            "an ed25519 key is { id, algorithm: ed25519, private_key_file } (PKCS#8 PEM)",
                        );
                        continue;
                    };
                    let key = crate::files::read_file(file)
                        .map_err(|e| format!("cannot read {}: {e}", file.display()))
                        .and_then(|pem| SigningKey::ed25519_pem(&k.id, &pem));
                    match key {
                        Ok(key) => {
                            self.files.push(file.clone());
                            keys.push(Arc::new(key));
                        }
                        Err(e) => self.err(format!("{path}.private_key_file"), e),
                    }
                }
            }
        }
        if raw.keys.is_empty() {
            self.err("signing.keys", "at least one signing key is required");
        }
        let active = keys.iter().find(|k| k.id() == raw.active_key).cloned();
        if active.is_none() && raw.keys.iter().all(|k| k.id != raw.active_key) {
            self.err(
                "signing.active_key",
                format!("unknown key {:?}", raw.active_key),
            );
        }
        active.map(|a| (a, keys))
    }

    /// The upstream clients for `connect_timeout`: one for plain pools, one for h2c pools, one
    /// per distinct TLS setting; the runtime's when they exist already (idle connections kept).
    fn client_set(
        &self,
        connect_timeout: Duration,
        upstreams: &HashMap<Box<str>, Arc<UpstreamPool>>,
        dns: &(Vec<SocketAddr>, Arc<Dns>),
    ) -> Arc<crate::upstream::ClientSet> {
        let client = |h2c: bool, tls: Option<&UpstreamTls>| {
            let key = (
                connect_timeout,
                h2c,
                tls.map(|t| t.fingerprint.clone()),
                dns.0.clone(),
            );
            self.rt.clients.get_or_insert_with(key, || {
                crate::upstream::client(connect_timeout, h2c, tls, dns.1.clone())
            })
        };
        let mut tls: Vec<(String, Arc<crate::upstream::UpstreamClient>)> = Vec::new();
        for pool in upstreams.values() {
            if let Some(t) = &pool.tls
                && !tls.iter().any(|(fp, _)| *fp == t.fingerprint)
            {
                tls.push((t.fingerprint.clone(), client(false, Some(t))));
            }
        }
        Arc::new(crate::upstream::ClientSet {
            plain: client(false, None),
            h2c: client(true, None),
            tls,
        })
    }

    /// The tenant's limiter for `rate`: the running one when the rate is unchanged (no fresh
    /// burst on reload), a new one when it changed.
    fn limiter(&self, tenant: &str, rate: Rate) -> Option<Arc<TenantLimiter>> {
        let limiter = TenantLimiter::new(rate)?;
        Some(
            self.rt
                .limiters
                .get_or_insert_with((tenant.into(), rate), || limiter),
        )
    }

    fn quota(&mut self, path: &str, q: Option<RawQuota>) -> Option<crate::quota::QuotaSpec> {
        let q = q?;
        if q.requests == 0 {
            self.err(format!("{path}.requests"), "must be greater than 0");
            return None;
        }
        Some(crate::quota::QuotaSpec {
            requests: q.requests,
            period: q.period,
        })
    }

    fn rate(&mut self, path: &str, r: Option<RawRate>) -> Option<Rate> {
        let r = r?;
        if r.per_second == 0 || r.burst == 0 {
            self.err(path, "per_second and burst must be greater than 0");
            return None;
        }
        Some(Rate {
            per_second: r.per_second,
            burst: r.burst,
        })
    }

    fn plans(
        &mut self,
        raw: &std::collections::BTreeMap<String, RawPlan>,
    ) -> HashMap<String, PlanFields> {
        raw.iter()
            .map(|(name, p)| {
                let t = p.timeouts.unwrap_or_default();
                (
                    name.clone(),
                    PlanFields {
                        rate: p.rate,
                        max_concurrent: p.max_concurrent,
                        connect_ms: t.connect_ms,
                        request_ms: t.request_ms,
                        max_body_bytes: p.max_body_bytes,
                        queue_ms: p.queue_ms,
                        quota: p.quota,
                        weight: p.weight,
                    },
                )
            })
            .collect()
    }

    fn tenant_limits(&mut self, path: &str, plan: PlanFields, t: &RawTenant) -> TenantLimits {
        let timeouts = t.timeouts.unwrap_or_default();
        let connect_ms = timeouts
            .connect_ms
            .or(plan.connect_ms)
            .unwrap_or(DEFAULT_CONNECT_MS);
        let request_ms = timeouts
            .request_ms
            .or(plan.request_ms)
            .unwrap_or(DEFAULT_REQUEST_MS);
        if connect_ms == 0 || request_ms == 0 {
            self.err(
                format!("{path}.timeouts"),
                "timeouts must be greater than 0",
            );
        }
        let max_concurrent = t.max_concurrent.or(plan.max_concurrent);
        if max_concurrent == Some(0) {
            self.err(format!("{path}.max_concurrent"), "must be greater than 0");
        }
        let weight = t.weight.or(plan.weight).unwrap_or(1);
        if weight == 0 || weight > 1_000 {
            self.err(format!("{path}.weight"), "must be between 1 and 1000");
        }
        TenantLimits {
            rate: self.rate(&format!("{path}.rate"), t.rate.or(plan.rate)),
            max_concurrent,
            connect_timeout: Duration::from_millis(connect_ms),
            request_timeout: Duration::from_millis(request_ms),
            max_body_bytes: t.max_body_bytes.or(plan.max_body_bytes),
            queue: t
                .queue_ms
                .or(plan.queue_ms)
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            quota: self.quota(&format!("{path}.quota"), t.quota.or(plan.quota)),
            weight: weight.clamp(1, 1_000),
        }
    }

    /// `dns:`: the resolver of upstream hostnames (runtime state, by its nameservers).
    fn dns(&mut self, raw: Option<&RawDns>) -> (Vec<SocketAddr>, Arc<Dns>) {
        let mut nameservers = Vec::new();
        for (i, s) in raw.map_or(&[][..], |d| &d.nameservers).iter().enumerate() {
            // A bare IP means port 53, as in resolv.conf.
            let parsed = s.parse::<SocketAddr>().or_else(|_| {
                s.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Ok(a) => nameservers.push(a),
                Err(_) => self.err(
                    format!("dns.nameservers[{i}]"),
                    format!("invalid nameserver {s:?} (expected IP or IP:PORT)"),
                ),
            }
        }
        let dns = self
            .rt
            .dns
            .get_or_insert_with(nameservers.clone(), || Dns::new(nameservers.clone()));
        (nameservers, dns)
    }

    fn upstreams(
        &mut self,
        raw: &std::collections::BTreeMap<String, RawUpstream>,
        signing: Option<&(Arc<SigningKey>, Vec<Arc<SigningKey>>)>,
        version: SigVersion,
        dns: &(Vec<SocketAddr>, Arc<Dns>),
    ) -> HashMap<Box<str>, Arc<UpstreamPool>> {
        let mut out = HashMap::new();
        for (name, u) in raw {
            let path = format!("upstreams.{name}");
            if u.endpoints.is_empty() {
                self.err(
                    format!("{path}.endpoints"),
                    "at least one endpoint is required",
                );
            }
            let mut endpoints = Vec::new();
            for (i, e) in u.endpoints.iter().enumerate() {
                let epath = format!("{path}.endpoints[{i}]");
                match self.endpoint(e) {
                    Ok(ep) => endpoints.push(ep),
                    Err(msg) => self.err(epath, msg),
                }
            }
            if endpoints.iter().any(|e| e.h2c) && !endpoints.iter().all(|e| e.h2c) {
                self.err(
                    format!("{path}.endpoints"),
                    "mix of http:// and h2c:// endpoints in one pool",
                );
            }
            if u.dns_refresh_ms == Some(0) {
                self.err(format!("{path}.dns_refresh_ms"), "must be at least 1");
            }
            let balance = match u.balance {
                RawBalance::RoundRobin => Balance::RoundRobin,
                RawBalance::LeastRequests => Balance::LeastRequests,
            };
            let https = endpoints
                .iter()
                .filter(|e| e.scheme == Scheme::HTTPS)
                .count();
            if https != 0 && https != endpoints.len() {
                self.err(
                    format!("{path}.endpoints"),
                    "mix of https:// and plain endpoints in one pool",
                );
            }
            if https == 0 && u.tls.is_some() {
                self.err(
                    format!("{path}.tls"),
                    "tls is set but no endpoint is https://",
                );
            }
            let tls = if https > 0 {
                self.upstream_tls(&path, u.tls.as_ref()).map(Arc::new)
            } else {
                None
            };
            // Health and in-flight counts by (pool, endpoint, TLS settings): kept by a reload
            // that keeps all three, fresh for an endpoint that changed.
            let fingerprint = tls.as_ref().map(|t| t.fingerprint.clone());
            let endpoints = endpoints
                .into_iter()
                .map(|e| {
                    let key = (
                        name.as_str().into(),
                        format!(
                            "{}://{}{}",
                            e.scheme,
                            e.authority,
                            if e.h2c { "#h2c" } else { "" }
                        ),
                        fingerprint.clone(),
                    );
                    let state = self.rt.endpoints.get_or_insert_with(key, Default::default);
                    let mut ep = Endpoint::with_state(e.scheme.clone(), e.authority.clone(), state);
                    ep.h2c = e.h2c;
                    // A hostname is resolved (and kept fresh) while the endpoint lives.
                    let host = e.authority.host();
                    if host.parse::<std::net::IpAddr>().is_err()
                        && !(host.starts_with('[') && host.ends_with(']'))
                    {
                        ep.dns = Some(dns.1.name(
                            host.trim_end_matches('.'),
                            u.dns_refresh_ms.map(Duration::from_millis),
                        ));
                    }
                    ep
                })
                .collect();
            let pool_state = self
                .rt
                .pools
                .get_or_insert_with(name.as_str().into(), Default::default);
            let mut pool = UpstreamPool::new(name, endpoints, balance).with_state(pool_state);
            pool.tls = tls;
            if u.health.max_ejection_percent > 100 {
                self.err(
                    format!("{path}.health.max_ejection_percent"),
                    "must be at most 100",
                );
            }
            pool.health = crate::upstream::Health {
                consecutive_failures: u.health.consecutive_failures,
                ejection: Duration::from_millis(u.health.ejection_ms),
                count_5xx: u.health.count_5xx,
                max_ejection_percent: u.health.max_ejection_percent.min(100),
            };
            pool.retry_connect_failure = u.retry_connect_failure;
            pool.dns = Some(dns.1.clone());
            if u.idle_timeout_ms == Some(0) {
                self.err(format!("{path}.idle_timeout_ms"), "must be at least 1");
            }
            if u.max_connections_per_endpoint == Some(0) {
                self.err(
                    format!("{path}.max_connections_per_endpoint"),
                    "must be at least 1 (leave it out for no cap)",
                );
            }
            if !pool.is_lean() {
                for (key, set) in [
                    ("idle_timeout_ms", u.idle_timeout_ms.is_some()),
                    (
                        "max_connections_per_endpoint",
                        u.max_connections_per_endpoint.is_some(),
                    ),
                ] {
                    if set {
                        self.err(
                            format!("{path}.{key}"),
                            "applies to http:// pools only (https:// and h2c:// pools close idle connections after 4 s)",
                        );
                    }
                }
            }
            pool.conn = crate::upstream_h1::ConnSettings {
                idle_timeout: u.idle_timeout_ms.map_or(
                    crate::upstream_h1::DEFAULT_IDLE_TIMEOUT,
                    Duration::from_millis,
                ),
                max_per_endpoint: u.max_connections_per_endpoint.unwrap_or(0) as usize,
            };
            if let Some(cap) = &u.capacity
                && let Some(settings) = self.capacity(&format!("{path}.capacity"), cap)
            {
                // The queue is the pool's (by name): waiters and order survive a reload.
                let queue = self.rt.queues.get_or_insert_with(name.as_str().into(), || {
                    crate::fairshare::FairQueue::new(settings)
                });
                pool.set_capacity(queue, settings);
            }
            pool.signer = signing.and_then(|(active, keys)| {
                let key = match &u.signing_key {
                    None => active.clone(),
                    Some(id) => match keys.iter().find(|k| k.id() == id) {
                        Some(k) => k.clone(),
                        None => {
                            self.err(
                                format!("{path}.signing_key"),
                                format!("unknown signing key {id:?}"),
                            );
                            return None;
                        }
                    },
                };
                Some(Signer {
                    key,
                    version,
                    audience: name.as_str().into(),
                })
            });
            out.insert(name.as_str().into(), Arc::new(pool));
        }
        out
    }

    fn capacity(
        &mut self,
        path: &str,
        c: &super::raw::RawCapacity,
    ) -> Option<crate::fairshare::CapacitySettings> {
        use super::raw::RawMaxInFlight;
        use crate::fairshare::{CapacitySettings, Limit};
        let limit = match &c.max_in_flight {
            RawMaxInFlight::Fixed(n) if *n > 0 => Limit::Fixed(*n as usize),
            RawMaxInFlight::Adaptive { adaptive }
                if adaptive.min > 0 && adaptive.min <= adaptive.max =>
            {
                Limit::Adaptive {
                    min: adaptive.min as usize,
                    max: adaptive.max as usize,
                }
            }
            _ => {
                self.err(
                    format!("{path}.max_in_flight"),
                    "must be a number greater than 0, or { adaptive: { min, max } } with 0 < min <= max",
                );
                return None;
            }
        };
        if c.queue_ms == 0 || c.max_queued == 0 || c.max_queued_per_tenant == 0 {
            self.err(
                path,
                "queue_ms, max_queued and max_queued_per_tenant must be greater than 0",
            );
            return None;
        }
        Some(CapacitySettings {
            limit,
            queue: Duration::from_millis(c.queue_ms),
            max_queued_per_tenant: c.max_queued_per_tenant as usize,
            max_queued: c.max_queued as usize,
        })
    }

    fn endpoint(&mut self, e: &str) -> Result<Endpoint, String> {
        let uri: Uri = e
            .parse()
            .map_err(|_| format!("invalid endpoint URL {e:?}"))?;
        // h2c:// is HTTP/2 with prior knowledge (gRPC upstreams); the wire scheme is http.
        let (scheme, h2c) = match uri.scheme_str() {
            Some("http") => (Scheme::HTTP, false),
            Some("https") => (Scheme::HTTPS, false),
            Some("h2c") => (Scheme::HTTP, true),
            Some(_) => {
                return Err(format!(
                    "endpoint {e:?}: only http://, https:// and h2c:// upstreams are supported"
                ));
            }
            None => return Err(format!("endpoint {e:?} needs http:// or h2c://")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or(format!("endpoint {e:?} needs a host and port"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("endpoint {e:?} must not carry a path"));
        }
        if authority.as_str().contains('@') {
            return Err(format!("endpoint {e:?} must not carry credentials"));
        }
        let host = authority.host();
        let is_ip = host.parse::<std::net::IpAddr>().is_ok()
            || (host.starts_with('[') && host.ends_with(']'));
        let name = host.strip_suffix('.').unwrap_or(host);
        let hostname = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !is_ip && !hostname {
            return Err(format!(
                "endpoint {e:?}: {host:?} is neither an IP address nor a hostname"
            ));
        }
        let mut ep = Endpoint::new(scheme, authority);
        ep.h2c = h2c;
        Ok(ep)
    }

    fn routes(
        &mut self,
        path: &str,
        raw: &[RawRoute],
        upstreams: &HashMap<Box<str>, Arc<UpstreamPool>>,
        config: &RawConfig,
    ) -> Vec<Route> {
        let mut out = Vec::new();
        let mut prefixes = HashSet::new();
        for (i, r) in raw.iter().enumerate() {
            let rpath = format!("{path}[{i}]");
            if !r.path_prefix.starts_with('/') {
                self.err(format!("{rpath}.path_prefix"), "must start with '/'");
            }
            if !prefixes.insert(r.path_prefix.as_str()) {
                self.err(
                    format!("{rpath}.path_prefix"),
                    format!("duplicate path_prefix {:?}", r.path_prefix),
                );
            }
            for (j, req) in r.require.iter().enumerate() {
                let missing = match req {
                    RawSource::Token => config.token.is_none(),
                    RawSource::Apikey => config.apikey.is_none(),
                    RawSource::Sni | RawSource::Host | RawSource::ClientCert => false,
                };
                if missing {
                    self.err(
                        format!("{rpath}.require[{j}]"),
                        format!("{req:?} is required here but not configured").to_lowercase(),
                    );
                }
                if matches!(
                    req,
                    RawSource::Sni | RawSource::Host | RawSource::ClientCert
                ) {
                    self.err(
                        format!("{rpath}.require[{j}]"),
                        "only token and apikey can be required by a route",
                    );
                }
            }
            match upstreams.get(r.upstream.as_str()) {
                Some(pool) => out.push(Route {
                    path_prefix: r.path_prefix.as_str().into(),
                    upstream: pool.clone(),
                    require_token: r.require.contains(&RawSource::Token),
                    require_apikey: r.require.contains(&RawSource::Apikey),
                }),
                None => self.err(
                    format!("{rpath}.upstream"),
                    format!("unknown upstream {:?}", r.upstream),
                ),
            }
        }
        // Longest prefix first, so the first match is the longest.
        out.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        out
    }

    fn cert(&mut self, path: &str, r: &RawCertRef) -> Option<Arc<LoadedCert>> {
        let key = (r.cert.clone(), r.key.clone());
        if let Some(cached) = self.certs_by_path.get(&key) {
            return cached.clone();
        }
        let loaded = match load_cert(&r.cert, &r.key) {
            Ok(c) => {
                if c.names.is_empty() {
                    self.err(
                        format!("{path}.cert"),
                        "certificate has no DNS names in its subjectAltName",
                    );
                }
                Some(Arc::new(c))
            }
            Err(msg) => {
                self.err(path, msg);
                None
            }
        };
        self.certs_by_path.insert(key, loaded.clone());
        loaded
    }

    /// The client TLS settings of an `https://` pool: CA bundle or system roots, optional client
    /// certificate, optional server name; aws-lc-rs, TLS 1.2 and 1.3.
    fn upstream_tls(&mut self, path: &str, t: Option<&RawUpstreamTls>) -> Option<UpstreamTls> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut fingerprint = String::new();
        let mut roots = rustls::RootCertStore::empty();
        if let Some(t) = t {
            self.files.extend(t.ca_file.iter().cloned());
            if let Some(cc) = &t.client_cert {
                self.files.extend([cc.cert.clone(), cc.key.clone()]);
            }
        }
        match t.and_then(|t| t.ca_file.as_ref()) {
            Some(ca) => {
                let certs: Result<Vec<CertificateDer<'static>>, _> = crate::files::read_file(ca)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        CertificateDer::pem_slice_iter(&b)
                            .collect::<Result<_, _>>()
                            .map_err(|e| e.to_string())
                    });
                match certs {
                    Ok(certs) if !certs.is_empty() => {
                        for c in certs {
                            fingerprint.push_str(&super::content_hash(c.as_ref()));
                            if roots.add(c).is_err() {
                                self.err(format!("{path}.tls.ca_file"), "invalid CA certificate");
                            }
                        }
                    }
                    _ => {
                        self.err(
                            format!("{path}.tls.ca_file"),
                            format!("cannot read a PEM CA bundle from {}", ca.display()),
                        );
                        return None;
                    }
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for c in native.certs {
                    let _ = roots.add(c);
                }
                fingerprint.push_str("system-roots");
            }
        }
        let builder = match rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        {
            Ok(b) => b.with_root_certificates(roots),
            Err(e) => {
                self.err(format!("{path}.tls"), e.to_string());
                return None;
            }
        };
        let config = match t.and_then(|t| t.client_cert.as_ref()) {
            Some(cc) => {
                let chain: Result<Vec<CertificateDer<'static>>, _> =
                    crate::files::read_file(&cc.cert)
                        .map_err(|e| e.to_string())
                        .and_then(|b| {
                            CertificateDer::pem_slice_iter(&b)
                                .collect::<Result<_, _>>()
                                .map_err(|e| e.to_string())
                        });
                let key = crate::files::read_file(&cc.key)
                    .map_err(|e| e.to_string())
                    .and_then(|b| PrivateKeyDer::from_pem_slice(&b).map_err(|e| e.to_string()));
                match (chain, key) {
                    (Ok(chain), Ok(key)) if !chain.is_empty() => {
                        fingerprint.push_str(&super::content_hash(chain[0].as_ref()));
                        match builder.with_client_auth_cert(chain, key) {
                            Ok(c) => c,
                            Err(e) => {
                                self.err(format!("{path}.tls.client_cert"), e.to_string());
                                return None;
                            }
                        }
                    }
                    _ => {
                        self.err(
                            format!("{path}.tls.client_cert"),
                            "cannot read the client certificate and key (PEM)",
                        );
                        return None;
                    }
                }
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = t.and_then(|t| t.server_name.clone());
        if let Some(n) = &server_name {
            if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
                self.err(
                    format!("{path}.tls.server_name"),
                    format!("invalid name {n:?}"),
                );
            }
            fingerprint.push_str(n);
        }
        Some(UpstreamTls {
            config: Arc::new(config),
            server_name,
            fingerprint,
        })
    }

    /// Compiles `cluster.rate_limit_store.redis`.
    fn redis(&mut self, r: &RawRedis) -> Option<crate::cluster::RedisSettings> {
        use crate::cluster::{OnError, RedisSettings};
        let path = "cluster.rate_limit_store.redis";
        if redis::Client::open(r.url.as_str()).is_err() {
            self.err(
                format!("{path}.url"),
                format!("invalid Redis URL {:?}", r.url),
            );
        }
        let on_error = match r.on_error.as_deref().unwrap_or("local") {
            "local" => OnError::Local,
            "allow" => OnError::Allow,
            "deny" => OnError::Deny,
            other => {
                self.err(
                    format!("{path}.on_error"),
                    format!("{other:?}: expected local, allow or deny"),
                );
                OnError::Local
            }
        };
        let settings = RedisSettings {
            url: r.url.clone(),
            on_error,
            timeout: Duration::from_millis(r.timeout_ms.unwrap_or(10)),
            replicas: r.replicas.unwrap_or(1),
            failure_threshold: r.failure_threshold.unwrap_or(5),
            failure_rate_percent: r.failure_rate_percent.unwrap_or(50),
            failure_window: Duration::from_millis(r.failure_window_ms.unwrap_or(1000)),
            open_for: Duration::from_millis(r.open_ms.unwrap_or(1000)),
            key_prefix: r.key_prefix.clone().unwrap_or_else(|| "tgw:rl:".to_owned()),
        };
        for (field, zero) in [
            ("timeout_ms", settings.timeout.is_zero()),
            ("replicas", settings.replicas == 0),
            ("failure_threshold", settings.failure_threshold == 0),
            ("open_ms", settings.open_for.is_zero()),
            ("failure_window_ms", settings.failure_window.is_zero()),
        ] {
            if zero {
                self.err(format!("{path}.{field}"), "must be greater than 0");
            }
        }
        if !(1..=100).contains(&settings.failure_rate_percent) {
            self.err(
                format!("{path}.failure_rate_percent"),
                "must be between 1 and 100",
            );
        }
        Some(settings)
    }

    /// Compiles `token:`: algorithms, keys (PEM public keys, HMAC secrets, JWKS file), the
    /// explicit validation rules, and the claims to forward.
    fn token(&mut self, t: &RawToken, header_prefix: &str) -> Option<TokenAuth> {
        let errors_before = self.errors.0.len();
        if t.tenant_claim.is_empty() {
            self.err("token.tenant_claim", "must not be empty");
        }
        let mut allowed = Vec::new();
        for (i, a) in t.algorithms.iter().enumerate() {
            match token::parse_algorithm(a) {
                Some(alg) => allowed.push(alg),
                None => self.err(
                    format!("token.algorithms[{i}]"),
                    format!("unsupported algorithm {a:?} (none is never allowed)"),
                ),
            }
        }
        if t.algorithms.is_empty() {
            self.err(
                "token.algorithms",
                "list the accepted algorithms, e.g. [RS256, ES256]",
            );
        }
        let base =
            token::base_validation(t.issuer.as_deref(), t.audience.as_deref(), t.leeway_seconds);
        let mut keys = Vec::new();
        let mut kids = HashSet::new();
        // The section's identity: its settings and the key material they name. Verified tokens
        // and a fetched key set are kept by a reload only while all of it is unchanged.
        let mut identity = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        identity.update(format!("{t:?}").as_bytes());
        for (i, k) in t.keys.iter().enumerate() {
            let path = format!("token.keys[{i}]");
            if !kids.insert(k.kid.as_str()) {
                self.err(format!("{path}.kid"), format!("duplicate kid {:?}", k.kid));
            }
            let key = match (&k.public_key_file, &k.secret_env, &k.secret_file) {
                (Some(file), None, None) => match self.read_named(file) {
                    Ok(pem) => {
                        identity.update(&pem);
                        DecodingKey::from_rsa_pem(&pem)
                            .or_else(|_| DecodingKey::from_ec_pem(&pem))
                            .or_else(|_| DecodingKey::from_ed_pem(&pem))
                            .map_err(|_| {
                                self.err(
                                    format!("{path}.public_key_file"),
                                    format!(
                                        "{} is not an RSA, EC or Ed25519 public key in PEM",
                                        file.display()
                                    ),
                                )
                            })
                            .ok()
                    }
                    Err(e) => {
                        self.err(
                            format!("{path}.public_key_file"),
                            format!("cannot read {}: {e}", file.display()),
                        );
                        None
                    }
                },
                (None, env, file) if env.is_some() != file.is_some() => self
                    .secret(&path, env.as_deref(), file.as_deref())
                    .map(|s| {
                        identity.update(&s);
                        DecodingKey::from_secret(&s)
                    }),
                _ => {
                    self.err(
                        &path,
                        "set exactly one of public_key_file, secret_env, secret_file",
                    );
                    None
                }
            };
            if let Some(key) = key {
                keys.push((k.kid.clone(), key));
            }
        }
        let jwks = t.jwks_file.as_ref().and_then(|file| {
            match crate::files::read_text(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))
                .and_then(|text| token::jwks_keys(&text, &base, &allowed))
            {
                Ok(keys) => Some((file.clone(), keys)),
                Err(e) => {
                    self.err("token.jwks_file", e);
                    None
                }
            }
        });
        let remote_url = t
            .jwks_url
            .as_ref()
            .and_then(|u| match u.parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("http") && !t.allow_insecure_jwks_url => {
                    self.err(
                        "token.jwks_url",
                        format!(
                            "{u:?}: keys fetched over plain http can be replaced in transit; use https, or set token.allow_insecure_jwks_url: true (tests, loopback)"
                        ),
                    );
                    None
                }
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("https" | "http"))
                        && uri.host().is_some() =>
                {
                    Some(uri)
                }
                _ => {
                    self.err("token.jwks_url", format!("{u:?} is not an http(s) URL"));
                    None
                }
            });
        let remote_tls = remote_url
            .as_ref()
            .and_then(|_| self.upstream_tls("token.jwks_url", None));
        if t.keys.is_empty() && t.jwks_file.is_none() && t.jwks_url.is_none() {
            self.err("token", "configure keys, jwks_file or jwks_url");
        }
        let mut forward = Vec::new();
        for (i, claim) in t.forward_claims.iter().enumerate() {
            let ok = !claim.is_empty()
                && claim
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            match HeaderName::from_bytes(
                format!(
                    "{header_prefix}-claim-{}",
                    claim.to_ascii_lowercase().replace('_', "-")
                )
                .as_bytes(),
            ) {
                Ok(h) if ok => forward.push((claim.clone(), h)),
                _ => self.err(
                    format!("token.forward_claims[{i}]"),
                    format!("claim name {claim:?} must be [A-Za-z0-9_-]+"),
                ),
            }
        }
        if self.errors.0.len() != errors_before {
            return None;
        }
        let identity =
            u64::from_le_bytes(identity.finish().as_ref()[..8].try_into().unwrap_or([0; 8]));
        let cache = self
            .rt
            .token_caches
            .get_or_insert_with(identity, || token::TokenCache::new(token::CACHE_CAPACITY));
        let remote = remote_url.zip(remote_tls).map(|(url, tls)| {
            self.rt.jwks.get_or_insert_with(identity, || {
                crate::token::jwks::RemoteJwks::new(
                    url,
                    base.clone(),
                    allowed.clone(),
                    Arc::new(tls),
                    cache.clone(),
                    Duration::from_millis(t.jwks_startup_wait_ms),
                )
            })
        });
        match TokenAuth::new(&t.tenant_claim, allowed, base, keys, jwks, forward) {
            Ok(mut auth) => {
                auth.remote = remote;
                auth.share_cache(cache);
                Some(auth)
            }
            Err(e) => {
                self.err("token.keys", e);
                None
            }
        }
    }
}

/// 64 hex digits → 32 bytes.
fn decode_sha256_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
