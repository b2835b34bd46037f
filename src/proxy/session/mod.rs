//! One client session: startup -> authentication -> idle <-> holding a
//! server -> gone.
//!
//! - `login`: startup packet, authentication, the client's startup
//!   settings.
//! - `pump`: the hot path. While the client holds a server connection,
//!   bytes move both ways in one task; only 5-byte headers are parsed
//!   (plus the few bodies that matter) and whole runs of messages are
//!   forwarded with one write.
//! - `statements`: transaction mode's rewriting of messages that name
//!   prepared statements, the client's unnamed statement, and the
//!   settling of what each injected message did.
//! - `state`: the client's session state (settings, reported parameters)
//!   applied to each server it lands on, read back after transactions that
//!   changed it, and everything else cleaned before another client gets
//!   the server.
//!
//! In transaction mode the server goes back to the pool at the first idle
//! ReadyForQuery that answers everything the client sent.

mod login;
mod pump;
mod route;
mod state;
mod statements;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::config::PoolMode;
use super::pool::{CheckoutError, Lookup, PoolState, PooledServer, UserPool};
use super::protocol::codec::{client_limit, peek_header, FrameError};
use super::protocol::effects::Effects;
use super::protocol::messages::{self, Severity};
use super::protocol::settings::Settings;
use super::protocol::statements::{ClientStatements, Unnamed};
use super::protocol::tracker::{Outcome as TicketOutcome, Tracker};
use super::server::Params;
use super::stats::{ClientInfo, GaugeGuard, KillSwitch, PoolStats, Registration, ServerState};
use super::{buffers, Shared};

/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 16 * 1024;
/// Messages larger than this are forwarded as they arrive instead of
/// being buffered whole.
const STREAM_THRESHOLD: usize = 64 * 1024;
/// Stop reading from one side while this much is waiting to be written
/// to the other.
const HIGH_WATER: usize = 256 * 1024;
/// How long a server connection waits, before going back to the pool,
/// for a cancel its client sent to reach PostgreSQL.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// An accepted connection, handed to its task in one allocation.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub shared: Arc<Shared>,
    /// Ends the session at once (admin KILL, forced shutdown).
    pub kill: KillSwitch,
}

/// Bound on pgcat's own queries: settings, readback, cleanup.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Entry point for an accepted connection: the future of its task.
pub async fn handle(accepted: Box<Accepted>) {
    // Moved out of a temporary: the allocation goes now, not when the
    // session ends.
    let Accepted {
        stream,
        peer,
        shared,
        kill,
    } = *{ accepted };
    // Login runs in its own allocation, freed when it is done: the task
    // of an idle client keeps only the session and its idle wait. A
    // forced shutdown stops it (a logged-in session is aborted instead).
    let login = Box::pin(async move {
        let aborted = shared.aborted.clone();
        let session = aborted
            .run_until_cancelled(login::login(stream, peer, shared, kill))
            .await
            .flatten();
        // A login that registered after the forced end walked the
        // registry ends here.
        session.filter(|_| !aborted.is_cancelled())
    });
    let Some(mut session) = login.await else {
        return;
    };
    let end = session.run().await;
    if session.log_disconnect {
        let peer = session.info.peer();
        tracing::info!(%peer, user = %session.info.user, database = %session.info.db, reason = ?end, "client disconnected");
    }
}

/// One logged-in client in its (pool, user)'s gauge, for as long as the
/// session lives.
struct ClientsGauge(Arc<PoolState>);

impl ClientsGauge {
    fn new(state: Arc<PoolState>) -> Self {
        state
            .stats
            .clients
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ClientsGauge(state)
    }
}

impl Drop for ClientsGauge {
    fn drop(&mut self) {
        self.0
            .stats
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    ClientGone,
    ClientProtocol(String),
    ServerFailed(String),
    /// No server for this request (SQLSTATE, message); the client stays.
    NoServer(&'static str, String),
    PoolRemoved(String),
    Shutdown,
    Stalled(String),
    IdleTimeout,
}

/// What stopped the pump.
#[derive(Debug)]
enum Outcome {
    /// Transaction mode: the server can go back to the pool.
    Released,
    /// Shutting down and the session-mode client is between transactions.
    Shutdown,
    ClientGone,
    ClientProtocol(FrameErrorOrMalformed),
    ServerFailed(io::Error),
    /// The client neither took its results nor finished its message for
    /// `stalled_client_timeout`.
    Stalled,
    /// The client sat idle in a transaction for
    /// `idle_client_in_transaction_timeout`.
    IdleInTransaction,
}

/// What a pump that has nothing to do is waiting for from its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientWait {
    /// Nothing: the server is working, or the transaction is over.
    Nothing,
    /// To take results pgcat has for it.
    Reading,
    /// The rest of a message it started.
    Message,
    /// Its next statement, inside a transaction.
    InTransaction,
}

#[derive(Debug)]
enum FrameErrorOrMalformed {
    Frame(FrameError),
    Malformed(&'static str),
}

impl std::fmt::Display for FrameErrorOrMalformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameErrorOrMalformed::Frame(e) => write!(f, "{e}"),
            FrameErrorOrMalformed::Malformed(what) => write!(f, "malformed {what} message"),
        }
    }
}

