//! The demo flash sale: many buyers race for a few units through the real runtime and the sled
//! log, winners pay or walk away, and an audit proves nothing was oversold. Then the runtime
//! restarts from the log and the audit is repeated on what recovery rebuilt.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashstock_engine::{BuyerId, Outcome, RequestId, ReservationId, SkuId, SkuView};
use hdrhistogram::Histogram;

use crate::{Handle, Runtime, RuntimeConfig, RuntimeError, SystemClock};

/// What the demo sale looks like.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Where the sled log lives (kept between runs; each run sells a new SKU).
    pub data_dir: PathBuf,
    /// The runtime's configuration.
    pub runtime: RuntimeConfig,
    /// Units on sale.
    pub units: u64,
    /// Buyers who try to reserve one unit each.
    pub buyers: u64,
    /// Buyers in flight at once.
    pub concurrency: usize,
    /// How long a winner's hold lasts.
    pub ttl_ms: u64,
    /// Percent of winners who pay; the rest cancel.
    pub confirm_percent: u64,
}

/// What the sale did and what the audit found.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// The SKU sold.
    pub sku: SkuId,
    /// Reserve attempts answered.
    pub attempts: u64,
    /// Reserved answers.
    pub reserved: u64,
    /// Sold-out answers.
    pub sold_out: u64,
    /// Any other answer (limit exceeded, overloaded...).
    pub other: u64,
    /// Confirms acknowledged.
    pub confirmed: u64,
    /// Cancels acknowledged.
    pub cancelled: u64,
    /// Wall time of the reserve race.
    pub race_elapsed: Duration,
    /// Reserve latency percentiles, in microseconds: p50, p99, p99.9, max.
    pub reserve_latency_us: [u64; 4],
    /// The SKU as the live runtime reports it after the sale.
    pub live: SkuView,
    /// The SKU as a restarted runtime recovered it from the log.
    pub recovered: SkuView,
    /// Records replayed and time taken by the restart's recovery.
    pub recovery_records: u64,
    /// How long the restart's recovery took, in microseconds.
    pub recovery_us: u64,
    /// Group-commit syncs during the sale, and records they made durable.
    pub syncs: u64,
    /// Records made durable during the sale.
    pub records: u64,
    /// Mean and slowest group-commit sync, in microseconds.
    pub sync_us_mean_max: (u64, u64),
    /// Every audit finding; empty means PASS.
    pub failures: Vec<String>,
}

