//! Counters, gauges and the connection registry: a leaf that every
//! connection registers with. [`snapshot::Snapshot`], the one view the
//! admin console, the Prometheus exporter and the dashboard read, is built
//! from them in `snapshot`.
//!
//! Counters live on the pool they describe as relaxed atomics, so the hot
//! path never sends a message or takes a lock to count; sessions add
//! their local counts once per transaction. Clients and server
//! connections register themselves once per connection and publish their
//! state with atomic stores.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::AbortHandle;

use super::net::SocketInfo;

pub mod histogram;
pub mod snapshot;

use histogram::Histogram;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Unix milliseconds on a clock that a background thread advances every
/// 10 ms: for bookkeeping (when a connection was last used, when a wait
/// began) that needs no precision, for the price of an atomic load, where
/// even the vDSO's coarse clock costs a dozen nanoseconds and a request
/// reads this ten times.
///
/// The thread ticks only while someone reads: after a tick with no read
/// it parks, and the next read finds the clock stopped (0), wakes it and
/// reads the precise clock itself. So an idle pgcat is not woken 100
/// times a second for a clock no one looks at.
#[inline]
pub fn coarse_ms() -> u64 {
    if let Some((ticks, _)) = CLOCK.get() {
        if !ticks.read.load(Ordering::Relaxed) {
            ticks.read.store(true, Ordering::Relaxed);
        }
        let ms = ticks.ms.load(Ordering::Relaxed);
        if ms != 0 {
            return ms;
        }
    }
    coarse_ms_stopped()
}

struct Ticks {
    ms: AtomicU64,
    /// Set by a read since the last tick. Readers load it before they
    /// store, so while it is set (the busy case) it costs no write.
    read: std::sync::atomic::AtomicBool,
}

static CLOCK: std::sync::OnceLock<(&'static Ticks, std::thread::Thread)> =
    std::sync::OnceLock::new();

/// The first read, or one that found the clock stopped: starts or wakes
/// the thread and reads the precise clock.
#[cold]
fn coarse_ms_stopped() -> u64 {
    fn precise() -> u64 {
        now_us() / 1000
    }
    let (ticks, ticker) = CLOCK.get_or_init(|| {
        let ticks: &'static Ticks = Box::leak(Box::new(Ticks {
            ms: AtomicU64::new(precise()),
            read: std::sync::atomic::AtomicBool::new(true),
        }));
        let ticker = std::thread::Builder::new()
            .name("pgcat-clock".into())
            .spawn(move || loop {
                ticks.ms.store(precise(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
                if !ticks.read.swap(false, Ordering::Relaxed) {
                    // Nobody looked for a tick: stop until a read finds
                    // the clock stopped and wakes us.
                    ticks.ms.store(0, Ordering::Relaxed);
                    std::thread::park();
                }
            })
            .expect("clock thread");
        (ticks, ticker.thread().clone())
    });
    ticks.read.store(true, Ordering::Relaxed);
    match ticks.ms.load(Ordering::Relaxed) {
        0 => {
            ticker.unpark();
            precise()
        }
        ms => ms,
    }
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Totals of one (pool, user), as PgBouncer's SHOW STATS names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub xact_count: u64,
    pub query_count: u64,
    pub server_assignment_count: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_time_us: u64,
    pub query_time_us: u64,
    pub wait_time_us: u64,
    pub client_parse_count: u64,
    pub server_parse_count: u64,
    pub bind_count: u64,
    pub client_login_count: u64,
    pub errors: u64,
}

/// Rates over the last stats period: counts and bytes per second, times
/// as averages per transaction or query, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Averages {
    pub xact_count: f64,
    pub query_count: f64,
    pub server_assignment_count: f64,
    pub received: f64,
    pub sent: f64,
    pub xact_time_us: f64,
    pub query_time_us: f64,
    pub wait_time_us: f64,
    pub client_parse_count: f64,
    pub server_parse_count: f64,
    pub bind_count: f64,
    pub client_login_count: f64,
}

