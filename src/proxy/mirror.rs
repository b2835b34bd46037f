//! Query mirroring. Each server connection whose server has mirrors owns
//! one task per mirror. The connection hands the task a copy of what the
//! client sent over a bounded channel (never waiting: when the channel is
//! full the rest of the transaction is dropped and counted), and signals
//! its end on a second channel. The task writes to the mirror, reads and
//! discards the replies, and measures how far the mirror lags.
//!
//! bb8 manages the mirror connection's life cycle with a pool of exactly
//! one connection per task, so a mirror never holds more connections than
//! the parent pool. Only client traffic is mirrored; pgcat's own queries
//! (health checks, settings replay) are not. When pgcat resets the server
//! connection (rolling back an abandoned transaction, DISCARD ALL), the
//! task brings the mirror connection to the same state, so that mirror and
//! server stay in step.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tls::Stream;
use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::protocol::codec::{peek_header, HEADER_LEN, MAX_MESSAGE_LEN};
use super::protocol::messages::{self, read_cstr};
use super::server::{LoginInfo, Server, ServerAddress, ServerError};

/// Batches a mirror may fall behind by before transactions are dropped.
pub const QUEUE: usize = 256;
/// Requests written to the mirror and not yet answered. Beyond this the
/// task stops taking batches, so a stuck mirror shows up as drops rather
/// than as megabytes of kernel socket buffers.
pub const IN_FLIGHT: usize = 64;
/// How long a task lets batches and replies accumulate before one write
/// or read. Every send on a socket costs the kernel about as much as the
/// query itself, so batching is what keeps a mirror cheap for pgcat; the
/// delay only adds to the mirror's lag, never to a client's.
const LINGER: Duration = Duration::from_millis(2);
/// Longest wait between attempts to reach a mirror that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Lag samples kept for the max and p99.
const LAG_WINDOW: Duration = Duration::from_secs(60);
const LAG_SAMPLES: usize = 10_000;
/// Statements remembered to re-prepare on a new mirror connection.
const PARSES_KEPT: usize = 1024;
/// Bound on the cleanup a task runs on its own mirror connection.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What one mirror of one server of one (pool, user) did, summed over
/// the tasks of its server connections.
#[derive(Debug)]
pub struct MirrorStats {
    pub host: String,
    pub port: u16,
    pub server_host: String,
    pub server_port: u16,
    pub shard: usize,
    pub server_index: usize,
    pub sent_messages: AtomicU64,
    pub dropped_transactions: AtomicU64,
    pub errors: AtomicU64,
    /// Batches handed over and not yet taken by a task.
    pub queue_depth: AtomicI64,
    /// Tasks alive (one per server connection).
    pub tasks: AtomicI64,
    /// Tasks holding an open mirror connection.
    pub connected: AtomicI64,
    /// Tasks opening one right now.
    pub connecting: AtomicI64,
    pub last_error: Mutex<Option<String>>,
    lag: Mutex<LagWindow>,
    /// Per task, when its oldest unanswered request was handed over: a
    /// stuck mirror's lag grows even before anything is answered.
    waiting: Mutex<HashMap<u64, Instant>>,
}

#[derive(Debug, Default)]
struct LagWindow {
    samples: VecDeque<(Instant, u32)>,
    last: Option<u32>,
}

impl MirrorStats {
    pub fn new(host: &str, port: u16, server: &ServerAddress) -> Self {
        MirrorStats {
            host: host.to_string(),
            port,
            server_host: server.host.clone(),
            server_port: server.port,
            shard: server.shard,
            server_index: server.index,
            sent_messages: AtomicU64::new(0),
            dropped_transactions: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            tasks: AtomicI64::new(0),
            connected: AtomicI64::new(0),
            connecting: AtomicI64::new(0),
            last_error: Mutex::new(None),
            lag: Mutex::new(LagWindow::default()),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    fn record_lag(&self, lag: Duration) {
        let us = lag.as_micros().min(u32::MAX as u128) as u32;
        let now = Instant::now();
        let mut w = self.lag.lock();
        w.last = Some(us);
        w.samples.push_back((now, us));
        while w.samples.len() > LAG_SAMPLES
            || w.samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > LAG_WINDOW)
        {
            w.samples.pop_front();
        }
    }

    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(e.to_string());
    }

