//! Which server a checkout gets.
//!
//! - Candidates: the shard's servers of the role asked for (a replica
//!   request falls back to the primary when no replica can take it);
//!   replicas lagging past `replica_max_lag` are left out.
//! - Bans (PgCat's rules): a server whose connection could not be opened
//!   is banned for `ban_time`, never the primary; when every replica of a
//!   shard is banned, they are all unbanned. A banned server is probed in
//!   the background and unbanned as soon as it answers.
//! - Order: `random` (uniform among the healthy), `loc` (least busy
//!   first, ties at random), `round_robin`.
//! - The monitor (for pools with `auto` roles or `replica_max_lag`) finds
//!   each server's role with `pg_is_in_recovery()` and measures replay lag,
//!   every second, so a failover is followed without a reload.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;

use super::slot::Take;
use super::{CheckoutError, PoolStats, PooledServer, ServerPool, UserPool};
use crate::proxy::config::{LoadBalancingMode, Role};
use crate::proxy::router::RoleRequest;
use crate::proxy::server::{Server, ServerError};

/// How often the monitor looks at every server, and a banned server is
/// probed.
const MONITOR_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Bound on one look.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(2);

/// A server's role as known now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownRole {
    Primary,
    Replica,
    /// `auto`, not found yet (or unreachable).
    Unknown,
}

impl KnownRole {
    pub fn as_str(self) -> &'static str {
        match self {
            KnownRole::Primary => "primary",
            KnownRole::Replica => "replica",
            KnownRole::Unknown => "unknown",
        }
    }
}

pub(super) fn role_code(role: Role) -> u8 {
    match role {
        Role::Primary => 1,
        Role::Replica => 2,
        Role::Auto => 0,
    }
}

impl ServerPool {
    pub fn role(&self) -> KnownRole {
        match self.role_now.load(Ordering::Relaxed) {
            1 => KnownRole::Primary,
            2 => KnownRole::Replica,
            _ => KnownRole::Unknown,
        }
    }

    /// Replay lag in ms, when measured.
    pub fn lag_ms(&self) -> Option<i64> {
        let l = self.lag_ms.load(Ordering::Relaxed);
        (l >= 0).then_some(l)
    }

    /// Bans a server that failed, for `time`; never a primary. A banned
    /// server is probed, and unbanned as soon as it answers.
    pub(super) fn ban(self: &Arc<Self>, time: Duration) {
        if self.role() == KnownRole::Primary {
            return;
        }
        tracing::warn!(server = %self.address, "banning server for {time:?}");
        *self.banned_until.lock() = Some(Instant::now() + time);
        self.probe_while_banned();
    }

    /// Admin BAN: also the primary, for as long as asked.
    pub fn ban_for(self: &Arc<Self>, time: Duration) {
        *self.banned_until.lock() = Some(Instant::now() + time);
    }

    fn probe_while_banned(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::Relaxed)
            || tokio::runtime::Handle::try_current().is_err()
        {
            return;
        }
        let server = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let Some(s) = server.upgrade() else {
                    return;
                };
                if !s.is_banned() {
                    s.probing.store(false, Ordering::Relaxed);
                    return;
                }
                let answered = tokio::time::timeout(MONITOR_TIMEOUT, s.pool.dedicated_connection())
                    .await
                    .is_ok_and(|r| r.is_ok());
                if answered {
                    tracing::info!(server = %s.address, "banned server answers again: unbanned");
                    s.unban();
                    s.probing.store(false, Ordering::Relaxed);
                    return;
                }
            }
        });
    }
}

impl UserPool {
    /// The shard a transaction without one goes to (`default_shard`).
    pub fn default_shard(&self) -> usize {
        let n = self.shards.len();
        match self.settings.default_shard.as_str() {
            "random" => rand::thread_rng().gen_range(0..n),
            "random_healthy" => {
                // Shards whose servers failed least recently come first.
                let healthy: Vec<usize> = (0..n)
                    .filter(|&i| {
                        self.shards[i]
                            .iter()
                            .any(|s| s.last_error().is_none() && !s.is_banned())
                    })
                    .collect();
                let from = if healthy.is_empty() {
                    (0..n).collect()
                } else {
                    healthy
                };
                from[rand::thread_rng().gen_range(0..from.len())]
            }
            s => s
                .strip_prefix("shard_")
                .and_then(|i| i.parse().ok())
                .filter(|&i| i < n)
                .unwrap_or(0),
        }
    }

