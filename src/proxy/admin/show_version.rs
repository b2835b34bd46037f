//! SHOW VERSION.

use super::{text, AdminError, BoxFuture, Command, Context, Kind, Reply, Table};

pub struct ShowVersion;

impl Command for ShowVersion {
    fn words(&self) -> &'static [&'static str] {
        &["SHOW", "VERSION"]
    }

    fn help(&self) -> &'static str {
        "pgcat's version"
    }

    fn run<'a>(
        &'a self,
        _ctx: &'a Context,
        _args: &'a [String],
    ) -> BoxFuture<'a, Result<Reply, AdminError>> {
        Box::pin(async move {
            let mut t = Table::new(&[("version", Kind::Text)]);
            t.row(vec![text(concat!("pgcat ", env!("CARGO_PKG_VERSION")))]);
            Ok(Reply::Rows(t))
        })
    }
}
