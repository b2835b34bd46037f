//! The `pgcat` binary: config errors on startup, serving, and exiting on
//! signals.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn pgcat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgcat"))
}

fn run_to_end(mut cmd: Command) -> (i32, String) {
    let out = run_tool(
        {
            cmd.env_remove("RUST_LOG");
            cmd
        },
        Duration::from_secs(20),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn missing_config_exits_with_one_line_naming_the_file() {
    let mut cmd = pgcat();
    cmd.arg("/nonexistent/pgcat.toml");
    let (code, stderr) = run_to_end(cmd);
    assert_ne!(code, 0);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/pgcat.toml"), "{stderr}");
    assert!(stderr.contains("cannot read config file"), "{stderr}");
}

#[test]
fn invalid_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = std::fs::read_to_string("pgcat.toml")
        .unwrap()
        .replace("pool_size = 10", "pool_size = \"ten\"");
    std::fs::write(&path, &text).unwrap();
    let line = text.lines().position(|l| l.contains("\"ten\"")).unwrap() + 1;
    let mut cmd = pgcat();
    cmd.arg(&path);
    let (code, stderr) = run_to_end(cmd);
    assert_ne!(code, 0);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let expected = format!("{}:{line}: pools.app.users.0.pool_size: ", path.display());
    assert!(stderr.contains(&expected), "want {expected:?} in {stderr}");

    // A semantic error: same shape.
    let text = std::fs::read_to_string("pgcat.toml")
        .unwrap()
        .replace("pool_size = 10", "pool_size = 0");
    std::fs::write(&path, &text).unwrap();
    let mut cmd = pgcat();
    cmd.arg(&path);
    let (code, stderr) = run_to_end(cmd);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!(
            "{}:{line}: pools.app.users.0.pool_size: must be at least 1",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn example_config_loads_as_is_without_warnings() {
    let (config, warnings) = pgcat::proxy::config::Config::load("pgcat.toml").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.general.port, 6432);
    assert!(config.pools.contains_key("app"));
}

#[test]
fn serves_queries_and_exits_cleanly_on_sigint_and_sigterm() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let port = free_port();
    let text = config_text("", &[PoolSpec::new(&db)])
        .replace("port = 0", &format!("port = {port}"))
        .replace("[general]", "[general]\nan_unknown_key = 1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgcat.toml");
    std::fs::write(&path, text).unwrap();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut cmd = pgcat();
        cmd.arg(&path)
            .args(["--log-level", "info"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_tied(cmd).unwrap();
        // Wait until it accepts connections.
        wait_listening(port, "pgcat");
        let out = run_tool(
            {
                let mut c = Command::new("psql");
                c.args(["-X", "-A", "-t", "-c", "SELECT 'through ' || current_user"])
                    .arg(proxy_conn_str(port, &db));
                c
            },
            Duration::from_secs(20),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("through {}", db.user)
        );
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "pgcat did not exit on signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "exit status {status}");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(
            stderr.contains("general.an_unknown_key"),
            "unknown key warning missing: {stderr}"
        );
        assert!(stderr.contains("unknown key"), "{stderr}");
    }
}

/// Starts the binary on a config file; waits until it listens.
fn start_binary(path: &std::path::Path, port: u16) -> std::process::Child {
    let mut cmd = pgcat();
    cmd.arg(path)
        .args(["--log-level", "info"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = spawn_tied(cmd).unwrap();
    wait_listening(port, "pgcat");
    child
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if started.elapsed() > within {
            let status = stop_child(child, Duration::from_secs(1));
            panic!("pgcat did not exit within {within:?} ({status})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let port = free_port();
    let text = |size: u32| {
        config_text(
            "",
            &[PoolSpec {
                pool_size: size,
                ..PoolSpec::new(&db)
            }],
        )
        .replace("port = 0", &format!("port = {port}"))
    };
    let file = ConfigFile::new(&text(3));
    let mut child = start_binary(&file.path, port);
    let admin = connect(&admin_conn_str(port)).await;
    assert_eq!(
        pool_row(&admin, &db.name).await["pool_size"].as_deref(),
        Some("3")
    );
    file.write(&text(6));
    signal(&child, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool_row(&admin, &db.name).await["pool_size"].as_deref() != Some("6") {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not apply the new pool_size"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file on SIGHUP is logged and changes nothing.
    file.write("[general\nbroken");
    signal(&child, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pool_row(&admin, &db.name).await["pool_size"].as_deref(),
        Some("6")
    );
    drop(admin);
    signal(&child, libc::SIGTERM);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_lets_the_open_transaction_commit_refuses_new_clients_then_exits() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let port = free_port();
    let text =
        config_text("", &[PoolSpec::new(&db)]).replace("port = 0", &format!("port = {port}"));
    let file = ConfigFile::new(&text);
    let mut child = start_binary(&file.path, port);
    let conn = proxy_conn_str(port, &db);
    let client = connect(&conn).await;
    client
        .batch_execute("CREATE TABLE done (v int)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO done VALUES (1)")
        .await
        .unwrap();

    signal(&child, libc::SIGINT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = try_connect(&conn).await.unwrap_err();
    let db_err = err.as_db_error().expect("refused with an error");
    assert_eq!(db_err.code().code(), "57P01");
    assert!(
        db_err.message().contains("shutting down"),
        "{}",
        db_err.message()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited with a transaction open"
    );

    client
        .batch_execute("INSERT INTO done VALUES (2); COMMIT")
        .await
        .unwrap();
    drop(client);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(status.success(), "{status}");
    let committed = pg.psql_super(&db.name, "SELECT count(*) FROM done");
    assert_eq!(committed, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let port = free_port();
    let text =
        config_text("", &[PoolSpec::new(&db)]).replace("port = 0", &format!("port = {port}"));
    let file = ConfigFile::new(&text);
    let mut child = start_binary(&file.path, port);
    let client = connect(&proxy_conn_str(port, &db)).await;
    client.batch_execute("BEGIN").await.unwrap();
    signal(&child, libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for the transaction"
    );
    signal(&child, libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(status.success());
    assert!(client.simple_query("SELECT 1").await.is_err());
    // The abandoned transaction's backend is gone too.
    eventually(Duration::from_secs(5), "abandoned backend gone", || {
        pg.backends(&db.name, &db.user) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_mode_writes_pid_and_log_files() {
    let db = PgCluster::shared().create_db("scram-sha-256");
    let port = free_port();
    let text =
        config_text("", &[PoolSpec::new(&db)]).replace("port = 0", &format!("port = {port}"));
    let file = ConfigFile::new(&text);
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pgcat.pid");
    let log_file = dir.path().join("pgcat.log");
    let mut cmd = pgcat();
    cmd.arg(&file.path)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("--log-file")
        .arg(&log_file)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = spawn_tied(cmd).unwrap();
    wait_listening(port, "pgcat");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, child.id());
    signal(&child, libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || {
        let s = wait_exit(&mut child, Duration::from_secs(10));
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (s, stderr)
    })
    .await
    .unwrap();
    assert!(status.0.success());
    assert!(
        status.1.is_empty(),
        "logs went to the file, not stderr: {}",
        status.1
    );
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("pgcat listening"), "{log}");
    assert!(!pid_file.exists(), "the pid file is removed on exit");
}
