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
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pgcat did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = run_tool(
            {
                let mut c = Command::new("psql");
                c.args(["-X", "-A", "-t", "-c", "SELECT 'through ' || current_user"])
                    .arg(format!(
                        "host=127.0.0.1 port={port} user={} password={} dbname={}",
                        db.user, db.password, db.name
                    ));
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
