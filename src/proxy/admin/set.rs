//! SET: accepted and ignored, because psql and drivers send it on
//! connect.

use super::{AdminError, Command, Context, Reply};

pub const COMMAND: Command = Command {
    words: &["SET"],
    help: "accepted and ignored",
    run,
};

fn run(_ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    Ok(Reply::Done("SET".into()))
}
