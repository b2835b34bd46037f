//! What PgCat users rely on beyond routing: its admin dialect on database
//! `pgcat` (PgBouncer's stays on `pgbouncer`), BAN/UNBAN, its errors, an
//! explicit replica role that never falls back to the primary, and its
//! plugins (intercept, table_access, query_logger, prewarmer). PgCat's own
//! RSpec suite checks the same through `../shared/pgcat-suite`; these keep
//! it in CI without Ruby.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn pgcat_admin(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user={ADMIN_USER} password={ADMIN_PASSWORD} dbname=pgcat")
}

async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<HashMap<String, Option<String>>> {
    admin_rows(client, sql).await
}

async fn error_of(client: &tokio_postgres::Client, sql: &str) -> (String, String) {
    let err = client
        .simple_query(sql)
        .await
        .expect_err("the command must fail");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: {err:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pgcat_database_speaks_pgcats_dialect_and_pgbouncer_keeps_its_own() {
    let cluster = PgCluster::shared();
    let db = cluster.create_db("scram-sha-256");
    let proxy = TestProxy::start(&config_text("", &[PoolSpec::new(&db)])).await;
    // PgCat's stats script: 3 statements, then a transaction of 2.
    let client = proxy.connect(&db).await;
    for sql in [
        "SELECT 1", "SELECT 2", "SELECT 3", "BEGIN", "SELECT 4", "SELECT 5", "COMMIT",
    ] {
        client.simple_query(sql).await.unwrap();
    }
    client.simple_query("SELECT pg_sleep(0.3)").await.unwrap();

    let pgcat = connect(&pgcat_admin(proxy.port)).await;
    let pgbouncer = proxy.admin().await;

    let pools = rows(&pgcat, "SHOW POOLS").await;
    let mine = pools
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .expect("the pool");
    let mut columns: Vec<&str> = mine.keys().map(String::as_str).collect();
    columns.sort();
    for c in [
        "cl_idle",
        "cl_cancel_req",
        "pool_mode",
        "sv_idle",
        "maxwait_us",
    ] {
        assert!(
            columns.contains(&c),
            "PgCat's SHOW POOLS has {c}: {columns:?}"
        );
    }
    assert_eq!(mine["cl_idle"].as_deref(), Some("1"));
    let pools = rows(&pgbouncer, "SHOW POOLS").await;
    assert!(pools[0].contains_key("cl_active_cancel_req") && !pools[0].contains_key("cl_idle"));

    // Per-client counts, PgCat's way: 4 transactions, 8 queries here
    // (its script's 7, then the sleep).
    let clients = rows(&pgcat, "SHOW CLIENTS").await;
    let me = clients
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .expect("the client");
    assert_eq!(me["transaction_count"].as_deref(), Some("5"), "{me:?}");
    assert_eq!(me["query_count"].as_deref(), Some("8"), "{me:?}");
    assert!(me["client_id"].as_deref().unwrap().starts_with("0x"));
    assert!(clients
        .iter()
        .any(|r| r["database"].as_deref() == Some("pgcat")));
    let clients = rows(&pgbouncer, "SHOW CLIENTS").await;
    assert!(clients[0].contains_key("tls") && !clients[0].contains_key("query_count"));

    // SHOW STATS in PgCat's units: query time in ms (a 0.3 s sleep is
    // hundreds, not hundreds of thousands).
    let stats = rows(&pgcat, "SHOW STATS").await;
    let mine = stats
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .unwrap();
    let ms: u64 = mine["total_query_time"]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!((300..100_000).contains(&ms), "total_query_time in ms: {ms}");
    assert!(mine.contains_key("instance") && mine.contains_key("avg_wait_time"));
    let stats = rows(&pgbouncer, "SHOW STATS").await;
    let us: u64 = stats
        .iter()
        .find(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .unwrap()["total_query_time"]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(us >= 300_000, "PgBouncer's total_query_time is in µs: {us}");

    // PgCat's answers to what it does not know; PgBouncer's on pgbouncer.
    for sql in ["SHOW UP", "SHOW 1", "SHOW ME THE MONEY"] {
        let (code, msg) = error_of(&pgcat, sql).await;
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("58000", "Unsupported SHOW query against the admin database"),
            "{sql}"
        );
    }
    for sql in ["HAMMER TIME", "SHOWTIME", ";;;;;"] {
        let (code, msg) = error_of(&pgcat, sql).await;
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("58000", "Unsupported query against the admin database"),
            "{sql}"
        );
    }
    let (code, msg) = error_of(&pgcat, "PAUSE foo,bar").await;
    assert_eq!(code, "58000");
    assert_eq!(msg, "No pool configured for database: foo, user: bar");
    let (code, _) = error_of(&pgbouncer, "SHOW UP").await;
    assert_eq!(code, "42601");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_and_unban_take_hosts_out_and_back() {
    let cluster = PgCluster::shared();
    let db = cluster.create_db("scram-sha-256");
    // The same PostgreSQL as a primary (127.0.0.1) and two replicas
    // (localhost), as PgCat's admin spec sets it up.
    let text = config_text("", &[PoolSpec::new(&db)]).replace(
        &format!("servers = [[\"{}\", {}, \"primary\"]]", db.host, db.port),
        &format!(
            "servers = [[\"127.0.0.1\", {p}, \"primary\"], [\"localhost\", {p}, \"replica\"], [\"localhost\", {p}, \"replica\"]]",
            p = db.port
        ),
    );
    let proxy = TestProxy::start(&text).await;
    let admin = connect(&pgcat_admin(proxy.port)).await;

    let banned = rows(&admin, "BAN localhost 10").await;
    assert_eq!(banned.len(), 2, "{banned:?}");
    assert!(banned
        .iter()
        .all(|r| r["host"].as_deref() == Some("localhost")
            && r["role"].as_deref() == Some("replica")));
    assert!(
        rows(&admin, "BAN localhost 10").await.is_empty(),
        "already banned"
    );
    let bans = rows(&admin, "SHOW BANS").await;
    assert_eq!(bans.len(), 2, "{bans:?}");
    // Queries go on, to the primary.
    let client = proxy.connect(&db).await;
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(rows(&admin, "UNBAN localhost").await.len(), 2);
    assert!(rows(&admin, "UNBAN localhost").await.is_empty());
    assert!(rows(&admin, "SHOW BANS").await.is_empty());

    // A ban ends by itself.
    assert_eq!(rows(&admin, "BAN localhost 1").await.len(), 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(rows(&admin, "SHOW BANS").await.is_empty());

    for (sql, want) in [
        ("BAN", "usage: BAN hostname duration_seconds"),
        ("BAN a", "usage: BAN hostname duration_seconds"),
        ("BAN a a", "duration_seconds must be an integer"),
        ("BAN a -5", "duration_seconds must be >= 0"),
        ("BAN a 0", "duration_seconds must be >= 0"),
        ("UNBAN", "UNBAN command requires a hostname to unban"),
    ] {
        let (code, msg) = error_of(&admin, sql).await;
        assert_eq!((code.as_str(), msg.as_str()), ("58000", want), "{sql}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_replica_role_never_falls_back_to_the_primary() {
    let cluster = PgCluster::shared();
    let db = cluster.create_db("scram-sha-256");
    let dead = free_port();
    let servers = format!(
        "servers = [[\"{}\", {}, \"primary\"], [\"127.0.0.1\", {dead}, \"replica\"]]",
        db.host, db.port
    );
    let mut spec = PoolSpec::new(&db);
    spec.pool_extra = "query_parser_enabled = true\nquery_parser_read_write_splitting = true\n";
    let text = config_text("", &[spec])
        .replace(
            &format!("servers = [[\"{}\", {}, \"primary\"]]", db.host, db.port),
            &servers,
        )
        .replace("connect_timeout = 5000", "connect_timeout = 1000");
    let proxy = TestProxy::start(&text).await;
    let client = proxy.connect(&db).await;
    // A read the parser found falls back to the primary...
    client.simple_query("SELECT 1").await.unwrap();
    // ...a replica asked for by name does not (PgCat's behaviour).
    client
        .simple_query("SET SERVER ROLE TO 'replica'")
        .await
        .unwrap();
    let err = client.simple_query("SELECT 2").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("58000"), "{err:?}");
    client
        .simple_query("SET SERVER ROLE TO 'auto'")
        .await
        .unwrap();
    client.simple_query("SELECT 3").await.unwrap();
    proxy.stop().await;
}

const PLUGINS: &str = r#"
[pools.NAME.plugins.intercept]
enabled = true
[pools.NAME.plugins.intercept.queries.0]
query = "select current_database() as a, current_schemas(false) as b"
schema = [["a", "text"], ["b", "text"]]
result = [["${DATABASE}", "{public}"]]
[pools.NAME.plugins.intercept.queries.1]
query = "select current_user"
schema = [["current_user", "text"]]
result = [["${USER}"]]
[pools.NAME.plugins.table_access]
enabled = true
tables = ["pg_user", "pg_roles"]
[pools.NAME.plugins.query_logger]
enabled = true
[pools.NAME.plugins.prewarmer]
enabled = true
queries = ["SELECT pg_backend_pid() AS prewarm_marker"]
"#;

#[test]
fn pgcats_plugins_intercept_refuse_log_and_prewarm() {
    let cluster = PgCluster::shared();
    let db = cluster.create_db("scram-sha-256");
    let port = free_port();
    let mut spec = PoolSpec::new(&db);
    spec.pool_extra = "query_parser_enabled = true";
    let text = format!(
        "{}{}",
        config_text("", &[spec]).replace("port = 0", &format!("port = {port}")),
        PLUGINS.replace("NAME", &db.name)
    );
    let file = ConfigFile::new(&text);
    // The binary, so that its log can be read.
    let log = file.path.with_extension("log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgcat"));
    cmd.arg(&file.path)
        .args(["--log-level", "info", "--log-file"])
        .arg(&log)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = spawn_tied(cmd).unwrap();
    wait_listening(port, "pgcat");
    let conn = proxy_conn_str(port, &db);
    let psql = |sql: &str| {
        let mut cmd = Command::new("psql");
        cmd.args([conn.as_str(), "-X", "-A", "-t", "-c", sql]);
        run_tool(cmd, Duration::from_secs(20))
    };

    // intercept: answered by pgcat, with the pool's name and user.
    let out = psql("SELECT current_database() AS a, current_schemas(false) AS b");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}|{{public}}", db.name)
    );
    let out = psql("select   CURRENT_USER");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), db.user);
    // table_access: refused, wherever the table appears.
    for sql in [
        "SELECT * FROM pg_user",
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles)",
    ] {
        let out = psql(sql);
        assert!(!out.status.success(), "{sql} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("permission for table"), "{err}");
    }
    // Anything else goes to PostgreSQL.
    let out = psql("SELECT 40 + 2");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // prewarmer: ran on the server connection before it served a client.
    let prewarmed = cluster.statement_calls(&db.name, "SELECT pg_backend_pid() AS prewarm_marker");
    assert!(prewarmed >= 1, "prewarm query ran {prewarmed} times");

    stop_child(&mut child, Duration::from_secs(10));
    // query_logger: each query, with its pool and user.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!(
            "[pool: {}][user: {}] SELECT 40 + 2",
            db.name, db.user
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_query_a_password_changed_in_postgresql_works_at_once() {
    let cluster = PgCluster::shared();
    let db = cluster.create_db("md5");
    cluster.psql_super(
        "postgres",
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgcat_compat_auth') THEN \
         CREATE ROLE pgcat_compat_auth LOGIN SUPERUSER PASSWORD 'auth_pw'; END IF; END $$",
    );
    let mut spec = PoolSpec::new(&db);
    spec.auth_type = "md5";
    let general = "auth_query = \"SELECT usename, passwd FROM pg_shadow WHERE usename = '$1'\"\n\
                   auth_query_user = \"pgcat_compat_auth\"\nauth_query_password = \"auth_pw\"\n";
    let proxy = TestProxy::start(&config_text(general, &[spec])).await;
    let first = proxy.connect(&db).await;
    first.simple_query("SELECT 1").await.unwrap();
    cluster.psql_super(
        "postgres",
        &format!(
            "SET password_encryption = 'md5'; ALTER ROLE {} PASSWORD 'changed_pw'",
            db.user
        ),
    );
    // PgCat's behaviour: the md5 answer does not match the configured
    // password, so PostgreSQL's current hash is fetched and checked.
    let changed = TestDb {
        password: "changed_pw".into(),
        ..db.clone()
    };
    let client = connect(&proxy.conn_str(&changed)).await;
    client.simple_query("SELECT 2").await.unwrap();
    let wrong = TestDb {
        password: "never_set".into(),
        ..db.clone()
    };
    let err = try_connect(&proxy.conn_str(&wrong)).await.unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("28P01"));
    cluster.psql_super(
        "postgres",
        &format!(
            "SET password_encryption = 'md5'; ALTER ROLE {} PASSWORD '{}'",
            db.user, db.password
        ),
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_closes_a_pgcat_console_and_answers_a_pgbouncer_one() {
    let cluster = PgCluster::shared();
    let db = cluster.create_db("scram-sha-256");
    let good = config_text("", &[PoolSpec::new(&db)]);
    let file = ConfigFile::new(&good);
    let proxy = TestProxy::start_file(&file).await;
    let pgcat = connect(&pgcat_admin(proxy.port)).await;
    let pgbouncer = proxy.admin().await;
    let mut spec = PoolSpec::new(&db);
    spec.pool_extra = "default_shard = \"shard_99\"";
    file.write(&config_text("", &[spec]));
    // PgBouncer's dialect: an error naming the key, PgCat's words in it.
    let (code, msg) = error_of(&pgbouncer, "RELOAD").await;
    assert_eq!(code, "F0000");
    assert!(
        msg.contains("default_shard") && msg.contains("Invalid shard 99"),
        "{msg}"
    );
    // PgCat's: the console connection is closed (the error is logged).
    let err = pgcat.simple_query("RELOAD").await.unwrap_err();
    assert!(err.is_closed() || err.as_db_error().is_none(), "{err:?}");
    // The running config is kept: clients are still served.
    let client = proxy.connect(&db).await;
    client.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await;
}

/// Session mode: a session that changed settings ends with PgCat's
/// `RESET ROLE; RESET ALL` (then DISCARD ALL, PgBouncer's reset); one that
/// changed none gets no RESET. PgCat's suite counts both in
/// pg_stat_statements (misc_spec "Does not send RESET ALL unless
/// necessary", "Resets server roles correctly").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_settings_only_after_a_session_that_set_some() {
    let cluster = PgCluster::shared();
    let db = cluster.create_db("scram-sha-256");
    let mut spec = PoolSpec::new(&db);
    spec.mode = "session";
    spec.pool_size = 2;
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    let calls = |q: &str| cluster.statement_calls(&db.name, q);
    let (reset_all, reset_role, discard) = (
        calls("RESET ALL"),
        calls("RESET ROLE"),
        calls("DISCARD ALL"),
    );
    for _ in 0..4 {
        let client = proxy.connect(&db).await;
        client.simple_query("SELECT 1").await.unwrap();
        drop(client);
    }
    // The DISCARD ALL of the last session may still be on its way.
    let discards_reach = |want: i64| {
        eventually(Duration::from_secs(5), "DISCARD ALL count", move || {
            calls("DISCARD ALL") >= want
        })
    };
    discards_reach(discard + 4).await;
    assert_eq!(calls("DISCARD ALL"), discard + 4);
    assert_eq!(calls("RESET ALL"), reset_all);
    assert_eq!(calls("RESET ROLE"), reset_role);
    for n in 1..=3 {
        let client = proxy.connect(&db).await;
        client.simple_query("SELECT 1").await.unwrap();
        client
            .simple_query("SET statement_timeout TO 5000")
            .await
            .unwrap();
        drop(client);
        discards_reach(discard + 4 + n).await;
        assert_eq!(calls("DISCARD ALL"), discard + 4 + n);
        assert_eq!(calls("RESET ALL"), reset_all + n);
        assert_eq!(calls("RESET ROLE"), reset_role + n);
    }
    // The next session starts from the pool's defaults.
    let client = proxy.connect(&db).await;
    let rows = client.simple_query("SHOW statement_timeout").await.unwrap();
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("0"));
    proxy.stop().await;
}
