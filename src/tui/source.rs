//! Where the dashboard gets its data and sends its actions: the engine in
//! this process, or a pgcat elsewhere through its admin console
//! (`pgcat top`). Both produce the same [`Snapshot`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::proxy::config::Role;
use crate::proxy::mirror::MirrorSnapshot;
use crate::proxy::net::{SocketInfo, SocketSettings};
use crate::proxy::protocol::codec::MAX_MESSAGE_LEN;
use crate::proxy::protocol::messages::{self, parse_error_fields, read_cstr};
use crate::proxy::server::{LoginInfo, Server, ServerAddress};
use crate::proxy::stats::snapshot::{
    CertificateSnapshot, ClientSnapshot, PoolServerSnapshot, PoolSnapshot, ServerSnapshot, Snapshot,
};
use crate::proxy::stats::{Averages, ReloadRecord, Totals};
use crate::proxy::{wire, Shared};

/// One row of an admin command: column name -> value.
pub type Row = HashMap<String, Option<String>>;

/// Where to find a pgcat's admin console: `postgres://user:password@host:port/db`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<crate::proxy::secret::Secret>,
    pub database: String,
}

impl AdminUrl {
    /// Parses `postgres://user[:password]@host[:port][/db]`. Missing parts:
    /// user `admin`, host 127.0.0.1, port 6432, database `pgcat`,
    /// password from PGPASSWORD.
    pub fn parse(url: &str) -> Result<AdminUrl, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| format!("admin URL must start with postgres:// (got {url:?})"))?;
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (user, password) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (u.to_string(), Some(p.to_string())),
                None => (a.to_string(), None),
            },
            None => ("admin".to_string(), None),
        };
        let (hostport, database) = match hostpart.split_once('/') {
            Some((h, d)) if !d.is_empty() => (h, d.to_string()),
            Some((h, _)) => (h, "pgcat".to_string()),
            None => (hostpart, "pgcat".to_string()),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("bad port in {url:?}"))?,
            ),
            None => (hostport.to_string(), 6432),
        };
        Ok(AdminUrl {
            host: if host.is_empty() {
                "127.0.0.1".into()
            } else {
                host
            },
            port,
            user: if user.is_empty() {
                "admin".into()
            } else {
                user
            },
            password: password
                .or_else(|| std::env::var("PGPASSWORD").ok())
                .map(Into::into),
            database,
        })
    }
}

/// A minimal admin console client on pgcat's own protocol code: login
/// (md5 or SCRAM) and simple queries.
pub struct AdminClient {
    server: Server,
}

impl AdminClient {
    pub async fn connect(url: &AdminUrl) -> Result<AdminClient, String> {
        // The dashboard reads PgBouncer's columns (and pgcat's after
        // them): database `pgcat` speaks PgCat's dialect, so ask
        // `pgbouncer`, the same console.
        let database = if url.database == "pgcat" {
            "pgbouncer".to_string()
        } else {
            url.database.clone()
        };
        let address = Arc::new(ServerAddress {
            host: url.host.clone(),
            port: url.port,
            database,
            role: Role::Primary,
            shard: 0,
            index: 0,
        });
        let login = LoginInfo {
            user: url.user.clone(),
            password: url.password.clone(),
            passthrough: None,
            tls: None,
            statement_timeout: 0,
            socket: SocketSettings {
                keepalive_idle: Duration::from_secs(5),
                keepalive_interval: Duration::from_secs(5),
                keepalive_count: 5,
                user_timeout: Some(Duration::from_secs(10)),
            },
            connect_timeout: Duration::from_secs(5),
        };
        let server = Server::connect(address, &login, (None, "", ""))
            .await
            .map_err(|e| e.to_string())?;
        Ok(AdminClient { server })
    }

