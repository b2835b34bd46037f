//! SHUTDOWN: the same graceful shutdown as SIGINT/SIGTERM.

use super::{AdminError, BoxFuture, Command, Context, Reply};

pub struct Shutdown;

impl Command for Shutdown {
    fn words(&self) -> &'static [&'static str] {
        &["SHUTDOWN"]
    }

    fn help(&self) -> &'static str {
        "stop accepting clients, let transactions finish, exit"
    }

    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        _args: &'a [String],
    ) -> BoxFuture<'a, Result<Reply, AdminError>> {
        Box::pin(async move {
            ctx.shared.request_shutdown();
            Ok(Reply::Done("SHUTDOWN".into()))
        })
    }
}
