//! The server daemon's configuration and its `run`: open the log, recover, listen on QUIC,
//! serve until told to stop, drain, flush, return.
//!
//! Configuration comes from defaults, then a TOML file, then environment variables and
//! command-line flags (the binary merges them; see `flashstockd --help`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use flashstock_protocol::Role;

use crate::net::{
    self, Authenticator, ClientCertRoles, NetLimits, SharedAuth, TlsFiles, TransportLimits,
};
use crate::ServerError;
use flashstock_engine::ShardMap;
use flashstock_runtime::{Runtime, RuntimeConfig, RuntimeError, SystemClock};

/// The default listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7400";
/// The default data directory.
pub const DATA_DIR_DEFAULT: &str = "flashstock-data";
/// The default address of the metrics and health listener.
pub const METRICS_LISTEN_DEFAULT: &str = "127.0.0.1:9464";

/// Every setting of the daemon, each optional so that file, environment and flags can layer.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where to listen.
    #[arg(long, env = "FLASHSTOCK_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where to serve `/metrics` (Prometheus), `/livez` and `/readyz` over plain HTTP; an
    /// empty value turns the listener off.
    #[arg(long, env = "FLASHSTOCK_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Where to serve the HTTP/JSON API (plain HTTP/1.1: put TLS in front of it off
    /// loopback); empty, the default, turns it off.
    #[arg(long, env = "FLASHSTOCK_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// HTTP API connections served at once (each has one call in flight).
    #[arg(long, env = "FLASHSTOCK_HTTP_CONNECTIONS_MAX")]
    pub http_connections_max: Option<usize>,
    /// The largest HTTP API request body read, in bytes.
    #[arg(long, env = "FLASHSTOCK_HTTP_BODY_BYTES_MAX")]
    pub http_body_bytes_max: Option<usize>,
    /// Milliseconds an HTTP API request may take to arrive, and an idle keep-alive
    /// connection may stay open.
    #[arg(long, env = "FLASHSTOCK_HTTP_REQUEST_TIMEOUT_MS")]
    pub http_request_timeout_ms: Option<u64>,
    /// etcd's client URLs (comma-separated) holding the cluster this server joins
    /// (docs/cluster.md); empty, the default, serves every SKU alone.
    #[arg(long, env = "FLASHSTOCK_ETCD")]
    pub etcd: Option<String>,
    /// The cluster's key prefix in etcd (several clusters may share one etcd).
    #[arg(long, env = "FLASHSTOCK_CLUSTER_PREFIX")]
    pub cluster_prefix: Option<String>,
    /// This server's id in the cluster (1 to 64 bytes; the map names servers by it); empty,
    /// the default, takes the advertised address.
    #[arg(long, env = "FLASHSTOCK_SERVER_ID")]
    pub server_id: Option<String>,
    /// The QUIC address the cluster's clients dial for this server; empty, the default,
    /// takes the bound address (refused if it is unspecified, such as 0.0.0.0).
    #[arg(long, env = "FLASHSTOCK_ADVERTISE")]
    pub advertise: Option<String>,
    /// The name the cluster's clients check this server's TLS certificate against.
    #[arg(long, env = "FLASHSTOCK_ADVERTISE_NAME")]
    pub advertise_name: Option<String>,
    /// The data directory: log, TLS material, tokens.
    #[arg(long, env = "FLASHSTOCK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Bytes of free disk under which the `disk` readiness check fails and a warning is
    /// logged (the server keeps serving; at a full disk the log fails and it stops); 0 turns
    /// the check off.
    #[arg(long, env = "FLASHSTOCK_DISK_FREE_MIN_BYTES")]
    pub disk_free_min_bytes: Option<u64>,
    /// Shard actors, at most 256 (a reservation id has 8 bits for its shard). Fixed for the life
    /// of a data directory.
    #[arg(long, env = "FLASHSTOCK_SHARDS")]
    pub shards: Option<u16>,
    /// Records between snapshots.
    #[arg(long, env = "FLASHSTOCK_SNAPSHOT_EVERY_RECORDS")]
    pub snapshot_every_records: Option<u64>,
    /// Milliseconds between snapshots.
    #[arg(long, env = "FLASHSTOCK_SNAPSHOT_EVERY_MS")]
    pub snapshot_every_ms: Option<u64>,
    /// Times its last snapshot a shard's log grows before the next snapshot.
    #[arg(long, env = "FLASHSTOCK_SNAPSHOT_LOG_RATIO")]
    pub snapshot_log_ratio: Option<u64>,
    /// sled's page cache for the log, in MiB.
    #[arg(long, env = "FLASHSTOCK_WAL_CACHE_MB")]
    pub wal_cache_mb: Option<u64>,
    /// Jobs a shard's inbox holds before requests are refused as overloaded.
    #[arg(long, env = "FLASHSTOCK_INBOX_CAPACITY")]
    pub inbox_capacity: Option<usize>,
    /// Jobs a shard applies per step (at most 4,096).
    #[arg(long, env = "FLASHSTOCK_BATCH_JOBS_MAX")]
    pub batch_jobs_max: Option<usize>,
    /// Records per shard kept for a consumer that has not acknowledged them; past it they
    /// are truncated anyway, with an error naming the consumer.
    #[arg(long, env = "FLASHSTOCK_CONSUMER_RETENTION_RECORDS_MAX")]
    pub consumer_retention_records_max: Option<u64>,
    /// Threads that run the network (tokio workers): QUIC, framing and sessions. The shard,
    /// durability and checkpoint threads are besides these. On 2 cores, one network thread
    /// served 16-deep frames ~15% faster than two (more CPU left to the shards), but 50 single
    /// callers ~7% slower (a reply waits for the one thread more often): docs/performance.md.
    #[arg(long, env = "FLASHSTOCK_IO_THREADS")]
    pub io_threads: Option<usize>,
    /// Durability threads, so syncs in flight at once (1 to 8): a group appended while
    /// another syncs starts its own sync rather than waiting for that one to end.
    #[arg(long, env = "FLASHSTOCK_WAL_SYNCS_IN_FLIGHT_MAX")]
    pub wal_syncs_in_flight_max: Option<usize>,
    /// A shard step taking this many milliseconds or more is logged and counted
    /// (`flashstock_shard_slow_steps_total`): every reply of it waited that long.
    #[arg(long, env = "FLASHSTOCK_SLOW_STEP_MS")]
    pub slow_step_ms: Option<u64>,
    /// The largest window of unacknowledged events a subscription may have.
    #[arg(long, env = "FLASHSTOCK_STREAM_WINDOW_EVENTS_MAX")]
    pub stream_window_events_max: Option<u32>,
    /// The largest frame payload accepted, in bytes.
    #[arg(long, env = "FLASHSTOCK_FRAME_BYTES_MAX")]
    pub frame_bytes_max: Option<u32>,
    /// Connections served at once.
    #[arg(long, env = "FLASHSTOCK_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Connections served at once from one IP address.
    #[arg(long, env = "FLASHSTOCK_CONNECTIONS_PER_ADDRESS_MAX")]
    pub connections_per_address_max: Option<usize>,
    /// Requests one connection may have in flight.
    #[arg(long, env = "FLASHSTOCK_IN_FLIGHT_MAX")]
    pub in_flight_max: Option<u32>,
    /// Bytes a peer may send on one stream beyond what the server has read.
    #[arg(long, env = "FLASHSTOCK_STREAM_RECEIVE_WINDOW_BYTES")]
    pub stream_receive_window_bytes: Option<u32>,
    /// Bytes an authenticated connection may send beyond what the server has read, over all
    /// its streams (before authenticating: one Hello, 4,116 bytes).
    #[arg(long, env = "FLASHSTOCK_CONNECTION_RECEIVE_WINDOW_BYTES")]
    pub connection_receive_window_bytes: Option<u32>,
    /// Streams one authenticated connection may have open (before authenticating: one).
    #[arg(long, env = "FLASHSTOCK_STREAMS_MAX")]
    pub streams_max: Option<u32>,
    /// Milliseconds a new connection has to authenticate (`Hello` answered by `Welcome`)
    /// before it is closed as `Unauthenticated`.
    #[arg(long, env = "FLASHSTOCK_HELLO_TIMEOUT_MS")]
    pub hello_timeout_ms: Option<u64>,
    /// Milliseconds of silence before a connection is closed.
    #[arg(long, env = "FLASHSTOCK_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Kernel send and receive buffer asked for the UDP socket, in bytes (the kernel caps it
    /// at `net.core.rmem_max`/`wmem_max`).
    #[arg(long, env = "FLASHSTOCK_UDP_BUFFER_BYTES")]
    pub udp_buffer_bytes: Option<usize>,
    /// A PEM certificate chain to serve instead of the generated self-signed one.
    #[arg(long, env = "FLASHSTOCK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    #[arg(long, env = "FLASHSTOCK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A tokens file (`admin = "..."`, `service = "..."`, `consumer = "..."` lines) instead of
    /// the generated `<data dir>/tokens.toml`.
    #[arg(long, env = "FLASHSTOCK_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// A PEM CA whose client certificates grant the admin role (mutual TLS).
    #[arg(long, env = "FLASHSTOCK_CLIENT_CA_ADMIN")]
    pub client_ca_admin: Option<PathBuf>,
    /// A PEM CA whose client certificates grant the service role.
    #[arg(long, env = "FLASHSTOCK_CLIENT_CA_SERVICE")]
    pub client_ca_service: Option<PathBuf>,
    /// A PEM CA whose client certificates grant the consumer role.
    #[arg(long, env = "FLASHSTOCK_CLIENT_CA_CONSUMER")]
    pub client_ca_consumer: Option<PathBuf>,
}

