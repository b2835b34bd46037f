//! The configuration model: PgCat's `pgcat.toml` format, key for key.
//!
//! Field names, meanings and defaults follow PgCat 1.3 so that an
//! existing PgCat file loads unchanged; `docs/configuration.md` lists
//! every key. Times are milliseconds unless a field says otherwise.
//! Loading, validation and error locations live in `load`.

pub mod hash;
mod load;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{ConfigError, Warning};

use crate::proxy::auth::AuthMethod;
use crate::proxy::secret::Secret;
use crate::proxy::tls::{ClientSslMode, ServerSslMode, TlsSettings};

/// A whole config file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Config {
    pub general: General,
    /// Pools by name; the name is the database clients connect to.
    pub pools: BTreeMap<String, Pool>,
    /// PgCat's query plugins. Accepted so PgCat files load; not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugins: Option<toml::Value>,
    /// Where the config was read from, for reload and error messages.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// `[general]`: the listener and what applies to every pool.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct General {
    pub host: String,
    pub port: u16,
    pub enable_prometheus_exporter: bool,
    pub prometheus_exporter_port: u16,
    /// How long a client waits for a pooled server connection.
    pub connect_timeout: u64,
    /// Server connections idle longer than this are closed (0: never).
    pub idle_timeout: u64,
    /// Server connections older than this are closed when idle (0: never).
    pub server_lifetime: u64,
    /// Clients idle inside a transaction longer than this are closed (0: off).
    pub idle_client_in_transaction_timeout: u64,
    pub healthcheck_timeout: u64,
    /// Connections used more recently than this skip the health check.
    pub healthcheck_delay: u64,
    pub shutdown_timeout: u64,
    /// Seconds a failing server stays banned.
    pub ban_time: u64,
    /// Seconds of idleness before the first keepalive probe.
    pub tcp_keepalives_idle: u64,
    pub tcp_keepalives_count: u32,
    /// Seconds between keepalive probes.
    pub tcp_keepalives_interval: u64,
    /// Milliseconds written data may stay unacknowledged (0: OS default).
    pub tcp_user_timeout: u64,
    pub log_client_connections: bool,
    pub log_client_disconnections: bool,
    pub dns_cache_enabled: bool,
    pub dns_max_ttl: u64,
    pub server_round_robin: bool,
    pub worker_threads: usize,
    /// Re-read the config file at this interval when it changed.
    pub autoreload: Option<u64>,
    /// PEM certificate chain offered to clients that ask for TLS.
    pub tls_certificate: Option<String>,
    pub tls_private_key: Option<String>,
    /// PgBouncer's: whether clients may, or must, use TLS (unset: `prefer`
    /// with a certificate, else `disable`).
    pub client_tls_sslmode: Option<ClientSslMode>,
    /// PgCat's: ask PostgreSQL for TLS (falls back to plaintext when
    /// refused, unless `verify_server_certificate`).
    pub server_tls: bool,
    /// PgCat's: verify the server certificate and host name.
    pub verify_server_certificate: bool,
    /// PgBouncer's: overrides `server_tls`/`verify_server_certificate`.
    pub server_tls_sslmode: Option<ServerSslMode>,
    /// CA bundle that server certificates are verified against (unset:
    /// the system's roots).
    pub server_tls_ca_file: Option<String>,
    /// Client certificate and key presented to PostgreSQL.
    pub server_tls_cert_file: Option<String>,
    pub server_tls_key_file: Option<String>,
    pub admin_username: Option<String>,
    pub admin_password: Option<Secret>,
    pub admin_auth_type: AuthType,
    pub validate_config: bool,
    pub auth_query: Option<String>,
    pub auth_query_user: Option<String>,
    pub auth_query_password: Option<Secret>,
    /// PgBouncer's: startup parameters dropped instead of applied (a
    /// comma-separated string or a list). `options` drops them all.
    #[serde(deserialize_with = "name_list")]
    pub ignore_startup_parameters: Vec<String>,
    /// PgBouncer's: parameters to track beyond its defaults. pgcat tracks
    /// every session setting, so this is accepted and changes nothing.
    #[serde(deserialize_with = "name_list")]
    pub track_extra_parameters: Vec<String>,
    /// Named prepared statements one client may hold in transaction mode
    /// (0: no limit); past it, a Parse gets an error.
    pub max_prepared_statements: usize,
    /// PgBouncer's: client connections at once, logged in or not; the
    /// next one gets 53300 at once.
    pub max_client_conn: usize,
    /// PgBouncer's: the listen queue, connections the kernel has
    /// accepted and pgcat has not yet taken (Linux caps it at
    /// `net.core.somaxconn`). Past it, a connecting client's handshake is
    /// dropped and retried a second later.
    pub listen_backlog: u32,
    /// PgBouncer's: a client must finish startup and authentication
    /// within this time (ms).
    pub client_login_timeout: u64,
    /// PgBouncer's: a client that holds no server and sends nothing this
    /// long is disconnected (ms, 0: never).
    pub client_idle_timeout: u64,
    /// A client that holds a server connection and stops the traffic (does
    /// not read the results it asked for, or does not finish a message it
    /// started) is disconnected after this long, and the server
    /// connection closed (ms, 0: never).
    pub stalled_client_timeout: u64,
    /// The largest message pgcat holds whole (a Parse in transaction mode,
    /// which it keeps to prepare again); larger ones close the client
    /// connection. Everything else streams.
    pub max_buffered_message: usize,
}

