//! End to end over loopback QUIC, client and server in one process on this machine's 2 cores:
//! `Client` (automatic batching) → QUIC/TLS → sessions → shard actors → group-committed sled
//! WAL → replies. Every answer is durable before it is sent.
//!
//! - `flash_sale`: a hot SKU with 1% of the demand in stock (most answers are "sold out");
//! - `reserve`: every reserve succeeds (short holds, expired by the server), all on one SKU,
//!   so one shard does all the work;
//! - `reserve_64skus`: the same spread over 64 SKUs, so over every shard;
//! - `reserve_spread2`: `reserve`'s one SKU spread over two buckets on both shards
//!   (docs/hot-skus.md).
//!
//! Each with 1 and 8 connections and 4,096 calls in flight. `FLASHSTOCK_BENCH_METRICS=1` runs
//! it with the Prometheus recorder installed, as `flashstockd` runs by default.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flashstock_client::{Client, ClientConfig, Connection};
use flashstock_engine::{BuyerId, Command, Outcome, RequestId, Reserve, SkuId};
use flashstock_protocol::{Reply, Request};
use flashstock_tests::server::TestServer;

/// The allocator `flashstockd` runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const IN_FLIGHT: u64 = 4_096;

/// (name, units in stock per SKU, hold ttl, SKUs, buckets per SKU): a flash sale with 1% of
/// the demand in stock, and holds that all succeed and lapse quickly, on one SKU, on one SKU
/// spread over two buckets, or over 64 SKUs.
const SCENARIOS: [(&str, u64, u64, u64, u32); 4] = [
    ("flash_sale", CALLS / 100, 600_000, 1, 1),
    ("reserve", 1 << 40, 2_000, 1, 1),
    ("reserve_spread2", 1 << 40, 2_000, 1, 2),
    ("reserve_64skus", 1 << 40, 2_000, 64, 1),
];

/// Runs `iters` sales, each on `skus` fresh SKUs stocked with `units` (and spread over
/// `buckets`) before the clock starts, and returns the time spent in `sale` alone. `sale`
/// gets the first of the SKUs.
fn timed_sales<F: std::future::Future<Output = ()>>(
    tokio: &tokio::runtime::Runtime,
    admin: &Client,
    next_sku: &AtomicU64,
    (units, skus, buckets): (u64, u64, u32),
    iters: u64,
    sale: impl Fn(SkuId) -> F,
) -> Duration {
    let mut elapsed = Duration::ZERO;
    for _ in 0..iters {
        let sku = SkuId(next_sku.fetch_add(skus, Ordering::Relaxed));
        for offset in 0..skus {
            let on = SkuId(sku.0 + offset);
            tokio.block_on(admin.set_stock(on, units)).unwrap();
            if buckets > 1 {
                let spread = tokio.block_on(admin.set_buckets(on, buckets)).unwrap();
                assert_eq!(spread, Outcome::BucketsSet { buckets });
            }
        }
        let started = Instant::now();
        tokio.block_on(sale(sku));
        elapsed += started.elapsed();
    }
    elapsed
}
const CALLS: u64 = 100_000;

fn e2e(c: &mut Criterion) {
    // With FLASHSTOCK_BENCH_METRICS set, the Prometheus recorder records as in flashstockd
    // (metrics on): the same build then measures metrics' cost on the hot path.
    if std::env::var_os("FLASHSTOCK_BENCH_METRICS").is_some() {
        flashstock_observe::install().expect("the recorder installs");
    }
    let tokio =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = tokio.block_on(TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()));
    let admin = tokio.block_on(async {
        let config =
            ClientConfig::new(server.addr, "localhost", server.tls(), Some(&server.admin_token));
        Client::connect(config).await.unwrap()
    });
    let next_sku = Arc::new(AtomicU64::new(1_000));
    let mut group = c.benchmark_group("e2e");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(CALLS));
    for connections in [1usize, 8] {
        let client = tokio.block_on(async {
            let mut config = ClientConfig::new(
                server.addr,
                "localhost",
                server.tls(),
                Some(&server.service_token),
            );
            config.connections = connections;
            Client::connect(config).await.unwrap()
        });
        for (name, units, ttl_ms, skus, buckets) in SCENARIOS {
            group.bench_function(BenchmarkId::new(name, connections), |b| {
                b.iter_custom(|iters| {
                    timed_sales(&tokio, &admin, &next_sku, (units, skus, buckets), iters, |sku| {
                        race(&client, sku, skus, ttl_ms)
                    })
                })
            });
        }
    }
    // Explicit batches over raw connections, 64 batches in flight per connection: what the
    // server and the protocol sustain without the client library's per-call machinery.
    for (connections, batch) in [(1usize, 64u64), (8, 64), (1, 256), (8, 256)] {
        let raw: Vec<Arc<Connection>> = tokio.block_on(async {
            let mut raw = Vec::new();
            for _ in 0..connections {
                raw.push(Arc::new(server.connect(&server.service_token).await));
            }
            raw
        });
        for (name, units, ttl_ms, skus, buckets) in SCENARIOS {
            let name = format!("batched{batch}_{name}");
            group.bench_function(BenchmarkId::new(name, connections), |b| {
                b.iter_custom(|iters| {
                    timed_sales(&tokio, &admin, &next_sku, (units, skus, buckets), iters, |sku| {
                        batched_race(&raw, sku, skus, ttl_ms, batch)
                    })
                })
            });
        }
    }
    group.finish();
    for in_flight in [64, IN_FLIGHT] {
        tokio.block_on(latency(&server, &admin, &next_sku, in_flight));
    }
    tokio.block_on(server.stop());
}

