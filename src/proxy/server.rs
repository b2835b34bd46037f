//! One connection to PostgreSQL: login, the settings PostgreSQL reports,
//! the statements pgcat prepared on it, and the queries pgcat runs on its
//! own behalf (health check, settings replay, rollback, reset).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

pub use super::auth::Passthrough;
use super::auth::{ServerAuthError, ServerLogin};
use super::config::Role;
use super::net::{self, SocketSettings};
use super::protocol::codec::MAX_MESSAGE_LEN;
use super::protocol::messages::{self, parse_error_fields, ErrorFields};
use super::protocol::settings::Settings;
use super::protocol::statements::{ServerStatements, Unnamed};
use super::secret::Secret;
use super::stats::{NewServer, Registration, Registry, ServerInfo, ServerState};
use super::tls::{self, Stream, TlsState};
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
#[derive(Debug, Clone)]
pub struct LoginInfo {
    pub user: String,
    pub password: Option<Secret>,
    /// For users without a password (auth_query): the secret learnt from
    /// the clients that logged in.
    pub passthrough: Option<Arc<Passthrough>>,
    /// TLS towards the server (the connector in force when connecting).
    pub tls: Option<Arc<TlsState>>,
    /// statement_timeout in ms, sent in the startup packet (0: not sent).
    pub statement_timeout: u64,
    pub socket: SocketSettings,
    /// Bound on TCP connect plus login.
    pub connect_timeout: Duration,
}

/// Settings PostgreSQL reports with ParameterStatus, with a digest for
/// the one comparison a checkout makes (kept current by `set`, so that a
/// shared copy can be compared without a write).
#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
    /// Order-independent digest of `pairs`.
    digest: u64,
}

