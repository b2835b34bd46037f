//! SHOW STATS: totals and recent averages per (pool, user). Averages are
//! per second for counts and bytes, per transaction or query for times
//! (microseconds), over the last stats period. After PgBouncer's columns
//! (and `user`, `total_errors`): p50 and p99 of request durations and of
//! waits for a server, in microseconds, since the pool's counters started,
//! read from the latency histograms that `/metrics` exports (so they
//! agree with its `histogram_quantile` to within one bucket).

use super::{int, text, AdminError, Command, Context, Kind, Reply, Table};
use crate::proxy::stats::histogram::quantile;

/// A percentile of a latency histogram in microseconds; 0 with no sample,
/// as PgBouncer's averages are.
fn pct(counts: &[u64], q: f64) -> Option<String> {
    int(quantile(counts, q).unwrap_or(0))
}

pub const COMMAND: Command = Command {
    words: &["SHOW", "STATS"],
    help: "transactions, queries, bytes and times per pool",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    if ctx.pgcat_dialect {
        return Ok(Reply::Rows(super::pgcat_dialect::stats(ctx)));
    }
    use Kind::*;
    let mut t = Table::new(&[
        ("database", Text),
        ("total_xact_count", Int),
        ("total_query_count", Int),
        ("total_server_assignment_count", Int),
        ("total_received", Int),
        ("total_sent", Int),
        ("total_xact_time", Int),
        ("total_query_time", Int),
        ("total_wait_time", Int),
        ("total_client_parse_count", Int),
        ("total_server_parse_count", Int),
        ("total_bind_count", Int),
        ("total_client_login_count", Int),
        ("avg_xact_count", Int),
        ("avg_query_count", Int),
        ("avg_server_assignment_count", Int),
        ("avg_recv", Int),
        ("avg_sent", Int),
        ("avg_xact_time", Int),
        ("avg_query_time", Int),
        ("avg_wait_time", Int),
        ("avg_client_parse_count", Int),
        ("avg_server_parse_count", Int),
        ("avg_bind_count", Int),
        ("avg_client_login_count", Int),
        ("user", Text),
        ("total_errors", Int),
        ("query_p50", Int),
        ("query_p99", Int),
        ("wait_p50", Int),
        ("wait_p99", Int),
    ]);
    for p in ctx.snapshot().pools {
        let s = p.totals;
        let a = p.averages;
        let r = |f: f64| int(f.round() as i64);
        t.row(vec![
            text(&p.db),
            int(s.xact_count),
            int(s.query_count),
            int(s.server_assignment_count),
            int(s.received),
            int(s.sent),
            int(s.xact_time_us),
            int(s.query_time_us),
            int(s.wait_time_us),
            int(s.client_parse_count),
            int(s.server_parse_count),
            int(s.bind_count),
            int(s.client_login_count),
            r(a.xact_count),
            r(a.query_count),
            r(a.server_assignment_count),
            r(a.received),
            r(a.sent),
            r(a.xact_time_us),
            r(a.query_time_us),
            r(a.wait_time_us),
            r(a.client_parse_count),
            r(a.server_parse_count),
            r(a.bind_count),
            r(a.client_login_count),
            text(&p.user),
            int(s.errors),
            pct(&p.query_hist, 0.5),
            pct(&p.query_hist, 0.99),
            pct(&p.wait_hist, 0.5),
            pct(&p.wait_hist, 0.99),
        ]);
    }
    Ok(Reply::Rows(t))
}