/// A list of names, as PgBouncer writes it (`"a, b"`) or as a TOML list.
fn name_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Names {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Names::deserialize(d)? {
        Names::One(s) => s
            .split(',')
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
        Names::Many(v) => v,
    })
}

impl General {
    /// Keys that take effect only after a restart.
    pub const RESTART_ONLY: &'static [&'static str] = &[
        "host",
        "port",
        "worker_threads",
        "enable_prometheus_exporter",
        "prometheus_exporter_port",
    ];

    /// The [`Self::RESTART_ONLY`] keys whose values differ in `new`.
    /// The mode towards PostgreSQL: PgBouncer's `server_tls_sslmode` when
    /// set, else PgCat's `server_tls` and `verify_server_certificate`.
    pub fn server_ssl_mode(&self) -> ServerSslMode {
        match self.server_tls_sslmode {
            Some(m) => m,
            None if !self.server_tls => ServerSslMode::Disable,
            None if self.verify_server_certificate => ServerSslMode::VerifyFull,
            None => ServerSslMode::Prefer,
        }
    }

    /// The mode towards clients: `client_tls_sslmode` when set, else
    /// PgCat's behaviour (TLS offered when a certificate is configured,
    /// plaintext always accepted).
    pub fn client_ssl_mode(&self) -> ClientSslMode {
        match self.client_tls_sslmode {
            Some(m) => m,
            None if self.tls_certificate.is_some() => ClientSslMode::Prefer,
            None => ClientSslMode::Disable,
        }
    }

    /// The files and modes the TLS configs are built from.
    pub fn tls_settings(&self) -> TlsSettings {
        TlsSettings {
            certificate: self.tls_certificate.clone(),
            private_key: self.tls_private_key.clone(),
            client_mode: self.client_ssl_mode(),
            server_ca_file: self.server_tls_ca_file.clone(),
            server_cert_file: self.server_tls_cert_file.clone(),
            server_key_file: self.server_tls_key_file.clone(),
            server_mode: self.server_ssl_mode(),
        }
    }

    pub fn restart_only_changes(&self, new: &General) -> Vec<&'static str> {
        let old = toml::Value::try_from(self).ok();
        let new = toml::Value::try_from(new).ok();
        Self::RESTART_ONLY
            .iter()
            .copied()
            .filter(|k| old.as_ref().and_then(|v| v.get(k)) != new.as_ref().and_then(|v| v.get(k)))
            .collect()
    }
}

