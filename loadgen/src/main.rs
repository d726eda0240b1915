//! `flashstock-loadgen`: the SREs' flash-sale load generator. Parses flags, runs the
//! scenario (or the A/B comparison with Redis), prints the summary, writes the files, and
//! exits 1 when an audit fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use flashstock_client::ServerFiles;
use flashstock_loadgen::chaos::ChaosOptions;
use flashstock_loadgen::report::Report;
use flashstock_loadgen::run::RunConfig;
use flashstock_loadgen::scenario::Scenario;
use flashstock_loadgen::{execute, Finished, LoadOptions, TargetSpec};
use flashstock_protocol::Role;

/// The allocator `flashstockd` runs with: the client's per-call allocations are its hot path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rehearse a flash sale against flashstock (or the Redis Lua baseline), prove it with an
/// audit, and report throughput, outcome counts and latency percentiles.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one scenario against one target.
    Run(RunArgs),
    /// Run the same scenario against flashstock and Redis alternately (A B A B...) and print
    /// the figures side by side with their ratio.
    Compare(CompareArgs),
    /// The chaos rehearsal: start flashstockd and the order writer as child processes, run
    /// the load, SIGKILL and restart the server every --kill-every-s (and the writer every
    /// --kill-writer-every kills), then audit every SKU and the order rows.
    Chaos(ChaosArgs),
}

