//! The order writer against the real databases on this machine (SQLite, PostgreSQL, MariaDB)
//! and NATS JetStream: every confirm becomes exactly one row, through redelivery, sharding, a
//! server restart and a database that goes away; bad configuration fails fast and clearly.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flashstock_client::ClientError;
use flashstock_engine::{Outcome, SkuId};
use flashstock_order_writer::{
    run, NatsConfig, OrderStore, WriterConfig, WriterError, WriterStats,
};
use flashstock_protocol::ErrorCode;
use flashstock_tests::proxy::TcpProxy;
use flashstock_tests::server::TestServer;

use common::*;

const ROWS_TIMEOUT: Duration = Duration::from_secs(60);

/// A writer running in this process until its `stop` is sent.
struct RunningWriter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), WriterError>>,
    stats: Arc<WriterStats>,
}

impl RunningWriter {
    fn start(config: WriterConfig) -> RunningWriter {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stats = Arc::new(WriterStats::default());
        let task = tokio::spawn(run(config, stats.clone(), async {
            let _ = stopped.await;
        }));
        RunningWriter { stop, task, stats }
    }

    async fn stop(self) -> Arc<WriterStats> {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
        self.stats
    }
}

fn config(server: &TestServer, urls: Vec<String>, consumer: &str) -> WriterConfig {
    WriterConfig {
        consumer: consumer.to_owned(),
        ..WriterConfig::new(server.addr, server.tls(), server.consumer_token.clone(), urls)
    }
}

async fn sale_server(dir: &std::path::Path) -> TestServer {
    let server = TestServer::start_at(dir, "127.0.0.1:0".parse().unwrap()).await;
    let admin = client(&server, &server.admin_token).await;
    for sku in 1..=4 {
        admin.set_stock(SkuId(sku), 1_000_000).await.unwrap();
    }
    admin.close().await;
    server
}

/// 300 confirms and 20 confirmed carts of 3 lines → 360 rows (one per line of a cart); then a
/// second consumer replays the whole stream into the same database and inserts nothing.
async fn exactly_one_row_per_confirm(url: String) {
    let dir = tempfile::tempdir().unwrap();
    let server = sale_server(dir.path()).await;
    let service = client(&server, &server.service_token).await;
    let writer = RunningWriter::start(config(&server, vec![url.clone()], "writer"));
    let sold = sell(&service, SkuId(1), 0, 300).await;
    let carts = sell_carts(&service, 1_000, 20).await;
    // Returns: all of one reservation's unit, and one of a cart's line 2 (SKU 4, one unit).
    let (single, cart) = (sold[0], carts[0]);
    let returned = service.return_sold(single, 0, SkuId(1), 1).await.unwrap();
    assert_eq!(returned, Outcome::Returned { returned_total: 1 });
    let returned = service.return_sold(cart, 2, SkuId(4), 1).await.unwrap();
    assert_eq!(returned, Outcome::Returned { returned_total: 1 });
    let store = OrderStore::connect(std::slice::from_ref(&url)).await.unwrap();
    wait_for_rows(&store, "returned", 2, ROWS_TIMEOUT).await;
    wait_for_rows(&store, "confirmed", 358, ROWS_TIMEOUT).await;
    assert_eq!(store.returned(single, 0).await.unwrap(), Some((1, "returned".to_owned())));
    assert_eq!(store.returned(cart, 2).await.unwrap(), Some((1, "returned".to_owned())));
    assert_eq!(store.returned(cart, 1).await.unwrap(), Some((0, "confirmed".to_owned())));
    assert_eq!(store.count("cancelled").await.unwrap(), 0, "cancels are not orders by default");
    for sku in 2..=3 {
        assert_eq!(store.count_for_skus("confirmed", &[sku]).await.unwrap(), 20, "sku {sku}");
    }
    let stats = writer.stop().await;
    assert_eq!(stats.rows_inserted.load(Ordering::Relaxed), 360);
    assert_eq!(stats.returns_applied.load(Ordering::Relaxed), 2);

    // Redelivery of everything (a new consumer starts at the log's start) is a no-op, the
    // returns included.
    replay_inserts_nothing(&server, &url, "replayer", 360).await;
    assert_eq!(store.count("confirmed").await.unwrap(), 358);
    assert_eq!(store.count("returned").await.unwrap(), 2);
    assert_eq!(store.returned(cart, 2).await.unwrap(), Some((1, "returned".to_owned())));
    store.close().await;
    service.close().await;
    server.stop().await;
}

