//! The `flashstockd` binary as an operator runs it: it generates its TLS certificate and
//! tokens, serves over QUIC, stops cleanly on SIGTERM (exit 0, log flushed), and a restart
//! on the same data directory finds every acknowledged effect.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use flashstock_client::{Client, ClientConfig, ClientTls, Connection};
use flashstock_engine::{
    BuyerId, Command as Apply, Outcome, RequestId, ReservationState, Reserve, SkuId,
};
use flashstock_protocol::{Reply, Request};

mod common;
use common::{scrape, series_value, signal, start, start_on, terminate, token, Daemon};

async fn connect(daemon: &Daemon, role: &str) -> Connection {
    let tls = ClientTls::trust_pem_file(&daemon.cert).unwrap();
    Connection::connect(daemon.addr, "localhost", &tls, Some(&token(&daemon.tokens, role)))
        .await
        .unwrap()
}

async fn outcome(connection: &Connection, command: Apply) -> Outcome {
    match connection.call(vec![Request::Apply(command)]).await.unwrap().remove(0) {
        Reply::Outcome(outcome) => outcome,
        other => panic!("expected an outcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flashstockd_serves_stops_cleanly_and_restarts_with_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &[]);
    assert!(
        daemon.cert.starts_with(dir.path()) && daemon.cert.exists(),
        "self-signed cert generated"
    );
    let admin = connect(&daemon, "admin").await;
    let service = connect(&daemon, "service").await;
    let stock = Apply::SetStock { request: RequestId(1), sku: SkuId(3), total: 5 };
    assert!(matches!(outcome(&admin, stock).await, Outcome::StockChanged { .. }));
    let reserve = Apply::Reserve(Reserve {
        request: RequestId(2),
        buyer: BuyerId(9),
        sku: SkuId(3),
        qty: 2,
        ttl_ms: 600_000,
        order_ref: None,
    });
    let Outcome::Reserved { reservation, .. } = outcome(&service, reserve).await else {
        panic!("a reservation")
    };
    assert_eq!(
        outcome(&service, Apply::Confirm { request: RequestId(3), reservation, order_ref: None })
            .await,
        Outcome::Confirmed
    );
    terminate(daemon);

    let daemon = start(dir.path(), &[]);
    let service = connect(&daemon, "service").await;
    let replies = service.call(vec![Request::QuerySku(SkuId(3))]).await.unwrap();
    let Reply::Sku(Some(view)) = &replies[0] else { panic!("the SKU survives") };
    assert_eq!((view.total, view.available, view.sold), (5, 3, 2));
    // The same request id after a restart still gets its first answer.
    let replies = service
        .call(vec![Request::Apply(Apply::Confirm {
            request: RequestId(3),
            reservation,
            order_ref: None,
        })])
        .await
        .unwrap();
    assert_eq!(replies[0], Reply::Outcome(Outcome::Confirmed));
    terminate(daemon);
}

#[test]
fn a_config_file_with_an_unknown_setting_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flashstock.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nshard_count = 4\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_flashstockd"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field `shard_count`"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_rides_through_a_sigkill_and_restart_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &[]);
    let addr = daemon.addr;
    let tls = ClientTls::trust_pem_file(&daemon.cert).unwrap();
    let admin_config =
        ClientConfig::new(addr, "localhost", tls.clone(), Some(&token(&daemon.tokens, "admin")));
    let admin = Client::connect(admin_config).await.unwrap();
    admin.set_stock(SkuId(8), 4).await.unwrap();
    let mut config =
        ClientConfig::new(addr, "localhost", tls, Some(&token(&daemon.tokens, "service")));
    config.attempt_timeout = std::time::Duration::from_millis(500);
    config.call_timeout = std::time::Duration::from_secs(30);
    config.retries_max = 100;
    config.breaker_failures_max = 1_000;
    let client = Client::connect(config).await.unwrap();
    let Outcome::Reserved { reservation, .. } =
        client.reserve(BuyerId(1), SkuId(8), 1, 600_000).await.unwrap()
    else {
        panic!("a reservation")
    };
    assert_eq!(client.confirm(reservation).await.unwrap(), Outcome::Confirmed);

    let mut daemon = daemon;
    signal(&daemon, "KILL");
    daemon.child.wait().unwrap();
    let daemon = start_on(dir.path(), &addr.to_string(), &[]);

    // The same client, untouched: it notices, reconnects, and finds what was acknowledged.
    let view = client.query_reservation(reservation).await.unwrap().expect("it survived");
    assert_eq!(view.state, ReservationState::Confirmed);
    let sku = client.query_sku(SkuId(8)).await.unwrap().unwrap();
    assert_eq!((sku.total, sku.available, sku.sold), (4, 3, 1));
    terminate(daemon);
}

