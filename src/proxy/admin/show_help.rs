//! SHOW HELP: every command with a line about it.

use super::{commands, text, AdminError, BoxFuture, Command, Context, Kind, Reply, Table};

pub struct ShowHelp;

impl Command for ShowHelp {
    fn words(&self) -> &'static [&'static str] {
        &["SHOW", "HELP"]
    }

    fn help(&self) -> &'static str {
        "this list"
    }

    fn run<'a>(
        &'a self,
        _ctx: &'a Context,
        _args: &'a [String],
    ) -> BoxFuture<'a, Result<Reply, AdminError>> {
        Box::pin(async move {
            let mut t = Table::new(&[("command", Kind::Text), ("description", Kind::Text)]);
            for c in commands() {
                t.row(vec![text(c.words().join(" ")), text(c.help())]);
            }
            Ok(Reply::Rows(t))
        })
    }
}