    /// Runs one statement; returns its rows.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Row>, String> {
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        let stream = &mut self.server.stream;
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::new();
        let mut columns: Vec<String> = Vec::new();
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let msg = wire::read_message(stream, &mut buf, MAX_MESSAGE_LEN)
                .await
                .map_err(|e| e.to_string())?;
            match msg.tag {
                b'T' => {
                    columns.clear();
                    let body = &msg.body[..];
                    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
                    let mut rest = &body[2..];
                    for _ in 0..n {
                        let (name, after) =
                            read_cstr(rest, "RowDescription").map_err(|e| e.to_string())?;
                        columns.push(String::from_utf8_lossy(name).into_owned());
                        rest = after.get(18..).ok_or("malformed RowDescription")?;
                    }
                }
                b'D' => {
                    let body = &msg.body[..];
                    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
                    let mut rest = &body[2..];
                    let mut row = Row::new();
                    for i in 0..n {
                        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                        rest = &rest[4..];
                        let value = if len < 0 {
                            None
                        } else {
                            let v = String::from_utf8_lossy(&rest[..len as usize]).into_owned();
                            rest = &rest[len as usize..];
                            Some(v)
                        };
                        row.insert(columns.get(i).cloned().unwrap_or_default(), value);
                    }
                    rows.push(row);
                }
                b'E' => error = Some(parse_error_fields(&msg.body).message),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }
}

/// The data behind the dashboard.
pub enum Source {
    Local {
        shared: Arc<Shared>,
        runtime: tokio::runtime::Handle,
    },
    Remote {
        url: AdminUrl,
        client: Option<Box<AdminClient>>,
        runtime: tokio::runtime::Handle,
    },
}

impl Source {
    pub fn is_local(&self) -> bool {
        matches!(self, Source::Local { .. })
    }

    /// The config file, when it can be edited from here.
    pub fn config_path(&self) -> Option<PathBuf> {
        match self {
            Source::Local { shared, .. } => shared.config.load().path.clone(),
            Source::Remote { .. } => None,
        }
    }

    pub fn snapshot(&mut self) -> Result<Snapshot, String> {
        match self {
            Source::Local { shared, .. } => Ok(shared.snapshot(true)),
            Source::Remote {
                url,
                client,
                runtime,
            } => {
                let runtime = runtime.clone();
                let url = url.clone();
                let result = runtime.block_on(async {
                    if client.is_none() {
                        *client = Some(Box::new(AdminClient::connect(&url).await?));
                    }
                    remote_snapshot(client.as_mut().expect("connected"), &url).await
                });
                if result.is_err() {
                    *client = None;
                }
                result
            }
        }
    }

    /// Reloads the config; returns a line for the header.
    pub fn reload(&mut self) -> Result<String, String> {
        match self {
            Source::Local { shared, runtime } => {
                let _in_runtime = runtime.enter();
                shared
                    .reload("dashboard")
                    .map(|r| describe_changed(&r.changed))
                    .map_err(|e| e.to_string())
            }
            Source::Remote { .. } => self.remote("RELOAD").map(|_| "reloaded".to_string()),
        }
    }

    pub fn set_paused(&mut self, db: &str, user: &str, paused: bool) -> Result<(), String> {
        match self {
            Source::Local { shared, .. } => {
                for p in shared.pools.load().iter() {
                    if *p.settings.db == *db && *p.settings.user == *user {
                        p.state.set_paused(paused);
                    }
                }
                Ok(())
            }
            Source::Remote { .. } => {
                let verb = if paused { "PAUSE" } else { "RESUME" };
                self.remote(&format!("{verb} {db},{user}")).map(|_| ())
            }
        }
    }

    /// Ends one client's session, as the console's KILL_CLIENT does.
    pub fn kill_client(&mut self, id: u64) -> Result<(), String> {
        match self {
            Source::Local { shared, .. } => {
                let ctx = crate::proxy::admin::Context {
                    shared: shared.clone(),
                    pgcat_dialect: false,
                };
                if crate::proxy::admin::kill_client::kill(&ctx, id) {
                    Ok(())
                } else {
                    Err(format!("no such client: {id}"))
                }
            }
            Source::Remote { .. } => self.remote(&format!("KILL_CLIENT {id}")).map(|_| ()),
        }
    }

    fn remote(&mut self, sql: &str) -> Result<Vec<Row>, String> {
        let Source::Remote {
            url,
            client,
            runtime,
        } = self
        else {
            unreachable!("remote only");
        };
        let url = url.clone();
        let runtime = runtime.clone();
        let r = runtime.block_on(async {
            if client.is_none() {
                *client = Some(Box::new(AdminClient::connect(&url).await?));
            }
            let c = client.as_mut().expect("connected");
            tokio::time::timeout(Duration::from_secs(5), c.query(sql))
                .await
                .map_err(|_| format!("{sql}: no answer within 5 s"))?
        });
        if r.is_err() {
            *client = None;
        }
        r
    }

    /// Applies a config that was already written to the file (after an
    /// edit): the same as a reload.
    pub fn apply_file(&mut self) -> Result<String, String> {
        self.reload()
    }
}

