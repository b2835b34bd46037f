//! Parsing and validation. Every error names the file, the line and the
//! key, in one line, so that `pgcat` can exit with it and `RELOAD` can
//! answer with it.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use super::{Config, DefaultRole, Role};
use crate::proxy::auth::ClientAuth;

/// A config that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File name or other origin of the text.
    pub origin: String,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `pools.app.users.0.pool_size`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Something worth telling the operator that does not stop the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub origin: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}: {}", self.key, self.message)
    }
}

pub(super) fn load_file(path: PathBuf) -> Result<(Config, Vec<Warning>), ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
        origin: origin.clone(),
        line: None,
        key: None,
        message: format!("cannot read config file: {e}"),
    })?;
    let (mut config, warnings) = parse(&text, &origin)?;
    config.path = Some(path);
    Ok((config, warnings))
}

pub(super) fn parse(text: &str, origin: &str) -> Result<(Config, Vec<Warning>), ConfigError> {
    let locator = Locator::new(text);
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let de = toml::Deserializer::new(text);
    let de = serde_path_to_error::Deserializer::new(de, &mut track);
    let result: Result<Config, _> = serde_ignored::deserialize(de, |path| {
        unknown.push(path.to_string());
    });
    let config = match result {
        Ok(c) => c,
        Err(e) => {
            let path = track.path().to_string();
            let key = (path != "." && !path.is_empty()).then_some(path);
            let line = e
                .span()
                .map(|s| locator.line_of(s.start))
                .or_else(|| key.as_deref().and_then(|k| locator.line_of_key(k)));
            return Err(ConfigError {
                origin: origin.to_string(),
                line,
                key,
                message: e.message().trim().to_string(),
            });
        }
    };

    let mut warnings: Vec<Warning> = unknown
        .into_iter()
        .map(|key| Warning {
            origin: origin.to_string(),
            line: locator.line_of_key(&key),
            key,
            message: "unknown key, ignored".into(),
        })
        .collect();

    let mut v = Validator {
        origin,
        locator: &locator,
        warnings: &mut warnings,
    };
    v.validate(&config)?;
    Ok((config, warnings))
}

struct Validator<'a> {
    origin: &'a str,
    locator: &'a Locator,
    warnings: &'a mut Vec<Warning>,
}

