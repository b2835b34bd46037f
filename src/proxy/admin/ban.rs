//! PgCat's BAN host seconds and UNBAN host: take every server whose
//! configured host is `host` out of rotation for that long (the primary
//! too: an operator asked), or put it back. Each answers the servers it
//! changed: `db`, `user`, `role`, `host`; a server already banned is not
//! banned again, so a second BAN answers nothing.

use std::time::Duration;

use super::{text, AdminError, Command, Context, Kind, Reply, Table};

pub const BAN: Command = Command {
    words: &["BAN"],
    help: "host seconds: ban every server on that host for that long",
    run: ban,
};

pub const UNBAN: Command = Command {
    words: &["UNBAN"],
    help: "host: lift the bans of every server on that host",
    run: unban,
};

fn table() -> Table {
    Table::new(&[
        ("db", Kind::Text),
        ("user", Kind::Text),
        ("role", Kind::Text),
        ("host", Kind::Text),
    ])
}

fn ban(ctx: &Context, args: &[String]) -> Result<Reply, AdminError> {
    let (Some(host), Some(seconds)) = (args.first(), args.get(1)) else {
        return Err(AdminError::new(
            "58000",
            "usage: BAN hostname duration_seconds",
        ));
    };
    let seconds: i64 = seconds
        .parse()
        .map_err(|_| AdminError::new("58000", "duration_seconds must be an integer"))?;
    if seconds <= 0 {
        return Err(AdminError::new("58000", "duration_seconds must be >= 0"));
    }
    let mut t = table();
    for p in ctx.shared.pools.load().iter() {
        for s in p.shards.iter().flatten() {
            if &s.address.host == host && !s.is_banned() {
                s.ban_for(Duration::from_secs(seconds as u64));
                t.row(vec![
                    text(&p.settings.db),
                    text(&p.settings.user),
                    text(s.role().as_str()),
                    text(host),
                ]);
            }
        }
    }
    Ok(Reply::Rows(t.tagged("BAN")))
}

fn unban(ctx: &Context, args: &[String]) -> Result<Reply, AdminError> {
    let Some(host) = args.first() else {
        return Err(AdminError::new(
            "58000",
            "UNBAN command requires a hostname to unban",
        ));
    };
    let mut t = table();
    for p in ctx.shared.pools.load().iter() {
        for s in p.shards.iter().flatten() {
            if &s.address.host == host && s.is_banned() {
                s.unban();
                t.row(vec![
                    text(&p.settings.db),
                    text(&p.settings.user),
                    text(s.role().as_str()),
                    text(host),
                ]);
            }
        }
    }
    Ok(Reply::Rows(t.tagged("UNBAN")))
}