/// Starts `flashstockd` with `args` and expects it to refuse them at once: a non-zero exit
/// within a few seconds, with stderr naming `setting`.
fn refused_at_start(args: &[&str], setting: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashstockd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("flashstockd {args:?} started instead of refusing {setting}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{args:?}: {status}");
    assert!(stderr.contains(setting), "{args:?}: stderr does not name {setting}: {stderr}");
}

#[test]
fn out_of_range_settings_are_refused_at_start_by_name() {
    refused_at_start(&["--in-flight-max", "0"], "in_flight_max");
    refused_at_start(&["--connections-max", "0"], "connections_max");
    refused_at_start(&["--streams-max", "0"], "streams_max");
    refused_at_start(&["--stream-window-events-max", "0"], "stream_window_events_max");
    refused_at_start(&["--frame-bytes-max", "100"], "frame_bytes_max");
    refused_at_start(&["--idle-timeout-ms", "0"], "idle_timeout_ms");
    refused_at_start(&["--inbox-capacity", "0"], "inbox_capacity");
    refused_at_start(&["--snapshot-log-ratio", "0"], "snapshot_log_ratio");
    refused_at_start(&["--shards", "0"], "shards");
    refused_at_start(&["--io-threads", "0"], "io_threads");
    refused_at_start(&["--wal-syncs-in-flight-max", "9"], "wal_syncs_in_flight_max");
}

