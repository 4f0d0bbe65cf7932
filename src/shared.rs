//! What the running gateway shares with its listeners, the request path and the admin API:
//! the current snapshot (one `ArcSwap`), metrics, the cluster rate-limit store, the quota and
//! usage meter, the reload notifications and the connection counters. The gateway
//! owns it (with the runtime state and the reload path) and hands an `Arc` of it down, so
//! nothing below the gateway imports the gateway.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::cluster::RedisStore;
use crate::metrics::Metrics;
use crate::quota::Meter;
use crate::snapshot::Snapshot;

pub struct Shared {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) generation: AtomicU64,
    pub(crate) last_reload_error: Mutex<Option<String>>,
    pub(crate) metrics: Metrics,
    pub(crate) draining: AtomicBool,
    /// The cluster rate-limit store, made at start from `cluster.rate_limit_store`.
    pub(crate) store: Option<Arc<RedisStore>>,
    /// Bumped on every good reload (upgraded connections re-check their tenant).
    pub(crate) reloads: watch::Sender<u64>,
    /// Upgraded (WebSocket) connections open now; a drain waits for them up to the grace period.
    pub(crate) upgraded: Arc<AtomicUsize>,
    /// Open connections per client IP, for `limits.max_connections_per_ip`.
    pub(crate) per_ip: DashMap<std::net::IpAddr, usize>,
    /// Quota counts and usage periods per tenant; outlives reloads.
    pub(crate) meter: Arc<Meter>,
}

impl Shared {
    /// The current snapshot. A request takes it once and keeps it to the end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub(crate) fn snapshot_cell(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Notified with the generation after every good reload.
    pub fn subscribe_reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// The shared rate-limit store, in cluster mode.
    pub fn rate_limit_store(&self) -> Option<&RedisStore> {
        self.store.as_deref()
    }

    /// The quota and usage meter (its clock can be pinned in tests).
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// True once shutdown has begun: `/readyz` answers 503.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Number of good loads so far (1 after start).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The error of the last failed reload, cleared by a good one.
    pub fn last_reload_error(&self) -> Option<String> {
        self.last_reload_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }
}
