//! The runner: tasks each keep one batch of requests in flight (closed loop), or send batches
//! at their scheduled times (open loop, with latency measured from the scheduled time, as wrk2
//! does, so a stalled server is not hidden by a generator that waits for it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::scenario::{ReserveOp, Rng, Settle, Workload};
use crate::target::{Hold, ReserveAnswer, Target};

/// How a run is driven.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Batches in flight at once (closed loop), or tasks sharing the rate (open loop).
    pub concurrency: usize,
    /// Requests per batch: one frame to flashstock, one pipeline to Redis.
    pub batch: usize,
    /// Open loop: the target rate, requests/s. `None`: closed loop.
    pub rate_per_s: Option<u64>,
    /// Run this long; `None`: send `requests` requests.
    pub duration: Option<Duration>,
    /// Requests to send when no duration is set.
    pub requests: u64,
    /// The first part of the run left out of the figures.
    pub warmup: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
}

/// Per SKU, what this run saw acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// Units held.
    pub reserved: u64,
    /// Units confirmed.
    pub confirmed: u64,
    /// Units cancelled.
    pub cancelled: u64,
    /// Units whose requests failed without an answer (they may or may not have applied).
    pub unknown: u64,
}

/// What a run measured.
#[derive(Debug)]
pub struct RunResult {
    /// Seconds measured (after the warm-up).
    pub elapsed_s: f64,
    /// Requests answered in the measured period.
    pub ops_total: u64,
    /// Outcomes in the measured period, by name.
    pub outcomes: BTreeMap<String, u64>,
    /// Latency of each request in the measured period, microseconds.
    pub latency_us: Histogram<u64>,
    /// The measured period in [`TIMELINE_POINTS_MAX`] or fewer buckets: when each starts,
    /// requests answered per second in it, and their p99.
    pub timeline: Vec<TimelinePoint>,
    /// How wide each bucket of the timeline is.
    pub timeline_bucket_ms: u64,
    /// Per SKU, what the whole run (warm-up included) saw acknowledged.
    pub acked: BTreeMap<u64, Acked>,
}

/// One bucket of the timeline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimelinePoint {
    /// Seconds from the end of the warm-up to the bucket's start.
    pub start_s: f64,
    /// Requests answered per second in the bucket.
    pub ops_per_s: f64,
    /// Their p99, in µs.
    pub p99_us: u64,
}

/// The most buckets the timeline keeps: at 200, adjacent pairs merge and the width doubles,
/// so a 0.8 s run and a 10-minute one both plot 100 to 200 points, in bounded memory.
pub const TIMELINE_POINTS_MAX: usize = 200;
/// The timeline's first bucket width.
const TIMELINE_BUCKET_MS_FIRST: u64 = 10;

struct Shared {
    started: Instant,
    warmup: Duration,
    outcomes: BTreeMap<String, u64>,
    latency_us: Histogram<u64>,
    buckets: Vec<Histogram<u64>>,
    bucket_ms: u64,
    acked: BTreeMap<u64, Acked>,
}

