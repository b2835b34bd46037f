//! One connection to PostgreSQL: login, the settings PostgreSQL reports,
//! the statements pgcat prepared on it, and the queries pgcat runs on its
//! own behalf (health check, settings replay, rollback, reset).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::auth::{ServerAuthError, ServerLogin};
use super::config::Role;
use super::mirror::MirrorHandle;
use super::net::{self, SocketSettings};
use super::protocol::codec::MAX_MESSAGE_LEN;
use super::protocol::messages::{self, parse_error_fields, ErrorFields};
use super::stats::{NewServer, Registration, Registry, ServerInfo, ServerState};
use super::wire;

/// Where a server is and what it is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddress {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub role: Role,
    pub shard: usize,
    /// Position in the shard's `servers` list.
    pub index: usize,
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.host, self.port, self.database)
    }
}

/// How to log in to a server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoginInfo {
    pub user: String,
    pub password: Option<String>,
    /// statement_timeout in ms, sent in the startup packet (0: not sent).
    pub statement_timeout: u64,
    pub socket: SocketSettings,
    /// Bound on TCP connect plus login.
    pub connect_timeout: Duration,
}

/// Settings PostgreSQL reports with ParameterStatus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => {
                if v != value {
                    *v = value.to_string();
                }
            }
            None => self.0.push((name.to_string(), value.to_string())),
        }
    }
}

/// Settings that follow a client from server to server in transaction
/// mode: when the server a client gets has different values, pgcat sets
/// the client's values first. All are reported by PostgreSQL.
pub const TRACKED_PARAMS: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "application_name",
    "standard_conforming_strings",
    "IntervalStyle",
];

/// A digest of the tracked settings' values, to tell in one comparison
/// whether a client's settings match a server's.
pub fn tracked_digest(params: &Params) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    for name in TRACKED_PARAMS {
        params.get(name).hash(&mut h);
    }
    h.finish()
}

/// The canonical spelling of a tracked setting (names are
/// case-insensitive in PostgreSQL, ParameterStatus uses these).
pub fn tracked_param(name: &str) -> Option<&'static str> {
    TRACKED_PARAMS
        .iter()
        .find(|p| p.eq_ignore_ascii_case(name))
        .copied()
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    #[error("login to {addr} failed: {source}")]
    Auth {
        addr: String,
        source: ServerAuthError,
    },
    /// PostgreSQL answered with an error.
    #[error("{}: {} ({})", .0.severity, .0.message, .0.code)]
    Postgres(ErrorFields),
    #[error("server connection: {0}")]
    Io(#[from] io::Error),
    #[error("server sent unexpected message {0:?}")]
    Unexpected(char),
    #[error("server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("pool was replaced by a reload")]
    Retired,
}

/// The statements pgcat prepared on one server connection, by the hash of
/// their text and parameter types, with a use counter for LRU eviction.
#[derive(Debug, Default)]
pub struct ServerStatements {
    used: HashMap<u64, u64>,
    clock: u64,
}