    pub fn snapshot(&self) -> MirrorSnapshot {
        let (current, max, p99) = {
            let mut w = self.lag.lock();
            let now = Instant::now();
            while w
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > LAG_WINDOW)
            {
                w.samples.pop_front();
            }
            let mut v: Vec<u32> = w.samples.iter().map(|(_, l)| *l).collect();
            v.sort_unstable();
            let p99 = (!v.is_empty())
                .then(|| v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]);
            let waited = self
                .waiting
                .lock()
                .values()
                .map(|t| now.duration_since(*t).as_micros().min(u32::MAX as u128) as u32)
                .max();
            let current = match (w.last, waited) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let max = match (v.last().copied(), waited) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            (current, max, p99)
        };
        let connected = self.connected.load(Ordering::Relaxed);
        let connecting = self.connecting.load(Ordering::Relaxed);
        let last_error = self.last_error.lock().clone();
        let state = if connected > 0 {
            "connected"
        } else if connecting > 0 {
            "connecting"
        } else if last_error.is_some() {
            "down"
        } else {
            "idle"
        };
        MirrorSnapshot {
            host: self.host.clone(),
            port: self.port,
            server_host: self.server_host.clone(),
            server_port: self.server_port,
            shard: self.shard,
            server_index: self.server_index,
            state,
            last_error,
            tasks: self.tasks.load(Ordering::Relaxed).max(0) as u64,
            connections: connected.max(0) as u64,
            sent_messages: self.sent_messages.load(Ordering::Relaxed),
            dropped_transactions: self.dropped_transactions.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed).max(0) as u64,
            lag_current_us: current,
            lag_max_us: max,
            lag_p99_us: p99,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MirrorSnapshot {
    pub host: String,
    pub port: u16,
    pub server_host: String,
    pub server_port: u16,
    pub shard: usize,
    pub server_index: usize,
    /// "connected", "connecting", "down" (with last_error) or "idle" (no
    /// traffic yet).
    pub state: &'static str,
    pub last_error: Option<String>,
    pub tasks: u64,
    pub connections: u64,
    pub sent_messages: u64,
    pub dropped_transactions: u64,
    pub errors: u64,
    pub queue_depth: u64,
    pub lag_current_us: Option<u32>,
    pub lag_max_us: Option<u32>,
    pub lag_p99_us: Option<u32>,
}

/// How to reach one mirror of a server: same database and credentials.
#[derive(Debug)]
pub struct MirrorSpec {
    pub address: Arc<ServerAddress>,
    pub login: Arc<LoginInfo>,
    pub idle_timeout: Option<Duration>,
    pub server_lifetime: Option<Duration>,
    pub stats: Arc<MirrorStats>,
}

enum Item {
    /// Client bytes as they went to the server. `starts_transaction`:
    /// the server was idle between transactions when they were sent.
    Data {
        bytes: Bytes,
        at: Instant,
        starts_transaction: bool,
    },
    /// A dropped stretch ended at a transaction boundary, or pgcat rolled
    /// back the server: bring the mirror connection to idle.
    Resync,
    /// pgcat ran DISCARD ALL on the server: do the same.
    Reset,
}

/// The server connection's end of one mirror task.
pub struct MirrorHandle {
    tx: mpsc::Sender<Item>,
    exit: Option<oneshot::Sender<()>>,
    /// A batch was dropped: skip until the next transaction boundary.
    dropping: bool,
    /// Set by the task while the mirror is down and it is backing off:
    /// transactions are dropped here, without a copy or a wakeup.
    down: Arc<AtomicBool>,
    stats: Arc<MirrorStats>,
}

impl MirrorHandle {
    /// Starts the task for one mirror of a new server connection.
    pub fn start(spec: &Arc<MirrorSpec>) -> MirrorHandle {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (exit_tx, exit_rx) = oneshot::channel();
        let down = Arc::new(AtomicBool::new(false));
        spec.stats.tasks.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(run(spec.clone(), rx, exit_rx, down.clone()));
        MirrorHandle {
            tx,
            exit: Some(exit_tx),
            dropping: false,
            down,
            stats: spec.stats.clone(),
        }
    }