/// The live counters of one (pool, user). They survive reloads: a
/// rebuilt pool keeps counting where the old one stopped.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub xact_count: AtomicU64,
    pub query_count: AtomicU64,
    pub server_assignment_count: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub xact_time_us: AtomicU64,
    pub query_time_us: AtomicU64,
    pub wait_time_us: AtomicU64,
    pub client_parse_count: AtomicU64,
    pub server_parse_count: AtomicU64,
    pub bind_count: AtomicU64,
    pub client_logins: AtomicU64,
    pub errors: AtomicU64,
    /// Clients logged in.
    pub clients: AtomicI64,
    /// Clients waiting for a server connection right now.
    pub clients_waiting: AtomicI64,
    /// Clients holding a server connection right now.
    pub clients_active: AtomicI64,
    /// How long requests took, from the first message that expects an
    /// answer to the ReadyForQuery that ends it.
    pub query_latency: Histogram,
    /// How long clients waited for a server connection.
    pub wait_latency: Histogram,
    period: Mutex<Period>,
}

/// Totals at the start of the current stats period, and the averages of
/// the period before.
#[derive(Debug)]
struct Period {
    started: Instant,
    totals: Totals,
    averages: Averages,
}

impl Default for Period {
    fn default() -> Self {
        Period {
            started: Instant::now(),
            totals: Totals::default(),
            averages: Averages::default(),
        }
    }
}

impl PoolStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn totals(&self) -> Totals {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Totals {
            xact_count: g(&self.xact_count),
            query_count: g(&self.query_count),
            server_assignment_count: g(&self.server_assignment_count),
            received: g(&self.bytes_received),
            sent: g(&self.bytes_sent),
            xact_time_us: g(&self.xact_time_us),
            query_time_us: g(&self.query_time_us),
            wait_time_us: g(&self.wait_time_us),
            client_parse_count: g(&self.client_parse_count),
            server_parse_count: g(&self.server_parse_count),
            bind_count: g(&self.bind_count),
            client_login_count: g(&self.client_logins),
            errors: g(&self.errors),
        }
    }

    /// Closes the current stats period and computes its averages; called
    /// by the stats task every period.
    pub fn roll_period(&self) {
        let now = Instant::now();
        let totals = self.totals();
        let mut period = self.period.lock();
        let (started, before) = (period.started, period.totals);
        let secs = now.duration_since(started).as_secs_f64().max(0.001);
        let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
        let xacts = d(totals.xact_count, before.xact_count);
        let queries = d(totals.query_count, before.query_count);
        let assignments = d(
            totals.server_assignment_count,
            before.server_assignment_count,
        );
        let per = |t: f64, n: f64| if n > 0.0 { t / n } else { 0.0 };
        let averages = Averages {
            xact_count: xacts / secs,
            query_count: queries / secs,
            server_assignment_count: assignments / secs,
            received: d(totals.received, before.received) / secs,
            sent: d(totals.sent, before.sent) / secs,
            xact_time_us: per(d(totals.xact_time_us, before.xact_time_us), xacts),
            query_time_us: per(d(totals.query_time_us, before.query_time_us), queries),
            wait_time_us: per(d(totals.wait_time_us, before.wait_time_us), assignments),
            client_parse_count: d(totals.client_parse_count, before.client_parse_count) / secs,
            server_parse_count: d(totals.server_parse_count, before.server_parse_count) / secs,
            bind_count: d(totals.bind_count, before.bind_count) / secs,
            client_login_count: d(totals.client_login_count, before.client_login_count) / secs,
        };
        *period = Period {
            started: now,
            totals,
            averages,
        };
    }

    pub fn averages(&self) -> Averages {
        self.period.lock().averages
    }
}

/// Adds one to a gauge now and takes it back when dropped, so early
/// returns cannot leave a gauge wrong.
pub struct GaugeGuard<'a>(&'a AtomicI64);

impl<'a> GaugeGuard<'a> {
    pub fn new(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logged in, no request in flight.
    Idle = 0,
    /// Waiting for a server connection.
    Waiting = 1,
    /// Holding a server connection.
    Active = 2,
}

impl ClientState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }
}

