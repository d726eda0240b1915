//! Sync latency of the sled WAL next to the raw disk's, in one run: 2,000 group commits of one
//! batch each (1,000 records, as a busy server's, and 25, as 50 single callers'), percentiles
//! from an HDR histogram. Three ways each: a plain file (append + `fdatasync`: what the disk
//! itself costs), the sled WAL (flush + `fdatasync`: durable), and sled's flush alone (not
//! durable), so each layer's cost is visible.
//!
//! `cargo bench -p flashstock-bench --bench wal_latency`

use std::io::Write;
use std::time::Instant;

use flashstock_bench::{records, shards};
use flashstock_wal::{SledWal, SledWalConfig, Wal};
use hdrhistogram::Histogram;

const COMMITS: u64 = 2_000;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // nothing to list; `cargo test --benches` only checks it runs
    }
    for record_count in [1_000, 25] {
        let mut shard = shards::stocked(1, 1 << 40, shards::roomy());
        let batch = records::reserve_confirm(&mut shard, 0, 0, record_count);
        println!("batch: {} records, {} bytes", batch.record_count, batch.bytes.len());
        raw_file(&batch.bytes);
        for fdatasync in [true, false] {
            sled(&batch, fdatasync);
        }
    }
}

/// The disk alone: the same bytes appended to a plain file, then `fdatasync`.
fn raw_file(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("raw")).unwrap();
    let mut sync_us = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    for _ in 0..COMMITS {
        file.write_all(bytes).unwrap();
        let sync_started = Instant::now();
        file.sync_data().unwrap();
        sync_us.record(sync_started.elapsed().as_micros() as u64).unwrap();
    }
    report("raw file + fdatasync", started, &sync_us, bytes.len(), None);
}

fn sled(batch: &flashstock_engine::EncodedLog, fdatasync: bool) {
    let dir = tempfile::tempdir().unwrap();
    let config = SledWalConfig { fdatasync, ..SledWalConfig::new(dir.path()) };
    let wal = SledWal::open(&config).unwrap();
    let mut sync_us = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    let count = u64::from(batch.record_count);
    for commit in 0..COMMITS {
        wal.append(0, commit * count, batch.record_count, &batch.bytes).unwrap();
        let sync_started = Instant::now();
        wal.sync().unwrap();
        sync_us.record(sync_started.elapsed().as_micros() as u64).unwrap();
    }
    let what = if fdatasync { "sled flush + fdatasync" } else { "sled flush alone" };
    let disk_bytes = wal.size_on_disk_bytes().unwrap();
    report(what, started, &sync_us, batch.bytes.len(), Some(disk_bytes));
}

fn report(what: &str, started: Instant, sync_us: &Histogram<u64>, bytes: usize, disk: Option<u64>) {
    let secs = started.elapsed().as_secs_f64();
    let raw_mb = (COMMITS as usize * bytes) as f64 / 1e6;
    let disk = disk
        .map_or(String::new(), |d| format!("  disk {:.0} MB for {raw_mb:.0} MB", d as f64 / 1e6));
    println!(
        "  {what:<24} commits/s {:>7.0}  sync us p50 {:>5} p90 {:>5} p99 {:>6} p99.9 {:>6} max {:>6}{disk}",
        COMMITS as f64 / secs,
        sync_us.value_at_quantile(0.5),
        sync_us.value_at_quantile(0.9),
        sync_us.value_at_quantile(0.99),
        sync_us.value_at_quantile(0.999),
        sync_us.max(),
    );
}
