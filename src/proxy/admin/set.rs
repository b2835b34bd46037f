//! SET: accepted and ignored, because psql and drivers send it on
//! connect.

use super::{AdminError, BoxFuture, Command, Context, Reply};

pub struct Set;

impl Command for Set {
    fn words(&self) -> &'static [&'static str] {
        &["SET"]
    }

    fn help(&self) -> &'static str {
        "accepted and ignored"
    }

    fn run<'a>(
        &'a self,
        _ctx: &'a Context,
        _args: &'a [String],
    ) -> BoxFuture<'a, Result<Reply, AdminError>> {
        Box::pin(async move { Ok(Reply::Done("SET".into())) })
    }
}
