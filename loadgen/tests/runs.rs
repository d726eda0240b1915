//! Short runs of the load generator: against an in-test flashstock server and against the
//! Redis on this machine, each must pass its audit; and the audit must catch an oversell in
//! the counts it is given.

use std::time::Duration;

use flashstock_loadgen::audit::audit;
use flashstock_loadgen::report::Report;
use flashstock_loadgen::run::RunConfig;
use flashstock_loadgen::scenario::Scenario;
use flashstock_loadgen::{execute, CallMode, LoadOptions, TargetSpec};
use flashstock_tests::server::TestServer;

fn options(target: TargetSpec, scenario: Scenario, requests: u64) -> LoadOptions {
    LoadOptions {
        target,
        scenario,
        run: run_config(requests),
        ttl_ms: 600_000,
        orders_db: Vec::new(),
    }
}

fn run_config(requests: u64) -> RunConfig {
    RunConfig {
        concurrency: 8,
        batch: 64,
        rate_per_s: None,
        duration: None,
        requests,
        warmup: Duration::ZERO,
        seed: 42,
        progress: false,
    }
}

fn flashstock(server: &TestServer) -> TargetSpec {
    TargetSpec::Flashstock {
        addr: server.addr,
        server_name: "localhost".to_owned(),
        tls: server.tls(),
        admin_token: server.admin_token.clone(),
        service_token: server.service_token.clone(),
        connections: 2,
        calls: CallMode::Frames,
        http_addr: server.http,
        cluster: None,
    }
}

/// An order writer into a SQLite file in `dir`, running until its sender is sent to: the
/// database's URL, the stop, and the writer's task.
fn start_writer(
    server: &TestServer,
    dir: &std::path::Path,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), flashstock_order_writer::WriterError>>,
) {
    use flashstock_order_writer::{run as write_orders, WriterConfig, WriterStats};
    let url = format!("sqlite:{}", dir.join("orders.db").display());
    let config = WriterConfig::new(
        server.addr,
        server.tls(),
        server.consumer_token.clone(),
        vec![url.clone()],
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let writer =
        tokio::spawn(write_orders(config, std::sync::Arc::new(WriterStats::default()), async {
            let _ = stopped.await;
        }));
    (url, stop, writer)
}

const FLASH_SALE: Scenario =
    Scenario::FlashSale { units: 500, buyers: 20_000, buyer_limit: Some(1), buckets: None };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_sale_against_flashstock_passes_its_audit_and_an_oversell_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let options = options(flashstock(&server), FLASH_SALE, 20_000);
    let finished = execute(options).await.unwrap();
    assert!(finished.audit.passed, "{:?}", finished.audit);
    assert_eq!(finished.result.ops_total, 20_000);
    assert_eq!(finished.result.outcomes["reserved"], 500);
    assert_eq!(finished.result.outcomes["sold_out"], 19_500);
    assert_eq!((finished.audit.totals.reserved, finished.audit.totals.available), (500, 0));

    // The same counts with one unit sold twice over (the oversell the audit exists for).
    let mut oversold = finished.counts.clone();
    oversold[0].sold += 1;
    oversold[0].total = oversold[0].reserved + oversold[0].sold - 1;
    let verdict = audit(&oversold, &finished.result.acked, finished.expiry_possible);
    assert!(!verdict.passed);
    let failed: Vec<_> = verdict.checks.iter().filter(|c| !c.passed).map(|c| c.name).collect();
    assert!(failed.contains(&"no_oversell"), "{failed:?}");
    // ...and a server that kept a hold nobody was told about.
    let mut phantom = finished.counts.clone();
    phantom[0].reserved -= 1;
    phantom[0].available += 1;
    let verdict = audit(&phantom, &finished.result.acked, false);
    assert!(!verdict.passed);

    // The report carries what the JSON consumers need.
    let report = Report {
        target: finished.target,
        target_detail: &finished.target_detail,
        scenario: "flash-sale",
        result: &finished.result,
        audit: &finished.audit,
        settings: serde_json::json!({}),
    };
    let json = report.json();
    for key in ["target", "scenario", "ops_total", "ops_per_s", "outcomes", "latency_us", "audit"] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(json["audit"]["passed"], true);
    assert!(
        json["latency_us"]["p999"].as_u64().unwrap() >= json["latency_us"]["p50"].as_u64().unwrap()
    );
    let files = tempfile::tempdir().unwrap();
    report.write_files(&files.path().join("run")).unwrap();
    let hgrm = std::fs::read_to_string(files.path().join("run.hgrm")).unwrap();
    assert!(hgrm.contains("Percentile") && hgrm.contains("Total count"), "{hgrm}");
    assert!(std::fs::read_to_string(files.path().join("run-latency.svg"))
        .unwrap()
        .contains("<svg"));
    server.stop().await;
}

