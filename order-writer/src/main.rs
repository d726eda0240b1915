//! `order-writer`: stores every order flashstock confirms, exactly once, in SQLite (the
//! default), PostgreSQL or MySQL/MariaDB. Parses its flags, then calls
//! `flashstock_order_writer::run` until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use flashstock_client::ServerFiles;
use flashstock_order_writer::{run, NatsConfig, WriterConfig, WriterStats};
use flashstock_protocol::Role;

/// Subscribes to a flashstock server's committed-deduction stream and writes one order row
/// per confirmed reservation, acknowledging the stream only after the rows are committed.
///
/// With no flags it reads the certificate and consumer token of a server started on the
/// embedded defaults (`./flashstock-data`) and writes to `./order-writer-data/orders.db`
/// (SQLite).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The flashstock server.
    #[arg(long, env = "FLASHSTOCK_SERVER", default_value = "127.0.0.1:7400")]
    server: SocketAddr,
    /// The name on the server's certificate.
    #[arg(long, env = "FLASHSTOCK_SERVER_NAME", default_value = "localhost")]
    server_name: String,
    /// The server's data directory, where its certificate (`tls/cert.pem`) and tokens
    /// (`tokens.toml`) are, when --cert or --token are not given.
    #[arg(long, env = "FLASHSTOCK_DATA_DIR", default_value = "flashstock-data")]
    server_data_dir: PathBuf,
    /// The server's certificate (PEM) to trust [default: <server-data-dir>/tls/cert.pem].
    #[arg(long, env = "FLASHSTOCK_CERT")]
    cert: Option<PathBuf>,
    /// A consumer-role token [default: the one <server-data-dir>/tokens.toml grants --consumer].
    #[arg(long, env = "FLASHSTOCK_CONSUMER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The consumer name the server keeps this writer's acknowledged cursor under.
    #[arg(long, env = "ORDER_WRITER_CONSUMER", default_value = "order-writer")]
    consumer: String,
    /// Where the default SQLite database lives.
    #[arg(long, env = "ORDER_WRITER_DATA_DIR", default_value = "order-writer-data")]
    data_dir: PathBuf,
    /// A database URL: `sqlite:PATH`, `postgres://user@host/db`, `mysql://user@host/db`.
    /// Repeat it (or separate with commas) to shard orders over several databases by a hash of
    /// the reservation id; keep the order fixed. [default: sqlite:<data-dir>/orders.db]
    #[arg(long = "database-url", env = "ORDER_WRITER_DATABASE_URLS", value_delimiter = ',')]
    database_urls: Vec<String>,
    /// Also store cancelled and expired reservations (with their status), not only orders.
    #[arg(long, env = "ORDER_WRITER_RECORD_ENDED")]
    record_ended: bool,
    /// Also publish every event to this NATS server's JetStream, e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "ORDER_WRITER_NATS_URL")]
    nats_url: Option<String>,
    /// The JetStream stream to publish to (created if missing).
    #[arg(long, env = "ORDER_WRITER_NATS_STREAM", default_value = "FLASHSTOCK")]
    nats_stream: String,
    /// Events go to subjects `<prefix>.confirmed`, `.cancelled`, `.expired`, `.stock`.
    #[arg(long, env = "ORDER_WRITER_NATS_SUBJECT_PREFIX", default_value = "flashstock")]
    nats_subject_prefix: String,
    /// Events written in one transaction at most.
    #[arg(long, env = "ORDER_WRITER_BATCH_EVENTS_MAX", default_value_t = 8_192)]
    batch_events_max: usize,
    /// Milliseconds to keep gathering events after the first of a transaction.
    #[arg(long, env = "ORDER_WRITER_LINGER_MS", default_value_t = 2)]
    linger_ms: u64,
    /// Log lines as `text` or `json` (one object per line, for a log pipeline).
    #[arg(long, env = "ORDER_WRITER_LOG_FORMAT", default_value = "text")]
    log_format: flashstock_observe::LogFormat,
    /// Where to serve `/metrics`, `/livez` and `/readyz` over plain HTTP (empty: off).
    #[arg(long, env = "ORDER_WRITER_METRICS_LISTEN", default_value = "127.0.0.1:9465")]
    metrics_listen: String,
    /// Events the server may send beyond the last acknowledgement.
    #[arg(long, env = "ORDER_WRITER_WINDOW_EVENTS", default_value_t = 65_536)]
    window_events: u32,
    /// etcd's client URLs (comma-separated) of a cluster: subscribe to every server the
    /// cluster registers (following them as they come and go) instead of --server; the
    /// certificate and token are the servers' shared ones.
    #[arg(long, env = "FLASHSTOCK_ETCD")]
    etcd: Option<String>,
    /// With --etcd: the cluster's key prefix.
    #[arg(long, env = "FLASHSTOCK_CLUSTER_PREFIX", default_value = "/flashstock/default")]
    cluster_prefix: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    flashstock_observe::init_logging("info", args.log_format);
    let files = ServerFiles::new(&args.server_data_dir);
    let tls = files.tls(args.cert.as_deref()).context("reading the server certificate")?;
    let token = files
        .token(args.token.as_deref(), Role::Consumer, Some(&args.consumer))
        .context("finding this writer's consumer token (or pass --token)")?;
    let database_urls = if args.database_urls.is_empty() {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating {}", args.data_dir.display()))?;
        vec![format!("sqlite:{}", args.data_dir.join("orders.db").display())]
    } else {
        args.database_urls.clone()
    };
    let nats = args.nats_url.clone().map(|url| NatsConfig {
        url,
        stream: args.nats_stream.clone(),
        subject_prefix: args.nats_subject_prefix.clone(),
    });
    let config = WriterConfig {
        server_name: args.server_name.clone(),
        consumer: args.consumer.clone(),
        record_ended: args.record_ended,
        nats,
        batch_events_max: args.batch_events_max.max(1),
        linger_ms: args.linger_ms,
        window_events: args.window_events.max(1),
        cluster: flashstock_client::EtcdConfig::from_urls(
            args.etcd.as_deref().unwrap_or_default(),
            &args.cluster_prefix,
        ),
        ..WriterConfig::new(args.server, tls, token, database_urls)
    };
    let stats = Arc::new(WriterStats::default());
    let tokio = tokio::runtime::Runtime::new().context("starting tokio")?;
    // Handlers first: a SIGTERM during start-up must stop the writer cleanly, not kill it.
    let shutdown = {
        let _in_runtime = tokio.enter();
        flashstock_observe::shutdown_signal().context("installing signal handlers")?
    };
    tokio.block_on(async {
        let _listening = match args.metrics_listen.trim() {
            "" => None,
            addr => {
                let addr = addr.parse().with_context(|| format!("--metrics-listen {addr:?}"))?;
                let listening = flashstock_observe::start(addr, stats.health.clone()).await?;
                flashstock_order_writer::writer::metric::describe();
                flashstock_observe::build_info("order-writer", env!("CARGO_PKG_VERSION"));
                tracing::info!(metrics = %listening.addr, "serving /metrics, /livez, /readyz");
                Some(listening)
            }
        };
        run(config, stats.clone(), shutdown).await?;
        anyhow::Ok(())
    })?;
    tracing::info!(stats = %stats.summary(), "order writer stopped");
    Ok(())
}