/// One client connection, as the admin console shows it.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    /// The client's address and the local end it reached, compact: every
    /// idle client carries them (see `peer` and `local`).
    peer: Addr,
    local: Addr,
    pub db: Arc<str>,
    pub user: Arc<str>,
    pub admin: bool,
    pub application_name: Mutex<Box<str>>,
    /// Unix seconds when it connected.
    pub connect_time: u64,
    state: AtomicU8,
    /// Unix microseconds when the current or last request began.
    request_time: AtomicU64,
    /// Unix microseconds when the client started waiting (0: not waiting).
    wait_start: AtomicU64,
    /// Id of the server connection it holds (0: none).
    server: AtomicU64,
    /// Ends the session at once (KILL, forced shutdown).
    pub kill: KillSwitch,
    /// The socket, for keepalive read-back; valid while registered.
    pub fd: std::os::fd::RawFd,
    /// TLS version and cipher (None: plaintext).
    pub tls: Option<Box<str>>,
    /// Transactions and queries it ran, added at each transaction's end
    /// (PgCat's per-client SHOW CLIENTS columns).
    pub xact_count: AtomicU64,
    pub query_count: AtomicU64,
    /// The longest it waited for a server connection, in microseconds.
    pub max_wait_us: AtomicU64,
    /// What it does now, finer than `state`: see [`Activity`].
    activity: AtomicU8,
    /// Coarse Unix milliseconds when `activity` last changed.
    since_ms: AtomicU64,
    /// The text of the query it runs now (truncated), only while it runs:
    /// raw bytes, made text only when shown (no UTF-8 check per query).
    query: Mutex<Option<Box<[u8]>>>,
}

/// What a client does, as `pg_stat_activity` would say it: the
/// dashboard's and SHOW CLIENTS' `activity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Activity {
    Idle = 0,
    Waiting = 1,
    /// A request is on the server.
    Active = 2,
    /// It holds a server inside a transaction, and runs nothing.
    IdleInTransaction = 3,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::Waiting => "waiting",
            Activity::Active => "active",
            Activity::IdleInTransaction => "idle in transaction",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Activity::Waiting,
            2 => Activity::Active,
            3 => Activity::IdleInTransaction,
            _ => Activity::Idle,
        }
    }
}

/// Longest query text kept per client, in bytes.
pub const QUERY_TEXT_MAX: usize = 256;

/// A socket address in 20 bytes instead of `SocketAddr`'s 32 (no IPv6
/// flow label or scope id, which nothing here shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Addr {
    ip: [u8; 16],
    port: u16,
    v6: bool,
}

impl From<SocketAddr> for Addr {
    fn from(a: SocketAddr) -> Self {
        let (ip, v6) = match a.ip() {
            std::net::IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), false),
            std::net::IpAddr::V6(v6) => (v6.octets(), true),
        };
        Addr {
            ip,
            port: a.port(),
            v6,
        }
    }
}

impl From<Addr> for SocketAddr {
    fn from(a: Addr) -> Self {
        let v6 = std::net::Ipv6Addr::from(a.ip);
        let ip = match (a.v6, v6.to_ipv4_mapped()) {
            (false, Some(v4)) => std::net::IpAddr::V4(v4),
            _ => std::net::IpAddr::V6(v6),
        };
        SocketAddr::new(ip, a.port)
    }
}