impl ServerStatements {
    pub fn contains(&mut self, hash: u64) -> bool {
        self.clock += 1;
        match self.used.get_mut(&hash) {
            Some(t) => {
                *t = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records a statement; returns the least recently used one to close
    /// when the cache is over `capacity`.
    pub fn insert(&mut self, hash: u64, capacity: usize) -> Option<u64> {
        self.clock += 1;
        self.used.insert(hash, self.clock);
        if self.used.len() > capacity.max(1) {
            let (&oldest, _) = self
                .used
                .iter()
                .filter(|(&h, _)| h != hash)
                .min_by_key(|(_, &t)| t)?;
            self.used.remove(&oldest);
            return Some(oldest);
        }
        None
    }

    pub fn remove(&mut self, hash: u64) {
        self.used.remove(&hash);
    }

    pub fn clear(&mut self) {
        self.used.clear();
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// One server connection.
#[derive(Debug)]
pub struct Server {
    pub stream: TcpStream,
    pub address: Arc<ServerAddress>,
    /// What PostgreSQL reported at login and since.
    pub params: Params,
    pub backend_pid: i32,
    pub secret_key: i32,
    pub statements: ServerStatements,
    pub id: u64,
    pub created: Instant,
    /// When a client last gave it back (coarse ms); the health check is
    /// skipped for connections used more recently than `healthcheck_delay`.
    pub last_used: u64,
    /// Set when the connection must not be reused (IO error, abandoned
    /// mid-request, protocol confusion). bb8 drops it on return.
    pub broken: bool,
    /// A client changed session state that must be reset before reuse.
    pub dirty: bool,
    /// [`tracked_digest`] of `params`, computed when first needed after
    /// they changed.
    pub tracked: Option<u64>,
    /// What the admin console shows about this connection.
    pub info: Arc<ServerInfo>,
    _registration: Option<Registration>,
    /// One handle per mirror of this server; dropping them tells the
    /// mirror tasks to close their connections.
    pub mirrors: Vec<MirrorHandle>,
}

impl Server {
    /// Opens and logs in a connection for the (pool, user) named in
    /// `identity`, registered for the admin console from the start.
    /// Without a registry (mirror connections) it is not listed.
    pub async fn connect(
        address: Arc<ServerAddress>,
        login: &LoginInfo,
        identity: (Option<Arc<Registry>>, &str, &str),
    ) -> Result<Server, ServerError> {
        let (registry, db, user) = identity;
        let new = NewServer {
            db: db.to_string(),
            user: user.to_string(),
            host: address.host.clone(),
            port: address.port,
            database: address.database.clone(),
            role: address.role.as_str(),
        };
        let (info, registration) = match registry {
            Some(r) => {
                let (i, reg) = r.add_server(new);
                (i, Some(reg))
            }
            None => (Registry::detached_server(new), None),
        };
        let deadline = login.connect_timeout;
        let connecting = Self::connect_inner(address.clone(), login, info, registration);
        match tokio::time::timeout(deadline, connecting).await {
            Ok(r) => r,
            Err(_) => Err(ServerError::ConnectTimeout(address.to_string())),
        }
    }

    async fn connect_inner(
        address: Arc<ServerAddress>,
        login: &LoginInfo,
        info: Arc<ServerInfo>,
        registration: Option<Registration>,
    ) -> Result<Server, ServerError> {
        let addr = address.to_string();
        let mut stream = net::connect(&address.host, address.port, &login.socket)
            .await
            .map_err(|source| ServerError::Connect {
                addr: addr.clone(),
                source,
            })?;
        {
            use std::os::fd::AsRawFd;
            *info.local.lock() = stream.local_addr().ok();
            info.fd.store(stream.as_raw_fd(), Ordering::Relaxed);
        }
        let timeout = login.statement_timeout.to_string();
        let mut startup: Vec<(&str, &str)> = vec![
            ("user", login.user.as_str()),
            ("database", address.database.as_str()),
        ];
        if login.statement_timeout > 0 {
            startup.push(("statement_timeout", timeout.as_str()));
        }
        let mut out = BytesMut::with_capacity(128);
        messages::startup(&mut out, &startup);
        stream.write_all(&out).await?;

        let mut auth = ServerLogin::new(&login.user, login.password.as_deref());
        let mut buf = BytesMut::with_capacity(1024);
        let mut params = Params::default();
        let mut key = (0, 0);
        loop {
            let msg = wire::read_message(&mut stream, &mut buf, MAX_MESSAGE_LEN).await?;
            match msg.tag {
                b'R' => match auth.step(&msg.body) {
                    Ok(Some(reply)) => {
                        if !reply.is_empty() {
                            stream.write_all(&reply).await?;
                        }
                    }
                    Ok(None) => {}
                    Err(source) => return Err(ServerError::Auth { addr, source }),
                },
                b'S' => {
                    if let Ok((k, v)) = messages::parse_parameter_status(&msg.body) {
                        params.set(&k, &v);
                    }
                }
                b'K' => {
                    let (pid, rest) = messages::read_i32(&msg.body, "BackendKeyData")
                        .map_err(|_| ServerError::Unexpected('K'))?;
                    let (secret, _) = messages::read_i32(rest, "BackendKeyData")
                        .map_err(|_| ServerError::Unexpected('K'))?;
                    key = (pid, secret);
                }
                b'E' => return Err(ServerError::Postgres(parse_error_fields(&msg.body))),
                b'Z' => break,
                b'N' | b'v' => {}
                other => return Err(ServerError::Unexpected(other as char)),
            }
        }
        let now = Instant::now();
        info.remote_pid.store(key.0, Ordering::Relaxed);
        info.secret_key.store(key.1, Ordering::Relaxed);
        if let Some(app) = params.get("application_name") {
            *info.application_name.lock() = app.to_string();
        }
        info.set_state(ServerState::Idle, 0);
        Ok(Server {
            stream,
            address,
            params,
            backend_pid: key.0,
            secret_key: key.1,
            statements: ServerStatements::default(),
            id: info.id,
            created: now,
            last_used: super::stats::coarse_ms(),
            broken: false,
            dirty: false,
            tracked: None,
            info,
            _registration: registration,
            mirrors: Vec::new(),
        })
    }

    /// Runs a query pgcat issues itself and reads to ReadyForQuery,
    /// discarding results. An error from PostgreSQL comes back as
    /// `ServerError::Postgres`, with the connection still usable; any
    /// other failure marks it broken.
    pub async fn run(&mut self, sql: &str, limit: Duration) -> Result<(), ServerError> {
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        messages::query(&mut out, sql);
        self.exchange(&out, limit).await
    }

    /// Writes `request` and reads replies until ReadyForQuery.
    pub async fn exchange(&mut self, request: &[u8], limit: Duration) -> Result<(), ServerError> {
        let result = tokio::time::timeout(limit, self.exchange_inner(request)).await;
        match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.broken = true;
                Err(e)
            }
            Err(_) => {
                self.broken = true;
                Err(ServerError::Timeout(limit))
            }
        }
    }

    async fn exchange_inner(
        &mut self,
        request: &[u8],
    ) -> Result<Result<(), ServerError>, ServerError> {
        self.stream.write_all(request).await?;
        let mut buf = BytesMut::with_capacity(512);
        let mut first_error = None;
        loop {
            let msg = wire::read_message(&mut self.stream, &mut buf, MAX_MESSAGE_LEN).await?;
            match msg.tag {
                b'Z' => break,
                b'E' => {
                    let fields = parse_error_fields(&msg.body);
                    if fields.severity == "FATAL" || fields.severity == "PANIC" {
                        return Err(ServerError::Postgres(fields));
                    }
                    first_error.get_or_insert(fields);
                }
                b'S' => {
                    if let Ok((k, v)) = messages::parse_parameter_status(&msg.body) {
                        self.params.set(&k, &v);
                        self.tracked = None;
                    }
                }
                _ => {}
            }
        }
        if !buf.is_empty() {
            // Nothing may follow ReadyForQuery unasked.
            return Err(ServerError::Unexpected(buf[0] as char));
        }
        Ok(match first_error {
            Some(f) => Err(ServerError::Postgres(f)),
            None => Ok(()),
        })
    }

    /// Whether an idle connection has died or been spoken to since it was
    /// last used: closed by the server, reset, timed out by keepalive or
    /// TCP_USER_TIMEOUT, or carrying unasked-for data (a FATAL before a
    /// shutdown). Costs no syscall unless the event loop saw the socket
    /// become readable, which a quiet healthy connection never does.
    pub fn is_stale(&self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => false,
            std::task::Poll::Ready(Err(_)) => true,
            std::task::Poll::Ready(Ok(())) => {
                use std::os::fd::AsRawFd;
                let fd = self.stream.as_raw_fd();
                let peek = self.stream.try_io(tokio::io::Interest::READABLE, || {
                    let mut byte = 0u8;
                    // SAFETY: a one-byte peek into a local buffer.
                    let n = unsafe {
                        libc::recv(
                            fd,
                            &mut byte as *mut u8 as *mut libc::c_void,
                            1,
                            libc::MSG_PEEK | libc::MSG_DONTWAIT,
                        )
                    };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n)
                    }
                });
                // WouldBlock: the readiness was left over from the last
                // exchange and is now cleared; anything else is trouble.
                !matches!(peek, Err(ref e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends Terminate so PostgreSQL logs a clean disconnect.
    pub fn terminate(&mut self) {
        let mut out = BytesMut::with_capacity(5);
        messages::terminate(&mut out);
        let _ = self.stream.try_write(&out);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Quotes a value for `SET name TO '...'`.
pub fn quote_literal(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 2);
    s.push('\'');
    for c in value.chars() {
        if c == '\'' {
            s.push('\'');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_cache_evicts_least_recently_used() {
        let mut s = ServerStatements::default();
        assert_eq!(s.insert(1, 2), None);
        assert_eq!(s.insert(2, 2), None);
        assert!(s.contains(1));
        assert_eq!(s.insert(3, 2), Some(2));
        assert!(s.contains(1) && s.contains(3) && !s.contains(2));
        s.remove(1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn tracked_params_are_case_insensitive() {
        assert_eq!(tracked_param("timezone"), Some("TimeZone"));
        assert_eq!(tracked_param("DATESTYLE"), Some("DateStyle"));
        assert_eq!(tracked_param("search_path"), None);
    }

    #[test]
    fn literal_quoting() {
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
