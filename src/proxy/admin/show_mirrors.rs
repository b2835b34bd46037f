//! SHOW MIRRORS (pgcat's own): one row per mirror of each pool's servers:
//! state, traffic, drops, queue depth and lag (milliseconds) over the
//! last minute.

use super::{int, text, AdminError, Command, Context, Kind, Reply, Table};

fn ms(us: Option<u32>) -> Option<String> {
    us.map(|us| format!("{:.3}", us as f64 / 1000.0))
}

pub const COMMAND: Command = Command {
    words: &["SHOW", "MIRRORS"],
    help: "mirrors: state, sent, dropped, errors, queue depth, lag",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    use Kind::*;
    let mut t = Table::new(&[
        ("database", Text),
        ("user", Text),
        ("shard", Int),
        ("server", Text),
        ("mirror", Text),
        ("state", Text),
        ("connections", Int),
        ("tasks", Int),
        ("sent", Int),
        ("dropped", Int),
        ("errors", Int),
        ("queue_depth", Int),
        ("lag_ms", Text),
        ("lag_max_ms", Text),
        ("lag_p99_ms", Text),
        ("last_error", Text),
    ]);
    for p in ctx.snapshot().pools {
        for m in &p.mirrors {
            t.row(vec![
                text(&p.db),
                text(&p.user),
                int(m.shard as u64),
                text(format!("{}:{}", m.server_host, m.server_port)),
                text(format!("{}:{}", m.host, m.port)),
                text(m.state),
                int(m.connections),
                int(m.tasks),
                int(m.sent_messages),
                int(m.dropped_transactions),
                int(m.errors),
                int(m.queue_depth),
                ms(m.lag_current_us),
                ms(m.lag_max_us),
                ms(m.lag_p99_us),
                m.last_error.clone(),
            ]);
        }
    }
    Ok(Reply::Rows(t))
}