impl ClientInfo {
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer.into()
    }

    /// The local address the client connected to.
    pub fn local(&self) -> SocketAddr {
        self.local.into()
    }

    fn set_activity(&self, a: Activity) {
        if self.activity.swap(a as u8, Ordering::Relaxed) != a as u8 {
            self.since_ms.store(coarse_ms(), Ordering::Relaxed);
        }
    }

    /// A request starts on the server: `text` is its query (or what
    /// names it), cut to [`QUERY_TEXT_MAX`] bytes.
    pub fn begin_query(&self, text: &[u8]) {
        let cut: Box<[u8]> = text[..text.len().min(QUERY_TEXT_MAX)].into();
        let before = self.query.lock().replace(cut);
        drop(before);
        self.set_activity(Activity::Active);
    }

    /// The request is answered; the client still holds its server when
    /// `in_transaction` (or in session mode).
    pub fn end_query(&self, in_transaction: bool) {
        let done = self.query.lock().take();
        drop(done);
        self.set_activity(if in_transaction {
            Activity::IdleInTransaction
        } else {
            Activity::Idle
        });
    }

    pub fn activity(&self) -> Activity {
        Activity::from_u8(self.activity.load(Ordering::Relaxed))
    }

    /// Coarse Unix milliseconds when the activity last changed.
    pub fn activity_since_ms(&self) -> u64 {
        self.since_ms.load(Ordering::Relaxed)
    }

    /// The query it runs now, as text (a cut in the middle of a
    /// character or other invalid UTF-8 shows as U+FFFD).
    pub fn query(&self) -> Option<String> {
        let q = self.query.lock();
        q.as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    pub fn set_waiting(&self) {
        let now = coarse_ms() * 1000;
        self.request_time.store(now, Ordering::Relaxed);
        self.wait_start.store(now, Ordering::Relaxed);
        self.state
            .store(ClientState::Waiting as u8, Ordering::Relaxed);
        self.set_activity(Activity::Waiting);
    }

    /// The server connection the client holds (0: none).
    pub fn server(&self) -> u64 {
        self.server.load(Ordering::Relaxed)
    }

    pub fn set_active(&self, server: u64) {
        let started = self.wait_start.swap(0, Ordering::Relaxed);
        if started > 0 {
            let waited = (coarse_ms() * 1000).saturating_sub(started);
            self.max_wait_us.fetch_max(waited, Ordering::Relaxed);
        }
        self.server.store(server, Ordering::Relaxed);
        self.state
            .store(ClientState::Active as u8, Ordering::Relaxed);
        self.set_activity(Activity::Active);
    }

    pub fn set_idle(&self) {
        self.wait_start.store(0, Ordering::Relaxed);
        // SeqCst: see ServerInfo::begin_cancel.
        self.server.store(0, Ordering::SeqCst);
        self.state.store(ClientState::Idle as u8, Ordering::Relaxed);
        if self.activity.load(Ordering::Relaxed) == Activity::Active as u8 {
            let done = self.query.lock().take();
            drop(done);
        }
        self.set_activity(Activity::Idle);
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    /// Connecting and logging in.
    Login = 0,
    /// In the pool.
    Idle = 1,
    /// Checked out by a client.
    Active = 2,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Login => "login",
            ServerState::Idle => "idle",
            ServerState::Active => "active",
        }
    }
}

/// One server connection, as the admin console shows it.
#[derive(Debug)]
pub struct ServerInfo {
    pub id: u64,
    /// The pool (database name clients use) and user it belongs to.
    pub db: String,
    pub user: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub role: &'static str,
    pub local: Mutex<Option<SocketAddr>>,
    pub remote_pid: AtomicI32,
    /// The server's cancel secret, for forwarding a client's cancel.
    pub secret_key: AtomicI32,
    pub connect_time: SystemTime,
    state: AtomicU8,
    request_time: AtomicU64,
    client: AtomicU64,
    pub application_name: Mutex<String>,
    /// The socket, for keepalive read-back; -1 until connected.
    pub fd: AtomicI32,
    /// TLS version and cipher (None: plaintext).
    pub tls: Mutex<Option<String>>,
    /// Cancel requests being forwarded to this connection right now: it
    /// stays out of the pool until they are done, so that a cancel meant
    /// for one client's query cannot hit the next client's.
    cancels: AtomicU32,
    cancels_done: tokio::sync::Notify,
}

impl ServerInfo {
    /// A cancel for this connection starts. Returns false (and counts
    /// nothing) when `client` no longer holds it: its query is over and
    /// the cancel must not be sent. Paired with [`ServerInfo::settle_cancels`]
    /// on the release side, each checks the other's write (SeqCst), so one
    /// of the two always sees the other.
    pub fn begin_cancel(&self, client: &ClientInfo) -> bool {
        self.cancels.fetch_add(1, Ordering::SeqCst);
        if client.server.load(Ordering::SeqCst) == self.id {
            true
        } else {
            self.end_cancel();
            false
        }
    }

