//! Server connection pools. One bb8 pool per (pool, user, shard, server);
//! a [`UserPool`] groups those of one (pool, user) and picks a server for
//! each checkout; a [`PoolSet`] maps database and user names to them.
//!
//! Which server a checkout gets (load balancing, bans, roles found at run
//! time, replica lag) is in `balance`.
//!
//! A reload replaces a `UserPool` whose config hash changed. What must
//! outlive the replacement lives in [`PoolState`]: the counters, the pause
//! flag, and one `Slot` per server whose FIFO permits bound the
//! connections in use by *all* generations of the pool together. A
//! replaced pool is retired: its idle connections close at once, busy
//! ones when their client is done.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::watch;

pub mod auth_query;
mod balance;
mod slot;

use slot::Slot;

pub use balance::KnownRole;

use super::auth::ClientAuth;
use super::config::{self, hash::pool_hash, Config, DefaultRole, LoadBalancingMode, PoolMode};
use super::mirror::{MirrorHandle, MirrorSpec, MirrorStats};
use super::net::SocketSettings;
use super::protocol::settings::Settings;
use super::protocol::statements::StatementId;
use super::router::plugins::Plugins;
use super::router::{RoleRequest, RouterConfig};
use super::server::{LoginInfo, Params, Server, ServerAddress, ServerError};
use super::stats::{PoolStats, Registry, ServerState};
use super::tls::TlsState;

/// Per (pool, user): what survives a rebuild of the pool.
#[derive(Debug)]
pub struct PoolState {
    pub stats: PoolStats,
    paused: watch::Sender<bool>,
    /// Statements PostgreSQL accepted for this pool: a client preparing
    /// one of these gets ParseComplete from pgcat without waiting for a
    /// server.
    pub known_statements: Mutex<HashSet<StatementId>>,
    /// Connection permits per server, shared by every generation.
    slots: Mutex<HashMap<SlotKey, Arc<Slot>>>,
}

type SlotKey = (String, u16, String);

impl Default for PoolState {
    fn default() -> Self {
        PoolState {
            stats: PoolStats::default(),
            paused: watch::channel(false).0,
            known_statements: Mutex::new(HashSet::new()),
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl PoolState {
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Waits while the pool is paused.
    pub async fn wait_unpaused(&self) {
        let mut rx = self.paused.subscribe();
        let _ = rx.wait_for(|p| !*p).await;
    }

    /// The permit slot for a server, sized to `size` connections.
    fn slot(&self, address: &ServerAddress, size: usize) -> Arc<Slot> {
        let key = (address.host.clone(), address.port, address.database.clone());
        let mut slots = self.slots.lock();
        let slot = slots.entry(key).or_insert_with(|| Arc::new(Slot::new()));
        slot.resize(size);
        slot.clone()
    }
}

/// A checked-out server connection, or (while a checkout asks bb8 for
/// one) the permit alone. Dropping it gives both back to the server's
/// `Slot`: to the first waiter, else warm.
pub struct PooledServer {
    conn: Option<slot::Conn>,
    holds_permit: bool,
    slot: Arc<Slot>,
}

impl Drop for PooledServer {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_ref() {
            conn.server.info.set_state(ServerState::Idle, 0);
        }
        if std::mem::take(&mut self.holds_permit) {
            self.slot.give_back(self.conn.take());
        }
    }
}

impl PooledServer {
    fn permit_only(slot: Arc<Slot>) -> PooledServer {
        PooledServer {
            conn: None,
            holds_permit: true,
            slot,
        }
    }

    /// Lets go of the permit without giving it back (the caller already
    /// holds the slot's lock and keeps the count itself).
    fn forget_permit(&mut self) {
        self.holds_permit = false;
    }
}

impl std::ops::Deref for PooledServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.conn.as_ref().expect("present until drop").server
    }
}

impl std::ops::DerefMut for PooledServer {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.conn.as_mut().expect("present until drop").server
    }
}

impl PooledServer {
    /// The connection and its mirror tasks, borrowed together.
    pub fn split(&mut self) -> (&mut Server, &mut [MirrorHandle]) {
        let b = &mut **self.conn.as_mut().expect("present until drop");
        (&mut b.server, &mut b.mirrors)
    }
}

