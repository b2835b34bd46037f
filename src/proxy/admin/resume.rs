//! RESUME [db[,user]]: release queries held by PAUSE or KILL.

use super::{matching_pools, AdminError, Command, Context, Reply};

pub const COMMAND: Command = Command {
    words: &["RESUME"],
    help: "[db[,user]]: let held queries run",
    run,
};

fn run(ctx: &Context, args: &[String]) -> Result<Reply, AdminError> {
    for p in matching_pools(ctx, args)? {
        p.state.set_paused(false);
    }
    Ok(Reply::Done("RESUME".into()))
}
