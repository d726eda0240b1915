//! The commands and flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Look at and change a running flashstock server.
///
/// Reads the server's certificate and admin token from its data directory (as the other tools
/// do) unless --cert and --token are given.
#[derive(Debug, Parser)]
#[command(name = "flashstock", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// An idempotency key (a ticket number, say): the change's request id is derived from it,
    /// so running the same command again with the same key (after a timeout, from another
    /// shell) is the same request, answered as the first time and applied once. 1-256 bytes.
    #[arg(long, global = true)]
    pub key: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// Which server, and how to authenticate.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's QUIC address.
    #[arg(long, env = "FLASHSTOCK_SERVER", default_value = "127.0.0.1:7400", global = true)]
    pub server: SocketAddr,
    /// The name on the server's certificate.
    #[arg(long, env = "FLASHSTOCK_SERVER_NAME", default_value = "localhost", global = true)]
    pub server_name: String,
    /// The server's data directory: its certificate (`tls/cert.pem`) and tokens
    /// (`tokens.toml`) are read from it.
    #[arg(long, env = "FLASHSTOCK_DATA_DIR", default_value = "flashstock-data", global = true)]
    pub server_data_dir: PathBuf,
    /// The server's certificate (PEM) to trust [default: <server-data-dir>/tls/cert.pem].
    #[arg(long, env = "FLASHSTOCK_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// An admin token [default: from <server-data-dir>/tokens.toml].
    #[arg(long, env = "FLASHSTOCK_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// etcd's client URLs (comma-separated) of a cluster: SKU and reservation commands then
    /// go to the server owning the SKU's slot, and `cluster` commands read and change the
    /// cluster's map.
    #[arg(long, env = "FLASHSTOCK_ETCD", global = true)]
    pub etcd: Option<String>,
    /// The cluster's key prefix in etcd.
    #[arg(
        long,
        env = "FLASHSTOCK_CLUSTER_PREFIX",
        default_value = "/flashstock/default",
        global = true
    )]
    pub cluster_prefix: String,
    /// The server's metrics and health listener, for `health`.
    #[arg(long, env = "FLASHSTOCK_METRICS", default_value = "127.0.0.1:9464", global = true)]
    pub metrics: SocketAddr,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// SKUs: counts, stock, buyer limits, sale windows.
    #[command(subcommand)]
    Sku(SkuCommand),
    /// Reservations.
    #[command(subcommand)]
    Reservation(ReservationCommand),
    /// Consumers of the committed-deduction stream.
    #[command(subcommand)]
    Consumer(ConsumerCommand),
    /// Reserve rate limits per buyer and per credential, global or per SKU.
    #[command(subcommand)]
    RateLimit(RateLimitCommand),
    /// Whether the server answers over QUIC and says it is ready (`/readyz`).
    Health,
    /// A cluster's shard map and members in etcd (needs --etcd).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// Cluster commands (docs/cluster.md).
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The map's ranges (slots and their server), its revision, and the live members.
    Show,
    /// A new cluster's first map: the 4,096 slots split evenly over the servers given, in
    /// that order. Refused when a map is stored already (its SKUs would change owner
    /// without their state; moving slots is its own command).
    Init {
        /// The servers' ids, as each was started with --server-id.
        #[arg(required = true)]
        servers: Vec<String>,
    },
    /// Moves a slot range to another server, live: both freeze it (its requests are
    /// answered "moving, retry"), the source's state of it is copied to the target, then
    /// the map gives it to the target in one etcd transaction, the commit point. Progress
    /// is printed as it goes. One move at a time per cluster; reaches the servers with the
    /// certificate and admin token of --server-data-dir (or --cert, --token).
    Move {
        /// The slots, `FIRST-LAST` (0-4095), all owned by one server now.
        slots: String,
        /// The server to give them to (its --server-id).
        #[arg(long)]
        to: String,
        /// Stop after this phase, leaving the move in etcd for `cluster resume` or
        /// `cluster abort` (a staged cut-over; the tests' crash points).
        #[arg(long, value_enum)]
        pause_after: Option<MovePhase>,
    },
    /// Finishes the move in progress (after a pause, or a move cut short by a crash of this
    /// tool or of either server): freezes again, copies again from the start, flips.
    Resume {
        /// Stop after this phase again.
        #[arg(long, value_enum)]
        pause_after: Option<MovePhase>,
    },
    /// Abandons the move in progress before its flip: the source serves the range again
    /// and the target drops what it copied (each server does so on its own, within seconds).
    Abort,
}