/// A flash sale with the hot SKU spread over both shards and exactly as many buyers as
/// units: every buyer gets one, though their home buckets split them unevenly (the buckets
/// refill each other, so no buyer hears sold out while a unit is left); then the rest hear
/// sold out, and the audit, which reads the SKU as one, passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_sale_on_a_spread_hot_sku_sells_every_unit_and_passes_its_audit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut target = flashstock(&server);
    if let TargetSpec::Flashstock { calls, .. } = &mut target {
        *calls = CallMode::Client;
    }
    let scenario =
        Scenario::FlashSale { units: 500, buyers: 500, buyer_limit: Some(1), buckets: Some(2) };
    let mut options = options(target, scenario, 500);
    options.run.concurrency = 64;
    options.run.batch = 1;
    let finished = execute(options).await.unwrap();
    assert!(finished.audit.passed, "{:?}", finished.audit);
    assert_eq!(finished.result.outcomes["reserved"], 500, "{:?}", finished.result.outcomes);
    assert_eq!((finished.audit.totals.reserved, finished.audit.totals.available), (500, 0));
    server.stop().await;
}

/// Callers that each send one reserve at a time through the client library, as order
/// services do; and a timeline with points even though the run lasts well under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_one_request_at_a_time_pass_the_audit_and_a_short_run_has_a_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut target = flashstock(&server);
    if let TargetSpec::Flashstock { calls, .. } = &mut target {
        *calls = CallMode::Client;
    }
    let scenario =
        Scenario::FlashSale { units: 100, buyers: 3_000, buyer_limit: Some(1), buckets: None };
    let mut options = options(target, scenario, 3_000);
    options.run.concurrency = 50;
    options.run.batch = 1;
    let finished = execute(options).await.unwrap();
    assert!(finished.audit.passed, "{:?}", finished.audit);
    assert_eq!(finished.result.outcomes["reserved"], 100);
    assert_eq!(finished.result.ops_total, 3_000);
    let timeline = &finished.result.timeline;
    assert!(timeline.len() >= 3, "a sub-second run still plots: {timeline:?}");
    let width_s = finished.result.timeline_bucket_ms as f64 / 1e3;
    let counted: f64 = timeline
        .iter()
        .map(|p| p.ops_per_s * width_s.min(finished.result.elapsed_s - p.start_s))
        .sum();
    assert!((counted - 3_000.0).abs() < 30.0, "the timeline holds every answer: {counted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_run_against_flashstock_passes_its_audit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let checkout = Scenario::Checkout {
        skus: 20,
        units_per_sku: 1_000,
        confirm_probability: 0.7,
        abandon_fraction: 0.1,
        think_ms: 1,
    };
    let options = options(flashstock(&server), checkout, 5_000);
    let finished = execute(options).await.unwrap();
    assert!(finished.audit.passed, "{:?}", finished.audit);
    assert!(finished.result.outcomes["confirmed"] > 2_000, "{:?}", finished.result.outcomes);
    assert_eq!(finished.audit.totals.sold, finished.audit.acked.confirmed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_over_the_http_api_passes_its_audit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut target = flashstock(&server);
    if let TargetSpec::Flashstock { calls, .. } = &mut target {
        *calls = CallMode::Http;
    }
    let checkout = Scenario::Checkout {
        skus: 20,
        units_per_sku: 100,
        confirm_probability: 0.7,
        abandon_fraction: 0.1,
        think_ms: 1,
    };
    let mut options = options(target, checkout, 3_000);
    options.run.concurrency = 32;
    options.run.batch = 1;
    let finished = execute(options).await.unwrap();
    assert!(finished.audit.passed, "{:?}", finished.audit);
    let outcomes = &finished.result.outcomes;
    assert!(outcomes["confirmed"] > 500 && outcomes["sold_out"] > 0, "{outcomes:?}");
    assert_eq!(finished.audit.totals.sold, finished.audit.acked.confirmed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_sale_against_redis_passes_its_audit() {
    let redis = TargetSpec::Redis { url: "redis://127.0.0.1:6379".to_owned(), connections: 4 };
    let options = options(redis, FLASH_SALE, 20_000);
    let finished = execute(options).await.unwrap();
    assert!(finished.audit.passed, "{:?}", finished.audit);
    assert_eq!(finished.result.outcomes["reserved"], 500);
    assert_eq!(finished.result.outcomes["sold_out"], 19_500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_order_database_the_audit_checks_one_row_per_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let (url, stop, writer) = start_writer(&server, dir.path());
    let options = LoadOptions {
        target: flashstock(&server),
        scenario: Scenario::Checkout {
            skus: 5,
            units_per_sku: 1_000,
            confirm_probability: 0.8,
            abandon_fraction: 0.0,
            think_ms: 0,
        },
        run: run_config(2_000),
        ttl_ms: 600_000,
        orders_db: vec![url],
    };
    let finished = execute(options).await.unwrap();
    assert!(finished.audit.passed, "{:?}", finished.audit);
    let orders = finished.audit.checks.iter().find(|c| c.name == "orders_equal_confirms").unwrap();
    assert!(orders.passed && finished.audit.totals.sold > 1_000, "{:?}", finished.audit);
    let _ = stop.send(());
    writer.await.unwrap().unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_run_passes_its_audit_with_one_order_row_per_line_sold() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let (url, stop, writer) = start_writer(&server, dir.path());
    // Skewed carts over few units: the hot SKUs sell out, so some carts are refused whole.
    let carts = Scenario::Cart {
        skus: 30,
        units_per_sku: 100,
        skew: 1.0,
        lines_max: 4,
        buyers: None,
        confirm_probability: 0.7,
        abandon_fraction: 0.1,
        think_ms: 1,
    };
    let options = LoadOptions {
        target: flashstock(&server),
        scenario: carts,
        run: run_config(3_000),
        ttl_ms: 600_000,
        orders_db: vec![url],
    };
    let finished = execute(options).await.unwrap();
    assert!(finished.audit.passed, "{:?}", finished.audit);
    let outcomes = &finished.result.outcomes;
    assert!(outcomes["reserved"] > 300 && outcomes["sold_out"] > 100, "{outcomes:?}");
    assert!(outcomes["confirmed"] > 200, "{outcomes:?}");
    let orders = finished.audit.checks.iter().find(|c| c.name == "orders_equal_confirms").unwrap();
    assert!(orders.passed, "{:?}", finished.audit);
    assert_eq!(finished.audit.totals.sold, finished.audit.acked.confirmed);
    let _ = stop.send(());
    writer.await.unwrap().unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_run_through_a_cluster_of_three_servers_passes_its_audit() {
    use flashstock_client::{Client, ClientConfig, EtcdConfig};
    use flashstock_cluster::{ServerId, SlotMap};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let prefix = format!("/flashstock-test/loadgen-{}-{}", std::process::id(), nanos.as_nanos());
    let etcd = EtcdConfig::new(vec!["http://127.0.0.1:2379".into()], &prefix);
    let ids = ["a", "b", "c"].map(|id| ServerId(id.into()));
    flashstock_cluster_etcd::store_map(&etcd, &SlotMap::even(&ids).unwrap(), 0).await.unwrap();
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let mut servers = Vec::new();
    for (index, (dir, id)) in dirs.iter().zip(&ids).enumerate() {
        if index > 0 {
            // One certificate and one set of tokens for the whole cluster: a's.
            let from = dirs[0].path();
            std::fs::create_dir_all(dir.path().join("tls")).unwrap();
            for file in ["tls/cert.pem", "tls/key.pem", "tokens.toml"] {
                std::fs::copy(from.join(file), dir.path().join(file)).unwrap();
            }
        }
        servers.push(TestServer::start_in_cluster(dir.path(), &etcd, &id.0).await);
    }
    let (first, _) = &servers[0];
    let mut target = flashstock(first);
    if let TargetSpec::Flashstock { cluster, .. } = &mut target {
        *cluster = Some(Box::new(etcd.clone()));
    }
    let checkout = Scenario::Checkout {
        skus: 60,
        units_per_sku: 1_000,
        confirm_probability: 0.7,
        abandon_fraction: 0.1,
        think_ms: 1,
    };
    let finished = execute(options(target, checkout, 5_000)).await.unwrap();
    assert!(finished.audit.passed, "{:?}", finished.audit);
    assert!(finished.result.outcomes["confirmed"] > 2_000, "{:?}", finished.result.outcomes);
    assert_eq!(finished.audit.totals.sold, finished.audit.acked.confirmed);
    // Every server holds some of the run's SKUs, and no SKU is on two servers.
    let mut held = Vec::new();
    for (server, _) in &servers {
        let config =
            ClientConfig::new(server.addr, "localhost", server.tls(), Some(&server.admin_token));
        let client = Client::connect(config).await.unwrap();
        let skus: Vec<u64> =
            client.list_skus().await.unwrap().iter().map(|view| view.sku.0).collect();
        assert!(!skus.is_empty(), "{} holds none of the SKUs", server.addr);
        held.extend(skus);
        client.close().await;
    }
    let distinct: std::collections::BTreeSet<u64> = held.iter().copied().collect();
    assert_eq!((held.len(), distinct.len()), (60, 60), "each SKU on exactly one server");
    for (server, joined) in servers {
        server.stop().await;
        drop(joined);
    }
}