impl Shared {
    fn record(&mut self, latency: Duration, outcomes: &[&'static str]) {
        let since = self.started.elapsed();
        if since < self.warmup {
            return;
        }
        let us = latency.as_micros() as u64;
        let since_ms = (since - self.warmup).as_millis() as u64;
        while since_ms / self.bucket_ms >= TIMELINE_POINTS_MAX as u64 {
            self.widen();
        }
        let index = (since_ms / self.bucket_ms) as usize;
        while self.buckets.len() <= index {
            self.buckets.push(histogram());
        }
        for outcome in outcomes {
            *self.outcomes.entry((*outcome).to_owned()).or_default() += 1;
            self.latency_us.saturating_record(us);
            self.buckets[index].saturating_record(us);
        }
    }

    /// Merges adjacent buckets pairwise: twice the width, half the buckets.
    fn widen(&mut self) {
        let merged = self
            .buckets
            .chunks(2)
            .map(|pair| {
                let mut merged = pair[0].clone();
                if let Some(second) = pair.get(1) {
                    merged.add(second).expect("same bounds");
                }
                merged
            })
            .collect();
        self.buckets = merged;
        self.bucket_ms *= 2;
    }

    /// The timeline of a run whose measured period lasted `measured`.
    fn timeline(&self, measured: Duration) -> Vec<TimelinePoint> {
        let (width_s, measured_s) = (self.bucket_ms as f64 / 1e3, measured.as_secs_f64());
        let point = |(index, h): (usize, &Histogram<u64>)| {
            let start_s = index as f64 * width_s;
            // The last bucket may be cut short by the run's end.
            let seconds = width_s.min(measured_s - start_s).max(width_s / 100.0);
            let p99_us = if h.is_empty() { 0 } else { h.value_at_quantile(0.99) };
            TimelinePoint { start_s, ops_per_s: h.len() as f64 / seconds, p99_us }
        };
        self.buckets.iter().enumerate().map(point).collect()
    }
}

fn histogram() -> Histogram<u64> {
    // Fixed bounds: an auto-resizing histogram's `saturating_record` clamps to its current
    // (tiny) top instead of growing. 1 µs to 1 hour.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Runs `workload` against `target`.
pub async fn run(target: Arc<Target>, workload: Arc<Workload>, config: RunConfig) -> RunResult {
    let shared = Arc::new(Mutex::new(Shared {
        started: Instant::now(),
        warmup: config.warmup,
        outcomes: BTreeMap::new(),
        latency_us: histogram(),
        buckets: Vec::new(),
        bucket_ms: TIMELINE_BUCKET_MS_FIRST,
        acked: BTreeMap::new(),
    }));
    let next = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let progress = config.progress.then(|| progress_bar(&config));
    let ticker = progress.clone().map(|bar| {
        let (shared, answered) = (shared.clone(), answered.clone());
        let by_time = config.duration.is_some();
        tokio::spawn(async move { tick_progress(bar, by_time, shared, answered).await })
    });
    let sweeper = match &*target {
        Target::Redis(_) if workload.scenario().settles() => {
            let target = target.clone();
            Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Target::Redis(redis) = &*target {
                        let _ = redis.sweep(10_000).await;
                    }
                }
            }))
        }
        _ => None,
    };
    let started = Instant::now();
    shared.lock().unwrap().started = started;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..config.concurrency.max(1) {
        let (target, workload, config) = (target.clone(), workload.clone(), config.clone());
        let (shared, next, answered) = (shared.clone(), next.clone(), answered.clone());
        tasks.spawn(async move {
            drive(task, target, workload, config, started, shared, next, answered).await
        });
    }
    while tasks.join_next().await.is_some() {}
    let total = started.elapsed();
    // `abort` only asks: await each task so its clone of `shared` is dropped before unwrapping.
    for helper in [ticker, sweeper].into_iter().flatten() {
        helper.abort();
        let _ = helper.await;
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let shared = Arc::try_unwrap(shared).ok().expect("every task ended").into_inner().unwrap();
    let elapsed_s = total.saturating_sub(config.warmup).as_secs_f64().max(1e-9);
    let timeline = shared.timeline(total.saturating_sub(config.warmup));
    RunResult {
        elapsed_s,
        ops_total: shared.latency_us.len(),
        timeline_bucket_ms: shared.bucket_ms,
        outcomes: shared.outcomes,
        latency_us: shared.latency_us,
        timeline,
        acked: shared.acked,
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    task: usize,
    target: Arc<Target>,
    workload: Arc<Workload>,
    config: RunConfig,
    started: Instant,
    shared: Arc<Mutex<Shared>>,
    next: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
) {
    let mut rng = Rng::new(config.seed ^ (task as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let batch = config.batch.max(1) as u64;
    // Open loop: this task's batches are due every `interval`, staggered across tasks.
    let interval = config.rate_per_s.map(|rate| {
        Duration::from_secs_f64(batch as f64 * config.concurrency as f64 / rate.max(1) as f64)
    });
    let mut due = interval.map(|i| started + i.mul_f64(task as f64 / config.concurrency as f64));
    loop {
        if config.duration.is_some_and(|d| started.elapsed() >= d) {
            return;
        }
        let first = next.fetch_add(batch, Ordering::Relaxed);
        let count = match config.duration {
            Some(_) => batch,
            None if first >= config.requests => return,
            None => batch.min(config.requests - first),
        };
        let scheduled = match (due, interval) {
            (Some(at), Some(interval)) => {
                tokio::time::sleep_until(at.into()).await;
                due = Some(at + interval);
                at
            }
            _ => Instant::now(),
        };
        let ops: Vec<_> = (first..first + count).map(|n| workload.reserve(n, &mut rng)).collect();
        let answers = target.reserve(&ops).await;
        let latency = scheduled.elapsed();
        let mut holds = Vec::new();
        {
            let mut shared = shared.lock().unwrap();
            match &answers {
                Ok(answers) => {
                    let names: Vec<&'static str> = answers
                        .iter()
                        .map(|a| match a {
                            ReserveAnswer::Held(hold) => {
                                for (sku, qty) in hold.units() {
                                    shared.acked.entry(sku).or_default().reserved += u64::from(qty);
                                }
                                holds.push(*hold);
                                "reserved"
                            }
                            ReserveAnswer::Refused(name) => name,
                        })
                        .collect();
                    shared.record(latency, &names);
                }
                Err(err) => {
                    for (sku, qty) in ops.iter().flat_map(ReserveOp::units) {
                        shared.acked.entry(sku).or_default().unknown += u64::from(qty);
                    }
                    shared.record(latency, &vec!["error"; ops.len()]);
                    tracing_error(err);
                }
            }
        }
        answered.fetch_add(count, Ordering::Relaxed);
        if workload.scenario().settles() && !holds.is_empty() {
            settle(&target, workload.scenario(), holds, &mut rng, &shared).await;
        }
        if answers.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn settle(
    target: &Target,
    scenario: &crate::scenario::Scenario,
    holds: Vec<Hold>,
    rng: &mut Rng,
    shared: &Mutex<Shared>,
) {
    let (mut confirms, mut cancels) = (Vec::new(), Vec::new());
    for hold in holds {
        match scenario.settle(rng) {
            Settle::Confirm => confirms.push(hold),
            Settle::Cancel => cancels.push(hold),
            Settle::Abandon => {}
        }
    }
    tokio::time::sleep(Duration::from_millis(scenario.think_ms())).await;
    for (holds, confirm) in [(confirms, true), (cancels, false)] {
        if holds.is_empty() {
            continue;
        }
        let started = Instant::now();
        let answers = target.settle(&holds, confirm).await;
        let latency = started.elapsed();
        let mut shared = shared.lock().unwrap();
        match answers {
            Ok(names) => {
                for (hold, name) in holds.iter().zip(&names) {
                    for (sku, qty) in hold.units() {
                        let acked = shared.acked.entry(sku).or_default();
                        match *name {
                            "confirmed" => acked.confirmed += u64::from(qty),
                            "cancelled" => acked.cancelled += u64::from(qty),
                            _ => {}
                        }
                    }
                }
                shared.record(latency, &names);
            }
            Err(err) => {
                for (sku, qty) in holds.iter().flat_map(Hold::units) {
                    shared.acked.entry(sku).or_default().unknown += u64::from(qty);
                }
                shared.record(latency, &vec!["error"; holds.len()]);
                tracing_error(&err);
            }
        }
    }
}

fn tracing_error(err: &crate::target::LoadError) {
    // One line per failed batch on stderr; the counts are in the summary.
    eprintln!("request batch failed: {err}");
}

fn progress_bar(config: &RunConfig) -> indicatif::ProgressBar {
    let bar = match config.duration {
        Some(d) => indicatif::ProgressBar::new(d.as_secs().max(1)),
        None => indicatif::ProgressBar::new(config.requests),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Updates the bar four times a second: position (seconds or requests), live requests/s,
/// the p99 of the current second, and the outcome counts.
async fn tick_progress(
    bar: indicatif::ProgressBar,
    by_time: bool,
    shared: Arc<Mutex<Shared>>,
    answered: Arc<AtomicU64>,
) {
    let started = Instant::now();
    let mut last = (0u64, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now_answered = answered.load(Ordering::Relaxed);
        let rate = (now_answered - last.0) as f64 / last.1.elapsed().as_secs_f64();
        last = (now_answered, Instant::now());
        let (outcomes, p99_us) = {
            let shared = shared.lock().unwrap();
            let outcomes: Vec<String> =
                shared.outcomes.iter().map(|(name, n)| format!("{name} {n}")).collect();
            let p99_us = shared.buckets.last().map_or(0, |h| h.value_at_quantile(0.99));
            (outcomes.join(", "), p99_us)
        };
        bar.set_position(if by_time { started.elapsed().as_secs() } else { now_answered });
        bar.set_message(format!(
            "{rate:.0} req/s, p99 {:.2} ms, {outcomes}",
            p99_us as f64 / 1000.0
        ));
    }
}
