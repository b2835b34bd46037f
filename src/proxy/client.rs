//! One client session: startup -> authentication -> idle <-> holding a
//! server -> gone.
//!
//! While the client holds a server connection, bytes move both ways in
//! one task (`pump`): reads go into reusable buffers, only 5-byte headers
//! are parsed (plus the few bodies that matter: statement names in
//! transaction mode, ReadyForQuery, ParameterStatus), and whole runs of
//! messages are forwarded with one write. In transaction mode the server
//! goes back to the pool at the first idle ReadyForQuery that answers
//! everything the client sent.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use socket2::SockRef;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::auth::{self, ClientAuthError};
use super::config::PoolMode;
use super::net::SocketSettings;
use super::pool::{CheckoutError, Lookup, PoolState, PooledServer, UserPool};
use super::protocol::codec::{client_limit, peek_header, FrameError, HEADER_LEN, MAX_MESSAGE_LEN};
use super::protocol::messages::{self, read_cstr, Severity, StartupPacket};
use super::protocol::tracker::{Action, Expect, Synthetic, Tracker};
use super::server::{quote_literal, tracked_digest, tracked_param, Params, Server, ServerError};
use super::stats::{
    ClientInfo, GaugeGuard, KillSwitch, NewClient, PoolStats, Registration, ServerState,
};
use super::wire;
use super::{buffers, Shared};

/// A client must finish startup and authentication within this time.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 16 * 1024;
/// Messages larger than this are forwarded as they arrive instead of
/// being buffered whole.
const STREAM_THRESHOLD: usize = 64 * 1024;
/// Stop reading from one side while this much is waiting to be written
/// to the other.
const HIGH_WATER: usize = 256 * 1024;
/// Bound on pgcat's own queries during cleanup.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Entry point for an accepted connection. `kill` ends the session at
/// once (admin KILL, forced shutdown).
pub async fn handle(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, kill: KillSwitch) {
    // Login runs in its own allocation, freed when it is done: the task
    // of an idle client keeps only the session and its idle wait.
    let Some(mut session) = Box::pin(login(stream, peer, shared, kill)).await else {
        return;
    };
    let end = session.run().await;
    if session.log_disconnect {
        tracing::info!(%peer, user = %session.user, database = %session.db, reason = ?end, "client disconnected");
    }
}

/// Startup and authentication; returns the session of a logged-in client.
async fn login(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    kill: KillSwitch,
) -> Option<Session> {
    let config = shared.config.load_full();
    let socket = SocketSettings::from_general(&config.general);
    if let Err(e) = socket.apply(SockRef::from(&stream)) {
        tracing::debug!(%peer, error = %e, "could not set client socket options");
    }
    let mut buf = BytesMut::new();
    let startup = tokio::time::timeout(
        LOGIN_TIMEOUT,
        startup(&mut stream, &mut buf, &shared, &socket),
    )
    .await;
    let params = match startup {
        Ok(Ok(Some(params))) => params,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "client startup failed");
            return None;
        }
        Err(_) => {
            refuse(&mut stream, "08006", "timeout during startup").await;
            return None;
        }
    };
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone());
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        refuse(
            &mut stream,
            "28000",
            "no PostgreSQL user name specified in startup packet",
        )
        .await;
        return None;
    };
    let database = params
        .iter()
        .find(|(k, _)| k == "database")
        .map(|(_, v)| v.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if params
        .iter()
        .any(|(k, v)| k == "replication" && v != "false" && v != "0")
    {
        refuse(
            &mut stream,
            "08P01",
            "pgcat does not support replication connections",
        )
        .await;
        return None;
    }
    if config.general.log_client_connections {
        tracing::info!(%peer, %user, %database, "client connected");
    }
    let application_name = params
        .iter()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if database == "pgcat" || database == "pgbouncer" {
        // Admin sessions do not hold up a shutdown's drain: they run
        // apart and end when the proxy does.
        let (switch, entry) = shared.tasks.enroll();
        let login = super::admin::AdminLogin {
            peer,
            user,
            database,
            application_name,
            kill: switch.clone(),
        };
        let tasks = shared.admin_tasks.clone();
        let task = tasks.spawn(async move {
            let _running = entry;
            super::admin::serve(stream, buf, login, shared).await;
        });
        switch.arm(task.abort_handle());
        return None;
    }
    if shared.is_shutting_down() {
        refuse(&mut stream, "57P01", "pgcat is shutting down").await;
        return None;
    }
    let pool = match shared.pools.load().lookup(&database, &user) {
        Lookup::Found(p) => p,
        Lookup::NoDatabase => {
            refuse(
                &mut stream,
                "3D000",
                &format!("database \"{database}\" does not exist"),
            )
            .await;
            return None;
        }
        Lookup::NoUser => {
            refuse(
                &mut stream,
                "28000",
                &format!("role \"{user}\" does not exist"),
            )
            .await;
            return None;
        }
    };
    let auth = tokio::time::timeout(
        LOGIN_TIMEOUT,
        auth::authenticate_client(&mut stream, &mut buf, &user, &pool.settings.auth),
    )
    .await;
    match auth {
        Ok(Ok(())) => {}
        Ok(Err(ClientAuthError::Io(_))) => return None,
        Ok(Err(e)) => {
            tracing::info!(%peer, %user, %database, error = %e, "client authentication failed");
            refuse(&mut stream, e.sqlstate(), &e.to_string()).await;
            return None;
        }
        Err(_) => {
            refuse(&mut stream, "08006", "timeout during authentication").await;
            return None;
        }
    }
    let mut pool = pool;
    let server_params = loop {
        match pool.server_params().await {
            Ok(p) => break p,
            Err(CheckoutError::Retired) => {
                // Replaced by a reload during the login: use the new one.
                match shared.pools.load().lookup(&database, &user) {
                    Lookup::Found(p) => pool = p,
                    _ => {
                        refuse(
                            &mut stream,
                            "08006",
                            "pgcat: the pool was removed by a reload",
                        )
                        .await;
                        return None;
                    }
                }
            }
            Err(e) => {
                refuse(&mut stream, "08006", &format!("pgcat: {e}")).await;
                return None;
            }
        }
    };

    // The client's view of the tracked settings: the server's defaults,
    // overridden by what the client asked for at startup.
    let mut client_params = Params::default();
    for (k, v) in &server_params.0 {
        if tracked_param(k).is_some() {
            client_params.set(k, v);
        }
    }
    for (k, v) in &params {
        if let Some(name) = tracked_param(k) {
            client_params.set(name, v);
        }
    }

    let (info, registered) = shared.registry.add_client(NewClient {
        peer,
        local: stream.local_addr().unwrap_or(peer),
        db: database.clone(),
        user: user.clone(),
        admin: false,
        application_name: client_params
            .get("application_name")
            .unwrap_or_default()
            .to_string(),
        kill,
        fd: {
            use std::os::fd::AsRawFd;
            stream.as_raw_fd()
        },
    });
    let registration = shared.cancel.register(info.clone());
    let mut out = BytesMut::with_capacity(512);
    messages::auth_ok(&mut out);
    for (k, v) in &server_params.0 {
        let v = client_params.get(k).unwrap_or(v);
        messages::parameter_status(&mut out, k, v);
    }
    messages::backend_key_data(&mut out, registration.pid, registration.secret);
    messages::ready_for_query(&mut out, b'I');
    if stream.write_all(&out).await.is_err() {
        return None;
    }
    let state = pool.state.clone();
    PoolStats::add(&state.stats.client_logins, 1);
    let session = Session {
        _registered: registered,
        _cancel_key: registration,
        _logged_in: ClientsGauge::new(state.clone()),
        log_disconnect: config.general.log_client_disconnections,
        client: stream,
        cbuf: buf,
        to_server: BytesMut::new(),
        to_client: BytesMut::new(),
        sbuf: BytesMut::new(),
        tracker: Tracker::new(),
        client_left: 0,
        server_left: 0,
        mode: pool.settings.mode,
        db: database.clone(),
        user: user.clone(),
        pool: None,
        cached_pool: None,
        cleanup_server_connections: pool.settings.cleanup_server_connections,
        statement_cache_size: pool.settings.statement_cache_size,
        state,
        info,
        params: client_params,
        tracked: None,
        statements: HashMap::new(),
        shared: shared.clone(),
        skipping: false,
        counts: Counts::default(),
        request_started: None,
        xact_started: None,
    };
    Some(session)
}

