//! The `pgcat` command: `pgcat [CONFIG]` runs the pooler headless.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pgcat::proxy::config::Config;
use pgcat::proxy::Proxy;

#[derive(Parser, Debug)]
#[command(
    name = "pgcat",
    version,
    about = "PostgreSQL connection pooler and proxy"
)]
struct Cli {
    /// Config file in PgCat's TOML format.
    #[arg(default_value = "pgcat.toml")]
    config: PathBuf,
    /// Log level (error, warn, info, debug, trace) when RUST_LOG is unset.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log_level));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pgcat: invalid --log-level {:?}: {e}", cli.log_level);
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let (config, warnings) = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgcat: {e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.general.worker_threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgcat: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let mut signals = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ] {
        match signal(kind) {
            Ok(s) => signals.push(s),
            Err(e) => {
                eprintln!("pgcat: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let [sigint, sigterm, sighup, sigusr1, sigusr2] = &mut signals[..] else {
        unreachable!("five signals installed");
    };
    let proxy = match Proxy::start(config, std::future::pending()).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pgcat: {e}");
            return ExitCode::FAILURE;
        }
    };
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
            _ = proxy.wait() => break,
        }
    }
    ExitCode::SUCCESS
}
