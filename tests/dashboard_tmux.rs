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
        Tmux::start_sized(script, 100, 30)
    }

    fn start_sized(script: &str, width: u16, height: u16) -> Tmux {
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
                &width.to_string(),
                "-y",
                &height.to_string(),
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
    /// `kill-server` alone sends the panes SIGHUP, which pgcat takes as
    /// "reload": a test that failed before its pgcat quit would leave it
    /// running. So each pane's process group (the pane's `sh -c` leads
    /// it; pgcat and the trailing sleep are in it) gets SIGTERM, then,
    /// after the server is gone, SIGKILL for whatever ignored that.
    fn drop(&mut self) {
        let panes = Command::new("tmux")
            .args(["-L", &self.socket, "list-panes", "-a", "-F", "#{pane_pid}"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let groups: Vec<i32> = panes
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect();
        let signal = |sig| {
            for &group in &groups {
                // SAFETY: kill(2) with a negative pid signals that process
                // group; it touches no memory of ours.
                unsafe {
                    libc::kill(-group, sig);
                }
            }
        };
        signal(libc::SIGTERM);
        if !groups.is_empty() {
            std::thread::sleep(Duration::from_millis(300));
        }
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
        signal(libc::SIGKILL);
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
    // The Clients panel reads SHOW CLIENTS: a client running a query shows
    // with it, and k ends it through KILL_CLIENT.
    let remote = connect(&format!(
        "{} application_name=remote-app",
        proxy_conn_str(port, &db)
    ))
    .await;
    let running = tokio::spawn(async move { remote.simple_query("SELECT pg_sleep(60)").await });
    tmux.wait_for(
        "the remote client and its query",
        Duration::from_secs(20),
        |s| {
            s.lines().any(|l| {
                l.contains("remote-app") && l.contains("active") && l.contains("pg_sleep(60)")
            })
        },
    )
    .await;
    tmux.send("Tab");
    tmux.send("Tab");
    tmux.send("k");
    tmux.wait_for("the question", Duration::from_secs(10), |s| {
        s.contains("End client") && s.contains("remote-app")
    })
    .await;
    tmux.send("y");
    let result = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the killed client's query ends")
        .unwrap();
    assert!(result.is_err(), "{result:?}");
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

/// Seconds from a duration as the dashboard prints it: 850µs, 12.3ms,
/// 4.1s, 3m05s.
fn seconds(token: &str) -> Option<f64> {
    if let Some(v) = token.strip_suffix("µs") {
        return v.parse::<f64>().ok().map(|v| v / 1e6);
    }
    if let Some(v) = token.strip_suffix("ms") {
        return v.parse::<f64>().ok().map(|v| v / 1e3);
    }
    let v = token.strip_suffix('s')?;
    match v.split_once('m') {
        Some((m, s)) => Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?),
        None => v.parse().ok(),
    }
}

const BARS: &str = "▁▂▃▄▅▆▇█";

/// From the Pools panel: the latest bar of the pool's tx/s sparkline and
/// its query p99, read under their headers.
fn pool_trend(screen: &str, db: &str) -> Option<(char, f64)> {
    let lines: Vec<Vec<char>> = screen.lines().map(|l| l.chars().collect()).collect();
    let find = |line: &[char], pat: &str| -> Option<usize> {
        let pat: Vec<char> = pat.chars().collect();
        line.windows(pat.len()).position(|w| w == pat.as_slice())
    };
    let h = lines
        .iter()
        .position(|l| find(l, "tx/s history").is_some())?;
    let header = &lines[h];
    let spark_at = find(header, "tx/s history")?;
    let p99_end = find(header, "q p99")? + "q p99".len();
    let row = lines[h + 1..].iter().find(|l| find(l, db).is_some())?;
    let bars: Vec<char> = row[spark_at..]
        .iter()
        .take_while(|c| BARS.contains(**c))
        .copied()
        .collect();
    let p99: String = row[..p99_end]
        .iter()
        .rev()
        .take_while(|c| **c != ' ')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Some((*bars.last()?, seconds(&p99)?))
}

/// A pgbench running `sql` in a loop on 4 clients, killed when dropped
/// (its script file with it).
struct Load {
    child: std::process::Child,
    _script: ConfigFile,
}

impl Load {
    fn start(port: u16, db: &TestDb, sql: &str) -> Load {
        let script = ConfigFile::new(&format!("{sql}\n"));
        let mut cmd = Command::new("pgbench");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", &db.user])
            .args(["-n", "-c", "4", "-T", "300", "-f"])
            .arg(&script.path)
            .arg(&db.name)
            .env("PGPASSWORD", &db.password)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Load {
            child: spawn_tied(cmd).expect("pgbench runs"),
            _script: script,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_panel_under_load_kill_and_throughput_trends() {
    let db = PgCluster::shared().create_db("scram-sha-256");
    let port = free_port();
    let text =
        config_text("", &[PoolSpec::new(&db)]).replace("port = 0", &format!("port = {port}"));
    let file = ConfigFile::new(&text);
    let tmux = Tmux::start_sized(&script(&format!("--tui {}", file.path.display())), 180, 50);
    tmux.wait_for("the dashboard", Duration::from_secs(20), |s| {
        s.contains("Pools")
    })
    .await;

    // 1. Under pgbench load the Clients panel lists the pgbench clients.
    let fast = Load::start(port, &db, "SELECT 1;");
    tmux.wait_for("four pgbench clients", Duration::from_secs(30), |s| {
        s.lines().filter(|l| l.contains("pgbench")).count() >= 4
    })
    .await;
    // A few seconds of steady load fill the sparkline and the p99.
    let busy = tmux
        .wait_for("a busy pool trend", Duration::from_secs(30), |s| {
            pool_trend(s, &db.name).is_some_and(|(bar, _)| bar >= '▄')
        })
        .await;
    let (busy_bar, busy_p99) = pool_trend(&busy, &db.name).unwrap();

    // 2. A client held in a transaction with pg_sleep shows as active,
    //    with a time that grows.
    let sleeper = connect(&format!(
        "{} application_name=sleeper",
        proxy_conn_str(port, &db)
    ))
    .await;
    let running =
        tokio::spawn(async move { sleeper.simple_query("BEGIN; SELECT pg_sleep(120)").await });
    let row = |s: &str| -> Option<f64> {
        let line = s
            .lines()
            .find(|l| l.contains("sleeper") && l.contains("pg_sleep(120)"))?;
        if !line.contains(" active ") {
            return None;
        }
        line.split_whitespace().find_map(seconds)
    };
    let first = tmux
        .wait_for("the sleeper, active", Duration::from_secs(20), |s| {
            row(s).is_some()
        })
        .await;
    let t1 = row(&first).unwrap();
    let later = tmux
        .wait_for("its time growing", Duration::from_secs(20), |s| {
            row(s).is_some_and(|t| t >= t1 + 2.0)
        })
        .await;
    assert!(row(&later).unwrap() > t1, "{later}");

    // 3. k, then y, ends it; the client sees its connection closed.
    tmux.send("Tab");
    tmux.send("Tab");
    tmux.send("/");
    for c in ["s", "l", "e", "e", "p", "e", "r"] {
        tmux.send(c);
    }
    tmux.send("Enter");
    tmux.wait_for("the filter", Duration::from_secs(10), |s| {
        s.contains("filter \"sleeper\"")
    })
    .await;
    tmux.send("k");
    let question = tmux
        .wait_for("the question", Duration::from_secs(10), |s| {
            s.contains("End client")
        })
        .await;
    assert!(question.contains("(sleeper)"), "{question}");
    tmux.send("y");
    let result = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the killed client's query ends")
        .unwrap();
    let err = result.expect_err("the query of a killed client fails");
    assert!(err.is_closed() || err.as_db_error().is_none(), "{err:?}");
    tmux.wait_for("the kill reported", Duration::from_secs(10), |s| {
        s.contains("ended")
    })
    .await;

    // 4. Slower queries: the sparkline falls and the p99 rises.
    drop(fast);
    let slow = Load::start(port, &db, "SELECT pg_sleep(0.05);");
    let after = tmux
        .wait_for("the trend to change", Duration::from_secs(40), |s| {
            pool_trend(s, &db.name)
                .is_some_and(|(bar, p99)| bar < busy_bar && p99 >= 0.04 && p99 > busy_p99)
        })
        .await;
    let (bar, p99) = pool_trend(&after, &db.name).unwrap();
    assert!(bar <= '▂', "tx/s fell from {busy_bar} to {bar}:\n{after}");
    assert!(
        p99 > busy_p99 * 10.0,
        "p99 {busy_p99} s -> {p99} s:\n{after}"
    );
    drop(slow);

    tmux.send("q");
    let screen = tmux
        .wait_for("exit", Duration::from_secs(15), |s| s.contains("EXIT:"))
        .await;
    assert!(screen.contains("EXIT:0"), "{screen}");
}
