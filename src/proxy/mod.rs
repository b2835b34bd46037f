//! The engine. [`Proxy::start`] binds the listener, builds the pools and
//! serves until the shutdown future it was given resolves; the returned
//! [`ProxyHandle`] is how the CLI, the tests and (later) the dashboard
//! observe and steer it.

pub mod admin;
pub mod auth;
pub mod buffers;
pub mod cancel;
pub mod config;
pub mod listener;
pub mod metrics;
pub mod mirror;
pub mod net;
pub mod pool;
pub mod protocol;
pub mod reload;
pub mod router;
pub mod secret;
pub mod server;
pub mod session;
pub mod stats;
pub mod tls;
pub(crate) mod wire;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use self::cancel::CancelRegistry;
use self::config::{Config, ConfigError};
use self::pool::PoolSet;
use self::reload::ReloadLog;
use self::stats::snapshot::Snapshot;
use self::stats::{Registry, ReloadRecord};

/// State every session and control path shares.
pub struct Shared {
    /// The running config; replaced whole on reload.
    pub config: ArcSwap<Config>,
    /// The running pools; replaced whole on reload, keeping the pools
    /// whose config hash did not change.
    pub pools: ArcSwap<PoolSet>,
    /// The generation of the set in `pools`, readable without touching
    /// the ArcSwap: sessions that remember their pool check this.
    pub pools_generation: std::sync::atomic::AtomicU64,
    /// TLS towards clients and servers; certificate files are re-read on
    /// every reload.
    pub tls: Arc<tls::TlsState>,
    pub cancel: Arc<CancelRegistry>,
    /// Every client and server connection, for the admin console.
    pub registry: Arc<Registry>,
    pub started_at: SystemTime,
    pub listen_addr: SocketAddr,
    /// Where the Prometheus exporter listens, once it does.
    pub metrics_addr: Mutex<Option<SocketAddr>>,
    reloads: Mutex<ReloadLog>,
    /// Reloads, RECONNECT and KILL rebuild pools one at a time.
    reload_lock: Mutex<()>,
    /// True once a graceful shutdown began.
    shutdown: watch::Sender<bool>,
    /// The same as a plain flag, for checks on the hot path.
    stopping: std::sync::atomic::AtomicBool,
    /// Cancelled at the forced end of a shutdown: connections still
    /// logging in stop; logged-in ones are aborted through the registry.
    pub aborted: tokio_util::sync::CancellationToken,
    /// Asks the listener to begin a graceful shutdown.
    shutdown_requested: Notify,
    /// Signalled when a second shutdown request asks for an immediate exit.
    kill: Notify,
    /// Admin console sessions, which a shutdown does not wait for.
    pub admin_tasks: tokio_util::task::TaskTracker,
}

impl Shared {
    /// The local address of an accepted client connection: the listen
    /// address when it names one (no getsockname per login), else what
    /// the kernel says.
    pub fn local_addr_of(&self, tcp: &tokio::net::TcpStream) -> io::Result<SocketAddr> {
        if self.listen_addr.ip().is_unspecified() {
            tcp.local_addr()
        } else {
            Ok(self.listen_addr)
        }
    }

    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn begin_shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.shutdown.send_replace(true);
        self.registry.wake_idle_clients();
    }

    /// Ends every connection at once: those logging in see `aborted`,
    /// the others are aborted through their kill switches.
    pub fn abort_all(&self) {
        // First the token, then the registry: a login that registers
        // after the walk below sees the token when it returns.
        self.aborted.cancel();
        for c in self.registry.clients() {
            c.kill.kill();
        }
    }

    async fn killed(&self) {
        self.kill.notified().await
    }

    /// Begins a graceful shutdown; when one is under way, exits at once.
    pub fn request_shutdown(&self) {
        if self.is_shutting_down() {
            self.kill.notify_one();
        } else {
            self.shutdown_requested.notify_one();
        }
    }

    /// Puts a new pool set in service; returns the one it replaces.
    pub fn publish_pools(&self, pools: Arc<PoolSet>) -> Arc<PoolSet> {
        let generation = pools.generation;
        let old = self.pools.swap(pools);
        self.pools_generation
            .store(generation, std::sync::atomic::Ordering::Release);
        old
    }

    /// Reloads the config file (SIGHUP, RELOAD, autoreload).
    pub fn reload(&self, trigger: &str) -> Result<ReloadRecord, ConfigError> {
        reload::reload_file(self, trigger)
    }

    /// The recent reloads, the number of reloads and of failed ones.
    pub fn reload_history(&self) -> (Vec<ReloadRecord>, u64, u64) {
        let log = self.reloads.lock();
        (
            log.records.iter().cloned().collect(),
            log.count,
            log.failures,
        )
    }

    pub fn snapshot(&self, with_sockets: bool) -> Snapshot {
        Snapshot::take(self, with_sockets)
    }
}