    /// Whether a batch would be taken now: not while a dropped stretch
    /// runs, nor while the mirror is down (then the transaction starting
    /// here is dropped and counted).
    pub fn wants(&mut self, starts_transaction: bool) -> bool {
        if self.dropping {
            return false;
        }
        if self.down.load(Ordering::Relaxed) {
            if starts_transaction {
                self.dropping = true;
                self.stats
                    .dropped_transactions
                    .fetch_add(1, Ordering::Relaxed);
            }
            return false;
        }
        true
    }

    fn offer(&mut self, item: Item) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => {
                self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Hands over a copy of client bytes; never waits.
    pub fn data(&mut self, bytes: &Bytes, at: Instant, starts_transaction: bool) {
        if self.dropping {
            return;
        }
        let item = Item::Data {
            bytes: bytes.clone(),
            at,
            starts_transaction,
        };
        if !self.offer(item) {
            self.dropping = true;
            self.stats
                .dropped_transactions
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The server is idle between transactions: a drop ends here.
    pub fn boundary(&mut self) {
        if !self.dropping {
            return;
        }
        if self.down.load(Ordering::Relaxed) {
            // The task holds no connection, so there is nothing to repair.
            self.dropping = false;
        } else if self.offer(Item::Resync) {
            self.dropping = false;
        }
    }

    /// pgcat rolled back (`discard` false) or reset (`discard` true) the
    /// server connection.
    pub fn reset(&mut self, discard: bool) {
        let ok = self.offer(if discard { Item::Reset } else { Item::Resync });
        // If even that did not fit, the task resynchronises at the next
        // boundary that does.
        self.dropping = !ok;
    }
}

impl std::fmt::Debug for MirrorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MirrorHandle({}:{})", self.stats.host, self.stats.port)
    }
}

impl Drop for MirrorHandle {
    fn drop(&mut self) {
        if let Some(exit) = self.exit.take() {
            let _ = exit.send(());
        }
    }
}

/// bb8 manager for the one mirror connection of a task.
struct MirrorManager {
    spec: Arc<MirrorSpec>,
}

/// A mirror connection, counted in the stats while it is open.
struct MirrorConn {
    server: Server,
    stats: Arc<MirrorStats>,
    /// Each connection gets a new number, so the task notices a
    /// replacement and re-prepares statements on it.
    generation: u64,
}

impl Drop for MirrorConn {
    fn drop(&mut self) {
        self.stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl bb8::ManageConnection for MirrorManager {
    type Connection = MirrorConn;
    type Error = ServerError;

    async fn connect(&self) -> Result<MirrorConn, ServerError> {
        let s = &self.spec;
        let server = Server::connect(s.address.clone(), &s.login, (None, "", "")).await?;
        s.stats.connected.fetch_add(1, Ordering::Relaxed);
        Ok(MirrorConn {
            server,
            stats: s.stats.clone(),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }

    async fn is_valid(&self, conn: &mut MirrorConn) -> Result<(), ServerError> {
        if conn.server.is_stale() {
            return Err(ServerError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mirror connection closed",
            )));
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut MirrorConn) -> bool {
        conn.server.broken
    }
}

/// Follows the byte stream sent to the mirror: message boundaries, the
/// statements prepared, whether an extended-protocol batch is open.
#[derive(Default)]
struct Sent {
    /// Bytes of a message still to come in later batches.
    left: usize,
    /// A partial header carried over.
    carry: BytesMut,
    unsynced: bool,
    parses: HashMap<Vec<u8>, Bytes>,
}

impl Sent {
    /// Walks a batch; returns (messages, sync points).
    fn scan(&mut self, bytes: &Bytes) -> (u64, u32) {
        let mut data = bytes.clone();
        if self.left > 0 {
            let n = self.left.min(data.len());
            self.left -= n;
            data.advance(n);
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(&data);
        let (mut msgs, mut syncs) = (0, 0);
        while let Ok(Some(h)) = peek_header(&buf, |_| MAX_MESSAGE_LEN) {
            msgs += 1;
            match h.tag {
                b'Q' | b'F' => syncs += 1,
                b'S' => {
                    syncs += 1;
                    self.unsynced = false;
                }
                b'B' | b'D' | b'E' | b'C' | b'H' => self.unsynced = true,
                b'P' => {
                    self.unsynced = true;
                    if buf.len() >= h.total {
                        if let Ok((name, _)) = read_cstr(&buf[HEADER_LEN..h.total], "Parse") {
                            if !name.is_empty() && self.parses.len() < PARSES_KEPT {
                                self.parses
                                    .insert(name.to_vec(), Bytes::copy_from_slice(&buf[..h.total]));
                            }
                        }
                    }
                }
                _ => {}
            }
            if buf.len() < h.total {
                self.left = h.total - buf.len();
                buf.clear();
                break;
            }
            buf.advance(h.total);
        }
        if self.left == 0 && !buf.is_empty() {
            self.carry = buf;
        }
        (msgs, syncs)
    }

    fn mid_message(&self) -> bool {
        self.left > 0 || !self.carry.is_empty()
    }
}

/// Finds ReadyForQuery in the mirror's replies and discards the rest.
#[derive(Default)]
struct Replies {
    buf: BytesMut,
    skip: usize,
}

impl Replies {
    /// Feeds reply bytes; returns the statuses of the ReadyForQuery
    /// messages in them.
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        if self.skip > 0 {
            let n = self.skip.min(data.len());
            self.skip -= n;
            data = &data[n..];
        }
        self.buf.extend_from_slice(data);
        while let Ok(Some(h)) = peek_header(&self.buf, |_| MAX_MESSAGE_LEN) {
            if h.tag == b'Z' {
                if self.buf.len() < h.total {
                    break;
                }
                out.push(self.buf[HEADER_LEN]);
                self.buf.advance(h.total);
            } else if self.buf.len() >= h.total {
                self.buf.advance(h.total);
            } else {
                self.skip = h.total - self.buf.len();
                self.buf.clear();
                break;
            }
        }
    }
}

/// The task's connection: the idle one bb8 keeps, or a new one opened
/// here and handed to bb8. Opening it here reports a refused or
/// unreachable mirror at once; bb8 would wait out its timeout.
async fn checkout(
    pool: &bb8::Pool<MirrorManager>,
    spec: &Arc<MirrorSpec>,
) -> Result<bb8::PooledConnection<'static, MirrorManager>, String> {
    if pool.state().connections > 0 {
        // test_on_check_out discards it if it went stale while idle.
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(200), pool.get_owned()).await
        {
            return Ok(c);
        }
    }
    let manager = MirrorManager { spec: spec.clone() };
    let conn = bb8::ManageConnection::connect(&manager)
        .await
        .map_err(|e| e.to_string())?;
    pool.add(conn)
        .map_err(|_| "mirror pool is full".to_string())?;
    match tokio::time::timeout(Duration::from_millis(200), pool.get_owned()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("{e:?}")),
        Err(_) => Err("mirror connection vanished".into()),
    }
}

/// One mirror task: lives as long as its server connection.
async fn run(
    spec: Arc<MirrorSpec>,
    mut rx: mpsc::Receiver<Item>,
    mut exit: oneshot::Receiver<()>,
    down: Arc<AtomicBool>,
) {
    let stats = spec.stats.clone();
    let pool = bb8::Pool::builder()
        .max_size(1)
        .test_on_check_out(true)
        .retry_connection(false)
        .connection_timeout(spec.login.connect_timeout)
        .idle_timeout(spec.idle_timeout)
        .max_lifetime(spec.server_lifetime)
        .build_unchecked(MirrorManager { spec: spec.clone() });
    let mut task = Task {
        stats: stats.clone(),
        conn: None,
        generation: 0,
        sent: Sent::default(),
        replies: Replies::default(),
        pending: VecDeque::new(),
        status: b'I',
        rbuf: BytesMut::new(),
        fresh: true,
        id: GENERATION.fetch_add(1, Ordering::Relaxed),
    };
    let mut skipping = false;
    let mut backoff = Duration::from_millis(100);
    let mut down_until: Option<Instant> = None;
    loop {
        let item = tokio::select! {
            biased;
            _ = &mut exit => break,
            _ = tokio::time::sleep_until(down_until.unwrap_or_else(Instant::now).into()), if down_until.is_some() => {
                // Backoff over: the next transaction tries again.
                down_until = None;
                down.store(false, Ordering::Relaxed);
                continue;
            }
            r = task.read_batched(), if task.conn.is_some() && !task.pending.is_empty() => {
                if let Err(e) = r {
                    task.fail(e);
                    skipping = true;
                }
                continue;
            }
            item = rx.recv(), if task.pending.len() < IN_FLIGHT => match item {
                Some(i) => i,
                None => break,
            },
        };
        // Coalesce: let the producers run once, then take everything that
        // queued up, so several transactions go out in one write.
        let mut items = vec![item];
        if matches!(items[0], Item::Data { .. }) {
            tokio::time::sleep(LINGER).await;
            while items.len() < 128 {
                match rx.try_recv() {
                    Ok(i) => items.push(i),
                    Err(_) => break,
                }
            }
        }
        stats
            .queue_depth
            .fetch_sub(items.len() as i64, Ordering::Relaxed);
        let mut out = BytesMut::new();
        let mut out_msgs = 0;
        let mut exiting = false;
        for item in items {
            match item {
                Item::Data {
                    bytes,
                    at,
                    starts_transaction,
                } => {
                    if skipping && !starts_transaction {
                        continue;
                    }
                    skipping = false;
                    if down_until.is_some_and(|t| Instant::now() < t) {
                        // Down and backing off: this transaction is lost.
                        if starts_transaction {
                            stats.dropped_transactions.fetch_add(1, Ordering::Relaxed);
                        }
                        skipping = true;
                        continue;
                    }
                    if task.conn.is_none() {
                        stats.connecting.fetch_add(1, Ordering::Relaxed);
                        let got = checkout(&pool, &spec).await;
                        stats.connecting.fetch_sub(1, Ordering::Relaxed);
                        match got {
                            Ok(c) => {
                                task.conn = Some(c);
                                down_until = None;
                                down.store(false, Ordering::Relaxed);
                                backoff = Duration::from_millis(100);
                            }
                            Err(msg) => {
                                stats.error(format!(
                                    "{}:{}: {msg}",
                                    spec.address.host, spec.address.port
                                ));
                                stats.dropped_transactions.fetch_add(1, Ordering::Relaxed);
                                down.store(true, Ordering::Relaxed);
                                down_until = Some(Instant::now() + backoff);
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                                skipping = true;
                                continue;
                            }
                        }
                    }
                    if let Err(e) = task.prepare_new_connection().await {
                        task.fail(e);
                        out.clear();
                        skipping = true;
                        continue;
                    }
                    if !starts_transaction && task.fresh {
                        // A new connection must not start in the middle of
                        // a transaction.
                        skipping = true;
                        continue;
                    }
                    task.fresh = false;
                    let (msgs, syncs) = task.sent.scan(&bytes);
                    for _ in 0..syncs {
                        task.pending.push_back(Some(at));
                    }
                    out_msgs += msgs;
                    out.extend_from_slice(&bytes);
                }
                Item::Resync | Item::Reset => {
                    match task.flush(&mut out, &mut out_msgs, &mut exit).await {
                        Ok(true) => {}
                        Ok(false) => {
                            exiting = true;
                            break;
                        }
                        Err(e) => task.fail(e),
                    }
                    let discard = matches!(item, Item::Reset);
                    if let Err(e) = task.resync(discard, &mut exit).await {
                        task.fail(e);
                    }
                    skipping = false;
                }
            }
        }
        if exiting {
            break;
        }
        match task.flush(&mut out, &mut out_msgs, &mut exit).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                task.fail(e);
                skipping = true;
            }
        }
        // Idle: the connection goes back to bb8, which closes it after
        // idle_timeout or server_lifetime.
        if task.pending.is_empty() && rx.is_empty() && !task.sent.unsynced && task.status == b'I' {
            task.conn = None;
        }
    }
    // The server connection is gone: so is the mirror connection.
    drop(task);
    drop(pool);
    stats.tasks.fetch_sub(1, Ordering::Relaxed);
    let left = rx.len() as i64;
    stats.queue_depth.fetch_sub(left, Ordering::Relaxed);
}