#[derive(Debug, Args)]
struct ChaosArgs {
    /// Kills of the server.
    #[arg(long, default_value_t = 5)]
    cycles: u32,
    /// Seconds between kills.
    #[arg(long, default_value_t = 4.0)]
    kill_every_s: f64,
    /// Kill the order writer too every this many kills (0: never).
    #[arg(long, default_value_t = 2)]
    kill_writer_every: u32,
    /// Where the server and the writer keep their data and logs (created; reused if there).
    #[arg(long, default_value = "flashstock-chaos")]
    work_dir: PathBuf,
    /// The address the server listens on, the same after every restart.
    #[arg(long, default_value = "127.0.0.1:7411")]
    listen: SocketAddr,
    /// The flashstockd binary [default: beside this one].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The order-writer binary [default: beside this one].
    #[arg(long)]
    writer_bin: Option<PathBuf>,
    /// Write the machine-readable result here (the run's, plus each kill's figures).
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// `flashstock://HOST:PORT` or `redis://HOST:PORT`.
    #[arg(long, default_value = "flashstock://127.0.0.1:7400")]
    target: String,
    #[command(flatten)]
    load: LoadArgs,
    /// Write the machine-readable result here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// The flashstock server.
    #[arg(long, default_value = "flashstock://127.0.0.1:7400")]
    flashstock: String,
    /// The Redis server.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Rounds of A B; the table shows medians.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Switch the Redis server to AOF with `appendfsync everysec` for the comparison (and back
    /// to no AOF after), so both sides persist. Every run's JSON and files go to --out
    /// [default: loadgen-compare/compare-<target>-<round>].
    #[arg(long)]
    aof: bool,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScenarioName {
    /// One hot SKU with --units, --buyers racing, optional --buyer-limit.
    FlashSale,
    /// --skus SKUs picked with Zipf skew --skew.
    Zipf,
    /// Reserve, think --think-ms, confirm with --confirm-probability else cancel; a fraction
    /// --abandon-fraction walk away and let the hold expire.
    Checkout,
    /// Carts of 1 to --cart-lines-max SKUs drawn with Zipf skew --skew over --skus, held whole
    /// or not at all, then settled as in checkout (flashstock only).
    Cart,
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// The scenario.
    #[arg(long, value_enum, default_value = "flash-sale")]
    scenario: ScenarioName,
    /// Units in stock (flash-sale: the hot SKU; zipf and checkout: per SKU).
    #[arg(long, default_value_t = 10_000)]
    units: u64,
    /// flash-sale: distinct buyers, each trying once; the request count unless --duration-s.
    #[arg(long, default_value_t = 1_000_000)]
    buyers: u64,
    /// cart: draw each cart's buyer from this many customers [default: a new buyer per cart].
    /// The server keeps what each buyer bought of each SKU, so an endless population grows it
    /// without end (docs/staying-up.md).
    #[arg(long)]
    cart_buyers: Option<u64>,
    /// flash-sale: the most units one buyer may hold plus buy.
    #[arg(long)]
    buyer_limit: Option<u32>,
    /// flash-sale, flashstock: spread the hot SKU over this many buckets on as many shards
    /// (2 to the server's shard count; docs/hot-skus.md). Redis ignores it.
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=64))]
    hot_sku_buckets: Option<u32>,
    /// zipf, checkout and cart: how many SKUs.
    #[arg(long, default_value_t = 1_000)]
    skus: u64,
    /// zipf and cart: the skew exponent (0 uniform, 1 classic Zipf).
    #[arg(long, default_value_t = 1.0)]
    skew: f64,
    /// cart: the most lines of one cart (1 to 16).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16))]
    cart_lines_max: u8,
    /// checkout and cart: the chance a held reservation is paid.
    #[arg(long, default_value_t = 0.7)]
    confirm_probability: f64,
    /// checkout and cart: the fraction of holds abandoned to expire.
    #[arg(long, default_value_t = 0.1)]
    abandon_fraction: f64,
    /// checkout and cart: milliseconds between reserve and confirm/cancel.
    #[arg(long, default_value_t = 5)]
    think_ms: u64,
    /// How long holds last, in milliseconds.
    #[arg(long, default_value_t = 600_000)]
    ttl_ms: u64,
    /// Batches in flight at once (closed loop), or tasks sharing --rate (open loop).
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Requests per batch: one flashstock frame, or one Redis pipeline of that depth.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// flashstock: `frames` sends each batch as one frame; `client` makes --concurrency
    /// callers each send one request at a time through the client library's automatic
    /// batching, as order services do (--batch is then 1). Redis: `client` gives each caller
    /// a connection of its own and sends one command at a time, as redis-benchmark's clients
    /// without pipelining.
    #[arg(long, value_enum, default_value_t = flashstock_loadgen::CallMode::Frames)]
    mode: flashstock_loadgen::CallMode,
    /// flashstock, `--mode http`: the server's HTTP API (its `http_listen`).
    #[arg(long, default_value = "127.0.0.1:7480")]
    http_addr: SocketAddr,
    /// Open loop: send this many requests/s on schedule; latency counts from the scheduled
    /// time (coordinated-omission correction, as wrk2). Closed loop when absent.
    #[arg(long)]
    rate: Option<u64>,
    /// Run for this many seconds instead of a request count.
    #[arg(long)]
    duration_s: Option<f64>,
    /// Requests to send when no --duration-s is given [default: flash-sale --buyers, else
    /// 100000].
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds at the start left out of the figures.
    #[arg(long, default_value_t = 0.0)]
    warmup_s: f64,
    /// QUIC connections to flashstock.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// The seed of every random choice [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// flashstock: etcd's client URLs (comma-separated) of a cluster to load through the
    /// cluster client (each request to its slot's owner); the target is then
    /// `flashstock://cluster`, and the certificate and tokens must be the servers' shared ones.
    #[arg(long, env = "FLASHSTOCK_ETCD")]
    etcd: Option<String>,
    /// flashstock, with --etcd: the cluster's key prefix.
    #[arg(long, default_value = "/flashstock/default")]
    cluster_prefix: String,
    /// flashstock: the server's data directory, for its certificate and tokens.
    #[arg(long, env = "FLASHSTOCK_DATA_DIR", default_value = "flashstock-data")]
    server_data_dir: PathBuf,
    /// flashstock: the certificate to trust [default: <server-data-dir>/tls/cert.pem].
    #[arg(long)]
    cert: Option<PathBuf>,
    /// flashstock: an admin token [default: from <server-data-dir>/tokens.toml].
    #[arg(long, env = "FLASHSTOCK_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// flashstock: a service token [default: from <server-data-dir>/tokens.toml].
    #[arg(long, env = "FLASHSTOCK_SERVICE_TOKEN", hide_env_values = true)]
    service_token: Option<String>,
    /// flashstock: the name on the server's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Also check that the order writer's database(s) hold one confirmed row per unit sold
    /// (repeat for sharded order databases, in the writer's order).
    #[arg(long = "orders-db")]
    orders_db: Vec<String>,
    /// Write `<out>.hgrm`, `<out>-latency.svg` and `<out>-timeline.svg`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl LoadArgs {
    fn scenario(&self) -> Scenario {
        match self.scenario {
            ScenarioName::FlashSale => Scenario::FlashSale {
                units: self.units,
                buyers: self.buyers,
                buyer_limit: self.buyer_limit,
                buckets: self.hot_sku_buckets,
            },
            ScenarioName::Zipf => {
                Scenario::Zipf { skus: self.skus, units_per_sku: self.units, skew: self.skew }
            }
            ScenarioName::Checkout => Scenario::Checkout {
                skus: self.skus,
                units_per_sku: self.units,
                confirm_probability: self.confirm_probability,
                abandon_fraction: self.abandon_fraction,
                think_ms: self.think_ms,
            },
            ScenarioName::Cart => Scenario::Cart {
                skus: self.skus,
                units_per_sku: self.units,
                skew: self.skew,
                lines_max: usize::from(self.cart_lines_max),
                buyers: self.cart_buyers,
                confirm_probability: self.confirm_probability,
                abandon_fraction: self.abandon_fraction,
                think_ms: self.think_ms,
            },
        }
    }

    fn run_config(&self) -> RunConfig {
        let scenario = self.scenario();
        RunConfig {
            concurrency: self.concurrency.max(1),
            batch: if self.mode == flashstock_loadgen::CallMode::Frames {
                self.batch.max(1)
            } else {
                1
            },
            rate_per_s: self.rate,
            duration: self.duration_s.map(Duration::from_secs_f64),
            requests: self.requests.unwrap_or(scenario.default_requests()),
            warmup: Duration::from_secs_f64(self.warmup_s),
            seed: self.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            }),
            progress: !self.quiet,
        }
    }

    fn options(&self, target: &str) -> anyhow::Result<LoadOptions> {
        Ok(LoadOptions {
            target: self.target(target)?,
            scenario: self.scenario(),
            run: self.run_config(),
            ttl_ms: self.ttl_ms,
            orders_db: if target.starts_with("redis") {
                Vec::new()
            } else {
                self.orders_db.clone()
            },
        })
    }

    fn target(&self, url: &str) -> anyhow::Result<TargetSpec> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            if self.scenario == ScenarioName::Cart {
                bail!("the cart scenario runs against flashstock only (no Redis cart baseline)");
            }
            let connections = match self.mode {
                flashstock_loadgen::CallMode::Client => self.concurrency.max(1),
                flashstock_loadgen::CallMode::Frames => 1,
                flashstock_loadgen::CallMode::Http => bail!("--mode http is for flashstock"),
            };
            return Ok(TargetSpec::Redis { url: url.to_owned(), connections });
        }
        let Some(addr) = url.strip_prefix("flashstock://") else {
            bail!("unknown target {url:?}: use flashstock://HOST:PORT or redis://HOST:PORT");
        };
        let urls = self.etcd.as_deref().unwrap_or_default();
        let cluster =
            flashstock_client::EtcdConfig::from_urls(urls, &self.cluster_prefix).map(Box::new);
        let addr: SocketAddr = match (addr, &cluster) {
            ("cluster", Some(_)) => ([0, 0, 0, 0], 0).into(),
            ("cluster", None) => bail!("flashstock://cluster needs --etcd URL"),
            (addr, _) => addr.parse().with_context(|| format!("target address {addr:?}"))?,
        };
        let files = ServerFiles::new(&self.server_data_dir);
        let tls = files.tls(self.cert.as_deref()).context("reading the server certificate")?;
        let token = |given: &Option<String>, role: Role| {
            let flag = format!("{role:?}").to_lowercase();
            files
                .token(given.as_deref(), role, None)
                .with_context(|| format!("finding a {flag} token (or pass --{flag}-token)"))
        };
        Ok(TargetSpec::Flashstock {
            addr,
            server_name: self.server_name.clone(),
            tls,
            admin_token: token(&self.admin_token, Role::Admin)?,
            service_token: token(&self.service_token, Role::Service)?,
            connections: self.connections.max(1),
            calls: self.mode,
            http_addr: self.http_addr,
            cluster,
        })
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": format!("{:?}", self.scenario()),
            "concurrency": self.concurrency,
            "batch": self.batch,
            "mode": format!("{:?}", self.mode),
            "rate": self.rate,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "warmup_s": self.warmup_s,
            "connections": self.connections,
            "ttl_ms": self.ttl_ms,
            "seed": self.seed,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tokio = tokio::runtime::Runtime::new().context("starting tokio")?;
    let passed = match cli.command {
        Command::Run(args) => tokio.block_on(run(args))?,
        Command::Compare(args) => tokio.block_on(compare(args))?,
        Command::Chaos(args) => tokio.block_on(chaos(args))?,
    };
    if !passed {
        eprintln!("audit FAILED");
        std::process::exit(1);
    }
    Ok(())
}

