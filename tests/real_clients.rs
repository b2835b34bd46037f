//! The real psql and pgbench binaries through pgcat.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

fn pgbench(proxy: &TestProxy, db: &TestDb, args: &[&str]) -> Command {
    let mut c = Command::new("pgbench");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &proxy.port.to_string(),
        "-U",
        &db.user,
    ])
    .args(args)
    .arg(&db.name)
    .env("PGPASSWORD", &db.password);
    c
}

/// Runs pgbench and checks it finished every transaction without a
/// failure; returns its output.
async fn run_pgbench(proxy: &TestProxy, db: &TestDb, args: &[&str]) -> String {
    let out = run_tool_async(pgbench(proxy, db, args), Duration::from_secs(180)).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "pgbench {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout + &stderr
}

fn failed_transactions(output: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.starts_with("number of failed transactions:"))
        .unwrap_or_else(|| panic!("no failure count in pgbench output:\n{output}"));
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn processed_transactions(output: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.starts_with("number of transactions actually processed:"))
        .unwrap_or_else(|| panic!("no processed count in pgbench output:\n{output}"));
    line.split(':')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_tpcb_in_transaction_mode_simple_and_extended() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let mut spec = PoolSpec::new(&db);
    spec.pool_size = 4;
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    // pgbench -i creates tables and loads them with COPY, through pgcat.
    run_pgbench(&proxy, &db, &["-i", "-s", "1", "-q"]).await;
    let rows = pg.psql_super(&db.name, "SELECT count(*) FROM pgbench_accounts");
    assert_eq!(rows, "100000");
    for mode in ["simple", "extended"] {
        let out = run_pgbench(
            &proxy,
            &db,
            &["-M", mode, "-c", "8", "-j", "2", "-t", "150"],
        )
        .await;
        assert_eq!(failed_transactions(&out), 0, "{mode}:\n{out}");
        assert_eq!(processed_transactions(&out), 8 * 150, "{mode}:\n{out}");
    }
    // Every transaction's history row arrived.
    let history = pg.psql_super(&db.name, "SELECT count(*) FROM pgbench_history");
    assert_eq!(
        history,
        (8 * 150).to_string(),
        "pgbench truncates history before each run"
    );
    proxy.stop().await;
}

/// `cache_unnamed_statements`: pgbench -M extended sends every statement
/// of TPC-B as an unnamed Parse; they run as pgcat's statements, prepared
/// once per server connection, and every transaction still does its work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_extended_with_unnamed_statements_cached() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let mut spec = PoolSpec::new(&db);
    spec.pool_size = 2;
    spec.pool_extra = "cache_unnamed_statements = true";
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    run_pgbench(&proxy, &db, &["-i", "-s", "1", "-q"]).await;
    let out = run_pgbench(
        &proxy,
        &db,
        &["-M", "extended", "-c", "6", "-j", "2", "-t", "150"],
    )
    .await;
    assert_eq!(failed_transactions(&out), 0, "{out}");
    assert_eq!(processed_transactions(&out), 900, "{out}");
    let history = pg.psql_super(&db.name, "SELECT count(*) FROM pgbench_history");
    assert_eq!(history, "900");
    // The server connection this query gets holds TPC-B's statements
    // under pgcat's names, each run many times from one Parse.
    let client = proxy.connect(&db).await;
    let held = client
        .simple_query(
            "SELECT count(*)::text || ' ' || (min(generic_plans + custom_plans) > 1)::text \
             FROM pg_prepared_statements WHERE name LIKE 'pgcat\\_%' AND statement LIKE '%pgbench_%'",
        )
        .await
        .unwrap();
    let held = held
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row: {held:?}"));
    assert_eq!(held, "5 true", "UPDATE x3, SELECT, INSERT: {held}");
    drop(client);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_in_session_mode() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let mut spec = PoolSpec::new(&db);
    spec.mode = "session";
    spec.pool_size = 4;
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    run_pgbench(&proxy, &db, &["-i", "-s", "1", "-q"]).await;
    let out = run_pgbench(
        &proxy,
        &db,
        &["-M", "prepared", "-c", "4", "-j", "2", "-t", "200"],
    )
    .await;
    assert_eq!(failed_transactions(&out), 0, "{out}");
    assert_eq!(processed_transactions(&out), 800);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_in_transaction_mode() {
    // Named prepared statements in transaction mode: pgcat prepares them
    // on whichever server connection each transaction gets.
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let mut spec = PoolSpec::new(&db);
    spec.pool_size = 2;
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    run_pgbench(&proxy, &db, &["-i", "-s", "1", "-q"]).await;
    let out = run_pgbench(
        &proxy,
        &db,
        &["-M", "prepared", "-c", "6", "-j", "2", "-t", "150"],
    )
    .await;
    assert_eq!(failed_transactions(&out), 0, "{out}");
    assert_eq!(processed_transactions(&out), 900);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_scripts_and_copy_through_pgcat() {
    let pg = PgCluster::shared();
    let db = pg.create_db("md5");
    let mut spec = PoolSpec::new(&db);
    spec.auth_type = "md5";
    let proxy = TestProxy::start(&config_text("", &[spec])).await;
    let script = "\
CREATE TABLE items (id int, label text);
\\copy items FROM STDIN
1\tone
2\ttwo
\\.
BEGIN;
INSERT INTO items VALUES (3, 'three');
COMMIT;
SELECT string_agg(label, ',' ORDER BY id) FROM items;
SELECT 1/0;
SELECT 'after error';
";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script).unwrap();
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-h",
        "127.0.0.1",
        "-p",
        &proxy.port.to_string(),
        "-U",
        &db.user,
        "-d",
        &db.name,
    ])
    .env("PGPASSWORD", &db.password)
    .arg("-f")
    .arg(&file);
    let out = run_tool_async(cmd, Duration::from_secs(30)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("one,two,three"), "{stdout}\n{stderr}");
    assert!(stderr.contains("division by zero"), "{stderr}");
    assert!(stdout.contains("after error"), "{stdout}");
    proxy.stop().await;
}
