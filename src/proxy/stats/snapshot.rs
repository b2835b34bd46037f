//! [`Snapshot`]: everything the admin console, the Prometheus exporter and
//! the dashboard show, read at one moment from the registry and the pools.
//! It sits above the pools and mirrors it reads; the registry and counters
//! in the parent module sit below every connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{now_us, read_socket, unix_secs, Averages, ClientState, ReloadRecord, Totals};
use crate::proxy::mirror::MirrorSnapshot;
use crate::proxy::net::SocketInfo;
use crate::proxy::Shared;

#[derive(Debug, Clone, Serialize)]
pub struct PoolServerSnapshot {
    pub host: String,
    pub port: u16,
    pub database: String,
    /// The role now: the configured one, or for `auto` the one found.
    pub role: &'static str,
    /// As configured (`primary`, `replica`, `auto`).
    pub configured_role: &'static str,
    /// Replay lag in ms as last measured (monitored pools only).
    pub lag_ms: Option<i64>,
    pub shard: usize,
    pub banned: bool,
    pub ban_remaining_s: u64,
    pub last_error: Option<String>,
    pub connections: u32,
    pub idle: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    pub db: String,
    pub user: String,
    pub server_user: String,
    pub mode: &'static str,
    pub config_hash: u64,
    pub built_at_unix: u64,
    pub pool_size: u32,
    pub min_pool_size: u32,
    pub server_lifetime_ms: u64,
    pub paused: bool,
    pub cl_active: u64,
    pub cl_waiting: u64,
    pub cl_idle: u64,
    pub sv_active: u64,
    pub sv_idle: u64,
    pub sv_login: u64,
    pub sv_used: u64,
    pub maxwait_us: u64,
    pub totals: Totals,
    pub averages: Averages,
    /// Request durations since the pool's counters started, per bucket of
    /// [`super::histogram::BOUNDS_US`] (not cumulative).
    pub query_hist: Vec<u64>,
    /// Waits for a server connection, the same way.
    pub wait_hist: Vec<u64>,
    pub servers: Vec<PoolServerSnapshot>,
    pub mirrors: Vec<MirrorSnapshot>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientSnapshot {
    pub id: u64,
    pub db: String,
    pub user: String,
    pub admin: bool,
    pub state: &'static str,
    pub addr: String,
    pub port: u16,
    pub local_addr: String,
    pub local_port: u16,
    pub connect_time_unix: u64,
    pub request_time_unix: u64,
    pub wait_us: u64,
    pub server_id: u64,
    pub application_name: String,
    pub socket: Option<SocketInfo>,
    /// TLS version and cipher (None: plaintext).
    pub tls: Option<String>,
    pub xact_count: u64,
    pub query_count: u64,
    /// The longest completed wait for a server, in microseconds.
    pub max_wait_us: u64,
    /// idle, waiting, active, idle in transaction.
    pub activity: &'static str,
    /// How long it has been in that activity, in milliseconds.
    pub activity_ms: u64,
    /// The query it runs now, truncated; None when it runs none.
    pub query: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerSnapshot {
    pub id: u64,
    pub db: String,
    pub user: String,
    pub state: &'static str,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub role: &'static str,
    /// The server's replay lag in ms as last measured.
    pub lag_ms: Option<i64>,
    pub local_addr: String,
    pub local_port: u16,
    pub connect_time_unix: u64,
    pub request_time_unix: u64,
    pub client_id: u64,
    pub remote_pid: i32,
    pub application_name: String,
    pub socket: Option<SocketInfo>,
    /// TLS version and cipher (None: plaintext).
    pub tls: Option<String>,
}

/// Everything the admin console, the exporter and the dashboard show, read
/// at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub version: String,
    pub listen: String,
    pub config_path: Option<String>,
    pub started_at_unix: u64,
    pub taken_at_unix: u64,
    pub pools: Vec<PoolSnapshot>,
    pub clients: Vec<ClientSnapshot>,
    pub servers: Vec<ServerSnapshot>,
    pub reloads: Vec<ReloadRecord>,
    pub reload_count: u64,
    pub reload_failures: u64,
    /// The certificate files in force (TLS towards clients and servers).
    pub certificates: Vec<CertificateSnapshot>,
}

/// A certificate file in force: which key names it, whose it is, and
/// when it expires.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertificateSnapshot {
    pub key: String,
    pub path: String,
    pub subject: String,
    pub not_after_unix: i64,
}