/// The state that belongs to the client, not to any server: what it has
/// set and prepared, as a direct connection would keep it. Boxed apart
/// from the IO state so an idle session stays small.
#[derive(Debug, Default)]
struct ClientState {
    /// Session-level settings, as PostgreSQL spells them.
    settings: Arc<Settings>,
    /// The startup settings among them: what a RESET goes back to.
    startup: Arc<Settings>,
    /// The ParameterStatus values the client was told last; shared with
    /// every client that logged in with the same settings until one
    /// changes.
    reported: Arc<Params>,
    /// Transaction mode: named statements by the client's names.
    statements: ClientStatements,
    /// Transaction mode: the client's unnamed statement.
    unnamed: Option<Arc<Unnamed>>,
    /// Checkouts that failed on this connection (PgCat's
    /// checkout_failure_limit counts them; never reset).
    checkout_failures: u64,
    /// Its routing state, once it has any (PgCat's commands, a routed
    /// pool).
    router: Option<Box<super::router::ClientRouter>>,
}

/// What a session needs only while its client is active: IO buffers,
/// the protocol tracker, and the bookkeeping for the server held right
/// now (reset at each checkout). Parked while the client is idle.
#[derive(Debug)]
struct Held {
    /// Bytes read from the client and not yet handled.
    cbuf: BytesMut,
    to_server: BytesMut,
    to_client: BytesMut,
    /// Bytes read from the server and not yet handled.
    sbuf: BytesMut,
    tracker: Tracker,
    /// Bytes of a large client message still to pass through unread.
    client_left: usize,
    /// Same for a large server message.
    server_left: usize,
    /// When the request in flight (messages sent, replies owed) began.
    request_started: Option<Instant>,
    /// When the transaction in progress began.
    xact_started: Option<Instant>,
    /// Counted locally and added to the pool's totals at release.
    counts: Counts,
    /// What each ticketed expectation stands for, oldest first.
    tickets: VecDeque<statements::Ticket>,
    /// Outcomes taken from the tracker, reused between batches.
    outcomes: Vec<TicketOutcome>,
    /// What this checkout did to session state, so far.
    effects: Effects,
    /// Custom setting names seen in query texts, to read back.
    names: Vec<Box<str>>,
    /// The server's unnamed statement once everything sent is answered.
    unnamed_latest: Option<Arc<Unnamed>>,
    /// Tickets still open that change the server's unnamed statement.
    unnamed_pending: usize,
    /// The client's unnamed statement as far as the server has answered
    /// the client's own messages (its Parse, Close and simple queries;
    /// not pgcat's).
    client_unnamed: Option<Arc<Unnamed>>,
    /// Those of the open tickets that are the client's own.
    client_unnamed_pending: usize,
    /// `to_client` holds only replies pgcat wrote itself (a ParseComplete
    /// for a statement the server has) ahead of replies the server owes:
    /// they go out with the server's, in one write, rather than in a
    /// write of their own.
    hold_client: bool,
}

impl Held {
    fn empty() -> Held {
        Held {
            cbuf: BytesMut::new(),
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
            sbuf: BytesMut::new(),
            tracker: Tracker::new(),
            client_left: 0,
            server_left: 0,
            request_started: None,
            xact_started: None,
            counts: Counts::default(),
            tickets: VecDeque::new(),
            outcomes: Vec::new(),
            effects: Effects::NONE,
            names: Vec::new(),
            unnamed_latest: None,
            unnamed_pending: 0,
            client_unnamed: None,
            client_unnamed_pending: 0,
            hold_client: false,
        }
    }

    /// Whether nothing in here differs from [`Held::empty`] but reusable
    /// allocations and what `enter` sets at the next checkout.
    fn is_parkable(&self) -> bool {
        self.cbuf.is_empty()
            && self.to_server.is_empty()
            && self.to_client.is_empty()
            && self.sbuf.is_empty()
            && self.client_left == 0
            && self.server_left == 0
            && self.request_started.is_none()
            && self.xact_started.is_none()
            && self.tracker.is_clear()
            && self.effects.is_empty()
            && self.counts.is_zero()
    }

    /// The four IO buffers.
    fn buffers(&mut self) -> [&mut BytesMut; 4] {
        [
            &mut self.cbuf,
            &mut self.to_server,
            &mut self.to_client,
            &mut self.sbuf,
        ]
    }