    pub fn end_cancel(&self) {
        if self.cancels.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.cancels_done.notify_waiters();
        }
    }

    /// Before the connection goes back to the pool (the client has been
    /// marked idle already): waits for cancels in flight, at most
    /// `limit`. False if they did not finish.
    pub async fn settle_cancels(&self, limit: Duration) -> bool {
        if self.cancels.load(Ordering::SeqCst) == 0 {
            return true;
        }
        let wait = async {
            loop {
                let done = self.cancels_done.notified();
                if self.cancels.load(Ordering::SeqCst) == 0 {
                    return;
                }
                done.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    pub fn set_state(&self, state: ServerState, client: u64) {
        if state == ServerState::Active {
            self.request_time
                .store(coarse_ms() * 1000, Ordering::Relaxed);
        }
        self.client.store(client, Ordering::Relaxed);
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> ServerState {
        match self.state.load(Ordering::Relaxed) {
            0 => ServerState::Login,
            2 => ServerState::Active,
            _ => ServerState::Idle,
        }
    }
}

/// Every client and server connection of the process.
#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    clients: Mutex<HashMap<u64, Arc<ClientInfo>>>,
    servers: Mutex<HashMap<u64, Arc<ServerInfo>>>,
}

/// Removes an entry from the registry when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    server: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.server {
            self.registry.servers.lock().remove(&self.id);
        } else {
            self.registry.clients.lock().remove(&self.id);
        }
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registration({})", self.id)
    }
}

pub struct NewClient {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub db: Arc<str>,
    pub user: Arc<str>,
    pub admin: bool,
    pub application_name: String,
    pub kill: KillSwitch,
    pub fd: std::os::fd::RawFd,
    /// TLS version and cipher, when the client is on TLS.
    pub tls: Option<String>,
}

/// Aborts one connection's task: set once the task is spawned.
#[derive(Debug, Clone, Default)]
pub struct KillSwitch(Arc<std::sync::OnceLock<AbortHandle>>);

impl KillSwitch {
    pub fn arm(&self, handle: AbortHandle) {
        let _ = self.0.set(handle);
    }

    pub fn kill(&self) {
        if let Some(h) = self.0.get() {
            h.abort();
        }
    }
}

pub struct NewServer {
    pub db: String,
    pub user: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub role: &'static str,
}

impl Registry {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn add_client(self: &Arc<Self>, c: NewClient) -> (Arc<ClientInfo>, Registration) {
        let id = self.next_id();
        let now = now_us();
        let info = Arc::new(ClientInfo {
            id,
            peer: c.peer.into(),
            local: c.local.into(),
            db: c.db,
            user: c.user,
            admin: c.admin,
            application_name: Mutex::new(c.application_name.into()),
            connect_time: now / 1_000_000,
            state: AtomicU8::new(ClientState::Idle as u8),
            request_time: AtomicU64::new(now),
            wait_start: AtomicU64::new(0),
            server: AtomicU64::new(0),
            kill: c.kill,
            fd: c.fd,
            tls: c.tls.map(Into::into),
            xact_count: AtomicU64::new(0),
            query_count: AtomicU64::new(0),
            max_wait_us: AtomicU64::new(0),
            activity: AtomicU8::new(Activity::Idle as u8),
            since_ms: AtomicU64::new(now / 1000),
            query: Mutex::new(None),
        });
        self.clients.lock().insert(id, info.clone());
        (
            info,
            Registration {
                registry: self.clone(),
                id,
                server: false,
            },
        )
    }

    pub fn add_server(self: &Arc<Self>, s: NewServer) -> (Arc<ServerInfo>, Registration) {
        let id = self.next_id();
        let info = Self::server_info(id, s);
        self.servers.lock().insert(id, info.clone());
        (
            info,
            Registration {
                registry: self.clone(),
                id,
                server: true,
            },
        )
    }

    /// Info for a connection that is not listed (a mirror connection).
    pub fn detached_server(s: NewServer) -> Arc<ServerInfo> {
        Self::server_info(0, s)
    }

