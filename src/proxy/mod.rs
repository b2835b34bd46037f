//! The engine. [`Proxy::start`] binds the listener, builds the pools and
//! serves until the shutdown future it was given resolves; the returned
//! [`ProxyHandle`] is how the CLI, the tests and (later) the dashboard
//! observe and steer it.

pub mod auth;
pub mod buffers;
pub mod cancel;
pub mod client;
pub mod config;
pub mod listener;
pub mod net;
pub mod pool;
pub mod protocol;
pub mod server;
pub mod stats;
mod wire;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use self::cancel::CancelRegistry;
use self::config::Config;
use self::pool::PoolSet;

/// State every session and control path shares.
pub struct Shared {
    /// The running config; replaced whole on reload.
    pub config: ArcSwap<Config>,
    /// The running pools; replaced whole on reload, keeping the pools
    /// whose config hash did not change.
    pub pools: ArcSwap<PoolSet>,
    pub cancel: CancelRegistry,
    pub started_at: SystemTime,
    /// True once a graceful shutdown began.
    shutdown: watch::Sender<bool>,
    /// Signalled when a second shutdown request asks for an immediate exit.
    kill: Notify,
}

impl Shared {
    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    async fn killed(&self) {
        self.kill.notified().await
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
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        let pools = PoolSet::build(&config, None);
        let (shutdown_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            pools: ArcSwap::from_pointee(pools),
            cancel: CancelRegistry::default(),
            started_at: SystemTime::now(),
            shutdown: shutdown_tx,
            kill: Notify::new(),
        });
        let (done_tx, done_rx) = watch::channel(false);
        let task_shared = shared.clone();
        let requested = Arc::new(Notify::new());
        let requested_by_handle = requested.clone();
        tokio::spawn(async move {
            let stop = async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = requested.notified() => {}
                }
            };
            listener::run(listener, task_shared.clone(), stop).await;
            // Close every pooled server connection now rather than when
            // the last reference goes.
            task_shared.pools.store(Arc::new(PoolSet::default()));
            let _ = done_tx.send(true);
        });
        tracing::info!(%local_addr, "pgcat listening");
        Ok(ProxyHandle {
            shared,
            local_addr,
            done: done_rx,
            requested: requested_by_handle,
        })
    }
}

/// A running proxy.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    done: watch::Receiver<bool>,
    requested: Arc<Notify>,
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
        if self.shared.is_shutting_down() {
            self.shared.kill.notify_one();
        } else {
            self.requested.notify_one();
        }
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
