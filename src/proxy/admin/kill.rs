//! KILL db: drop every client and server connection of a database at
//! once. Its pools stay paused until RESUME, as in PgBouncer.

use super::reconnect::reconnect;
use super::{pool_filter, AdminError, Command, Context, Reply};

pub const COMMAND: Command = Command {
    words: &["KILL"],
    help: "db: drop all client and server connections of a database; RESUME undoes the pause",
    run,
};

fn run(ctx: &Context, args: &[String]) -> Result<Reply, AdminError> {
    let (Some(db), _) = pool_filter(args) else {
        return Err(AdminError::new("42601", "KILL needs a database name"));
    };
    let pools = ctx.shared.pools.load_full();
    let mut found = false;
    for p in pools.iter().filter(|p| *p.settings.db == *db) {
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
}
