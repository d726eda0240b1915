//! The order writer as a real process, SIGKILLed ten times at random moments while a sale
//! streams in: the rows still come out exactly one per confirm, with none lost and none
//! doubled (the acknowledgement follows the commit, and the primary key absorbs redelivery).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flashstock_engine::SkuId;
use flashstock_order_writer::OrderStore;
use flashstock_tests::proxy::TcpProxy;
use flashstock_tests::server::TestServer;
use flashstock_tests::Rng;

use common::*;

const CONFIRMS: u64 = 3_000;

fn spawn_writer(server: &TestServer, url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_order-writer"))
        .args(["--server", &server.addr.to_string(), "--consumer", "killed-writer"])
        .args(["--token", &server.consumer_token, "--database-url", url])
        // Small transactions, so that a kill lands between commits and acks often.
        .args(["--batch-events-max", "16", "--linger-ms", "0", "--window-events", "64"])
        .arg("--cert")
        .arg(&server.cert)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_ten_times_mid_stream_the_writer_still_writes_each_order_once() {
    let seed = std::env::var("FLASHSTOCK_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(Rng::seed_from_time);
    println!("seed {seed} (FLASHSTOCK_KILL_SEED replays it)");
    let mut rng = Rng::new(seed);

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let admin = client(&server, &server.admin_token).await;
    admin.set_stock(SkuId(1), CONFIRMS + 1_000).await.unwrap();
    let service = client(&server, &server.service_token).await;
    let url = postgres_database().await;
    let store = OrderStore::connect(std::slice::from_ref(&url)).await.unwrap();
    // The writer reaches PostgreSQL through a proxy that delays every packet 2 ms: a slow
    // database, so the writer spends most of its time inside transactions, where a kill
    // between an acknowledgement and its commit would lose rows if the order were wrong.
    let proxy =
        TcpProxy::start_with_delay("127.0.0.1:5432".parse().unwrap(), Duration::from_millis(2))
            .await;
    let writer_url = url.replace("127.0.0.1:5432", &proxy.addr.to_string());

    // Half the sale happens before the first writer starts, so each writer has a backlog to
    // chew through in small transactions when it is killed; the other half streams in, paced,
    // while the kills go on.
    let mut sold = sell(&service, SkuId(1), 0, CONFIRMS / 2).await;
    let sale = {
        let service = service.clone();
        tokio::spawn(async move {
            let mut sold = Vec::new();
            for chunk in 0..15 {
                sold.extend(sell(&service, SkuId(1), CONFIRMS / 2 + chunk * 100, 100).await);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            sold
        })
    };
    let mut rows_at_kills = Vec::new();
    for _ in 0..10 {
        let mut writer = spawn_writer(&server, &writer_url);
        tokio::time::sleep(Duration::from_millis(50 + rng.below(300))).await;
        writer.kill().unwrap(); // SIGKILL
        writer.wait().unwrap();
        rows_at_kills.push(store.count("confirmed").await.unwrap());
    }
    sold.extend(sale.await.unwrap());
    assert_eq!(sold.len() as u64, CONFIRMS);
    println!("rows at each kill: {rows_at_kills:?}");
    let mid_stream = rows_at_kills.iter().filter(|&&rows| rows > 0 && rows < CONFIRMS).count();
    assert!(mid_stream >= 5, "most kills landed mid-stream: {rows_at_kills:?}");

    let mut last = spawn_writer(&server, &writer_url);
    wait_for_rows(&store, "confirmed", CONFIRMS, Duration::from_secs(120)).await;
    last.kill().unwrap();
    last.wait().unwrap();
    store.close().await;
    service.close().await;
    admin.close().await;
    server.stop().await;
}
