//! The running gateway, the top of the module graph: it owns the state it shares with the
//! listeners and the admin API (`shared::Shared`: the current snapshot in one `ArcSwap`,
//! metrics, store, meter), the runtime state that outlives snapshots, and the reload path
//! (read → parse → compile → swap, one at a time; on error keep the old one).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::admin;
use crate::cluster::RedisStore;
use crate::config::{self, ConfigErrors};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::server;
use crate::shared::Shared;
use crate::snapshot::Snapshot;

/// How often [`Gateway::reload_settling`] tries again while files settle.
pub const SETTLE_POLL: Duration = Duration::from_millis(100);

pub struct Gateway {
    /// What the listeners, the request path and the admin API share (snapshot, metrics, store,
    /// meter, reload notifications, connection counters).
    shared: Arc<Shared>,
    /// State that outlives snapshots, by identity (limiters, slots, health, queues, caches).
    runtime: Arc<Runtime>,
    /// Serialises reloads: read, compile and swap happen as one, so the file read last is the
    /// one installed, and its generation says so.
    reload_lock: Mutex<()>,
    config_path: Option<PathBuf>,
    /// `usage.export`, made at start from the first config (changes take effect on restart).
    exporter: Option<Arc<crate::usage_export::Exporter>>,
}

impl Gateway {
    /// A gateway serving `snapshot`; `config_path` is what reloads re-read.
    pub fn new(snapshot: Snapshot, config_path: Option<PathBuf>) -> Arc<Self> {
        Self::with_runtime(snapshot, config_path, Arc::default())
    }

    /// A gateway serving `snapshot`, compiled against `runtime`.
    pub fn with_runtime(
        snapshot: Snapshot,
        config_path: Option<PathBuf>,
        runtime: Arc<Runtime>,
    ) -> Arc<Self> {
        let store = snapshot.cluster.clone().and_then(|settings| {
            RedisStore::new(settings)
                .map_err(|e| tracing::error!(error = %e, "rate-limit store unavailable"))
                .ok()
        });
        let meter = Arc::new(crate::quota::Meter::new(snapshot.usage.state_file.clone()));
        let export = snapshot.usage.export.clone();
        let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        let exporter =
            export.map(|e| crate::usage_export::Exporter::new(e, snapshot.clone(), meter.clone()));
        Arc::new(Self {
            shared: Arc::new(Shared {
                meter,
                metrics: Metrics::new(snapshot.clone()),
                draining: AtomicBool::new(false),
                store,
                reloads: watch::channel(1).0,
                upgraded: Arc::default(),
                per_ip: DashMap::new(),
                snapshot,
                generation: AtomicU64::new(1),
                last_reload_error: Mutex::new(None),
            }),
            exporter,
            runtime,
            reload_lock: Mutex::new(()),
            config_path,
        })
    }

    /// Loads and compiles `path`; every error if it does not compile.
    pub fn from_file(path: &Path) -> Result<Arc<Self>, ConfigErrors> {
        let runtime = Arc::new(Runtime::default());
        let snapshot = config::load_with(path, &runtime)?;
        snapshot.activate();
        Ok(Self::with_runtime(
            snapshot,
            Some(path.to_path_buf()),
            runtime,
        ))
    }

