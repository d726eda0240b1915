//! `flashstock-demo`: a flash sale through the real runtime and sled log, with an audit and a
//! restart from the log. The main job until the network server exists.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use flashstock_server::demo::{self, DemoOptions};
use flashstock_server::RuntimeConfig;

/// Runs a demo flash sale and prints its outcome and audit.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where the write-ahead log lives; kept between runs (each run sells a new SKU).
    #[arg(long, default_value = "flashstock-data")]
    data_dir: PathBuf,
    /// Shard actors (threads); a data directory keeps the count it was created with.
    #[arg(long, default_value_t = 2)]
    shards: u16,
    /// Units on sale.
    #[arg(long, default_value_t = 10_000)]
    units: u64,
    /// Buyers racing for them, one unit each.
    #[arg(long, default_value_t = 200_000)]
    buyers: u64,
    /// Buyers in flight at once.
    #[arg(long, default_value_t = 1_024)]
    concurrency: usize,
    /// How long a winner's hold lasts, in milliseconds.
    #[arg(long, default_value_t = 600_000)]
    ttl_ms: u64,
    /// Percent of winners who pay; the others cancel.
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u64).range(0..=100))]
    confirm_percent: u64,
}

fn main() -> anyhow::Result<()> {
    flashstock_observe::init_logging("warn", flashstock_observe::LogFormat::Text);
    let args = Args::parse();
    let options = DemoOptions {
        data_dir: args.data_dir,
        runtime: RuntimeConfig { shard_count: args.shards, ..RuntimeConfig::default() },
        units: args.units,
        buyers: args.buyers,
        concurrency: args.concurrency,
        ttl_ms: args.ttl_ms,
        confirm_percent: args.confirm_percent,
    };
    let tokio = tokio::runtime::Runtime::new().context("starting tokio")?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = tokio.block_on(demo::run(options.clone(), shutdown)).context("demo flash sale")?;
    print!("{}", demo::render(&report, &options));
    if !report.failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
