//! RECONNECT [db]: rebuild the pools of a database (all when omitted):
//! idle server connections close now, busy ones when their transaction
//! ends, and new ones are opened as needed.

use std::collections::HashSet;

use super::{pool_filter, AdminError, Command, Context, Reply};

/// Rebuilds the given databases' pools with the running config.
pub fn reconnect(ctx: &Context, db: Option<&str>, trigger: &str) -> Result<(), AdminError> {
    let config = (*ctx.shared.config.load_full()).clone();
    let force: HashSet<String> = match db {
        Some(d) => {
            if !config.pools.contains_key(d) {
                return Err(AdminError::new("08P01", format!("no such database: {d}")));
            }
            [d.to_string()].into()
        }
        None => config.pools.keys().cloned().collect(),
    };
    crate::proxy::reload::apply(&ctx.shared, config, trigger, &force);
    Ok(())
}

pub const COMMAND: Command = Command {
    words: &["RECONNECT"],
    help: "[db]: replace the server connections of a database's pools",
    run,
};

fn run(ctx: &Context, args: &[String]) -> Result<Reply, AdminError> {
    let (db, _) = pool_filter(args);
    reconnect(ctx, db.as_deref(), "RECONNECT")?;
    Ok(Reply::Done("RECONNECT".into()))
}