/// A server connection as the pool keeps it: the connection, and one
/// task per mirror of its server, which follows it for its whole life
/// (dropping the handles tells the tasks to close their connections).
/// `Server` itself knows nothing of mirrors.
pub struct Backend {
    pub server: Server,
    pub mirrors: Vec<MirrorHandle>,
    /// The pool generation that opened it (see [`ServerPool::gen`]).
    gen: usize,
    /// That generation's retirement flag.
    retired: Arc<AtomicBool>,
    /// Used within this many ms, it needs no health check.
    check_after_ms: u64,
    /// `server_lifetime` ends at this coarse time (ms).
    expires_ms: u64,
}

impl Backend {
    /// Whether a released connection may serve another checkout without
    /// going back to bb8.
    fn reusable(&self, now_ms: u64) -> bool {
        !self.server.broken && !self.retired.load(Ordering::Relaxed) && now_ms < self.expires_ms
    }

    /// Whether a warm connection may be handed out as it is: what bb8's
    /// check on checkout would let through without a round trip.
    fn usable(&self, now_ms: u64) -> bool {
        self.reusable(now_ms)
            && now_ms.saturating_sub(self.server.last_used) < self.check_after_ms
            && !self.server.is_stale()
    }
}

/// Creates and checks server connections for bb8.
pub struct ServerManager {
    address: Arc<ServerAddress>,
    login: Arc<LoginInfo>,
    healthcheck_delay: Duration,
    healthcheck_timeout: Duration,
    /// The last connect failure, shown to clients that time out waiting.
    last_error: Arc<Mutex<Option<(Instant, String)>>>,
    /// Set when the pool is replaced: connections close instead of going
    /// back to the pool, and no new ones open.
    retired: Arc<AtomicBool>,
    server_lifetime: Option<Duration>,
    registry: Arc<Registry>,
    db: String,
    user: String,
    /// Every connection to this server starts one task per mirror.
    mirrors: Vec<Arc<MirrorSpec>>,
    /// What a fresh connection reports (ParameterStatus), shared by the
    /// pool's servers: a client without startup settings is told these.
    defaults: Arc<Mutex<Option<Params>>>,
    /// PgCat's prewarmer: queries run on each new connection first.
    prewarm: Vec<String>,
}

impl bb8::ManageConnection for ServerManager {
    /// Boxed: bb8 moves connections in and out of its idle queue at every
    /// checkout, and a pointer moves cheaper than the whole struct.
    type Connection = Box<Backend>;
    type Error = ServerError;

