//! SHOW CERTIFICATES (pgcat's own): the certificate files in force, for
//! TLS towards clients and towards PostgreSQL, with their expiry. RELOAD
//! re-reads the files; a file that fails to load leaves the previous one
//! listed.

use super::{int, text, timestamp, AdminError, Command, Context, Kind, Reply, Table};

pub const COMMAND: Command = Command {
    words: &["SHOW", "CERTIFICATES"],
    help: "TLS certificate files in force: key, path, subject, expiry",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    let mut t = Table::new(&[
        ("key", Kind::Text),
        ("path", Kind::Text),
        ("subject", Kind::Text),
        ("not_after", Kind::Text),
        ("not_after_unix", Kind::Int),
        ("expires_in_days", Kind::Int),
    ]);
    let snapshot = ctx.snapshot();
    let now = snapshot.taken_at_unix as i64;
    for c in snapshot.certificates {
        t.row(vec![
            text(&c.key),
            text(&c.path),
            text(&c.subject),
            timestamp(c.not_after_unix.max(0) as u64),
            int(c.not_after_unix),
            int((c.not_after_unix - now).div_euclid(86_400)),
        ]);
    }
    Ok(Reply::Rows(t))
}
