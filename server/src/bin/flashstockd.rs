//! `flashstockd`: the flashstock server. Parses its configuration, then calls
//! `flashstock_server::daemon::run` until SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use flashstock_server::daemon::{self, Settings};

/// glibc hands large freed blocks back to the kernel, so each growth of a shard's tables, and
/// each frame and batch allocation, paid page faults and slow paths; mimalloc reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The flashstock server: flash-sale stock over QUIC, durable before it answers.
///
/// Settings come from defaults, then `--config FILE` (TOML, same names with underscores),
/// then environment variables, then flags. On first start it generates a self-signed TLS
/// certificate (`<data-dir>/tls/cert.pem`, which clients trust) and admin, service and consumer
/// tokens (`<data-dir>/tokens.toml`).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML settings file (the same names, with underscores).
    #[arg(long, env = "FLASHSTOCK_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as `text` or `json` (one object per line, for a log pipeline).
    #[arg(long, env = "FLASHSTOCK_LOG_FORMAT", default_value = "text")]
    log_format: flashstock_observe::LogFormat,
    #[command(flatten)]
    settings: Settings,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    flashstock_observe::init_logging("info", args.log_format);
    let from_file = match &args.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let settings = from_file.overridden_by(args.settings);
    let io_threads = settings.io_threads.unwrap_or_else(daemon::io_threads_default);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads.max(1))
        .enable_all()
        .build()
        .context("starting tokio")?;
    // Handlers first, before anything can be told to the outside: a SIGTERM that arrives
    // just after the listening line must stop the server cleanly, not kill it.
    let (reloads, shutdown) = {
        let _in_runtime = tokio.enter();
        (
            reload_signals()?,
            flashstock_observe::shutdown_signal().context("installing signal handlers")?,
        )
    };
    tokio.block_on(daemon::run(
        settings,
        |listening| {
            // One machine-readable line for scripts and tests, besides the log.
            let or_off = |addr: Option<std::net::SocketAddr>| {
                addr.map_or("off".to_owned(), |addr| addr.to_string())
            };
            let (metrics, http) = (or_off(listening.metrics), or_off(listening.http));
            println!(
                "flashstockd listening on {} cert {} tokens {} metrics {metrics} http {http}",
                listening.listen,
                listening.cert.display(),
                listening.tokens.display()
            );
        },
        reloads,
        shutdown,
    ))?;
    Ok(())
}

/// One message per SIGHUP: re-read the tokens file and the TLS certificate and key.
fn reload_signals() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (reload, reloads) = tokio::sync::mpsc::channel(1);
    let mut hangups = signal(SignalKind::hangup()).context("a SIGHUP handler")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            // One pending reload suffices: it reads the files as they are when it runs.
            let _ = reload.try_send(());
        }
    });
    Ok(reloads)
}