fn report<'a>(finished: &'a Finished, load: &LoadArgs) -> Report<'a> {
    Report {
        target: finished.target,
        target_detail: &finished.target_detail,
        scenario: load.scenario().name(),
        result: &finished.result,
        audit: &finished.audit,
        settings: load.settings(),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let finished = execute(args.load.options(&args.target)?).await?;
    let report = report(&finished, &args.load);
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    if let Some(prefix) = &args.load.out {
        report.write_files(prefix)?;
    }
    Ok(finished.audit.passed)
}

async fn chaos(args: ChaosArgs) -> anyhow::Result<bool> {
    let beside = |name: &str| -> anyhow::Result<PathBuf> {
        let me = std::env::current_exe().context("locating this binary")?;
        Ok(me.with_file_name(name))
    };
    let server_bin = match args.server_bin.clone() {
        Some(path) => path,
        None => beside("flashstockd")?,
    };
    let writer_bin = match args.writer_bin.clone() {
        Some(path) => path,
        None => beside("order-writer")?,
    };
    let run = args.load.run_config();
    let options = ChaosOptions {
        server_bin,
        writer_bin,
        work_dir: args.work_dir.clone(),
        listen: args.listen,
        cycles: args.cycles,
        kill_every: Duration::from_secs_f64(args.kill_every_s),
        kill_writer_every: args.kill_writer_every,
        scenario: args.load.scenario(),
        run,
        ttl_ms: args.load.ttl_ms,
        connections: args.load.connections.max(1),
    };
    let chaos = flashstock_loadgen::chaos::chaos(options).await?;
    let report = report(&chaos.finished, &args.load);
    println!(
        "{:<6} {:>8} {:>12} {:>16} {:>16}",
        "kill", "writer", "restart ms", "first answer ms", "resubscribed ms"
    );
    let ms = |value: Option<u64>| value.map_or("-".to_owned(), |ms| ms.to_string());
    for (n, cycle) in chaos.cycles.iter().enumerate() {
        let writer = if cycle.writer_killed { "killed" } else { "-" };
        println!(
            "{:<6} {writer:>8} {:>12} {:>16} {:>16}",
            n + 1,
            cycle.restart_ms,
            ms(cycle.first_answer_ms),
            ms(cycle.resubscribed_ms)
        );
    }
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        let mut json = report.json();
        json["chaos"] = serde_json::json!(chaos
            .cycles
            .iter()
            .map(|c| serde_json::json!({
                "writer_killed": c.writer_killed,
                "restart_ms": c.restart_ms,
                "first_answer_ms": c.first_answer_ms,
                "resubscribed_ms": c.resubscribed_ms,
            }))
            .collect::<Vec<_>>());
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(chaos.finished.audit.passed)
}

