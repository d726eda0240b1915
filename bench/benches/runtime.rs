//! The runtime round trip: handle → shard actor → group-committed sled WAL → reply, with 2
//! shards and 1,024 or 4,096 reserves in flight from tokio tasks. Every answer is durable, so
//! by Little's law throughput is the requests in flight over the time one group commit takes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flashstock_engine::{BuyerId, Outcome, RequestId, SkuId};
use flashstock_runtime::{Runtime, RuntimeConfig, SystemClock};

const SKUS: u64 = 64;

fn round_trip(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { shard_count: 2, ..RuntimeConfig::default() };
    let runtime = Runtime::open(dir.path(), config, Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    tokio.block_on(async {
        for sku in 0..SKUS {
            handle.set_stock(RequestId(u128::from(sku)), SkuId(sku), 1 << 40).await.unwrap();
        }
    });
    let mut next = 1u64 << 32;
    let mut group = c.benchmark_group("runtime");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(100_000));
    for in_flight in [1_024u64, 4_096] {
        let name = format!("reserve_2_shards_{in_flight}_in_flight");
        group.bench_function(name.as_str(), |b| {
            b.iter_custom(|iters| {
                let total = iters * 100_000;
                let first = next;
                next += total;
                let started = Instant::now();
                tokio.block_on(async {
                    let tasks: Vec<_> = (0..in_flight)
                        .map(|task| {
                            let handle = handle.clone();
                            tokio::spawn(async move {
                                let mut n = first + task;
                                while n < first + total {
                                    // Short holds, expired by the actors' ticks, keep memory flat.
                                    let (request, buyer) = (RequestId(u128::from(n)), BuyerId(n));
                                    let sku = SkuId(n % SKUS);
                                    let outcome =
                                        handle.reserve(request, buyer, sku, 1, 2_000).await;
                                    assert!(
                                        matches!(outcome, Ok(Outcome::Reserved { .. })),
                                        "{outcome:?}"
                                    );
                                    n += in_flight;
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                });
                started.elapsed()
            })
        });
    }
    group.finish();
    let stats = runtime.durability_stats();
    let syncs = stats.syncs.load(std::sync::atomic::Ordering::Relaxed).max(1);
    let records = stats.records.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "group commit: {records} records in {syncs} syncs ({:.0} records/sync, mean sync {} us)",
        records as f64 / syncs as f64,
        stats.sync_us_total.load(std::sync::atomic::Ordering::Relaxed) / syncs
    );
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
