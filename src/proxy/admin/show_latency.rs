//! SHOW LATENCY: the latency histograms of every pool, since its counters
//! started: request durations (`query`) and waits for a server
//! connection (`wait`), one row per non-empty bucket with its upper bound
//! in microseconds (`+Inf` for the last). `/metrics` exports the same
//! buckets; `pgcat top` reads them to draw percentiles of the last
//! seconds.

use super::{int, text, AdminError, Command, Context, Kind, Reply, Table};
use crate::proxy::stats::histogram::BOUNDS_US;

pub const COMMAND: Command = Command {
    words: &["SHOW", "LATENCY"],
    help: "query and wait latency histograms per pool (bucket upper bound in µs, count)",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    let mut t = Table::new(&[
        ("database", Kind::Text),
        ("user", Kind::Text),
        ("kind", Kind::Text),
        ("le_us", Kind::Text),
        ("count", Kind::Int),
    ]);
    for p in ctx.snapshot().pools {
        for (kind, counts) in [("query", &p.query_hist), ("wait", &p.wait_hist)] {
            for (i, &n) in counts.iter().enumerate().filter(|(_, &n)| n > 0) {
                let le = BOUNDS_US
                    .get(i)
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "+Inf".into());
                t.row(vec![
                    text(&p.db),
                    text(&p.user),
                    text(kind),
                    text(le),
                    int(n),
                ]);
            }
        }
    }
    Ok(Reply::Rows(t))
}