impl Default for General {
    fn default() -> Self {
        General {
            host: "0.0.0.0".into(),
            port: 5432,
            enable_prometheus_exporter: false,
            prometheus_exporter_port: 9930,
            connect_timeout: 1000,
            idle_timeout: 600_000,
            server_lifetime: 3_600_000,
            idle_client_in_transaction_timeout: 0,
            healthcheck_timeout: 1000,
            healthcheck_delay: 30_000,
            shutdown_timeout: 60_000,
            ban_time: 60,
            tcp_keepalives_idle: 5,
            tcp_keepalives_count: 5,
            tcp_keepalives_interval: 5,
            tcp_user_timeout: 10_000,
            log_client_connections: false,
            log_client_disconnections: false,
            dns_cache_enabled: false,
            dns_max_ttl: 30,
            server_round_robin: true,
            worker_threads: 4,
            autoreload: None,
            tls_certificate: None,
            tls_private_key: None,
            client_tls_sslmode: None,
            server_tls: false,
            verify_server_certificate: false,
            server_tls_sslmode: None,
            server_tls_ca_file: None,
            server_tls_cert_file: None,
            server_tls_key_file: None,
            admin_username: None,
            admin_password: None,
            admin_auth_type: AuthType::Md5,
            validate_config: true,
            auth_query: None,
            auth_query_user: None,
            auth_query_password: None,
            ignore_startup_parameters: Vec::new(),
            track_extra_parameters: Vec::new(),
            max_prepared_statements: 1000,
            max_client_conn: 10_000,
            listen_backlog: 4096,
            client_login_timeout: 60_000,
            client_idle_timeout: 0,
            stalled_client_timeout: 60_000,
            max_buffered_message: 16 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    #[default]
    Transaction,
    Session,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancingMode {
    #[default]
    #[serde(alias = "Random")]
    Random,
    /// Least outstanding connections.
    #[serde(alias = "LOC", alias = "least_outstanding_connections")]
    Loc,
    /// Each server in turn.
    #[serde(alias = "round-robin")]
    RoundRobin,
}

impl LoadBalancingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancingMode::Random => "random",
            LoadBalancingMode::Loc => "loc",
            LoadBalancingMode::RoundRobin => "round_robin",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DefaultRole {
    #[default]
    Any,
    Primary,
    Replica,
    /// pgcat finds each server's role (`pg_is_in_recovery()`), and the
    /// query parser sends reads to replicas when it is on.
    Auto,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    /// Found at run time (`pg_is_in_recovery()`), so a failover is
    /// followed without a reload.
    Auto,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Auto => "auto",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShardingFunction {
    #[default]
    PgBigintHash,
    Sha1,
}

/// How clients prove their identity to pgcat.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum AuthType {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

impl AuthType {
    pub fn method(self) -> AuthMethod {
        match self {
            AuthType::ScramSha256 => AuthMethod::ScramSha256,
            AuthType::Md5 => AuthMethod::Md5,
            AuthType::Trust => AuthMethod::Trust,
        }
    }
}

/// `[pools.<name>]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Pool {
    pub pool_mode: PoolMode,
    pub load_balancing_mode: LoadBalancingMode,
    pub default_role: DefaultRole,
    pub query_parser_enabled: bool,
    pub query_parser_max_length: Option<usize>,
    pub query_parser_read_write_splitting: bool,
    pub primary_reads_enabled: bool,
    /// Overrides `general.connect_timeout` for this pool.
    pub connect_timeout: Option<u64>,
    pub idle_timeout: Option<u64>,
    pub server_lifetime: Option<u64>,
    pub checkout_failure_limit: Option<u64>,
    pub sharding_function: ShardingFunction,
    pub automatic_sharding_key: Option<String>,
    pub sharding_key_regex: Option<String>,
    pub shard_id_regex: Option<String>,
    pub regex_search_limit: usize,
    pub default_shard: String,
    /// Reset session state a client changed with SET before its server
    /// connection goes back to the pool.
    pub cleanup_server_connections: bool,
    pub log_client_parameter_status_changes: bool,
    /// Named prepared statements kept per server connection in
    /// transaction mode (0: the default of 256).
    pub prepared_statements_cache_size: usize,
    /// pgcat's: in transaction mode, a client's unnamed statements run as
    /// statements pgcat prepares on the servers under its own names (as
    /// for named ones), so PostgreSQL plans each text once per server
    /// connection instead of at every Parse.
    pub cache_unnamed_statements: bool,
    /// Replicas whose replay lag is above this (ms) get no reads (unset:
    /// lag is not measured).
    pub replica_max_lag: Option<u64>,
    /// Functions the query parser counts as reads besides its built-in
    /// list (`["*"]`: every function, as PgCat does).
    pub query_parser_read_functions: Vec<String>,
    /// PgCat's per-pool auth_query keys (unset: the `[general]` ones).
    pub auth_query: Option<String>,
    pub auth_query_user: Option<String>,
    pub auth_query_password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugins: Option<toml::Value>,
    pub users: BTreeMap<String, User>,
    pub shards: BTreeMap<String, Shard>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            pool_mode: PoolMode::Transaction,
            load_balancing_mode: LoadBalancingMode::Random,
            default_role: DefaultRole::Any,
            query_parser_enabled: false,
            query_parser_max_length: None,
            query_parser_read_write_splitting: false,
            primary_reads_enabled: false,
            connect_timeout: None,
            idle_timeout: None,
            server_lifetime: None,
            checkout_failure_limit: None,
            sharding_function: ShardingFunction::PgBigintHash,
            automatic_sharding_key: None,
            sharding_key_regex: None,
            shard_id_regex: None,
            regex_search_limit: 1000,
            default_shard: "shard_0".into(),
            cleanup_server_connections: true,
            log_client_parameter_status_changes: false,
            prepared_statements_cache_size: 0,
            cache_unnamed_statements: false,
            replica_max_lag: None,
            query_parser_read_functions: Vec::new(),
            auth_query: None,
            auth_query_user: None,
            auth_query_password: None,
            plugins: None,
            users: BTreeMap::new(),
            shards: BTreeMap::new(),
        }
    }
}

impl Pool {
    /// auth_query, its user and password: the pool's, else `[general]`'s.
    pub fn auth_query_config<'a>(
        &'a self,
        g: &'a General,
    ) -> (Option<&'a str>, Option<&'a str>, Option<&'a Secret>) {
        (
            self.auth_query.as_deref().or(g.auth_query.as_deref()),
            self.auth_query_user
                .as_deref()
                .or(g.auth_query_user.as_deref()),
            self.auth_query_password
                .as_ref()
                .or(g.auth_query_password.as_ref()),
        )
    }

