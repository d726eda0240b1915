//! The writer loop: subscribe, gather event batches into one transaction's worth, write
//! them, publish them (if NATS is configured), and only then acknowledge.
//!
//! Acknowledging after the commit is what makes the hand-off exactly once in effect: a crash
//! before the ack redelivers the batch, and the primary key turns the second insert into a
//! no-op. With several databases the ack waits for every one of them, so the cursor never
//! passes an event some database has not committed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashstock_client::{ClientError, ClientTls, SubscribeOptions, Subscriber};
use flashstock_engine::{Change, EventKind, ReservationState};
use flashstock_protocol::{ErrorCode, EventBatch, FrameError};
use hdrhistogram::Histogram;

use crate::error::WriterError;
use crate::nats::{NatsConfig, NatsSink};
use crate::store::{OrderRow, OrderStore, ReturnRow};

/// Backoff after a failure: doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// At most this long between retries of a database or NATS write.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// At most this long between attempts to subscribe again: a restarted server is found within
/// it (each attempt is cheap: one handshake, which gives up after 250 ms).
const RESUBSCRIBE_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Everything the writer needs.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// The flashstock server.
    pub server: SocketAddr,
    /// The name its certificate carries.
    pub server_name: String,
    /// Which certificate to trust.
    pub tls: ClientTls,
    /// A `consumer`-role token.
    pub token: String,
    /// The consumer name the server keeps the acknowledged cursor under.
    pub consumer: String,
    /// Database URLs; orders are routed over them by a hash of the reservation id.
    pub database_urls: Vec<String>,
    /// Also store cancelled and expired reservations (status column), not only orders.
    pub record_ended: bool,
    /// Publish every event to NATS JetStream too.
    pub nats: Option<NatsConfig>,
    /// Events gathered into one transaction at most.
    pub batch_events_max: usize,
    /// How long to keep gathering after the first event of a transaction.
    pub linger_ms: u64,
    /// Events the server may send beyond the last acknowledgement.
    pub window_events: u32,
    /// A cluster (its etcd and prefix): subscribe to every registered server instead of
    /// `server`, under the same consumer name on each, and follow the members as they
    /// change. Rows are keyed by (reservation, line), so a reservation whose events come
    /// from two servers is still stored once.
    pub cluster: Option<flashstock_client::EtcdConfig>,
}

impl WriterConfig {
    /// The defaults for everything but the server, credentials and databases.
    pub fn new(
        server: SocketAddr,
        tls: ClientTls,
        token: String,
        database_urls: Vec<String>,
    ) -> WriterConfig {
        WriterConfig {
            server,
            server_name: "localhost".to_owned(),
            tls,
            token,
            consumer: "order-writer".to_owned(),
            database_urls,
            record_ended: false,
            nats: None,
            batch_events_max: 8_192,
            linger_ms: 2,
            window_events: 65_536,
            cluster: None,
        }
    }
}

/// Counters of a running writer.
#[derive(Debug)]
pub struct WriterStats {
    /// Events received from the stream.
    pub events_received: AtomicU64,
    /// Rows the databases stored for the first time.
    pub rows_inserted: AtomicU64,
    /// Rows skipped because their reservation was already stored (redeliveries).
    pub rows_duplicate: AtomicU64,
    /// Rows the database refused for good (a constraint, a type, a trigger), kept in the
    /// `dead_letters` table instead.
    pub rows_dead: AtomicU64,
    /// Returns applied to their order rows (again, for a redelivered one: idempotent).
    pub returns_applied: AtomicU64,
    /// Returns that found no order row (an order this writer never stored).
    pub returns_unmatched: AtomicU64,
    /// Write rounds committed (one transaction per database each).
    pub commits: AtomicU64,
    /// Write rounds that failed and were retried.
    pub retries: AtomicU64,
    /// Acknowledgements sent.
    pub acks: AtomicU64,
    /// Milliseconds from a reservation's confirm (server clock) to the commit of its row.
    pub lag_ms: Mutex<Histogram<u64>>,
    /// Readiness: `database` (the last write went through) and `stream` (subscribed).
    pub health: Arc<flashstock_observe::Health>,
}

impl WriterStats {
    /// One line for logs: the counters and the lag percentiles.
    pub fn summary(&self) -> String {
        let lag = self.lag_ms.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        format!(
            "events {} rows inserted {} duplicates skipped {} dead letters {} commits {} \
             retries {} acks {} lag_ms p50 {} p99 {} max {}",
            self.events_received.load(Ordering::Relaxed),
            self.rows_inserted.load(Ordering::Relaxed),
            self.rows_duplicate.load(Ordering::Relaxed),
            self.rows_dead.load(Ordering::Relaxed),
            self.commits.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
            self.acks.load(Ordering::Relaxed),
            lag.value_at_quantile(0.5),
            lag.value_at_quantile(0.99),
            lag.max(),
        )
    }
}

