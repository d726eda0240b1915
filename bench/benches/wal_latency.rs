//! Sync latency of the sled WAL, with and without the fdatasync that makes it durable: 2,000
//! group commits of one 1,000-record batch each, percentiles from an HDR histogram.
//!
//! `cargo bench -p flashstock-bench --bench wal_latency`

use std::time::Instant;

use flashstock_bench::{records, shards};
use flashstock_wal::{SledWal, SledWalConfig, Wal};
use hdrhistogram::Histogram;

const COMMITS: u64 = 2_000;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // nothing to list; `cargo test --benches` only checks it runs
    }
    let mut shard = shards::stocked(1, 1 << 40, shards::roomy());
    let batch = records::reserve_confirm(&mut shard, 0, 0, 1_000);
    println!("batch: {} records, {} bytes", batch.record_count, batch.bytes.len());
    for fdatasync in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let config = SledWalConfig { fdatasync, ..SledWalConfig::new(dir.path()) };
        let wal = SledWal::open(&config).unwrap();
        let mut sync_us = Histogram::<u64>::new(3).unwrap();
        let started = Instant::now();
        for commit in 0..COMMITS {
            wal.append(0, commit * 1_000, batch.record_count, &batch.bytes).unwrap();
            let sync_started = Instant::now();
            wal.sync().unwrap();
            sync_us.record(sync_started.elapsed().as_micros() as u64).unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let disk_mb = wal.size_on_disk_bytes().unwrap() as f64 / 1e6;
        let raw_mb = (COMMITS as usize * batch.bytes.len()) as f64 / 1e6;
        println!(
            "fdatasync={fdatasync:<5} records/s {:>10.0}  sync us p50 {:>5} p99 {:>6} p99.9 {:>6} max {:>6}  disk {disk_mb:.0} MB for {raw_mb:.0} MB of records",
            (COMMITS * 1_000) as f64 / secs,
            sync_us.value_at_quantile(0.5),
            sync_us.value_at_quantile(0.99),
            sync_us.value_at_quantile(0.999),
            sync_us.max(),
        );
    }
}