    /// Its empty IO buffers back to the thread's free list.
    fn give_buffers(&mut self) {
        for buf in self.buffers() {
            buffers::release(buf);
        }
    }

    /// Back to [`Held::empty`], keeping modest allocations for reuse,
    /// its (empty) IO buffers included. Only for a parkable `Held`.
    fn reset(&mut self) {
        for buf in self.buffers() {
            buffers::rewind(buf);
        }
        self.tracker.reset();
        const KEEP_CAPACITY: usize = 64;
        if self.tickets.capacity() > KEEP_CAPACITY {
            self.tickets = VecDeque::new();
        } else {
            self.tickets.clear();
        }
        if self.outcomes.capacity() > KEEP_CAPACITY {
            self.outcomes = Vec::new();
        } else {
            self.outcomes.clear();
        }
        self.names = Vec::new();
        self.effects = Effects::NONE;
        self.unnamed_latest = None;
        self.unnamed_pending = 0;
        self.client_unnamed = None;
        self.client_unnamed_pending = 0;
        self.hold_client = false;
    }
}

/// What every parked slot reads as.
static NO_HELD: std::sync::LazyLock<Held> = std::sync::LazyLock::new(Held::empty);

thread_local! {
    /// Parked `Held`s of this worker, reset, for the next session that
    /// becomes active here.
    // Boxed on purpose: the boxes are the allocations sessions take.
    #[allow(clippy::vec_box)]
    static FREE_HELD: std::cell::RefCell<Vec<Box<Held>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A session's [`Held`], in an allocation the session gives back to a
/// per-thread free list while its client is idle. A parked slot reads as
/// [`Held::EMPTY`]; writing to it takes an allocation again.
#[derive(Debug, Default)]
struct HeldSlot(Option<Box<Held>>);

impl HeldSlot {
    /// The client went quiet. When the slot holds nothing `enter` would
    /// not set again anyway, all of it goes to the thread's free list,
    /// its empty IO buffers still in it (one push and one pop per
    /// request instead of one per buffer); otherwise only its empty
    /// buffers go back.
    fn idle(&mut self) {
        /// Parked slots kept per thread, each with at most four buffers
        /// of at most `4 * buffers::SIZE`.
        const KEEP: usize = 32;
        let Some(held) = self.0.as_mut() else {
            return;
        };
        if !held.is_parkable() {
            held.give_buffers();
            return;
        }
        if let Some(mut held) = self.0.take() {
            held.reset();
            FREE_HELD.with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < KEEP {
                    f.push(held);
                } else {
                    drop(f);
                    held.give_buffers();
                }
            });
        }
    }
}

impl std::ops::Deref for HeldSlot {
    type Target = Held;
    fn deref(&self) -> &Held {
        self.0.as_deref().unwrap_or(&*NO_HELD)
    }
}

impl std::ops::DerefMut for HeldSlot {
    fn deref_mut(&mut self) -> &mut Held {
        self.0.get_or_insert_with(|| {
            FREE_HELD
                .with(|f| f.borrow_mut().pop())
                .unwrap_or_else(|| Box::new(Held::empty()))
        })
    }
}

struct Session {
    /// First field, so dropped first: the registry entry (whose socket
    /// a shutdown may touch) goes before the socket closes.
    _registered: Registration,
    /// The client's cancel key, valid while the session lives.
    _cancel_key: super::cancel::Registration,
    /// Counts the client in its pool's gauge while it is logged in.
    _logged_in: ClientsGauge,
    log_disconnect: bool,
    client: crate::proxy::tls::Stream,
    mode: PoolMode,
    /// The pool of the server held right now. Not kept between
    /// transactions, so that a pool replaced by a reload is released as
    /// soon as its last transaction ends.
    pool: Option<Arc<UserPool>>,
    /// The pool the last checkout found, with the generation of the pool
    /// set it was found in: saves the name lookup while no reload ran.
    cached_pool: Option<(u64, Arc<UserPool>)>,
    cleanup_server_connections: bool,
    /// Transaction mode in a routed pool: each request is routed on its
    /// own, so the pump holds a pipelined next request until the server
    /// has answered the one before (it may end the transaction).
    route_each: bool,
    /// Bounds from the config, refreshed when the pool changes.
    limits: Limits,
    /// The user pgcat logs in to servers as (a different session user
    /// means the client ran SET SESSION AUTHORIZATION).
    server_user: Arc<str>,
    /// Counters and pause flag of this (pool, user); outlive reloads.
    state: Arc<PoolState>,
    info: Arc<ClientInfo>,
    /// The client's own session state.
    cs: Box<ClientState>,
    /// Bookkeeping for the server held now; parked while idle.
    held: HeldSlot,
    shared: Arc<Shared>,
    /// After an error answered without a server: drop messages up to the
    /// next Sync, as PostgreSQL does after an error.
    skipping: bool,
    /// idle_client_in_transaction_timeout ended the client's transaction;
    /// its next request learns so.
    timed_out: bool,
}