    /// The runtime state registries (for tools and tests).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The file reloads re-read.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// What the listeners, the request path and the admin API share.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The current snapshot. A request takes it once and keeps it to the end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    pub(crate) fn snapshot_cell(&self) -> Arc<ArcSwap<Snapshot>> {
        self.shared.snapshot_cell()
    }

    pub fn metrics(&self) -> &Metrics {
        self.shared.metrics()
    }

    /// Notified with the generation after every good reload.
    pub fn subscribe_reloads(&self) -> watch::Receiver<u64> {
        self.shared.subscribe_reloads()
    }

    /// The shared rate-limit store, in cluster mode.
    pub fn rate_limit_store(&self) -> Option<&RedisStore> {
        self.shared.rate_limit_store()
    }

    /// The quota and usage meter (its clock can be pinned in tests).
    pub fn meter(&self) -> &crate::quota::Meter {
        self.shared.meter()
    }

    /// Exports the usage of the interval in progress and writes the state file (shutdown,
    /// tests).
    pub fn flush_usage(&self) {
        if let Some(e) = &self.exporter
            && let Err(err) = e.flush()
        {
            tracing::warn!(error = %err, "usage export failed");
        }
        crate::usage_export::save_state(&self.shared.meter, &self.shared.snapshot);
    }

    /// True once shutdown has begun: `/readyz` answers 503.
    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// Number of good loads so far (1 after start).
    pub fn generation(&self) -> u64 {
        self.shared.generation()
    }

    /// The error of the last failed reload, cleared by a good one.
    pub fn last_reload_error(&self) -> Option<String> {
        self.shared.last_reload_error()
    }

    /// Re-reads the config file and swaps the snapshot. On any error the current snapshot
    /// keeps serving and the error is returned (and remembered for the admin API).
    pub fn reload(&self) -> Result<u64, ConfigErrors> {
        let path = self
            .config_path
            .as_deref()
            .ok_or_else(|| ConfigErrors::single("", "no config file to reload from"))?;
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = config::load_with(path, &self.runtime);
        self.install(result)
    }

    /// A reload started by a file change. Files are often replaced one at a time (a
    /// certificate, then its key a moment later), so a config that does not compile is tried
    /// again every [`SETTLE_POLL`] until `settle` has passed; only then is the error installed
    /// (logged, counted, shown on `/config`). A good compile is installed at once.
    pub fn reload_settling(&self, settle: Duration) -> Result<u64, ConfigErrors> {
        let path = self
            .config_path
            .as_deref()
            .ok_or_else(|| ConfigErrors::single("", "no config file to reload from"))?;
        let deadline = std::time::Instant::now() + settle;
        loop {
            let one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
            let result = config::load_with(path, &self.runtime);
            if result.is_ok() || std::time::Instant::now() >= deadline {
                return self.install(result);
            }
            drop(one_at_a_time);
            tracing::debug!("config does not compile yet; waiting for the files to settle");
            std::thread::sleep(SETTLE_POLL);
        }
    }

    /// Swaps in a compiled snapshot (or records why there is none).
    pub fn install(&self, result: Result<Snapshot, ConfigErrors>) -> Result<u64, ConfigErrors> {
        let mut last = self
            .shared
            .last_reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(next) => {
                let current = self.shared.snapshot.load();
                if next.usage != current.usage {
                    tracing::warn!("usage settings (state file, export) take effect on restart");
                }
                if next.cluster != current.cluster {
                    tracing::warn!("cluster store changes take effect on restart");
                }
                if next.listeners != current.listeners
                    || next.admin != current.admin
                    || next.admin_access.metrics_bind != current.admin_access.metrics_bind
                {
                    tracing::warn!(
                        "listener changes take effect on restart; reload keeps the bound sockets"
                    );
                }
                let summary = format!(
                    "tenants {} -> {}, routes {} -> {}, upstreams {} -> {}",
                    current.tenants.len(),
                    next.tenants.len(),
                    current.route_count(),
                    next.route_count(),
                    current.upstreams.len(),
                    next.upstreams.len()
                );
                drop(current);
                let hash = next.content_hash.clone();
                next.activate();
                self.shared.snapshot.store(Arc::new(next));
                let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
                *last = None;
                Metrics::count(&self.shared.metrics.reloads, "result", "ok");
                self.shared.metrics.last_reload_failed.set(0);
                self.shared.reloads.send_replace(generation);
                self.shared.metrics.config_generation.set(generation as i64);
                tracing::info!(generation, hash = %hash, %summary, "config reloaded");
                Ok(generation)
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(path = %e.path, error = %e.message, "config reload rejected; keeping the current config");
                }
                *last = Some(errors.to_string());
                Metrics::count(&self.shared.metrics.reloads, "result", "error");
                self.shared.metrics.last_reload_failed.set(1);
                Err(errors)
            }
        }
    }

    /// Binds every listener of the current snapshot and starts serving.
    pub async fn start(self: &Arc<Self>) -> io::Result<Running> {
        self.start_on(&[]).await
    }

    /// As [`Gateway::start`], with every traffic listener also served on each runtime of
    /// `workers`: one socket per runtime on the same address (`SO_REUSEPORT`; the kernel
    /// spreads new connections over them), so each runtime accepts and serves its own
    /// connections on its own thread. The admin listeners and background work stay on the
    /// calling runtime.
    pub async fn start_on(
        self: &Arc<Self>,
        workers: &[tokio::runtime::Handle],
    ) -> io::Result<Running> {
        let snap = self.snapshot();
        snap.activate();
        // A Redis Cluster node is refused before anything is served (when it answers now;
        // otherwise the announcer checks once it does).
        if let Some(store) = &self.shared.store {
            store.refuse_cluster().await.map_err(io::Error::other)?;
        }
        let tls = server::tls_acceptor(self.snapshot_cell()).map_err(io::Error::other)?;
        let connections = Arc::new(Semaphore::new(snap.limits.max_connections));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (admin_tx, admin_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut listeners = Vec::new();
        for spec in &snap.listeners {
            let sockets = server::bind(spec.bind, 1 + workers.len()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("listener {} on {}: {e}", spec.name, spec.bind),
                )
            })?;
            let addr = sockets[0].local_addr()?;
            tracing::info!(listener = %spec.name, %addr, tls = spec.tls, sockets = sockets.len(), "listening");
            listeners.push((spec.name.clone(), addr));
            for (i, socket) in sockets.into_iter().enumerate() {
                let ctx = server::ListenerCtx {
                    name: spec.name.clone(),
                    tls: spec.tls.then(|| tls.clone()),
                    shared: self.shared.clone(),
                    connections: connections.clone(),
                    proxy_protocol: spec.proxy_protocol,
                    builders: Default::default(),
                    parking: Default::default(),
                };
                let serve = server::run_std(socket, ctx, shutdown_rx.clone());
                match i.checked_sub(1) {
                    None => tasks.spawn(serve),
                    Some(w) => tasks.spawn_on(serve, &workers[w]),
                };
            }
        }
        let mut admin_tasks = 0;
        if let Some(admin) = snap.admin {
            let listener = TcpListener::bind(admin)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("admin listener on {admin}: {e}")))?;
            let addr = listener.local_addr()?;
            tracing::info!(listener = "admin", %addr, tls = false, "listening");
            listeners.push(("admin".to_owned(), addr));
            tasks.spawn(admin::run(listener, self.clone(), admin_rx.clone()));
            admin_tasks += 1;
        }
        if let Some(bind) = snap.admin_access.metrics_bind {
            let listener = TcpListener::bind(bind).await.map_err(|e| {
                io::Error::new(e.kind(), format!("admin.metrics_bind on {bind}: {e}"))
            })?;
            let addr = listener.local_addr()?;
            tracing::info!(listener = "metrics", %addr, tls = false, "listening");
            listeners.push(("metrics".to_owned(), addr));
            tasks.spawn(admin::run_metrics(listener, self.clone(), admin_rx));
            admin_tasks += 1;
        }
        let mut usage_tasks = Vec::new();
        if let Some(e) = &self.exporter {
            usage_tasks.push(tokio::spawn(e.clone().run()));
        }
        if self.shared.meter.has_state_file() {
            usage_tasks.push(tokio::spawn(crate::usage_export::save_state_every(
                self.shared.meter.clone(),
                self.snapshot_cell(),
                snap.usage.state_interval,
            )));
        }
        let announcer = self
            .shared
            .store
            .clone()
            .map(|store| tokio::spawn(store.announce_every()));
        Ok(Running {
            announcer,
            usage_tasks,
            listeners,
            admin_tasks,
            shutdown: shutdown_tx,
            admin_shutdown: admin_tx,
            gateway: self.clone(),
            tasks,
        })
    }
}

