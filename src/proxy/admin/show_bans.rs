//! SHOW BANS: servers skipped after failures, and for how much longer.

use super::{int, text, AdminError, BoxFuture, Command, Context, Kind, Reply, Table};

pub struct ShowBans;

impl Command for ShowBans {
    fn words(&self) -> &'static [&'static str] {
        &["SHOW", "BANS"]
    }

    fn help(&self) -> &'static str {
        "banned servers"
    }

    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        _args: &'a [String],
    ) -> BoxFuture<'a, Result<Reply, AdminError>> {
        Box::pin(async move {
            use Kind::*;
            let mut t = Table::new(&[
                ("database", Text),
                ("user", Text),
                ("host", Text),
                ("port", Int),
                ("role", Text),
                ("shard", Int),
                ("remaining_s", Int),
                ("last_error", Text),
            ]);
            for p in ctx.snapshot().pools {
                for s in p.servers.iter().filter(|s| s.banned) {
                    t.row(vec![
                        text(&p.db),
                        text(&p.user),
                        text(&s.host),
                        int(s.port),
                        text(s.role),
                        int(s.shard as u64),
                        int(s.ban_remaining_s),
                        s.last_error.clone(),
                    ]);
                }
            }
            Ok(Reply::Rows(t))
        })
    }
}