/// The bounds a session works within (see `docs/architecture.md`), kept
/// small: every idle client carries them.
#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    /// `prepared_statements_cache_size` in the low 31 bits,
    /// `cache_unnamed_statements` in the top one (a byte more would take
    /// every idle session into the next allocator size class).
    statement_cache: u32,
    max_prepared_statements: u32,
    max_buffered_message: u32,
    /// `stalled_client_timeout`, ms (0: none).
    stall_ms: u32,
    /// `idle_client_in_transaction_timeout`, ms (0: none).
    idle_in_transaction_ms: u32,
    /// `client_idle_timeout`, ms (0: none).
    client_idle_ms: u32,
}

const CACHE_UNNAMED: u32 = 1 << 31;

fn clamp32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

impl Limits {
    fn new(general: &super::config::General, pool: &super::pool::PoolSettings) -> Limits {
        Limits {
            statement_cache: clamp32(pool.statement_cache_size as u64).min(CACHE_UNNAMED - 1)
                | if pool.cache_unnamed_statements {
                    CACHE_UNNAMED
                } else {
                    0
                },
            max_prepared_statements: clamp32(pool.max_prepared_statements as u64),
            max_buffered_message: clamp32(general.max_buffered_message as u64),
            stall_ms: clamp32(general.stalled_client_timeout),
            idle_in_transaction_ms: clamp32(
                pool.idle_client_in_transaction_timeout
                    .map_or(0, |d| d.as_millis() as u64),
            ),
            client_idle_ms: clamp32(general.client_idle_timeout),
        }
    }

    fn ms(v: u32) -> Option<Duration> {
        (v > 0).then(|| Duration::from_millis(v as u64))
    }

    fn stall(&self) -> Option<Duration> {
        Self::ms(self.stall_ms)
    }

    fn idle_in_transaction(&self) -> Option<Duration> {
        Self::ms(self.idle_in_transaction_ms)
    }

    fn client_idle(&self) -> Option<Duration> {
        Self::ms(self.client_idle_ms)
    }

    fn statement_cache_size(&self) -> usize {
        (self.statement_cache & !CACHE_UNNAMED) as usize
    }

    fn cache_unnamed(&self) -> bool {
        self.statement_cache & CACHE_UNNAMED != 0
    }

    fn max_prepared_statements(&self) -> usize {
        self.max_prepared_statements as usize
    }

    fn max_buffered_message(&self) -> usize {
        self.max_buffered_message as usize
    }
}

