//! The `flashstock` command line against a real server: what an operator types, what the
//! server then holds, and what the command prints.

use clap::Parser;
use flashstock_admin::{run, Cli, Report};
use flashstock_tests::server::TestServer;

/// Where the command line points: a server's address, certificate and admin token.
struct Target {
    addr: std::net::SocketAddr,
    cert: std::path::PathBuf,
    token: String,
}

impl From<&TestServer> for Target {
    fn from(server: &TestServer) -> Target {
        Target { addr: server.addr, cert: server.cert.clone(), token: server.admin_token.clone() }
    }
}

async fn flashstock(target: impl Into<Target>, args: &str) -> Report {
    let target = target.into();
    let mut argv = vec!["flashstock".to_owned(), "--server".to_owned(), target.addr.to_string()];
    argv.extend(["--cert".to_owned(), target.cert.display().to_string()]);
    argv.extend(["--token".to_owned(), target.token]);
    argv.extend(args.split_whitespace().map(str::to_owned));
    run(&Cli::try_parse_from(argv).unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sets_up_and_inspects_a_sale_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;

    assert!(flashstock(&server, "sku set 7 100").await.ok);
    // An adjustment run twice under one key (a timeout, then the same command again) is
    // applied once; under another key it is another change.
    assert!(flashstock(&server, "--key ticket-1 sku adjust 7 -5").await.ok);
    assert!(flashstock(&server, "--key ticket-1 sku adjust 7 -5").await.ok);
    assert_eq!(flashstock(&server, "sku get 7").await.rows[0][1], "95");
    assert!(flashstock(&server, "--key ticket-2 sku adjust 7 -5").await.ok);
    assert!(flashstock(&server, "sku set 8 5").await.ok);
    assert!(flashstock(&server, "sku limit set 7 2").await.ok);
    assert!(
        flashstock(&server, "sku window set 7 --opens-at-ms 1000 --closes-at-ms 2000").await.ok
    );
    let got = flashstock(&server, "sku get 7").await;
    assert!(got.ok);
    assert_eq!(got.rows, [["7", "90", "90", "0", "0", "2", "1000", "2000"]]);
    let table = got.render(false);
    assert!(table.starts_with("sku  total  available  reserved  sold  limit"), "{table}");

    // Refusals and misses are reports that fail (exit status 1), with the engine's reason.
    let refused = flashstock(&server, "sku window set 7 --opens-at-ms 5 --closes-at-ms 5").await;
    assert!(!refused.ok);
    assert_eq!(refused.json["outcome"], "invalid_window");
    let refused = flashstock(&server, "sku adjust 8 -6").await;
    assert_eq!(
        (refused.ok, refused.json["outcome"].as_str()),
        (false, Some("insufficient_available"))
    );
    assert!(!flashstock(&server, "sku get 9").await.ok);
    assert!(!flashstock(&server, "reservation get 12345").await.ok);

    assert!(flashstock(&server, "sku limit clear 7").await.ok);
    assert!(flashstock(&server, "sku window clear 7").await.ok);
    let listed = flashstock(&server, "sku list --json").await;
    let skus: Vec<(u64, u64)> = listed.json["skus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sku| (sku["sku"].as_u64().unwrap(), sku["available"].as_u64().unwrap()))
        .collect();
    assert_eq!(skus, [(7, 90), (8, 5)]);
    assert_eq!(listed.json["skus"][0]["buyer_limit"], serde_json::Value::Null);
    let first = flashstock(&server, "sku list --limit 1").await;
    assert_eq!(first.rows.len(), 1);
    assert_eq!(first.json["next_after"], 7);
    assert_eq!(flashstock(&server, "sku list --limit 1 --all").await.rows.len(), 2);

    // A hot SKU spread over the test server's two shards lists and reads as one SKU.
    assert!(flashstock(&server, "sku spread 8 2").await.ok);
    let again = flashstock(&server, "sku spread 8 2").await;
    assert_eq!((again.ok, again.json["outcome"].as_str()), (false, Some("bucketed")));
    let wide = flashstock(&server, "sku spread 7 3").await;
    assert_eq!((wide.ok, wide.json["outcome"].as_str()), (false, Some("invalid_buckets")));
    assert_eq!(flashstock(&server, "sku list --all").await.rows.len(), 2);
    assert_eq!(flashstock(&server, "sku get 8 --json").await.json["skus"][0]["available"], 5);

    let limits = flashstock(&server, "rate-limit set --sku 7 --per-buyer-per-s 2").await;
    assert!(limits.ok);
    assert_eq!(limits.rows, [["global", "-", "-"], ["7", "2", "-"]]);
    let zero = flashstock(&server, "rate-limit set --per-credential-per-s 0").await;
    assert!(!zero.ok, "{}", zero.render(false));
    assert_eq!(flashstock(&server, "rate-limit list").await.rows.len(), 2);

    let consumers = flashstock(&server, "consumer list").await;
    assert!(consumers.ok && consumers.rows.is_empty());
    assert!(!flashstock(&server, "consumer remove nobody").await.ok);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_whether_the_server_answers_and_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let health = flashstock_observe::Health::new();
    health.set("recovery", Ok(()));
    let listener = flashstock_observe::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let observed = flashstock_observe::Observed {
        metrics: flashstock_observe::install().unwrap(),
        health: health.clone(),
    };
    let limits = flashstock_observe::HttpLimits::default();
    tokio::spawn(flashstock_observe::serve(listener, observed, limits, std::future::pending()));

    let check = format!("health --metrics {metrics_addr}");
    let healthy = flashstock(&server, &check).await;
    assert!(healthy.ok, "{}", healthy.render(false));
    assert!(healthy.render(false).contains("[+]recovery ok"));
    health.set("recovery", Err("recovering".into()));
    let unready = flashstock(&server, &check).await;
    assert!(!unready.ok);
    assert!(unready.render(false).contains("[-]recovery failed: recovering"));
    let target = Target::from(&server);
    server.stop().await;
    let down = flashstock(target, &check).await;
    assert!(!down.ok, "{}", down.render(false));
}

/// Each run of the command line closes its connection before it exits: a server allowing two
/// connections per address serves any number of runs one after another (a run that left its
/// connection to the idle timeout would hold a slot for 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_the_command_line_do_not_leave_connections_behind() {
    use flashstock_runtime::{Runtime, RuntimeConfig, SystemClock};
    use flashstock_server::net::NetLimits;
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { shard_count: 2, ..RuntimeConfig::default() };
    let runtime = Runtime::open(dir.path(), config, std::sync::Arc::new(SystemClock)).unwrap();
    let limits = NetLimits { connections_per_address_max: 2, ..NetLimits::default() };
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start_limited(runtime, dir.path(), addr, None, limits).await;
    for run in 0..5 {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_flashstock"));
        command.args(["--server", &server.addr.to_string(), "--cert"]).arg(&server.cert);
        command.args(["--token", &server.admin_token, "sku", "set", "1", &run.to_string()]);
        let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "run {run}: {stderr}");
    }
    server.stop().await;
}