struct Task {
    stats: Arc<MirrorStats>,
    conn: Option<bb8::PooledConnection<'static, MirrorManager>>,
    /// Generation of the connection the stream state belongs to.
    generation: u64,
    sent: Sent,
    replies: Replies,
    /// One entry per ReadyForQuery owed: when the request was handed over
    /// (None for the task's own requests, which do not count as lag).
    pending: VecDeque<Option<Instant>>,
    status: u8,
    rbuf: BytesMut,
    /// The connection has carried nothing of the client's yet.
    fresh: bool,
    /// Identifies the task in the stats' waiting table.
    id: u64,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.stats.waiting.lock().remove(&self.id);
    }
}

impl Task {
    fn stream(&mut self) -> &mut Stream {
        &mut self.conn.as_mut().expect("connected").server.stream
    }

    fn fail(&mut self, e: impl std::fmt::Display) {
        self.stats.error(e);
        if let Some(c) = self.conn.as_mut() {
            c.server.broken = true;
        }
        self.conn = None;
        self.pending.clear();
        self.publish_waiting();
        self.status = b'I';
        self.generation = 0;
    }

    /// On a connection the task has not used yet: fresh stream state, and
    /// the statements prepared so far prepared again.
    async fn prepare_new_connection(&mut self) -> io::Result<()> {
        let generation = self.conn.as_ref().map(|c| c.generation).unwrap_or(0);
        if generation == self.generation {
            return Ok(());
        }
        self.generation = generation;
        self.fresh = true;
        self.pending.clear();
        self.replies = Replies::default();
        self.status = b'I';
        let parses = std::mem::take(&mut self.sent.parses);
        self.sent = Sent::default();
        if parses.is_empty() {
            return Ok(());
        }
        let mut out = BytesMut::new();
        for p in parses.values() {
            out.extend_from_slice(p);
        }
        messages::sync(&mut out);
        self.sent.parses = parses;
        self.pending.push_back(None);
        let stream = self.stream();
        tokio::io::AsyncWriteExt::write_all(stream, &out).await
    }

