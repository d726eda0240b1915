//! The order writer's database side: orders/s that `OrderStore::insert` commits, in batches
//! of 8,192 rows (one transaction each), into SQLite (a file, WAL journal, synchronous=FULL)
//! and into the PostgreSQL on this machine (UNNEST of bound arrays). Each iteration inserts
//! new reservations, so the table grows as it would in a sale.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flashstock_engine::{OrderRef, ReservationId, ReservationState, ShardId};
use flashstock_order_writer::{Database, OrderRow};
use sqlx::Connection;

const ROWS_PER_BATCH: u64 = 8_192;

fn rows(first: u64) -> Vec<OrderRow> {
    (first..first + ROWS_PER_BATCH)
        .map(|n| OrderRow {
            reservation: ReservationId::new(
                flashstock_engine::Slot(0),
                ShardId((n % 2) as u16),
                n + 1,
            ),
            line: 0,
            order_ref: (n % 3 == 0).then_some(OrderRef(u128::from(n) << 20)),
            buyer: n * 7,
            sku: 42,
            qty: 1,
            status: ReservationState::Confirmed,
            ended_at_ms: 1_700_000_000_000 + n,
            stream_shard: (n % 2) as u16,
            stream_seq: n,
        })
        .collect()
}

async fn postgres_url() -> String {
    let name = format!("fs_bench_{}", std::process::id());
    let mut admin =
        sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/test").await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

fn insert(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite:{}", dir.path().join("orders.db").display());
    let postgres = tokio.block_on(postgres_url());
    let next = AtomicU64::new(0);
    let mut group = c.benchmark_group("order_writer");
    group.throughput(Throughput::Elements(ROWS_PER_BATCH));
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    for (name, url) in [("sqlite", &sqlite), ("postgres", &postgres)] {
        let database = tokio.block_on(Database::connect(url)).unwrap();
        group.bench_function(BenchmarkId::new("insert_8192", name), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let batch = rows(next.fetch_add(ROWS_PER_BATCH, Ordering::Relaxed));
                    let started = Instant::now();
                    let written = tokio.block_on(database.write(&batch)).unwrap();
                    elapsed += started.elapsed();
                    assert_eq!(written.inserted, ROWS_PER_BATCH);
                }
                elapsed
            })
        });
        tokio.block_on(database.close());
    }
    group.finish();
}

criterion_group!(benches, insert);
criterion_main!(benches);