    /// Where auth_query runs: shard 0's primary, else its first server.
    pub fn auth_query_target(&self) -> Option<(String, &ServerEntry)> {
        let shard = self
            .shards
            .get("0")
            .or_else(|| self.shards.values().next())?;
        let entry = shard
            .servers
            .iter()
            .find(|s| s.2 == Role::Primary)
            .or_else(|| shard.servers.first())?;
        Some((shard.database.clone(), entry))
    }
}

/// `[pools.<name>.users.<n>]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct User {
    pub username: String,
    #[serde(default)]
    pub password: Secret,
    #[serde(default)]
    pub auth_type: AuthType,
    /// Log in to PostgreSQL as this user instead of `username`.
    #[serde(default)]
    pub server_username: Option<String>,
    #[serde(default)]
    pub server_password: Option<Secret>,
    pub pool_size: u32,
    #[serde(default)]
    pub min_pool_size: u32,
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    #[serde(default)]
    pub server_lifetime: Option<u64>,
    /// Applied to every server connection of this user (0: off).
    #[serde(default)]
    pub statement_timeout: u64,
    #[serde(default)]
    pub connect_timeout: Option<u64>,
    #[serde(default)]
    pub idle_timeout: Option<u64>,
}

/// `[pools.<name>.shards.<n>]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Shard {
    pub database: String,
    pub servers: Vec<ServerEntry>,
    #[serde(default)]
    pub mirrors: Vec<MirrorEntry>,
}

/// `[host, port, role]` as PgCat writes it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub struct ServerEntry(pub String, pub u16, pub Role);

/// `[host, port, index into servers]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub struct MirrorEntry(pub String, pub u16, pub usize);

impl Config {
    /// Reads, parses and validates a config file. Warnings (unknown keys,
    /// accepted-but-unsupported settings) come back beside the config.
    pub fn load(path: impl Into<PathBuf>) -> Result<(Config, Vec<Warning>), ConfigError> {
        load::load_file(path.into())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<(Config, Vec<Warning>), ConfigError> {
        load::parse(text, origin)
    }

    pub fn admin_username(&self) -> &str {
        self.general.admin_username.as_deref().unwrap_or_default()
    }

    pub fn admin_password(&self) -> &str {
        self.general.admin_password.as_deref().unwrap_or_default()
    }
}

/// Turns a millisecond setting where 0 means "off" into an option.
pub fn millis(ms: u64) -> Option<std::time::Duration> {
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}
