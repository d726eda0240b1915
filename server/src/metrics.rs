//! Every metric the server exports, named in one place, described once, and recorded through
//! the `metrics` facade (exported by `flashstock-observe` when `metrics_listen` is set; with
//! no recorder installed, recording is a no-op).
//!
//! The hot path records per frame and per shard step, never per request: a frame's replies
//! are tallied locally and added to their counters once ([`count_replies`]).

use std::time::Duration;

use flashstock_protocol::{Refusal, Reply, Request};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Requests answered, by `kind` (reserve, confirm, query_sku...) and `outcome` (reserved,
/// sold_out, refused_overloaded...).
pub const REQUESTS_TOTAL: &str = "flashstock_requests_total";
/// From a `Requests` frame read off the wire to its `Replies` frame written to QUIC.
pub const FRAME_DURATION_SECONDS: &str = "flashstock_frame_duration_seconds";
/// Requests per frame.
pub const FRAME_REQUESTS: &str = "flashstock_frame_requests";
/// Requests refused because a shard's inbox was full.
pub const OVERLOAD_REFUSALS_TOTAL: &str = "flashstock_overload_refusals_total";
/// Jobs waiting in a shard's inbox at the start of its step.
pub const SHARD_INBOX_JOBS: &str = "flashstock_shard_inbox_jobs";
/// Jobs one shard step applied.
pub const SHARD_STEP_JOBS: &str = "flashstock_shard_step_jobs";
/// How long one shard step took to apply its jobs.
pub const SHARD_STEP_SECONDS: &str = "flashstock_shard_step_seconds";
/// Reservations held now.
pub const RESERVATIONS_LIVE: &str = "flashstock_reservations_live";
/// SKUs known.
pub const SKUS: &str = "flashstock_skus";
/// Answers remembered for retried request ids.
pub const REMEMBERED_ANSWERS: &str = "flashstock_remembered_answers";
/// Appending one group's batches to the log.
pub const WAL_APPEND_SECONDS: &str = "flashstock_wal_append_seconds";
/// The one sync of a group commit.
pub const WAL_SYNC_SECONDS: &str = "flashstock_wal_sync_seconds";
/// Records appended to the log.
pub const WAL_RECORDS_TOTAL: &str = "flashstock_wal_records_total";
/// Record bytes appended to the log.
pub const WAL_BYTES_TOTAL: &str = "flashstock_wal_bytes_total";
/// Per shard, the sequence number below which the log is durable.
pub const WAL_DURABLE_POSITION: &str = "flashstock_wal_durable_position";
/// The shard thread encoding a snapshot (it answers nothing meanwhile).
pub const SNAPSHOT_ENCODE_SECONDS: &str = "flashstock_snapshot_encode_seconds";
/// The snapshot thread writing a snapshot and truncating the log below it.
pub const SNAPSHOT_WRITE_SECONDS: &str = "flashstock_snapshot_write_seconds";
/// The size of a shard's latest snapshot.
pub const SNAPSHOT_BYTES: &str = "flashstock_snapshot_bytes";
/// Snapshots that failed to be written.
pub const SNAPSHOT_FAILURES_TOTAL: &str = "flashstock_snapshot_failures_total";
/// Connections open (handshakes included).
pub const CONNECTIONS_OPEN: &str = "flashstock_connections_open";
/// Connections refused, by `reason` (connections_max, per_address_max).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "flashstock_connections_refused_total";
/// Connections that failed to authenticate, by `reason` (bad_credentials, timeout).
pub const AUTHENTICATION_FAILURES_TOTAL: &str = "flashstock_authentication_failures_total";
/// Requests read and not yet answered onto the wire.
pub const REQUESTS_UNWRITTEN: &str = "flashstock_requests_unwritten";
/// Per consumer and shard, the position delivered so far.
pub const CONSUMER_DELIVERED_POSITION: &str = "flashstock_consumer_delivered_position";
/// Per consumer and shard, the position acknowledged.
pub const CONSUMER_ACKED_POSITION: &str = "flashstock_consumer_acked_position";
/// Per consumer and shard, durable records not yet acknowledged.
pub const CONSUMER_LAG_RECORDS: &str = "flashstock_consumer_lag_records";
/// Per consumer and shard, records the log keeps only for it.
pub const CONSUMER_HELD_RECORDS: &str = "flashstock_consumer_held_records";
/// How long the last start's recovery took.
pub const RECOVERY_SECONDS: &str = "flashstock_recovery_seconds";
/// Records the last start's recovery replayed.
pub const RECOVERY_RECORDS: &str = "flashstock_recovery_records";
/// Reserves refused by a rate limit, by whose bucket (`by`: buyer, credential).
pub const RATE_LIMITED_TOTAL: &str = "flashstock_rate_limited_total";
/// Credential reloads (SIGHUP), by `result` (ok, failed).
pub const RELOADS_TOTAL: &str = "flashstock_reloads_total";
/// Admin operations, by `operation`.
pub const ADMIN_OPERATIONS_TOTAL: &str = "flashstock_admin_operations_total";

/// Describes every metric to the recorder (help text and unit). Call once the recorder is
/// installed.
pub fn describe() {
    let counters = [
        (REQUESTS_TOTAL, "Requests answered, by kind and outcome."),
        (OVERLOAD_REFUSALS_TOTAL, "Requests refused because a shard's inbox was full."),
        (WAL_RECORDS_TOTAL, "Records appended to the write-ahead log."),
        (SNAPSHOT_FAILURES_TOTAL, "Snapshots that failed to be written (the log is kept)."),
        (CONNECTIONS_REFUSED_TOTAL, "Connections refused by a connection limit, by reason."),
        (AUTHENTICATION_FAILURES_TOTAL, "Connections that failed to authenticate, by reason."),
        (ADMIN_OPERATIONS_TOTAL, "Admin operations served, by operation."),
        (RELOADS_TOTAL, "Credential reloads (SIGHUP), by result."),
        (RATE_LIMITED_TOTAL, "Reserves refused by a rate limit, by whose bucket."),
    ];
    for (name, help) in counters {
        describe_counter!(name, Unit::Count, help);
    }
    describe_counter!(WAL_BYTES_TOTAL, Unit::Bytes, "Record bytes appended to the log.");
    let gauges = [
        (SHARD_INBOX_JOBS, "Jobs waiting in the shard's inbox at the start of its step."),
        (RESERVATIONS_LIVE, "Reservations held now."),
        (SKUS, "SKUs known."),
        (REMEMBERED_ANSWERS, "Answers remembered for retried request ids."),
        (WAL_DURABLE_POSITION, "The sequence number below which the shard's log is durable."),
        (CONNECTIONS_OPEN, "QUIC connections open, handshakes included."),
        (REQUESTS_UNWRITTEN, "Requests read whose replies are not yet written."),
        (CONSUMER_DELIVERED_POSITION, "The stream position delivered to the consumer."),
        (CONSUMER_ACKED_POSITION, "The stream position the consumer acknowledged."),
        (CONSUMER_LAG_RECORDS, "Durable records the consumer has not acknowledged."),
        (CONSUMER_HELD_RECORDS, "Records the log keeps only for the consumer."),
        (RECOVERY_RECORDS, "Records replayed by the last start's recovery."),
    ];
    for (name, help) in gauges {
        describe_gauge!(name, Unit::Count, help);
    }
    describe_gauge!(SNAPSHOT_BYTES, Unit::Bytes, "The size of the shard's latest snapshot.");
    describe_gauge!(RECOVERY_SECONDS, Unit::Seconds, "How long the last start's recovery took.");
    let seconds = [
        (FRAME_DURATION_SECONDS, "From a Requests frame read to its Replies frame written."),
        (SHARD_STEP_SECONDS, "One shard step applying its jobs."),
        (WAL_APPEND_SECONDS, "Appending one group commit's batches to the log."),
        (WAL_SYNC_SECONDS, "The one sync of a group commit."),
        (SNAPSHOT_ENCODE_SECONDS, "The shard thread encoding a snapshot (a stall)."),
        (SNAPSHOT_WRITE_SECONDS, "Writing a snapshot and truncating the log below it."),
    ];
    for (name, help) in seconds {
        describe_histogram!(name, Unit::Seconds, help);
    }
    describe_histogram!(FRAME_REQUESTS, Unit::Count, "Requests per Requests frame.");
    describe_histogram!(SHARD_STEP_JOBS, Unit::Count, "Jobs one shard step applied.");
    // Counters of rare events exist from the start at 0: a dashboard then shows "none
    // happened", not "no data", and rate() has a starting point.
    metrics::counter!(OVERLOAD_REFUSALS_TOTAL).absolute(0);
    metrics::counter!(SNAPSHOT_FAILURES_TOTAL).absolute(0);
    for reason in AUTHENTICATION_FAILURE_REASONS {
        metrics::counter!(AUTHENTICATION_FAILURES_TOTAL, "reason" => reason).absolute(0);
    }
    for by in ["buyer", "credential"] {
        metrics::counter!(RATE_LIMITED_TOTAL, "by" => by).absolute(0);
    }
    for reason in CONNECTION_REFUSAL_REASONS {
        metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => reason).absolute(0);
    }
}