    /// Writes the batched client bytes, if any. Ok(false): exit requested.
    async fn flush(
        &mut self,
        out: &mut BytesMut,
        msgs: &mut u64,
        exit: &mut oneshot::Receiver<()>,
    ) -> io::Result<bool> {
        if out.is_empty() || self.conn.is_none() {
            out.clear();
            *msgs = 0;
            return Ok(true);
        }
        self.publish_waiting();
        let data = std::mem::take(out);
        let r = self.write(&data, exit).await;
        if matches!(r, Ok(true)) {
            self.stats.sent_messages.fetch_add(*msgs, Ordering::Relaxed);
        }
        *msgs = 0;
        r
    }

    /// Waits for replies, lets more of them arrive, then reads them in
    /// one go.
    async fn read_batched(&mut self) -> io::Result<()> {
        self.stream().readable().await?;
        if self.pending.len() > 1 {
            tokio::time::sleep(LINGER).await;
        }
        self.read_some().await
    }

    /// Reads replies once; counts lag for each ReadyForQuery.
    async fn read_some(&mut self) -> io::Result<()> {
        if self.rbuf.capacity() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
        let mut buf = std::mem::take(&mut self.rbuf);
        let r = tokio::io::AsyncReadExt::read_buf(self.stream(), &mut buf).await;
        let result = match r {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "mirror closed the connection",
            )),
            Ok(_) => {
                self.handle_replies(&buf);
                Ok(())
            }
            Err(e) => Err(e),
        };
        buf.clear();
        self.rbuf = buf;
        result
    }

    fn handle_replies(&mut self, data: &[u8]) {
        let mut statuses = Vec::new();
        self.replies.feed(data, &mut statuses);
        if statuses.is_empty() {
            return;
        }
        let now = Instant::now();
        for status in statuses {
            self.status = status;
            if let Some(Some(at)) = self.pending.pop_front() {
                self.stats.record_lag(now.duration_since(at));
            }
        }
        self.publish_waiting();
    }

    /// Tells the stats when the oldest unanswered client request was
    /// handed over.
    fn publish_waiting(&self) {
        let oldest = self.pending.iter().flatten().next().copied();
        let mut waiting = self.stats.waiting.lock();
        match oldest {
            Some(t) => {
                waiting.insert(self.id, t);
            }
            None => {
                waiting.remove(&self.id);
            }
        }
    }

    /// Writes while reading replies, so a mirror that answers a lot
    /// cannot deadlock against us. Ok(false): exit requested.
    async fn write(
        &mut self,
        mut data: &[u8],
        exit: &mut oneshot::Receiver<()>,
    ) -> io::Result<bool> {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        if rbuf.capacity() < 4096 {
            rbuf.reserve(16 * 1024);
        }
        enum Event {
            Wrote(io::Result<usize>),
            Read(io::Result<usize>),
        }
        let result = loop {
            if data.is_empty() {
                break Ok(true);
            }
            rbuf.clear();
            let stream = &mut self.conn.as_mut().expect("connected").server.stream;
            // Write and read in one poll: whichever can progress does.
            let progress = std::future::poll_fn(|cx| {
                use std::task::Poll;
                use tokio::io::AsyncWrite;
                if let Poll::Ready(r) = std::pin::Pin::new(&mut *stream).poll_write(cx, data) {
                    return Poll::Ready(Event::Wrote(r));
                }
                match tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *stream), cx, &mut rbuf)
                {
                    Poll::Ready(r) => Poll::Ready(Event::Read(r)),
                    Poll::Pending => Poll::Pending,
                }
            });
            let event = tokio::select! {
                _ = &mut *exit => None,
                event = progress => Some(event),
            };
            match event {
                None => break Ok(false),
                Some(Event::Wrote(Ok(0))) => {
                    break Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "mirror connection closed",
                    ))
                }
                Some(Event::Wrote(Ok(n))) => data = &data[n..],
                Some(Event::Wrote(Err(e))) => break Err(e),
                Some(Event::Read(Ok(0))) => {
                    break Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "mirror closed the connection",
                    ))
                }
                Some(Event::Read(Ok(_))) => self.handle_replies(&rbuf),
                Some(Event::Read(Err(e))) => break Err(e),
            }
        };
        rbuf.clear();
        self.rbuf = rbuf;
        result
    }

    /// Brings the mirror connection to idle: waits for the replies it
    /// owes, closes an open extended batch, rolls back an open
    /// transaction, and with `discard` resets the session.
    async fn resync(&mut self, discard: bool, exit: &mut oneshot::Receiver<()>) -> io::Result<()> {
        if self.conn.is_none() {
            return Ok(());
        }
        if self.sent.mid_message() {
            // Half a message went out: the stream cannot be repaired.
            self.fail("mirror stream cut mid-message; reconnecting");
            return Ok(());
        }
        let deadline = Instant::now() + CLEANUP_TIMEOUT;
        self.drain(deadline).await?;
        if self.sent.unsynced {
            let mut out = BytesMut::new();
            messages::sync(&mut out);
            self.sent.unsynced = false;
            self.request(&out, deadline, exit).await?;
        }
        if self.status != b'I' {
            let mut out = BytesMut::new();
            messages::query(&mut out, "ROLLBACK");
            self.request(&out, deadline, exit).await?;
        }
        if discard {
            let mut out = BytesMut::new();
            messages::query(&mut out, "DISCARD ALL");
            self.sent.parses.clear();
            self.request(&out, deadline, exit).await?;
        }
        Ok(())
    }

    /// Sends one request of the task's own and waits for its answer.
    async fn request(
        &mut self,
        out: &[u8],
        deadline: Instant,
        exit: &mut oneshot::Receiver<()>,
    ) -> io::Result<()> {
        self.pending.push_back(None);
        if self.write(out, exit).await? {
            self.drain(deadline).await?;
        }
        Ok(())
    }

    /// Reads until every reply owed has arrived.
    async fn drain(&mut self, deadline: Instant) -> io::Result<()> {
        while !self.pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read_some()).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "mirror did not answer",
                    ))
                }
            }
        }
        Ok(())
    }
}
