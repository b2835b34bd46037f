//! SHOW SERVERS: one row per server connection. PgBouncer's columns, then
//! the pool's user and the socket's keepalive settings and health as the
//! kernel reports them.

use super::{int, text, timestamp, AdminError, Command, Context, Kind, Reply, Table};
use crate::proxy::net::SocketInfo;

/// Columns shared by SHOW SERVERS and SHOW CLIENTS.
pub const COLUMNS: &[(&str, Kind)] = &[
    ("type", Kind::Text),
    ("user", Kind::Text),
    ("database", Kind::Text),
    ("replication", Kind::Text),
    ("state", Kind::Text),
    ("addr", Kind::Text),
    ("port", Kind::Int),
    ("local_addr", Kind::Text),
    ("local_port", Kind::Int),
    ("connect_time", Kind::Text),
    ("request_time", Kind::Text),
    ("wait", Kind::Int),
    ("wait_us", Kind::Int),
    ("close_needed", Kind::Int),
    ("ptr", Kind::Text),
    ("link", Kind::Text),
    ("remote_pid", Kind::Int),
    ("tls", Kind::Text),
    ("application_name", Kind::Text),
    ("id", Kind::Int),
    ("keepalive", Kind::Int),
    ("keepalive_idle", Kind::Int),
    ("keepalive_interval", Kind::Int),
    ("keepalive_count", Kind::Int),
    ("user_timeout_ms", Kind::Int),
    ("rtt_us", Kind::Int),
    ("unacked", Kind::Int),
    ("probes", Kind::Int),
    ("retransmits", Kind::Int),
    ("last_data_recv_ms", Kind::Int),
];

/// Columns SHOW SERVERS has after the shared ones.
pub const SERVER_COLUMNS: &[(&str, Kind)] = &[("role", Kind::Text), ("replica_lag_ms", Kind::Int)];

/// The keepalive columns of a row.
pub fn socket_columns(s: Option<&SocketInfo>) -> Vec<Option<String>> {
    match s {
        None => vec![None; 10],
        Some(s) => vec![
            int(s.keepalive as u8),
            int(s.keepalive_idle_s),
            int(s.keepalive_interval_s),
            int(s.keepalive_count),
            int(s.user_timeout_ms),
            int(s.rtt_us),
            int(s.unacked),
            int(s.probes),
            int(s.retransmits),
            int(s.last_data_recv_ms),
        ],
    }
}

pub const COMMAND: Command = Command {
    words: &["SHOW", "SERVERS"],
    help: "server connections, with keepalive settings and TCP health",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    let columns: Vec<(&str, Kind)> = COLUMNS.iter().chain(SERVER_COLUMNS).copied().collect();
    let mut t = Table::new(&columns);
    for s in ctx.snapshot().servers {
        let mut row = vec![
            text("S"),
            text(&s.user),
            text(&s.db),
            text("no"),
            text(s.state),
            text(&s.host),
            int(s.port),
            text(&s.local_addr),
            int(s.local_port),
            timestamp(s.connect_time_unix),
            timestamp(s.request_time_unix),
            int(0),
            int(0),
            int(0),
            text(format!("{:x}", s.id)),
            (s.client_id > 0).then(|| format!("{:x}", s.client_id)),
            int(s.remote_pid),
            s.tls.clone(),
            text(&s.application_name),
            int(s.id),
        ];
        row.extend(socket_columns(s.socket.as_ref()));
        row.push(text(s.role));
        row.push(s.lag_ms.and_then(int));
        t.row(row);
    }
    Ok(Reply::Rows(t))
}
