//! The admin console: clients that connect to database `pgcat` or
//! `pgbouncer` as `admin_username` get PgBouncer's console commands over
//! the simple query protocol. Where PgBouncer has a command, its columns
//! come first and in its order, so existing monitoring keeps working;
//! pgcat's own columns follow.
//!
//! Each command lives in its own file as a [`Command`].

mod ban;
mod kill;
pub mod kill_client;
mod pause;
mod pgcat_dialect;
mod reconnect;
mod reload;
mod resume;
mod set;
mod show_bans;
mod show_certificates;
mod show_clients;
mod show_config;
mod show_databases;
mod show_help;
mod show_latency;
mod show_lists;
mod show_mirrors;
mod show_pools;
mod show_reloads;
mod show_servers;
mod show_stats;
mod show_status;
mod show_users;
mod show_version;
mod shutdown;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::tls::Stream;
use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;

use super::auth::{self, ClientAuth, ClientAuthError};
use super::protocol::messages::{self, Severity};
use super::stats::snapshot::Snapshot;
use super::stats::NewClient;
use super::{wire, Shared};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One admin command.
pub struct Command {
    /// The words that name it, upper case: `["SHOW", "POOLS"]`.
    pub words: &'static [&'static str],
    /// Arguments and purpose, for SHOW HELP.
    pub help: &'static str,
    /// Runs it with the words that follow its name.
    pub run: fn(&Context, &[String]) -> Result<Reply, AdminError>,
}

/// What a command answers.
pub enum Reply {
    Rows(Table),
    /// A command tag only, e.g. "RELOAD".
    Done(String),
    /// The answer once something has happened (PAUSE: running queries
    /// finished); [`execute`] awaits it.
    Wait(BoxFuture<'static, Result<Reply, AdminError>>),
}

/// A command that failed: the SQLSTATE and message of its ErrorResponse.
#[derive(Debug)]
pub struct AdminError {
    pub code: &'static str,
    pub message: String,
    /// Close the connection instead of answering (PgCat's RELOAD failure).
    pub close: bool,
}

impl AdminError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        AdminError {
            code,
            message: message.into(),
            close: false,
        }
    }

    pub fn closing(message: impl Into<String>) -> Self {
        AdminError {
            code: "F0000",
            message: message.into(),
            close: true,
        }
    }
}

/// What commands can reach.
pub struct Context {
    pub shared: Arc<Shared>,
    /// The session is on database `pgcat`: PgCat's dialect (its errors,
    /// SQLSTATE 58000); on `pgbouncer`, PgBouncer's.
    pub pgcat_dialect: bool,
}

impl Context {
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot(true)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
}

/// A result set in column order.
pub struct Table {
    columns: Vec<(&'static str, Kind)>,
    rows: Vec<Vec<Option<String>>>,
    /// CommandComplete tag (`SHOW` unless the command says otherwise).
    tag: &'static str,
}

impl Table {
    pub fn new(columns: &[(&'static str, Kind)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
            tag: "SHOW",
        }
    }

    /// The same table answered with another command tag (`BAN`, `UNBAN`).
    pub fn tagged(mut self, tag: &'static str) -> Self {
        self.tag = tag;
        self
    }

    pub fn row(&mut self, values: Vec<Option<String>>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|(n, _)| *n)
    }

    pub fn rows(&self) -> &[Vec<Option<String>>] {
        &self.rows
    }

