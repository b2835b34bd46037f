//! RECONNECT [db]: rebuild the pools of a database (all when omitted):
//! idle server connections close now, busy ones when their transaction
//! ends, and new ones are opened as needed.

use std::collections::HashSet;

use super::{pool_filter, AdminError, BoxFuture, Command, Context, Reply};

pub struct Reconnect;

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

impl Command for Reconnect {
    fn words(&self) -> &'static [&'static str] {
        &["RECONNECT"]
    }

    fn help(&self) -> &'static str {
        "[db]: replace the server connections of a database's pools"
    }

    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        args: &'a [String],
    ) -> BoxFuture<'a, Result<Reply, AdminError>> {
        Box::pin(async move {
            let (db, _) = pool_filter(args);
            reconnect(ctx, db.as_deref(), "RECONNECT")?;
            Ok(Reply::Done("RECONNECT".into()))
        })
    }
}