impl Settings {
    /// Every setting's default, read from the structs that use them (`RuntimeConfig`,
    /// `NetLimits`, `TransportLimits`): the one place defaults are written is those structs'
    /// `Default`; the daemon, `--help`'s reference in `docs/configuration.md`, and the tests
    /// all read them from here. Settings with no default (files to read instead of the
    /// generated ones) are `None`.
    pub fn defaults() -> Settings {
        let runtime = RuntimeConfig::default();
        let (net, transport) = (NetLimits::default(), TransportLimits::default());
        let http = crate::http::HttpApiLimits::default();
        Settings {
            listen: Some(LISTEN_DEFAULT.parse().expect("a valid address")),
            metrics_listen: Some(METRICS_LISTEN_DEFAULT.to_owned()),
            http_listen: Some(String::new()),
            etcd: Some(String::new()),
            cluster_prefix: Some(flashstock_cluster_etcd::keys::CLUSTER_PREFIX_DEFAULT.to_owned()),
            server_id: Some(String::new()),
            advertise: Some(String::new()),
            advertise_name: Some("localhost".to_owned()),
            http_connections_max: Some(http.connections_max),
            http_body_bytes_max: Some(http.body_bytes_max),
            http_request_timeout_ms: Some(http.request_timeout_ms),
            data_dir: Some(PathBuf::from(DATA_DIR_DEFAULT)),
            disk_free_min_bytes: Some(crate::disk::DISK_FREE_MIN_BYTES_DEFAULT),
            shards: Some(runtime.shard_count),
            snapshot_every_records: Some(runtime.snapshot_every_records),
            snapshot_every_ms: Some(runtime.snapshot_every_ms),
            snapshot_log_ratio: Some(runtime.snapshot_log_ratio),
            wal_cache_mb: Some(runtime.wal_cache_bytes >> 20),
            inbox_capacity: Some(runtime.inbox_capacity),
            batch_jobs_max: Some(runtime.batch_jobs_max),
            consumer_retention_records_max: Some(runtime.consumer_retention_records_max),
            slow_step_ms: Some(runtime.slow_step_ms),
            wal_syncs_in_flight_max: Some(runtime.syncs_in_flight_max),
            io_threads: Some(io_threads_default()),
            stream_window_events_max: Some(net.stream_window_events_max),
            frame_bytes_max: Some(net.frame_bytes_max),
            connections_max: Some(net.connections_max),
            connections_per_address_max: Some(net.connections_per_address_max),
            in_flight_max: Some(net.in_flight_max),
            stream_receive_window_bytes: Some(transport.stream_receive_window_bytes),
            connection_receive_window_bytes: Some(net.connection_receive_window_bytes),
            streams_max: Some(net.streams_max),
            hello_timeout_ms: Some(net.hello_timeout_ms),
            idle_timeout_ms: Some(transport.idle_timeout_ms),
            udp_buffer_bytes: Some(net::UDP_BUFFER_BYTES_DEFAULT),
            tls_cert: None,
            tls_key: None,
            tokens_file: None,
            client_ca_admin: None,
            client_ca_service: None,
            client_ca_consumer: None,
        }
    }

