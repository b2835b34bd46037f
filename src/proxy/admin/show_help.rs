//! SHOW HELP: every command with a line about it.

use super::{text, AdminError, Command, Context, Kind, Reply, Table, COMMANDS};

pub const COMMAND: Command = Command {
    words: &["SHOW", "HELP"],
    help: "this list",
    run,
};

fn run(_ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    let mut t = Table::new(&[("command", Kind::Text), ("description", Kind::Text)]);
    for c in COMMANDS {
        t.row(vec![text(c.words.join(" ")), text(c.help)]);
    }
    Ok(Reply::Rows(t))
}