/// The `reason` labels of [`AUTHENTICATION_FAILURES_TOTAL`].
pub const AUTHENTICATION_FAILURE_REASONS: [&str; 3] =
    ["no_credentials", "bad_credentials", "timeout"];
/// The `reason` labels of [`CONNECTIONS_REFUSED_TOTAL`].
pub const CONNECTION_REFUSAL_REASONS: [&str; 2] =
    ["connections_max", "connections_per_address_max"];

/// The `kind` label of a request.
pub fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::Apply(command) => command.name(),
        Request::QuerySku(_) => "query_sku",
        Request::QueryReservation(_) => "query_reservation",
    }
}

/// The `outcome` label of a reply.
pub fn reply_outcome(reply: &Reply) -> &'static str {
    match reply {
        Reply::Outcome(outcome) => outcome.name(),
        Reply::Sku(Some(_)) | Reply::Reservation(Some(_)) => "found",
        Reply::Sku(None) | Reply::Reservation(None) => "not_found",
        Reply::Refused(Refusal::Overloaded) => "refused_overloaded",
        Reply::Refused(Refusal::PermissionDenied) => "refused_permission_denied",
        Reply::Refused(Refusal::ShuttingDown) => "refused_shutting_down",
        Reply::Refused(Refusal::Unavailable) => "refused_unavailable",
        Reply::Refused(Refusal::RateLimited { .. }) => "refused_rate_limited",
    }
}

