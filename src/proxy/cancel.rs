//! Query cancellation. Each client gets its own backend pid and secret;
//! while it holds a server connection, its registry entry names that
//! connection, whose real key the CancelRequest is forwarded with.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::net::{self, SocketSettings};
use super::protocol::messages;
use super::stats::{ClientInfo, Registry};

#[derive(Debug, Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<(i32, i32), Arc<ClientInfo>>>,
}

/// Removes the client's key from the registry when the client goes.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub secret: i32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .clients
            .lock()
            .remove(&(self.pid, self.secret));
    }
}

impl CancelRegistry {
    /// Issues a fresh (pid, secret) pair for a client.
    pub fn register(self: &Arc<Self>, client: Arc<ClientInfo>) -> Registration {
        let mut rng = rand::thread_rng();
        let mut clients = self.clients.lock();
        loop {
            let key = (rng.gen_range(1..i32::MAX), rng.gen::<i32>());
            if let std::collections::hash_map::Entry::Vacant(e) = clients.entry(key) {
                e.insert(client);
                return Registration {
                    registry: self.clone(),
                    pid: key.0,
                    secret: key.1,
                };
            }
        }
    }

    /// Forwards a CancelRequest to the server the client is using, if any.
    /// Unknown keys are ignored, as PostgreSQL does.
    pub async fn cancel(
        &self,
        pid: i32,
        secret: i32,
        registry: &Registry,
        socket: &SocketSettings,
    ) {
        let target = {
            let clients = self.clients.lock();
            clients.get(&(pid, secret)).and_then(|c| {
                let id = c.server();
                (id != 0)
                    .then(|| registry.server(id))
                    .flatten()
                    .map(|s| (c.clone(), s))
            })
        };
        let Some((client, server)) = target else {
            tracing::debug!(pid, "cancel request for unknown or idle client");
            return;
        };
        // Counted on the server connection so that it is not handed to
        // another client before this cancel has reached PostgreSQL; given
        // up when the client has let go of it meanwhile.
        if !server.begin_cancel(&client) {
            tracing::debug!(pid, "cancel request after the query ended");
            return;
        }
        struct Done<'a>(&'a super::stats::ServerInfo);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.end_cancel();
            }
        }
        let _done = Done(&server);
        let (host, port) = (server.host.clone(), server.port);
        let (server_pid, server_secret) = (
            server.remote_pid.load(Ordering::Relaxed),
            server.secret_key.load(Ordering::Relaxed),
        );
        let result = async {
            let mut stream = net::connect(&host, port, socket).await?;
            let mut out = BytesMut::with_capacity(16);
            messages::cancel_request(&mut out, server_pid, server_secret);
            stream.write_all(&out).await?;
            // PostgreSQL closes the connection once it has handled it.
            let mut sink = [0u8; 16];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut sink))
                .await;
            Ok::<_, std::io::Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(server = %host, port, error = %e, "could not forward cancel request");
        }
    }
}
