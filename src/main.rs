//! The `pgcat` command.
//!
//! - `pgcat [CONFIG]`: the pooler, headless (a daemon for systemd);
//! - `pgcat --tui [CONFIG]`: the same engine with the dashboard;
//! - `pgcat top [ADMIN_URL]`: the dashboard for a pgcat running elsewhere;
//! - `pgcat demo`: throwaway clusters, traffic and the dashboard.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand};
use pgcat::proxy::config::Config;
use pgcat::proxy::{Proxy, ProxyHandle};
use pgcat::tui::source::{AdminUrl, Source};
use pgcat::tui::LogBuffer;

#[derive(Parser, Debug)]
#[command(
    name = "pgcat",
    version,
    about = "PostgreSQL connection pooler and proxy",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Config file in PgCat's TOML format.
    #[arg(default_value = "pgcat.toml")]
    config: PathBuf,
    /// Log level (error, warn, info, debug, trace) when RUST_LOG is unset.
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    /// Write logs to this file instead of stderr.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Write the process id to this file; removed on exit.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Show the dashboard; quitting it shuts the pooler down.
    #[arg(long)]
    tui: bool,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// The dashboard for a pgcat running elsewhere, through its admin console.
    Top {
        /// postgres://USER[:PASSWORD]@HOST[:PORT][/pgcat]; the password may
        /// come from PGPASSWORD.
        #[arg(default_value = "postgres://admin@127.0.0.1:6432/pgcat")]
        url: String,
    },
    /// Start throwaway PostgreSQL clusters, drive traffic, open the
    /// dashboard; everything is removed on exit.
    Demo,
}

enum LogTarget {
    Stderr,
    File(PathBuf),
    Pane(LogBuffer),
}

fn init_logging(level: &str, target: LogTarget) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .map_err(|e| format!("invalid --log-level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match target {
        LogTarget::Stderr => builder.with_writer(std::io::stderr).init(),
        LogTarget::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init()
        }
        LogTarget::Pane(buffer) => builder.with_ansi(false).with_writer(buffer).init(),
    }
    Ok(())
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))
}

/// mimalloc rather than glibc's malloc: tokio allocates each task and
/// each socket's readiness state aligned to 128 bytes, and glibc's aligned
/// allocation leaves a fragment beside each one. Measured at 10 000 idle
/// clients (docs/architecture.md, "An idle client"): about 1 780 bytes
/// per client with glibc, 1 535 with mimalloc (1 392-1 475 with the
/// smaller `Session` and `ClientInfo`); CPU per transaction within noise.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::Top { ref url }) => top(&cli, url),
        Some(Sub::Demo) => demo(&cli),
        None => pooler(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgcat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as PgBouncer
/// does, and says how many clients that leaves room for.
fn raise_file_limit(max_client_conn: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    // Each client takes one descriptor, each server connection one; keep
    // some for listeners, logs and server connections.
    let room = (lim.rlim_cur as usize).saturating_sub(64);
    tracing::info!(
        open_files = lim.rlim_cur,
        max_client_conn,
        "file descriptor limit: room for about {room} connections"
    );
    if room < max_client_conn {
        tracing::warn!(
            "max_client_conn ({max_client_conn}) is above what the open-file limit ({}) allows",
            lim.rlim_cur
        );
    }
}

/// `pgcat [--tui] [CONFIG]`.
fn pooler(cli: &Cli) -> Result<(), String> {
    let logs = LogBuffer::default();
    let target = match (&cli.log_file, cli.tui) {
        (_, true) => LogTarget::Pane(logs.clone()),
        (Some(f), false) => LogTarget::File(f.clone()),
        (None, false) => LogTarget::Stderr,
    };
    init_logging(&cli.log_level, target)?;
    let (config, warnings) = Config::load(&cli.config).map_err(|e| e.to_string())?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let _pid = cli.pid_file.as_deref().map(PidFile::create).transpose()?;
    raise_file_limit(config.general.max_client_conn);
    let rt = runtime(config.general.worker_threads)?;
    rt.block_on(async {
        // Handlers go in before the port opens: a signal that arrives as
        // soon as pgcat answers must not meet the default action.
        let signals = Signals::install()?;
        let proxy = Proxy::start(config, std::future::pending())
            .await
            .map_err(|e| e.to_string())?;
        if cli.tui {
            dashboard(&proxy, logs, signals).await?;
            proxy.shutdown();
            proxy.wait().await;
            Ok(())
        } else {
            serve_signals(&proxy, signals).await
        }
    })
}

struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |k| signal(k).map_err(|e| format!("cannot install signal handlers: {e}"));
        Ok(Signals {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
            hup: install(SignalKind::hangup())?,
            usr1: install(SignalKind::user_defined1())?,
            usr2: install(SignalKind::user_defined2())?,
        })
    }
}

