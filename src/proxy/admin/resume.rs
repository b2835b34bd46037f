//! RESUME [db[,user]]: release queries held by PAUSE or KILL.

use super::{matching_pools, AdminError, BoxFuture, Command, Context, Reply};

pub struct Resume;

impl Command for Resume {
    fn words(&self) -> &'static [&'static str] {
        &["RESUME"]
    }

    fn help(&self) -> &'static str {
        "[db[,user]]: let held queries run"
    }

    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        args: &'a [String],
    ) -> BoxFuture<'a, Result<Reply, AdminError>> {
        Box::pin(async move {
            for p in matching_pools(ctx, args)? {
                p.state.set_paused(false);
            }
            Ok(Reply::Done("RESUME".into()))
        })
    }
}