/// Runs the sale, shuts the runtime down, restarts it from the log, and audits both.
/// `shutdown` cuts the race short (Ctrl-C); the audit still runs on what happened.
pub async fn run(
    options: DemoOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<DemoReport, RuntimeError> {
    let runtime = Runtime::open(&options.data_dir, options.runtime.clone(), Arc::new(SystemClock))?;
    let handle = runtime.handle();
    let sku = SkuId(SystemClock.now_ms_for_ids());
    let request = RequestCounter::new(sku);
    handle.set_stock(request.next(), sku, options.units).await?;
    handle.set_buyer_limit(request.next(), sku, Some(1)).await?;

    let race = tokio::select! {
        race = race(&handle, &options, sku, &request) => race?,
        () = shutdown => return Err(RuntimeError::ShuttingDown),
    };
    let (confirmed, cancelled) = checkout(&handle, &options, &race.winners, &request).await?;
    let live = handle.query_sku(sku).await?.expect("the demo SKU exists");
    let stats = runtime.durability_stats();
    let (syncs, records) =
        (stats.syncs.load(Ordering::Relaxed), stats.records.load(Ordering::Relaxed));
    let sync_us_mean_max = (
        stats.sync_us_total.load(Ordering::Relaxed) / syncs.max(1),
        stats.sync_us_max.load(Ordering::Relaxed),
    );
    runtime.shutdown();

    let restarted =
        Runtime::open(&options.data_dir, options.runtime.clone(), Arc::new(SystemClock))?;
    let recovered = restarted.handle().query_sku(sku).await?.expect("the demo SKU survives");
    let recovery_records = restarted.recovery().iter().map(|r| r.records).sum();
    let recovery_us = restarted.recovery().iter().map(|r| r.elapsed_us).max().unwrap_or(0);
    restarted.shutdown();

    let mut report = DemoReport {
        sku,
        attempts: race.reserved + race.sold_out + race.other,
        reserved: race.reserved,
        sold_out: race.sold_out,
        other: race.other,
        confirmed,
        cancelled,
        race_elapsed: race.elapsed,
        reserve_latency_us: race.latency_us,
        live,
        recovered,
        recovery_records,
        recovery_us,
        syncs,
        records,
        sync_us_mean_max,
        failures: Vec::new(),
    };
    report.failures = audit(&report, &options);
    Ok(report)
}

struct Race {
    winners: Vec<ReservationId>,
    reserved: u64,
    sold_out: u64,
    other: u64,
    elapsed: Duration,
    latency_us: [u64; 4],
}

async fn race(
    handle: &Handle,
    options: &DemoOptions,
    sku: SkuId,
    request: &RequestCounter,
) -> Result<Race, RuntimeError> {
    let next_buyer = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..options.concurrency {
        let (handle, next_buyer, request) = (handle.clone(), next_buyer.clone(), request.clone());
        let (buyers, ttl_ms) = (options.buyers, options.ttl_ms);
        workers.push(tokio::spawn(async move {
            let mut latency = latency_histogram();
            let (mut winners, mut sold_out, mut other) = (Vec::new(), 0u64, 0u64);
            loop {
                let buyer = next_buyer.fetch_add(1, Ordering::Relaxed);
                if buyer >= buyers {
                    break;
                }
                let sent = Instant::now();
                let outcome = handle.reserve(request.next(), BuyerId(buyer), sku, 1, ttl_ms).await;
                latency.saturating_record(sent.elapsed().as_micros() as u64);
                match outcome {
                    Ok(Outcome::Reserved { reservation, .. }) => winners.push(reservation),
                    Ok(Outcome::SoldOut { .. }) => sold_out += 1,
                    Ok(_) | Err(RuntimeError::Overloaded { .. }) => other += 1,
                    Err(err) => return Err(err),
                }
            }
            Ok((winners, sold_out, other, latency))
        }));
    }
    let mut race = Race {
        winners: Vec::new(),
        reserved: 0,
        sold_out: 0,
        other: 0,
        elapsed: Duration::ZERO,
        latency_us: [0; 4],
    };
    let mut latency = latency_histogram();
    for worker in workers {
        let (winners, sold_out, other, worker_latency) = worker.await.expect("worker")?;
        race.winners.extend(winners);
        race.sold_out += sold_out;
        race.other += other;
        latency.add(worker_latency).expect("same histogram bounds");
    }
    race.elapsed = started.elapsed();
    race.reserved = race.winners.len() as u64;
    race.latency_us = [
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999),
        latency.max(),
    ];
    Ok(race)
}

async fn checkout(
    handle: &Handle,
    options: &DemoOptions,
    winners: &[ReservationId],
    request: &RequestCounter,
) -> Result<(u64, u64), RuntimeError> {
    // Payments complete concurrently, as they do in a real checkout.
    let winners: Arc<[ReservationId]> = winners.into();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..options.concurrency.min(winners.len()).max(1) {
        let (handle, request, winners, next) =
            (handle.clone(), request.clone(), winners.clone(), next.clone());
        let confirm_percent = options.confirm_percent;
        workers.push(tokio::spawn(async move {
            let (mut confirmed, mut cancelled) = (0u64, 0u64);
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(&reservation) = winners.get(index as usize) else {
                    break;
                };
                // Deterministic split: the first `confirm_percent` of every hundred winners pay.
                if index % 100 < confirm_percent {
                    let outcome = handle.confirm(request.next(), reservation).await?;
                    confirmed += u64::from(outcome == Outcome::Confirmed);
                } else {
                    let outcome = handle.cancel(request.next(), reservation).await?;
                    cancelled += u64::from(outcome == Outcome::Cancelled);
                }
            }
            Ok::<_, RuntimeError>((confirmed, cancelled))
        }));
    }
    let (mut confirmed, mut cancelled) = (0, 0);
    for worker in workers {
        let (c, x) = worker.await.expect("checkout worker")?;
        confirmed += c;
        cancelled += x;
    }
    Ok((confirmed, cancelled))
}