/// Where a move may pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MovePhase {
    /// Both servers froze the range.
    Frozen,
    /// The target holds a full copy (not serving it yet).
    Copied,
}

/// Rate-limit commands.
#[derive(Debug, Subcommand)]
pub enum RateLimitCommand {
    /// Set the limits of one SKU (--sku) or the global ones; leave both rates out to remove
    /// them. Each is a token bucket holding one second's worth.
    Set {
        /// The SKU [default: the global limits, for every SKU without its own].
        #[arg(long)]
        sku: Option<u64>,
        /// Reserve attempts per second per buyer.
        #[arg(long)]
        per_buyer_per_s: Option<u32>,
        /// Reserve attempts per second per credential (token or client certificate).
        #[arg(long)]
        per_credential_per_s: Option<u32>,
    },
    /// The limits in force.
    List,
}

/// SKU commands.
#[derive(Debug, Subcommand)]
pub enum SkuCommand {
    /// One SKU's counts, limit and window.
    Get {
        /// The SKU id.
        sku: u64,
    },
    /// SKUs in id order, a page at a time.
    List {
        /// Start after this SKU id.
        #[arg(long)]
        after: Option<u64>,
        /// SKUs per page (the server sends at most 1,000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
    },
    /// Set a SKU's total stock (creating the SKU); refused below what is reserved plus sold.
    Set {
        /// The SKU id.
        sku: u64,
        /// Total units.
        total: u64,
    },
    /// Add units to (or, negative, take units from) a SKU's available stock.
    Adjust {
        /// The SKU id.
        sku: u64,
        /// Units to add; negative to remove.
        #[arg(allow_hyphen_values = true)]
        delta: i64,
    },
    /// The most units one buyer may hold plus have bought.
    #[command(subcommand)]
    Limit(LimitCommand),
    /// When a SKU may be reserved.
    #[command(subcommand)]
    Window(WindowCommand),
    /// Spread a hot SKU over buckets on as many shards, so that several threads take its
    /// reserves (docs/hot-skus.md). Once, after its stock, limit and window, before any
    /// buyer holds it.
    Spread {
        /// The SKU id.
        sku: u64,
        /// Buckets: 2 to the server's shard count.
        buckets: u32,
    },
}

/// Buyer-limit commands.
#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Set the limit; refused below what some buyer already holds plus has bought.
    Set {
        /// The SKU id.
        sku: u64,
        /// Units per buyer.
        limit: u32,
    },
    /// Remove the limit.
    Clear {
        /// The SKU id.
        sku: u64,
    },
}

/// Sale-window commands.
#[derive(Debug, Subcommand)]
pub enum WindowCommand {
    /// Set when reserves are taken, in milliseconds since the Unix epoch (server clock).
    Set {
        /// The SKU id.
        sku: u64,
        /// The first millisecond at which reserves are taken.
        #[arg(long)]
        opens_at_ms: Option<u64>,
        /// The first millisecond at which reserves are refused again.
        #[arg(long)]
        closes_at_ms: Option<u64>,
    },
    /// Open the SKU at all times.
    Clear {
        /// The SKU id.
        sku: u64,
    },
}

/// Reservation commands.
#[derive(Debug, Subcommand)]
pub enum ReservationCommand {
    /// One reservation: buyer, SKU, units, state, expiry.
    Get {
        /// The reservation id, as the reserve answered it.
        reservation: u64,
    },
}

/// Consumer commands.
#[derive(Debug, Subcommand)]
pub enum ConsumerCommand {
    /// Registered consumers, their acknowledged positions and whether they are subscribed.
    List,
    /// Forget a consumer: its position stops holding the log back.
    Remove {
        /// The consumer's name.
        name: String,
    },
}
