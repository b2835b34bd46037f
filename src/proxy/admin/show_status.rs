//! SHOW STATUS (pgcat's own): what the dashboard's header shows, as
//! key/value rows, so `pgcat top` can show it for a pgcat elsewhere.

use super::{text, AdminError, Command, Context, Kind, Reply, Table};

pub const COMMAND: Command = Command {
    words: &["SHOW", "STATUS"],
    help: "version, listen address, config file, start time, totals",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    let s = ctx.shared.snapshot(false);
    let mut t = Table::new(&[("key", Kind::Text), ("value", Kind::Text)]);
    let rows = [
        ("version", s.version.to_string()),
        ("listen", s.listen.clone()),
        ("config_file", s.config_path.clone().unwrap_or_default()),
        ("started_at", s.started_at_unix.to_string()),
        ("now", s.taken_at_unix.to_string()),
        ("reloads", s.reload_count.to_string()),
        ("reload_failures", s.reload_failures.to_string()),
    ];
    for (k, v) in rows {
        t.row(vec![text(k), text(v)]);
    }
    Ok(Reply::Rows(t))
}
