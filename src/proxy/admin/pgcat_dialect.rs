//! PgCat's admin dialect, spoken on database `pgcat` (PgBouncer's stays on
//! `pgbouncer`): SHOW POOLS, SHOW CLIENTS and SHOW STATS with PgCat's
//! columns and units, from the same snapshot as everything else.
//!
//! Where the two disagree: PgCat does not tell "used" server connections
//! from idle ones (`sv_used` is 0 and `sv_idle` counts both), reports
//! query times in milliseconds and wait times in microseconds, and keeps
//! per-client transaction and query counts and the longest completed wait.

use super::{int, text, Context, Kind, Table};

/// `{:#010X}` as PgCat prints its ids: `0x` then eight upper-case hex digits.
fn pgcat_id(id: u64) -> String {
    format!("0x{:08X}", id as u32)
}

pub fn pools(ctx: &Context) -> Table {
    use Kind::*;
    let mut t = Table::new(&[
        ("database", Text),
        ("user", Text),
        ("pool_mode", Text),
        ("cl_idle", Int),
        ("cl_active", Int),
        ("cl_waiting", Int),
        ("cl_cancel_req", Int),
        ("sv_active", Int),
        ("sv_idle", Int),
        ("sv_used", Int),
        ("sv_tested", Int),
        ("sv_login", Int),
        ("maxwait", Int),
        ("maxwait_us", Int),
    ]);
    for p in ctx.snapshot().pools {
        t.row(vec![
            text(&p.db),
            text(&p.user),
            text(p.mode),
            int(p.cl_idle),
            int(p.cl_active),
            int(p.cl_waiting),
            int(0),
            int(p.sv_active),
            int(p.sv_idle + p.sv_used),
            int(0),
            int(0),
            int(p.sv_login),
            int(p.maxwait_us / 1_000_000),
            int(p.maxwait_us % 1_000_000),
        ]);
    }
    t
}

pub fn clients(ctx: &Context) -> Table {
    use Kind::*;
    let mut t = Table::new(&[
        ("client_id", Text),
        ("database", Text),
        ("user", Text),
        ("application_name", Text),
        ("state", Text),
        ("transaction_count", Int),
        ("query_count", Int),
        ("error_count", Int),
        ("age_seconds", Int),
        ("maxwait", Int),
        ("maxwait_us", Int),
    ]);
    let snapshot = ctx.snapshot();
    let now = snapshot.taken_at_unix;
    for c in snapshot.clients {
        t.row(vec![
            text(pgcat_id(c.id)),
            text(&c.db),
            text(&c.user),
            text(if c.application_name.is_empty() {
                "pgcat"
            } else {
                c.application_name.as_str()
            }),
            text(c.state),
            int(c.xact_count),
            int(c.query_count),
            int(0),
            int(now.saturating_sub(c.connect_time_unix)),
            int(c.max_wait_us / 1_000_000),
            int(c.max_wait_us % 1_000_000),
        ]);
    }
    t
}

pub fn stats(ctx: &Context) -> Table {
    use Kind::*;
    let mut t = Table::new(&[
        ("instance", Text),
        ("database", Text),
        ("user", Text),
        ("total_xact_count", Int),
        ("total_query_count", Int),
        ("total_received", Int),
        ("total_sent", Int),
        ("total_xact_time", Int),
        ("total_query_time", Int),
        ("total_wait_time", Int),
        ("total_errors", Int),
        ("avg_xact_count", Int),
        ("avg_query_count", Int),
        ("avg_recv", Int),
        ("avg_sent", Int),
        ("avg_errors", Int),
        ("avg_xact_time", Int),
        ("avg_query_time", Int),
        ("avg_wait_time", Int),
    ]);
    // One row per (pool, user): pgcat counts per pool, not per server;
    // `instance` names the pool's first server as PgCat names addresses.
    for p in ctx.snapshot().pools {
        let (tot, avg) = (&p.totals, &p.averages);
        let instance = format!(
            "{}_shard_0_{}",
            p.db,
            p.servers
                .first()
                .map(|s| s.configured_role)
                .unwrap_or("primary")
        );
        t.row(vec![
            text(instance),
            text(&p.db),
            text(&p.user),
            int(tot.xact_count),
            int(tot.query_count),
            int(tot.received),
            int(tot.sent),
            int(tot.xact_time_us / 1000),
            int(tot.query_time_us / 1000),
            int(tot.wait_time_us),
            int(tot.errors),
            int(avg.xact_count as u64),
            int(avg.query_count as u64),
            int(avg.received as u64),
            int(avg.sent as u64),
            int(0),
            int((avg.xact_time_us / 1000.0) as u64),
            int((avg.query_time_us / 1000.0).round() as u64),
            int(avg.wait_time_us as u64),
        ]);
    }
    t
}
