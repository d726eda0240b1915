//! The runtime's metrics, named once and described once, recorded through the `metrics`
//! facade (a no-op until a process installs a recorder; `flashstockd` installs the
//! Prometheus one). Shard steps and group commits record through handles resolved when the
//! runtime starts, never through a registry lookup per step.

use flashstock_engine::TableEntries;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Jobs waiting in a shard's inbox at the start of its step.
pub const SHARD_INBOX_JOBS: &str = "flashstock_shard_inbox_jobs";
/// Shard steps that took `slow_step_ms` or longer.
pub const SHARD_SLOW_STEPS_TOTAL: &str = "flashstock_shard_slow_steps_total";
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
/// Entries of a shard's bounded tables, by `table` (ended_reservations, carts, cart_groups,
/// returnable_sales): each rises to its bound and stays.
pub const SHARD_TABLE_ENTRIES: &str = "flashstock_shard_table_entries";
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
/// The checkpoint thread encoding a snapshot from a shard's replica.
pub const SNAPSHOT_ENCODE_SECONDS: &str = "flashstock_snapshot_encode_seconds";
/// Records the checkpoint thread replayed into a shard's replica.
pub const SNAPSHOT_REPLICA_RECORDS_TOTAL: &str = "flashstock_snapshot_replica_records_total";
/// The checkpoint thread writing a snapshot and truncating the log below it.
pub const SNAPSHOT_WRITE_SECONDS: &str = "flashstock_snapshot_write_seconds";
/// The size of a shard's latest snapshot.
pub const SNAPSHOT_BYTES: &str = "flashstock_snapshot_bytes";
/// Snapshots that failed to be written.
pub const SNAPSHOT_FAILURES_TOTAL: &str = "flashstock_snapshot_failures_total";
/// Per consumer and shard, the position acknowledged.
pub const CONSUMER_ACKED_POSITION: &str = "flashstock_consumer_acked_position";
/// Per consumer and shard, durable records not yet acknowledged.
pub const CONSUMER_LAG_RECORDS: &str = "flashstock_consumer_lag_records";
/// Per consumer and shard, records the log keeps only for it.
pub const CONSUMER_HELD_RECORDS: &str = "flashstock_consumer_held_records";
/// Moves of stock between a hot SKU's buckets that the runtime asked for (refills, cart
/// fills, spreading; docs/hot-skus.md).
pub const BUCKET_MOVES_TOTAL: &str = "flashstock_bucket_moves_total";
/// Reserves of spread SKUs refused by their home bucket, by `result`: `held` after a
/// refill, `sold_out` after asking every bucket, `sold_out_published` answered at once from
/// the buckets' published stock.
pub const BUCKET_REFILLS_TOTAL: &str = "flashstock_bucket_refills_total";
/// How long the last start's recovery took.
pub const RECOVERY_SECONDS: &str = "flashstock_recovery_seconds";
/// Records the last start's recovery replayed.
pub const RECOVERY_RECORDS: &str = "flashstock_recovery_records";

/// Describes the runtime's metrics to the recorder (help text and unit), and starts its
/// counters of rare events at 0. Call once the recorder is installed.
pub fn describe() {
    describe_counter!(WAL_RECORDS_TOTAL, Unit::Count, "Records appended to the write-ahead log.");
    describe_counter!(
        SNAPSHOT_FAILURES_TOTAL,
        Unit::Count,
        "Snapshots that failed to be written (the log is kept)."
    );
    describe_counter!(WAL_BYTES_TOTAL, Unit::Bytes, "Record bytes appended to the log.");
    let moves = "Moves of stock between a hot SKU's buckets (refills, cart fills, spreading).";
    describe_counter!(BUCKET_MOVES_TOTAL, Unit::Count, moves);
    let refills = "Reserves of spread SKUs refused by their home bucket, by what became of them.";
    describe_counter!(BUCKET_REFILLS_TOTAL, Unit::Count, refills);
    describe_counter!(
        SNAPSHOT_REPLICA_RECORDS_TOTAL,
        Unit::Count,
        "Records replayed into the shard's snapshot replica."
    );
    let gauges = [
        (SHARD_INBOX_JOBS, "Jobs waiting in the shard's inbox at the start of its step."),
        (RESERVATIONS_LIVE, "Reservations held now."),
        (SKUS, "SKUs known."),
        (REMEMBERED_ANSWERS, "Answers remembered for retried request ids."),
        (SHARD_TABLE_ENTRIES, "Entries of a shard's bounded tables, by table."),
        (WAL_DURABLE_POSITION, "The sequence number below which the shard's log is durable."),
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
        (SHARD_STEP_SECONDS, "One shard step applying its jobs."),
        (WAL_APPEND_SECONDS, "Appending one group commit's batches to the log."),
        (WAL_SYNC_SECONDS, "The one sync of a group commit."),
        (SNAPSHOT_ENCODE_SECONDS, "Encoding a snapshot from the shard's replica (off the shard)."),
        (SNAPSHOT_WRITE_SECONDS, "Writing a snapshot and truncating the log below it."),
    ];
    for (name, help) in seconds {
        describe_histogram!(name, Unit::Seconds, help);
    }
    describe_histogram!(SHARD_STEP_JOBS, Unit::Count, "Jobs one shard step applied.");
    metrics::counter!(SNAPSHOT_FAILURES_TOTAL).absolute(0);
    let slow = "Shard steps that took slow_step_ms or longer (every reply of one waited).";
    describe_counter!(SHARD_SLOW_STEPS_TOTAL, Unit::Count, slow);
}

