//! The Grafana dashboard against what a running server and order writer export: every metric
//! a panel queries must be in a scrape, or the panel would be empty in production.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flashstock_client::{Client, ClientConfig, ServerFiles};
use flashstock_engine::{BuyerId, Outcome, SkuId};
use flashstock_order_writer::{WriterConfig, WriterStats};
use flashstock_protocol::Role;
use flashstock_server::daemon::{self, Listening, Settings};

/// Every `flashstock_*` metric the dashboard's queries name, as exported (histograms by their
/// base name: `_bucket`, `_sum` and `_count` are the exporter's).
fn dashboard_metrics() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/grafana/flashstock.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (start, _) in expr.match_indices("flashstock_") {
                let name: String = expr[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

/// The metric names in a Prometheus text scrape.
fn exported(scrape: &str) -> BTreeSet<String> {
    let series = scrape.lines().filter(|line| !line.starts_with('#') && !line.is_empty());
    let name = |line: &str| line.split(['{', ' ']).next().unwrap().to_owned();
    series.map(name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_listen: Some("127.0.0.1:0".to_owned()),
        data_dir: Some(dir.path().join("server")),
        shards: Some(2),
        // Snapshots, so that their metrics exist.
        snapshot_every_records: Some(10),
        ..Settings::default()
    };
    let (listening_tx, listening_rx) = tokio::sync::oneshot::channel::<Listening>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon::run(
        settings,
        move |listening| drop(listening_tx.send(listening.clone())),
        tokio::sync::mpsc::channel(1).1,
        async move { drop(stopped.await) },
    ));
    let listening = listening_rx.await.unwrap();
    let files = ServerFiles::new(dir.path().join("server"));
    let connect = |role| {
        let token = files.token(None, role, None).unwrap();
        let tls = files.tls(None).unwrap();
        Client::connect(ClientConfig::new(listening.listen, "localhost", tls, Some(&token)))
    };
    let consumer_token = files.token(None, Role::Consumer, Some("order-writer")).unwrap();
    let url = format!("sqlite:{}", dir.path().join("orders.db").display());
    let config =
        WriterConfig::new(listening.listen, files.tls(None).unwrap(), consumer_token, vec![url]);
    flashstock_order_writer::writer::metric::describe();
    // Subscribed before the sale: snapshots every 10 records truncate the log behind them.
    let stats = Arc::new(WriterStats::default());
    let writer =
        tokio::spawn(flashstock_order_writer::run(config, stats.clone(), std::future::pending()));
    let subscribed = tokio::time::Instant::now() + Duration::from_secs(20);
    while !stats.health.ready() {
        assert!(tokio::time::Instant::now() < subscribed, "{:?}", stats.health);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin = connect(Role::Admin).await.unwrap();
    admin.set_stock(SkuId(1), 50).await.unwrap();
    for buyer in 0..40 {
        let Outcome::Reserved { reservation, .. } =
            admin.reserve(BuyerId(buyer), SkuId(1), 1, 60_000).await.unwrap()
        else {
            panic!("in stock")
        };
        admin.confirm(reservation).await.unwrap();
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stats.rows_inserted.load(std::sync::atomic::Ordering::Relaxed) < 40 {
        assert!(tokio::time::Instant::now() < deadline, "no orders stored: {}", stats.summary());
        assert!(!writer.is_finished(), "the writer stopped: {:?}", writer.await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The gauges read off state are sampled every second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let addr = listening.metrics.unwrap();
    let scrape = tokio::task::spawn_blocking(move || {
        flashstock_observe::fetch(addr, "/metrics", Duration::from_secs(5))
    })
    .await
    .unwrap()
    .unwrap();
    let exported = exported(&scrape.body);
    let wanted = dashboard_metrics();
    assert!(wanted.len() >= 25, "the dashboard queries {} metrics", wanted.len());
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| {
            let base = [name.as_str(), &format!("{name}_bucket"), &format!("{name}_count")];
            !base.iter().any(|series| exported.contains(*series))
        })
        .collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}\n{}", scrape.body);

    writer.abort();
    admin.close().await;
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
