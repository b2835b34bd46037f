//! `pgcat demo`: one command for a newcomer. It starts three throwaway
//! PostgreSQL clusters from the system's binaries (a primary, a second
//! server, a mirror), writes a config for them, drives light traffic with
//! pgbench through pgcat, and opens the dashboard. Everything it started
//! is stopped and removed when it exits, also on Ctrl-C or SIGTERM.
//!
//! Its process helpers (finding the binaries, the OS user, starting and
//! stopping a postmaster) are also the test harness's.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The directory holding initdb and postgres.
pub fn pg_bindir() -> io::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        let mut v: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        v.sort();
        candidates.extend(v.into_iter().rev());
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").exists() && d.join("postgres").exists())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "PostgreSQL server binaries (initdb, postgres) not found; install them (apt-get install -y postgresql)",
            )
        })
}

/// The uid/gid to run PostgreSQL as: `postgres` when we are root (initdb
/// refuses root), ourselves (None) otherwise.
pub fn pg_owner() -> io::Result<Option<(u32, u32)>> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(io::Error::other(
            "running as root needs a `postgres` OS user to run PostgreSQL (apt-get install -y postgresql creates it)",
        ));
    }
    // SAFETY: checked non-null above.
    unsafe { Ok(Some(((*pw).pw_uid, (*pw).pw_gid))) }
}

/// `chown -R` to `owner`; nothing when None.
pub fn chown_tree(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path)
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!("chown {} failed", path.display())));
        }
    }
    Ok(())
}

/// A command that dies with us (PR_SET_PDEATHSIG) and runs as `owner`.
fn command(program: &Path, owner: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe; it runs after the uid change,
    // which would otherwise clear it.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// A port on 127.0.0.1 the OS had free just now.
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Stops a child: SIGINT (PostgreSQL's fast shutdown, pgcat's graceful
/// one), then SIGKILL after `grace`; always reaps it.
pub fn stop_child(child: &mut Child, grace: Duration) -> io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    // SAFETY: a pid we own.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait()
}

/// Waits up to 30 s until the postmaster `child` accepts connections on
/// `host`:`port` (pg_isready from `bindir`); false when it exited or time
/// ran out.
pub fn wait_ready(bindir: &Path, child: &mut Child, host: &str, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let ready = Command::new(bindir.join("pg_isready"))
            .args(["-q", "-h", host, "-p", &port.to_string(), "-U", "postgres"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// How long the demo's clusters get for a clean stop.
const STOP_GRACE: Duration = Duration::from_secs(15);

struct Cluster {
    port: u16,
    child: Child,
}

/// What the demo started.
pub struct Demo {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub port: u16,
    clusters: Vec<Cluster>,
    traffic: Vec<Child>,
}

impl Demo {
    /// Starts the clusters and writes the config. `say` reports progress.
    pub fn start(say: &dyn Fn(&str)) -> io::Result<Demo> {
        let bindir = pg_bindir()?;
        let owner = pg_owner()?;
        let dir = std::env::temp_dir().join(format!("pgcat-demo-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let mut demo = Demo {
            config_path: dir.join("pgcat.toml"),
            dir,
            port: free_port()?,
            clusters: Vec::new(),
            traffic: Vec::new(),
        };
        for name in ["primary", "second", "mirror"] {
            say(&format!("starting PostgreSQL: {name}"));
            let c = demo.start_cluster(&bindir, owner, name)?;
            demo.clusters.push(c);
        }
        let [primary, second, mirror] = [0, 1, 2].map(|i| demo.clusters[i].port);
        let config = format!(
            r#"# Written by `pgcat demo`; removed when it exits.
[general]
host = "127.0.0.1"
port = {port}
admin_username = "admin"
admin_password = "admin"
connect_timeout = 5000
worker_threads = 2

[pools.demo]
pool_mode = "transaction"
default_role = "any"

[pools.demo.users.0]
username = "demo"
password = "demo"
pool_size = 4

[pools.demo.shards.0]
database = "demo"
servers = [["127.0.0.1", {primary}, "primary"], ["127.0.0.1", {second}, "replica"]]
mirrors = [["127.0.0.1", {mirror}, 0]]
"#,
            port = demo.port
        );
        fs::write(&demo.config_path, config)?;
        Ok(demo)
    }

    fn start_cluster(
        &self,
        bindir: &Path,
        owner: Option<(u32, u32)>,
        name: &str,
    ) -> io::Result<Cluster> {
        let root = self.dir.join(name);
        let data = root.join("data");
        fs::create_dir_all(&root)?;
        chown_tree(&self.dir, owner)?;
        let out = command(&bindir.join("initdb"), owner)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let port = free_port()?;
        let mut conf = fs::read_to_string(data.join("postgresql.conf"))?;
        conf.push_str(&format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 50\n",
            root.display()
        ));
        fs::write(data.join("postgresql.conf"), conf)?;
        chown_tree(&self.dir, owner)?;
        let log = fs::File::create(root.join("server.log"))?;
        chown_tree(&root, owner)?;
        let child = command(&bindir.join("postgres"), owner)
            .arg("-D")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut cluster = Cluster { port, child };
        if !wait_ready(bindir, &mut cluster.child, "127.0.0.1", port) {
            let _ = stop_child(&mut cluster.child, STOP_GRACE);
            return Err(io::Error::other(format!(
                "PostgreSQL {name} did not start; see {}",
                root.join("server.log").display()
            )));
        }
        let psql = |sql: &str| {
            Command::new(bindir.join("psql"))
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-c",
                    sql,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        psql("CREATE ROLE demo LOGIN PASSWORD 'demo'")?;
        psql("CREATE DATABASE demo OWNER demo")?;
        let status = Command::new(bindir.join("pgbench"))
            .args([
                "-i",
                "-q",
                "-s",
                "1",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "demo",
                "demo",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            let _ = stop_child(&mut cluster.child, STOP_GRACE);
            return Err(io::Error::other(format!("pgbench -i on {name} failed")));
        }
        Ok(cluster)
    }

    /// Light traffic through pgcat: read-only and TPC-B, rate-limited.
    pub fn start_traffic(&mut self) -> io::Result<()> {
        let bindir = pg_bindir()?;
        for args in [
            &["-S", "-c", "2", "-R", "40"][..],
            &["-c", "1", "-R", "5"][..],
        ] {
            let child = command(&bindir.join("pgbench"), None)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "demo",
                    "-n",
                    "-T",
                    "86400",
                ])
                .args(args)
                .arg("demo")
                .env("PGPASSWORD", "demo")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            self.traffic.push(child);
        }
        Ok(())
    }

    /// Stops the traffic, then the clusters, and removes the directory.
    pub fn stop(&mut self) {
        for c in &mut self.traffic {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.traffic.clear();
        for c in &mut self.clusters {
            let _ = stop_child(&mut c.child, STOP_GRACE);
        }
        self.clusters.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop();
    }
}
