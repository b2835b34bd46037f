//! SHOW DATABASES: one row per (pool, user, server). `name` is the
//! database clients connect to; `database` is the one on the server.

use super::{int, text, AdminError, Command, Context, Kind, Reply, Table};

pub const COMMAND: Command = Command {
    words: &["SHOW", "DATABASES"],
    help: "servers of every pool with their limits and connections",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    use Kind::*;
    let mut t = Table::new(&[
        ("name", Text),
        ("host", Text),
        ("port", Int),
        ("database", Text),
        ("force_user", Text),
        ("pool_size", Int),
        ("min_pool_size", Int),
        ("reserve_pool_size", Int),
        ("server_lifetime", Int),
        ("pool_mode", Text),
        ("load_balance_hosts", Text),
        ("max_connections", Int),
        ("current_connections", Int),
        ("max_client_connections", Int),
        ("current_client_connections", Int),
        ("paused", Int),
        ("disabled", Int),
        ("user", Text),
        ("shard", Int),
        ("role", Text),
        ("config_hash", Text),
        ("replica_lag_ms", Int),
    ]);
    for p in ctx.snapshot().pools {
        let clients = p.cl_active + p.cl_waiting + p.cl_idle;
        for s in &p.servers {
            t.row(vec![
                text(&p.db),
                text(&s.host),
                int(s.port),
                text(&s.database),
                text(&p.server_user),
                int(p.pool_size),
                int(p.min_pool_size),
                int(0),
                int(p.server_lifetime_ms / 1000),
                text(p.mode),
                None,
                int(p.pool_size),
                int(s.connections),
                int(0),
                int(clients),
                int(p.paused as u8),
                int(s.banned as u8),
                text(&p.user),
                int(s.shard as u64),
                text(s.role),
                text(format!("{:016x}", p.config_hash)),
                s.lag_ms.and_then(int),
            ]);
        }
    }
    Ok(Reply::Rows(t))
}
