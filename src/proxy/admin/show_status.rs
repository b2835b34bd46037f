//! SHOW STATUS (pgcat's own): what the dashboard's header shows, as
//! key/value rows, so `pgcat top` can show it for a pgcat elsewhere.

use super::{text, AdminError, BoxFuture, Command, Context, Kind, Reply, Table};

pub struct ShowStatus;

impl Command for ShowStatus {
    fn words(&self) -> &'static [&'static str] {
        &["SHOW", "STATUS"]
    }

    fn help(&self) -> &'static str {
        "version, listen address, config file, start time, totals"
    }

    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        _args: &'a [String],
    ) -> BoxFuture<'a, Result<Reply, AdminError>> {
        Box::pin(async move {
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
        })
    }
}