/// `flashstock_requests_total`'s handles, resolved once per (kind, outcome): a frame's tally
/// then costs a map read and an atomic add per distinct pair, not a registry lookup (which
/// allocates the key's labels and hashes them).
#[derive(Debug, Default)]
pub struct RequestCounters {
    by_kind_outcome: dashmap::DashMap<(&'static str, &'static str), metrics::Counter>,
    overloaded: std::sync::OnceLock<metrics::Counter>,
}

impl RequestCounters {
    /// Adds a frame's replies: tallied here first, so a frame of 256 sold-out answers costs
    /// one counter update, not 256.
    pub fn count(&self, batch: &[Request], replies: &[Reply]) {
        let mut tally: Vec<(&'static str, &'static str, u64)> = Vec::new();
        let mut overloaded = 0;
        for (request, reply) in batch.iter().zip(replies) {
            let (kind, outcome) = (request_kind(request), reply_outcome(reply));
            overloaded += u64::from(matches!(reply, Reply::Refused(Refusal::Overloaded)));
            match tally.iter_mut().find(|(k, o, _)| *k == kind && *o == outcome) {
                Some(entry) => entry.2 += 1,
                None => tally.push((kind, outcome, 1)),
            }
        }
        for (kind, outcome, count) in tally {
            let counter = self.by_kind_outcome.entry((kind, outcome)).or_insert_with(
                || metrics::counter!(REQUESTS_TOTAL, "kind" => kind, "outcome" => outcome),
            );
            counter.increment(count);
        }
        if overloaded > 0 {
            let counter =
                self.overloaded.get_or_init(|| metrics::counter!(OVERLOAD_REFUSALS_TOTAL));
            counter.increment(overloaded);
        }
    }
}

/// The write-ahead log's handles, resolved once.
#[derive(Clone, Debug)]
pub(crate) struct WalMetrics {
    pub(crate) append_seconds: metrics::Histogram,
    pub(crate) sync_seconds: metrics::Histogram,
    pub(crate) records: metrics::Counter,
    pub(crate) bytes: metrics::Counter,
}

