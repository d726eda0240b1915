//! End-to-end lag from confirm to committed order row, at a steady confirm rate.
//!
//! One process, this machine's 2 cores: an in-process server (QUIC, sled WAL), an open-loop
//! load that every 10 ms sends a batch of reserves and then confirms them (so `rate` confirms/s
//! mean twice as many durable requests/s), and the order writer subscribed over QUIC and
//! writing to PostgreSQL (or SQLite). The lag of each row is the writer's commit time minus
//! the server's confirm time (same clock). Not a criterion suite: it is a soak with a
//! report, run as a benchmark:
//!
//! ```text
//! cargo bench -p flashstock-bench --bench order_lag            # 50k confirms/s, 10 s, postgres
//! FLASHSTOCK_LAG_RATE=20000 FLASHSTOCK_LAG_SECONDS=20 FLASHSTOCK_LAG_DB=sqlite cargo bench ...
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashstock_client::Connection;
use flashstock_engine::{BuyerId, Command, Outcome, RequestId, Reserve, SkuId};
use flashstock_order_writer::{run, WriterConfig, WriterStats};
use flashstock_protocol::{Reply, Request};
use flashstock_tests::server::TestServer;
use sqlx::Connection as _;

const TICK: Duration = Duration::from_millis(10);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn database_url(kind: &str, dir: &std::path::Path) -> String {
    if kind == "sqlite" {
        return format!("sqlite:{}", dir.join("orders.db").display());
    }
    let name = format!("fs_lag_{}", std::process::id());
    let mut admin =
        sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/test").await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

/// One tick's work: reserve `count` units, then confirm every reservation obtained.
async fn reserve_and_confirm(connection: Arc<Connection>, ids: Arc<AtomicU64>, count: u64) -> u64 {
    let first = ids.fetch_add(count * 2, Ordering::Relaxed);
    let reserves = (0..count)
        .map(|i| {
            Request::Apply(Command::Reserve(Reserve {
                request: RequestId(u128::from(first + i)),
                buyer: BuyerId(first + i),
                sku: SkuId(1),
                qty: 1,
                ttl_ms: 60_000,
                order_ref: None,
            }))
        })
        .collect();
    let Ok(replies) = connection.call(reserves).await else { return 0 };
    let confirms: Vec<Request> = replies
        .iter()
        .zip(first + count..)
        .filter_map(|(reply, id)| match reply {
            Reply::Outcome(Outcome::Reserved { reservation, .. }) => {
                Some(Request::Apply(Command::Confirm {
                    request: RequestId(u128::from(id)),
                    reservation: *reservation,
                    order_ref: None,
                }))
            }
            _ => None,
        })
        .collect();
    let Ok(replies) = connection.call(confirms).await else { return 0 };
    replies.iter().filter(|r| matches!(r, Reply::Outcome(Outcome::Confirmed))).count() as u64
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that does not match skips the run.
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"order_lag".contains(&a)) {
        return;
    }
    let rate: u64 = env_or("FLASHSTOCK_LAG_RATE", 50_000);
    let seconds: u64 = env_or("FLASHSTOCK_LAG_SECONDS", 10);
    let kind: String = env_or("FLASHSTOCK_LAG_DB", "postgres".to_owned());
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    tokio.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
        let admin = server.connect(&server.admin_token).await;
        let stock = Request::Apply(Command::SetStock {
            request: RequestId(u128::MAX),
            sku: SkuId(1),
            total: 1 << 40,
        });
        admin.call(vec![stock]).await.unwrap();
        let url = database_url(&kind, dir.path()).await;
        let stats = Arc::new(WriterStats::default());
        let config = WriterConfig::new(server.addr, server.tls(), server.consumer_token.clone(), vec![url]);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(run(config, stats.clone(), async {
            let _ = stopped.await;
        }));

        let connections: Vec<Arc<Connection>> = {
            let mut connections = Vec::new();
            for _ in 0..4 {
                connections.push(Arc::new(server.connect(&server.service_token).await));
            }
            connections
        };
        let ids = Arc::new(AtomicU64::new(1));
        let per_tick = (rate * TICK.as_millis() as u64 / 1_000).max(1);
        let mut ticks = tokio::time::interval(TICK);
        let mut inflight = tokio::task::JoinSet::new();
        let started = Instant::now();
        let mut n = 0usize;
        while started.elapsed() < Duration::from_secs(seconds) {
            ticks.tick().await;
            let connection = connections[n % connections.len()].clone();
            n += 1;
            inflight.spawn(reserve_and_confirm(connection, ids.clone(), per_tick));
        }
        let mut confirmed = 0;
        while let Some(done) = inflight.join_next().await {
            confirmed += done.unwrap();
        }
        let load_s = started.elapsed().as_secs_f64();
        let drain_started = Instant::now();
        while stats.rows_inserted.load(Ordering::Relaxed) < confirmed {
            assert!(drain_started.elapsed() < Duration::from_secs(60), "the writer fell behind");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let drain_ms = drain_started.elapsed().as_millis();
        let _ = stop.send(());
        writer.await.unwrap().unwrap();
        let lag = stats.lag_ms.lock().unwrap().clone();
        println!(
            "order_lag db={kind} offered={rate}/s confirmed={confirmed} ({:.0}/s over {load_s:.1} s) \
             rows={} commits={} lag_ms p50={} p90={} p99={} max={} drain_after_load_ms={drain_ms}",
            confirmed as f64 / load_s,
            stats.rows_inserted.load(Ordering::Relaxed),
            stats.commits.load(Ordering::Relaxed),
            lag.value_at_quantile(0.5),
            lag.value_at_quantile(0.9),
            lag.value_at_quantile(0.99),
            lag.max(),
        );
        server.stop().await;
    });
}