/// `flashstock --etcd URL --cluster-prefix P ...` for a cluster in the machine's etcd.
async fn flashstock_cluster(
    prefix: &str,
    args: &str,
) -> Result<Report, flashstock_admin::AdminError> {
    let mut argv =
        vec!["flashstock", "--etcd", "http://127.0.0.1:2379", "--cluster-prefix", prefix];
    argv.extend(args.split_whitespace());
    run(&Cli::try_parse_from(argv).unwrap()).await
}

#[tokio::test]
async fn an_operator_initialises_a_clusters_map_once_and_reads_it() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let prefix = format!("/flashstock-test/cli-{}-{}", std::process::id(), nanos.as_nanos());
    let empty = flashstock_cluster(&prefix, "cluster show").await.unwrap();
    assert!(!empty.ok && empty.note.as_deref().unwrap().contains("no shard map"), "{empty:?}");
    let init = flashstock_cluster(&prefix, "cluster init a b").await.unwrap();
    assert!(init.ok);
    assert_eq!(init.rows, [["0", "2047", "a", "-"], ["2048", "4095", "b", "-"]]);
    let shown = flashstock_cluster(&prefix, "cluster show").await.unwrap();
    assert_eq!(shown.json["ranges"][1]["server"], "b");
    assert_eq!(shown.rows[0][3], "(not registered)", "no server of it runs");
    // A second init would give SKUs to new owners without their state: refused.
    let again = flashstock_cluster(&prefix, "cluster init c").await.unwrap_err();
    assert!(again.to_string().contains("read it again"), "{again}");
    let bad = flashstock_cluster(&prefix, "--json cluster show").await.unwrap();
    assert_eq!(bad.json["revision"], shown.json["revision"], "nothing changed");
    // Without --etcd, cluster commands say what they need.
    let argv = ["flashstock", "cluster", "show"];
    let err = run(&Cli::try_parse_from(argv).unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("--etcd"), "{err}");
}
