//! SHOW VERSION.

use super::{text, AdminError, Command, Context, Kind, Reply, Table};

pub const COMMAND: Command = Command {
    words: &["SHOW", "VERSION"],
    help: "pgcat's version",
    run,
};

fn run(_ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    let mut t = Table::new(&[("version", Kind::Text)]);
    t.row(vec![text(concat!("pgcat ", env!("CARGO_PKG_VERSION")))]);
    Ok(Reply::Rows(t))
}