/// Per-session counts, added to the pool's totals once per transaction.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    queries: u64,
    xacts: u64,
    xact_time_us: u64,
    query_time_us: u64,
    client_parses: u64,
    server_parses: u64,
    binds: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Counts {
    fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

impl Session {
    /// Serves the client until it leaves. Between transactions (and
    /// before the first query in session mode) no server is held; a
    /// session-mode pump only returns when the session ends.
    async fn run(&mut self) -> SessionEnd {
        loop {
            if self.held.cbuf.is_empty() {
                // A shutdown wakes idle sessions by closing the read side
                // of their sockets (see Registry::wake_idle_clients).
                if self.shared.is_shutting_down() {
                    Box::pin(self.fatal("57P01", "pgcat is shutting down")).await;
                    return SessionEnd::Shutdown;
                }
                // Idle: hold no buffers while the client is quiet, nor
                // the bookkeeping of a server it does not hold.
                // What was counted since the pump (the last flush to the
                // client, answers pgcat gave itself) goes out first.
                if !self.held.counts.is_zero() {
                    self.flush_counters();
                }
                self.held.idle();
                // TLS: decrypted bytes may wait in rustls, not the socket.
                let ready = if self.client.has_buffered() {
                    Ok(())
                } else {
                    // Polled readiness keeps no waiter in the future: the
                    // socket's own reader slot holds the waker.
                    let tcp = self.client.tcp();
                    let readable = std::future::poll_fn(|cx| tcp.poll_read_ready(cx));
                    // The timer, when there is one, and the goodbye live
                    // in their own allocations: the task of an idle client
                    // keeps only the readiness wait.
                    match self.limits.client_idle() {
                        None => readable.await,
                        Some(limit) => {
                            match Box::pin(tokio::time::timeout(limit, readable)).await {
                                Ok(r) => r,
                                Err(_) => {
                                    Box::pin(self.fatal(
                                    "57P05",
                                    "terminating connection due to idle-session timeout (client_idle_timeout)",
                                ))
                                .await;
                                    return SessionEnd::IdleTimeout;
                                }
                            }
                        }
                    }
                };
                if ready.is_err() {
                    return SessionEnd::ClientGone;
                }
                if self.shared.is_shutting_down() {
                    continue;
                }
                // The request's first bytes are read here, so that the
                // request's own allocation below is made once per
                // request, not once more for this read.
                if !self.read_client().await {
                    return SessionEnd::ClientGone;
                }
            }
            // Everything a request needs beyond the wait above runs in its
            // own allocation, so an idle session holds only that wait.
            if let Some(end) = Box::pin(self.serve()).await {
                return end;
            }
        }
    }

    /// Works on what the client sent: answers it locally, or checks out a
    /// server and pumps until the transaction (transaction mode) or the
    /// session (session mode) ends. Some(end) ends the session.
    async fn serve(&mut self) -> Option<SessionEnd> {
        if !self.first_message_ready() {
            if !self.read_client().await {
                return Some(SessionEnd::ClientGone);
            }
            return None;
        }
        match peek_header(&self.held.cbuf, client_limit) {
            Err(e) => {
                let msg = format!("invalid message from client: {e}");
                self.fatal("08P01", &msg).await;
                return Some(SessionEnd::ClientProtocol(msg));
            }
            Ok(Some(h)) if h.tag == b'X' => return Some(SessionEnd::ClientGone),
            _ => {}
        }
        if self.timed_out {
            // What the client sends after its transaction was ended by
            // idle_client_in_transaction_timeout gets PgCat's error.
            self.timed_out = false;
            self.error_response("58000", "idle transaction timeout");
            self.skipping = true;
        }
        if self.skipping {
            if let Err(e) = self.skip_until_sync().await {
                return Some(e);
            }
            return None;
        }

        // A whole simple query may be answered here: one of PgCat's
        // routing commands, or by its plugins. Pools without plugins pay
        // only the peek.
        if self.head_is_whole_query() && (self.may_be_router_command() || self.may_have_plugins()) {
            let pool = match self.current_pool().await {
                Ok(p) => p,
                Err(end) => return Some(end),
            };
            let answered = (self.may_be_router_command() && self.router_command(&pool))
                || self.plugins_answer(&pool);
            if answered {
                if self.flush_client().await.is_err() {
                    return Some(SessionEnd::ClientGone);
                }
                return None;
            }
        }

        if self.mode == PoolMode::Transaction && self.prepare_locally() {
            if self.flush_client().await.is_err() {
                return Some(SessionEnd::ClientGone);
            }
            return None;
        }

        let mut server = match self.checkout().await {
            Ok(s) => s,
            Err(SessionEnd::NoServer(code, msg)) => {
                // The client may retry: answer this request with an
                // error and keep the session, up to the pool's
                // checkout_failure_limit (PgCat's).
                self.error_response(code, &msg);
                self.cs.checkout_failures += 1;
                let limit = self
                    .shared
                    .config
                    .load()
                    .pools
                    .get(&*self.info.db)
                    .and_then(|p| p.checkout_failure_limit);
                if let Some(limit) = limit.filter(|&l| self.cs.checkout_failures >= l) {
                    messages::ready_for_query(&mut self.held.to_client, b'I');
                    let _ = self.flush_client().await;
                    let msg = format!(
                        "checkout failure limit reached ({} / {limit})",
                        self.cs.checkout_failures
                    );
                    self.fatal("58000", &msg).await;
                    return Some(SessionEnd::NoServer("58000", msg));
                }
                self.skipping = true;
                if let Err(e) = self.skip_until_sync().await {
                    return Some(e);
                }
                return None;
            }
            Err(end) => return Some(end),
        };

        let state = self.state.clone();
        let _active = GaugeGuard::new(&state.stats.clients_active);
        let outcome = self.pump(&mut server).await;
        self.flush_counters();
        match outcome {
            Outcome::Released => {
                self.info.set_idle();
                self.await_cancels(&mut server).await;
                server.last_used = super::stats::coarse_ms();
                // The request ended cleanly: the connection may go back.
                server.broken = false;
                self.pool = None;
                if self.held.effects.is_empty() {
                    drop(server);
                    if self.flush_client().await.is_err() {
                        return Some(SessionEnd::ClientGone);
                    }
                } else {
                    // The client gets its answer first; then pgcat reads
                    // back or cleans what the transaction changed before
                    // anyone else gets this server.
                    let flushed = self.flush_client().await;
                    Box::pin(self.settle_session_state(&mut server)).await;
                    drop(server);
                    if flushed.is_err() {
                        return Some(SessionEnd::ClientGone);
                    }
                }
            }
            outcome => {
                // Everything but a clean release is rare: kept out of
                // every request's future.
                return Box::pin(self.after_pump(server, outcome)).await;
            }
        }
        None
    }

    /// The end of a pump that did not release its server cleanly.
    async fn after_pump(
        &mut self,
        mut server: PooledServer,
        outcome: Outcome,
    ) -> Option<SessionEnd> {
        match outcome {
            // Not reached (serve handles it); cleaning is the safe answer.
            Outcome::Released => self.give_back(server).await,
            Outcome::ClientGone => {
                return Some(self.end(server, SessionEnd::ClientGone).await);
            }
            Outcome::Shutdown => {
                let _ = self.flush_client().await;
                self.fatal("57P01", "pgcat is shutting down").await;
                return Some(self.end(server, SessionEnd::Shutdown).await);
            }
            Outcome::ClientProtocol(e) => {
                let msg = format!("invalid message from client: {e}");
                self.fatal("08P01", &msg).await;
                return Some(self.end(server, SessionEnd::ClientProtocol(msg)).await);
            }
            Outcome::Stalled => {
                let msg = format!(
                    "client stalled with a server connection for {} ms (stalled_client_timeout)",
                    self.limits.stall().unwrap_or_default().as_millis()
                );
                tracing::warn!(db = %self.info.db, user = %self.info.user, peer = %self.info.peer(), "{msg}");
                self.fatal("08006", &msg).await;
                return Some(self.end(server, SessionEnd::Stalled(msg)).await);
            }
            Outcome::IdleInTransaction => {
                // PgCat's behaviour: the transaction is rolled back and the
                // server released; the client stays, and its next request
                // gets the error.
                tracing::info!(db = %self.info.db, user = %self.info.user, peer = %self.info.peer(), "idle transaction timeout");
                self.give_back(server).await;
                self.timed_out = true;
                if self.flush_client().await.is_err() {
                    return Some(SessionEnd::ClientGone);
                }
            }
            Outcome::ServerFailed(e) => {
                server.broken = true;
                self.info.set_idle();
                drop(server);
                self.pool = None;
                let msg = format!("server connection lost: {e}");
                tracing::warn!(db = %self.info.db, user = %self.info.user, error = %e, "server connection failed while in use");
                let _ = self.flush_client().await;
                self.fatal("08006", &msg).await;
                return Some(SessionEnd::ServerFailed(msg));
            }
        }
        None
    }

    async fn checkout(&mut self) -> Result<PooledServer, SessionEnd> {
        loop {
            let pool = self.current_pool().await?;
            let (shard, role) = self.route(&pool.settings.router);
            match self.checkout_from(pool, shard, role).await {
                Err(CheckoutError::Retired) => continue,
                Err(e) => {
                    self.info.set_idle();
                    // PgCat answers every failed checkout with 58000.
                    return Err(SessionEnd::NoServer("58000", e.to_string()));
                }
                Ok(Ok(server)) => return Ok(server),
                Ok(Err(end)) => return Err(end),
            }
        }
    }

    /// The pool that is current now: a reload may have replaced the one
    /// found last time. The set's generation says whether it still is.
    /// A pool removed from the config ends the session.
    /// Whether the pool may answer queries with its plugins: false only
    /// when the pool in hand is current and has none that look at queries.
    fn may_have_plugins(&self) -> bool {
        let current = self
            .shared
            .pools_generation
            .load(std::sync::atomic::Ordering::Acquire);
        match &self.cached_pool {
            Some((generation, p)) if *generation == current => p
                .settings
                .plugins
                .as_ref()
                .is_some_and(|p| p.inspects_queries()),
            _ => true,
        }
    }

    async fn current_pool(&mut self) -> Result<Arc<UserPool>, SessionEnd> {
        let current = self
            .shared
            .pools_generation
            .load(std::sync::atomic::Ordering::Acquire);
        if let Some((generation, p)) = self.cached_pool.as_ref() {
            if *generation == current {
                return Ok(p.clone());
            }
        }
        let set = self.shared.pools.load();
        match set.lookup(&self.info.db, &self.info.user) {
            Lookup::Found(p) => {
                // A reload ran: the pool or the limits may have changed.
                self.adopt_pool_settings(&p);
                self.cached_pool = Some((set.generation, p.clone()));
                Ok(p)
            }
            _ => {
                let msg = format!(
                    "pool for database \"{}\" user \"{}\" was removed from the config",
                    self.info.db, self.info.user
                );
                Box::pin(self.fatal("08006", &msg)).await;
                Err(SessionEnd::PoolRemoved(msg))
            }
        }
    }

    /// One checkout from `pool`, of `role` in `shard`. The outer error is
    /// the pool's; the inner one ends the session.
    async fn checkout_from(
        &mut self,
        pool: Arc<UserPool>,
        shard: Option<usize>,
        role: super::router::RoleRequest,
    ) -> Result<Result<PooledServer, SessionEnd>, CheckoutError> {
        self.info.set_waiting();
        let mut server = {
            let _waiting = GaugeGuard::new(&self.state.stats.clients_waiting);
            pool.checkout_to(shard, role).await?
        };
        // Until the transaction ends cleanly the connection counts as
        // broken: if this session is dropped mid-request (KILL, forced
        // shutdown), bb8 closes it instead of handing it to someone else.
        server.broken = true;
        server.info.set_state(ServerState::Active, self.info.id);
        self.info.set_active(server.info.id);
        self.route_each = self.mode == PoolMode::Transaction && pool.settings.router.active();
        self.pool = Some(pool);
        self.held.tracker.reset();
        if let Err(e) = self.enter(&mut server).await {
            let msg = format!("could not apply client settings on the server: {e}");
            self.info.set_idle();
            Box::pin(self.fatal("08006", &msg)).await;
            return Ok(Err(SessionEnd::ServerFailed(msg)));
        }
        Ok(Ok(server))
    }

    fn adopt_pool_settings(&mut self, p: &UserPool) {
        self.mode = p.settings.mode;
        self.cleanup_server_connections = p.settings.cleanup_server_connections;
        self.limits = Limits::new(&self.shared.config.load().general, &p.settings);
        self.server_user = p.settings.server_user.clone();
        self.state = p.state.clone();
    }

    /// The client has been marked idle: cancels it sent for this server
    /// that are still on their way finish before anyone else gets it (or
    /// it is closed).
    async fn await_cancels(&mut self, server: &mut PooledServer) {
        if !server.info.settle_cancels(CANCEL_WAIT).await {
            server.broken = true;
        }
    }

    /// Ends the session, bringing the server it held back to a clean
    /// state (or marking it broken) before it returns to the pool.
    async fn end(&mut self, server: PooledServer, end: SessionEnd) -> SessionEnd {
        self.give_back(server).await;
        end
    }

    /// Cleans the server (or marks it broken), waits for cancels on their
    /// way to it, and lets it go back to the pool.
    async fn give_back(&mut self, mut server: PooledServer) {
        self.cleanup(&mut server).await;
        server.last_used = super::stats::coarse_ms();
        self.info.set_idle();
        self.await_cancels(&mut server).await;
        drop(server);
        self.pool = None;
    }

    /// After an error answered without a server: drop the client's
    /// messages up to the next Sync (or a simple Query), then report
    /// ReadyForQuery. Reads as it goes, so a large message being skipped
    /// is consumed as it arrives.
    async fn skip_until_sync(&mut self) -> Result<(), SessionEnd> {
        loop {
            let h = match peek_header(&self.held.cbuf, client_limit) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Err(SessionEnd::ClientProtocol(e.to_string())),
            };
            if self.held.cbuf.len() < h.total {
                // Drop what has arrived of it; the rest is dropped as it
                // comes, never re-examined.
                self.held.client_left = h.total - self.held.cbuf.len();
                self.held.cbuf.clear();
                while self.held.client_left > 0 {
                    self.held.cbuf.clear();
                    if !self.read_client().await {
                        return Err(SessionEnd::ClientGone);
                    }
                    let n = self.held.client_left.min(self.held.cbuf.len());
                    self.held.client_left -= n;
                    let _ = self.held.cbuf.split_to(n);
                }
                if matches!(h.tag, b'S' | b'Q' | b'F') {
                    self.skipping = false;
                    messages::ready_for_query(&mut self.held.to_client, b'I');
                    break;
                }
                continue;
            }
            let _ = self.held.cbuf.split_to(h.total);
            match h.tag {
                b'X' => return Err(SessionEnd::ClientGone),
                b'S' | b'Q' | b'F' => {
                    self.skipping = false;
                    messages::ready_for_query(&mut self.held.to_client, b'I');
                    break;
                }
                _ => {}
            }
        }
        if self.flush_client().await.is_err() {
            return Err(SessionEnd::ClientGone);
        }
        Ok(())
    }

    fn error_response(&mut self, code: &str, message: &str) {
        messages::error_response(&mut self.held.to_client, Severity::Error, code, message);
    }

    /// Says goodbye with a FATAL error; a client that does not read gets
    /// one second, not forever.
    async fn fatal(&mut self, code: &str, message: &str) {
        messages::error_response(&mut self.held.to_client, Severity::Fatal, code, message);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.flush_client().await;
            let _ = self.client.shutdown().await;
        })
        .await;
        self.held.to_client.clear();
    }

    async fn flush_client(&mut self) -> io::Result<()> {
        if !self.held.to_client.is_empty() {
            self.held.counts.bytes_out += self.held.to_client.len() as u64;
            let r = self.client.write_all(&self.held.to_client).await;
            self.held.to_client.clear();
            r?;
        }
        if self.held.to_client.capacity() > HIGH_WATER {
            self.held.to_client = BytesMut::new();
        }
        Ok(())
    }

    fn flush_counters(&mut self) {
        let s = &self.state.stats;
        let c = std::mem::take(&mut self.held.counts);
        PoolStats::add(&self.info.xact_count, c.xacts);
        PoolStats::add(&self.info.query_count, c.queries);
        PoolStats::add(&s.xact_count, c.xacts);
        PoolStats::add(&s.xact_time_us, c.xact_time_us);
        PoolStats::add(&s.query_count, c.queries);
        PoolStats::add(&s.query_time_us, c.query_time_us);
        PoolStats::add(&s.client_parse_count, c.client_parses);
        PoolStats::add(&s.server_parse_count, c.server_parses);
        PoolStats::add(&s.bind_count, c.binds);
        PoolStats::add(&s.bytes_received, c.bytes_in);
        PoolStats::add(&s.bytes_sent, c.bytes_out);
    }

    /// A ReadyForQuery arrived: close the request (and the transaction,
    /// when the server is idle again) for the statistics.
    fn on_ready_for_query(&mut self) {
        if self.held.tracker.awaiting_replies() {
            return;
        }
        let now = Instant::now();
        let mut request = None;
        if let Some(t) = self.held.request_started.take() {
            let us = now.duration_since(t).as_micros() as u64;
            request = Some((t, us));
            self.held.counts.query_time_us += us;
            self.state.stats.query_latency.record(us);
            self.info.end_query(self.held.tracker.status() != b'I');
        }
        if self.held.tracker.status() == b'I' {
            if let Some(t) = self.held.xact_started.take() {
                self.held.counts.xacts += 1;
                // A transaction of one request lasted as long as it.
                self.held.counts.xact_time_us += match request {
                    Some((start, us)) if start == t => us,
                    _ => now.duration_since(t).as_micros() as u64,
                };
            }
            // Session mode keeps the server for hours: publish per
            // transaction rather than per checkout.
            if self.mode == PoolMode::Session {
                self.flush_counters();
            }
        }
    }

    /// A message that expects a reply went to the server.
    fn on_request(&mut self) {
        if self.held.request_started.is_none() {
            let now = Instant::now();
            self.held.request_started = Some(now);
            if self.held.xact_started.is_none() {
                self.held.xact_started = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod idle_footprint {
    /// An idle client gives its IO buffers and server bookkeeping back,
    /// unless something in them is still owed.
    #[test]
    fn a_quiet_slot_parks_only_when_nothing_is_owed() {
        use super::HeldSlot;
        let mut slot = HeldSlot::default();
        // Parked: reads as empty, and idling it again is a no-op.
        assert!(slot.0.is_none());
        assert!(slot.cbuf.is_empty() && slot.tracker.is_clear());
        slot.idle();
        assert!(slot.0.is_none());
        // Used and left clean: parked again.
        slot.to_client.extend_from_slice(b"reply");
        assert!(slot.0.is_some());
        slot.to_client.clear();
        slot.idle();
        assert!(slot.0.is_none());
        // Bytes still unsent, a large message half passed, or counts not
        // yet published: kept.
        slot.to_server.extend_from_slice(b"Q");
        slot.idle();
        assert!(slot.0.is_some() && slot.to_server.len() == 1);
        slot.to_server.clear();
        slot.client_left = 10;
        slot.idle();
        assert!(slot.0.is_some());
        slot.client_left = 0;
        slot.counts.bytes_out = 5;
        slot.idle();
        assert!(slot.0.is_some());
        slot.counts = Default::default();
        slot.idle();
        assert!(slot.0.is_none());
    }

    /// What an idle client's task holds is the session plus its wait:
    /// login and request states live in their own, short-lived
    /// allocations. This guards against a change folding them back in.
    #[tokio::test]
    async fn an_idle_session_task_and_session_stay_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (config, _) = crate::proxy::config::Config::parse(
            "[general]\nhost = \"127.0.0.1\"\nport = 0\nadmin_username = \"a\"\nadmin_password = \"a\"\n",
            "t",
        )
        .unwrap();
        let proxy = crate::proxy::Proxy::start(config, std::future::pending())
            .await
            .unwrap();
        let task = super::handle(Box::new(super::Accepted {
            stream,
            peer: "127.0.0.1:1".parse().unwrap(),
            shared: proxy.shared().clone(),
            kill: Default::default(),
        }));
        let size = std::mem::size_of_val(&task);
        // Held by an idle client: its task's future (the rest is parked
        // or in the session's own allocation) and the session.
        assert!(size <= 320, "a client task's future takes {size} bytes");
        let session = std::mem::size_of::<super::Session>();
        // 192 in a release build: an allocator size class (mimalloc's
        // 192, glibc's 208-byte chunk); database and user names live in
        // `info` only. A debug build lays it out in 200.
        let limit = if cfg!(debug_assertions) { 200 } else { 192 };
        assert!(session <= limit, "a session takes {session} bytes");
        drop(task);
        proxy.stop().await;
    }
}