/// Reserve latencies in microseconds, 1 us to 60 s at 3 significant figures. Explicit bounds:
/// `Histogram::new` auto-resizes on `record` but `saturating_record` clamps at its current
/// top (about 2 ms at first) instead, which once made every slow reply read as 2,047 us.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Checks the sale's figures against each other and against what recovery rebuilt.
fn audit(report: &DemoReport, options: &DemoOptions) -> Vec<String> {
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    let live = &report.live;
    check(
        live.available + live.reserved + live.sold == live.total,
        format!("conservation: {live:?}"),
    );
    check(live.total == options.units, format!("total {} != units {}", live.total, options.units));
    check(
        report.reserved <= options.units,
        format!("oversold: {} reserved of {}", report.reserved, options.units),
    );
    if report.other == 0 && options.buyers >= options.units {
        check(
            report.reserved == options.units,
            format!("undersold: {} reserved of {}", report.reserved, options.units),
        );
    }
    check(
        live.sold == report.confirmed,
        format!("sold {} != confirms acknowledged {}", live.sold, report.confirmed),
    );
    check(live.reserved == 0, format!("{} units still held after checkout", live.reserved));
    check(
        report.confirmed + report.cancelled == report.reserved,
        "a winner neither paid nor cancelled".into(),
    );
    check(
        report.recovered == report.live,
        format!("recovered {:?} != live {:?}", report.recovered, report.live),
    );
    failures
}

/// Request ids unique to this run: the SKU id in the high half, a counter in the low half.
#[derive(Clone, Debug)]
struct RequestCounter {
    prefix: u128,
    next: Arc<AtomicU64>,
}

impl RequestCounter {
    fn new(sku: SkuId) -> RequestCounter {
        RequestCounter { prefix: u128::from(sku.0) << 64, next: Arc::new(AtomicU64::new(0)) }
    }

    fn next(&self) -> RequestId {
        RequestId(self.prefix | u128::from(self.next.fetch_add(1, Ordering::Relaxed)))
    }
}

impl SystemClock {
    /// Milliseconds since the epoch, used to name a fresh SKU per demo run.
    fn now_ms_for_ids(&self) -> u64 {
        crate::Clock::now_ms(self)
    }
}

/// The report as the demo prints it.
pub fn render(report: &DemoReport, options: &DemoOptions) -> String {
    let secs = report.race_elapsed.as_secs_f64().max(1e-9);
    let [p50, p99, p999, max] = report.reserve_latency_us;
    let mut out = String::new();
    let live = &report.live;
    out += &format!(
        "flash sale of sku {}: {} units, {} buyers, {} in flight, {} shards, log in {}\n",
        report.sku.0,
        options.units,
        options.buyers,
        options.concurrency,
        options.runtime.shard_count,
        options.data_dir.display()
    );
    out += &format!(
        "race:     {} reserve answers in {:.2} s = {:.0} reserves/s (durable)\n",
        report.attempts,
        secs,
        report.attempts as f64 / secs
    );
    out += &format!(
        "outcomes: reserved {}, sold out {}, other {}\n",
        report.reserved, report.sold_out, report.other
    );
    out += &format!("latency:  p50 {p50} us, p99 {p99} us, p99.9 {p999} us, max {max} us\n");
    out += &format!("checkout: confirmed {}, cancelled {}\n", report.confirmed, report.cancelled);
    out += &format!(
        "wal:      {} records in {} syncs ({:.1} records/sync), sync mean {} us, max {} us\n",
        report.records,
        report.syncs,
        report.records as f64 / report.syncs.max(1) as f64,
        report.sync_us_mean_max.0,
        report.sync_us_mean_max.1
    );
    out += &format!(
        "stock:    total {}, available {}, reserved {}, sold {}\n",
        live.total, live.available, live.reserved, live.sold
    );
    out += &format!(
        "restart:  recovered {} records in {} us; state equal to live: {}\n",
        report.recovery_records,
        report.recovery_us,
        report.recovered == report.live
    );
    if report.failures.is_empty() {
        out += "audit:    PASS (no oversell, counts conserved, sold == confirms, recovery exact)\n";
    } else {
        out += "audit:    FAIL\n";
        for failure in &report.failures {
            out += &format!("  - {failure}\n");
        }
    }
    out
}