/// A figure read off a finished run.
type Figure = Box<dyn Fn(&Finished) -> f64>;

async fn compare(args: CompareArgs) -> anyhow::Result<bool> {
    let redis = flashstock_loadgen::redis_target::RedisTarget::connect(&args.redis, 0, 1).await?;
    if args.aof {
        redis.set_aof(true).await?;
    }
    let mut runs: Vec<(usize, Finished)> = Vec::new();
    let mut passed = true;
    for round in 0..args.rounds.max(1) {
        for (side, url) in [(0, &args.flashstock), (1, &args.redis)] {
            let finished = execute(args.load.options(url)?).await?;
            let report = report(&finished, &args.load);
            println!("--- round {} {}", round + 1, finished.target);
            print!("{}", report.summary());
            // Both sides' JSON results (and files) are always written for a comparison.
            let default_prefix = PathBuf::from("loadgen-compare/compare");
            {
                let prefix = args.load.out.as_ref().unwrap_or(&default_prefix);
                let mut name = prefix.as_os_str().to_owned();
                name.push(format!("-{}-{}", finished.target, round + 1));
                report.write_json(&PathBuf::from(&name).with_extension("json"))?;
                report.write_files(&PathBuf::from(name))?;
            }
            passed &= finished.audit.passed;
            runs.push((side, finished));
        }
    }
    if args.aof {
        redis.set_aof(false).await?;
    }
    let median = |side: usize, figure: &dyn Fn(&Finished) -> f64| {
        let mut values: Vec<f64> =
            runs.iter().filter(|(s, _)| *s == side).map(|(_, f)| figure(f)).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let ops = |f: &Finished| f.result.ops_total as f64 / f.result.elapsed_s;
    let pct = |q: f64| move |f: &Finished| f.result.latency_us.value_at_quantile(q) as f64 / 1000.0;
    let detail =
        |side: usize| runs.iter().find(|(s, _)| *s == side).map_or("", |(_, f)| &f.target_detail);
    println!("\n=== comparison, medians of {} rounds (A B A B ...)", args.rounds.max(1));
    println!("flashstock: {}\nredis:      {}", detail(0), detail(1));
    println!("{:<16} {:>14} {:>14} {:>10}", "figure", "flashstock", "redis", "ratio");
    let rows: [(&str, Figure, bool); 4] = [
        ("requests/s", Box::new(ops), true),
        ("p50 ms", Box::new(pct(0.5)), false),
        ("p99 ms", Box::new(pct(0.99)), false),
        ("p99.9 ms", Box::new(pct(0.999)), false),
    ];
    for (name, figure, higher_is_better) in rows {
        let (a, b) = (median(0, &*figure), median(1, &*figure));
        // The ratio says how many times better flashstock is on this figure.
        let ratio = if higher_is_better { a / b.max(1e-9) } else { b / a.max(1e-9) };
        println!("{name:<16} {a:>14.3} {b:>14.3} {ratio:>9.2}x");
    }
    Ok(passed)
}
