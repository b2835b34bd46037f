//! Test harness: throwaway PostgreSQL clusters made with initdb, per-test
//! roles and databases, and pgcat started in-process.
//!
//! Every process spawned here is reaped: private clusters stop in Drop,
//! the shared cluster stops in an atexit hook, and children are spawned
//! from one long-lived thread with PR_SET_PDEATHSIG so that they die with
//! the test binary even when it is killed.

#![allow(dead_code)]

pub mod wire;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pgcat::proxy::config::Config;
use pgcat::proxy::{Proxy, ProxyHandle};

pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "postgres";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The postmaster of the shared cluster, stopped by the exit hook.
static SHARED_CHILD: Mutex<Option<Child>> = Mutex::new(None);

/// Runs when the test binary exits: stops the shared cluster and removes
/// every data directory this process made.
extern "C" fn at_exit() {
    if let Ok(mut child) = SHARED_CHILD.lock() {
        if let Some(mut c) = child.take() {
            stop_child(&mut c, Duration::from_secs(20));
        }
    }
    let _ = fs::remove_dir_all(base_dir_path());
}

/// A name unique within this machine and run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The directory holding initdb, postgres and pg_isready.
pub fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PGCAT_TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    pgcat::demo::pg_bindir().unwrap_or_else(|_| {
        panic!(
            "PostgreSQL server binaries (initdb, postgres) not found. Install them, e.g. \
             `apt-get install -y postgresql` on Debian/Ubuntu, or point PGCAT_TEST_PG_BINDIR \
             at the directory that holds initdb."
        )
    })
}

/// The uid/gid to run PostgreSQL as: `postgres` when we are root.
fn pg_owner() -> Option<(u32, u32)> {
    pgcat::demo::pg_owner().unwrap_or_else(|e| panic!("{e}"))
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) {
    pgcat::demo::chown_tree(path, owner).unwrap_or_else(|e| panic!("chown {path:?}: {e}"));
}