impl Validator<'_> {
    fn error(&self, key: String, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.to_string(),
            line: self.locator.line_of_key(&key),
            key: Some(key),
            message: message.into(),
        }
    }

    fn warn(&mut self, key: String, message: impl Into<String>) {
        self.warnings.push(Warning {
            origin: self.origin.to_string(),
            line: self.locator.line_of_key(&key),
            key,
            message: message.into(),
        });
    }

    fn validate(&mut self, c: &Config) -> Result<(), ConfigError> {
        let g = &c.general;
        if g.admin_username.as_deref().unwrap_or("").is_empty() {
            return Err(self.error("general.admin_username".into(), "is required"));
        }
        if g.admin_password.is_none() {
            return Err(self.error("general.admin_password".into(), "is required"));
        }
        if g.admin_auth_type == super::AuthType::Trust {
            return Err(self.error(
                "general.admin_auth_type".into(),
                "must be \"md5\" or \"scram-sha-256\"",
            ));
        }
        for (key, value) in [
            ("connect_timeout", g.connect_timeout),
            ("healthcheck_timeout", g.healthcheck_timeout),
            ("tcp_keepalives_idle", g.tcp_keepalives_idle),
            ("tcp_keepalives_interval", g.tcp_keepalives_interval),
        ] {
            if value == 0 {
                return Err(self.error(format!("general.{key}"), "must be greater than 0"));
            }
        }
        if g.tcp_keepalives_count == 0 {
            return Err(self.error(
                "general.tcp_keepalives_count".into(),
                "must be greater than 0",
            ));
        }
        for (key, value) in [
            ("max_client_conn", g.max_client_conn as u64),
            ("listen_backlog", u64::from(g.listen_backlog)),
            ("client_login_timeout", g.client_login_timeout),
            ("max_buffered_message", g.max_buffered_message as u64),
        ] {
            if value == 0 {
                return Err(self.error(format!("general.{key}"), "must be greater than 0"));
            }
        }
        if g.worker_threads == 0 {
            return Err(self.error("general.worker_threads".into(), "must be greater than 0"));
        }
        if g.autoreload == Some(0) {
            return Err(self.error("general.autoreload".into(), "must be greater than 0"));
        }
        if g.tls_certificate.is_some() && g.tls_private_key.is_none() {
            return Err(self.error(
                "general.tls_certificate".into(),
                "tls_certificate is set, but the tls_private_key is not",
            ));
        }
        if g.tls_private_key.is_some() && g.tls_certificate.is_none() {
            return Err(self.error(
                "general.tls_private_key".into(),
                "tls_private_key is set, but the tls_certificate is not",
            ));
        }
        if g.tls_certificate.is_none()
            && g.client_tls_sslmode
                .is_some_and(|m| m != crate::proxy::tls::ClientSslMode::Disable)
        {
            return Err(self.error(
                "general.client_tls_sslmode".into(),
                "needs tls_certificate and tls_private_key",
            ));
        }
        if g.server_tls_cert_file.is_some() != g.server_tls_key_file.is_some() {
            return Err(self.error(
                "general.server_tls_cert_file".into(),
                "server_tls_cert_file and server_tls_key_file go together",
            ));
        }
        if g.auth_query.is_some()
            && (g.auth_query_user.is_none() || g.auth_query_password.is_none())
        {
            return Err(self.error(
                "general.auth_query".into(),
                "If auth_query is specified, you need to provide a value for `auth_query_user`, `auth_query_password`",
            ));
        }
        for (key, set) in [("dns_cache_enabled", g.dns_cache_enabled)] {
            if set {
                self.warn(
                    format!("general.{key}"),
                    "not supported by this version of pgcat, ignored",
                );
            }
        }
        if let Some(v) = &c.plugins {
            if let Err(e) = crate::proxy::router::plugins::Plugins::from_toml(v) {
                return Err(self.error("plugins".into(), e));
            }
        }

        for (name, pool) in &c.pools {
            let p = format!("pools.{name}");
            if name == "pgcat" || name == "pgbouncer" {
                return Err(self.error(p, "this database name is reserved for the admin console"));
            }
            if name.is_empty() {
                return Err(self.error(p, "pool name must not be empty"));
            }
            if pool.connect_timeout == Some(0) {
                return Err(self.error(format!("{p}.connect_timeout"), "must be greater than 0"));
            }
            if pool.users.is_empty() {
                return Err(self.error(p, "needs at least one [users.N] table"));
            }
            if pool.shards.is_empty() {
                return Err(self.error(p, "needs at least one [shards.N] table"));
            }
            if let Some(v) = &pool.plugins {
                if !pool.query_parser_enabled {
                    return Err(self.error(
                        format!("{p}.plugins"),
                        "plugins are only valid when query_parser_enabled is true",
                    ));
                }
                if let Err(e) = crate::proxy::router::plugins::Plugins::from_toml(v) {
                    return Err(self.error(format!("{p}.plugins"), e));
                }
            }
            if pool.query_parser_read_write_splitting && !pool.query_parser_enabled {
                return Err(self.error(
                    format!("{p}.query_parser_read_write_splitting"),
                    "query_parser_read_write_splitting is only valid when query_parser_enabled is true",
                ));
            }
            for (key, value) in [
                ("shard_id_regex", &pool.shard_id_regex),
                ("sharding_key_regex", &pool.sharding_key_regex),
            ] {
                if let Some(r) = value {
                    match regex::Regex::new(r) {
                        Err(e) => {
                            return Err(self.error(
                                format!("{p}.{key}"),
                                format!("{key} is not a valid Regex: {e}"),
                            ))
                        }
                        Ok(re) if re.captures_len() < 2 => {
                            return Err(self.error(
                                format!("{p}.{key}"),
                                format!("{key} needs a capture group for the number, e.g. /\\* shard_id: (\\d+) \\*/"),
                            ))
                        }
                        Ok(_) => {}
                    }
                }
            }
            if let Some(key) = &pool.automatic_sharding_key {
                if crate::proxy::router::parser::ShardingKey::parse(key).is_none() {
                    return Err(self.error(
                        format!("{p}.automatic_sharding_key"),
                        format!(
                            "automatic_sharding_key '{key}' must be fully qualified, e.g. t.{key}"
                        ),
                    ));
                }
                if !pool.query_parser_enabled {
                    self.warn(
                        format!("{p}.automatic_sharding_key"),
                        "only used with query_parser_enabled = true (or SET SERVER ROLE TO 'auto')",
                    );
                }
            }
            for f in &pool.query_parser_read_functions {
                if f.is_empty() {
                    return Err(self.error(
                        format!("{p}.query_parser_read_functions"),
                        "function names must not be empty",
                    ));
                }
            }
            let mut seen = std::collections::HashSet::new();
            for (key, user) in &pool.users {
                let u = format!("{p}.users.{key}");
                if user.username.is_empty() {
                    return Err(self.error(format!("{u}.username"), "must not be empty"));
                }
                if !seen.insert(user.username.as_str()) {
                    return Err(self.error(
                        format!("{u}.username"),
                        format!("user \"{}\" is defined twice in this pool", user.username),
                    ));
                }
                if user.pool_size == 0 {
                    return Err(self.error(format!("{u}.pool_size"), "must be at least 1"));
                }
                if user.min_pool_size > user.pool_size {
                    return Err(self.error(
                        format!("{u}.min_pool_size"),
                        format!(
                            "must not exceed pool_size ({} > {})",
                            user.min_pool_size, user.pool_size
                        ),
                    ));
                }
                if user.connect_timeout == Some(0) {
                    return Err(
                        self.error(format!("{u}.connect_timeout"), "must be greater than 0")
                    );
                }
                let (query, query_user, query_password) = pool.auth_query_config(g);
                if user.password.is_empty() {
                    if query.is_none() || query_user.is_none() || query_password.is_none() {
                        return Err(self.error(
                            format!("{u}.password"),
                            format!(
                                "Error in pool {{ {name} }}. You have to specify a user password for every pool if auth_query is not specified (user \"{}\")",
                                user.username
                            ),
                        ));
                    }
                } else if let Err(e) =
                    ClientAuth::new(user.auth_type.method(), &user.username, &user.password)
                {
                    return Err(self.error(format!("{u}.password"), e));
                }
            }
            let n = pool.shards.len();
            for (key, shard) in &pool.shards {
                let s = format!("{p}.shards.{key}");
                match key.parse::<usize>() {
                    Ok(i) if i < n => {}
                    _ => {
                        return Err(
                            self.error(s, format!("shard keys must be 0..{} without gaps", n - 1))
                        )
                    }
                }
                if shard.database.is_empty() {
                    return Err(self.error(format!("{s}.database"), "must not be empty"));
                }
                if shard.servers.is_empty() {
                    return Err(self.error(format!("{s}.servers"), "needs at least one server"));
                }
                let primaries = shard
                    .servers
                    .iter()
                    .filter(|e| e.2 == Role::Primary)
                    .count();
                if primaries > 1 {
                    return Err(self.error(
                        format!("{s}.servers"),
                        "at most one server may be the primary",
                    ));
                }
                let found_at_run_time = shard.servers.iter().any(|e| e.2 == Role::Auto);
                if primaries == 0 && !found_at_run_time && pool.default_role == DefaultRole::Primary
                {
                    return Err(self.error(
                        format!("{s}.servers"),
                        "default_role is \"primary\" but this shard has no primary",
                    ));
                }
                for (i, server) in shard.servers.iter().enumerate() {
                    if server.0.is_empty() {
                        return Err(self.error(
                            format!("{s}.servers"),
                            format!("server {i} has an empty host"),
                        ));
                    }
                    if server.1 == 0 {
                        return Err(
                            self.error(format!("{s}.servers"), format!("server {i} has port 0"))
                        );
                    }
                }
                for (i, mirror) in shard.mirrors.iter().enumerate() {
                    if mirror.2 >= shard.servers.len() {
                        return Err(self.error(
                            format!("{s}.mirrors"),
                            format!(
                                "mirror {i} of pool \"{name}\" shard {key} points at server index {}, but the shard has {} server(s)",
                                mirror.2,
                                shard.servers.len()
                            ),
                        ));
                    }
                }
            }
            let ds = pool.default_shard.as_str();
            let ok = ds == "random"
                || ds == "random_healthy"
                || ds
                    .strip_prefix("shard_")
                    .and_then(|i| i.parse::<usize>().ok())
                    .is_some_and(|i| i < n);
            if !ok {
                // PgCat's words first when a shard number is out of range.
                let invalid = ds
                    .strip_prefix("shard_")
                    .and_then(|i| i.parse::<usize>().ok())
                    .map(|i| format!("Invalid shard {i}: "))
                    .unwrap_or_default();
                return Err(self.error(
                    format!("{p}.default_shard"),
                    format!(
                        "{invalid}must be \"random\", \"random_healthy\" or shard_0..shard_{}",
                        n - 1
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Maps byte offsets and key paths to line numbers.
struct Locator {
    text: String,
    doc: Option<toml_edit::ImDocument<String>>,
}

impl Locator {
    fn new(text: &str) -> Self {
        Locator {
            text: text.to_string(),
            doc: toml_edit::ImDocument::parse(text.to_string()).ok(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The line of a dotted key path such as `pools.app.users.0.pool_size`
    /// or `pools.app.shards.0.servers[1][2]`; the nearest enclosing key
    /// when the full path is not in the file.
    fn line_of_key(&self, path: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut item = doc.as_item();
        let mut best: Option<Range<usize>> = None;
        for seg in split_path(path) {
            let next = match seg {
                Seg::Key(k) => {
                    let table = item.as_table_like()?;
                    let (key, value) = table.get_key_value(k)?;
                    if let Some(span) = key.span().or_else(|| value.span()) {
                        best = Some(span);
                    }
                    value
                }
                Seg::Index(i) => {
                    let value = item.as_array()?.get(i)?;
                    if let Some(span) = value.span() {
                        best = Some(span);
                    }
                    // Arrays hold values, not items; stop descending.
                    break;
                }
            };
            item = next;
            if let Some(span) = item.as_table().and_then(|t| t.span()) {
                best = Some(span);
            }
        }
        if best.is_none() {
            best = first_span(item);
        }
        best.map(|s| self.line_of(s.start))
    }
}

fn first_span(item: &toml_edit::Item) -> Option<Range<usize>> {
    if let Some(s) = item.span() {
        return Some(s);
    }
    let table = item.as_table_like()?;
    table
        .iter()
        .filter_map(|(_, v)| first_span(v))
        .min_by_key(|s| s.start)
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Key(name));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(end) = stripped.find(']') else { break };
            if let Ok(i) = stripped[..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &stripped[end + 1..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[general]
host = "127.0.0.1"
port = 6432
admin_username = "admin"
admin_password = "admin"

[pools.app]
pool_mode = "transaction"

[pools.app.users.0]
username = "alice"
password = "secret"
pool_size = 5

[pools.app.shards.0]
database = "app"
servers = [["127.0.0.1", 5432, "primary"]]
"#;

    fn err(text: &str) -> ConfigError {
        Config::parse(text, "test.toml").unwrap_err()
    }

    #[test]
    fn restart_only_changes_name_exactly_the_keys_that_differ() {
        let (a, _) = Config::parse(BASE, "test.toml").unwrap();
        let mut b = a.general.clone();
        assert!(a.general.restart_only_changes(&b).is_empty());
        b.port = 7000;
        b.worker_threads = a.general.worker_threads + 1;
        b.connect_timeout += 1;
        assert_eq!(
            a.general.restart_only_changes(&b),
            vec!["port", "worker_threads"]
        );
    }

    #[test]
    fn base_config_loads_with_defaults() {
        let (c, warnings) = Config::parse(BASE, "test.toml").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.general.connect_timeout, 1000);
        assert_eq!(c.general.tcp_keepalives_idle, 5);
        assert_eq!(c.general.tcp_user_timeout, 10_000);
        let pool = &c.pools["app"];
        assert_eq!(pool.default_shard, "shard_0");
        assert_eq!(pool.users["0"].statement_timeout, 0);
        assert_eq!(pool.shards["0"].servers[0].2, Role::Primary);
    }

    #[test]
    fn type_error_names_key_and_line() {
        let text = BASE.replace("pool_size = 5", "pool_size = \"five\"");
        let e = err(&text);
        assert_eq!(e.key.as_deref(), Some("pools.app.users.0.pool_size"));
        assert_eq!(e.line, Some(14));
        let shown = e.to_string();
        assert!(
            shown.starts_with("test.toml:14: pools.app.users.0.pool_size: "),
            "{shown}"
        );
        assert!(!shown.contains('\n'), "one line: {shown}");
    }

    #[test]
    fn bad_enum_value_names_key_and_line() {
        let text = BASE.replace("pool_mode = \"transaction\"", "pool_mode = \"statement\"");
        let e = err(&text);
        assert_eq!(e.key.as_deref(), Some("pools.app.pool_mode"));
        assert_eq!(e.line, Some(9));
        assert!(e.message.contains("statement"), "{}", e.message);
    }

    #[test]
    fn syntax_error_has_line() {
        let text = BASE.replace("port = 6432", "port = = 6432");
        let e = err(&text);
        assert_eq!(e.line, Some(4));
    }

    #[test]
    fn validation_errors_name_key_and_line() {
        let e = err(&BASE.replace("pool_size = 5", "pool_size = 0"));
        assert_eq!(e.key.as_deref(), Some("pools.app.users.0.pool_size"));
        assert_eq!(e.line, Some(14));

        let e = err(&BASE.replace(
            "\"primary\"]]",
            "\"primary\"]]\nmirrors = [[\"127.0.0.1\", 5433, 3]]",
        ));
        assert_eq!(e.key.as_deref(), Some("pools.app.shards.0.mirrors"));
        assert_eq!(e.line, Some(19));
        assert!(e.message.contains("pool \"app\" shard 0") && e.message.contains("index 3"));

        let e = err(&BASE.replace("admin_username = \"admin\"\n", ""));
        assert_eq!(e.key.as_deref(), Some("general.admin_username"));
    }

    #[test]
    fn bad_role_points_into_servers() {
        let e = err(&BASE.replace("\"primary\"]]", "\"master\"]]"));
        assert_eq!(e.line, Some(18));
        assert!(e.message.contains("master"));
    }

    #[test]
    fn unknown_keys_warn_with_line() {
        let text = BASE.replace("port = 6432", "port = 6432\nfancy_feature = true");
        let (_, warnings) = Config::parse(&text, "test.toml").unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].key, "general.fancy_feature");
        assert_eq!(warnings[0].line, Some(5));
    }

    #[test]
    fn missing_required_user_field() {
        let e = err(&BASE.replace("pool_size = 5\n", ""));
        assert!(e.message.contains("pool_size"), "{}", e.message);
        assert_eq!(e.key.as_deref(), Some("pools.app.users.0"));
        assert_eq!(e.line, Some(11));
    }

    #[test]
    fn reserved_pool_name() {
        let e = err(&BASE.replace("pools.app", "pools.pgbouncer"));
        assert_eq!(e.key.as_deref(), Some("pools.pgbouncer"));
    }

    #[test]
    fn routing_keys_are_checked_with_pgcats_messages() {
        let pool = |extra: &str| {
            BASE.replace(
                "pool_mode = \"transaction\"",
                &format!("pool_mode = \"transaction\"\n{extra}"),
            )
        };
        let e = err(&pool("query_parser_read_write_splitting = true"));
        assert_eq!(
            e.key.as_deref(),
            Some("pools.app.query_parser_read_write_splitting")
        );
        assert!(e
            .message
            .contains("only valid when query_parser_enabled is true"));
        let e = err(&pool("shard_id_regex = '/\\* shard_id: (\\d+ \\*/'"));
        assert_eq!(e.key.as_deref(), Some("pools.app.shard_id_regex"));
        assert!(
            e.message.starts_with("shard_id_regex is not a valid Regex"),
            "{}",
            e.message
        );
        let e = err(&pool("sharding_key_regex = 'key: \\d+'"));
        assert!(e.message.contains("capture group"), "{}", e.message);
        let e = err(&pool("automatic_sharding_key = \"id\""));
        assert_eq!(e.key.as_deref(), Some("pools.app.automatic_sharding_key"));
        assert!(
            e.message.contains("must be fully qualified"),
            "{}",
            e.message
        );
        let (c, _) = Config::parse(
            &pool("query_parser_enabled = true\nautomatic_sharding_key = \"data.id\"\nload_balancing_mode = \"least_outstanding_connections\""),
            "test.toml",
        )
        .unwrap();
        assert_eq!(
            c.pools["app"].load_balancing_mode,
            super::super::LoadBalancingMode::Loc
        );
        // A shard of "auto" servers needs no configured primary.
        let auto = BASE.replace("\"primary\"]]", "\"auto\"]]").replace(
            "pool_mode = \"transaction\"",
            "pool_mode = \"transaction\"\ndefault_role = \"primary\"",
        );
        Config::parse(&auto, "test.toml").unwrap();
        let e = err(&BASE.replace("\"primary\"]]", "\"replica\"]]").replace(
            "pool_mode = \"transaction\"",
            "pool_mode = \"transaction\"\ndefault_role = \"primary\"",
        ));
        assert!(e.message.contains("no primary"), "{}", e.message);
    }
}
