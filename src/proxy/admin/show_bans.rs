//! SHOW BANS: servers skipped after failures, and for how much longer.

use super::{int, text, AdminError, Command, Context, Kind, Reply, Table};

pub const COMMAND: Command = Command {
    words: &["SHOW", "BANS"],
    help: "banned servers",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
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
}