    /// The servers a transaction for `role` in `shard` may go to, in the
    /// order they are tried.
    fn candidates(&self, shard: usize, role: RoleRequest) -> Candidates<'_> {
        let servers = &self.shards[shard];
        // One server (the common case) that can take it: nothing to weigh.
        if let [only] = &servers[..] {
            let fits = match (role, only.role()) {
                (_, KnownRole::Unknown) => false,
                (RoleRequest::Any, _) | (_, KnownRole::Primary) => true,
                (RoleRequest::Replica | RoleRequest::Read, KnownRole::Replica) => true,
                (RoleRequest::Primary, KnownRole::Replica) => false,
            };
            if fits && !only.is_banned() {
                return smallvec::smallvec![only];
            }
        }
        let lag_ok = |s: &ServerPool| match self.settings.replica_max_lag {
            Some(max) if s.role() == KnownRole::Replica => {
                s.lag_ms().is_none_or(|l| l <= max as i64)
            }
            _ => true,
        };
        let pick = |f: &dyn Fn(&ServerPool) -> bool| -> Candidates<'_> {
            servers.iter().filter(|s| f(s)).collect()
        };
        // `first` are weighed by the balancing mode; `last` are the
        // fallback: a read no replica can take goes to the primary.
        let (mut first, last) = match role {
            RoleRequest::Any => (
                pick(&|s| s.role() != KnownRole::Unknown && !s.is_banned() && lag_ok(s)),
                Candidates::new(),
            ),
            RoleRequest::Primary => (
                pick(&|s| s.role() == KnownRole::Primary && !s.is_banned()),
                Candidates::new(),
            ),
            RoleRequest::Replica => (
                pick(&|s| s.role() == KnownRole::Replica && !s.is_banned() && lag_ok(s)),
                Candidates::new(),
            ),
            RoleRequest::Read => (
                pick(&|s| s.role() == KnownRole::Replica && !s.is_banned() && lag_ok(s)),
                pick(&|s| s.role() == KnownRole::Primary && !s.is_banned()),
            ),
        };
        if first.is_empty() && last.is_empty() {
            // PgCat's rule: when every server that could take it is
            // banned, the replicas are unbanned and tried again.
            let replicas = pick(&|s| s.role() == KnownRole::Replica);
            if replicas.iter().any(|s| s.is_banned()) {
                tracing::warn!(
                    "every server that could take the query is banned: unbanning the replicas"
                );
                for s in &replicas {
                    s.unban();
                }
            }
            first = match role {
                RoleRequest::Primary => pick(&|s| s.role() == KnownRole::Primary),
                RoleRequest::Replica => pick(&|s| s.role() == KnownRole::Replica),
                _ => pick(&|s| s.role() != KnownRole::Unknown),
            };
        }
        let mut rng = rand::thread_rng();
        match self.settings.load_balancing {
            LoadBalancingMode::Random => first.shuffle(&mut rng),
            LoadBalancingMode::Loc => {
                first.shuffle(&mut rng);
                first.sort_by_key(|s| s.active());
            }
            LoadBalancingMode::RoundRobin => {
                if !first.is_empty() {
                    let start = self.round_robin.fetch_add(1, Ordering::Relaxed) % first.len();
                    first.rotate_left(start);
                }
            }
        }
        first.extend(last);
        first
    }

    /// A server connection for the pool's default shard and role.
    pub async fn checkout(&self) -> Result<PooledServer, CheckoutError> {
        let role = match self.settings.default_role {
            crate::proxy::config::DefaultRole::Primary
            | crate::proxy::config::DefaultRole::Auto => RoleRequest::Primary,
            crate::proxy::config::DefaultRole::Replica => RoleRequest::Replica,
            crate::proxy::config::DefaultRole::Any => RoleRequest::Any,
        };
        self.checkout_to(None, role).await
    }

    /// A server connection for pgcat's own queries at a client's first
    /// login (settings read back, parameters to report). When the
    /// default role lets any server take it, the primary, as PgCat reads
    /// a pool's parameters from its first server: a replica then never
    /// holds a connection that no client query asked for. Any server when
    /// the primary cannot take it.
    pub async fn checkout_for_login(&self) -> Result<PooledServer, CheckoutError> {
        if self.settings.default_role == crate::proxy::config::DefaultRole::Any {
            let shard = self.default_shard();
            let primary_up = self.shards[shard]
                .iter()
                .any(|s| s.role() == KnownRole::Primary && !s.is_banned());
            if primary_up {
                if let Ok(conn) = self.checkout_to(Some(shard), RoleRequest::Primary).await {
                    return Ok(conn);
                }
            }
        }
        self.checkout().await
    }

    /// Hands out a server connection of `role` in `shard` (None: the
    /// default shard), waiting first while the pool is paused.
    pub async fn checkout_to(
        &self,
        shard: Option<usize>,
        role: RoleRequest,
    ) -> Result<PooledServer, CheckoutError> {
        if self.state.is_paused() {
            self.state.wait_unpaused().await;
        }
        let shard_asked = shard;
        let shard = match shard {
            _ if self.shards.len() == 1 => 0,
            Some(n) if n >= self.shards.len() => return Err(CheckoutError::InvalidShard(n)),
            Some(n) => n,
            None => self.default_shard(),
        };
        // Set when a checkout has to wait (for a permit, or for bb8): a
        // warm connection taken at once waited nothing and reads no clock.
        let mut waited_since: Option<Instant> = None;
        let mut candidates = self.candidates(shard, role);
        if candidates.is_empty() && self.has_unknown_roles() {
            // Roles not found yet (just started, or a failover under way):
            // wait for the monitor's next look, within connect_timeout.
            // Boxed: rare, and kept out of every checkout's future.
            waited_since = Some(Instant::now());
            candidates = Box::pin(async {
                let mut rx = self.monitored.subscribe();
                let seen = *rx.borrow_and_update();
                let deadline = tokio::time::Instant::now() + self.settings.connect_timeout;
                let mut candidates = candidates;
                while candidates.is_empty() && tokio::time::Instant::now() < deadline {
                    let _ = tokio::time::timeout_at(deadline, rx.wait_for(|&r| r > seen)).await;
                    candidates = self.candidates(shard, role);
                }
                candidates
            })
            .await;
        }
        if candidates.is_empty() {
            PoolStats::add(&self.state.stats.errors, 1);
            return Err(CheckoutError::NoServer {
                db: self.settings.db.to_string(),
                user: self.settings.user.to_string(),
                role,
                shard,
            });
        }
        // With one server, a ban would only refuse clients for ban_time
        // after it is back.
        let several = self.shards[shard].len() > 1;
        for &server in &candidates {
            match self.checkout_from(server, &mut waited_since).await {
                Ok(conn) => {
                    let waited = waited_since.map_or(0, |t| t.elapsed().as_micros() as u64);
                    PoolStats::add(&self.state.stats.wait_time_us, waited);
                    self.state.stats.wait_latency.record(waited);
                    PoolStats::add(&self.state.stats.server_assignment_count, 1);
                    return Ok(conn);
                }
                Err(Attempt::Retired) => return Err(CheckoutError::Retired),
                Err(Attempt::Busy) => {}
                Err(Attempt::Failed(e)) => {
                    // Bans are for servers that fail: a connection could
                    // not be opened.
                    if several {
                        server.ban(self.settings.ban_time);
                    }
                    if let Some(e) = e {
                        if !several {
                            return Err(CheckoutError::Server(e));
                        }
                    }
                }
            }
        }
        PoolStats::add(&self.state.stats.errors, 1);
        // random_healthy (PgCat): a query that named no shard and found
        // its shard failing goes to another shard that is not.
        if shard_asked.is_none()
            && self.settings.default_shard == "random_healthy"
            && self.shards.len() > 1
        {
            let others: Vec<usize> = (0..self.shards.len())
                .filter(|&i| i != shard)
                .filter(|&i| {
                    self.shards[i]
                        .iter()
                        .any(|s| s.last_error().is_none() && !s.is_banned())
                })
                .collect();
            let next = others.choose(&mut rand::thread_rng()).copied();
            if let Some(next) = next {
                tracing::warn!(shard, next, "shard failing: random_healthy picks another");
                return Box::pin(self.checkout_to(Some(next), role)).await;
            }
        }
        Err(CheckoutError::Timeout {
            db: self.settings.db.to_string(),
            user: self.settings.user.to_string(),
            timeout_ms: self.settings.connect_timeout.as_millis(),
            last_error: candidates.iter().find_map(|s| s.last_error()),
        })
    }

    /// One server's connection: a warm one at once, or a permit (FIFO
    /// among waiters) and then bb8, or one handed over by a client done
    /// with it.
    /// `waited_since` is set, if it is not yet, when the checkout has to
    /// wait.
    async fn checkout_from(
        &self,
        server: &Arc<ServerPool>,
        waited_since: &mut Option<Instant>,
    ) -> Result<PooledServer, Attempt> {
        let timeout_ms = self.settings.connect_timeout.as_millis() as u64;
        let got = match server
            .slot
            .take(server.gen, self.settings.server_round_robin, timeout_ms)
        {
            Take::Now(guard) if guard.conn.is_some() => return Ok(guard),
            // A permit free at once, without a warm connection: bb8 bounds
            // its own wait by connect_timeout. Biased: an idle connection
            // is taken on the first poll, before the retirement signal
            // registers a waiter. Boxed: bb8's get is the largest future
            // there is, and a warm connection usually spares it.
            Take::Now(guard) => {
                waited_since.get_or_insert_with(Instant::now);
                let get = Box::pin(async {
                    tokio::select! {
                        biased;
                        r = with_permit(server, guard) => Some(r),
                        _ = self.retired_signal.cancelled() => None,
                    }
                });
                match get.await {
                    Some(r) => r,
                    None => return Err(Attempt::Retired),
                }
            }
            // The slot ends the wait at connect_timeout (its one timer
            // serves every waiter): no timer per wait.
            Take::Wait(grant) => {
                waited_since.get_or_insert_with(Instant::now);
                match grant.await {
                    Ok(guard) if self.is_retired() => {
                        drop(guard);
                        return Err(Attempt::Retired);
                    }
                    Ok(guard) if guard.conn.is_some() => return Ok(guard),
                    // A permit without a connection: bb8 opens one. Boxed:
                    // rare, and bb8's get is the largest future there is.
                    Ok(guard) => {
                        let deadline = self.settings.connect_timeout;
                        let get = Box::pin(async {
                            tokio::select! {
                                biased;
                                r = tokio::time::timeout(deadline, with_permit(server, guard)) => {
                                    Some(r.unwrap_or(Err(bb8::RunError::TimedOut)))
                                }
                                _ = self.retired_signal.cancelled() => None,
                            }
                        });
                        match get.await {
                            Some(r) => r,
                            None => return Err(Attempt::Retired),
                        }
                    }
                    Err(_) if self.is_retired() => return Err(Attempt::Retired),
                    Err(_) => return Err(Attempt::Busy),
                }
            }
        };
        match got {
            Ok(conn) => Ok(conn),
            Err(bb8::RunError::User(e)) => Err(Attempt::Failed(Some(e))),
            Err(bb8::RunError::TimedOut) if server.last_error().is_some() => {
                Err(Attempt::Failed(None))
            }
            Err(bb8::RunError::TimedOut) => Err(Attempt::Busy),
        }
    }

    fn has_unknown_roles(&self) -> bool {
        self.shards
            .iter()
            .flatten()
            .any(|s| s.role() == KnownRole::Unknown)
    }

    /// Starts the monitor when the pool needs one: servers whose role is
    /// found at run time, or replica lag to measure. It ends when the pool
    /// is retired.
    pub fn start_monitor(self: &Arc<Self>) {
        let needed = self.settings.replica_max_lag.is_some()
            || self
                .shards
                .iter()
                .flatten()
                .any(|s| s.address.role == Role::Auto);
        if !needed || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let pool = Arc::downgrade(self);
        let stop = self.retired_signal.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = monitor(pool) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// How one checkout attempt on one server ended.
enum Attempt {
    /// Its connections were all in use.
    Busy,
    /// A connection could not be opened.
    Failed(Option<ServerError>),
    Retired,
}

/// What the monitor asks each server: is it in recovery, and how far
/// behind (ms; 0 when it has replayed all it received). A replica with WAL
/// to replay that has replayed no transaction since it started is behind
/// by at least its uptime.
const LOOK: &str = "SELECT pg_catalog.pg_is_in_recovery()::text, \
    CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN 0 \
    WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0 \
    ELSE EXTRACT(EPOCH FROM now() - COALESCE(pg_catalog.pg_last_xact_replay_timestamp(), \
    pg_catalog.pg_postmaster_start_time())) * 1000 \
    END::bigint::text";

async fn monitor(pool: Weak<UserPool>) {
    let mut connections: Vec<Option<Box<super::Backend>>> = Vec::new();
    loop {
        let Some(p) = pool.upgrade() else {
            return;
        };
        let servers: Vec<Arc<ServerPool>> = p.shards.iter().flatten().cloned().collect();
        connections.resize_with(servers.len(), || None);
        for (server, conn) in servers.iter().zip(connections.iter_mut()) {
            let seen = look(server, conn).await;
            let (role, lag) = match seen {
                Some((in_recovery, lag)) => (
                    if in_recovery {
                        KnownRole::Replica
                    } else {
                        KnownRole::Primary
                    },
                    lag,
                ),
                None => {
                    *conn = None;
                    (KnownRole::Unknown, -1)
                }
            };
            if server.address.role == Role::Auto {
                let code = match role {
                    KnownRole::Primary => 1,
                    KnownRole::Replica => 2,
                    KnownRole::Unknown => 0,
                };
                let before = server.role_now.swap(code, Ordering::Relaxed);
                if before != code {
                    tracing::info!(server = %server.address, role = role.as_str(), "server role found");
                }
            }
            server.lag_ms.store(lag, Ordering::Relaxed);
        }
        p.monitored.send_modify(|r| *r += 1);
        drop(p);
        tokio::time::sleep(MONITOR_INTERVAL).await;
    }
}

/// One look at a server, on the monitor's own connection (opened when
/// needed): whether it is in recovery, and its lag in ms.
async fn look(server: &ServerPool, conn: &mut Option<Box<super::Backend>>) -> Option<(bool, i64)> {
    if conn.is_none() {
        let c = tokio::time::timeout(MONITOR_TIMEOUT, server.pool.dedicated_connection())
            .await
            .ok()?
            .ok()?;
        *conn = Some(c);
    }
    let backend = conn.as_mut()?;
    let s: &mut Server = &mut backend.server;
    let rows = s.query_rows(LOOK, MONITOR_TIMEOUT).await.ok()?;
    let row = rows.first()?;
    let in_recovery = row.first()?.as_deref()? == "true";
    let lag = row.get(1)?.as_deref()?.parse().ok()?;
    Some((in_recovery, lag))
}

/// The servers a checkout may try, in order: no allocation for up to
/// four (a shard's primary and replicas, usually).
type Candidates<'a> = smallvec::SmallVec<[&'a Arc<ServerPool>; 4]>;

/// A connection from bb8 for the holder of a permit.
async fn with_permit(
    server: &ServerPool,
    mut guard: PooledServer,
) -> Result<PooledServer, bb8::RunError<ServerError>> {
    guard.conn = Some(server.pool.get_owned().await?);
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_codes_round_trip() {
        assert_eq!(role_code(Role::Primary), 1);
        assert_eq!(role_code(Role::Replica), 2);
        assert_eq!(role_code(Role::Auto), 0);
    }
}