/// Spawns children from one thread that lives as long as the process, so
/// PR_SET_PDEATHSIG (which fires when the spawning *thread* exits) means
/// "when the test binary exits".
type SpawnJob = Box<dyn FnOnce() -> io::Result<Child> + Send>;
type SpawnRequest = (SpawnJob, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("test-spawner".into())
            .spawn(move || {
                for (job, reply) in rx {
                    let _ = reply.send(job());
                }
                // Keep the thread alive so PDEATHSIG does not fire early.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns a command that is killed if the test binary dies.
pub fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    let (reply_tx, reply_rx) = mpsc::channel();
    let job: SpawnJob = Box::new(move || {
        // SAFETY: prctl is async-signal-safe and only affects the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn()
    });
    spawner().lock().unwrap().send((job, reply_tx)).unwrap();
    reply_rx.recv().unwrap()
}

/// Stops a child: SIGINT, then SIGKILL after `grace`; always reaps it.
pub fn stop_child(child: &mut Child, grace: Duration) -> ExitStatus {
    pgcat::demo::stop_child(child, grace).expect("wait for child")
}

pub fn free_port() -> u16 {
    pgcat::demo::free_port().unwrap()
}

fn base_dir_path() -> PathBuf {
    std::env::temp_dir().join(format!("pgcat-test-{}", std::process::id()))
}

fn base_dir() -> PathBuf {
    let dir = base_dir_path();
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The initdb'd data directory that clusters are copied from, made once
/// per test binary.
fn template() -> &'static PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let bindir = pg_bindir();
        let owner = pg_owner();
        let root = base_dir();
        // SAFETY: registering a plain extern "C" fn.
        unsafe {
            libc::atexit(at_exit);
        }
        let data = root.join("template");
        let pwfile = root.join("pwfile");
        fs::write(&pwfile, SUPERUSER_PASSWORD).unwrap();
        chown_tree(&root, owner);
        let mut cmd = Command::new(bindir.join("initdb"));
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = owner {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // md5_users, password_users and trust_users get those methods
        // (membership is granted per test role); everyone else SCRAM.
        let hba = "\
local all all trust
host all +md5_users 127.0.0.1/32 md5
host all +password_users 127.0.0.1/32 password
host all +trust_users 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
host all all 10.0.0.0/8 scram-sha-256
";
        fs::write(data.join("pg_hba.conf"), hba).unwrap();
        let conf = "\
listen_addresses = '127.0.0.1'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
log_min_messages = warning
log_connections = off
shared_preload_libraries = 'pg_stat_statements'
";
        let mut pc = fs::read_to_string(data.join("postgresql.conf")).unwrap();
        pc.push_str(conf);
        fs::write(data.join("postgresql.conf"), pc).unwrap();
        chown_tree(&root, owner);
        // Install roles used by every cluster copied from the template.
        let mut c = PgCluster::start_from(&data, "template-boot");
        c.psql_super(
            "postgres",
            "CREATE ROLE md5_users NOLOGIN; CREATE ROLE password_users NOLOGIN; \
             CREATE ROLE trust_users NOLOGIN;",
        );
        c.stop();
        data
    })
}

/// A fresh copy of the template data directory: its path and name.
fn copy_template(prefix: &str) -> (PathBuf, String) {
    let name = unique(prefix);
    let dir = base_dir().join(&name);
    let status = Command::new("cp")
        .arg("-a")
        .arg(template())
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    (dir, name)
}

/// Spawns postgres on `dir` and `port`, logging to `log`, inside network
/// namespace `netns` (listening on its address) or on 127.0.0.1; returns
/// the child and the address it listens on.
fn spawn_postgres<'a>(
    dir: &Path,
    port: u16,
    log: fs::File,
    netns: Option<(&str, &'a str)>,
    owner: Option<(u32, u32)>,
) -> (Child, &'a str) {
    let mut cmd = Command::new(pg_bindir().join("postgres"));
    cmd.arg("-D")
        .arg(dir)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir.join("sock"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let host = match netns {
        Some((ns, addr)) => {
            cmd.arg("-c").arg(format!("listen_addresses={addr}"));
            enter_netns(&mut cmd, ns, owner);
            addr
        }
        None => {
            if let Some((uid, gid)) = owner {
                cmd.uid(uid).gid(gid);
            }
            "127.0.0.1"
        }
    };
    (spawn_tied(cmd).expect("spawn postgres"), host)
}

/// A running PostgreSQL.
pub struct PgCluster {
    /// Where PostgreSQL listens: 127.0.0.1, or the namespace's address.
    pub host: String,
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    socket_dir: PathBuf,
}

impl PgCluster {
    /// A private cluster, stopped when dropped.
    pub fn new() -> PgCluster {
        let (dir, name) = copy_template("cluster");
        Self::start_from(&dir, &name)
    }

    /// The cluster shared by the tests of this binary; stopped at exit.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut c = PgCluster::new();
            // The exit hook owns the process from here on.
            *SHARED_CHILD.lock().unwrap() = c.child.take();
            c
        })
    }

    fn start_from(dir: &Path, name: &str) -> PgCluster {
        Self::start_in(dir, name, None)
    }

    /// Starts PostgreSQL on `dir`, inside network namespace `netns` (then
    /// listening on the given address) or on 127.0.0.1.
    fn start_in(dir: &Path, name: &str, netns: Option<(&str, &str)>) -> PgCluster {
        let owner = pg_owner();
        let socket_dir = dir.join("sock");
        fs::create_dir_all(&socket_dir).unwrap();
        chown_tree(&socket_dir, owner);
        for attempt in 0..5 {
            let port = free_port();
            let log = fs::File::create(dir.join("server.log")).unwrap();
            if let Some((uid, gid)) = owner {
                // SAFETY: fchown on a file we just created.
                unsafe {
                    use std::os::fd::AsRawFd;
                    libc::fchown(log.as_raw_fd(), uid, gid);
                }
            }
            let (mut child, host) = spawn_postgres(dir, port, log, netns, owner);
            if pgcat::demo::wait_ready(&pg_bindir(), &mut child, host, port) {
                return PgCluster {
                    host: host.to_string(),
                    port,
                    dir: dir.to_path_buf(),
                    child: Some(child),
                    socket_dir,
                };
            }
            stop_child(&mut child, Duration::from_secs(5));
            eprintln!(
                "postgres {name} did not start on port {port} (attempt {attempt}): {}",
                fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
        }
        panic!("could not start PostgreSQL in {dir:?}");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(20));
        }
    }

    /// A private cluster in a fresh network namespace, reachable from the
    /// host only through a veth pair; see [`Netns`].
    pub fn in_netns(netns: &Netns) -> PgCluster {
        let (dir, name) = copy_template("nscluster");
        Self::start_in(&dir, &name, Some((&netns.name, &netns.ns_ip)))
    }

    /// Starts a stopped private cluster again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let c = Self::start_on(&self.dir, self.port);
        self.child = c;
    }

    fn start_on(dir: &Path, port: u16) -> Option<Child> {
        let log = fs::OpenOptions::new()
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let (mut child, host) = spawn_postgres(dir, port, log, None, pg_owner());
        if pgcat::demo::wait_ready(&pg_bindir(), &mut child, host, port) {
            return Some(child);
        }
        stop_child(&mut child, Duration::from_secs(5));
        panic!("PostgreSQL did not restart on port {port}");
    }

    /// Runs SQL as the superuser over the Unix socket; panics on error.
    pub fn psql_super(&self, db: &str, sql: &str) -> String {
        let out = Command::new(pg_bindir().join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates a login role and a database it owns. `method` picks how the
    /// server authenticates the role: "scram-sha-256", "md5", "password"
    /// or "trust".
    pub fn create_db(&self, method: &str) -> TestDb {
        let name = unique("db");
        let password = format!("pw_{name}");
        let (encryption, group) = match method {
            "scram-sha-256" => ("scram-sha-256", None),
            "md5" => ("md5", Some("md5_users")),
            "password" => ("scram-sha-256", Some("password_users")),
            "trust" => ("scram-sha-256", Some("trust_users")),
            other => panic!("unknown auth method {other}"),
        };
        let in_role = group.map(|g| format!(" IN ROLE {g}")).unwrap_or_default();
        self.psql_super(
            "postgres",
            &format!(
                "SET password_encryption = '{encryption}'; \
                 CREATE ROLE {name} LOGIN PASSWORD '{password}'{in_role};"
            ),
        );
        self.psql_super("postgres", &format!("CREATE DATABASE {name} OWNER {name};"));
        TestDb {
            name: name.clone(),
            user: name,
            password,
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// The same role and database as `db` has elsewhere, here (a mirror
    /// serves the same database name with the same credentials).
    pub fn create_db_like(&self, db: &TestDb) -> TestDb {
        self.psql_super(
            "postgres",
            &format!("CREATE ROLE {} LOGIN PASSWORD '{}';", db.user, db.password),
        );
        self.psql_super(
            "postgres",
            &format!("CREATE DATABASE {} OWNER {};", db.name, db.user),
        );
        TestDb {
            host: self.host.clone(),
            port: self.port,
            ..db.clone()
        }
    }

    /// Calls of statements whose normalized text is `query`, in database
    /// `db`, from pg_stat_statements (created on first use).
    pub fn statement_calls(&self, db: &str, query: &str) -> i64 {
        self.psql_super(db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
        self.psql_super(
            db,
            &format!(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s \
                 JOIN pg_database d ON d.oid = s.dbid \
                 WHERE d.datname = '{db}' AND s.query = '{}'",
                query.replace('\'', "''")
            ),
        )
        .parse()
        .unwrap()
    }

    /// Backends connected to `db` as `user`, as pg_stat_activity sees them.
    pub fn backends(&self, db: &str, user: &str) -> usize {
        self.psql_super(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND usename = '{user}'"
            ),
        )
        .parse()
        .unwrap()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A physical streaming replica of this cluster, made with
    /// `pg_basebackup -R` and started on a port of its own.
    pub fn streaming_replica(&self) -> PgCluster {
        let hba = self.dir.join("pg_hba.conf");
        let mut text = fs::read_to_string(&hba).unwrap();
        if !text.contains("local replication all trust") {
            text.push_str("local replication all trust\n");
            fs::write(&hba, text).unwrap();
            self.psql_super("postgres", "SELECT pg_reload_conf()");
        }
        let name = unique("replica");
        let dir = base_dir().join(&name);
        let owner = pg_owner();
        let mut cmd = Command::new(pg_bindir().join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&dir)
            .args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-U",
                SUPERUSER,
            ])
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = owner {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The copy has the primary's socket directory, sockets skipped.
        let _ = fs::remove_dir_all(dir.join("sock"));
        chown_tree(&dir, owner);
        Self::start_in(&dir, &name, None)
    }

    /// Promotes a streaming replica to a primary and waits until it is one.
    pub fn promote(&self) {
        assert_eq!(
            self.psql_super("postgres", "SELECT pg_promote(true, 30)"),
            "t"
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
        if !self.dir.ends_with("template") {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Makes the spawned process join network namespace `ns` and then drop
/// to `owner`: setns needs root, and it has to happen before the uid
/// change, so both are done here instead of with `Command::uid`.
fn enter_netns(cmd: &mut Command, ns: &str, owner: Option<(u32, u32)>) {
    use std::os::fd::{AsRawFd, OwnedFd};
    let file = fs::File::open(format!("/var/run/netns/{ns}")).expect("netns exists");
    let fd: OwnedFd = file.into();
    // SAFETY: only async-signal-safe syscalls between fork and exec; the
    // fd stays open in the parent until the closure is dropped.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid)) = owner {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Runs `ip` with arguments, panicking with its output on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to the host by a veth pair: the way to make
/// a server vanish without a reset. `cut()` sets the namespace's end of
/// the link down, and packets are dropped silently.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

impl Netns {
    /// Needs root and iproute2; fails (never skips) without them.
    pub fn new() -> Netns {
        // SAFETY: getuid has no preconditions.
        assert_eq!(
            unsafe { libc::getuid() },
            0,
            "this test needs root: it builds a network namespace with a veth pair (ip netns, ip link)"
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("{}{}", pid % 100_000, n);
        let net = format!("10.{}.{}", 150 + pid % 100, n % 256);
        let ns = Netns {
            name: format!("pgcat-{id}"),
            host_if: format!("pgh{id}"),
            ns_if: format!("pgn{id}"),
            host_ip: format!("{net}.1"),
            ns_ip: format!("{net}.2"),
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ]);
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&[
            "netns",
            "exec",
            &ns.name,
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.ns_ip),
            "dev",
            &ns.ns_if,
        ]);
        ns.set_link(&ns.ns_if, "up");
        ns.set_link("lo", "up");
        ns
    }

    /// `ip link set DEV STATE` inside the namespace.
    fn set_link(&self, dev: &str, state: &str) {
        ip(&["netns", "exec", &self.name, "ip", "link", "set", dev, state]);
    }

    /// Drops every packet on the link from now on, without a reset.
    pub fn cut(&self) {
        self.set_link(&self.ns_if, "down");
    }

    pub fn restore(&self) {
        self.set_link(&self.ns_if, "up");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A role and database of its own.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
}

/// One `[pools.<name>]` for a generated config.
pub struct PoolSpec<'a> {
    pub name: &'a str,
    pub db: &'a TestDb,
    pub mode: &'a str,
    pub pool_size: u32,
    /// How clients authenticate to pgcat.
    pub auth_type: &'a str,
    /// Extra lines for the `[pools.<name>]` table.
    pub pool_extra: &'a str,
    /// Extra lines for the user table.
    pub user_extra: &'a str,
    /// Extra lines for the shard table (mirrors).
    pub shard_extra: String,
}

impl<'a> PoolSpec<'a> {
    pub fn new(db: &'a TestDb) -> Self {
        PoolSpec {
            name: &db.name,
            db,
            mode: "transaction",
            pool_size: 5,
            auth_type: "scram-sha-256",
            pool_extra: "",
            user_extra: "",
            shard_extra: String::new(),
        }
    }
}

pub const ADMIN_USER: &str = "pgcat_admin";
pub const ADMIN_PASSWORD: &str = "admin_secret";

/// A config listening on a free port with the given pools.
pub fn config_text(general_extra: &str, pools: &[PoolSpec]) -> String {
    let mut s = format!(
        "[general]\nhost = \"127.0.0.1\"\nport = 0\nadmin_username = \"{ADMIN_USER}\"\n\
         admin_password = \"{ADMIN_PASSWORD}\"\nconnect_timeout = 5000\n{general_extra}\n"
    );
    for p in pools {
        s.push_str(&format!(
            "\n[pools.{name}]\npool_mode = \"{mode}\"\n{extra}\n\n\
             [pools.{name}.users.0]\nusername = \"{user}\"\npassword = \"{password}\"\n\
             auth_type = \"{auth}\"\npool_size = {size}\n{user_extra}\n\n\
             [pools.{name}.shards.0]\ndatabase = \"{db}\"\nservers = [[\"{host}\", {port}, \"primary\"]]\n{shard_extra}\n",
            name = p.name,
            mode = p.mode,
            extra = p.pool_extra,
            user = p.db.user,
            password = p.db.password,
            auth = p.auth_type,
            size = p.pool_size,
            user_extra = p.user_extra,
            db = p.db.name,
            host = p.db.host,
            port = p.db.port,
            shard_extra = p.shard_extra,
        ));
    }
    s
}

/// pgcat running in-process on a runtime of its own, so that CPU-heavy
/// test clients (hundreds of SCRAM logins) cannot starve it.
pub struct TestProxy {
    pub handle: ProxyHandle,
    pub port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestProxy {
    pub async fn start(text: &str) -> TestProxy {
        let (config, _warnings) = Config::parse(text, "test config").expect("valid test config");
        Self::start_config(config).await
    }

    async fn start_config(config: Config) -> TestProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pgcat-under-test")
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime
            .spawn(Proxy::start(config, std::future::pending()))
            .await
            .unwrap()
            .expect("start pgcat");
        let port = handle.local_addr().port();
        TestProxy {
            handle,
            port,
            runtime: Some(runtime),
        }
    }

    /// A libpq-style connection string to this proxy.
    pub fn conn_str(&self, db: &TestDb) -> String {
        proxy_conn_str(self.port, db)
    }

    pub async fn connect(&self, db: &TestDb) -> tokio_postgres::Client {
        connect(&self.conn_str(db)).await
    }

    pub async fn stop(mut self) {
        self.handle.shutdown();
        self.handle.wait().await;
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        // A test that panicked: drop pgcat's tasks and sockets without
        // blocking the test's runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A libpq-style connection string to a pgcat listening on `port`.
pub fn proxy_conn_str(port: u16, db: &TestDb) -> String {
    format!(
        "host=127.0.0.1 port={port} user={} password={} dbname={}",
        db.user, db.password, db.name
    )
}

/// Blocks until something accepts TCP connections on 127.0.0.1:`port`,
/// for at most 10 s.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `f` holds, for at most `limit`.
pub async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples on a thread, until [`MaxWatch::finish`], the highest value
/// `sample` returns (e.g. a cluster's backend count).
pub struct MaxWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl MaxWatch {
    pub fn start(sample: impl Fn() -> usize + Send + 'static) -> MaxWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            while !stopped.load(Ordering::Relaxed) {
                max = max.max(sample());
                std::thread::sleep(Duration::from_millis(25));
            }
            max
        });
        MaxWatch { stop, thread }
    }

    /// Stops sampling; the highest value seen.
    pub async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || self.thread.join().unwrap())
            .await
            .unwrap()
    }
}

/// Connects with tokio-postgres and drives the connection in a task.
pub async fn connect(conn_str: &str) -> tokio_postgres::Client {
    try_connect(conn_str)
        .await
        .unwrap_or_else(|e| panic!("connect {conn_str}: {e:?}"))
}

pub async fn try_connect(conn_str: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Direct connection string to PostgreSQL for a test database.
pub fn direct_conn_str(db: &TestDb) -> String {
    format!(
        "host={} port={} user={} password={} dbname={}",
        db.host, db.port, db.user, db.password, db.name
    )
}

/// Runs a real client binary (psql, pgbench) to completion with a
/// timeout, killing and reaping it on timeout.
pub fn run_tool(mut cmd: Command, timeout: Duration) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_tied(cmd).expect("spawn tool");
    let deadline = Instant::now() + timeout;
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        io::Read::read_to_end(&mut { stdout }, &mut v).ok();
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        io::Read::read_to_end(&mut { stderr }, &mut v).ok();
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().unwrap();
            let stderr = err_reader.join().unwrap();
            panic!(
                "tool timed out after {timeout:?} ({status}): {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// [`run_tool`] off the async runtime's worker threads.
pub async fn run_tool_async(cmd: Command, timeout: Duration) -> std::process::Output {
    tokio::task::spawn_blocking(move || run_tool(cmd, timeout))
        .await
        .unwrap()
}

/// A config file on disk, for tests that reload.
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl ConfigFile {
    pub fn new(text: &str) -> ConfigFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgcat.toml");
        let f = ConfigFile { _dir: dir, path };
        f.write(text);
        f
    }

    /// Replaces the content atomically, so a watcher never reads half a
    /// file.
    pub fn write(&self, text: &str) {
        let tmp = self.path.with_extension("tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &self.path).unwrap();
    }
}

impl TestProxy {
    /// pgcat started from a config file, so RELOAD and autoreload work.
    pub async fn start_file(file: &ConfigFile) -> TestProxy {
        let (config, _warnings) = Config::load(&file.path).expect("valid test config");
        Self::start_config(config).await
    }

    pub fn admin_conn_str(&self) -> String {
        admin_conn_str(self.port)
    }

    pub async fn admin(&self) -> tokio_postgres::Client {
        connect(&self.admin_conn_str()).await
    }
}

pub fn admin_conn_str(port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user={ADMIN_USER} password={ADMIN_PASSWORD} dbname=pgbouncer"
    )
}

/// Rows of an admin command as column -> value maps.
pub async fn admin_rows(
    client: &tokio_postgres::Client,
    command: &str,
) -> Vec<std::collections::HashMap<String, Option<String>>> {
    let messages = client
        .simple_query(command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e:?}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).map(str::to_string)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The whole HTTP answer of the exporter at `addr` to `GET /metrics`.
pub async fn get_metrics(addr: std::net::SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap()
}

/// The row of SHOW POOLS for a database.
pub async fn pool_row(
    admin: &tokio_postgres::Client,
    db: &str,
) -> std::collections::HashMap<String, Option<String>> {
    admin_rows(admin, "SHOW POOLS")
        .await
        .into_iter()
        .find(|r| r["database"].as_deref() == Some(db))
        .unwrap_or_else(|| panic!("no SHOW POOLS row for {db}"))
}

/// The pgcat binary as a child process, for what needs a process of its
/// own: its CPU time, its memory, its log. Stopped (SIGINT, then SIGKILL)
/// and reaped when dropped.
pub struct PgcatChild {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    _config: ConfigFile,
}

impl PgcatChild {
    /// Starts `pgcat` on `text` (a config from [`config_text`]: its
    /// `port = 0` is replaced by a free port), with `RUST_LOG` set to
    /// `log_level`.
    pub fn start(text: &str, log_level: &str) -> PgcatChild {
        let port = free_port();
        let config = ConfigFile::new(&text.replacen("port = 0", &format!("port = {port}"), 1));
        let log = config.path.with_extension("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgcat"));
        cmd.arg(&config.path)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        let child = spawn_tied(cmd).expect("start pgcat");
        wait_listening(port, "pgcat");
        PgcatChild {
            child: Some(child),
            port,
            log,
            _config: config,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// User plus system CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // utime and stime: fields 14 and 15 of stat(5), 12 and 13 here.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no side effects.
        ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    /// Resident memory, in kB.
    pub fn rss_kb(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn conn_str(&self, db: &TestDb) -> String {
        proxy_conn_str(self.port, db)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(10));
        }
    }
}

impl Drop for PgcatChild {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Raises this process's soft open-file limit to its hard limit (tests
/// that hold thousands of sockets).
pub fn raise_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}
