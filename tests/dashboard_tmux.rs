//! The real binary's dashboard in a real terminal (tmux), used as a person
//! would: read the screen with capture-pane, type with send-keys.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// A private tmux server running one command; killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs `script` with sh in a detached 100x30 session. The script
    /// should end with a long sleep so the pane stays readable.
    fn start(script: &str) -> Tmux {
        let socket = unique("pgcat-tmux");
        let status = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "new-session",
                "-d",
                "-s",
                "main",
                "-x",
                "100",
                "-y",
                "30",
            ])
            .arg(format!("sh -c '{}'", script.replace('\'', "'\\''")))
            .status()
            .expect("tmux is installed");
        assert!(status.success(), "tmux new-session failed");
        Tmux { socket }
    }

    fn capture(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "main"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn send(&self, keys: &str) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "main", keys])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits until the screen satisfies `pred`; returns it.
    async fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not on screen within {limit:?}:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// Runs the binary, then reports its exit status and whether the
/// terminal is back in canonical mode (raw mode undone).
fn script(args: &str) -> String {
    format!(
        "{} {args}; echo EXIT:$?; stty -a | grep -o -- \"-\\?icanon\" | sed s/^/TTY:/; sleep 120",
        env!("CARGO_BIN_EXE_pgcat")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tui_shows_pools_hashes_mirror_lag_and_keepalives_then_reloads_and_quits() {
    let primary = PgCluster::shared();
    let mirror = PgCluster::new();
    let db = primary.create_db("scram-sha-256");
    mirror.create_db_like(&db);
    let port = free_port();
    let text = |size: u32| {
        config_text(
            "",
            &[PoolSpec {
                pool_size: size,
                shard_extra: format!("mirrors = [[\"127.0.0.1\", {}, 0]]", mirror.port),
                ..PoolSpec::new(&db)
            }],
        )
        .replace("port = 0", &format!("port = {port}"))
    };
    let file = ConfigFile::new(&text(5));
    let tmux = Tmux::start(&script(&format!("--tui {}", file.path.display())));
    tmux.wait_for("the dashboard", Duration::from_secs(20), |s| {
        s.contains("Pools")
    })
    .await;
    // Traffic, so the mirror has lag to show.
    let client = connect(&proxy_conn_str(port, &db)).await;
    for _ in 0..50 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let admin = connect(&admin_conn_str(port)).await;
    let hash = pool_row(&admin, &db.name).await["config_hash"]
        .clone()
        .unwrap();
    let screen = tmux
        .wait_for(
            "pool, hash, mirror lag and keepalives",
            Duration::from_secs(15),
            |s| {
                s.contains(&db.name)
                    && s.contains(&hash[..8])
                    && s.contains(&format!("127.0.0.1:{}", mirror.port))
                    && s.contains("connected")
                    && s.contains("5/5/5")
                    && s.contains("ms ")
            },
        )
        .await;
    assert!(
        screen.contains("kalive") && screen.contains("utmo"),
        "{screen}"
    );

    // Change the file, press r: the change applies.
    file.write(&text(9));
    tmux.send("r");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool_row(&admin, &db.name).await["pool_size"].as_deref() != Some("9") {
        assert!(
            Instant::now() < deadline,
            "r did not reload:\n{}",
            tmux.capture()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tmux.wait_for("the reload in the header", Duration::from_secs(5), |s| {
        s.contains("ok [")
    })
    .await;
    drop(client);
    drop(admin);

    tmux.send("q");
    let screen = tmux
        .wait_for("exit", Duration::from_secs(15), |s| s.contains("EXIT:"))
        .await;
    assert!(screen.contains("EXIT:0"), "{screen}");
    let tty = tmux
        .wait_for("tty check", Duration::from_secs(5), |s| s.contains("TTY:"))
        .await;
    assert!(tty.contains("TTY:icanon"), "raw mode was left on:\n{tty}");
    assert!(
        !tty.contains("Pools"),
        "the dashboard was left on screen:\n{tty}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_headless_pgcat() {
    let db = PgCluster::shared().create_db("scram-sha-256");
    let port = free_port();
    let text =
        config_text("", &[PoolSpec::new(&db)]).replace("port = 0", &format!("port = {port}"));
    let file = ConfigFile::new(&text);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgcat"));
    cmd.arg(&file.path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut headless = spawn_tied(cmd).unwrap();
    wait_listening(port, "headless pgcat");
    let admin = connect(&admin_conn_str(port)).await;
    let hash = pool_row(&admin, &db.name).await["config_hash"]
        .clone()
        .unwrap();
    let url = format!("postgres://{ADMIN_USER}:{ADMIN_PASSWORD}@127.0.0.1:{port}/pgcat");
    let tmux = Tmux::start(&script(&format!("top {url}")));
    let screen = tmux
        .wait_for("the remote pool", Duration::from_secs(20), |s| {
            s.contains(&db.name) && s.contains(&hash[..8])
        })
        .await;
    assert!(screen.contains(&format!("127.0.0.1:{port}")), "{screen}");
    tmux.send("q");
    let screen = tmux
        .wait_for("exit", Duration::from_secs(10), |s| s.contains("TTY:"))
        .await;
    assert!(
        screen.contains("EXIT:0") && screen.contains("TTY:icanon"),
        "{screen}"
    );
    drop(admin);
    stop_child(&mut headless, Duration::from_secs(10));
}

fn demo_dirs() -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("pgcat-demo-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_and_leaves_nothing_behind() {
    let before = demo_dirs();
    let tmux = Tmux::start(&script("demo"));
    // Three clusters start, pgbench loads them, then traffic shows up.
    let screen = tmux
        .wait_for("demo traffic", Duration::from_secs(120), |s| {
            s.contains("demo")
                && s.contains("Mirrors")
                && s.contains("tx/s")
                && !s.contains(" 0 tx/s")
        })
        .await;
    assert!(
        screen.contains("connected"),
        "the demo mirror is connected:\n{screen}"
    );
    let started: Vec<String> = demo_dirs()
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    tmux.send("q");
    let screen = tmux
        .wait_for("exit", Duration::from_secs(60), |s| s.contains("TTY:"))
        .await;
    assert!(
        screen.contains("EXIT:0") && screen.contains("TTY:icanon"),
        "{screen}"
    );
    assert!(
        !demo_dirs().contains(&started[0]),
        "the demo directory was left behind"
    );
    let left = Command::new("pgrep")
        .args(["-f", &started[0]])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let pgbench = Command::new("pgrep")
        .args(["-f", "pgbench.*-U demo"])
        .output()
        .unwrap();
    assert!(
        pgbench.stdout.is_empty(),
        "pgbench left: {}",
        String::from_utf8_lossy(&pgbench.stdout)
    );
}
