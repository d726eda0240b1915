//! `flashstockd`: the flashstock server. Parses its configuration, then calls
//! `flashstock_server::daemon::run` until SIGINT or SIGTERM.

use std::net::SocketAddr;
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
    /// A TOML settings file.
    #[arg(long, env = "FLASHSTOCK_CONFIG")]
    config: Option<PathBuf>,
    /// Where to listen [default: 127.0.0.1:7400].
    #[arg(long, env = "FLASHSTOCK_LISTEN")]
    listen: Option<SocketAddr>,
    /// The data directory: write-ahead log, TLS material, tokens [default: ./flashstock-data].
    #[arg(long, env = "FLASHSTOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Shard actors (threads) [default: cores]; fixed for the life of a data directory.
    #[arg(long, env = "FLASHSTOCK_SHARDS")]
    shards: Option<u16>,
    /// Records between snapshots of a shard [default: 1000000].
    #[arg(long, env = "FLASHSTOCK_SNAPSHOT_EVERY_RECORDS")]
    snapshot_every_records: Option<u64>,
    /// Milliseconds between snapshots of a busy shard [default: 60000].
    #[arg(long, env = "FLASHSTOCK_SNAPSHOT_EVERY_MS")]
    snapshot_every_ms: Option<u64>,
    /// Times its last snapshot a shard's log grows before it snapshots again [default: 4].
    #[arg(long, env = "FLASHSTOCK_SNAPSHOT_LOG_RATIO")]
    snapshot_log_ratio: Option<u64>,
    /// sled's page cache for the log, in MiB [default: 256].
    #[arg(long, env = "FLASHSTOCK_WAL_CACHE_MB")]
    wal_cache_mb: Option<u64>,
    /// Jobs a shard's inbox holds before requests are refused as overloaded [default: 65536].
    #[arg(long, env = "FLASHSTOCK_INBOX_CAPACITY")]
    inbox_capacity: Option<usize>,
    /// Jobs a shard applies per step [default: 1024, at most 4096].
    #[arg(long, env = "FLASHSTOCK_BATCH_JOBS_MAX")]
    batch_jobs_max: Option<usize>,
    /// Records per shard kept for a consumer that has not acknowledged them; past it they are
    /// truncated anyway, with an error naming the consumer [default: 20000000].
    #[arg(long, env = "FLASHSTOCK_CONSUMER_RETENTION_RECORDS_MAX")]
    consumer_retention_records_max: Option<u64>,
    /// The largest window of unacknowledged events a subscription may have [default: 65536].
    #[arg(long, env = "FLASHSTOCK_STREAM_WINDOW_EVENTS_MAX")]
    stream_window_events_max: Option<u32>,
    /// The largest frame payload accepted, in bytes [default: 1048576].
    #[arg(long, env = "FLASHSTOCK_FRAME_BYTES_MAX")]
    frame_bytes_max: Option<u32>,
    /// Connections served at once [default: 1024].
    #[arg(long, env = "FLASHSTOCK_CONNECTIONS_MAX")]
    connections_max: Option<usize>,
    /// Requests one connection may have in flight [default: 16384].
    #[arg(long, env = "FLASHSTOCK_IN_FLIGHT_MAX")]
    in_flight_max: Option<u32>,
    /// Streams one connection may open [default: 64].
    #[arg(long, env = "FLASHSTOCK_STREAMS_MAX")]
    streams_max: Option<u32>,
    /// Milliseconds of silence before a connection is closed [default: 30000].
    #[arg(long, env = "FLASHSTOCK_IDLE_TIMEOUT_MS")]
    idle_timeout_ms: Option<u64>,
    /// Kernel send and receive buffer asked for the UDP socket, in bytes; the kernel caps it
    /// at net.core.rmem_max/wmem_max [default: 4194304].
    #[arg(long, env = "FLASHSTOCK_UDP_BUFFER_BYTES")]
    udp_buffer_bytes: Option<usize>,
    /// A PEM certificate chain to serve instead of the generated self-signed one.
    #[arg(long, env = "FLASHSTOCK_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "FLASHSTOCK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A tokens file (`admin = "..."` / `service = "..."` / `consumer = "..."` lines).
    #[arg(long, env = "FLASHSTOCK_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Mutual TLS: a PEM CA whose client certificates grant the admin role.
    #[arg(long, env = "FLASHSTOCK_CLIENT_CA_ADMIN")]
    client_ca_admin: Option<PathBuf>,
    /// Mutual TLS: a PEM CA whose client certificates grant the service role.
    #[arg(long, env = "FLASHSTOCK_CLIENT_CA_SERVICE")]
    client_ca_service: Option<PathBuf>,
    /// Mutual TLS: a PEM CA whose client certificates grant the consumer role.
    #[arg(long, env = "FLASHSTOCK_CLIENT_CA_CONSUMER")]
    client_ca_consumer: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    flashstock_server::init_logging("info");
    let args = Args::parse();
    let from_file = match &args.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let settings = from_file.overridden_by(Settings {
        listen: args.listen,
        data_dir: args.data_dir,
        shards: args.shards,
        snapshot_every_records: args.snapshot_every_records,
        snapshot_every_ms: args.snapshot_every_ms,
        snapshot_log_ratio: args.snapshot_log_ratio,
        wal_cache_mb: args.wal_cache_mb,
        inbox_capacity: args.inbox_capacity,
        batch_jobs_max: args.batch_jobs_max,
        consumer_retention_records_max: args.consumer_retention_records_max,
        stream_window_events_max: args.stream_window_events_max,
        frame_bytes_max: args.frame_bytes_max,
        connections_max: args.connections_max,
        in_flight_max: args.in_flight_max,
        streams_max: args.streams_max,
        idle_timeout_ms: args.idle_timeout_ms,
        udp_buffer_bytes: args.udp_buffer_bytes,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tokens_file: args.tokens_file,
        client_ca_admin: args.client_ca_admin,
        client_ca_service: args.client_ca_service,
        client_ca_consumer: args.client_ca_consumer,
    });
    let tokio = tokio::runtime::Runtime::new().context("starting tokio")?;
    tokio.block_on(daemon::run(
        settings,
        |listen, cert, tokens| {
            // One machine-readable line for scripts and tests, besides the log.
            println!(
                "flashstockd listening on {listen} cert {} tokens {}",
                cert.display(),
                tokens.display()
            );
        },
        shutdown_signal(),
    ))?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