/// Reads the startup packet, answering SSLRequest/GSSENCRequest with `N`
/// and handling CancelRequest. Returns the startup parameters, or None
/// when the connection is done.
async fn startup(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    shared: &Shared,
    socket: &SocketSettings,
) -> io::Result<Option<Vec<(String, String)>>> {
    loop {
        let packet = match wire::read_startup(stream, buf).await {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                refuse(
                    stream,
                    "08P01",
                    &format!(
                        "invalid startup packet: {}",
                        e.into_inner().map(|e| e.to_string()).unwrap_or_default()
                    ),
                )
                .await;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        match messages::parse_startup(&packet) {
            Ok(StartupPacket::SslRequest) | Ok(StartupPacket::GssEncRequest) => {
                stream.write_all(b"N").await?;
            }
            Ok(StartupPacket::Cancel { pid, secret }) => {
                shared
                    .cancel
                    .cancel(pid, secret, &shared.registry, socket)
                    .await;
                return Ok(None);
            }
            Ok(StartupPacket::Unsupported(code)) => {
                refuse(
                    stream,
                    "0A000",
                    &format!(
                        "unsupported frontend protocol {}.{}: server supports 3.0",
                        code >> 16,
                        code & 0xffff
                    ),
                )
                .await;
                return Ok(None);
            }
            Ok(StartupPacket::Startup { minor, params }) => {
                let unknown: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.clone())
                    .collect();
                if minor > 0 || !unknown.is_empty() {
                    let mut out = BytesMut::new();
                    messages::negotiate_protocol_version(&mut out, 0, &unknown);
                    stream.write_all(&out).await?;
                }
                return Ok(Some(params));
            }
            Err(e) => {
                refuse(stream, "08P01", &format!("invalid startup packet: {e}")).await;
                return Ok(None);
            }
        }
    }
}