/// Per-call latency through the client API (1 connection, `in_flight` calls at a time, flash
/// sale), from an HDR histogram: criterion reports time per 100,000 calls, not per call. By
/// Little's law latency grows with the calls in flight once throughput saturates.
async fn latency(server: &TestServer, admin: &Client, next_sku: &AtomicU64, in_flight: u64) {
    let config =
        ClientConfig::new(server.addr, "localhost", server.tls(), Some(&server.service_token));
    let client = Client::connect(config).await.unwrap();
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for _ in 0..5 {
        let sku = SkuId(next_sku.fetch_add(1, Ordering::Relaxed));
        admin.set_stock(sku, CALLS / 100).await.unwrap();
        let next = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..in_flight)
            .map(|_| {
                let (client, next) = (client.clone(), next.clone());
                tokio::spawn(async move {
                    let mut latencies_us = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < CALLS {
                        let sent = Instant::now();
                        client
                            .reserve(BuyerId(sent.elapsed().as_nanos() as u64), sku, 1, 600_000)
                            .await
                            .unwrap();
                        latencies_us.push(sent.elapsed().as_micros() as u64);
                    }
                    latencies_us
                })
            })
            .collect();
        for task in tasks {
            for latency_us in task.await.unwrap() {
                histogram.saturating_record(latency_us);
            }
        }
    }
    println!(
        "e2e latency, client API, 1 connection, {in_flight} in flight, flash sale: p50 {} us, p99 {} us, p99.9 {} us, max {} us ({} calls)",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max(),
        histogram.len()
    );
}

/// `CALLS` reserves in batches of `batch`, 64 batches in flight per connection, buyer `b` on
/// SKU `sku + b % skus`.
async fn batched_race(
    connections: &[Arc<Connection>],
    sku: SkuId,
    skus: u64,
    ttl_ms: u64,
    batch: u64,
) {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for connection in connections {
        for _ in 0..64 {
            let (connection, next) = (connection.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= CALLS {
                        break;
                    }
                    let batch = (first..(first + batch).min(CALLS))
                        .map(|buyer| {
                            Request::Apply(Command::Reserve(Reserve {
                                request: RequestId(u128::from(sku.0) << 64 | u128::from(buyer)),
                                buyer: BuyerId(buyer),
                                sku: SkuId(sku.0 + buyer % skus),
                                qty: 1,
                                ttl_ms,
                                order_ref: None,
                            }))
                        })
                        .collect();
                    let replies = connection.call(batch).await.unwrap();
                    assert!(replies.iter().all(|r| matches!(
                        r,
                        Reply::Outcome(Outcome::Reserved { .. } | Outcome::SoldOut { .. })
                    )));
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// `CALLS` buyers, `IN_FLIGHT` at a time, each reserving one unit, buyer `b` on SKU
/// `sku + b % skus`.
async fn race(client: &Client, sku: SkuId, skus: u64, ttl_ms: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let buyer = next.fetch_add(1, Ordering::Relaxed);
                    if buyer >= CALLS {
                        break;
                    }
                    let on = SkuId(sku.0 + buyer % skus);
                    let outcome = client.reserve(BuyerId(buyer), on, 1, ttl_ms).await;
                    assert!(
                        matches!(outcome, Ok(Outcome::Reserved { .. } | Outcome::SoldOut { .. })),
                        "{outcome:?}"
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

criterion_group!(benches, e2e);
criterion_main!(benches);