    /// The settings reference as a Markdown table (key, flag, environment, default,
    /// meaning), read off the settings struct itself and [`Settings::defaults`], so that the
    /// documentation cannot drift from the code. `docs/configuration.md` holds it; a test
    /// fails when it differs.
    pub fn reference() -> String {
        let command = <Settings as clap::Args>::augment_args(clap::Command::new("flashstockd"));
        let defaults = toml::Table::try_from(Settings::defaults()).expect("settings serialise");
        let mut out = String::from("| TOML key | flag | environment | default | meaning |\n");
        out.push_str("| --- | --- | --- | --- | --- |\n");
        for arg in command.get_arguments() {
            let key = arg.get_id().as_str();
            let default = match (key, defaults.get(key)) {
                // Machine-dependent: written as what it is, not as this machine's value.
                ("shards", _) => "the machine's cores, at most 64".to_owned(),
                ("io_threads", _) => "the machine's cores".to_owned(),
                (_, Some(toml::Value::String(text))) if text.is_empty() => "empty (off)".to_owned(),
                (_, Some(toml::Value::String(text))) => format!("`{text}`"),
                (_, Some(toml::Value::Integer(n))) => thousands(*n),
                (_, Some(value)) => format!("{value:?}"),
                (_, None) => "none (generated or off)".to_owned(),
            };
            let long = arg.get_long().map_or(String::new(), |long| format!("`--{long}`"));
            let env =
                arg.get_env().map_or(String::new(), |env| format!("`{}`", env.to_string_lossy()));
            let help = arg.get_help().map_or(String::new(), |help| help.to_string());
            let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
            out.push_str(&format!("| `{key}` | {long} | {env} | {default} | {help} |\n"));
        }
        out
    }

    /// Reads a TOML settings file; unknown keys are an error, not silently ignored.
    pub fn from_file(path: &Path) -> Result<Settings, ServerError> {
        let error = |detail: String| ServerError::Config { path: path.to_path_buf(), detail };
        let text = std::fs::read_to_string(path).map_err(|err| error(err.to_string()))?;
        toml::from_str(&text).map_err(|err| error(err.to_string()))
    }

