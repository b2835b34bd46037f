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
    let (mut sigint, mut sigterm, mut sighup) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => {
            eprintln!("pgcat: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let proxy = match Proxy::start(config, std::future::pending()).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pgcat: {e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            _ = sigint.recv() => proxy.shutdown(),
            _ = sigterm.recv() => proxy.shutdown(),
            _ = sighup.recv() => {
                tracing::warn!("SIGHUP received: configuration reload is not available in this version");
            }
            _ = proxy.wait() => break,
        }
    }
    ExitCode::SUCCESS
}