pub fn describe_changed(changed: &[String]) -> String {
    if changed.is_empty() {
        "reloaded, no pool changed".to_string()
    } else {
        format!("reloaded, rebuilt: {}", changed.join(", "))
    }
}

fn get<'a>(row: &'a Row, key: &str) -> &'a str {
    row.get(key).and_then(|v| v.as_deref()).unwrap_or("")
}

fn num<T: std::str::FromStr + Default>(row: &Row, key: &str) -> T {
    get(row, key).parse().unwrap_or_default()
}

fn opt_num<T: std::str::FromStr>(row: &Row, key: &str) -> Option<T> {
    row.get(key)
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse().ok())
}

/// Maps a string from the console to the static spelling the snapshot
/// types use.
fn intern(s: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "transaction",
        "session",
        "primary",
        "replica",
        "auto",
        "unknown",
        "idle",
        "active",
        "waiting",
        "login",
        "used",
        "connected",
        "connecting",
        "down",
        "idle in transaction",
    ];
    KNOWN.iter().find(|k| **k == s).copied().unwrap_or("?")
}

/// Parses `YYYY-MM-DD HH:MM:SS UTC` back to Unix seconds.
pub fn parse_timestamp(s: &str) -> u64 {
    let parts: Vec<i64> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect();
    let [y, m, d, hh, mm, ss] = parts[..] else {
        return 0;
    };
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + hh * 3600 + mm * 60 + ss).max(0) as u64
}

fn socket_from(row: &Row) -> Option<SocketInfo> {
    let keepalive: u8 = opt_num(row, "keepalive")?;
    Some(SocketInfo {
        keepalive: keepalive == 1,
        keepalive_idle_s: num(row, "keepalive_idle"),
        keepalive_interval_s: num(row, "keepalive_interval"),
        keepalive_count: num(row, "keepalive_count"),
        user_timeout_ms: num(row, "user_timeout_ms"),
        rtt_us: num(row, "rtt_us"),
        probes: num(row, "probes"),
        unacked: num(row, "unacked"),
        retransmits: num(row, "retransmits"),
        total_retrans: 0,
        last_data_recv_ms: num(row, "last_data_recv_ms"),
    })
}

fn ms_to_us(row: &Row, key: &str) -> Option<u32> {
    opt_num::<f64>(row, key).map(|ms| (ms * 1000.0) as u32)
}

/// One pool's histogram of `kind` from SHOW LATENCY's rows.
fn histogram(rows: &[Row], db: &str, user: &str, kind: &str) -> Vec<u64> {
    use crate::proxy::stats::histogram::{bucket_of, BUCKETS};
    let mut counts = vec![0u64; BUCKETS];
    for r in rows
        .iter()
        .filter(|r| get(r, "database") == db && get(r, "user") == user && get(r, "kind") == kind)
    {
        // `+Inf` (no number) is the last bucket.
        let le = get(r, "le_us").parse::<u64>().unwrap_or(u64::MAX);
        counts[bucket_of(le)] += num::<u64>(r, "count");
    }
    counts
}

