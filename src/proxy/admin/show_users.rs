//! SHOW USERS: one row per (pool, user); pgcat's users belong to pools,
//! so the pool is an extra column.

use super::{int, text, AdminError, BoxFuture, Command, Context, Kind, Reply, Table};

pub struct ShowUsers;

impl Command for ShowUsers {
    fn words(&self) -> &'static [&'static str] {
        &["SHOW", "USERS"]
    }

    fn help(&self) -> &'static str {
        "users with their pool size, mode and connections"
    }

    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        _args: &'a [String],
    ) -> BoxFuture<'a, Result<Reply, AdminError>> {
        Box::pin(async move {
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
        })
    }
}
