//! SHUTDOWN: the same graceful shutdown as SIGINT/SIGTERM.

use super::{AdminError, Command, Context, Reply};

pub const COMMAND: Command = Command {
    words: &["SHUTDOWN"],
    help: "stop accepting clients, let transactions finish, exit",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    ctx.shared.request_shutdown();
    Ok(Reply::Done("SHUTDOWN".into()))
}