/// A counter exported at 0 before its first event, so that rates and alerts see it at once.
pub(crate) fn from_zero(counter: metrics::Counter) -> metrics::Counter {
    counter.absolute(0);
    counter
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
    slow_steps: metrics::Counter,
    reservations_live: metrics::Gauge,
    skus: metrics::Gauge,
    remembered_answers: metrics::Gauge,
    /// `SHARD_TABLE_ENTRIES` by table: ended reservations, carts, cart groups, returnable.
    tables: [metrics::Gauge; 4],
}

impl ShardMetrics {
    /// The handles of shard `shard`, resolved once: a step records without a registry lookup.
    pub(crate) fn new(shard: u16) -> ShardMetrics {
        let label = shard.to_string();
        ShardMetrics {
            inbox_jobs: metrics::gauge!(SHARD_INBOX_JOBS, "shard" => label.clone()),
            step_jobs: metrics::histogram!(SHARD_STEP_JOBS, "shard" => label.clone()),
            step_seconds: metrics::histogram!(SHARD_STEP_SECONDS, "shard" => label.clone()),
            slow_steps: from_zero(
                metrics::counter!(SHARD_SLOW_STEPS_TOTAL, "shard" => label.clone()),
            ),
            reservations_live: metrics::gauge!(RESERVATIONS_LIVE, "shard" => label.clone()),
            skus: metrics::gauge!(SKUS, "shard" => label.clone()),
            remembered_answers: metrics::gauge!(REMEMBERED_ANSWERS, "shard" => label.clone()),
            tables: ["ended_reservations", "carts", "cart_groups", "returnable_sales"].map(
                |table| metrics::gauge!(SHARD_TABLE_ENTRIES, "shard" => label.clone(), "table" => table),
            ),
        }
    }

    pub(crate) fn step(&self, inbox_jobs: usize, jobs: usize, elapsed: Duration) {
        self.inbox_jobs.set(inbox_jobs as f64);
        self.step_jobs.record(jobs as f64);
        self.step_seconds.record(elapsed.as_secs_f64());
    }

    pub(crate) fn slow_step(&self) {
        self.slow_steps.increment(1);
    }

    pub(crate) fn state(&self, reservations_live: usize, skus: usize, tables: TableEntries) {
        self.reservations_live.set(reservations_live as f64);
        self.skus.set(skus as f64);
        self.remembered_answers.set(tables.remembered_answers as f64);
        let [ended, carts, groups, returnable] = &self.tables;
        ended.set(tables.ended_reservations as f64);
        carts.set(tables.carts as f64);
        groups.set(tables.cart_groups as f64);
        returnable.set(tables.returnable_sales as f64);
    }
}

impl std::fmt::Debug for ShardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardMetrics")
    }
}

/// One shard's snapshot handles, recorded by the checkpoint thread.
pub(crate) struct SnapshotMetrics {
    encode_seconds: metrics::Histogram,
    write_seconds: metrics::Histogram,
    bytes: metrics::Gauge,
    replica_records: metrics::Counter,
}

impl SnapshotMetrics {
    pub(crate) fn new(shard: u16) -> SnapshotMetrics {
        let label = shard.to_string();
        SnapshotMetrics {
            encode_seconds: metrics::histogram!(SNAPSHOT_ENCODE_SECONDS, "shard" => label.clone()),
            write_seconds: metrics::histogram!(SNAPSHOT_WRITE_SECONDS),
            bytes: metrics::gauge!(SNAPSHOT_BYTES, "shard" => label.clone()),
            replica_records: from_zero(
                metrics::counter!(SNAPSHOT_REPLICA_RECORDS_TOTAL, "shard" => label),
            ),
        }
    }

    pub(crate) fn replayed(&self, records: u64) {
        self.replica_records.increment(records);
    }

    pub(crate) fn encoded(&self, bytes: u64, encode: Duration) {
        self.bytes.set(bytes as f64);
        self.encode_seconds.record(encode.as_secs_f64());
    }

    pub(crate) fn written(&self, write: Duration) {
        self.write_seconds.record(write.as_secs_f64());
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
