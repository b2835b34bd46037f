//! The accept loop and graceful drain: on shutdown the listener keeps
//! answering (new clients are told the pooler is shutting down), open
//! transactions finish, and the loop ends when no client is left or
//! `shutdown_timeout` has passed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use super::net::{Listening, SocketSettings};
use super::protocol::messages::{self, Severity};
use super::stats::KillSwitch;
use super::{session, Shared};

/// Past `max_client_conn`: one ErrorResponse, written without waiting (a
/// fresh socket's buffer takes it), and the connection is dropped. Costs
/// no task and no memory beyond this call.
fn refuse_at_once(stream: &TcpStream, limit: usize) {
    let mut out = BytesMut::with_capacity(96);
    messages::error_response(
        &mut out,
        Severity::Fatal,
        "53300",
        &format!("no more connections allowed (max_client_conn = {limit})"),
    );
    let _ = stream.try_write(&out);
    tracing::debug!(limit, "client refused: max_client_conn reached");
}

pub async fn run(
    listener: TcpListener,
    mut listening: Listening,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    let clients = TaskTracker::new();
    tokio::pin!(shutdown);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let config = shared.config.load();
                    let general = &config.general;
                    // TCP_NODELAY, keepalives and TCP_USER_TIMEOUT: the
                    // listener's, unless a reload just changed them.
                    if let Err(e) = listening.accepted(
                        &listener,
                        &stream,
                        SocketSettings::from_general(general),
                        general.listen_backlog,
                    ) {
                        tracing::debug!(%peer, error = %e, "could not set socket options");
                    }
                    let limit = general.max_client_conn;
                    drop(config);
                    if clients.len() >= limit {
                        refuse_at_once(&stream, limit);
                        continue;
                    }
                    // The switch aborts the task: KILL for its database,
                    // or the forced end of a shutdown. Nothing is polled
                    // for it while the session runs.
                    let switch = KillSwitch::default();
                    // One pointer for the task to keep: what a future
                    // captures stays in it for the task's whole life, and
                    // an idle client's task should be small.
                    let accepted = Box::new(session::Accepted {
                        stream,
                        peer,
                        shared: shared.clone(),
                        kill: switch.clone(),
                    });
                    let task = clients.spawn(session::handle(accepted));
                    switch.arm(task.abort_handle());
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = &mut shutdown, if !draining => {
                draining = true;
                let timeout = Duration::from_millis(shared.config.load().general.shutdown_timeout);
                deadline = Some(tokio::time::Instant::now() + timeout);
                tracing::info!(clients = clients.len(), "shutting down: waiting for clients to finish");
                shared.begin_shutdown();
                clients.close();
            },
            _ = clients.wait(), if draining => {
                tracing::info!("all clients gone");
                break;
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                tracing::warn!(clients = clients.len(), "shutdown_timeout reached; closing remaining clients");
                break;
            },
            _ = shared.killed(), if draining => {
                tracing::warn!(clients = clients.len(), "immediate shutdown requested");
                break;
            },
        }
    }
    drop(listener);
    shared.abort_all();
    clients.close();
    clients.wait().await;
    shared.admin_tasks.close();
    shared.admin_tasks.wait().await;
}
