//! The hash of one pool's effective config. A pool stores it when it is
//! built; reload rebuilds exactly the pools whose hash differs from the
//! new file's. There is deliberately no global record of hashes seen
//! before, so going A -> B -> A rebuilds every time.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{General, Pool};

/// The `[general]` settings that change how a pool's connections behave.
#[derive(Serialize)]
struct PoolRelevantGeneral<'a> {
    connect_timeout: u64,
    idle_timeout: u64,
    server_lifetime: u64,
    idle_client_in_transaction_timeout: u64,
    healthcheck_timeout: u64,
    healthcheck_delay: u64,
    ban_time: u64,
    tcp_keepalives_idle: u64,
    tcp_keepalives_count: u32,
    tcp_keepalives_interval: u64,
    tcp_user_timeout: u64,
    server_round_robin: bool,
    server_tls: bool,
    verify_server_certificate: bool,
    max_prepared_statements: usize,
    host: &'a str,
    /// The auth_query keys a pool inherits (the password by its hash).
    auth_query: Option<&'a str>,
    auth_query_user: Option<&'a str>,
    auth_query_password: Option<String>,
}

#[derive(Serialize)]
struct Hashed<'a> {
    name: &'a str,
    general: PoolRelevantGeneral<'a>,
    pool: &'a Pool,
    /// The global `[plugins]`, which a pool without its own uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    plugins: Option<&'a toml::Value>,
}

/// A 64-bit digest of everything that shapes the pool's connections.
pub fn pool_hash(
    general: &General,
    global_plugins: Option<&toml::Value>,
    name: &str,
    pool: &Pool,
) -> u64 {
    let input = Hashed {
        name,
        general: PoolRelevantGeneral {
            connect_timeout: general.connect_timeout,
            idle_timeout: general.idle_timeout,
            server_lifetime: general.server_lifetime,
            idle_client_in_transaction_timeout: general.idle_client_in_transaction_timeout,
            healthcheck_timeout: general.healthcheck_timeout,
            healthcheck_delay: general.healthcheck_delay,
            ban_time: general.ban_time,
            tcp_keepalives_idle: general.tcp_keepalives_idle,
            tcp_keepalives_count: general.tcp_keepalives_count,
            tcp_keepalives_interval: general.tcp_keepalives_interval,
            tcp_user_timeout: general.tcp_user_timeout,
            server_round_robin: general.server_round_robin,
            server_tls: general.server_tls,
            verify_server_certificate: general.verify_server_certificate,
            max_prepared_statements: general.max_prepared_statements,
            // The listener address does not shape server connections.
            host: "",
            auth_query: general.auth_query.as_deref(),
            auth_query_user: general.auth_query_user.as_deref(),
            auth_query_password: general.auth_query_password.as_ref().map(|p| {
                let d = Sha256::digest(p.as_bytes());
                d.iter().map(|b| format!("{b:02x}")).collect()
            }),
        },
        pool,
        plugins: if pool.plugins.is_none() {
            global_plugins
        } else {
            None
        },
    };
    // TOML output of these structs is deterministic: fields in
    // declaration order, maps sorted.
    let text = toml::to_string(&input).expect("config serializes");
    let digest = Sha256::digest(text.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const TEXT: &str = r#"
[general]
admin_username = "a"
admin_password = "a"
[pools.app.users.0]
username = "u"
password = "p"
pool_size = 5
[pools.app.shards.0]
database = "app"
servers = [["127.0.0.1", 5432, "primary"]]
[pools.other.users.0]
username = "u"
password = "p"
pool_size = 5
[pools.other.shards.0]
database = "other"
servers = [["127.0.0.1", 5432, "primary"]]
"#;

    fn hashes(text: &str) -> (u64, u64) {
        let (c, _) = Config::parse(text, "t").unwrap();
        (
            pool_hash(&c.general, None, "app", &c.pools["app"]),
            pool_hash(&c.general, None, "other", &c.pools["other"]),
        )
    }

    #[test]
    fn changes_only_the_changed_pool() {
        let a = hashes(TEXT);
        let b = hashes(&TEXT.replacen("pool_size = 5", "pool_size = 8", 1));
        assert_ne!(a.0, b.0);
        assert_eq!(a.1, b.1);
        // Back to A gives A's hash again: the hash is a pure function.
        assert_eq!(hashes(TEXT), a);
    }

    #[test]
    fn general_settings_that_shape_connections_change_every_pool() {
        let a = hashes(TEXT);
        let b = hashes(&TEXT.replace(
            "admin_password = \"a\"",
            "admin_password = \"a\"\ntcp_keepalives_idle = 9",
        ));
        assert_ne!(a.0, b.0);
        assert_ne!(a.1, b.1);
        let c = hashes(&TEXT.replace("admin_password = \"a\"", "admin_password = \"b\""));
        assert_eq!(a, c, "the admin password does not touch pools");
    }

    #[test]
    fn mirrors_are_part_of_the_hash() {
        let a = hashes(TEXT);
        let b = hashes(&TEXT.replacen(
            "\"primary\"]]",
            "\"primary\"]]\nmirrors = [[\"127.0.0.1\", 5433, 0]]",
            1,
        ));
        assert_ne!(a.0, b.0);
    }
}