    async fn connect(&self) -> Result<Box<Backend>, ServerError> {
        if self.retired.load(Ordering::Relaxed) {
            return Err(ServerError::Retired);
        }
        let identity = (
            Some(self.registry.clone()),
            self.db.as_str(),
            self.user.as_str(),
        );
        match Server::connect(self.address.clone(), &self.login, identity).await {
            Ok(mut server) => {
                for q in &self.prewarm {
                    tracing::info!(server = %self.address, "Prewarming with query: `{q}`");
                    match server.run(q, self.login.connect_timeout).await {
                        Ok(()) | Err(ServerError::Postgres(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                *self.last_error.lock() = None;
                let mut defaults = self.defaults.lock();
                if defaults.is_none() {
                    *defaults = Some(server.params.clone());
                }
                drop(defaults);
                let expires_ms = match self.server_lifetime {
                    Some(d) => super::stats::coarse_ms().saturating_add(d.as_millis() as u64),
                    None => u64::MAX,
                };
                Ok(Box::new(Backend {
                    server,
                    mirrors: self.mirrors.iter().map(MirrorHandle::start).collect(),
                    gen: Arc::as_ptr(&self.retired) as usize,
                    retired: self.retired.clone(),
                    check_after_ms: self.healthcheck_delay.as_millis() as u64,
                    expires_ms,
                }))
            }
            Err(e) => {
                tracing::warn!(server = %self.address, error = %e, "server connection failed");
                *self.last_error.lock() = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    async fn is_valid(&self, conn: &mut Box<Backend>) -> Result<(), ServerError> {
        let conn = &mut conn.server;
        if self.retired.load(Ordering::Relaxed) {
            return Err(ServerError::Retired);
        }
        if conn.is_stale() {
            return Err(ServerError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "idle server connection was closed or timed out",
            )));
        }
        // A connection used moments ago is fine; checking it would cost a
        // round trip per transaction.
        let now = super::stats::coarse_ms();
        if now.saturating_sub(conn.last_used) < self.healthcheck_delay.as_millis() as u64 {
            return Ok(());
        }
        // Boxed: bb8 keeps this future inside every checkout's, which the
        // session keeps inside each request's; the common case, above,
        // should not carry the round trip's state.
        Box::pin(conn.run(";", self.healthcheck_timeout)).await?;
        conn.last_used = now;
        Ok(())
    }

    fn has_broken(&self, conn: &mut Box<Backend>) -> bool {
        conn.server.broken || self.retired.load(Ordering::Relaxed)
    }
}

/// The connections to one server for one (pool, user).
pub struct ServerPool {
    pub address: Arc<ServerAddress>,
    pub pool: bb8::Pool<ServerManager>,
    pub mirrors: Vec<Arc<MirrorSpec>>,
    slot: Arc<Slot>,
    /// Which generation of the (pool, user) this is: the servers of one
    /// [`UserPool`] share it, and the slot hands a generation only its own
    /// connections.
    gen: usize,
    banned_until: Mutex<Option<Instant>>,
    last_error: Arc<Mutex<Option<(Instant, String)>>>,
    /// The role it has now: the configured one, or for `auto` what the
    /// monitor last found (see `balance`).
    role_now: std::sync::atomic::AtomicU8,
    /// Replay lag in ms as the monitor last measured it (-1: unknown).
    lag_ms: std::sync::atomic::AtomicI64,
    /// A task is probing it while it is banned.
    probing: AtomicBool,
}

impl ServerPool {
    pub fn is_banned(&self) -> bool {
        self.ban_remaining().is_some()
    }

    pub fn ban_remaining(&self) -> Option<Duration> {
        let mut b = self.banned_until.lock();
        match *b {
            Some(t) if t > Instant::now() => Some(t - Instant::now()),
            Some(_) => {
                *b = None;
                None
            }
            None => None,
        }
    }

    pub fn unban(&self) {
        *self.banned_until.lock() = None;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().as_ref().map(|(_, e)| e.clone())
    }

    /// Connections checked out right now.
    pub fn active(&self) -> u32 {
        let (open, idle) = self.counts();
        open - idle
    }

    /// Connections open, and those of them idle: in bb8, or warm in the
    /// slot (checked out of bb8 but no client's).
    pub fn counts(&self) -> (u32, u32) {
        let s = self.pool.state();
        let idle = s.idle_connections + self.slot.warm();
        (s.connections, idle.min(s.connections))
    }
}

/// Everything that decides how a (pool, user) behaves, resolved from the
/// user, pool and general sections (most specific wins).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub db: Arc<str>,
    pub user: Arc<str>,
    pub mode: PoolMode,
    pub pool_size: u32,
    pub min_pool_size: u32,
    pub connect_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub server_lifetime: Option<Duration>,
    pub healthcheck_delay: Duration,
    pub healthcheck_timeout: Duration,
    pub ban_time: Duration,
    pub default_role: DefaultRole,
    pub primary_reads_enabled: bool,
    pub load_balancing: LoadBalancingMode,
    pub default_shard: String,
    pub cleanup_server_connections: bool,
    pub statement_cache_size: usize,
    pub max_prepared_statements: usize,
    pub cache_unnamed_statements: bool,
    pub idle_client_in_transaction_timeout: Option<Duration>,
    pub server_round_robin: bool,
    pub auth: ClientAuth,
    /// Where a user without a password gets its secret.
    pub auth_query: Option<Arc<auth_query::AuthQuery>>,
    /// PgCat's plugins in force for this pool (None: none enabled).
    pub plugins: Option<Arc<Plugins>>,
    pub login: Arc<LoginInfo>,
    /// `login.user`, shared with the sessions of the pool.
    pub server_user: Arc<str>,
    /// Replicas lagging more than this get no reads (None: not measured).
    pub replica_max_lag: Option<u64>,
    /// How transactions are routed (shards, roles, the parser).
    pub router: Arc<RouterConfig>,
}

impl PoolSettings {
    pub fn resolve(config: &Config, db: &str, user_key: &str, tls: &Arc<TlsState>) -> PoolSettings {
        let g = &config.general;
        let pool = &config.pools[db];
        let user = &pool.users[user_key];
        let connect_timeout = user
            .connect_timeout
            .or(pool.connect_timeout)
            .unwrap_or(g.connect_timeout);
        let idle_timeout = user
            .idle_timeout
            .or(pool.idle_timeout)
            .unwrap_or(g.idle_timeout);
        let server_lifetime = user
            .server_lifetime
            .or(pool.server_lifetime)
            .unwrap_or(g.server_lifetime);
        let socket = SocketSettings::from_general(g);
        let (query, query_user, query_password) = pool.auth_query_config(g);
        let from_query = user.password.is_empty() && query.is_some();
        let auth = if from_query {
            ClientAuth::Query(user.auth_type.method())
        } else {
            ClientAuth::new(user.auth_type.method(), &user.username, &user.password)
                .expect("validated when the config was loaded")
        };
        // Also for users with a password: an md5 answer that does not
        // match it is checked against PostgreSQL's current hash (PgCat's
        // behaviour, so a password changed in PostgreSQL works at once).
        let auth_query = match (query, query_user) {
            (Some(sql), Some(query_user)) => {
                let target = pool.auth_query_target().map(|(database, entry)| {
                    Arc::new(ServerAddress {
                        host: entry.0.clone(),
                        port: entry.1,
                        database,
                        role: entry.2,
                        shard: 0,
                        index: 0,
                    })
                });
                target.map(|target| {
                    Arc::new(auth_query::AuthQuery::new(
                        sql,
                        target,
                        LoginInfo {
                            user: query_user.to_string(),
                            password: query_password.cloned(),
                            passthrough: None,
                            tls: Some(tls.clone()),
                            statement_timeout: 0,
                            socket,
                            connect_timeout: Duration::from_millis(connect_timeout),
                        },
                    ))
                })
            }
            _ => None,
        };
        let server_user = user
            .server_username
            .clone()
            .unwrap_or(user.username.clone());
        let server_password = user
            .server_password
            .clone()
            .or_else(|| (!user.password.is_empty()).then(|| user.password.clone()));
        // A pool's own [plugins] replaces the global one (PgCat's rule).
        let plugins = pool
            .plugins
            .as_ref()
            .or(config.plugins.as_ref())
            .map(|v| Plugins::from_toml(v).expect("validated when the config was loaded"))
            .filter(|p| {
                !p.prewarm.is_empty() || (pool.query_parser_enabled && p.inspects_queries())
            })
            .map(Arc::new);
        PoolSettings {
            db: Arc::from(db),
            user: Arc::from(user.username.as_str()),
            mode: user.pool_mode.unwrap_or(pool.pool_mode),
            pool_size: user.pool_size,
            min_pool_size: user.min_pool_size,
            connect_timeout: Duration::from_millis(connect_timeout),
            idle_timeout: config::millis(idle_timeout),
            server_lifetime: config::millis(server_lifetime),
            healthcheck_delay: Duration::from_millis(g.healthcheck_delay),
            healthcheck_timeout: Duration::from_millis(g.healthcheck_timeout),
            ban_time: Duration::from_secs(g.ban_time),
            default_role: pool.default_role,
            primary_reads_enabled: pool.primary_reads_enabled,
            load_balancing: pool.load_balancing_mode,
            default_shard: pool.default_shard.clone(),
            cleanup_server_connections: pool.cleanup_server_connections,
            statement_cache_size: if pool.prepared_statements_cache_size == 0 {
                256
            } else {
                pool.prepared_statements_cache_size
            },
            max_prepared_statements: g.max_prepared_statements,
            cache_unnamed_statements: pool.cache_unnamed_statements,
            idle_client_in_transaction_timeout: config::millis(
                g.idle_client_in_transaction_timeout,
            ),
            server_round_robin: g.server_round_robin,
            auth,
            auth_query,
            plugins,
            replica_max_lag: pool.replica_max_lag,
            router: Arc::new(RouterConfig::from_pool(pool)),
            server_user: Arc::from(server_user.as_str()),
            login: Arc::new(LoginInfo {
                user: server_user,
                passthrough: server_password
                    .is_none()
                    .then(|| Arc::new(super::auth::Passthrough::default())),
                password: server_password,
                tls: Some(tls.clone()),
                statement_timeout: user.statement_timeout,
                socket,
                connect_timeout: Duration::from_millis(connect_timeout),
            }),
        }
    }
}

/// Why a client got no server connection.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("no server connection available for database \"{db}\" user \"{user}\" within {timeout_ms} ms (connect_timeout){}", last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    Timeout {
        db: String,
        user: String,
        timeout_ms: u128,
        last_error: Option<String>,
    },
    #[error("server error: {0}")]
    Server(#[from] ServerError),
    /// A reload replaced the pool while the client waited: ask the
    /// current one.
    #[error("the pool was replaced by a reload")]
    Retired,
    /// A shard number past the pool's shards (from a comment).
    #[error("could not get connection from the pool - InvalidShardId({0})")]
    InvalidShard(usize),
    /// No server has the role asked for (PgCat: AllServersDown).
    #[error("no {} server for database \"{db}\" user \"{user}\" in shard {shard}", match role { RoleRequest::Primary => "primary", RoleRequest::Replica | RoleRequest::Read => "replica", RoleRequest::Any => "available" })]
    NoServer {
        db: String,
        user: String,
        role: RoleRequest,
        shard: usize,
    },
}

/// The servers of one (pool, user).
pub struct UserPool {
    pub settings: PoolSettings,
    /// Per shard, the servers in config order.
    pub shards: Vec<Vec<Arc<ServerPool>>>,
    /// The hash of the pool's config when this was built.
    pub config_hash: u64,
    pub built_at: SystemTime,
    /// Counters, pause flag and permits, shared with the pool this one
    /// replaced and the one that will replace it.
    pub state: Arc<PoolState>,
    retired: Arc<AtomicBool>,
    /// Cancelled at retirement: wakes checkouts waiting on this pool.
    retired_signal: tokio_util::sync::CancellationToken,
    /// What a client's startup settings come to, by the settings as the
    /// client sent them: checked once on a server, then answered here.
    logins: Mutex<HashMap<StartupSettings, Arc<LoginSettings>>>,
    /// What a fresh server connection reports, once one has opened.
    defaults: Arc<Mutex<Option<Params>>>,
    /// Rounds the monitor has run (roles found, lag measured).
    monitored: watch::Sender<u64>,
    /// The next turn in `round_robin` load balancing.
    round_robin: AtomicUsize,
}

/// Startup settings as a client sent them, sorted.
pub type StartupSettings = Vec<(String, String)>;

/// A client's startup settings as PostgreSQL accepted and spells them,
/// and the ParameterStatus values a client with them is told at login.
#[derive(Debug)]
pub struct LoginSettings {
    pub settings: Arc<Settings>,
    pub reported: Arc<Params>,
}

/// Distinct sets of startup settings remembered per pool; past this the
/// memory starts over (clients with unique settings per connection would
/// otherwise grow it without bound).
const LOGINS_KEPT: usize = 1024;

impl UserPool {
    /// Builds the pools; connections open lazily (or up to min_pool_size
    /// in the background), so building never waits on a server.
    /// `config_hash` is the pool's [`pool_hash`], which the caller has
    /// already computed to decide whether to build.
    pub fn build(
        config: &Config,
        db: &str,
        config_hash: u64,
        user_key: &str,
        state: Arc<PoolState>,
        registry: &Arc<Registry>,
        tls: &Arc<TlsState>,
    ) -> UserPool {
        let settings = PoolSettings::resolve(config, db, user_key, tls);
        let pool = &config.pools[db];
        let retired = Arc::new(AtomicBool::new(false));
        let defaults = Arc::new(Mutex::new(None));
        let mut shards: Vec<(usize, &config::Shard)> = pool
            .shards
            .iter()
            .map(|(k, s)| (k.parse().expect("validated"), s))
            .collect();
        shards.sort_by_key(|(i, _)| *i);
        let shards = shards
            .into_iter()
            .map(|(shard_index, shard)| {
                shard
                    .servers
                    .iter()
                    .enumerate()
                    .map(|(index, entry)| {
                        let address = Arc::new(ServerAddress {
                            host: entry.0.clone(),
                            port: entry.1,
                            database: shard.database.clone(),
                            role: entry.2,
                            shard: shard_index,
                            index,
                        });
                        let mirrors = shard
                            .mirrors
                            .iter()
                            .filter(|m| m.2 == index)
                            .map(|m| {
                                Arc::new(MirrorSpec {
                                    address: Arc::new(ServerAddress {
                                        host: m.0.clone(),
                                        port: m.1,
                                        ..(*address).clone()
                                    }),
                                    login: settings.login.clone(),
                                    idle_timeout: settings.idle_timeout,
                                    server_lifetime: settings.server_lifetime,
                                    stats: Arc::new(MirrorStats::new(&m.0, m.1, &address)),
                                })
                            })
                            .collect();
                        Arc::new(Self::server_pool(
                            &settings, address, mirrors, &state, &retired, registry, &defaults,
                        ))
                    })
                    .collect()
            })
            .collect();
        UserPool {
            config_hash,
            built_at: SystemTime::now(),
            settings,
            shards,
            state,
            retired,
            retired_signal: tokio_util::sync::CancellationToken::new(),
            logins: Mutex::new(HashMap::new()),
            defaults,
            monitored: watch::channel(0).0,
            round_robin: AtomicUsize::new(0),
        }
    }

    fn server_pool(
        settings: &PoolSettings,
        address: Arc<ServerAddress>,
        mirrors: Vec<Arc<MirrorSpec>>,
        state: &PoolState,
        retired: &Arc<AtomicBool>,
        registry: &Arc<Registry>,
        defaults: &Arc<Mutex<Option<Params>>>,
    ) -> ServerPool {
        let last_error = Arc::new(Mutex::new(None));
        let manager = ServerManager {
            address: address.clone(),
            login: settings.login.clone(),
            healthcheck_delay: settings.healthcheck_delay,
            healthcheck_timeout: settings.healthcheck_timeout,
            last_error: last_error.clone(),
            retired: retired.clone(),
            server_lifetime: settings.server_lifetime,
            registry: registry.clone(),
            db: settings.db.to_string(),
            user: settings.user.to_string(),
            mirrors: mirrors.clone(),
            defaults: defaults.clone(),
            prewarm: settings
                .plugins
                .as_ref()
                .map(|p| p.prewarm.clone())
                .unwrap_or_default(),
        };
        // The reaper enforces idle_timeout and server_lifetime; run it
        // often enough that neither overshoots by much.
        let reap = [settings.idle_timeout, settings.server_lifetime]
            .into_iter()
            .flatten()
            .min()
            .map(|d| (d / 4).clamp(Duration::from_millis(100), Duration::from_secs(30)))
            .unwrap_or(Duration::from_secs(30));
        let pool = bb8::Pool::builder()
            .max_size(settings.pool_size)
            .min_idle((settings.min_pool_size > 0).then_some(settings.min_pool_size))
            .test_on_check_out(true)
            .max_lifetime(settings.server_lifetime)
            .idle_timeout(settings.idle_timeout)
            .connection_timeout(settings.connect_timeout)
            .retry_connection(true)
            .reaper_rate(reap)
            .queue_strategy(if settings.server_round_robin {
                bb8::QueueStrategy::Fifo
            } else {
                bb8::QueueStrategy::Lifo
            })
            .build_unchecked(manager);
        ServerPool {
            slot: state.slot(&address, settings.pool_size as usize),
            gen: Arc::as_ptr(retired) as usize,
            role_now: std::sync::atomic::AtomicU8::new(balance::role_code(address.role)),
            lag_ms: std::sync::atomic::AtomicI64::new(-1),
            probing: AtomicBool::new(false),
            address,
            pool,
            mirrors,
            banned_until: Mutex::new(None),
            last_error,
        }
    }

    /// Takes this pool out of service after a reload replaced it: idle
    /// connections close now, busy ones when their client releases them.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.retired_signal.cancel();
        for server in self.shards.iter().flatten() {
            server.slot.retire(server.gen);
            // One poll of a checkout runs bb8's validity check over every
            // idle connection; each fails (retired) and is closed.
            let pool = server.pool.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::ZERO, pool.get()).await;
            });
        }
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// What these startup settings came to last time, if known. No
    /// settings at all come to what a fresh connection reports, known
    /// once any connection has opened: such a login needs no server even
    /// when every one is busy.
    pub fn known_login(&self, startup: &StartupSettings) -> Option<Arc<LoginSettings>> {
        let mut logins = self.logins.lock();
        if let Some(l) = logins.get(startup) {
            return Some(l.clone());
        }
        if startup.is_empty() {
            let reported = self.defaults.lock().clone()?;
            let login = Arc::new(LoginSettings {
                settings: Settings::empty(),
                reported: Arc::new(reported),
            });
            logins.insert(Vec::new(), login.clone());
            return Some(login);
        }
        None
    }

