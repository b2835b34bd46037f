//! PAUSE [db[,user]]: new queries of the matching pools wait; the command
//! returns once no server connection of theirs is in use (or after
//! shutdown_timeout, with the count still busy).

use std::time::{Duration, Instant};

use super::{matching_pools, AdminError, Command, Context, Reply};

pub const COMMAND: Command = Command {
    words: &["PAUSE"],
    help: "[db[,user]]: hold new queries and wait for running ones to finish",
    run,
};

fn run(ctx: &Context, args: &[String]) -> Result<Reply, AdminError> {
    let pools = matching_pools(ctx, args)?;
    for p in &pools {
        p.state.set_paused(true);
    }
    let limit = Duration::from_millis(ctx.shared.config.load().general.shutdown_timeout);
    // Answered once the running queries are done.
    Ok(Reply::Wait(Box::pin(async move {
        let started = Instant::now();
        loop {
            let busy: i64 = pools
                .iter()
                .map(|p| {
                    p.state
                        .stats
                        .clients_active
                        .load(std::sync::atomic::Ordering::Relaxed)
                })
                .sum();
            if busy <= 0 {
                break;
            }
            if started.elapsed() > limit {
                return Err(AdminError::new(
                    "57014",
                    format!("paused, but {busy} client(s) still hold a server connection"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Reply::Done("PAUSE".into()))
    })))
}