/// Builds a snapshot from a remote pgcat's SHOW commands.
async fn remote_snapshot(c: &mut AdminClient, url: &AdminUrl) -> Result<Snapshot, String> {
    let status: HashMap<String, String> = c
        .query("SHOW STATUS")
        .await?
        .into_iter()
        .map(|r| (get(&r, "key").to_string(), get(&r, "value").to_string()))
        .collect();
    let pools = c.query("SHOW POOLS").await?;
    let stats = c.query("SHOW STATS").await?;
    let databases = c.query("SHOW DATABASES").await?;
    let bans = c.query("SHOW BANS").await?;
    let mirrors = c.query("SHOW MIRRORS").await?;
    let servers = c.query("SHOW SERVERS").await?;
    let clients = c.query("SHOW CLIENTS").await?;
    // An older pgcat has no SHOW LATENCY: no percentiles.
    let latency = c.query("SHOW LATENCY").await.unwrap_or_default();
    let reloads = c.query("SHOW RELOADS").await?;
    // An older pgcat has no SHOW CERTIFICATES: show none.
    let certificates = c.query("SHOW CERTIFICATES").await.unwrap_or_default();
    let key = |r: &Row| (get(r, "database").to_string(), get(r, "user").to_string());
    let pools = pools
        .iter()
        .map(|p| {
            let (db, user) = key(p);
            let st = stats.iter().find(|s| key(s) == (db.clone(), user.clone()));
            let st = |k: &str| st.map(|s| num::<u64>(s, k)).unwrap_or(0);
            let avg = |k: &str| st(k) as f64;
            PoolSnapshot {
                db: db.clone(),
                user: user.clone(),
                server_user: String::new(),
                mode: intern(get(p, "pool_mode")),
                config_hash: u64::from_str_radix(get(p, "config_hash"), 16).unwrap_or(0),
                built_at_unix: parse_timestamp(get(p, "rebuilt_at")),
                pool_size: num(p, "pool_size"),
                min_pool_size: 0,
                server_lifetime_ms: 0,
                paused: get(p, "paused") == "1",
                cl_active: num(p, "cl_active"),
                cl_waiting: num(p, "cl_waiting"),
                cl_idle: 0,
                sv_active: num(p, "sv_active"),
                sv_idle: num(p, "sv_idle"),
                sv_login: num(p, "sv_login"),
                sv_used: num(p, "sv_used"),
                maxwait_us: num::<u64>(p, "maxwait") * 1_000_000 + num::<u64>(p, "maxwait_us"),
                totals: Totals {
                    xact_count: st("total_xact_count"),
                    query_count: st("total_query_count"),
                    server_assignment_count: st("total_server_assignment_count"),
                    received: st("total_received"),
                    sent: st("total_sent"),
                    xact_time_us: st("total_xact_time"),
                    query_time_us: st("total_query_time"),
                    wait_time_us: st("total_wait_time"),
                    client_parse_count: st("total_client_parse_count"),
                    server_parse_count: st("total_server_parse_count"),
                    bind_count: st("total_bind_count"),
                    client_login_count: st("total_client_login_count"),
                    errors: st("total_errors"),
                },
                averages: Averages {
                    xact_count: avg("avg_xact_count"),
                    query_count: avg("avg_query_count"),
                    wait_time_us: avg("avg_wait_time"),
                    xact_time_us: avg("avg_xact_time"),
                    query_time_us: avg("avg_query_time"),
                    ..Default::default()
                },
                query_hist: histogram(&latency, &db, &user, "query"),
                wait_hist: histogram(&latency, &db, &user, "wait"),
                servers: databases
                    .iter()
                    .filter(|d| get(d, "name") == db && get(d, "user") == user)
                    .map(|d| {
                        let banned = bans.iter().find(|b| {
                            key(b) == (db.clone(), user.clone())
                                && get(b, "host") == get(d, "host")
                                && get(b, "port") == get(d, "port")
                        });
                        PoolServerSnapshot {
                            host: get(d, "host").to_string(),
                            port: num(d, "port"),
                            database: get(d, "database").to_string(),
                            role: intern(get(d, "role")),
                            configured_role: intern(get(d, "role")),
                            lag_ms: get(d, "replica_lag_ms").parse().ok(),
                            shard: num(d, "shard"),
                            banned: banned.is_some(),
                            ban_remaining_s: banned.map(|b| num(b, "remaining_s")).unwrap_or(0),
                            last_error: banned.and_then(|b| b.get("last_error").cloned().flatten()),
                            connections: num(d, "current_connections"),
                            idle: 0,
                        }
                    })
                    .collect(),
                mirrors: mirrors
                    .iter()
                    .filter(|m| key(m) == (db.clone(), user.clone()))
                    .map(|m| {
                        let (host, port) = get(m, "mirror").rsplit_once(':').unwrap_or(("", "0"));
                        let (shost, sport) = get(m, "server").rsplit_once(':').unwrap_or(("", "0"));
                        MirrorSnapshot {
                            host: host.to_string(),
                            port: port.parse().unwrap_or(0),
                            server_host: shost.to_string(),
                            server_port: sport.parse().unwrap_or(0),
                            shard: num(m, "shard"),
                            server_index: 0,
                            state: intern(get(m, "state")),
                            last_error: m.get("last_error").cloned().flatten(),
                            tasks: num(m, "tasks"),
                            connections: num(m, "connections"),
                            sent_messages: num(m, "sent"),
                            dropped_transactions: num(m, "dropped"),
                            errors: num(m, "errors"),
                            queue_depth: num(m, "queue_depth"),
                            lag_current_us: ms_to_us(m, "lag_ms"),
                            lag_max_us: ms_to_us(m, "lag_max_ms"),
                            lag_p99_us: ms_to_us(m, "lag_p99_ms"),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let servers = servers
        .iter()
        .map(|s| ServerSnapshot {
            id: num(s, "id"),
            db: get(s, "database").to_string(),
            user: get(s, "user").to_string(),
            state: intern(get(s, "state")),
            host: get(s, "addr").to_string(),
            port: num(s, "port"),
            database: get(s, "database").to_string(),
            role: intern(get(s, "role")),
            lag_ms: get(s, "replica_lag_ms").parse().ok(),
            local_addr: get(s, "local_addr").to_string(),
            local_port: num(s, "local_port"),
            connect_time_unix: parse_timestamp(get(s, "connect_time")),
            request_time_unix: parse_timestamp(get(s, "request_time")),
            client_id: u64::from_str_radix(get(s, "link"), 16).unwrap_or(0),
            remote_pid: num(s, "remote_pid"),
            application_name: get(s, "application_name").to_string(),
            socket: socket_from(s),
            tls: Some(get(s, "tls").to_string()).filter(|t| !t.is_empty()),
        })
        .collect();
    let clients = clients
        .iter()
        .map(|c| ClientSnapshot {
            id: num(c, "id"),
            db: get(c, "database").to_string(),
            user: get(c, "user").to_string(),
            admin: matches!(get(c, "database"), "pgcat" | "pgbouncer"),
            state: intern(get(c, "state")),
            addr: get(c, "addr").to_string(),
            port: num(c, "port"),
            local_addr: get(c, "local_addr").to_string(),
            local_port: num(c, "local_port"),
            connect_time_unix: parse_timestamp(get(c, "connect_time")),
            request_time_unix: parse_timestamp(get(c, "request_time")),
            wait_us: num::<u64>(c, "wait") * 1_000_000 + num::<u64>(c, "wait_us"),
            server_id: u64::from_str_radix(get(c, "link"), 16).unwrap_or(0),
            application_name: get(c, "application_name").to_string(),
            socket: socket_from(c),
            tls: Some(get(c, "tls").to_string()).filter(|t| !t.is_empty()),
            xact_count: 0,
            query_count: 0,
            max_wait_us: 0,
            activity: intern(get(c, "activity")),
            activity_ms: num(c, "activity_ms"),
            query: c.get("query").cloned().flatten(),
        })
        .collect();
    let reloads = reloads
        .iter()
        .map(|r| ReloadRecord {
            at_unix: parse_timestamp(get(r, "time")),
            trigger: get(r, "trigger").to_string(),
            ok: get(r, "result") == "ok",
            error: r.get("error").cloned().flatten(),
            changed: get(r, "changed")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        })
        .collect();
    let status_num = |k: &str| status.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Snapshot {
        version: status.get("version").cloned().unwrap_or_default(),
        listen: status
            .get("listen")
            .cloned()
            .unwrap_or_else(|| format!("{}:{}", url.host, url.port)),
        config_path: status.get("config_file").cloned().filter(|p| !p.is_empty()),
        started_at_unix: status_num("started_at"),
        taken_at_unix: status_num("now"),
        pools,
        clients,
        servers,
        reloads,
        reload_count: status_num("reloads"),
        reload_failures: status_num("reload_failures"),
        certificates: certificates
            .iter()
            .map(|r| CertificateSnapshot {
                key: get(r, "key").to_string(),
                path: get(r, "path").to_string(),
                subject: get(r, "subject").to_string(),
                not_after_unix: num(r, "not_after_unix"),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls() {
        let u = AdminUrl::parse("postgres://admin:secret@10.0.0.5:6433/pgbouncer").unwrap();
        assert_eq!(
            (
                u.user.as_str(),
                u.password.as_deref(),
                u.host.as_str(),
                u.port,
                u.database.as_str()
            ),
            ("admin", Some("secret"), "10.0.0.5", 6433, "pgbouncer")
        );
        let u = AdminUrl::parse("postgres://ops@db.example").unwrap();
        assert_eq!((u.port, u.database.as_str()), (6432, "pgcat"));
        assert!(AdminUrl::parse("mysql://x").is_err());
    }

    #[test]
    fn timestamps_round_trip() {
        for t in [0u64, 951_782_400, 1_795_776_645] {
            let shown = crate::proxy::admin::timestamp(t).unwrap();
            assert_eq!(parse_timestamp(&shown), t, "{shown}");
        }
    }
}