    /// Remembers what startup settings came to.
    pub fn remember_login(&self, startup: StartupSettings, login: Arc<LoginSettings>) {
        let mut logins = self.logins.lock();
        if logins.len() >= LOGINS_KEPT {
            logins.clear();
        }
        logins.insert(startup, login);
    }

    /// Server connections open and idle, over all servers.
    pub fn connection_counts(&self) -> (u32, u32) {
        let mut total = (0, 0);
        for s in self.shards.iter().flatten() {
            let (open, idle) = s.counts();
            total.0 += open;
            total.1 += idle;
        }
        total
    }
}

/// Result of looking up a login's pool.
pub enum Lookup {
    Found(Arc<UserPool>),
    NoDatabase,
    NoUser,
}

/// All pools of one config.
#[derive(Default)]
pub struct PoolSet {
    /// database -> user -> pool.
    pools: HashMap<String, HashMap<String, Arc<UserPool>>>,
    /// Different for every set built: sessions that remember a pool check
    /// it against this instead of looking the pool up again.
    pub generation: u64,
}

static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl PoolSet {
    /// Builds every pool. A pool whose hash matches the one in `previous`
    /// is kept with its connections, unless its database is in `force`;
    /// the others are built anew, keeping their (pool, user) state.
    pub fn build(
        config: &Config,
        previous: Option<&PoolSet>,
        registry: &Arc<Registry>,
        force: &HashSet<String>,
        tls: &Arc<TlsState>,
    ) -> PoolSet {
        let mut pools = HashMap::new();
        for (db, pool) in &config.pools {
            let hash = pool_hash(&config.general, config.plugins.as_ref(), db, pool);
            let old = previous.and_then(|p| p.pools.get(db));
            let kept = old.filter(|users| {
                !force.contains(db)
                    && users.values().all(|u| u.config_hash == hash)
                    && users.len() == pool.users.len()
                    && pool.users.values().all(|u| users.contains_key(&u.username))
            });
            let users = match kept {
                Some(users) => users.clone(),
                None => pool
                    .users
                    .iter()
                    .map(|(key, u)| {
                        let state = old
                            .and_then(|users| users.get(&u.username))
                            .map(|p| p.state.clone())
                            .unwrap_or_default();
                        let pool =
                            Arc::new(UserPool::build(config, db, hash, key, state, registry, tls));
                        pool.start_monitor();
                        (u.username.clone(), pool)
                    })
                    .collect(),
            };
            pools.insert(db.clone(), users);
        }
        PoolSet {
            pools,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn lookup(&self, db: &str, user: &str) -> Lookup {
        match self.pools.get(db) {
            None => Lookup::NoDatabase,
            Some(users) => match users.get(user) {
                Some(p) => Lookup::Found(p.clone()),
                None => Lookup::NoUser,
            },
        }
    }

    /// What to run with a client whose database or user pgcat does not
    /// have: an exchange no password passes, by the method that user has
    /// elsewhere (SCRAM when none), so the client learns nothing of which
    /// users and databases exist.
    pub fn mock_auth(&self, user: &str) -> ClientAuth {
        let md5 = self
            .iter()
            .find(|p| &*p.settings.user == user)
            .is_some_and(|p| matches!(p.settings.auth, ClientAuth::Md5(_)));
        if md5 {
            let mut raw = [0u8; 16];
            rand::thread_rng().fill(&mut raw);
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            ClientAuth::Md5(format!("md5{hex}").into())
        } else {
            ClientAuth::Scram(crate::proxy::auth::ScramSecret::mock(user))
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<UserPool>> {
        self.pools.values().flat_map(|u| u.values())
    }

    pub fn databases(&self) -> impl Iterator<Item = &String> {
        self.pools.keys()
    }

    /// Names of databases whose pools differ between two sets.
    pub fn changed_since(&self, previous: &PoolSet) -> Vec<String> {
        let mut changed: Vec<String> = self
            .pools
            .iter()
            .filter(|(db, users)| match previous.pools.get(*db) {
                None => true,
                Some(old) => {
                    old.len() != users.len()
                        || users
                            .iter()
                            .any(|(u, p)| old.get(u).is_none_or(|o| !Arc::ptr_eq(o, p)))
                }
            })
            .map(|(db, _)| db.clone())
            .collect();
        changed.extend(
            previous
                .pools
                .keys()
                .filter(|db| !self.pools.contains_key(*db))
                .cloned(),
        );
        changed.sort();
        changed
    }

    /// Retires the pools of `previous` that this set does not keep.
    pub fn retire_replaced(&self, previous: &PoolSet) {
        for old in previous.iter() {
            let kept = self.iter().any(|p| Arc::ptr_eq(p, old));
            if !kept {
                old.retire();
            }
        }
    }
}
