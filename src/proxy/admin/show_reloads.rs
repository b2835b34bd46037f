//! SHOW RELOADS (pgcat's own): the recent reloads, newest last: when,
//! what triggered it, whether it applied, the error if not, and which
//! pools it rebuilt.

use super::{text, timestamp, AdminError, Command, Context, Kind, Reply, Table};

pub const COMMAND: Command = Command {
    words: &["SHOW", "RELOADS"],
    help: "recent reloads: time, trigger, result, pools rebuilt",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    let mut t = Table::new(&[
        ("time", Kind::Text),
        ("trigger", Kind::Text),
        ("result", Kind::Text),
        ("error", Kind::Text),
        ("changed", Kind::Text),
    ]);
    let (records, _, _) = ctx.shared.reload_history();
    for r in records {
        t.row(vec![
            timestamp(r.at_unix),
            text(&r.trigger),
            text(if r.ok { "ok" } else { "failed" }),
            r.error.clone(),
            text(r.changed.join(",")),
        ]);
    }
    Ok(Reply::Rows(t))
}