/// A server restarted on the same data directory resets its predecessor's connections: the
/// reset key lives there, so a client's first packet after the restart is answered with a
/// stateless reset, and it learns at once, not at its idle timeout, that it must reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_resets_its_predecessors_connections() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &[]);
    let addr = daemon.addr;
    let service = connect(&daemon, "service").await;
    service.call(vec![Request::QuerySku(SkuId(1))]).await.unwrap();
    let mut daemon = daemon;
    let killed = &mut daemon.child;
    killed.kill().unwrap();
    killed.wait().unwrap();
    let daemon = start_on(dir.path(), &addr.to_string(), &[]);
    let listening = std::time::Instant::now();
    let failed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        service.call(vec![Request::QuerySku(SkuId(1))]),
    )
    .await
    .expect("the old connection must fail fast, not wait out its idle timeout");
    let err = failed.expect_err("the old connection is gone");
    assert!(
        matches!(err, flashstock_client::ClientError::Connection(quinn::ConnectionError::Reset)),
        "expected a stateless reset, got {err}"
    );
    assert!(listening.elapsed() < std::time::Duration::from_secs(5), "{:?}", listening.elapsed());
    terminate(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_health_and_metrics_that_move() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &[]);
    assert_eq!(scrape(&daemon, "/livez").status, 200);
    let ready = scrape(&daemon, "/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    for check in ["recovery", "wal", "disk", "quic", "shutdown"] {
        assert!(ready.body.contains(&format!("[+]{check} ok")), "{}", ready.body);
    }
    assert_eq!(scrape(&daemon, "/nope").status, 404);

    let admin = connect(&daemon, "admin").await;
    let stock = Apply::SetStock { request: RequestId(1), sku: SkuId(3), total: 1 };
    assert!(matches!(outcome(&admin, stock).await, Outcome::StockChanged { .. }));
    let reserve = |request, buyer| {
        Apply::Reserve(Reserve {
            request: RequestId(request),
            buyer: BuyerId(buyer),
            sku: SkuId(3),
            qty: 1,
            ttl_ms: 600_000,
            order_ref: None,
        })
    };
    assert!(matches!(outcome(&admin, reserve(2, 1)).await, Outcome::Reserved { .. }));
    assert!(matches!(outcome(&admin, reserve(3, 2)).await, Outcome::SoldOut { .. }));
    // Gauges read off state are sampled every second.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let metrics = scrape(&daemon, "/metrics");
    assert_eq!(metrics.status, 200);
    let text = &metrics.body;
    let requests = |kind: &str, outcome: &str| {
        let series = format!(r#"flashstock_requests_total{{kind="{kind}",outcome="{outcome}"}}"#);
        series_value(text, &series)
    };
    assert_eq!(requests("reserve", "reserved"), Some(1.0), "{text}");
    assert_eq!(requests("reserve", "sold_out"), Some(1.0), "{text}");
    assert_eq!(requests("set_stock", "stock_changed"), Some(1.0), "{text}");
    assert_eq!(series_value(text, "flashstock_wal_records_total"), Some(2.0), "{text}");
    assert_eq!(series_value(text, "flashstock_connections_open"), Some(1.0), "{text}");
    let free = series_value(text, "flashstock_disk_free_bytes").expect("the free disk gauge");
    assert!(free > 0.0, "{text}");
    let live: f64 = ["0", "1"]
        .iter()
        .filter_map(|shard| {
            series_value(text, &format!(r#"flashstock_reservations_live{{shard="{shard}"}}"#))
        })
        .sum();
    assert_eq!(live, 1.0, "{text}");
    assert_eq!(series_value(text, "flashstock_frame_duration_seconds_count"), Some(3.0));
    assert!(text.contains("flashstock_wal_sync_seconds_bucket{le=\"0.001\"}"), "{text}");
    assert!(text.contains(r#"flashstock_build_info{component="flashstockd",version=""#));

    // A wrong token is counted by reason.
    let tls = ClientTls::trust_pem_file(&daemon.cert).unwrap();
    let wrong = Connection::connect(daemon.addr, "localhost", &tls, Some("not-a-token")).await;
    assert!(wrong.is_err());
    let text = scrape(&daemon, "/metrics").body;
    let failures = r#"flashstock_authentication_failures_total{reason="bad_credentials"}"#;
    assert_eq!(series_value(&text, failures), Some(1.0), "{text}");
    terminate(daemon);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashstockd"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "", "--log-format", "json"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let line: serde_json::Value = serde_json::from_str(&first).expect("a JSON object");
    assert!(["INFO", "WARN"].contains(&line["level"].as_str().unwrap()), "{first}");
    assert!(line["fields"]["message"].is_string(), "{first}");
    assert!(line["target"].as_str().unwrap().starts_with("flashstock_server"), "{first}");
}

fn write_tokens(path: &Path, admin: &str, service: &str) {
    std::fs::write(path, format!("admin = \"{admin}\"\nservice = \"{service}\"\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn hang_up(daemon: &Daemon) {
    signal(daemon, "HUP");
}

async fn connect_with(daemon: &Daemon, cert: &Path, token: &str) -> Result<Connection, String> {
    let tls = ClientTls::trust_pem_file(cert).unwrap();
    let connected = Connection::connect(daemon.addr, "localhost", &tls, Some(token)).await;
    connected.map_err(|err| err.to_string())
}

/// Retries `connect_with` for up to 5 s: a reload is asynchronous to the signal.
async fn connect_eventually(daemon: &Daemon, cert: &Path, token: &str) -> Connection {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match connect_with(daemon, cert, token).await {
            Ok(connection) => return connection,
            Err(err) if std::time::Instant::now() > deadline => panic!("never reloaded: {err}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

async fn still_answers(connection: &Connection) {
    let replies = connection.call(vec![Request::QuerySku(SkuId(1))]).await.unwrap();
    assert_eq!(replies, [Reply::Sku(None)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_tokens_and_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let (admin, old, new) = ("a".repeat(32), "o".repeat(32), "n".repeat(32));
    write_tokens(&tokens, &admin, &old);
    let data = dir.path().join("data");
    let daemon = start(&data, &["--tokens-file", tokens.to_str().unwrap()]);
    let open = connect_with(&daemon, &daemon.cert, &old).await.unwrap();

    // A rotated token: the new one authenticates, the removed one no longer does, and the
    // connection it opened before goes on.
    write_tokens(&tokens, &admin, &new);
    hang_up(&daemon);
    let _new = connect_eventually(&daemon, &daemon.cert, &new).await;
    let refused = connect_with(&daemon, &daemon.cert, &old).await.unwrap_err();
    assert!(refused.contains("Unauthenticated"), "{refused}");
    still_answers(&open).await;

    // A broken file keeps what is in force, and says so in the metrics.
    std::fs::write(&tokens, "admin = \"unterminated\n").unwrap();
    hang_up(&daemon);
    let failed = r#"flashstock_reloads_total{result="failed"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while series_value(&scrape(&daemon, "/metrics").body, failed) != Some(1.0) {
        assert!(std::time::Instant::now() < deadline, "the failed reload is counted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    connect_with(&daemon, &daemon.cert, &new).await.expect("the old set is kept");

    // A new certificate and key: new connections get it, open ones go on.
    write_tokens(&tokens, &admin, &new);
    let fresh = tempfile::tempdir().unwrap();
    let fresh_tls = flashstock_server::net::ensure_self_signed(fresh.path()).unwrap();
    let old_cert = dir.path().join("old-cert.pem");
    std::fs::copy(&daemon.cert, &old_cert).unwrap();
    std::fs::copy(&fresh_tls.key_path, data.join("tls/key.pem")).unwrap();
    std::fs::copy(&fresh_tls.cert_path, data.join("tls/cert.pem")).unwrap();
    hang_up(&daemon);
    let _renewed = connect_eventually(&daemon, &fresh_tls.cert_path, &new).await;
    let untrusted = connect_with(&daemon, &old_cert, &new).await.unwrap_err();
    assert!(!untrusted.is_empty());
    still_answers(&open).await;
    terminate(daemon);
}

/// `docs/configuration.md`'s table is generated from the settings struct and its defaults:
/// it fails here when they differ (regenerate with `UPDATE_DOCS=1`).
/// A disk under `disk_free_min_bytes` fails readiness, naming both figures, while the
/// server goes on serving (it stops only when the log itself fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_under_its_minimum_fails_readiness_and_the_server_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), &["--disk-free-min-bytes", &u64::MAX.to_string()]);
    let ready = scrape(&daemon, "/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    let line = ready.body.lines().find(|line| line.starts_with("[-]disk failed: ")).unwrap();
    assert!(line.ends_with("under disk_free_min_bytes (17592186044415 MiB)"), "{line}");
    assert!(ready.body.contains("[+]wal ok"), "{}", ready.body);

    let admin = connect(&daemon, "admin").await;
    let stock = Apply::SetStock { request: RequestId(1), sku: SkuId(3), total: 1 };
    assert!(matches!(outcome(&admin, stock).await, Outcome::StockChanged { .. }));
    terminate(daemon);
}

#[test]
fn the_configuration_reference_is_the_settings_struct() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let text = std::fs::read_to_string(path).unwrap();
    let (begin, end) = ("<!-- settings:begin -->\n", "<!-- settings:end -->");
    let start = text.find(begin).expect("the begin marker") + begin.len();
    let stop = text.find(end).expect("the end marker");
    let generated = flashstock_server::daemon::Settings::reference();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{}{generated}{}", &text[..start], &text[stop..]);
        std::fs::write(path, updated).unwrap();
        return;
    }
    assert!(
        text[start..stop] == generated,
        "docs/configuration.md is stale; regenerate it with \
         UPDATE_DOCS=1 cargo test -p flashstock-server --test daemon configuration_reference"
    );
    assert!(generated
        .contains("| `in_flight_max` | `--in-flight-max` | `FLASHSTOCK_IN_FLIGHT_MAX` | 16,384 |"));
}
