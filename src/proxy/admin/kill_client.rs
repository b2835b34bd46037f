//! KILL_CLIENT id: end one client's session at once (PgBouncer 1.21's
//! command), as KILL does for a whole database. The id is SHOW CLIENTS'
//! `id` column. The dashboard's `k` goes through here.

use super::{AdminError, Command, Context, Reply};

pub const COMMAND: Command = Command {
    words: &["KILL_CLIENT"],
    help: "id: end one client's session (the id column of SHOW CLIENTS)",
    run,
};

fn run(ctx: &Context, args: &[String]) -> Result<Reply, AdminError> {
    let Some(id) = args.first() else {
        return Err(AdminError::new("42601", "KILL_CLIENT needs a client id"));
    };
    let id: u64 = id
        .trim_end_matches(';')
        .parse()
        .map_err(|_| AdminError::new("42601", format!("invalid client id: {id}")))?;
    if !kill(ctx, id) {
        return Err(AdminError::new("08P01", format!("no such client: {id}")));
    }
    Ok(Reply::Done("KILL_CLIENT".into()))
}

/// Ends client `id`; false when there is no such client. Shared by the
/// console and the dashboard in this process.
pub fn kill(ctx: &Context, id: u64) -> bool {
    let done = ctx.shared.registry.kill_client(id);
    if done {
        tracing::warn!(client = id, "KILL_CLIENT: client dropped");
    }
    done
}
