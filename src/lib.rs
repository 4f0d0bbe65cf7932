//! tenant-gateway: an edge reverse proxy for multi-tenant SaaS.
//!
//! # Layout
//!
//! - [`config`]: the YAML file (`config::raw`) and its compilation into a [`snapshot::Snapshot`],
//!   collecting every error with its YAML path.
//! - [`snapshot`]: the compiled, immutable config a request runs against.
//! - [`runtime`]: state that outlives snapshots (limiters, slots, counters, endpoint health,
//!   queues, clients, token caches), in registries keyed by identity.
//! - [`gateway`]: shared state (one `ArcSwap<Snapshot>`, the upstream client), reload, start.
//! - [`server`]: listeners, connection cap, TLS handshake, HTTP/1.1 + HTTP/2, graceful drain.
//! - [`tls`]: certificate loading and SNI-based certificate selection.
//! - [`proxy`]: the request path, phase by phase, calling:
//!   [`tenant`] (resolve tenant, agreement) → [`token`] (authenticate) → [`route`] →
//!   [`limits`] (admit) → [`forward`] (strip, sign, send).
//! - [`admin`], [`metrics`], [`watch`]: the admin API, Prometheus metrics, reload on file change.
//! - [`quota`], [`usage`]: calendar quotas and the usage meter; `/tenants/<id>/usage`, export.
//! - [`client_auth`], [`proxy_protocol`]: client certificates (mTLS), the real client address
//!   (`trusted_proxies`, PROXY protocol, `x-forwarded-for`).
//! - [`stats`]: the `/stats` JSON the admin `/dashboard` page refreshes from.
//! - [`headers`]: hop-by-hop, forwarding and trusted tenant headers; framing checks.
//! - [`io`]: an I/O wrapper that shows reads to an observer (head scan, upgrade idle clock).
//! - [`signing`]: the `x-tenant-signature` signer and the verifier upstreams use.
//! - [`upstream`]: upstream pools, balancing, the pooled client.
//! - [`fairshare`]: a pool's `capacity`: slots, per-tenant queues, weighted fair dispatch.
//! - [`normalize`]: the request path as routes match it, as it is signed and forwarded.
//! - [`error`]: `GatewayError` and SPEC's status codes.
//! - [`devcerts`], [`demo`]: throwaway certificates and the newcomer's demo.

pub mod admin;
pub mod body;
pub mod client_auth;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod devcerts;
pub mod error;
pub mod fairshare;
pub mod forward;
pub mod gateway;
pub mod headers;
pub mod io;
pub mod jwks;
pub mod limits;
pub mod metrics;
pub mod normalize;
pub mod proxy;
pub mod proxy_protocol;
pub mod quota;
pub mod route;
pub mod runtime;
pub mod server;
pub mod signing;
pub mod snapshot;
pub mod stats;
pub mod tenant;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod usage;
pub mod watch;

pub use error::GatewayError;
pub use gateway::{Gateway, Running};
