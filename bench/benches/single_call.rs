//! Where a single caller's time goes: 50 callers, each calling `Client::reserve` once and
//! awaiting it before the next (as order services' request handlers do), every reserve
//! succeeding (spread over 1,000 SKUs), against the same server on two logs in one run:
//! the sled WAL (durable: each answer waits for flush + fdatasync) and the in-memory log (no
//! disk at all). The difference is what durability costs a caller; what is left with the
//! in-memory log is the client, QUIC, the network task, the shard hand-offs and the engine.
//!
//! `cargo bench -p flashstock-bench --bench single_call` (`FLASHSTOCK_SINGLE_CALLERS=500` for
//! another caller count). Client and server share this machine's two cores.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashstock_client::{Client, ClientConfig};
use flashstock_engine::{BuyerId, SkuId};
use flashstock_runtime::{Runtime, RuntimeConfig, SystemClock};
use flashstock_tests::server::TestServer;
use flashstock_wal::MemWal;

const SKUS: u64 = 1_000;
const RUN: Duration = Duration::from_secs(8);
const WARMUP: Duration = Duration::from_secs(2);

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // nothing to list; `cargo test --benches` only checks it runs
    }
    let callers: u64 =
        std::env::var("FLASHSTOCK_SINGLE_CALLERS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let tokio =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for log in ["sled", "memory", "sled", "memory"] {
        let dir = tempfile::tempdir().unwrap();
        let config = RuntimeConfig { shard_count: 2, ..RuntimeConfig::default() };
        let addr = "127.0.0.1:0".parse().unwrap();
        let server = tokio.block_on(async {
            match log {
                "sled" => TestServer::start_configured(dir.path(), addr, config, None).await,
                _ => {
                    let runtime =
                        Runtime::start(config, MemWal::new(), Arc::new(SystemClock)).unwrap();
                    TestServer::start_on(runtime, dir.path(), addr, None).await
                }
            }
        });
        let (calls, histogram, secs) = tokio.block_on(run(&server, callers));
        println!(
            "single calls, {callers} callers, {log:<6} log: {:>7.0} reserves/s  p50 {:>5} us  p99 {:>6} us  p99.9 {:>6} us  max {:>6} us",
            calls as f64 / secs,
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.value_at_quantile(0.999),
            histogram.max(),
        );
        tokio.block_on(server.stop());
    }
}

/// Runs the callers for `WARMUP` + `RUN`; returns the calls and latencies of `RUN`.
async fn run(server: &TestServer, callers: u64) -> (u64, hdrhistogram::Histogram<u64>, f64) {
    let admin =
        ClientConfig::new(server.addr, "localhost", server.tls(), Some(&server.admin_token));
    let admin = Client::connect(admin).await.unwrap();
    for sku in 0..SKUS {
        admin.set_stock(SkuId(sku), 1 << 40).await.unwrap();
    }
    let config =
        ClientConfig::new(server.addr, "localhost", server.tls(), Some(&server.service_token));
    let client = Client::connect(config).await.unwrap();
    let (measuring, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (client, measuring, done) = (client.clone(), measuring.clone(), done.clone());
            tokio::spawn(async move {
                let mut latencies_us = Vec::new();
                let mut n = caller;
                while !done.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let sku = SkuId(flashstock_engine::mix64(n) % SKUS);
                    client.reserve(BuyerId(n), sku, 1, 2_000).await.unwrap();
                    if measuring.load(Ordering::Relaxed) {
                        latencies_us.push(sent.elapsed().as_micros() as u64);
                    }
                    n += callers;
                }
                latencies_us
            })
        })
        .collect();
    tokio::time::sleep(WARMUP).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(RUN).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for task in tasks {
        for latency_us in task.await.unwrap() {
            histogram.saturating_record(latency_us);
        }
    }
    (histogram.len(), histogram, secs)
}