/// Sends a FATAL error and gives up on the connection.
async fn refuse(stream: &mut TcpStream, code: &str, message: &str) {
    let mut out = BytesMut::new();
    auth::refuse(&mut out, code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// A statement a client prepared under its own name, as pgcat prepares it
/// on servers: under a name derived from its text and parameter types, so
/// every client preparing the same statement shares it on a server.
#[derive(Debug)]
struct Prepared {
    hash: u64,
    /// The whole Parse message with the server-side name.
    parse: Bytes,
}

impl Prepared {
    fn new(hash: u64, query: &[u8], param_types: &[u8]) -> Self {
        let mut parse = BytesMut::with_capacity(query.len() + param_types.len() + 32);
        messages::parse(&mut parse, &statement_name(hash), query, param_types);
        Prepared {
            hash,
            parse: parse.freeze(),
        }
    }
}

/// Identifies a statement by its text and parameter types (the body of a
/// Parse after the statement name).
fn statement_hash(text_and_types: &[u8]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    text_and_types.hash(&mut hasher);
    hasher.finish()
}

fn statement_name(hash: u64) -> String {
    format!("pgcat_{hash:016x}")
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
    NoServer(String),
    PoolRemoved(String),
    Shutdown,
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

struct Session {
    /// First field, so dropped first: the registry entry (whose socket
    /// a shutdown may touch) goes before the socket closes.
    _registered: Registration,
    /// The client's cancel key, valid while the session lives.
    _cancel_key: super::cancel::Registration,
    /// Counts the client in its pool's gauge while it is logged in.
    _logged_in: ClientsGauge,
    log_disconnect: bool,
    client: TcpStream,
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
    mode: PoolMode,
    db: String,
    user: String,
    /// The pool of the server held right now. Not kept between
    /// transactions, so that a pool replaced by a reload is released as
    /// soon as its last transaction ends.
    pool: Option<Arc<UserPool>>,
    /// The pool the last checkout found, with the generation of the pool
    /// set it was found in: saves the name lookup while no reload ran.
    cached_pool: Option<(u64, Arc<UserPool>)>,
    cleanup_server_connections: bool,
    statement_cache_size: usize,
    /// Counters and pause flag of this (pool, user); outlive reloads.
    state: Arc<PoolState>,
    info: Arc<ClientInfo>,
    /// The tracked settings as this client last set or saw them.
    params: Params,
    /// Their digest, computed when first needed after they changed.
    tracked: Option<u64>,
    /// Transaction mode: statements by the client's name.
    statements: HashMap<Vec<u8>, Arc<Prepared>>,
    shared: Arc<Shared>,
    /// After a failed checkout: drop messages up to the next Sync, as
    /// PostgreSQL does after an error.
    skipping: bool,
    /// Counted locally and added to the pool's totals at release.
    counts: Counts,
    /// When the request in flight (messages sent, replies owed) began.
    request_started: Option<Instant>,
    /// When the transaction in progress began.
    xact_started: Option<Instant>,
}

/// Per-session counts, added to the pool's totals once per transaction.
#[derive(Debug, Default)]
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

impl Session {
    /// Serves the client until it leaves. Between transactions (and
    /// before the first query in session mode) no server is held; a
    /// session-mode pump only returns when the session ends.
    async fn run(&mut self) -> SessionEnd {
        loop {
            if self.cbuf.is_empty() {
                // A shutdown wakes idle sessions by closing the read side
                // of their sockets (see Registry::wake_idle_clients).
                if self.shared.is_shutting_down() {
                    self.fatal("57P01", "pgcat is shutting down").await;
                    return SessionEnd::Shutdown;
                }
                // Idle: hold no buffers while the client is quiet.
                self.release_buffers();
                if self.client.readable().await.is_err() {
                    return SessionEnd::ClientGone;
                }
                if self.shared.is_shutting_down() {
                    continue;
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
        match peek_header(&self.cbuf, client_limit) {
            Err(e) => {
                let msg = format!("invalid message from client: {e}");
                self.fatal("08P01", &msg).await;
                return Some(SessionEnd::ClientProtocol(msg));
            }
            Ok(Some(h)) if h.tag == b'X' => return Some(SessionEnd::ClientGone),
            _ => {}
        }
        if self.skipping {
            if let Err(e) = self.skip_until_sync().await {
                return Some(e);
            }
            return None;
        }

        if self.mode == PoolMode::Transaction && self.prepare_locally() {
            if self.flush_client().await.is_err() {
                return Some(SessionEnd::ClientGone);
            }
            return None;
        }

        let mut server = match self.checkout().await {
            Ok(s) => s,
            Err(SessionEnd::NoServer(msg)) => {
                // The client may retry: answer this request with an
                // error and keep the session.
                self.error_response("53300", &msg);
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
                server.last_used = super::stats::coarse_ms();
                // The request ended cleanly: the connection may go back.
                server.broken = false;
                self.pool = None;
                if server.dirty {
                    // Reset the client's SETs before anyone else gets
                    // this server; the client gets its answer first.
                    let flushed = self.flush_client().await;
                    self.cleanup(&mut server).await;
                    drop(server);
                    if flushed.is_err() {
                        return Some(SessionEnd::ClientGone);
                    }
                } else {
                    drop(server);
                    if self.flush_client().await.is_err() {
                        return Some(SessionEnd::ClientGone);
                    }
                }
            }
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
            Outcome::ServerFailed(e) => {
                server.broken = true;
                self.info.set_idle();
                drop(server);
                self.pool = None;
                let msg = format!("server connection lost: {e}");
                tracing::warn!(db = %self.db, user = %self.user, error = %e, "server connection failed while in use");
                let _ = self.flush_client().await;
                self.fatal("08006", &msg).await;
                return Some(SessionEnd::ServerFailed(msg));
            }
        }
        None
    }

    /// Transaction mode, no server held: a batch of nothing but Parse
    /// messages for statements this pool's servers already accepted,
    /// closed by Sync (what libpq's PQprepare sends), is answered here.
    /// Besides saving a round trip, this matters to clients that block on
    /// a prepare while their other sessions hold every server (pgbench
    /// -M prepared with several clients per thread).
    fn prepare_locally(&mut self) -> bool {
        let mut pos = 0;
        let mut hashes = Vec::new();
        loop {
            let Ok(Some(h)) = peek_header(&self.cbuf[pos..], client_limit) else {
                return false;
            };
            if self.cbuf.len() < pos + h.total {
                return false;
            }
            let body = &self.cbuf[pos + HEADER_LEN..pos + h.total];
            match h.tag {
                b'P' => {
                    let Ok((name, rest)) = read_cstr(body, "Parse") else {
                        return false;
                    };
                    if name.is_empty() {
                        return false;
                    }
                    hashes.push((name.to_vec(), statement_hash(rest), rest.to_vec()));
                }
                b'S' if pos + h.total == self.cbuf.len() && !hashes.is_empty() => break,
                _ => return false,
            }
            pos += h.total;
        }
        {
            let known = self.state.known_statements.lock();
            if !hashes.iter().all(|(_, hash, _)| known.contains(hash)) {
                return false;
            }
        }
        for (name, hash, rest) in hashes {
            let Ok((query, types)) = read_cstr(&rest, "Parse") else {
                return false;
            };
            let prepared = Arc::new(Prepared::new(hash, query, types));
            self.statements.insert(name, prepared);
            self.counts.client_parses += 1;
            messages::parse_complete(&mut self.to_client);
        }
        messages::ready_for_query(&mut self.to_client, b'I');
        self.cbuf.clear();
        true
    }

    /// Gives the IO buffers back to the thread's free list.
    fn release_buffers(&mut self) {
        buffers::release(&mut self.cbuf);
        buffers::release(&mut self.to_server);
        buffers::release(&mut self.to_client);
        buffers::release(&mut self.sbuf);
    }

    /// Whether the buffer holds enough of the first message to act on: all
    /// of it, or enough of a large message to start streaming it.
    fn first_message_ready(&self) -> bool {
        match peek_header(&self.cbuf, client_limit) {
            Ok(Some(h)) => {
                self.cbuf.len() >= h.total
                    || (h.total > STREAM_THRESHOLD
                        && self.can_stream_client(h.tag)
                        && self.cbuf.len() >= HEADER_LEN + 64)
            }
            Ok(None) => false,
            // Let the pump report it.
            Err(_) => true,
        }
    }

    /// Reads more from the client; false on EOF or error.
    async fn read_client(&mut self) -> bool {
        if self.cbuf.capacity() == 0 {
            self.cbuf = buffers::take();
        } else if self.cbuf.capacity() - self.cbuf.len() < READ_SIZE / 4 {
            self.cbuf.reserve(READ_SIZE);
        }
        use tokio::io::AsyncReadExt;
        match self.client.read_buf(&mut self.cbuf).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.counts.bytes_in += n as u64;
                true
            }
        }
    }

    async fn checkout(&mut self) -> Result<PooledServer, SessionEnd> {
        loop {
            match self.checkout_current().await {
                Err(CheckoutError::Retired) => continue,
                Err(e) => {
                    self.info.set_idle();
                    return Err(SessionEnd::NoServer(e.to_string()));
                }
                Ok(Ok(server)) => return Ok(server),
                Ok(Err(end)) => return Err(end),
            }
        }
    }

    /// One checkout from the pool that is current now. The outer error is
    /// the pool's; the inner one ends the session.
    async fn checkout_current(
        &mut self,
    ) -> Result<Result<PooledServer, SessionEnd>, CheckoutError> {
        // A reload may have replaced the pool: every checkout goes to the
        // current one. The set's generation says whether the pool found
        // last time still is.
        let current = self
            .shared
            .pools_generation
            .load(std::sync::atomic::Ordering::Acquire);
        let cached = self
            .cached_pool
            .as_ref()
            .filter(|(generation, _)| *generation == current)
            .map(|(_, p)| p.clone());
        let (found, generation) = match cached {
            Some(p) => (Lookup::Found(p), current),
            None => {
                let set = self.shared.pools.load();
                (set.lookup(&self.db, &self.user), set.generation)
            }
        };
        let pool = match found {
            Lookup::Found(p) => {
                if self
                    .cached_pool
                    .as_ref()
                    .is_none_or(|(_, c)| !Arc::ptr_eq(c, &p))
                {
                    self.mode = p.settings.mode;
                    self.cleanup_server_connections = p.settings.cleanup_server_connections;
                    self.statement_cache_size = p.settings.statement_cache_size;
                    self.state = p.state.clone();
                    self.cached_pool = Some((generation, p.clone()));
                }
                p
            }
            _ => {
                let msg = format!(
                    "pool for database \"{}\" user \"{}\" was removed from the config",
                    self.db, self.user
                );
                self.fatal("08006", &msg).await;
                return Ok(Err(SessionEnd::PoolRemoved(msg)));
            }
        };
        self.info.set_waiting();
        let mut server = {
            let _waiting = GaugeGuard::new(&self.state.stats.clients_waiting);
            pool.checkout().await?
        };
        // Until the transaction ends cleanly the connection counts as
        // broken: if this session is dropped mid-request (KILL, forced
        // shutdown), bb8 closes it instead of handing it to someone else.
        server.broken = true;
        server.info.set_state(ServerState::Active, self.info.id);
        self.info.set_active(server.info.id);
        self.pool = Some(pool);
        if let Err(e) = self.sync_params(&mut server).await {
            let msg = format!("could not apply client settings on the server: {e}");
            self.info.set_idle();
            self.fatal("08006", &msg).await;
            return Ok(Err(SessionEnd::ServerFailed(msg)));
        }
        self.tracker.reset();
        Ok(Ok(server))
    }

    /// Sets the client's tracked settings on a server whose values differ.
    async fn sync_params(&mut self, server: &mut Server) -> Result<(), ServerError> {
        // Usually they match: one comparison of digests says so.
        let mine = *self
            .tracked
            .get_or_insert_with(|| tracked_digest(&self.params));
        let theirs = *server
            .tracked
            .get_or_insert_with(|| tracked_digest(&server.params));
        if mine == theirs {
            return Ok(());
        }
        let mut sql = String::new();
        for (k, v) in &self.params.0 {
            if server.params.get(k) != Some(v.as_str()) {
                sql.push_str(&format!("SET {k} TO {};", quote_literal(v)));
            }
        }
        if sql.is_empty() {
            return Ok(());
        }
        server.run(&sql, CLEANUP_TIMEOUT).await?;
        // Adopt PostgreSQL's spelling of the values (e.g. "utf8" is
        // reported as "UTF8") so the next checkout compares equal.
        for (k, v) in self.params.0.iter_mut() {
            if let Some(sv) = server.params.get(k) {
                if sv != v {
                    *v = sv.to_string();
                }
            }
        }
        self.tracked = None;
        Ok(())
    }

    /// Brings a server back to a clean state, or leaves it marked broken.
    async fn cleanup(&mut self, server: &mut Server) {
        server.broken = true;
        let unsent = !self.to_server.is_empty() || self.client_left > 0;
        if unsent
            || self.tracker.awaiting_replies()
            || self.server_left > 0
            || !self.sbuf.is_empty()
        {
            // Mid-request: closing is the only safe way out; PostgreSQL
            // rolls back what was open.
            server.broken = true;
            return;
        }
        let mut steps: Vec<&str> = Vec::new();
        if self.tracker.unsynced() {
            let mut out = BytesMut::new();
            messages::sync(&mut out);
            if server.exchange(&out, CLEANUP_TIMEOUT).await.is_err() {
                server.broken = true;
                return;
            }
        }
        if self.tracker.status() != b'I' {
            steps.push("ROLLBACK");
        }
        let reset = match self.mode {
            PoolMode::Session => true,
            PoolMode::Transaction => server.dirty && self.cleanup_server_connections,
        };
        if reset {
            steps.push("DISCARD ALL");
        }
        let reset_mirrors = !steps.is_empty() || self.tracker.unsynced();
        for sql in steps {
            if let Err(e) = server.run(sql, CLEANUP_TIMEOUT).await {
                tracing::debug!(error = %e, sql, "cleanup query failed; closing server connection");
                server.broken = true;
                return;
            }
            if sql == "DISCARD ALL" {
                server.statements.clear();
            }
        }
        if reset_mirrors {
            // The mirror connection gets the same reset, from its task.
            for m in &mut server.mirrors {
                m.reset(reset);
            }
        }
        server.dirty = false;
        server.broken = false;
        self.tracker.reset();
    }

    /// Ends the session, bringing the server it held back to a clean
    /// state (or marking it broken) before it returns to the pool.
    async fn end(&mut self, mut server: PooledServer, end: SessionEnd) -> SessionEnd {
        self.cleanup(&mut server).await;
        server.last_used = super::stats::coarse_ms();
        self.info.set_idle();
        drop(server);
        self.pool = None;
        end
    }

    /// After an error answered without a server: drop the client's
    /// messages up to the next Sync (or a simple Query), then report
    /// ReadyForQuery.
    async fn skip_until_sync(&mut self) -> Result<(), SessionEnd> {
        loop {
            let h = match peek_header(&self.cbuf, client_limit) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Err(SessionEnd::ClientProtocol(e.to_string())),
            };
            if self.cbuf.len() < h.total {
                break;
            }
            self.cbuf.advance(h.total);
            match h.tag {
                b'X' => return Err(SessionEnd::ClientGone),
                b'S' | b'Q' | b'F' => {
                    self.skipping = false;
                    messages::ready_for_query(&mut self.to_client, b'I');
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
        messages::error_response(&mut self.to_client, Severity::Error, code, message);
    }

    async fn fatal(&mut self, code: &str, message: &str) {
        messages::error_response(&mut self.to_client, Severity::Fatal, code, message);
        let _ = self.flush_client().await;
        let _ = self.client.shutdown().await;
    }

    async fn flush_client(&mut self) -> io::Result<()> {
        if !self.to_client.is_empty() {
            self.counts.bytes_out += self.to_client.len() as u64;
            let r = self.client.write_all(&self.to_client).await;
            self.to_client.clear();
            r?;
        }
        if self.to_client.capacity() > HIGH_WATER {
            self.to_client = BytesMut::new();
        }
        Ok(())
    }

    fn flush_counters(&mut self) {
        let s = &self.state.stats;
        let c = std::mem::take(&mut self.counts);
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
        if self.tracker.awaiting_replies() {
            return;
        }
        let now = Instant::now();
        if let Some(t) = self.request_started.take() {
            self.counts.query_time_us += now.duration_since(t).as_micros() as u64;
        }
        if self.tracker.status() == b'I' {
            if let Some(t) = self.xact_started.take() {
                self.counts.xacts += 1;
                self.counts.xact_time_us += now.duration_since(t).as_micros() as u64;
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
        if self.request_started.is_none() {
            let now = Instant::now();
            self.request_started = Some(now);
            if self.xact_started.is_none() {
                self.xact_started = Some(now);
            }
        }
    }

    fn can_stream_client(&self, tag: u8) -> bool {
        match tag {
            b'P' | b'B' | b'D' | b'C' => self.mode == PoolMode::Session,
            b'X' | b'S' | b'H' => false,
            _ => true,
        }
    }

    async fn pump(&mut self, server: &mut Server) -> Outcome {
        for buf in [&mut self.to_server, &mut self.to_client, &mut self.sbuf] {
            if buf.capacity() == 0 {
                *buf = buffers::take();
            }
        }
        if let Err(o) = self.process_client(server) {
            return o;
        }
        // A session-mode client holds its server between transactions; on
        // shutdown it is let go at the next transaction boundary.
        let rx = (self.mode == PoolMode::Session).then(|| self.shared.shutdown_rx());
        let mut shutdown = std::pin::pin!(async move {
            match rx {
                Some(mut rx) => {
                    let _ = rx.wait_for(|stopping| *stopping).await;
                }
                None => std::future::pending::<()>().await,
            }
        });
        let mut stopping = false;
        poll_fn(|cx| {
            if !stopping && shutdown.as_mut().poll(cx).is_ready() {
                stopping = true;
            }
            if stopping && self.at_boundary() {
                return Poll::Ready(Outcome::Shutdown);
            }
            self.poll_pump(cx, server)
        })
        .await
    }

    fn release_ready(&self) -> bool {
        self.mode == PoolMode::Transaction && self.at_boundary()
    }

    /// Between transactions: nothing in flight either way.
    fn at_boundary(&self) -> bool {
        self.tracker.is_idle()
            && self.to_server.is_empty()
            && self.client_left == 0
            && self.server_left == 0
            && self.sbuf.is_empty()
    }

    fn poll_pump(&mut self, cx: &mut Context<'_>, server: &mut Server) -> Poll<Outcome> {
        loop {
            let mut progress = false;
            while !self.to_server.is_empty() {
                match Pin::new(&mut server.stream).poll_write(cx, &self.to_server) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Outcome::ServerFailed(io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        self.to_server.advance(n);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Outcome::ServerFailed(e)),
                    Poll::Pending => break,
                }
            }
            while !self.to_client.is_empty() {
                match Pin::new(&mut self.client).poll_write(cx, &self.to_client) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Outcome::ClientGone)
                    }
                    Poll::Ready(Ok(n)) => {
                        self.counts.bytes_out += n as u64;
                        self.to_client.advance(n);
                        progress = true;
                    }
                    Poll::Pending => break,
                }
            }
            if self.release_ready() {
                return Poll::Ready(Outcome::Released);
            }
            if self.to_server.len() < HIGH_WATER {
                if self.cbuf.capacity() - self.cbuf.len() < READ_SIZE / 4 {
                    self.cbuf.reserve(READ_SIZE);
                }
                match poll_read_buf(Pin::new(&mut self.client), cx, &mut self.cbuf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Outcome::ClientGone)
                    }
                    Poll::Ready(Ok(n)) => {
                        self.counts.bytes_in += n as u64;
                        if let Err(o) = self.process_client(server) {
                            return Poll::Ready(o);
                        }
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            if self.to_client.len() < HIGH_WATER {
                if self.sbuf.capacity() - self.sbuf.len() < READ_SIZE / 4 {
                    self.sbuf.reserve(READ_SIZE);
                }
                match poll_read_buf(Pin::new(&mut server.stream), cx, &mut self.sbuf) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Outcome::ServerFailed(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "server closed the connection",
                        )))
                    }
                    Poll::Ready(Ok(_)) => {
                        if let Err(o) = self.process_server(server) {
                            return Poll::Ready(o);
                        }
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Outcome::ServerFailed(e)),
                    Poll::Pending => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Handles the client bytes in `cbuf`: every complete message, and the
    /// available part of a large one. Pass-through runs move to
    /// `to_server` in one piece (a buffer swap when nothing else is
    /// queued).
    fn process_client(&mut self, server: &mut Server) -> Result<(), Outcome> {
        let transaction = self.mode == PoolMode::Transaction;
        let mirrored_from = self.to_server.len();
        let starts_transaction = self.tracker.is_idle();
        let result = self.process_client_messages(server, transaction);
        if !server.mirrors.is_empty() && self.to_server.len() > mirrored_from {
            let mut copy: Option<(Bytes, Instant)> = None;
            for m in &mut server.mirrors {
                if m.wants(starts_transaction) {
                    let (bytes, at) = copy.get_or_insert_with(|| {
                        (
                            Bytes::copy_from_slice(&self.to_server[mirrored_from..]),
                            Instant::now(),
                        )
                    });
                    m.data(bytes, *at, starts_transaction);
                }
            }
        }
        result
    }

    fn process_client_messages(
        &mut self,
        server: &mut Server,
        transaction: bool,
    ) -> Result<(), Outcome> {
        let mut pos = 0;
        if self.client_left > 0 {
            pos = self.client_left.min(self.cbuf.len());
            self.client_left -= pos;
        }
        while self.client_left == 0 {
            let rest = &self.cbuf[pos..];
            let h = match peek_header(rest, client_limit) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.move_client_run(pos);
                    return Err(Outcome::ClientProtocol(FrameErrorOrMalformed::Frame(e)));
                }
            };
            if rest.len() < h.total {
                if h.total > STREAM_THRESHOLD
                    && self.can_stream_client(h.tag)
                    && rest.len() >= HEADER_LEN + 64
                {
                    note_client(
                        &mut self.tracker,
                        &mut self.counts,
                        server,
                        transaction,
                        h.tag,
                        &rest[HEADER_LEN..],
                    );
                    self.client_left = h.total - rest.len();
                    pos = self.cbuf.len();
                }
                break;
            }
            match h.tag {
                b'X' => {
                    self.move_client_run(pos);
                    return Err(Outcome::ClientGone);
                }
                b'P' | b'B' | b'D' | b'C' if transaction => {
                    self.move_client_run(pos);
                    pos = 0;
                    let msg = self.cbuf.split_to(h.total).freeze();
                    self.rewrite_client(server, h.tag, &msg)?;
                }
                tag => {
                    note_client(
                        &mut self.tracker,
                        &mut self.counts,
                        server,
                        transaction,
                        tag,
                        &rest[HEADER_LEN..h.total],
                    );
                    pos += h.total;
                }
            }
        }
        self.move_client_run(pos);
        if self.request_started.is_none() && self.tracker.awaiting_replies() {
            self.on_request();
        }
        Ok(())
    }

    /// Moves the first `n` bytes of `cbuf` to `to_server`.
    fn move_client_run(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.to_server.is_empty() && n == self.cbuf.len() {
            std::mem::swap(&mut self.to_server, &mut self.cbuf);
        } else {
            self.to_server.extend_from_slice(&self.cbuf[..n]);
            self.cbuf.advance(n);
        }
    }

    /// Transaction mode: messages that name prepared statements. Named
    /// statements live on servers under names derived from their text;
    /// pgcat prepares them on whichever server the client gets.
    fn rewrite_client(&mut self, server: &mut Server, tag: u8, msg: &[u8]) -> Result<(), Outcome> {
        let malformed = |what| Outcome::ClientProtocol(FrameErrorOrMalformed::Malformed(what));
        let body = &msg[HEADER_LEN..];
        match tag {
            b'P' => {
                self.counts.client_parses += 1;
                let (name, rest) = read_cstr(body, "Parse").map_err(|_| malformed("Parse"))?;
                if name.is_empty() {
                    self.counts.server_parses += 1;
                    self.forward_as_is(tag, msg);
                    return Ok(());
                }
                let (query, types) = read_cstr(rest, "Parse").map_err(|_| malformed("Parse"))?;
                let hash = statement_hash(rest);
                let prepared = Arc::new(Prepared::new(hash, query, types));
                self.statements.insert(name.to_vec(), prepared.clone());
                if server.statements.contains(hash) {
                    self.tracker
                        .push_extended(Expect::Synthetic(Synthetic::ParseComplete));
                    self.tracker.emit_due(&mut self.to_client);
                } else {
                    self.prepare_on_server(server, &prepared, false);
                }
            }
            b'B' => {
                self.counts.binds += 1;
                let (portal, rest) = read_cstr(body, "Bind").map_err(|_| malformed("Bind"))?;
                let (name, rest) = read_cstr(rest, "Bind").map_err(|_| malformed("Bind"))?;
                let Some(prepared) = (!name.is_empty())
                    .then(|| self.statements.get(name).cloned())
                    .flatten()
                else {
                    self.forward_as_is(tag, msg);
                    return Ok(());
                };
                self.ensure_prepared(server, &prepared);
                let name = statement_name(prepared.hash);
                let at = messages::begin(&mut self.to_server, b'B');
                messages::put_cstr(&mut self.to_server, portal);
                messages::put_cstr(&mut self.to_server, name.as_bytes());
                self.to_server.put_slice(rest);
                messages::finish(&mut self.to_server, at);
                self.tracker.push_extended(Expect::Bind);
            }
            b'D' => {
                let (&kind, rest) = body.split_first().ok_or_else(|| malformed("Describe"))?;
                let (name, _) = read_cstr(rest, "Describe").map_err(|_| malformed("Describe"))?;
                let prepared = (kind == b'S' && !name.is_empty())
                    .then(|| self.statements.get(name).cloned())
                    .flatten();
                let Some(prepared) = prepared else {
                    self.forward_as_is(tag, msg);
                    return Ok(());
                };
                self.ensure_prepared(server, &prepared);
                let at = messages::begin(&mut self.to_server, b'D');
                self.to_server.put_u8(b'S');
                messages::put_cstr(
                    &mut self.to_server,
                    statement_name(prepared.hash).as_bytes(),
                );
                messages::finish(&mut self.to_server, at);
                self.tracker.push_extended(Expect::Describe);
            }
            b'C' => {
                let (&kind, rest) = body.split_first().ok_or_else(|| malformed("Close"))?;
                let (name, _) = read_cstr(rest, "Close").map_err(|_| malformed("Close"))?;
                if kind == b'S' && !name.is_empty() {
                    // The server keeps the statement for other clients;
                    // the client just forgets its name.
                    self.statements.remove(name);
                    self.tracker
                        .push_extended(Expect::Synthetic(Synthetic::CloseComplete));
                    self.tracker.emit_due(&mut self.to_client);
                } else {
                    self.forward_as_is(tag, msg);
                }
            }
            _ => self.forward_as_is(tag, msg),
        }
        Ok(())
    }

    fn forward_as_is(&mut self, tag: u8, msg: &[u8]) {
        self.tracker.client_message(tag);
        self.to_server.extend_from_slice(msg);
    }

    fn ensure_prepared(&mut self, server: &mut Server, prepared: &Prepared) {
        if !server.statements.contains(prepared.hash) {
            self.prepare_on_server(server, prepared, true);
        }
    }

    fn prepare_on_server(&mut self, server: &mut Server, prepared: &Prepared, swallow: bool) {
        self.to_server.extend_from_slice(&prepared.parse);
        self.tracker.push_extended(Expect::Parse {
            swallow,
            statement: Some(prepared.hash),
        });
        self.counts.server_parses += 1;
        if let Some(evicted) = server
            .statements
            .insert(prepared.hash, self.statement_cache_size)
        {
            messages::close(&mut self.to_server, b'S', &statement_name(evicted));
            self.tracker.push_extended(Expect::Close { swallow: true });
        }
    }

    /// Handles server bytes in `sbuf`, like `process_client` the other
    /// way: forwards runs to `to_client`, drops replies to messages pgcat
    /// injected, inserts replies pgcat owes, follows ParameterStatus.
    fn process_server(&mut self, server: &mut Server) -> Result<(), Outcome> {
        let mut pos = 0;
        let mut run_start = 0;
        let mut ready = false;
        if self.server_left > 0 {
            pos = self.server_left.min(self.sbuf.len());
            self.server_left -= pos;
        }
        while self.server_left == 0 {
            let rest = &self.sbuf[pos..];
            let h = match peek_header(rest, |_| MAX_MESSAGE_LEN) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    return Err(Outcome::ServerFailed(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e,
                    )))
                }
            };
            if rest.len() < h.total {
                if h.total > STREAM_THRESHOLD && !matches!(h.tag, b'Z' | b'S' | b'1' | b'3') {
                    self.tracker.server_message(h.tag, &[]);
                    self.server_left = h.total - rest.len();
                    pos = self.sbuf.len();
                }
                break;
            }
            let body = &rest[HEADER_LEN..h.total];
            let action = self.tracker.server_message(h.tag, body);
            match h.tag {
                b'Z' => ready = true,
                b'S' => {
                    if let Ok((k, v)) = messages::parse_parameter_status(body) {
                        if let Some(name) = tracked_param(&k) {
                            self.params.set(name, &v);
                            self.tracked = None;
                            server.tracked = None;
                        }
                        if k == "application_name" {
                            *self.info.application_name.lock() = v.clone();
                            *server.info.application_name.lock() = v.clone();
                        }
                        server.params.set(&k, &v);
                    }
                }
                _ => {}
            }
            match action {
                Action::Forward => pos += h.total,
                Action::Swallow => {
                    self.to_client.extend_from_slice(&self.sbuf[run_start..pos]);
                    pos += h.total;
                    run_start = pos;
                }
            }
            if self.tracker.has_due() {
                self.to_client.extend_from_slice(&self.sbuf[run_start..pos]);
                run_start = pos;
                self.tracker.emit_due(&mut self.to_client);
            }
        }
        if self.tracker.has_failed() {
            for s in self.tracker.take_failed() {
                server.statements.remove(s);
            }
        }
        if self.tracker.has_prepared() {
            let mut known = self.state.known_statements.lock();
            if known.len() > 10 * self.statement_cache_size {
                known.clear();
            }
            known.extend(self.tracker.take_prepared());
        }
        if run_start == 0 && pos == self.sbuf.len() && self.to_client.is_empty() {
            std::mem::swap(&mut self.to_client, &mut self.sbuf);
        } else {
            self.to_client.extend_from_slice(&self.sbuf[run_start..pos]);
            self.sbuf.advance(pos);
        }
        if ready {
            self.on_ready_for_query();
            if self.tracker.is_idle() {
                for m in &mut server.mirrors {
                    m.boundary();
                }
            }
        }
        Ok(())
    }
}

