//! Recovery replay: decoding logged records and re-applying them through `Shard::replay`, the
//! code path recovery runs for every record after the latest snapshot. Also a whole restart of
//! the runtime from a sled log (read, decode, replay, invariant check), measured once.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flashstock_bench::{records, shards};
use flashstock_engine::{
    decode_records, Command, EncodedLog, RequestId, Shard, ShardId, ShardMap, SkuId,
};
use flashstock_runtime::{Runtime, RuntimeConfig, SystemClock};
use flashstock_wal::{SledWal, SledWalConfig, Wal};

const RECORDS: u32 = 1_000_000;

fn replay(c: &mut Criterion) {
    let mut live = shards::stocked(1, 1 << 40, shards::roomy());
    let log = records::reserve_confirm(&mut live, 0, 0, RECORDS);
    let mut group = c.benchmark_group("replay");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(u64::from(RECORDS)));
    group.bench_function("decode_and_apply_1m", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let mut shard = shards::stocked(1, 1 << 40, shards::roomy());
                let started = Instant::now();
                shard.begin_replay();
                for record in decode_records(&log.bytes) {
                    shard.replay(&record.unwrap()).unwrap();
                }
                shard.finish_replay().unwrap();
                elapsed += started.elapsed();
                black_box(shard.reservations_live());
            }
            elapsed
        })
    });
    group.finish();
    restart_once();
}

/// Writes 1M records per shard (2 shards) through the WAL the way the runtime does, then times
/// one full restart: snapshot lookup, sled reads, decode, replay and invariant checks, with the
/// shards recovered in parallel.
fn restart_once() {
    const SHARDS: u16 = 2;
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { shard_count: SHARDS, ..RuntimeConfig::default() };
    // Let the runtime create the store (its layout record) so the restart is a real one.
    drop(Runtime::open(dir.path(), config.clone(), Arc::new(SystemClock)).unwrap());
    {
        let wal = SledWal::open(&SledWalConfig::new(dir.path().join("wal"))).unwrap();
        let map = ShardMap::new(SHARDS);
        for log in 0..SHARDS {
            let sku = (0..).find(|&sku| map.shard_of_sku(SkuId(sku)) == ShardId(log)).unwrap();
            let mut shard = Shard::new(ShardId(log), config.shard);
            let mut first = EncodedLog::default();
            let stock =
                Command::SetStock { request: RequestId(7), sku: SkuId(sku), total: 1 << 40 };
            shard.apply(&stock, 1, &mut first);
            let mut seq = wal.replay(log, 0, &mut |_| Ok(())).unwrap().next_seq;
            wal.append(log, seq, first.record_count, &first.bytes).unwrap();
            seq += 1;
            let mut n = 0;
            while seq < u64::from(RECORDS) {
                let batch = records::reserve_confirm(&mut shard, sku, n, 1_000);
                n += 800;
                wal.append(log, seq, batch.record_count, &batch.bytes).unwrap();
                seq += u64::from(batch.record_count);
            }
        }
        wal.sync().unwrap();
    }
    // Three restarts from the same log (no shutdown snapshot, so each replays everything);
    // the median is reported, the machine being noisy.
    let config = RuntimeConfig { snapshot_on_shutdown: false, ..config };
    let mut runs: Vec<(f64, String)> = (0..3)
        .map(|_| {
            let started = Instant::now();
            let runtime = Runtime::open(dir.path(), config.clone(), Arc::new(SystemClock)).unwrap();
            let elapsed = started.elapsed();
            let records: u64 = runtime.recovery().iter().map(|r| r.records).sum();
            assert!(records >= 2 * u64::from(RECORDS), "every record is replayed: {records}");
            let per_shard: Vec<String> = runtime
                .recovery()
                .iter()
                .map(|r| format!("shard {} {:.0} ms", r.shard, r.elapsed_us as f64 / 1e3))
                .collect();
            let rate = records as f64 / elapsed.as_secs_f64() / 1e6;
            let line = format!(
                "{records} records over {SHARDS} shards in {:.0} ms = {rate:.2} M records/s ({})",
                elapsed.as_secs_f64() * 1e3,
                per_shard.join(", ")
            );
            (rate, line)
        })
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("restart from sled, median of 3: {}", runs[1].1);
}

criterion_group!(benches, replay);
criterion_main!(benches);
