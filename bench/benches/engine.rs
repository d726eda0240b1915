//! Engine apply on one core: the decision logic alone, records encoded as the runtime does.
//!
//! - `hot_sku/flash_sale`: 1,000 units, every buyer tries for one: 1% win, 99% sold out.
//! - `hot_sku/reserve_expire`: every reserve succeeds and later expires (steady state).
//! - `hot_sku/reserve_confirm`: reserve then confirm, two applies per sale (steady state).
//! - `million_skus/reserve`: reserves spread over 1M SKUs (cache misses dominate).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flashstock_bench::{commands, shards};
use flashstock_engine::{EncodedLog, Outcome};

const OPS: u64 = 100_000;

fn hot_sku(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_sku");
    group.throughput(Throughput::Elements(OPS));
    group.bench_function("flash_sale", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut log = EncodedLog::default();
            for _ in 0..iters {
                let mut shard = shards::stocked(1, 1_000, shards::roomy());
                log.clear();
                let started = Instant::now();
                for n in 0..OPS {
                    black_box(shard.apply(&commands::reserve(n, 0, 60_000), 1_000, &mut log));
                }
                elapsed += started.elapsed();
            }
            elapsed
        })
    });
    // Steady state: one shard for the whole run, so maps are at their working size.
    // Holds last 5 ms and the clock moves 1 ms per 10,000 reserves, so ticks expire them and
    // the live set stays near 50,000 reservations.
    let mut shard = shards::stocked(1, 1 << 40, shards::roomy());
    let mut step = 0u64;
    group.bench_function("reserve_expire", |b| {
        b.iter_custom(|iters| {
            let mut log = EncodedLog::default();
            let started = Instant::now();
            for _ in 0..iters {
                log.clear();
                for _ in 0..OPS {
                    step += 1;
                    let reserve = commands::reserve(step, 0, 5);
                    black_box(shard.apply(&reserve, step / 10_000, &mut log));
                    if step % 10_000 == 0 {
                        shard.tick(step / 10_000, &mut log);
                    }
                }
            }
            started.elapsed()
        })
    });
    // Steady state: every reserve is confirmed at once; ended reservations and dedup answers
    // are evicted by their count bounds (1M and 2M).
    let mut shard = shards::stocked(1, 1 << 40, shards::roomy());
    let mut step = 0u64;
    group.bench_function("reserve_confirm", |b| {
        b.iter_custom(|iters| {
            let mut log = EncodedLog::default();
            let started = Instant::now();
            for _ in 0..iters {
                log.clear();
                for _ in 0..OPS / 2 {
                    step += 1;
                    let reserve = commands::reserve(step, 0, 60_000);
                    if let Outcome::Reserved { reservation, .. } =
                        shard.apply(&reserve, 1_000, &mut log)
                    {
                        black_box(shard.apply(
                            &commands::confirm(step, reservation),
                            1_000,
                            &mut log,
                        ));
                    }
                }
            }
            started.elapsed()
        })
    });
    group.finish();
}

fn million_skus(c: &mut Criterion) {
    const SKUS: u64 = 1_000_000;
    let mut group = c.benchmark_group("million_skus");
    group.sample_size(10).measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(OPS));
    let mut shard = shards::stocked(SKUS, 1 << 30, shards::roomy());
    let mut log = EncodedLog::default();
    let mut step = 0u64;
    group.bench_function("reserve", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                log.clear();
                for _ in 0..OPS {
                    step += 1;
                    let sku = commands::spread_sku(step, SKUS);
                    // Short holds, expired by the tick below, keep the live set bounded.
                    let reserve = commands::reserve(step, sku, 5);
                    black_box(shard.apply(&reserve, step / 10_000, &mut log));
                }
                while shard.tick(step / 10_000, &mut log) == flashstock_engine::TICK_EXPIRIES_MAX {}
            }
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, hot_sku, million_skus);
criterion_main!(benches);