/// A new consumer `consumer` replays the whole stream into `url`, which already holds its
/// `stored` rows: it sees them all as duplicates and inserts nothing.
async fn replay_inserts_nothing(server: &TestServer, url: &str, consumer: &str, stored: u64) {
    let again = RunningWriter::start(config(server, vec![url.to_owned()], consumer));
    let deadline = std::time::Instant::now() + ROWS_TIMEOUT;
    while again.stats.rows_duplicate.load(Ordering::Relaxed) < stored {
        assert!(std::time::Instant::now() < deadline, "the replay did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = again.stop().await;
    assert_eq!(stats.rows_inserted.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_gets_exactly_one_row_per_confirm() {
    let dir = tempfile::tempdir().unwrap();
    exactly_one_row_per_confirm(sqlite_database(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gets_exactly_one_row_per_confirm() {
    exactly_one_row_per_confirm(postgres_database().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_gets_exactly_one_row_per_confirm() {
    exactly_one_row_per_confirm(mysql_database().await).await;
}

/// Writers that start together on a fresh database migrate it once between them: on
/// PostgreSQL sqlx's advisory lock orders them; on MariaDB its `GET_LOCK(name, -1)` is
/// answered NULL at once (no wait), so without a lock of our own the second failed with
/// "Duplicate entry '2' for key 'PRIMARY'" (seen in this file's sharding test).
async fn writers_starting_together_migrate_once(url: impl std::future::Future<Output = String>) {
    let url = url.await;
    let urls = [url.clone()];
    let (first, second) = tokio::join!(OrderStore::connect(&urls), OrderStore::connect(&urls));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.databases()[0].count("confirmed").await.unwrap(), 0);
    first.close().await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_writers_starting_together_migrate_once() {
    for _ in 0..8 {
        writers_starting_together_migrate_once(mysql_database()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writers_starting_together_migrate_once() {
    for _ in 0..8 {
        writers_starting_together_migrate_once(postgres_database()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_shard_over_databases_and_cancellations_are_recorded_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let server = sale_server(dir.path()).await;
    let service = client(&server, &server.service_token).await;
    let urls = vec![postgres_database().await, mysql_database().await];
    let mut config = config(&server, urls.clone(), "sharded");
    config.record_ended = true;
    let writer = RunningWriter::start(config);
    sell(&service, SkuId(1), 0, 400).await;
    let store = OrderStore::connect(&urls).await.unwrap();
    wait_for_rows(&store, "confirmed", 400, ROWS_TIMEOUT).await;
    wait_for_rows(&store, "cancelled", 40, ROWS_TIMEOUT).await;
    for database in store.databases() {
        let rows = database.count("confirmed").await.unwrap();
        assert!((100..=300).contains(&rows), "each database holds its share: {rows}");
    }
    writer.stop().await;
    store.close().await;
    service.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_resumes_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_database(dir.path());
    let server = sale_server(dir.path()).await;
    let addr = server.addr;
    let service = client(&server, &server.service_token).await;
    let writer = RunningWriter::start(config(&server, vec![url.clone()], "writer"));
    sell(&service, SkuId(1), 0, 150).await;
    let store = OrderStore::connect(&[url]).await.unwrap();
    wait_for_rows(&store, "confirmed", 150, ROWS_TIMEOUT).await;
    assert!(writer.stats.health.ready(), "{:?}", writer.stats.health);
    service.close().await;
    server.stop().await;
    wait_until(|| !writer.stats.health.ready()).await;
    let stream = writer.stats.health.checks().into_iter().find(|c| c.name == "stream").unwrap();
    assert!(stream.result.is_err(), "not ready without the stream: {stream:?}");

    let server = TestServer::start_at(dir.path(), addr).await;
    let service = client(&server, &server.service_token).await;
    sell(&service, SkuId(1), 1_000, 150).await;
    wait_for_rows(&store, "confirmed", 300, ROWS_TIMEOUT).await;
    assert!(writer.stats.health.ready(), "{:?}", writer.stats.health);
    writer.stop().await;
    store.close().await;
    service.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_and_comes_back_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = sale_server(dir.path()).await;
    let service = client(&server, &server.service_token).await;
    let url = postgres_database().await;
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let proxied = url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let writer = RunningWriter::start(config(&server, vec![proxied], "writer"));
    let store = OrderStore::connect(&[url]).await.unwrap();
    sell(&service, SkuId(1), 0, 100).await;
    wait_for_rows(&store, "confirmed", 100, ROWS_TIMEOUT).await;

    proxy.cut();
    sell(&service, SkuId(1), 1_000, 100).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(store.count("confirmed").await.unwrap(), 100, "nothing written while it is away");
    assert!(writer.stats.retries.load(Ordering::Relaxed) > 0, "the writer kept retrying");
    let database = writer.stats.health.checks().into_iter().find(|c| c.name == "database");
    assert!(database.unwrap().result.is_err(), "not ready while the database is away");
    proxy.restore();
    wait_for_rows(&store, "confirmed", 200, ROWS_TIMEOUT).await;
    assert!(writer.stats.health.ready(), "{:?}", writer.stats.health);
    writer.stop().await;
    store.close().await;
    service.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_nats_jetstream_once_even_when_published_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = sale_server(dir.path()).await;
    let service = client(&server, &server.service_token).await;
    let suffix =
        format!("{}_{}", std::process::id(), flashstock_tests::Rng::seed_from_time() % 1_000_000);
    let nats = NatsConfig {
        url: "nats://127.0.0.1:4222".to_owned(),
        stream: format!("FS_TEST_{suffix}"),
        subject_prefix: format!("fstest{suffix}"),
    };
    let mut first = config(&server, vec![sqlite_database(dir.path())], "nats-writer");
    first.nats = Some(nats.clone());
    let writer = RunningWriter::start(first);
    sell(&service, SkuId(1), 0, 50).await;
    // 50 confirms, 5 cancels (buyers 0, 10, ..., 40), and the stock of four SKUs being set.
    let expected = 59;
    let jetstream = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    // The writer creates the stream once it has started: until then there is nothing in it.
    let messages = || async {
        match jetstream.get_stream(&nats.stream).await {
            Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
            Err(_) => 0,
        }
    };
    let deadline = std::time::Instant::now() + ROWS_TIMEOUT;
    while messages().await < expected {
        assert!(std::time::Instant::now() < deadline, "events did not reach JetStream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.stop().await;

    // A second writer publishing the same events again: JetStream drops them by message id.
    let mut second = config(&server, vec![sqlite_database(dir.path())], "nats-replayer");
    second.nats = Some(nats.clone());
    let writer = RunningWriter::start(second);
    while writer.stats.events_received.load(Ordering::Relaxed) < expected {
        assert!(std::time::Instant::now() < deadline, "the replay did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.stop().await;
    assert_eq!(messages().await, expected, "no duplicates in the stream");
    jetstream.delete_stream(&nats.stream).await.unwrap();
    service.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_fails_fast_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = sale_server(dir.path()).await;
    let stats = || Arc::new(WriterStats::default());
    let attempt = |urls: Vec<String>, token: String| {
        let config = WriterConfig::new(server.addr, server.tls(), token, urls);
        run(config, stats(), std::future::pending())
    };
    let token = server.consumer_token.clone();

    let err = attempt(vec!["redis://127.0.0.1:6379".into()], token.clone()).await.unwrap_err();
    assert!(matches!(err, WriterError::UnknownScheme { .. }), "{err}");
    let err = attempt(vec!["postgres://postgres@127.0.0.1:1/test".into()], token.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, WriterError::Database { .. }), "{err}");
    let err = attempt(vec!["mysql://nobody:hunter2@127.0.0.1:3306/test".into()], token.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, WriterError::Database { .. }), "{err}");
    assert!(!err.to_string().contains("hunter2"), "the password is hidden: {err}");

    let sqlite = vec![sqlite_database(dir.path())];
    let err = attempt(sqlite.clone(), "not-a-token".into()).await.unwrap_err();
    assert!(
        matches!(
            err,
            WriterError::Server(ClientError::Rejected { code: ErrorCode::Unauthenticated, .. })
        ),
        "{err}"
    );
    let err = attempt(sqlite, server.service_token.clone()).await.unwrap_err();
    assert!(
        matches!(
            err,
            WriterError::Server(ClientError::Rejected { code: ErrorCode::PermissionDenied, .. })
        ),
        "{err}"
    );

    // The binary says so and exits non-zero.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_order-writer"))
        .args(["--server", &server.addr.to_string(), "--token", "x", "--database-url"])
        .arg("redis://127.0.0.1:6379")
        .arg("--cert")
        .arg(&server.cert)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown database URL scheme"), "{stderr}");
    server.stop().await;
}

/// Makes `url`'s database refuse every order row of SKU 2, as a constraint or trigger an
/// operator added would (the tables exist: the store's migrations ran).
async fn refuse_sku_2(url: &str) {
    use sqlx::Connection;
    const CHECK: &str = "ALTER TABLE orders ADD CONSTRAINT refuse_sku_2 CHECK (sku_id <> 2)";
    if url.starts_with("sqlite:") {
        // SQLite cannot add a constraint to a table: a trigger refuses instead.
        let mut db = sqlx::SqliteConnection::connect(url).await.unwrap();
        let trigger = "CREATE TRIGGER refuse_sku_2 BEFORE INSERT ON orders WHEN NEW.sku_id = 2 \
                       BEGIN SELECT RAISE(ABORT, 'sku 2 is not sold here'); END";
        sqlx::query(trigger).execute(&mut db).await.unwrap();
    } else if url.starts_with("postgres:") {
        let mut db = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(CHECK).execute(&mut db).await.unwrap();
    } else {
        let mut db = sqlx::MySqlConnection::connect(url).await.unwrap();
        sqlx::query(CHECK).execute(&mut db).await.unwrap();
    }
}

/// A row the database refuses for good goes to `dead_letters` with its error, and every
/// order behind it is still written: 30 confirms of the refused SKU come first, then 100 of a
/// good one; a replay of the whole stream afterwards counts duplicates, not new dead letters.
async fn a_refused_row_is_dead_lettered_and_the_stream_goes_on(url: String) {
    let dir = tempfile::tempdir().unwrap();
    let server = sale_server(dir.path()).await;
    let admin = client(&server, &server.admin_token).await;
    admin.set_stock(SkuId(2), 1_000).await.unwrap();
    let service = client(&server, &server.service_token).await;
    let store = OrderStore::connect(std::slice::from_ref(&url)).await.unwrap();
    refuse_sku_2(&url).await;
    sell(&service, SkuId(2), 0, 30).await;
    sell(&service, SkuId(1), 1_000, 100).await;
    let writer = RunningWriter::start(config(&server, vec![url.clone()], "poisoned"));
    wait_for_rows(&store, "confirmed", 100, Duration::from_secs(30)).await;
    let stats = writer.stop().await;
    assert_eq!(stats.rows_dead.load(Ordering::Relaxed), 30);
    assert_eq!(store.count_dead_letters().await.unwrap(), 30);
    assert_eq!(stats.rows_inserted.load(Ordering::Relaxed), 100);

    replay_inserts_nothing(&server, &url, "replay", 100).await;
    assert_eq!(store.count_dead_letters().await.unwrap(), 30, "dead letters are kept once");
    store.close().await;
    service.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dead_letters_a_refused_row() {
    let dir = tempfile::tempdir().unwrap();
    a_refused_row_is_dead_lettered_and_the_stream_goes_on(sqlite_database(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dead_letters_a_refused_row() {
    a_refused_row_is_dead_lettered_and_the_stream_goes_on(postgres_database().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_dead_letters_a_refused_row() {
    a_refused_row_is_dead_lettered_and_the_stream_goes_on(mysql_database().await).await;
}

/// Waits (up to 10 s) for `condition`.
async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
