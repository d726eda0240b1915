//! flashstock's load generator: rehearses a flash sale against flashstock or against the
//! Redis Lua baseline, proves the result with an audit, and reports percentiles, plots and
//! JSON.
//!
//! Map of the modules:
//! - [`scenario`]: flash-sale, zipf and checkout workloads, and the seeded generator.
//! - [`target`]: the [`target::Target`]s: flashstock over QUIC ([`target::FlashstockTarget`]).
//! - [`redis_target`]: the Redis baseline: Lua check-and-decrement, per-buyer limits in a
//!   hash, holds in a sorted set swept by the generator.
//! - [`run`]: closed and open loop (with coordinated-omission correction), warm-up, progress.
//! - [`audit`]: no oversell, conservation, and the server's counts against what was
//!   acknowledged.
//! - [`report`]: the summary table, `.hgrm`, SVG plots and the JSON result.
//! - [`execute`]: one whole run: connect, set up, drive, audit.
//! - [`chaos`]: the chaos rehearsal: a run while the server and the order writer are killed
//!   and restarted, with restart figures and the audit, order rows included.

pub mod audit;
pub mod chaos;
pub mod http_target;
pub mod redis_target;
pub mod report;
pub mod run;
pub mod scenario;
pub mod target;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flashstock_client::ClientTls;

use crate::audit::Audit;
use crate::redis_target::RedisTarget;
use crate::run::{RunConfig, RunResult};
use crate::scenario::{Scenario, Workload};
pub use crate::target::CallMode;
use crate::target::{FlashstockTarget, LoadError, Target};

/// Where to send the load.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// A flashstock server.
    Flashstock {
        /// Its address.
        addr: SocketAddr,
        /// The name on its certificate.
        server_name: String,
        /// Which certificate to trust.
        tls: ClientTls,
        /// An admin token (the run sets up its SKUs).
        admin_token: String,
        /// A service token (reserve, confirm, cancel).
        service_token: String,
        /// QUIC connections to spread batches over.
        connections: usize,
        /// How requests reach the client library.
        calls: CallMode,
        /// The server's HTTP API, for [`CallMode::Http`].
        http_addr: SocketAddr,
        /// A cluster to route through instead of the one server at `addr`.
        cluster: Option<Box<flashstock_client::EtcdConfig>>,
    },
    /// A Redis server, e.g. `redis://127.0.0.1:6379`.
    Redis {
        /// Its URL.
        url: String,
        /// Connections: one per caller in `--mode client` (as redis-benchmark's clients, no
        /// pipelining), else one that pipelines every batch.
        connections: usize,
    },
}

/// One whole run's settings.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where the load goes.
    pub target: TargetSpec,
    /// What the buyers do.
    pub scenario: Scenario,
    /// How the load is driven.
    pub run: RunConfig,
    /// How long holds last.
    pub ttl_ms: u64,
    /// Order databases (the order writer's URLs) whose rows must equal the run's confirms.
    pub orders_db: Vec<String>,
}

/// A finished run.
#[derive(Debug)]
pub struct Finished {
    /// `flashstock` or `redis`.
    pub target: &'static str,
    /// What the target is and how it persists.
    pub target_detail: String,
    /// The figures.
    pub result: RunResult,
    /// The counts the audit read back, per SKU of the run.
    pub counts: Vec<target::SkuCounts>,
    /// Whether holds may have expired before the counts were read.
    pub expiry_possible: bool,
    /// The audit.
    pub audit: Audit,
}

/// The order rows of the run's SKUs must equal the units sold (one unit per confirm, as every
/// scenario reserves one unit). The order writer lags the stream a little: wait up to 30 s for
/// the rows to arrive, never accepting more rows than sales.
async fn orders_check(urls: &[String], skus: &[u64], sold: u64) -> Result<audit::Check, LoadError> {
    let store = flashstock_order_writer::OrderStore::connect(urls)
        .await
        .map_err(|err| LoadError::Setup(format!("order database: {err}")))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = store
            .count_for_skus("confirmed", skus)
            .await
            .map_err(|err| LoadError::Setup(format!("counting orders: {err}")))?;
        if rows >= sold || std::time::Instant::now() >= deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    store.close().await;
    let passed = rows == sold;
    let detail =
        if passed { String::new() } else { format!("{rows} order rows for {sold} units sold") };
    Ok(audit::Check { name: "orders_equal_confirms", passed, detail })
}

/// Connects, sets up the run's own SKUs, drives the load, reads the counts back and audits.
pub async fn execute(options: LoadOptions) -> Result<Finished, LoadError> {
    // A run id from the clock: the run's SKUs, request ids and Redis keys are its own.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 >> 10);
    let target = match &options.target {
        TargetSpec::Flashstock {
            addr,
            server_name,
            tls,
            admin_token,
            service_token,
            connections,
            calls,
            http_addr,
            cluster,
        } => {
            let target = FlashstockTarget::connect(
                (*addr, server_name, tls, cluster.as_deref()),
                (admin_token, service_token),
                *connections,
                *calls,
            )
            .await?;
            Target::Flashstock(match calls {
                CallMode::Http => target.with_http(*http_addr, service_token),
                _ => target,
            })
        }
        TargetSpec::Redis { url, connections } => {
            Target::Redis(RedisTarget::connect(url, run_id, *connections).await?)
        }
    };
    let sku_base = (run_id & 0xff_ffff) << 24;
    let skus = options.scenario.skus(sku_base);
    target.setup(&skus).await?;
    let target = Arc::new(target);
    let workload = Arc::new(Workload::new(options.scenario.clone(), sku_base, options.ttl_ms));
    let started = std::time::Instant::now();
    let result = run::run(target.clone(), workload, options.run.clone()).await;
    let ids: Vec<u64> = skus.iter().map(|s| s.sku).collect();
    let counts = target.counts(&ids).await?;
    // Holds may have lapsed when the scenario abandons some, or when the run outlived them.
    let expiry_possible = options.scenario.settles()
        || started.elapsed() + Duration::from_millis(100) >= Duration::from_millis(options.ttl_ms);
    let mut audit = audit::audit(&counts, &result.acked, expiry_possible);
    if !options.orders_db.is_empty() {
        audit.add(orders_check(&options.orders_db, &ids, audit.totals.sold).await?);
    }
    Ok(Finished {
        target: target.kind(),
        target_detail: target.describe().await,
        result,
        counts,
        expiry_possible,
        audit,
    })
}