impl admin::AdminHost for Gateway {
    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn reload(&self) -> Result<u64, ConfigErrors> {
        Gateway::reload(self)
    }
}

/// Listeners being served; dropped or `shutdown()` to stop.
pub struct Running {
    pub listeners: Vec<(String, SocketAddr)>,
    /// The admin and metrics listeners, which close after the traffic listeners have drained.
    admin_tasks: usize,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    gateway: Arc<Gateway>,
    tasks: JoinSet<()>,
    /// The usage exporter and state-file writer; flushed once more after the drain.
    usage_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The replica announcement (cluster mode); the replica leaves the set after the drain.
    announcer: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The bound address of a listener by name.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period), and returns.
    /// `/readyz` answers 503 from the start of the drain; the admin listener closes last.
    pub async fn shutdown(mut self) {
        self.gateway.shared.draining.store(true, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let _ = self.shutdown.send(true);
        let mut admin_closed = false;
        while self.tasks.join_next().await.is_some() {
            // Every traffic listener has drained once only the admin ones are left.
            if !admin_closed && self.tasks.len() <= self.admin_tasks {
                // Upgraded connections left hyper's accounting at the 101: wait for them here.
                let grace = self.gateway.snapshot().limits.shutdown_grace;
                while self.gateway.shared.upgraded.load(Ordering::Relaxed) > 0
                    && started.elapsed() < grace
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = self.admin_shutdown.send(true);
                admin_closed = true;
            }
        }
        for t in self.usage_tasks.drain(..) {
            t.abort();
        }
        if let Some(t) = self.announcer.take() {
            t.abort();
            if let Some(store) = &self.gateway.shared.store {
                store.retire().await;
            }
        }
        let gw = self.gateway.clone();
        let _ = tokio::task::spawn_blocking(move || gw.flush_usage()).await;
    }
}
