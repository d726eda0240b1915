//! Shared by the order writer's tests: a database of its own per test on each backend, a
//! flashstock server with a SKU on sale, and a way to sell and to wait for rows.

#![allow(dead_code)] // each test file uses a different part

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashstock_client::{Client, ClientConfig};
use flashstock_engine::{BuyerId, OrderRef, Outcome, ReservationId, SkuId};
use flashstock_order_writer::OrderStore;
use flashstock_tests::server::TestServer;
use sqlx::Connection;

pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MYSQL_ADMIN_URL: &str = "mysql://root@127.0.0.1:3306/test";

static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

/// A database name no other test (or test run) uses.
fn unique_name() -> String {
    let n = NEXT_DATABASE.fetch_add(1, Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("fs_ow_{}_{}_{n}", std::process::id(), nanos)
}

/// A fresh PostgreSQL database; returns its URL.
pub async fn postgres_database() -> String {
    let name = unique_name();
    let mut admin = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

/// A fresh MySQL/MariaDB database; returns its URL.
pub async fn mysql_database() -> String {
    let name = unique_name();
    let mut admin = sqlx::MySqlConnection::connect(MYSQL_ADMIN_URL).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    format!("mysql://root@127.0.0.1:3306/{name}")
}

/// A fresh SQLite file in `dir`; returns its URL.
pub fn sqlite_database(dir: &std::path::Path) -> String {
    format!("sqlite:{}", dir.join(format!("{}.db", unique_name())).display())
}

pub async fn client(server: &TestServer, token: &str) -> Client {
    let config = ClientConfig::new(server.addr, "localhost", server.tls(), Some(token));
    Client::connect(config).await.unwrap()
}

/// Reserves and confirms `count` units of `sku` for buyers `first_buyer..`, concurrently over
/// 16 tasks; every third confirm carries an order reference. Also cancels one reservation per
/// 10 sold, so the stream carries more than confirms. Returns the confirmed reservations.
pub async fn sell(
    service: &Client,
    sku: SkuId,
    first_buyer: u64,
    count: u64,
) -> Vec<ReservationId> {
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let service = service.clone();
            tokio::spawn(async move {
                let mut confirmed = Vec::new();
                for buyer in (first_buyer..first_buyer + count).filter(|b| b % 16 == task) {
                    let Outcome::Reserved { reservation, .. } =
                        service.reserve(BuyerId(buyer), sku, 1, 60_000).await.unwrap()
                    else {
                        panic!("stock for every buyer");
                    };
                    let outcome = if buyer % 3 == 0 {
                        service.confirm_order(reservation, OrderRef(u128::from(buyer))).await
                    } else {
                        service.confirm(reservation).await
                    };
                    assert_eq!(outcome.unwrap(), Outcome::Confirmed);
                    confirmed.push(reservation);
                    if buyer % 10 == 0 {
                        let Outcome::Reserved { reservation, .. } =
                            service.reserve(BuyerId(buyer), sku, 1, 60_000).await.unwrap()
                        else {
                            panic!("stock for every buyer");
                        };
                        service.cancel(reservation).await.unwrap();
                    }
                }
                confirmed
            })
        })
        .collect();
    let mut confirmed = Vec::new();
    for task in tasks {
        confirmed.extend(task.await.unwrap());
    }
    confirmed
}

/// Waits until the store holds `count` rows of `status` (and then a moment longer, to catch
/// rows beyond it); panics after `timeout`.
pub async fn wait_for_rows(store: &OrderStore, status: &str, count: u64, timeout: Duration) {
    let started = Instant::now();
    loop {
        let rows = store.count(status).await.unwrap();
        assert!(rows <= count, "{rows} {status} rows, expected {count}: duplicates");
        if rows == count {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(store.count(status).await.unwrap(), count, "rows beyond the expected");
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "only {rows} of {count} {status} rows after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reserves and confirms `count` carts of three lines (SKUs 2, 3 and 4, one unit each), one
/// after another; returns the carts.
pub async fn sell_carts(service: &Client, first_buyer: u64, count: u64) -> Vec<ReservationId> {
    let lines = [(SkuId(2), 1), (SkuId(3), 1), (SkuId(4), 1)];
    let mut carts = Vec::new();
    for buyer in first_buyer..first_buyer + count {
        let Outcome::Reserved { reservation, .. } =
            service.reserve_cart(BuyerId(buyer), &lines, 60_000).await.unwrap()
        else {
            panic!("stock for every cart");
        };
        assert_eq!(service.confirm(reservation).await.unwrap(), Outcome::Confirmed);
        carts.push(reservation);
    }
    carts
}