/// Headless: signals steer the pooler until it stops.
async fn serve_signals(proxy: &ProxyHandle, signals: Signals) -> Result<(), String> {
    let Signals {
        int: mut sigint,
        term: mut sigterm,
        hup: mut sighup,
        usr1: mut sigusr1,
        usr2: mut sigusr2,
    } = signals;
    let pause_all = |paused: bool| {
        for p in proxy.shared().pools.load().iter() {
            p.state.set_paused(paused);
        }
    };
    loop {
        tokio::select! {
            _ = sigint.recv() => proxy.shutdown(),
            _ = sigterm.recv() => proxy.shutdown(),
            _ = sighup.recv() => {
                // Errors are logged by the reload itself.
                let _ = proxy.shared().reload("SIGHUP");
            }
            _ = sigusr1.recv() => {
                tracing::info!("SIGUSR1: pausing all pools");
                pause_all(true);
            }
            _ = sigusr2.recv() => {
                tracing::info!("SIGUSR2: resuming all pools");
                pause_all(false);
            }
            _ = proxy.wait() => return Ok(()),
        }
    }
}

/// Runs the dashboard on a blocking thread beside the engine; SIGINT,
/// SIGTERM and SIGHUP keep working while it is up.
async fn dashboard(proxy: &ProxyHandle, logs: LogBuffer, signals: Signals) -> Result<(), String> {
    let Signals {
        int: mut sigint,
        term: mut sigterm,
        hup: mut sighup,
        ..
    } = signals;
    let source = Source::Local {
        shared: proxy.shared().clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let mut ui = tokio::task::spawn_blocking(move || pgcat::tui::run(source, logs));
    loop {
        tokio::select! {
            r = &mut ui => {
                return r.map_err(|e| e.to_string())?.map_err(|e| format!("dashboard: {e}"));
            }
            _ = sigterm.recv() => pgcat::tui::STOP.store(true, Ordering::Relaxed),
            _ = sigint.recv() => pgcat::tui::STOP.store(true, Ordering::Relaxed),
            _ = sighup.recv() => {
                let _ = proxy.shared().reload("SIGHUP");
            }
        }
    }
}

/// `pgcat top [ADMIN_URL]`.
fn top(cli: &Cli, url: &str) -> Result<(), String> {
    let logs = LogBuffer::default();
    init_logging(&cli.log_level, LogTarget::Pane(logs.clone()))?;
    let url = AdminUrl::parse(url)?;
    let rt = runtime(2)?;
    let handle = rt.handle().clone();
    // Fail early, before taking over the terminal, when pgcat is not there.
    let mut probe = Source::Remote {
        url: url.clone(),
        client: None,
        runtime: handle.clone(),
    };
    probe.snapshot().map_err(|e| {
        format!(
            "cannot read the admin console at {}:{}: {e}",
            url.host, url.port
        )
    })?;
    let result = rt
        .block_on(async { tokio::task::spawn_blocking(move || pgcat::tui::run(probe, logs)).await })
        .map_err(|e| e.to_string())?;
    result.map_err(|e| format!("dashboard: {e}"))
}

/// `pgcat demo`.
fn demo(cli: &Cli) -> Result<(), String> {
    let logs = LogBuffer::default();
    init_logging(&cli.log_level, LogTarget::Pane(logs.clone()))?;
    let say = |s: &str| eprintln!("pgcat demo: {s}");
    let rt = runtime(2)?;
    // SIGINT/SIGTERM while the clusters start: stop and clean up.
    let mut demo = pgcat::demo::Demo::start(&say).map_err(|e| e.to_string())?;
    let (config, _) = Config::load(&demo.config_path).map_err(|e| e.to_string())?;
    let result = rt.block_on(async {
        let signals = Signals::install()?;
        let proxy = Proxy::start(config, std::future::pending())
            .await
            .map_err(|e| e.to_string())?;
        demo.start_traffic().map_err(|e| e.to_string())?;
        let r = dashboard(&proxy, logs, signals).await;
        proxy.shutdown();
        // Traffic first, so the drain does not wait for it.
        demo.stop();
        proxy.wait().await;
        r
    });
    demo.stop();
    result
}

/// A pid file removed when the process ends normally.
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: &Path) -> Result<PidFile, String> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write pid file {}: {e}", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
