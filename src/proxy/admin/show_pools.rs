//! SHOW POOLS: one row per (pool, user), PgBouncer's columns first, then
//! pgcat's: the pool's config hash, when it was last rebuilt, its size
//! and whether it is paused.

use super::{int, text, timestamp, AdminError, Command, Context, Kind, Reply, Table};

pub const COMMAND: Command = Command {
    words: &["SHOW", "POOLS"],
    help: "clients and servers per pool, with each pool's config hash",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    if ctx.pgcat_dialect {
        return Ok(Reply::Rows(super::pgcat_dialect::pools(ctx)));
    }
    use Kind::*;
    let mut t = Table::new(&[
        ("database", Text),
        ("user", Text),
        ("cl_active", Int),
        ("cl_waiting", Int),
        ("cl_active_cancel_req", Int),
        ("cl_waiting_cancel_req", Int),
        ("sv_active", Int),
        ("sv_active_cancel", Int),
        ("sv_being_canceled", Int),
        ("sv_idle", Int),
        ("sv_used", Int),
        ("sv_tested", Int),
        ("sv_login", Int),
        ("maxwait", Int),
        ("maxwait_us", Int),
        ("pool_mode", Text),
        ("load_balance_hosts", Text),
        ("config_hash", Text),
        ("rebuilt_at", Text),
        ("pool_size", Int),
        ("paused", Int),
    ]);
    for p in ctx.snapshot().pools {
        t.row(vec![
            text(&p.db),
            text(&p.user),
            int(p.cl_active),
            int(p.cl_waiting),
            int(0),
            int(0),
            int(p.sv_active),
            int(0),
            int(0),
            int(p.sv_idle),
            int(p.sv_used),
            int(0),
            int(p.sv_login),
            int(p.maxwait_us / 1_000_000),
            int(p.maxwait_us % 1_000_000),
            text(p.mode),
            None,
            text(format!("{:016x}", p.config_hash)),
            timestamp(p.built_at_unix),
            int(p.pool_size),
            int(p.paused as u8),
        ]);
    }
    Ok(Reply::Rows(t))
}
