//! RESUME [db[,user]]: release queries held by PAUSE or KILL.

use super::{pool_filter, AdminError, BoxFuture, Command, Context, Reply};

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
            let (db, user) = pool_filter(args);
            let mut n = 0;
            for p in ctx.shared.pools.load().iter() {
                if db.as_deref().is_none_or(|d| d == p.settings.db)
                    && user.as_deref().is_none_or(|u| u == p.settings.user)
                {
                    p.state.set_paused(false);
                    n += 1;
                }
            }
            if n == 0 {
                return Err(AdminError::new("08P01", "no such database or user"));
            }
            Ok(Reply::Done("RESUME".into()))
        })
    }
}
