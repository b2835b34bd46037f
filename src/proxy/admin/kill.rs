//! KILL db: drop every client and server connection of a database at
//! once. Its pools stay paused until RESUME, as in PgBouncer.

use super::reconnect::reconnect;
use super::{pool_filter, AdminError, BoxFuture, Command, Context, Reply};

pub struct Kill;

impl Command for Kill {
    fn words(&self) -> &'static [&'static str] {
        &["KILL"]
    }

    fn help(&self) -> &'static str {
        "db: drop all client and server connections of a database; RESUME undoes the pause"
    }

    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        args: &'a [String],
    ) -> BoxFuture<'a, Result<Reply, AdminError>> {
        Box::pin(async move {
            let (Some(db), _) = pool_filter(args) else {
                return Err(AdminError::new("42601", "KILL needs a database name"));
            };
            let pools = ctx.shared.pools.load_full();
            let mut found = false;
            for p in pools.iter().filter(|p| p.settings.db == db) {
                p.state.set_paused(true);
                found = true;
            }
            if !found {
                return Err(AdminError::new("08P01", format!("no such database: {db}")));
            }
            let killed = ctx.shared.registry.kill_clients(Some(&db));
            tracing::warn!(db, killed, "KILL: clients dropped");
            reconnect(ctx, Some(&db), "KILL")?;
            Ok(Reply::Done("KILL".into()))
        })
    }
}
