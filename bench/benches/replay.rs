//! Recovery replay: decoding logged records and re-applying them through `Shard::replay`, the
//! code path recovery runs for every record after the latest snapshot. Also a whole restart of
//! the runtime from a sled log (read, decode, replay, invariant check), measured once.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flashstock_bench::{records, shards};
use flashstock_engine::decode_records;
use flashstock_server::{Runtime, RuntimeConfig, SystemClock};
use flashstock_wal::{SledWal, SledWalConfig, Wal};

const RECORDS: u32 = 1_000_000;

fn replay(c: &mut Criterion) {
    let mut live = shards::stocked(1, 1 << 40, shards::roomy());
    let log = records::reserve_confirm(&mut live, 0, RECORDS);
    let mut group = c.benchmark_group("replay");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(u64::from(RECORDS)));
    group.bench_function("decode_and_apply_1m", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let mut shard = shards::stocked(1, 1 << 40, shards::roomy());
                let started = Instant::now();
                for record in decode_records(&log.bytes) {
                    shard.replay(&record.unwrap()).unwrap();
                }
                elapsed += started.elapsed();
                black_box(shard.reservations_live());
            }
            elapsed
        })
    });
    group.finish();
    restart_once();
}

/// Writes 1M records through the WAL the way the runtime does, then times one full restart.
fn restart_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { shard_count: 1, ..RuntimeConfig::default() };
    {
        // Let the runtime create the store (layout, SKU) so the restart is a real one.
        let runtime = Runtime::open(dir.path(), config.clone(), Arc::new(SystemClock)).unwrap();
        drop(runtime);
    }
    let wal_dir = dir.path().join("wal");
    {
        let mut wal = SledWal::open(&SledWalConfig::new(&wal_dir)).unwrap();
        let mut shard = flashstock_engine::Shard::new(flashstock_engine::ShardId(0), config.shard);
        let mut seq = wal.replay(0, 0, &mut |_| Ok(())).unwrap().next_seq;
        let stock = flashstock_engine::Command::SetStock {
            request: flashstock_engine::RequestId(7),
            sku: flashstock_engine::SkuId(0),
            total: 1 << 40,
        };
        let mut first = flashstock_engine::EncodedLog::default();
        shard.apply(&stock, 1, &mut first);
        wal.append(0, seq, first.record_count, &first.bytes).unwrap();
        seq += 1;
        let mut n = 0;
        while seq < u64::from(RECORDS) {
            let batch = records::reserve_confirm(&mut shard, n, 1_000);
            n += 800;
            wal.append(0, seq, batch.record_count, &batch.bytes).unwrap();
            seq += u64::from(batch.record_count);
        }
        wal.sync().unwrap();
    }
    let started = Instant::now();
    let runtime = Runtime::open(dir.path(), config, Arc::new(SystemClock)).unwrap();
    let elapsed = started.elapsed();
    let report = &runtime.recovery()[0];
    println!(
        "restart from sled: {} records replayed in {:.0} ms ({:.2} M records/s), replay alone {} ms",
        report.records,
        elapsed.as_secs_f64() * 1e3,
        report.records as f64 / elapsed.as_secs_f64() / 1e6,
        report.elapsed_us / 1_000
    );
}

criterion_group!(benches, replay);
criterion_main!(benches);