    /// Refuses any numeric setting out of its range, naming it, before anything starts.
    pub fn validate(&self) -> Result<(), ServerError> {
        use flashstock_runtime::config::BATCH_JOBS_LIMIT;
        // A Hello with a token must fit in a frame; 64 MiB is far past any batch's need.
        const FRAME_BYTES: std::ops::RangeInclusive<u64> = 4096..=64 << 20;
        // Flow-control windows: below 64 KiB every frame crawls a packet at a time.
        let window = 64 << 10..=u64::from(u32::MAX);
        let ranges: [(&'static str, Option<u64>, std::ops::RangeInclusive<u64>); 25] = [
            ("http_connections_max", self.http_connections_max.map(|n| n as u64), 1..=1 << 20),
            // Below 1 KiB a cart does not fit; above 1 MiB is no API call's need.
            ("http_body_bytes_max", self.http_body_bytes_max.map(|n| n as u64), 1 << 10..=1 << 20),
            ("http_request_timeout_ms", self.http_request_timeout_ms, 1..=600_000),
            ("shards", self.shards.map(u64::from), 1..=u64::from(ShardMap::SHARDS_MAX)),
            ("snapshot_every_records", self.snapshot_every_records, 1..=u64::MAX),
            ("snapshot_every_ms", self.snapshot_every_ms, 1..=u64::MAX),
            ("snapshot_log_ratio", self.snapshot_log_ratio, 1..=1_000),
            ("wal_cache_mb", self.wal_cache_mb, 1..=1 << 20),
            ("inbox_capacity", self.inbox_capacity.map(|n| n as u64), 1..=1 << 24),
            ("batch_jobs_max", self.batch_jobs_max.map(|n| n as u64), 1..=BATCH_JOBS_LIMIT as u64),
            ("consumer_retention_records_max", self.consumer_retention_records_max, 1..=u64::MAX),
            ("stream_window_events_max", self.stream_window_events_max.map(u64::from), 1..=1 << 24),
            ("frame_bytes_max", self.frame_bytes_max.map(u64::from), FRAME_BYTES),
            ("connections_max", self.connections_max.map(|n| n as u64), 1..=1 << 20),
            (
                "connections_per_address_max",
                self.connections_per_address_max.map(|n| n as u64),
                1..=1 << 20,
            ),
            ("in_flight_max", self.in_flight_max.map(u64::from), 1..=1 << 24),
            ("streams_max", self.streams_max.map(u64::from), 1..=1 << 16),
            // QUIC carries the idle timeout as a varint of milliseconds.
            ("idle_timeout_ms", self.idle_timeout_ms, 1..=(1 << 62) - 1),
            ("udp_buffer_bytes", self.udp_buffer_bytes.map(|n| n as u64), 64 << 10..=1 << 30),
            ("slow_step_ms", self.slow_step_ms, 0..=600_000),
            ("io_threads", self.io_threads.map(|n| n as u64), 1..=1024),
            (
                "wal_syncs_in_flight_max",
                self.wal_syncs_in_flight_max.map(|n| n as u64),
                1..=flashstock_runtime::config::SYNCS_IN_FLIGHT_LIMIT as u64,
            ),
            ("hello_timeout_ms", self.hello_timeout_ms, 1..=600_000),
            (
                "stream_receive_window_bytes",
                self.stream_receive_window_bytes.map(u64::from),
                window.clone(),
            ),
            (
                "connection_receive_window_bytes",
                self.connection_receive_window_bytes.map(u64::from),
                window,
            ),
        ];
        self.metrics_addr()?;
        self.http_addr()?;
        for (name, value, range) in ranges {
            match value {
                Some(value) if !range.contains(&value) => {
                    let (low, high) = (range.start(), range.end());
                    let detail = format!("must be in {low}..={high}");
                    return Err(ServerError::Setting { name, value: value.to_string(), detail });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Where the metrics listener listens; `None` when it is off.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ServerError> {
        // Unset means off here; `run` applies the default (METRICS_LISTEN_DEFAULT) first.
        let text = self.metrics_listen.as_deref().unwrap_or_default().trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| ServerError::Setting {
            name: "metrics_listen",
            value: text.to_owned(),
            detail: "must be an address such as 127.0.0.1:9464, or empty for off".to_owned(),
        })
    }

    /// Where the HTTP API listens; `None` when it is off (unset or empty).
    pub fn http_addr(&self) -> Result<Option<SocketAddr>, ServerError> {
        let text = self.http_listen.as_deref().unwrap_or_default().trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| ServerError::Setting {
            name: "http_listen",
            value: text.to_owned(),
            detail: "must be an address such as 127.0.0.1:7480, or empty for off".to_owned(),
        })
    }

    /// The cluster to join, if `etcd` is set: its etcd, this server's id and member entry.
    fn cluster(
        &self,
        bound: SocketAddr,
        http: Option<SocketAddr>,
    ) -> Result<Option<Joining>, ServerError> {
        let setting = |name, value: &str, detail: &str| ServerError::Setting {
            name,
            value: value.to_owned(),
            detail: detail.to_owned(),
        };
        let prefix = self.cluster_prefix.as_deref().expect("a default");
        let urls = self.etcd.as_deref().unwrap_or_default();
        let Some(etcd) = flashstock_cluster_etcd::EtcdConfig::from_urls(urls, prefix) else {
            return Ok(None);
        };
        let advertise = match self.advertise.as_deref().unwrap_or_default().trim() {
            "" if bound.ip().is_unspecified() => {
                return Err(setting(
                    "advertise",
                    "",
                    "must be set when listening on an unspecified address",
                ))
            }
            "" => bound,
            text => text.parse().map_err(|_| {
                setting("advertise", text, "must be an address such as 10.0.0.2:7400")
            })?,
        };
        let id = match self.server_id.as_deref().unwrap_or_default().trim() {
            "" => advertise.to_string(),
            id if id.len() > flashstock_cluster::map::SERVER_ID_BYTES_MAX => {
                return Err(setting("server_id", id, "must be at most 64 bytes"))
            }
            id => id.to_owned(),
        };
        let server_name = self.advertise_name.clone().expect("a default");
        let shards = self.shards.expect("a default");
        let member = flashstock_cluster::Member { quic: advertise, server_name, http, shards };
        Ok(Some(Joining { etcd, server: flashstock_cluster::ServerId(id), member }))
    }

    /// The HTTP API's limits from complete settings (defaults applied).
    fn http_limits(&self) -> crate::http::HttpApiLimits {
        let given = "a default";
        crate::http::HttpApiLimits {
            connections_max: self.http_connections_max.expect(given),
            body_bytes_max: self.http_body_bytes_max.expect(given),
            request_timeout_ms: self.http_request_timeout_ms.expect(given),
            ..crate::http::HttpApiLimits::default()
        }
    }

    /// `self`, with every setting `over` has taking its place. Generic over the fields (a
    /// JSON merge of the two, `null` meaning unset), so a new setting needs no line here.
    pub fn overridden_by(self, over: Settings) -> Settings {
        let as_object = |settings: Settings| match serde_json::to_value(settings) {
            Ok(serde_json::Value::Object(fields)) => fields,
            other => unreachable!("settings serialise to an object, not {other:?}"),
        };
        let mut merged = as_object(self);
        for (name, value) in as_object(over) {
            if !value.is_null() {
                merged.insert(name, value);
            }
        }
        serde_json::from_value(serde_json::Value::Object(merged))
            .expect("merged settings are settings")
    }
}

/// `1048576` as `1,048,576`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// Where a started daemon can be reached, for the binary to print and tests to read.
#[derive(Clone, Debug)]
pub struct Listening {
    /// The QUIC address.
    pub listen: SocketAddr,
    /// The certificate clients trust.
    pub cert: PathBuf,
    /// The tokens file.
    pub tokens: PathBuf,
    /// The metrics and health listener's address, if on.
    pub metrics: Option<SocketAddr>,
    /// The HTTP API's address, if on.
    pub http: Option<SocketAddr>,
}

/// What `run` did, for the binary to report.
#[derive(Clone, Debug)]
pub struct Served {
    /// The address it listened on.
    pub listen: SocketAddr,
}

/// The metrics and health listener, while the daemon runs.
struct Observing {
    health: Arc<flashstock_observe::Health>,
    listening: Option<flashstock_observe::Listening>,
}

impl Observing {
    /// Installs the recorder and starts the listener, when `metrics_listen` is set: before
    /// recovery, so that `/livez` answers and `/readyz` says "recovering" meanwhile.
    async fn start(settings: &Settings) -> Result<Observing, ServerError> {
        let health = flashstock_observe::Health::new();
        health.set("recovery", Err("recovering".into()));
        health.set("quic", Err("not listening yet".into()));
        health.set("shutdown", Ok(()));
        let Some(addr) = settings.metrics_addr()? else {
            return Ok(Observing { health, listening: None });
        };
        let observe = |err: flashstock_observe::ObserveError| ServerError::Observe(err.to_string());
        let listening = flashstock_observe::start(addr, health.clone()).await.map_err(observe)?;
        crate::metrics::describe();
        flashstock_observe::build_info("flashstockd", env!("CARGO_PKG_VERSION"));
        tracing::info!(metrics = %listening.addr, "serving /metrics, /livez, /readyz");
        Ok(Observing { health, listening: Some(listening) })
    }

    fn addr(&self) -> Option<SocketAddr> {
        self.listening.as_ref().map(|listening| listening.addr)
    }

    /// Samples the gauges that are read off state (connections, consumers' positions and
    /// lag, free disk), every second, until the listener stops.
    fn sample(
        &self,
        handle: flashstock_runtime::Handle,
        stats: Arc<net::NetStats>,
        disk: Arc<crate::disk::DiskWatch>,
    ) {
        let Some(listening) = &self.listening else { return };
        let events = handle.events().clone();
        let stopped = listening.stopped();
        tokio::spawn(async move {
            tokio::pin!(stopped);
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    () = &mut stopped => return,
                }
                crate::metrics::sample_net(&stats);
                flashstock_runtime::metrics::sample_consumers(&events);
                // Its verdict is the `disk` check's; here it keeps the gauge and the log current.
                let _ = disk.check();
            }
        });
    }
}

/// Runs the daemon until `shutdown` completes. `on_listening` is told where it can be reached
/// once the server accepts connections. Each message on `reloads` (the binary sends one per
/// SIGHUP) re-reads the tokens file and the TLS certificate and key; see [`Reload`].
pub async fn run(
    settings: Settings,
    on_listening: impl FnOnce(&Listening),
    reloads: tokio::sync::mpsc::Receiver<()>,
    shutdown: impl Future<Output = ()>,
) -> Result<Served, ServerError> {
    // Defaults applied once, here; everything below reads complete settings.
    let settings = Settings::defaults().overridden_by(settings);
    settings.validate()?;
    let observing = Observing::start(&settings).await?;
    let data_dir = settings.data_dir.clone().expect("a default");
    net::secrets::ensure_private_dir(&data_dir)?;
    let runtime = {
        let (data_dir, config) = (data_dir.clone(), runtime_config(&settings));
        let open = move || Runtime::open(&data_dir, config, Arc::new(SystemClock));
        tokio::task::spawn_blocking(open).await.expect("recovery does not panic")?
    };
    observing.health.set("recovery", Ok(()));
    let failure = runtime.handle().clone();
    observing.health.probe(
        "wal",
        Arc::new(move || match failure.wal_failure() {
            None => Ok(()),
            Some(reason) => Err(format!("the write-ahead log failed: {reason}")),
        }),
    );
    let free_min_bytes = settings.disk_free_min_bytes.expect("a default");
    let disk = Arc::new(crate::disk::DiskWatch::new(data_dir.clone(), free_min_bytes));
    let watch = disk.clone();
    observing.health.probe("disk", Arc::new(move || watch.check()));
    let (tls, auth, tokens_path, client_certs) = credentials(&settings, &data_dir)?;
    let (transport, limits) = net_limits(&settings);
    let listen = settings.listen.expect("a default");
    let server_config = net::server_config(&tls, transport, client_certs.as_deref())?;
    let udp_buffer_bytes = settings.udp_buffer_bytes.expect("a default");
    let endpoint_config = net::secrets::endpoint_config(&data_dir)?;
    let endpoint = net::server_endpoint(listen, endpoint_config, server_config, udp_buffer_bytes)?;
    let bound =
        endpoint.local_addr().map_err(|source| ServerError::Bind { addr: listen, source })?;
    tracing::info!(
        listen = %bound,
        data_dir = %data_dir.display(),
        cert = %tls.cert_path.display(),
        tokens = %tokens_path.display(),
        "flashstockd serving"
    );
    observing.health.set("quic", Ok(()));
    let auth = SharedAuth::from(auth);
    let rates = Arc::new(net::stored_rate_gate(&runtime.handle()).await);
    let (http_stop, http_stopping) = tokio::sync::watch::channel(false);
    // Bound before joining, so that the member entry names the port bound (port 0 included).
    let http_listener = match settings.http_addr()? {
        Some(addr) => Some(crate::http::bind(addr).await?),
        None => None,
    };
    let http_addr = http_listener.as_ref().and_then(|listener| listener.local_addr().ok());
    let joined = match settings.cluster(bound, http_addr)? {
        Some(joining) => Some(joining.join(runtime.handle()).await?),
        None => None,
    };
    let ownership = joined.as_ref().map(|joined| joined.ownership.clone());
    let gates = net::Gates { rates, ownership };
    let http = serve_http(http_listener, &settings, &runtime, (&auth, &gates), http_stopping)?;
    let listening_tokens = tokens_path;
    on_listening(&Listening {
        listen: bound,
        cert: tls.cert_path.clone(),
        tokens: listening_tokens.clone(),
        metrics: observing.addr(),
        http: http.as_ref().map(|(addr, _)| *addr),
    });
    let stats = Arc::new(net::NetStats::default());
    observing.sample(runtime.handle().clone(), stats.clone(), disk);
    let reload = Reload {
        auth: auth.clone(),
        endpoint: endpoint.clone(),
        tls: tls.clone(),
        transport,
        tokens_path: listening_tokens.clone(),
        client_certs,
    };
    tokio::spawn(reload.serve(reloads));
    let health = observing.health.clone();
    let stop_http = http_stop.clone();
    let shutdown = async move {
        shutdown.await;
        health.set("shutdown", Err("shutting down".into()));
        let _ = stop_http.send(true);
    };
    let stopped =
        net::serve(endpoint, runtime.handle(), auth, gates, limits, stats, shutdown).await;
    if let Some(joined) = joined {
        // Clients stop dialling this server at once, not when its lease lapses.
        joined.settling.abort();
        joined.membership.leave().await;
    }
    observing.health.set("shutdown", Err("shutting down".into()));
    // The HTTP API drains too (it stops with the QUIC listener, or after a log failure).
    let _ = http_stop.send(true);
    if let Some((_, serving)) = http {
        let _ = serving.await;
    }
    // Every session has drained: flush the log and stop the shards.
    runtime.shutdown();
    match stopped {
        net::Stopped::Shutdown => {
            tracing::info!("flashstockd stopped; the log is flushed");
            Ok(Served { listen: bound })
        }
        // Exit non-zero, so that a supervisor restarts the server into recovery.
        net::Stopped::WalFailed { reason } => Err(RuntimeError::WalFailed { reason }.into()),
    }
}

/// What joining a cluster takes, from the settings.
struct Joining {
    etcd: flashstock_cluster_etcd::EtcdConfig,
    server: flashstock_cluster::ServerId,
    member: flashstock_cluster::Member,
}

/// A server of a cluster: following the map, and registered as a member while it serves.
struct Joined {
    ownership: Arc<net::Ownership>,
    membership: flashstock_cluster_etcd::Membership,
    _watch: flashstock_cluster_etcd::ClusterWatch,
    /// Thaws or releases this server's frozen slot ranges once their move is over.
    settling: tokio::task::JoinHandle<()>,
}

impl Joining {
    /// Reads the map (this server answers `Moved` for every slot it does not own from its
    /// first request on), then registers the member entry clients dial.
    async fn join(self, handle: flashstock_runtime::Handle) -> Result<Joined, ServerError> {
        let watch = flashstock_cluster_etcd::ClusterWatch::start(self.etcd.clone()).await?;
        if let Some((other, shards)) =
            watch.view().other_shard_count(&self.server, self.member.shards)
        {
            let detail = format!(
                "server {:?} of the cluster runs {shards} shards; every server must run the same count (reservation ids name their shard)",
                other.0
            );
            return Err(ServerError::Setting {
                name: "shards",
                value: self.member.shards.to_string(),
                detail,
            });
        }
        let ownership = Arc::new(net::Ownership::follow(self.server.clone(), watch.subscribe()));
        let settle =
            crate::moves::settle(handle, self.etcd.clone(), self.server.clone(), watch.subscribe());
        let settling = tokio::spawn(settle);
        tracing::info!(server_id = %self.server.0, prefix = %self.etcd.prefix, quic = %self.member.quic, "joining the cluster");
        let membership =
            flashstock_cluster_etcd::Membership::register(self.etcd, self.server, self.member)
                .await?;
        Ok(Joined { ownership, membership, _watch: watch, settling })
    }
}

/// The HTTP API on `listener` (bound when `http_listen` is set: a taken port fails the
/// start), served on a task of its own until `stopping` turns true.
fn serve_http(
    listener: Option<tokio::net::TcpListener>,
    settings: &Settings,
    runtime: &Runtime,
    (auth, gates): (&SharedAuth, &net::Gates),
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>, ServerError> {
    let Some(listener) = listener else { return Ok(None) };
    let addr = settings.http_addr()?.expect("bound because it is set");
    let bound = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
    let limits = settings.http_limits();
    let api = crate::http::Api::new(runtime.handle(), auth.clone(), gates.clone(), limits)?;
    let shutdown = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    tracing::info!(http = %bound, "serving the HTTP API; its document is /openapi.json");
    let serving = tokio::spawn(crate::http::serve(listener, Arc::new(api), shutdown));
    Ok(Some((bound, serving)))
}

/// What a reload re-reads, and where it puts the result. A file that fails to read or parse
/// keeps the credentials in force and says why in the log; connections already open are
/// never dropped (they authenticated once, under the old set).
struct Reload {
    auth: SharedAuth,
    endpoint: quinn::Endpoint,
    tls: TlsFiles,
    transport: TransportLimits,
    tokens_path: PathBuf,
    client_certs: Option<Arc<ClientCertRoles>>,
}

impl Reload {
    async fn serve(self, mut reloads: tokio::sync::mpsc::Receiver<()>) {
        while reloads.recv().await.is_some() {
            // Two small files: read in place, as the handshake reads them.
            let result = match self.reload() {
                Ok(()) => {
                    tracing::info!(tokens = %self.tokens_path.display(), cert = %self.tls.cert_path.display(), "credentials reloaded");
                    "ok"
                }
                Err(err) => {
                    tracing::error!(%err, "reload failed; the credentials in force are kept");
                    "failed"
                }
            };
            metrics::counter!(crate::metrics::RELOADS_TOTAL, "result" => result).increment(1);
        }
    }

    /// Reads both files first and puts them in force only if both are good.
    fn reload(&self) -> Result<(), ServerError> {
        let mut auth = Authenticator::new(net::auth::read_tokens_file(&self.tokens_path)?);
        if let Some(roles) = &self.client_certs {
            auth = auth.with_client_certs(roles.clone());
        }
        if !auth.admits_anyone() {
            let detail = "no tokens and no client CA: nobody could connect".to_owned();
            return Err(ServerError::Config { path: self.tokens_path.clone(), detail });
        }
        let server_config =
            net::server_config(&self.tls, self.transport, self.client_certs.as_deref())?;
        self.endpoint.set_server_config(Some(server_config));
        self.auth.replace(auth);
        Ok(())
    }
}

/// Default of `io_threads`: one per core, as tokio's own default. Single callers, the case
/// furthest from its targets, do better with two than with one on 2 cores.
pub fn io_threads_default() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// The runtime's knobs from complete settings (defaults applied).
fn runtime_config(settings: &Settings) -> RuntimeConfig {
    let given = "a default";
    RuntimeConfig {
        shard_count: settings.shards.expect(given),
        snapshot_every_records: settings.snapshot_every_records.expect(given),
        snapshot_every_ms: settings.snapshot_every_ms.expect(given),
        snapshot_log_ratio: settings.snapshot_log_ratio.expect(given),
        wal_cache_bytes: settings.wal_cache_mb.expect(given) << 20,
        inbox_capacity: settings.inbox_capacity.expect(given),
        batch_jobs_max: settings.batch_jobs_max.expect(given),
        consumer_retention_records_max: settings.consumer_retention_records_max.expect(given),
        slow_step_ms: settings.slow_step_ms.expect(given),
        syncs_in_flight_max: settings.wal_syncs_in_flight_max.expect(given),
        ..RuntimeConfig::default()
    }
}

type Credentials = (TlsFiles, Authenticator, PathBuf, Option<Arc<ClientCertRoles>>);

/// The TLS files, the tokens (and where they are read from) and the client CAs.
fn credentials(settings: &Settings, data_dir: &Path) -> Result<Credentials, ServerError> {
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert_path), Some(key_path)) => {
            TlsFiles { cert_path: cert_path.clone(), key_path: key_path.clone() }
        }
        (None, None) => net::ensure_self_signed(data_dir)?,
        _ => {
            let detail = "tls_cert and tls_key go together".to_owned();
            return Err(ServerError::Config { path: data_dir.to_path_buf(), detail });
        }
    };
    let (mut auth, tokens_path) = match &settings.tokens_file {
        Some(path) => (Authenticator::new(net::auth::read_tokens_file(path)?), path.clone()),
        None => Authenticator::ensure_default(data_dir)?,
    };
    let cas: Vec<(Role, PathBuf)> = [
        (Role::Admin, &settings.client_ca_admin),
        (Role::Service, &settings.client_ca_service),
        (Role::Consumer, &settings.client_ca_consumer),
    ]
    .into_iter()
    .filter_map(|(role, path)| path.clone().map(|path| (role, path)))
    .collect();
    let client_certs =
        if cas.is_empty() { None } else { Some(Arc::new(ClientCertRoles::load(&cas)?)) };
    if let Some(roles) = &client_certs {
        auth = auth.with_client_certs(roles.clone());
    }
    Ok((tls, auth, tokens_path, client_certs))
}