impl WalMetrics {
    pub(crate) fn new() -> WalMetrics {
        WalMetrics {
            append_seconds: metrics::histogram!(WAL_APPEND_SECONDS),
            sync_seconds: metrics::histogram!(WAL_SYNC_SECONDS),
            records: metrics::counter!(WAL_RECORDS_TOTAL),
            bytes: metrics::counter!(WAL_BYTES_TOTAL),
        }
    }
}

/// Records one shard step: the inbox depth it started from, its jobs and its time.
#[derive(Clone)]
pub(crate) struct ShardMetrics {
    inbox_jobs: metrics::Gauge,
    step_jobs: metrics::Histogram,
    step_seconds: metrics::Histogram,
    reservations_live: metrics::Gauge,
    skus: metrics::Gauge,
    remembered_answers: metrics::Gauge,
    snapshot_encode_seconds: metrics::Histogram,
    snapshot_bytes: metrics::Gauge,
}

impl ShardMetrics {
    /// The handles of shard `shard`, resolved once: a step records without a registry lookup.
    pub(crate) fn new(shard: u16) -> ShardMetrics {
        let label = shard.to_string();
        ShardMetrics {
            inbox_jobs: metrics::gauge!(SHARD_INBOX_JOBS, "shard" => label.clone()),
            step_jobs: metrics::histogram!(SHARD_STEP_JOBS, "shard" => label.clone()),
            step_seconds: metrics::histogram!(SHARD_STEP_SECONDS, "shard" => label.clone()),
            reservations_live: metrics::gauge!(RESERVATIONS_LIVE, "shard" => label.clone()),
            skus: metrics::gauge!(SKUS, "shard" => label.clone()),
            remembered_answers: metrics::gauge!(REMEMBERED_ANSWERS, "shard" => label.clone()),
            snapshot_encode_seconds: metrics::histogram!(SNAPSHOT_ENCODE_SECONDS, "shard" => label.clone()),
            snapshot_bytes: metrics::gauge!(SNAPSHOT_BYTES, "shard" => label),
        }
    }

    pub(crate) fn step(&self, inbox_jobs: usize, jobs: usize, elapsed: Duration) {
        self.inbox_jobs.set(inbox_jobs as f64);
        self.step_jobs.record(jobs as f64);
        self.step_seconds.record(elapsed.as_secs_f64());
    }

    pub(crate) fn state(&self, reservations_live: usize, skus: usize, remembered_answers: usize) {
        self.reservations_live.set(reservations_live as f64);
        self.skus.set(skus as f64);
        self.remembered_answers.set(remembered_answers as f64);
    }

    pub(crate) fn snapshot(&self, bytes: u64, encode: Duration) {
        self.snapshot_bytes.set(bytes as f64);
        self.snapshot_encode_seconds.record(encode.as_secs_f64());
    }
}

impl std::fmt::Debug for ShardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardMetrics")
    }
}

/// Sets the per-consumer gauges from the registry and the log's durable ends: what a consumer
/// acknowledged, and how far behind the log it is. Run periodically (cheap: one lock).
pub fn sample_consumers(events: &crate::stream::EventLog) {
    for (name, acked, _) in events.consumers().list() {
        for (shard, &acked_seq) in acked.iter().enumerate() {
            let durable = events.durable_end(shard as u16);
            let labels = [("consumer", name.clone()), ("shard", shard.to_string())];
            metrics::gauge!(CONSUMER_ACKED_POSITION, &labels).set(acked_seq as f64);
            let lag = durable.saturating_sub(acked_seq);
            metrics::gauge!(CONSUMER_LAG_RECORDS, &labels).set(lag as f64);
        }
    }
    for shard in 0..events.shard_count() {
        let durable = events.durable_end(shard as u16);
        metrics::gauge!(WAL_DURABLE_POSITION, "shard" => shard.to_string()).set(durable as f64);
    }
}

/// Sets the network layer's gauges from its counts. Run periodically.
pub fn sample_net(stats: &crate::net::NetStats) {
    use std::sync::atomic::Ordering;
    let open = stats.connections_open.load(Ordering::Acquire);
    metrics::gauge!(CONNECTIONS_OPEN).set(open as f64);
    metrics::gauge!(REQUESTS_UNWRITTEN).set(stats.requests_unwritten() as f64);
}