impl PartialEq for Params {
    fn eq(&self, other: &Params) -> bool {
        self.pairs.len() == other.pairs.len()
            && self.pairs.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

fn pair_digest(k: &str, v: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (k, v).hash(&mut h);
    h.finish()
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `set` would change anything.
    pub fn differs(&self, name: &str, value: &str) -> bool {
        self.get(name) != Some(value)
    }

    pub fn set(&mut self, name: &str, value: &str) {
        match self.pairs.iter_mut().find(|(k, _)| k == name) {
            Some((k, v)) => {
                if v != value {
                    self.digest = self
                        .digest
                        .wrapping_sub(pair_digest(k, v))
                        .wrapping_add(pair_digest(k, value));
                    *v = value.to_string();
                }
            }
            None => {
                self.digest = self.digest.wrapping_add(pair_digest(name, value));
                self.pairs.push((name.to_string(), value.to_string()));
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A digest that two sets of the same pairs share, in any order.
    pub fn digest(&self) -> u64 {
        self.digest
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    #[error("TLS to {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
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

/// Rows of a query pgcat ran itself, as text (None for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// One server connection.
#[derive(Debug)]
pub struct Server {
    pub stream: Stream,
    pub address: Arc<ServerAddress>,
    /// What PostgreSQL reported at login and since.
    pub params: Params,
    pub backend_pid: i32,
    pub secret_key: i32,
    /// The statements pgcat prepared on it.
    pub statements: ServerStatements,
    /// Its session-level settings, as pgcat last applied or read them.
    pub settings: Arc<Settings>,
    /// Its unnamed statement.
    pub unnamed: Option<Arc<Unnamed>>,
    pub id: u64,
    pub created: Instant,
    /// When a client last gave it back (coarse ms); the health check is
    /// skipped for connections used more recently than `healthcheck_delay`.
    pub last_used: u64,
    /// Set when the connection must not be reused (IO error, abandoned
    /// mid-request, protocol confusion). bb8 drops it on return.
    pub broken: bool,
    /// What the admin console shows about this connection.
    pub info: Arc<ServerInfo>,
    _registration: Option<Registration>,
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
        let tcp = net::connect(&address.host, address.port, &login.socket)
            .await
            .map_err(|source| ServerError::Connect {
                addr: addr.clone(),
                source,
            })?;
        {
            use std::os::fd::AsRawFd;
            *info.local.lock() = tcp.local_addr().ok();
            info.fd.store(tcp.as_raw_fd(), Ordering::Relaxed);
        }
        let connector = login.tls.as_ref().and_then(|t| t.connector.load_full());
        let mut stream = tls::connect(tcp, &address.host, connector.as_deref())
            .await
            .map_err(|e| ServerError::Tls {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        *info.tls.lock() = stream.tls_description();
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

        let passthrough = login.passthrough.as_ref().and_then(|p| p.get());
        let mut auth =
            ServerLogin::new(&login.user, login.password.as_deref()).with_passthrough(passthrough);
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
            settings: Settings::empty(),
            unnamed: None,
            id: info.id,
            created: now,
            last_used: super::stats::coarse_ms(),
            broken: false,
            info,
            _registration: registration,
        })
    }

    /// Runs a query pgcat issues itself and reads to ReadyForQuery,
    /// discarding results. An error from PostgreSQL comes back as
    /// `ServerError::Postgres`, with the connection still usable; any
    /// other failure marks it broken.
    pub async fn run(&mut self, sql: &str, limit: Duration) -> Result<(), ServerError> {
        // A simple query drops the unnamed statement.
        self.unnamed = None;
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        messages::query(&mut out, sql);
        self.exchange(&out, limit).await
    }

    /// Like [`Server::run`], returning the rows of every result set in
    /// text form.
    pub async fn query_rows(&mut self, sql: &str, limit: Duration) -> Result<Rows, ServerError> {
        self.unnamed = None;
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        messages::query(&mut out, sql);
        let mut rows = Vec::new();
        self.exchange_collect(&out, limit, Some(&mut rows)).await?;
        Ok(rows)
    }

    /// Runs `sql` with text parameters through the extended protocol (so a
    /// value is never spliced into SQL); the rows in text form.
    pub async fn query_params(
        &mut self,
        sql: &str,
        params: &[&str],
        limit: Duration,
    ) -> Result<Rows, ServerError> {
        use bytes::BufMut;
        self.unnamed = None;
        let mut out = BytesMut::with_capacity(sql.len() + 64);
        messages::parse(&mut out, "", sql.as_bytes(), &[0, 0]);
        // Bind: unnamed portal and statement, all parameters text.
        let at = out.len();
        out.put_u8(b'B');
        out.put_i32(0);
        out.put_slice(b"\0\0");
        out.put_i16(0);
        out.put_i16(params.len() as i16);
        for p in params {
            out.put_i32(p.len() as i32);
            out.put_slice(p.as_bytes());
        }
        out.put_i16(0);
        let len = (out.len() - at - 1) as i32;
        out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
        out.put_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
        messages::sync(&mut out);
        let mut rows = Vec::new();
        self.exchange_collect(&out, limit, Some(&mut rows)).await?;
        Ok(rows)
    }

    /// Writes `request` and reads replies until ReadyForQuery.
    pub async fn exchange(&mut self, request: &[u8], limit: Duration) -> Result<(), ServerError> {
        self.exchange_collect(request, limit, None).await
    }

    async fn exchange_collect(
        &mut self,
        request: &[u8],
        limit: Duration,
        rows: Option<&mut Rows>,
    ) -> Result<(), ServerError> {
        let result = tokio::time::timeout(limit, self.exchange_inner(request, rows)).await;
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
        mut rows: Option<&mut Rows>,
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
                    }
                }
                b'D' => {
                    if let Some(rows) = rows.as_deref_mut() {
                        rows.push(
                            messages::parse_data_row(&msg.body)
                                .map_err(|_| ServerError::Unexpected('D'))?,
                        );
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
        let tcp = self.stream.tcp();
        match tcp.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => false,
            std::task::Poll::Ready(Err(_)) => true,
            std::task::Poll::Ready(Ok(())) => {
                use std::os::fd::AsRawFd;
                let fd = tcp.as_raw_fd();
                let peek = tcp.try_io(tokio::io::Interest::READABLE, || {
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
        self.stream.try_write_last(&out);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_digest_ignores_order_and_follows_changes() {
        let mut a = Params::default();
        a.set("TimeZone", "UTC");
        a.set("DateStyle", "ISO, MDY");
        let mut b = Params::default();
        b.set("DateStyle", "ISO, MDY");
        b.set("TimeZone", "UTC");
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a, b);
        b.set("TimeZone", "Europe/Paris");
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a, b);
    }
}
