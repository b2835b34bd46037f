//! SHOW CLIENTS: one row per client connection, admin consoles included,
//! in SHOW SERVERS' columns.

use super::show_servers::{socket_columns, COLUMNS};
use super::{int, text, timestamp, AdminError, BoxFuture, Command, Context, Reply, Table};

pub struct ShowClients;

impl Command for ShowClients {
    fn words(&self) -> &'static [&'static str] {
        &["SHOW", "CLIENTS"]
    }

    fn help(&self) -> &'static str {
        "client connections, with keepalive settings and TCP health"
    }

    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        _args: &'a [String],
    ) -> BoxFuture<'a, Result<Reply, AdminError>> {
        Box::pin(async move {
            let mut t = Table::new(COLUMNS);
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
                    None,
                    text(&c.application_name),
                    int(c.id),
                ];
                row.extend(socket_columns(c.socket.as_ref()));
                t.row(row);
            }
            Ok(Reply::Rows(t))
        })
    }
}
