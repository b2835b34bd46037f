//! SHOW LISTS: PgBouncer's internal list counts, as far as pgcat has
//! them (it keeps no free lists and no DNS cache, so those are 0).

use std::collections::HashSet;

use super::{int, text, AdminError, Command, Context, Kind, Reply, Table};

pub const COMMAND: Command = Command {
    words: &["SHOW", "LISTS"],
    help: "counts of databases, users, pools, clients and servers",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    let snap = ctx.snapshot();
    let databases: HashSet<&str> = snap.pools.iter().map(|p| p.db.as_str()).collect();
    let users: HashSet<&str> = snap.pools.iter().map(|p| p.user.as_str()).collect();
    let mut t = Table::new(&[("list", Kind::Text), ("items", Kind::Int)]);
    for (name, n) in [
        ("databases", databases.len()),
        ("users", users.len()),
        ("pools", snap.pools.len()),
        ("free_clients", 0),
        ("used_clients", snap.clients.len()),
        ("login_clients", 0),
        ("free_servers", 0),
        ("used_servers", snap.servers.len()),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        t.row(vec![text(name), int(n as u64)]);
    }
    Ok(Reply::Rows(t))
}