pub struct Proxy;

impl Proxy {
    /// Binds `general.host:general.port` (port 0 picks a free port), builds
    /// the pools and serves until `shutdown` resolves, then drains.
    pub async fn start(
        config: Config,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<ProxyHandle> {
        let addr = format!("{}:{}", config.general.host, config.general.port);
        let socket = net::SocketSettings::from_general(&config.general);
        let (listener, listening) = net::listen(&addr, &socket, config.general.listen_backlog)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        let registry = Arc::new(Registry::default());
        let tls = Arc::new(tls::TlsState::default());
        tls.load(&config.general.tls_settings())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let pools = PoolSet::build(&config, None, &registry, &Default::default(), &tls);
        let metrics = config.general.enable_prometheus_exporter.then(|| {
            format!(
                "{}:{}",
                config.general.host, config.general.prometheus_exporter_port
            )
        });
        let (shutdown_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            pools_generation: std::sync::atomic::AtomicU64::new(pools.generation),
            pools: ArcSwap::from_pointee(pools),
            tls,
            cancel: Arc::new(CancelRegistry::default()),
            registry,
            started_at: SystemTime::now(),
            listen_addr: local_addr,
            metrics_addr: Mutex::new(None),
            reloads: Mutex::new(ReloadLog::default()),
            reload_lock: Mutex::new(()),
            shutdown: shutdown_tx,
            stopping: std::sync::atomic::AtomicBool::new(false),
            aborted: tokio_util::sync::CancellationToken::new(),
            shutdown_requested: Notify::new(),
            kill: Notify::new(),
            admin_tasks: tokio_util::task::TaskTracker::new(),
        });
        let mut background = Vec::new();
        if let Some(addr) = metrics {
            let metrics_listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen for metrics on {addr}: {e}"),
                )
            })?;
            *shared.metrics_addr.lock() = metrics_listener.local_addr().ok();
            background.push(tokio::spawn(metrics::serve(
                metrics_listener,
                shared.clone(),
            )));
        }
        background.push(tokio::spawn(stats::snapshot::run_stats_task(
            shared.clone(),
        )));
        background.push(tokio::spawn(reload::run_autoreload(shared.clone())));
        let (done_tx, done_rx) = watch::channel(false);
        let task_shared = shared.clone();
        tokio::spawn(async move {
            let requested = task_shared.clone();
            let stop = async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = requested.shutdown_requested.notified() => {}
                }
            };
            listener::run(listener, listening, task_shared.clone(), stop).await;
            for task in background {
                task.abort();
            }
            // Close every pooled server connection now rather than when
            // the last reference goes.
            let empty = Arc::new(PoolSet::default());
            let old = task_shared.publish_pools(empty.clone());
            empty.retire_replaced(&old);
            let _ = done_tx.send(true);
        });
        tracing::info!(%local_addr, "pgcat listening");
        // PgCat's words, which scripts (and its test suite) wait for.
        tracing::info!("Waiting for clients");
        Ok(ProxyHandle {
            shared,
            local_addr,
            done: done_rx,
        })
    }
}

/// A running proxy.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    done: watch::Receiver<bool>,
}

impl ProxyHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Begins a graceful shutdown; a second call exits without waiting
    /// for clients.
    pub fn shutdown(&self) {
        self.shared.request_shutdown();
    }

    /// Reloads the config file.
    pub fn reload(&self) -> Result<ReloadRecord, ConfigError> {
        self.shared.reload("api")
    }

    /// Everything the admin console shows, at this moment.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot(true)
    }

    /// Where the Prometheus exporter listens, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        *self.shared.metrics_addr.lock()
    }

    /// Waits until the proxy has stopped.
    pub async fn wait(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Shuts down and waits.
    pub async fn stop(self) {
        self.shutdown();
        self.wait().await;
    }
}