    fn encode(&self, out: &mut BytesMut) {
        let columns: Vec<(&str, i32, i16)> = self
            .columns
            .iter()
            .map(|(name, kind)| match kind {
                Kind::Text => (*name, 25, -1),
                Kind::Int => (*name, 20, 8),
            })
            .collect();
        messages::row_description(out, &columns);
        for row in &self.rows {
            messages::data_row_text(out, row);
        }
        let at = messages::begin(out, b'C');
        messages::put_cstr(out, self.tag.as_bytes());
        messages::finish(out, at);
    }
}

/// Shorthands for row values.
pub fn text(s: impl ToString) -> Option<String> {
    Some(s.to_string())
}

pub fn int(n: impl Into<i128>) -> Option<String> {
    Some(n.into().to_string())
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix seconds, as PgBouncer prints times.
pub fn timestamp(unix: u64) -> Option<String> {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    Some(format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    ))
}

/// Every command, in SHOW HELP order.
pub const COMMANDS: &[Command] = &[
    show_help::COMMAND,
    show_pools::COMMAND,
    show_stats::COMMAND,
    show_latency::COMMAND,
    show_databases::COMMAND,
    show_servers::COMMAND,
    show_clients::COMMAND,
    show_config::COMMAND,
    show_lists::COMMAND,
    show_users::COMMAND,
    show_bans::COMMAND,
    show_mirrors::COMMAND,
    show_reloads::COMMAND,
    show_certificates::COMMAND,
    show_version::COMMAND,
    show_status::COMMAND,
    reload::COMMAND,
    ban::BAN,
    ban::UNBAN,
    pause::COMMAND,
    resume::COMMAND,
    reconnect::COMMAND,
    kill::COMMAND,
    kill_client::COMMAND,
    shutdown::COMMAND,
    set::COMMAND,
];

/// Splits a statement into upper-cased words; `PAUSE db,user` keeps
/// `db,user` as one word with its case.
fn words(statement: &str) -> Vec<String> {
    statement.split_whitespace().map(str::to_string).collect()
}

/// Runs one statement.
pub async fn execute(ctx: &Context, statement: &str) -> Result<Reply, AdminError> {
    let words = words(statement);
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let best = COMMANDS
        .iter()
        .filter(|c| {
            upper.len() >= c.words.len() && c.words.iter().zip(&upper).all(|(a, b)| *a == b)
        })
        .max_by_key(|c| c.words.len());
    match best {
        Some(c) => match (c.run)(ctx, &words[c.words.len()..])? {
            Reply::Wait(answer) => answer.await,
            reply => Ok(reply),
        },
        None if ctx.pgcat_dialect => Err(unsupported(&upper)),
        None => Err(AdminError::new(
            "42601",
            format!("invalid command '{statement}', use SHOW HELP;"),
        )),
    }
}

/// PgCat's answer to a statement it does not know.
fn unsupported(upper: &[String]) -> AdminError {
    if upper.first().map(String::as_str) == Some("SHOW") {
        AdminError::new("58000", "Unsupported SHOW query against the admin database")
    } else {
        AdminError::new("58000", "Unsupported query against the admin database")
    }
}

/// What the client sent at startup, for an admin login.
pub struct AdminLogin {
    pub peer: SocketAddr,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub kill: super::stats::KillSwitch,
    /// TLS channel binding data, when the client is on TLS.
    pub end_point: Option<Vec<u8>>,
}

/// Serves one admin console session.
pub async fn serve(mut stream: Stream, mut buf: BytesMut, login: AdminLogin, shared: Arc<Shared>) {
    let config = shared.config.load_full();
    let mut out = BytesMut::new();
    if login.user != config.admin_username() {
        auth::refuse(
            &mut out,
            "28000",
            &format!("role \"{}\" may not use the admin console", login.user),
        );
        let _ = stream.write_all(&out).await;
        return;
    }
    let method = config.general.admin_auth_type.method();
    let secret = match ClientAuth::new(method, &login.user, config.admin_password()) {
        Ok(s) => s,
        Err(e) => {
            auth::refuse(&mut out, "28000", &format!("admin console: {e}"));
            let _ = stream.write_all(&out).await;
            return;
        }
    };
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        auth::authenticate_client(
            &mut stream,
            &mut buf,
            &login.user,
            &secret,
            login.end_point.as_deref(),
        ),
    )
    .await;
    match result {
        Ok(Ok(_)) => {}
        Ok(Err(ClientAuthError::Io(_))) | Err(_) => return,
        Ok(Err(e)) => {
            tracing::info!(peer = %login.peer, user = %login.user, "admin console login failed: {e}");
            auth::refuse(&mut out, e.sqlstate(), &e.to_string());
            let _ = stream.write_all(&out).await;
            return;
        }
    }
    let (_info, _registered) = shared.registry.add_client(NewClient {
        peer: login.peer,
        local: shared.local_addr_of(stream.tcp()).unwrap_or(login.peer),
        tls: stream.tls_description(),
        db: login.database.as_str().into(),
        user: login.user.as_str().into(),
        admin: true,
        application_name: login.application_name.clone(),
        kill: login.kill.clone(),
        fd: {
            use std::os::fd::AsRawFd;
            stream.tcp().as_raw_fd()
        },
    });
    messages::auth_ok(&mut out);
    for (k, v) in [
        (
            "server_version",
            concat!("15.0 (pgcat ", env!("CARGO_PKG_VERSION"), ")"),
        ),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", login.application_name.as_str()),
    ] {
        messages::parameter_status(&mut out, k, v);
    }
    messages::backend_key_data(&mut out, 0, 0);
    messages::ready_for_query(&mut out, b'I');
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let ctx = Context {
        shared,
        pgcat_dialect: login.database == "pgcat",
    };
    let mut skipping = false;
    loop {
        let msg = match wire::read_message(&mut stream, &mut buf, 1 << 20).await {
            Ok(m) => m,
            Err(_) => return,
        };
        out.clear();
        match msg.tag {
            b'Q' => {
                let text = String::from_utf8_lossy(&msg.body);
                let text = text.trim_end_matches('\0');
                let statements: Vec<&str> = text
                    .split(';')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                if statements.is_empty() {
                    if ctx.pgcat_dialect {
                        let e = unsupported(&[]);
                        messages::error_response(&mut out, Severity::Error, e.code, &e.message);
                    } else {
                        out.put_slice(&[b'I', 0, 0, 0, 4]);
                    }
                }
                for statement in statements {
                    match execute(&ctx, statement).await {
                        Ok(Reply::Rows(table)) => table.encode(&mut out),
                        Ok(Reply::Done(tag)) => {
                            let at = messages::begin(&mut out, b'C');
                            messages::put_cstr(&mut out, tag.as_bytes());
                            messages::finish(&mut out, at);
                        }
                        Ok(Reply::Wait(_)) => unreachable!("execute awaits the answer"),
                        Err(e) if e.close => {
                            tracing::error!("{}", e.message);
                            return;
                        }
                        Err(e) => {
                            messages::error_response(&mut out, Severity::Error, e.code, &e.message);
                            break;
                        }
                    }
                }
                messages::ready_for_query(&mut out, b'I');
            }
            b'X' => return,
            b'S' => {
                skipping = false;
                messages::ready_for_query(&mut out, b'I');
            }
            b'H' => {}
            _ if skipping => {}
            _ => {
                skipping = true;
                messages::error_response(
                    &mut out,
                    Severity::Error,
                    "08P01",
                    "the admin console supports the simple query protocol only",
                );
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The pools named by `db` or `db,user` arguments (all when empty); an
/// error when none matches.
pub fn matching_pools(
    ctx: &Context,
    args: &[String],
) -> Result<Vec<Arc<crate::proxy::pool::UserPool>>, AdminError> {
    let (db, user) = pool_filter(args);
    let pools: Vec<_> = ctx
        .shared
        .pools
        .load()
        .iter()
        .filter(|p| db.as_deref().is_none_or(|d| d == &*p.settings.db))
        .filter(|p| user.as_deref().is_none_or(|u| u == &*p.settings.user))
        .cloned()
        .collect();
    if pools.is_empty() {
        if ctx.pgcat_dialect {
            return Err(AdminError::new(
                "58000",
                format!(
                    "No pool configured for database: {}, user: {}",
                    db.unwrap_or_default(),
                    user.unwrap_or_default()
                ),
            ));
        }
        return Err(AdminError::new("08P01", "no such database or user"));
    }
    Ok(pools)
}

/// Parses `db` or `db,user` arguments of PAUSE, RESUME and friends.
pub fn pool_filter(args: &[String]) -> (Option<String>, Option<String>) {
    let joined = args.join("");
    let joined = joined.trim();
    if joined.is_empty() {
        return (None, None);
    }
    match joined.split_once(',') {
        Some((db, user)) => (Some(db.trim().to_string()), Some(user.trim().to_string())),
        None => (Some(joined.to_string()), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_like_pgbouncer() {
        assert_eq!(timestamp(0).unwrap(), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(951_782_400).unwrap(), "2000-02-29 00:00:00 UTC");
        assert_eq!(timestamp(1_795_776_645).unwrap(), "2026-11-27 10:50:45 UTC");
    }

    #[test]
    fn pool_filters() {
        assert_eq!(pool_filter(&[]), (None, None));
        assert_eq!(pool_filter(&["app".into()]), (Some("app".into()), None));
        assert_eq!(
            pool_filter(&["app,".into(), "bob".into()]),
            (Some("app".into()), Some("bob".into()))
        );
    }

    #[test]
    fn every_command_has_a_distinct_name() {
        let mut names: Vec<String> = COMMANDS.iter().map(|c| c.words.join(" ")).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }
}
