//! WAL append + durable: one batch of 1,000 real records (reserves and confirms, ~48 KB) per
//! sync, and group commits of 4 such batches (what 2+ busy shards hand the durability thread).
//! Sync latency percentiles are in `wal_latency`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flashstock_bench::{records, shards};
use flashstock_wal::{SledWal, SledWalConfig, Wal};

fn append_sync(c: &mut Criterion) {
    let mut shard = shards::stocked(1, 1 << 40, shards::roomy());
    let batch = records::reserve_confirm(&mut shard, 0, 0, 1_000);
    let mut group = c.benchmark_group("wal");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    for (name, batches_per_sync) in [("append_sync_1k", 1u64), ("append_sync_4x1k", 4)] {
        let dir = tempfile::tempdir().unwrap();
        let wal = SledWal::open(&SledWalConfig::new(dir.path())).unwrap();
        let mut seq = 0u64;
        group.throughput(Throughput::Elements(1_000 * batches_per_sync));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    for log in 0..batches_per_sync as u16 {
                        wal.append(log, seq, batch.record_count, &batch.bytes).unwrap();
                    }
                    wal.sync().unwrap();
                    seq += u64::from(batch.record_count);
                }
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, append_sync);
criterion_main!(benches);
