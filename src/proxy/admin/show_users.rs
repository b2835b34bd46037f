//! SHOW USERS: one row per (pool, user); pgcat's users belong to pools,
//! so the pool is an extra column.

use super::{int, text, AdminError, Command, Context, Kind, Reply, Table};

pub const COMMAND: Command = Command {
    words: &["SHOW", "USERS"],
    help: "users with their pool size, mode and connections",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    use Kind::*;
    let mut t = Table::new(&[
        ("name", Text),
        ("pool_size", Int),
        ("reserve_pool_size", Int),
        ("pool_mode", Text),
        ("max_user_connections", Int),
        ("current_connections", Int),
        ("max_user_client_connections", Int),
        ("current_client_connections", Int),
        ("database", Text),
    ]);
    for p in ctx.snapshot().pools {
        let servers: u32 = p.servers.iter().map(|s| s.connections).sum();
        t.row(vec![
            text(&p.user),
            int(p.pool_size),
            int(0),
            text(p.mode),
            int(0),
            int(servers),
            int(0),
            int(p.cl_active + p.cl_waiting + p.cl_idle),
            text(&p.db),
        ]);
    }
    Ok(Reply::Rows(t))
}