impl Default for WriterStats {
    fn default() -> WriterStats {
        WriterStats {
            events_received: AtomicU64::new(0),
            rows_inserted: AtomicU64::new(0),
            rows_duplicate: AtomicU64::new(0),
            rows_dead: AtomicU64::new(0),
            returns_applied: AtomicU64::new(0),
            returns_unmatched: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            // Fixed bounds (1 ms to a day): an auto-resizing histogram's `saturating_record`
            // clamps to its current top instead of growing.
            lag_ms: Mutex::new(Histogram::new_with_bounds(1, 86_400_000, 3).expect("valid bounds")),
            health: {
                let health = flashstock_observe::Health::new();
                health.set("database", Err("not connected yet".into()));
                health.set("stream", Err("not subscribed yet".into()));
                health
            },
        }
    }
}

/// Runs the writer until `shutdown` completes (then returns Ok), or until something that a
/// retry cannot fix: a database that cannot be reached at start, credentials the server
/// refuses, a subscription taken over by another writer.
pub async fn run(
    config: WriterConfig,
    stats: Arc<WriterStats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WriterError> {
    let store = OrderStore::connect(&config.database_urls).await?;
    stats.health.set("database", Ok(()));
    let nats = match &config.nats {
        Some(nats) => Some(NatsSink::connect(nats).await?),
        None => None,
    };
    tokio::pin!(shutdown);
    let result = match config.cluster.clone() {
        Some(etcd) => tokio::select! {
            result = serve_cluster(&config, etcd, &store, nats.as_ref(), &stats) => result,
            () = &mut shutdown => Ok(()),
        },
        None => tokio::select! {
            result = serve(&config, &store, nats.as_ref(), &stats) => result,
            () = &mut shutdown => Ok(()),
        },
    };
    store.close().await;
    result
}

/// Every registered server of the cluster, each by [`serve`] on a task of its own, started
/// as its member entry appears and restarted when its address changes. A server that goes
/// away keeps its task (subscribing again with backoff): its events must still be stored
/// when it comes back.
async fn serve_cluster(
    config: &WriterConfig,
    etcd: flashstock_client::EtcdConfig,
    store: &OrderStore,
    nats: Option<&NatsSink>,
    stats: &Arc<WriterStats>,
) -> Result<(), WriterError> {
    let watch = flashstock_cluster_etcd::ClusterWatch::start(etcd).await?;
    let mut views = watch.subscribe();
    let mut servers: std::collections::HashMap<String, (flashstock_cluster::Member, Serving)> =
        std::collections::HashMap::new();
    loop {
        let view = views.borrow_and_update().clone();
        for (id, member) in &view.members {
            if servers.get(&id.0).is_some_and(|(known, _)| known == member) {
                continue;
            }
            let config = WriterConfig {
                server: member.quic,
                server_name: member.server_name.clone(),
                cluster: None,
                ..config.clone()
            };
            let (store, nats, stats) = (store.clone(), nats.cloned(), stats.clone());
            tracing::info!(server = %id.0, quic = %member.quic, "subscribing to a server of the cluster");
            let task =
                tokio::spawn(async move { serve(&config, &store, nats.as_ref(), &stats).await });
            if let Some((_, old)) = servers.insert(id.0.clone(), (member.clone(), Serving(task))) {
                old.0.abort();
            }
        }
        // A task ends only with an error no retry fixes: it ends the writer.
        for (id, (_, serving)) in servers.iter_mut() {
            if serving.0.is_finished() {
                let ended = (&mut serving.0).await;
                tracing::error!(server = %id, "the stream of a server of the cluster ended");
                return ended.unwrap_or_else(|err| Err(WriterError::Task(err.to_string())));
            }
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return Ok(()) },
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A server's writer task, stopped when dropped (the writer stopping stops them all).
struct Serving(tokio::task::JoinHandle<Result<(), WriterError>>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Subscribes, and after a lost connection subscribes again (from the acknowledged cursor).
async fn serve(
    config: &WriterConfig,
    store: &OrderStore,
    nats: Option<&NatsSink>,
    stats: &WriterStats,
) -> Result<(), WriterError> {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let subscriber = match subscribe(config, nats.is_some()).await {
            Ok(subscriber) => subscriber,
            Err(err) if is_final(&err) => return Err(WriterError::Server(err)),
            Err(err) => {
                tracing::warn!(%err, backoff_ms = backoff.as_millis() as u64, "subscribing failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RESUBSCRIBE_BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_FIRST;
        tracing::info!(consumer = %config.consumer, cursor = ?subscriber.start_cursor(), "subscribed");
        stats.health.set("stream", Ok(()));
        let consumed = consume(config, subscriber, store, nats, stats).await;
        stats.health.set("stream", Err("the stream was lost; subscribing again".into()));
        match consumed {
            Err(err) if is_final(&err) => return Err(WriterError::Server(err)),
            Err(err) => tracing::warn!(%err, "stream lost; subscribing again"),
            Ok(()) => {}
        }
    }
}

async fn subscribe(config: &WriterConfig, every_kind: bool) -> Result<Subscriber, ClientError> {
    let mut options = SubscribeOptions::new(config.consumer.clone());
    options.window_events = config.window_events;
    options.kinds = match (every_kind, config.record_ended) {
        (true, _) => Vec::new(),
        (false, true) => vec![
            EventKind::Confirmed,
            EventKind::Cancelled,
            EventKind::Expired,
            EventKind::Returned,
        ],
        (false, false) => vec![EventKind::Confirmed, EventKind::Returned],
    };
    Subscriber::connect(
        config.server,
        &config.server_name,
        &config.tls,
        Some(&config.token),
        options,
    )
    .await
}

/// Errors no retry fixes: the server refused who we are or what we asked, or speaks another
/// protocol version.
fn is_final(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Rejected {
            code: ErrorCode::Unauthenticated
                | ErrorCode::PermissionDenied
                | ErrorCode::InvalidSubscription
                | ErrorCode::CursorTruncated
                | ErrorCode::Replaced
                | ErrorCode::UnsupportedVersion,
            ..
        } | ClientError::Protocol(FrameError::UnsupportedVersion { .. })
    )
}

/// Gathers, writes, publishes, acknowledges, until the stream fails.
async fn consume(
    config: &WriterConfig,
    mut subscriber: Subscriber,
    store: &OrderStore,
    nats: Option<&NatsSink>,
    stats: &WriterStats,
) -> Result<(), ClientError> {
    let linger = Duration::from_millis(config.linger_ms);
    loop {
        let first = subscriber.next_batch().await?;
        let mut gathered = first.events.len();
        let mut batches = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while gathered < config.batch_events_max {
            match tokio::time::timeout_at(deadline, subscriber.next_batch()).await {
                Ok(batch) => {
                    let batch = batch?;
                    gathered += batch.events.len();
                    batches.push(batch);
                }
                Err(_) => break,
            }
        }
        stats.events_received.fetch_add(gathered as u64, Ordering::Relaxed);
        metrics::counter!(metric::EVENTS_TOTAL).increment(gathered as u64);
        let rows = rows_of(&batches, config.record_ended);
        if !rows.is_empty() {
            write(store, &rows, stats).await;
        }
        // After the rows: a return in the same batch as its confirm finds the row.
        let returns = returns_of(&batches);
        if !returns.is_empty() {
            apply_returns(store, &returns, stats).await;
        }
        if let Some(nats) = nats {
            publish(nats, &batches, stats).await;
        }
        record_lag(&rows, stats);
        subscriber.ack_delivered().await?;
        stats.acks.fetch_add(1, Ordering::Relaxed);
    }
}

/// The rows the batches make: confirms (one per line of a cart), and with `record_ended`
/// every ending.
pub fn rows_of(batches: &[EventBatch], record_ended: bool) -> Vec<OrderRow> {
    let mut rows = Vec::new();
    for batch in batches {
        for event in &batch.events {
            let (line, ended) = match event.event.change {
                Change::Ended(ended) => (0, ended),
                Change::CartLineEnded { line, ended } => (line, ended),
                _ => continue,
            };
            if ended.state != ReservationState::Confirmed && !record_ended {
                continue;
            }
            rows.push(OrderRow {
                reservation: ended.reservation,
                line,
                order_ref: ended.order_ref,
                buyer: ended.buyer.0,
                sku: ended.sku.0,
                qty: ended.qty,
                status: ended.state,
                ended_at_ms: event.event.at_ms,
                stream_shard: batch.shard,
                stream_seq: event.seq,
            });
        }
    }
    rows
}

/// The returns the batches carry, in stream order.
pub fn returns_of(batches: &[EventBatch]) -> Vec<ReturnRow> {
    let returns = batches.iter().flat_map(|batch| &batch.events);
    returns
        .filter_map(|event| match event.event.change {
            Change::Returned(r) => Some(ReturnRow {
                reservation: r.reservation,
                line: r.line,
                returned_total: r.returned_total,
            }),
            _ => None,
        })
        .collect()
}

/// Applies returns until it succeeds, as `write` writes rows.
async fn apply_returns(store: &OrderStore, returns: &[ReturnRow], stats: &WriterStats) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        match store.apply_returns(returns).await {
            Ok(unmatched) => {
                let applied = returns.len() as u64 - unmatched;
                stats.returns_applied.fetch_add(applied, Ordering::Relaxed);
                stats.returns_unmatched.fetch_add(unmatched, Ordering::Relaxed);
                metrics::counter!(metric::RETURNS_TOTAL, "result" => "applied").increment(applied);
                metrics::counter!(metric::RETURNS_TOTAL, "result" => "unmatched")
                    .increment(unmatched);
                if unmatched > 0 {
                    tracing::warn!(unmatched, "returns of orders this writer never stored");
                }
                return;
            }
            Err(err) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                stats.health.set("database", Err(format!("applying returns failed: {err}")));
                tracing::warn!(%err, backoff_ms = backoff.as_millis() as u64, "applying returns failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Writes until it succeeds: a database that went away is waited for, with backoff, and
/// nothing is acknowledged meanwhile (the server's window holds the stream back). A row the
/// database refuses for good goes to `dead_letters` and does not hold the others back.
async fn write(store: &OrderStore, rows: &[OrderRow], stats: &WriterStats) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let started = std::time::Instant::now();
        match store.write(rows).await {
            Ok(written) => {
                metrics::histogram!(metric::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                stats.rows_inserted.fetch_add(written.inserted, Ordering::Relaxed);
                stats.rows_duplicate.fetch_add(written.duplicates, Ordering::Relaxed);
                stats.rows_dead.fetch_add(written.dead, Ordering::Relaxed);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                let counts = [
                    ("inserted", written.inserted),
                    ("duplicate", written.duplicates),
                    ("dead", written.dead),
                ];
                for (result, rows) in counts {
                    metrics::counter!(metric::ROWS_TOTAL, "result" => result).increment(rows);
                }
                metrics::counter!(metric::BATCHES_TOTAL).increment(1);
                stats.health.set("database", Ok(()));
                return;
            }
            Err(err) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(metric::RETRIES_TOTAL).increment(1);
                stats.health.set("database", Err(format!("writing failed: {err}")));
                tracing::warn!(%err, rows = rows.len(), backoff_ms = backoff.as_millis() as u64, "writing orders failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Publishes until JetStream has stored every event (duplicates dropped by message id).
async fn publish(nats: &NatsSink, batches: &[EventBatch], stats: &WriterStats) {
    for batch in batches {
        let mut backoff = BACKOFF_FIRST;
        while let Err(err) = nats.publish(batch.shard, &batch.events).await {
            stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%err, backoff_ms = backoff.as_millis() as u64, "publishing to NATS failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

fn record_lag(rows: &[OrderRow], stats: &WriterStats) {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut lag = stats.lag_ms.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut lag_ms_max = 0;
    for row in rows.iter().filter(|r| r.status == ReservationState::Confirmed) {
        let lag_ms = now_ms.saturating_sub(row.ended_at_ms);
        lag.saturating_record(lag_ms);
        lag_ms_max = lag_ms_max.max(lag_ms);
    }
    metrics::gauge!(metric::LAG_SECONDS).set(lag_ms_max as f64 / 1e3);
}

/// The order writer's metrics, named once.
pub mod metric {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

    /// Events received from the stream.
    pub const EVENTS_TOTAL: &str = "flashstock_order_writer_events_total";
    /// Rows written, by `result`: inserted, duplicate (a redelivery), dead (a dead letter).
    pub const ROWS_TOTAL: &str = "flashstock_order_writer_rows_total";
    /// Returns applied to order rows, by `result`: applied, unmatched (no such row).
    pub const RETURNS_TOTAL: &str = "flashstock_order_writer_returns_total";
    /// Write rounds committed (one transaction per database each).
    pub const BATCHES_TOTAL: &str = "flashstock_order_writer_batches_total";
    /// Write rounds that failed and were retried.
    pub const RETRIES_TOTAL: &str = "flashstock_order_writer_retries_total";
    /// One write round's commit.
    pub const COMMIT_SECONDS: &str = "flashstock_order_writer_commit_seconds";
    /// From the oldest confirm of the last round (server clock) to its commit.
    pub const LAG_SECONDS: &str = "flashstock_order_writer_lag_seconds";

    /// Describes every metric to the recorder.
    pub fn describe() {
        describe_counter!(EVENTS_TOTAL, Unit::Count, "Events received from the stream.");
        describe_counter!(ROWS_TOTAL, Unit::Count, "Rows written, by result.");
        describe_counter!(RETURNS_TOTAL, Unit::Count, "Returns applied to order rows, by result.");
        describe_counter!(BATCHES_TOTAL, Unit::Count, "Write rounds committed.");
        describe_counter!(RETRIES_TOTAL, Unit::Count, "Write rounds that failed and were retried.");
        describe_histogram!(COMMIT_SECONDS, Unit::Seconds, "One write round's commit.");
        describe_gauge!(
            LAG_SECONDS,
            Unit::Seconds,
            "From the last round's oldest confirm to its commit."
        );
    }
}