    fn server_info(id: u64, s: NewServer) -> Arc<ServerInfo> {
        Arc::new(ServerInfo {
            id,
            db: s.db,
            user: s.user,
            host: s.host,
            port: s.port,
            database: s.database,
            role: s.role,
            local: Mutex::new(None),
            remote_pid: AtomicI32::new(0),
            secret_key: AtomicI32::new(0),
            connect_time: SystemTime::now(),
            state: AtomicU8::new(ServerState::Login as u8),
            request_time: AtomicU64::new(now_us()),
            client: AtomicU64::new(0),
            application_name: Mutex::new(String::new()),
            fd: AtomicI32::new(-1),
            tls: Mutex::new(None),
            cancels: AtomicU32::new(0),
            cancels_done: tokio::sync::Notify::new(),
        })
    }

    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.clients.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn servers(&self) -> Vec<Arc<ServerInfo>> {
        let mut v: Vec<_> = self.servers.lock().values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Ends the sessions of clients connected to `db` (all when None).
    pub fn kill_clients(&self, db: Option<&str>) -> usize {
        let clients = self.clients.lock();
        let mut n = 0;
        for c in clients.values() {
            if !c.admin && db.is_none_or(|d| *d == *c.db) {
                c.kill.kill();
                n += 1;
            }
        }
        n
    }

    /// Ends the session of one client (not an admin console's); false
    /// when there is no such client.
    pub fn kill_client(&self, id: u64) -> bool {
        match self.clients.lock().get(&id) {
            Some(c) if !c.admin => {
                c.kill.kill();
                true
            }
            _ => false,
        }
    }

    /// At the start of a shutdown: wakes clients that sit idle between
    /// transactions, by closing the read side of their sockets, so that
    /// they are told and let go instead of waiting for their next query.
    /// (Idle sessions watch nothing but their socket, which keeps the
    /// per-transaction path free of a shutdown check.)
    pub fn wake_idle_clients(&self) {
        // Entries leave the registry before their socket closes, and
        // removal takes this lock: every fd seen here is still theirs.
        let clients = self.clients.lock();
        for c in clients.values() {
            if !c.admin && c.state() == ClientState::Idle {
                // SAFETY: shutdown(2) on a socket the registry entry owns.
                unsafe {
                    libc::shutdown(c.fd, libc::SHUT_RD);
                }
            }
        }
    }

    pub fn server(&self, id: u64) -> Option<Arc<ServerInfo>> {
        self.servers.lock().get(&id).cloned()
    }
}

/// Reads keepalive settings and TCP_INFO of a registered socket.
fn read_socket(fd: std::os::fd::RawFd) -> Option<SocketInfo> {
    if fd < 0 {
        return None;
    }
    // SAFETY: the fd belongs to a connection that is still registered;
    // entries are removed before their socket is closed, and the borrow
    // does not outlive this call.
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    super::net::socket_info(socket2::SockRef::from(&sock)).ok()
}

/// What happened at one reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    pub at_unix: u64,
    /// "SIGHUP", "RELOAD", "autoreload", ...
    pub trigger: String,
    pub ok: bool,
    pub error: Option<String>,
    /// Pools (database names) rebuilt, added or removed.
    pub changed: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::Addr;
    use std::net::SocketAddr;

    /// Every connected client keeps one: with its `Arc` counts it fits
    /// a 256-byte allocation (glibc's chunk of 256, mimalloc's class of
    /// 256 rather than 320), an idle client's memory (issue 13).
    #[test]
    fn client_info_stays_small() {
        let size = std::mem::size_of::<super::ClientInfo>();
        assert!(size + 16 <= 256, "ClientInfo takes {size} bytes");
        assert_eq!(std::mem::size_of::<Addr>(), 20);
    }

    /// The coarse clock is the Unix clock, a tick or so behind: within a
    /// second of the precise one (a generous bound), never more than a
    /// tick behind an earlier read of itself, and still running after
    /// pauses long enough for its thread to park (a stopped clock would
    /// be more than a second behind after the second pause).
    #[test]
    fn the_coarse_clock_tells_unix_milliseconds_and_restarts_after_a_pause() {
        let mut last = 0;
        for round in 0..4 {
            if round > 0 {
                std::thread::sleep(std::time::Duration::from_millis(1200));
            }
            for _ in 0..1000 {
                let coarse = super::coarse_ms();
                let precise = super::now_us() / 1000;
                assert!(
                    coarse.abs_diff(precise) < 1000,
                    "{coarse} against {precise}"
                );
                assert!(coarse + 20 >= last, "{coarse} after {last}");
                last = last.max(coarse);
            }
        }
    }

    /// The compact address gives back what it was given: IPv4, IPv6,
    /// and an IPv4-mapped IPv6 address stays IPv6.
    #[test]
    fn compact_addresses_round_trip() {
        for text in [
            "127.0.0.1:6432",
            "10.1.2.3:1",
            "[::1]:5",
            "[::ffff:10.0.0.1]:7",
            "[fe80::1]:65535",
        ] {
            let a: SocketAddr = text.parse().unwrap();
            assert_eq!(SocketAddr::from(Addr::from(a)), a, "{text}");
        }
    }
}
