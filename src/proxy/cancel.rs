//! Query cancellation. Each client gets its own backend pid and secret;
//! while it holds a server connection, its entry points at that server's
//! real key, so a CancelRequest reaches the query the client is running.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::net::{self, SocketSettings};
use super::protocol::messages;

/// The server key a cancel for one client goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKey {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
}

/// One client's cancel slot.
#[derive(Debug, Default)]
pub struct CancelTarget {
    server: Mutex<Option<ServerKey>>,
}

impl CancelTarget {
    pub fn set(&self, key: Option<ServerKey>) {
        *self.server.lock() = key;
    }
}

#[derive(Debug, Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<(i32, i32), Arc<CancelTarget>>>,
}

/// Removes the client's key from the registry when the client goes.
pub struct Registration<'a> {
    registry: &'a CancelRegistry,
    pub pid: i32,
    pub secret: i32,
    pub target: Arc<CancelTarget>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry
            .clients
            .lock()
            .remove(&(self.pid, self.secret));
    }
}

impl CancelRegistry {
    /// Issues a fresh (pid, secret) pair for a client.
    pub fn register(&self) -> Registration<'_> {
        let mut rng = rand::thread_rng();
        let target = Arc::new(CancelTarget::default());
        let mut clients = self.clients.lock();
        loop {
            let key = (rng.gen_range(1..i32::MAX), rng.gen::<i32>());
            if let std::collections::hash_map::Entry::Vacant(e) = clients.entry(key) {
                e.insert(target.clone());
                return Registration {
                    registry: self,
                    pid: key.0,
                    secret: key.1,
                    target,
                };
            }
        }
    }

    /// Forwards a CancelRequest to the server the client is using, if any.
    /// Unknown keys are ignored, as PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32, socket: &SocketSettings) {
        let key = {
            let clients = self.clients.lock();
            clients
                .get(&(pid, secret))
                .and_then(|t| t.server.lock().clone())
        };
        let Some(key) = key else {
            tracing::debug!(pid, "cancel request for unknown or idle client");
            return;
        };
        let result = async {
            let mut stream = net::connect(&key.host, key.port, socket).await?;
            let mut out = BytesMut::with_capacity(16);
            messages::cancel_request(&mut out, key.pid, key.secret);
            stream.write_all(&out).await?;
            // PostgreSQL closes the connection once it has handled it.
            let mut sink = [0u8; 16];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut sink))
                .await;
            Ok::<_, std::io::Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(server = %format!("{}:{}", key.host, key.port), error = %e, "could not forward cancel request");
        }
    }
}
