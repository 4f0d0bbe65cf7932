//! tenant-gateway: an edge reverse proxy for multi-tenant SaaS.
//!
//! # Layout
//!
//! Imports run one way, top to bottom (no cycle; CONTRIBUTING.md "Module graph" has the table):
//!
//! - entry points: [`gateway`] (owns the snapshot cell, the runtime state and the reload path;
//!   binds and starts the listeners), [`watch`] (reload on file change), [`demo`].
//! - server: [`server`] (listeners, connection cap, HTTP/1.1 + HTTP/2, graceful drain),
//!   [`tls_accept`] (handshake-time certificate and client-certificate choice from the live
//!   snapshot), [`admin`] (the admin API; reaches the gateway through `admin::AdminHost`),
//!   [`usage_export`] (usage export, state file, `/tenants/<id>/usage`).
//! - pipeline: [`proxy`], the request path, phase by phase.
//! - shared context: [`shared`] (what the gateway hands down: snapshot cell, metrics, store,
//!   meter, reload notifications, connection counters), [`metrics`] (Prometheus), [`stats`]
//!   (the `/stats` JSON the admin `/dashboard` page refreshes from).
//! - phases: [`tenant`] (resolve tenant, client certificate, agreement) → [`token`]
//!   (authenticate) → [`route`] → [`admit`] (rate, quota, concurrency) → [`forward`] (strip,
//!   sign, send, splice upgrades); `headers::framing` (smuggling and size checks).
//! - snapshot and compile: [`snapshot`] (the compiled, immutable config a request runs against),
//!   [`config`] (the YAML file and its compilation, collecting every error with its YAML path).
//! - state types: [`runtime`] (state that outlives snapshots, in registries keyed by identity),
//!   [`limits`], [`cluster`], [`quota`], [`usage`], [`upstream`], [`token`] and `token::jwks`,
//!   [`tls`] (certificate store), [`client_auth`], [`proxy_protocol`], [`conn`] (what the accept
//!   phase learned about a connection), [`admin_access`], `config::raw`.
//! - leaf utilities: [`body`], [`io`], [`parking`] (parked connections' shared idle sweep),
//!   [`error`], [`normalize`], [`fairshare`], [`signing`],
//!   [`headers`], [`devcerts`], [`files`] (bounded reads of the files a config names),
//!   `config::errors`.

pub mod admin;
pub mod admin_access;
pub mod admit;
pub mod body;
pub mod client_auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod demo;
pub mod devcerts;
pub mod dns;
pub mod error;
pub mod fairshare;
pub mod fdlimit;
pub mod files;
pub mod forward;
pub mod gateway;
pub mod headers;
pub mod io;
pub mod limits;
pub mod metrics;
pub mod normalize;
pub mod parking;
pub mod proxy;
pub mod proxy_protocol;
pub mod quota;
pub mod route;
pub mod runtime;
pub mod server;
pub mod shared;
pub mod signing;
pub mod snapshot;
pub mod stats;
pub mod tenant;
pub mod tls;
pub mod tls_accept;
pub mod token;
pub mod upstream;
pub mod upstream_h1;
pub mod usage;
pub mod usage_export;
pub mod watch;

pub use error::GatewayError;
pub use gateway::{Gateway, Running};