/// Bookkeeping for a client message forwarded unchanged.
fn note_client(
    tracker: &mut Tracker,
    counts: &mut Counts,
    server: &mut Server,
    transaction: bool,
    tag: u8,
    body: &[u8],
) {
    tracker.client_message(tag);
    match tag {
        b'P' => {
            counts.client_parses += 1;
            counts.server_parses += 1;
        }
        b'B' => counts.binds += 1,
        b'Q' => {
            counts.queries += 1;
            if transaction {
                let effect = query_effect(body);
                server.dirty |= effect.dirty;
                if effect.drops_statements {
                    server.statements.clear();
                }
            }
        }
        b'E' => counts.queries += 1,
        _ => {}
    }
}

/// What a simple query does to session state, judged from its first
/// words.
#[derive(Debug, Default, PartialEq, Eq)]
struct QueryEffect {
    /// It changes session state that must be reset before another client
    /// gets the server.
    dirty: bool,
    /// It drops prepared statements, pgcat's included.
    drops_statements: bool,
}

fn query_effect(body: &[u8]) -> QueryEffect {
    let text = &body[..body.len().min(64)];
    let text = text.trim_ascii_start();
    let starts = |word: &[u8]| {
        text.len() >= word.len()
            && text[..word.len()].eq_ignore_ascii_case(word)
            && text
                .get(word.len())
                .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_')
    };
    let mut effect = QueryEffect::default();
    if starts(b"SET") {
        let after = text[3..].trim_ascii_start();
        let end = after
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .unwrap_or(after.len());
        let word = std::str::from_utf8(&after[..end]).unwrap_or("");
        let local = word.eq_ignore_ascii_case("local") || word.eq_ignore_ascii_case("transaction");
        // Tracked settings follow the client anyway.
        effect.dirty = !local && tracked_param(word).is_none();
    } else if starts(b"RESET") || starts(b"PREPARE") || starts(b"LISTEN") {
        effect.dirty = true;
    } else if starts(b"CREATE") {
        // Temporary tables live as long as the session.
        let second = text[6..]
            .trim_ascii_start()
            .split(|b| !b.is_ascii_alphabetic())
            .next()
            .unwrap_or(b"");
        effect.dirty = [&b"temp"[..], b"temporary", b"local", b"global"]
            .iter()
            .any(|w| second.eq_ignore_ascii_case(w));
    } else if starts(b"DISCARD") || starts(b"DEALLOCATE") {
        effect.dirty = true;
        effect.drops_statements = true;
    }
    effect
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_names_are_stable_and_valid_identifiers() {
        let n = statement_name(0xdead_beef);
        assert_eq!(n, "pgcat_00000000deadbeef");
        assert!(n.len() < 64);
    }

    #[test]
    fn query_effects() {
        let dirty = |q: &str| query_effect(format!("{q}\0").as_bytes()).dirty;
        assert!(dirty("SET search_path = x"));
        assert!(dirty("  set statement_timeout to 5"));
        assert!(!dirty("SET LOCAL search_path = x"));
        assert!(!dirty("SET application_name = 'x'"));
        assert!(!dirty("SET TimeZone TO 'UTC'"));
        assert!(!dirty("SELECT 1"));
        assert!(!dirty("SETTINGS"));
        assert!(dirty("RESET ALL"));
        assert!(dirty("PREPARE p AS SELECT 1"));
        assert!(!dirty("UPDATE t SET a = 1"));
        assert!(dirty("CREATE TEMP TABLE t (a int)"));
        assert!(dirty("create temporary table t (a int)"));
        assert!(!dirty("CREATE TABLE t (a int)"));
        let e = query_effect(b"DEALLOCATE ALL\0");
        assert!(e.dirty && e.drops_statements);
        assert!(query_effect(b"discard all\0").drops_statements);
    }
}

#[cfg(test)]
mod idle_footprint {
    /// What an idle client's task holds is the session plus its wait:
    /// login and request states live in their own, short-lived
    /// allocations. This guards against a change folding them back in.
    #[tokio::test]
    async fn an_idle_session_task_stays_under_one_kib() {
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
        let task = super::handle(
            stream,
            "127.0.0.1:1".parse().unwrap(),
            proxy.shared().clone(),
            Default::default(),
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "a client task's future takes {size} bytes");
        drop(task);
        proxy.stop().await;
    }
}