impl Snapshot {
    /// Reads the registry and the pools. `with_sockets` adds TCP_INFO
    /// read-back for every connection (one getsockopt each).
    pub fn take(shared: &Shared, with_sockets: bool) -> Snapshot {
        let now = now_us();
        let clients: Vec<ClientSnapshot> = shared
            .registry
            .clients()
            .iter()
            .map(|c| {
                let state = c.state();
                let wait_start = c.wait_start.load(Ordering::Relaxed);
                let (peer, local) = (c.peer(), c.local());
                ClientSnapshot {
                    id: c.id,
                    db: c.db.to_string(),
                    user: c.user.to_string(),
                    admin: c.admin,
                    state: state.as_str(),
                    addr: peer.ip().to_string(),
                    port: peer.port(),
                    local_addr: local.ip().to_string(),
                    local_port: local.port(),
                    connect_time_unix: c.connect_time,
                    request_time_unix: c.request_time.load(Ordering::Relaxed) / 1_000_000,
                    wait_us: if state == ClientState::Waiting && wait_start > 0 {
                        now.saturating_sub(wait_start)
                    } else {
                        0
                    },
                    server_id: c.server.load(Ordering::Relaxed),
                    application_name: c.application_name.lock().to_string(),
                    socket: if with_sockets {
                        read_socket(c.fd)
                    } else {
                        None
                    },
                    tls: c.tls.as_deref().map(str::to_string),
                    xact_count: c.xact_count.load(Ordering::Relaxed),
                    query_count: c.query_count.load(Ordering::Relaxed),
                    max_wait_us: c.max_wait_us.load(Ordering::Relaxed),
                    activity: c.activity().as_str(),
                    activity_ms: (now / 1000).saturating_sub(c.activity_since_ms()),
                    query: c.query(),
                }
            })
            .collect();
        let servers: Vec<ServerSnapshot> = shared
            .registry
            .servers()
            .iter()
            .map(|s| {
                let local = *s.local.lock();
                ServerSnapshot {
                    id: s.id,
                    db: s.db.clone(),
                    user: s.user.clone(),
                    state: s.state().as_str(),
                    host: s.host.clone(),
                    port: s.port,
                    database: s.database.clone(),
                    role: s.role,
                    lag_ms: None,
                    local_addr: local.map(|a| a.ip().to_string()).unwrap_or_default(),
                    local_port: local.map(|a| a.port()).unwrap_or(0),
                    connect_time_unix: unix_secs(s.connect_time),
                    request_time_unix: s.request_time.load(Ordering::Relaxed) / 1_000_000,
                    client_id: s.client.load(Ordering::Relaxed),
                    remote_pid: s.remote_pid.load(Ordering::Relaxed),
                    application_name: s.application_name.lock().clone(),
                    socket: if with_sockets {
                        read_socket(s.fd.load(Ordering::Relaxed))
                    } else {
                        None
                    },
                    tls: s.tls.lock().clone(),
                }
            })
            .collect();

        let pools_set = shared.pools.load();
        let mut pools: Vec<PoolSnapshot> = pools_set
            .iter()
            .map(|p| {
                let st = &p.state.stats;
                let mine = |c: &&ClientSnapshot| {
                    !c.admin && *c.db == *p.settings.db && *c.user == *p.settings.user
                };
                let cl: Vec<&ClientSnapshot> = clients.iter().filter(mine).collect();
                let count = |s: &str| cl.iter().filter(|c| c.state == s).count() as u64;
                let sv: Vec<&ServerSnapshot> = servers
                    .iter()
                    .filter(|s| *s.db == *p.settings.db && *s.user == *p.settings.user)
                    .collect();
                let svc = |s: &str| sv.iter().filter(|x| x.state == s).count() as u64;
                let used_after = p.settings.healthcheck_delay.as_secs();
                let sv_used = sv
                    .iter()
                    .filter(|x| {
                        x.state == "idle"
                            && (now / 1_000_000).saturating_sub(x.request_time_unix) > used_after
                    })
                    .count() as u64;
                PoolSnapshot {
                    db: p.settings.db.to_string(),
                    user: p.settings.user.to_string(),
                    server_user: p.settings.login.user.clone(),
                    mode: p.settings.mode.as_str(),
                    config_hash: p.config_hash,
                    built_at_unix: unix_secs(p.built_at),
                    pool_size: p.settings.pool_size,
                    min_pool_size: p.settings.min_pool_size,
                    server_lifetime_ms: p
                        .settings
                        .server_lifetime
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                    paused: p.state.is_paused(),
                    cl_active: count("active"),
                    cl_waiting: count("waiting"),
                    cl_idle: count("idle"),
                    sv_active: svc("active"),
                    sv_idle: svc("idle") - sv_used,
                    sv_login: svc("login"),
                    sv_used,
                    maxwait_us: cl.iter().map(|c| c.wait_us).max().unwrap_or(0),
                    totals: st.totals(),
                    averages: st.averages(),
                    query_hist: st.query_latency.counts(),
                    wait_hist: st.wait_latency.counts(),
                    servers: p
                        .shards
                        .iter()
                        .flatten()
                        .map(|s| {
                            let (connections, idle) = s.counts();
                            PoolServerSnapshot {
                                host: s.address.host.clone(),
                                port: s.address.port,
                                database: s.address.database.clone(),
                                role: s.role().as_str(),
                                configured_role: s.address.role.as_str(),
                                lag_ms: s.lag_ms(),
                                shard: s.address.shard,
                                banned: s.is_banned(),
                                ban_remaining_s: s
                                    .ban_remaining()
                                    .map(|d| d.as_secs())
                                    .unwrap_or(0),
                                last_error: s.last_error(),
                                connections,
                                idle,
                            }
                        })
                        .collect(),
                    mirrors: p
                        .shards
                        .iter()
                        .flatten()
                        .flat_map(|s| s.mirrors.iter().map(|m| m.stats.snapshot()))
                        .collect(),
                }
            })
            .collect();
        pools.sort_by(|a, b| (&a.db, &a.user).cmp(&(&b.db, &b.user)));
        // A connection's role and lag are its server's, as the pool knows.
        let mut servers = servers;
        for s in servers.iter_mut() {
            let found = pools
                .iter()
                .filter(|p| p.db == s.db && p.user == s.user)
                .flat_map(|p| p.servers.iter())
                .find(|v| v.host == s.host && v.port == s.port && v.database == s.database);
            if let Some(v) = found {
                s.role = v.role;
                s.lag_ms = v.lag_ms;
            }
        }
        let config = shared.config.load();
        let (reloads, reload_count, reload_failures) = shared.reload_history();
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            listen: shared.listen_addr.to_string(),
            config_path: config.path.as_ref().map(|p| p.display().to_string()),
            started_at_unix: unix_secs(shared.started_at),
            taken_at_unix: now / 1_000_000,
            pools,
            clients,
            servers,
            reloads,
            reload_count,
            reload_failures,
            certificates: shared
                .tls
                .certificates()
                .into_iter()
                .map(|c| CertificateSnapshot {
                    key: c.key.to_string(),
                    path: c.path,
                    subject: c.subject,
                    not_after_unix: c.not_after,
                })
                .collect(),
        }
    }
}

/// How often averages are recomputed.
pub const STATS_PERIOD: Duration = Duration::from_secs(15);

/// Rolls every pool's stats period until the proxy stops.
pub async fn run_stats_task(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(STATS_PERIOD);
    tick.tick().await;
    loop {
        tick.tick().await;
        for p in shared.pools.load().iter() {
            p.state.stats.roll_period();
        }
        if shared.is_shutting_down() {
            break;
        }
    }
}