/// The network layer's limits from complete settings (defaults applied).
fn net_limits(settings: &Settings) -> (TransportLimits, NetLimits) {
    let given = "a default";
    let transport = TransportLimits {
        idle_timeout_ms: settings.idle_timeout_ms.expect(given),
        stream_receive_window_bytes: settings.stream_receive_window_bytes.expect(given),
    };
    let limits = NetLimits {
        frame_bytes_max: settings.frame_bytes_max.expect(given),
        connections_max: settings.connections_max.expect(given),
        connections_per_address_max: settings.connections_per_address_max.expect(given),
        in_flight_max: settings.in_flight_max.expect(given),
        streams_max: settings.streams_max.expect(given),
        connection_receive_window_bytes: settings.connection_receive_window_bytes.expect(given),
        hello_timeout_ms: settings.hello_timeout_ms.expect(given),
        stream_window_events_max: settings.stream_window_events_max.expect(given),
        ..NetLimits::default()
    };
    (transport, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_win_only_where_they_set_something() {
        let file = Settings {
            shards: Some(4),
            in_flight_max: Some(10),
            tokens_file: Some("file.toml".into()),
            ..Settings::default()
        };
        let flags = Settings {
            in_flight_max: Some(20),
            snapshot_every_records: Some(u64::MAX),
            ..Settings::default()
        };
        let layered = Settings::defaults().overridden_by(file).overridden_by(flags);
        assert_eq!(layered.shards, Some(4), "the file's, no flag given");
        assert_eq!(layered.in_flight_max, Some(20), "the flag's over the file's");
        assert_eq!(layered.snapshot_every_records, Some(u64::MAX), "the full u64 range");
        assert_eq!(layered.tokens_file, Some("file.toml".into()));
        let defaults = Settings::defaults();
        assert_eq!(layered.frame_bytes_max, defaults.frame_bytes_max, "untouched: the default");
        assert_eq!(layered.listen, defaults.listen);
    }
}
