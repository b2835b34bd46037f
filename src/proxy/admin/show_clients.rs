//! SHOW CLIENTS: one row per client connection, admin consoles included,
//! in SHOW SERVERS' columns.

use super::show_servers::{socket_columns, COLUMNS};
use super::{int, text, timestamp, AdminError, Command, Context, Kind, Reply, Table};

/// After the shared columns: what the client does (`idle`, `waiting`,
/// `active`, `idle in transaction`), for how long in milliseconds, and
/// the query it runs (cut to 256 bytes; NULL when it runs none).
pub const CLIENT_COLUMNS: &[(&str, Kind)] = &[
    ("activity", Kind::Text),
    ("activity_ms", Kind::Int),
    ("query", Kind::Text),
];

pub const COMMAND: Command = Command {
    words: &["SHOW", "CLIENTS"],
    help: "client connections, with keepalive settings and TCP health",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    if ctx.pgcat_dialect {
        return Ok(Reply::Rows(super::pgcat_dialect::clients(ctx)));
    }
    let mut columns = COLUMNS.to_vec();
    columns.extend_from_slice(CLIENT_COLUMNS);
    let mut t = Table::new(&columns);
    for c in ctx.snapshot().clients {
        let mut row = vec![
            text("C"),
            text(&c.user),
            text(&c.db),
            text("no"),
            text(c.state),
            text(&c.addr),
            int(c.port),
            text(&c.local_addr),
            int(c.local_port),
            timestamp(c.connect_time_unix),
            timestamp(c.request_time_unix),
            int(c.wait_us / 1_000_000),
            int(c.wait_us % 1_000_000),
            int(0),
            text(format!("{:x}", c.id)),
            (c.server_id > 0).then(|| format!("{:x}", c.server_id)),
            int(0),
            c.tls.clone(),
            text(&c.application_name),
            int(c.id),
        ];
        row.extend(socket_columns(c.socket.as_ref()));
        row.extend([text(c.activity), int(c.activity_ms), c.query.clone()]);
        t.row(row);
    }
    Ok(Reply::Rows(t))
}
