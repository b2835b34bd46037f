//! Server connection pools. One bb8 pool per (pool, user, shard, server);
//! a [`UserPool`] groups those of one (pool, user) and picks a server for
//! each checkout; a [`PoolSet`] maps database and user names to them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::ClientAuth;
use super::config::{
    self, hash::pool_hash, Config, DefaultRole, LoadBalancingMode, PoolMode, Role,
};
use super::net::SocketSettings;
use super::server::{LoginInfo, Params, Server, ServerAddress, ServerError};
use super::stats::PoolStats;

/// A checked-out server connection. bb8 hands connections to whichever
/// task asks first after a release, so a client that releases and asks
/// again at once would starve clients already waiting; a FIFO semaphore
/// with one permit per connection queues checkouts fairly in front of it.
pub struct PooledServer {
    // Dropped first: the connection is back in bb8 before the permit
    // lets the next waiter ask for it.
    conn: bb8::PooledConnection<'static, ServerManager>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for PooledServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.conn
    }
}

impl std::ops::DerefMut for PooledServer {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.conn
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
}

impl bb8::ManageConnection for ServerManager {
    type Connection = Server;
    type Error = ServerError;

    async fn connect(&self) -> Result<Server, ServerError> {
        match Server::connect(self.address.clone(), &self.login).await {
            Ok(s) => {
                *self.last_error.lock() = None;
                Ok(s)
            }
            Err(e) => {
                tracing::warn!(server = %self.address, error = %e, "server connection failed");
                *self.last_error.lock() = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    async fn is_valid(&self, conn: &mut Server) -> Result<(), ServerError> {
        // A connection used moments ago is fine; checking it would cost a
        // round trip per transaction.
        if conn.last_used.elapsed() < self.healthcheck_delay {
            return Ok(());
        }
        conn.run(";", self.healthcheck_timeout).await?;
        conn.last_used = Instant::now();
        Ok(())
    }

    fn has_broken(&self, conn: &mut Server) -> bool {
        conn.broken
    }
}

/// The connections to one server for one (pool, user).
pub struct ServerPool {
    pub address: Arc<ServerAddress>,
    pub pool: bb8::Pool<ServerManager>,
    /// One permit per connection; waiters are served in arrival order.
    permits: Arc<Semaphore>,
    banned_until: Mutex<Option<Instant>>,
    last_error: Arc<Mutex<Option<(Instant, String)>>>,
}

impl ServerPool {
    pub fn is_banned(&self) -> bool {
        let mut b = self.banned_until.lock();
        match *b {
            Some(t) if t > Instant::now() => true,
            Some(_) => {
                *b = None;
                false
            }
            None => false,
        }
    }

    fn ban(&self, time: Duration) {
        *self.banned_until.lock() = Some(Instant::now() + time);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().as_ref().map(|(_, e)| e.clone())
    }

    /// Connections checked out right now.
    pub fn active(&self) -> u32 {
        let s = self.pool.state();
        s.connections - s.idle_connections
    }
}

/// Everything that decides how a (pool, user) behaves, resolved from the
/// user, pool and general sections (most specific wins).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub db: String,
    pub user: String,
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
    pub idle_client_in_transaction_timeout: Option<Duration>,
    pub server_round_robin: bool,
    pub auth: ClientAuth,
    pub login: Arc<LoginInfo>,
}

impl PoolSettings {
    pub fn resolve(config: &Config, db: &str, user_key: &str) -> PoolSettings {
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
        let auth = ClientAuth::new(user.auth_type.method(), &user.username, &user.password)
            .expect("validated when the config was loaded");
        let server_user = user
            .server_username
            .clone()
            .unwrap_or(user.username.clone());
        let server_password = user
            .server_password
            .clone()
            .or_else(|| (!user.password.is_empty()).then(|| user.password.clone()));
        PoolSettings {
            db: db.to_string(),
            user: user.username.clone(),
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
            idle_client_in_transaction_timeout: config::millis(
                g.idle_client_in_transaction_timeout,
            ),
            server_round_robin: g.server_round_robin,
            auth,
            login: Arc::new(LoginInfo {
                user: server_user,
                password: server_password,
                statement_timeout: user.statement_timeout,
                socket: SocketSettings::from_general(g),
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
}

/// The servers of one (pool, user).
pub struct UserPool {
    pub settings: PoolSettings,
    /// Per shard, the servers in config order.
    pub shards: Vec<Vec<Arc<ServerPool>>>,
    /// The hash of the pool's config when this was built.
    pub config_hash: u64,
    pub built_at: std::time::SystemTime,
    pub stats: PoolStats,
    /// Settings PostgreSQL reported on the first connection, sent to
    /// clients at login.
    server_params: tokio::sync::Mutex<Option<Arc<Params>>>,
    /// Hashes of statements PostgreSQL accepted on some connection of
    /// this pool: a client preparing one of these gets ParseComplete from
    /// pgcat without waiting for a server.
    pub known_statements: Mutex<std::collections::HashSet<u64>>,
}

impl UserPool {
    /// Builds the pools; connections open lazily (or up to min_pool_size
    /// in the background), so building never waits on a server.
    pub fn build(config: &Config, db: &str, user_key: &str) -> UserPool {
        let settings = PoolSettings::resolve(config, db, user_key);
        let pool = &config.pools[db];
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
                        Arc::new(Self::server_pool(&settings, address))
                    })
                    .collect()
            })
            .collect();
        UserPool {
            config_hash: pool_hash(&config.general, db, pool),
            built_at: std::time::SystemTime::now(),
            settings,
            shards,
            stats: PoolStats::default(),
            server_params: tokio::sync::Mutex::new(None),
            known_statements: Mutex::new(Default::default()),
        }
    }

    fn server_pool(settings: &PoolSettings, address: Arc<ServerAddress>) -> ServerPool {
        let last_error = Arc::new(Mutex::new(None));
        let manager = ServerManager {
            address: address.clone(),
            login: settings.login.clone(),
            healthcheck_delay: settings.healthcheck_delay,
            healthcheck_timeout: settings.healthcheck_timeout,
            last_error: last_error.clone(),
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
            address,
            pool,
            permits: Arc::new(Semaphore::new(settings.pool_size as usize)),
            banned_until: Mutex::new(None),
            last_error,
        }
    }

    pub fn default_shard(&self) -> usize {
        match self.settings.default_shard.as_str() {
            "random" | "random_healthy" => rand::thread_rng().gen_range(0..self.shards.len()),
            s => s
                .strip_prefix("shard_")
                .and_then(|i| i.parse().ok())
                .filter(|&i| i < self.shards.len())
                .unwrap_or(0),
        }
    }

    /// The servers a query for `role` may go to, best first.
    fn candidates(&self, shard: usize, role: DefaultRole) -> Vec<Arc<ServerPool>> {
        let servers = &self.shards[shard];
        let wanted = |s: &&Arc<ServerPool>| match role {
            DefaultRole::Any => true,
            DefaultRole::Primary => s.address.role == Role::Primary,
            DefaultRole::Replica => {
                s.address.role == Role::Replica
                    || (self.settings.primary_reads_enabled && s.address.role == Role::Primary)
            }
        };
        let mut list: Vec<Arc<ServerPool>> = servers.iter().filter(wanted).cloned().collect();
        if list.is_empty() {
            list = servers.clone();
        }
        match self.settings.load_balancing {
            LoadBalancingMode::Random => {
                let start = if list.len() > 1 {
                    rand::thread_rng().gen_range(0..list.len())
                } else {
                    0
                };
                list.rotate_left(start);
            }
            LoadBalancingMode::Loc => list.sort_by_key(|s| s.active()),
        }
        // Banned servers go last: tried only when nothing else is left.
        list.sort_by_key(|s| s.is_banned());
        list
    }

    /// Hands out a server connection for the default shard and role.
    pub async fn checkout(&self) -> Result<PooledServer, CheckoutError> {
        let shard = self.default_shard();
        let candidates = self.candidates(shard, self.settings.default_role);
        let started = Instant::now();
        let several = candidates.len() > 1;
        for server in &candidates {
            let deadline = self.settings.connect_timeout;
            let got = tokio::time::timeout(deadline, async {
                let permit = server
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("pool semaphore is never closed");
                server.pool.get_owned().await.map(|conn| PooledServer {
                    conn,
                    _permit: permit,
                })
            })
            .await
            .unwrap_or(Err(bb8::RunError::TimedOut));
            match got {
                Ok(conn) => {
                    PoolStats::add(
                        &self.stats.wait_time_us,
                        started.elapsed().as_micros() as u64,
                    );
                    PoolStats::add(&self.stats.server_assignment_count, 1);
                    return Ok(conn);
                }
                Err(e) => {
                    // With one server, a ban would only refuse clients for
                    // ban_time after the server is back.
                    if several {
                        tracing::warn!(server = %server.address, "banning server for {:?}", self.settings.ban_time);
                        server.ban(self.settings.ban_time);
                    }
                    if let bb8::RunError::User(e) = e {
                        return Err(CheckoutError::Server(e));
                    }
                }
            }
        }
        PoolStats::add(&self.stats.errors, 1);
        Err(CheckoutError::Timeout {
            db: self.settings.db.clone(),
            user: self.settings.user.clone(),
            timeout_ms: self.settings.connect_timeout.as_millis(),
            last_error: candidates.iter().find_map(|s| s.last_error()),
        })
    }

    /// The settings to report to a client at login: from the first
    /// server connection this pool made (opening one if needed).
    pub async fn server_params(&self) -> Result<Arc<Params>, CheckoutError> {
        let mut cached = self.server_params.lock().await;
        if let Some(p) = cached.as_ref() {
            return Ok(p.clone());
        }
        let conn = self.checkout().await?;
        let params = Arc::new(conn.params.clone());
        *cached = Some(params.clone());
        Ok(params)
    }

    /// Server connections open and idle, over all servers.
    pub fn connection_counts(&self) -> (u32, u32) {
        let mut total = (0, 0);
        for s in self.shards.iter().flatten() {
            let st = s.pool.state();
            total.0 += st.connections;
            total.1 += st.idle_connections;
        }
        total
    }

    pub fn clients(&self) -> i64 {
        self.stats.clients.load(Ordering::Relaxed)
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
}

impl PoolSet {
    /// Builds every pool; where `previous` has a pool with the same hash,
    /// that pool is kept with its connections.
    pub fn build(config: &Config, previous: Option<&PoolSet>) -> PoolSet {
        let mut pools = HashMap::new();
        for (db, pool) in &config.pools {
            let hash = pool_hash(&config.general, db, pool);
            let kept = previous
                .and_then(|p| p.pools.get(db))
                .filter(|users| users.values().all(|u| u.config_hash == hash))
                .filter(|users| {
                    users.len() == pool.users.len()
                        && pool.users.values().all(|u| users.contains_key(&u.username))
                });
            let users = match kept {
                Some(users) => users.clone(),
                None => pool
                    .users
                    .iter()
                    .map(|(key, u)| {
                        (
                            u.username.clone(),
                            Arc::new(UserPool::build(config, db, key)),
                        )
                    })
                    .collect(),
            };
            pools.insert(db.clone(), users);
        }
        PoolSet { pools }
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

    pub fn iter(&self) -> impl Iterator<Item = &Arc<UserPool>> {
        self.pools.values().flat_map(|u| u.values())
    }

    /// Names of databases whose pools differ between two sets.
    pub fn changed_since(&self, previous: &PoolSet) -> Vec<String> {
        let mut changed: Vec<String> = self
            .pools
            .iter()
            .filter(|(db, users)| match previous.pools.get(*db) {
                None => true,
                Some(old) => users
                    .iter()
                    .any(|(u, p)| old.get(u).is_none_or(|o| !Arc::ptr_eq(o, p))),
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
}
