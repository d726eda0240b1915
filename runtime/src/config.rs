//! The runtime's knobs. Every queue and batch is bounded.

use flashstock_engine::ShardConfig;

/// How many jobs one actor step may take. A step's records are cut into as many WAL batches
/// as they need, so this bounds only how long one step holds its replies back.
pub const BATCH_JOBS_LIMIT: usize = 4096;

/// The most durability threads, and so syncs in flight at once.
pub const SYNCS_IN_FLIGHT_LIMIT: usize = 8;

/// How the runtime is built.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Shard actors (threads). Part of the durable layout: a store refuses another count.
    pub shard_count: u16,
    /// Jobs an actor's inbox holds; a request to a full inbox is answered `Overloaded` at once.
    pub inbox_capacity: usize,
    /// Jobs an actor applies per step, at most [`BATCH_JOBS_LIMIT`].
    pub batch_jobs_max: usize,
    /// How often an idle actor wakes to expire reservations.
    pub tick_interval_ms: u64,
    /// Batches waiting for the durability thread; actors block beyond it, and their inboxes
    /// then fill and refuse work.
    pub durability_queue_batches: usize,
    /// Durability threads, each with at most one sync in flight: a group appended while
    /// another syncs starts its own sync instead of waiting. 1 is classic group commit; 2
    /// nearly halves a single caller's wait for the disk here (see docs/performance.md).
    pub syncs_in_flight_max: usize,
    /// A shard snapshots after this many records, or after `snapshot_every_ms` with at least
    /// one new record, provided the log written since its last snapshot is at least
    /// `snapshot_log_ratio` times as large as that snapshot.
    pub snapshot_every_records: u64,
    /// See `snapshot_every_records`.
    pub snapshot_every_ms: u64,
    /// How many times a shard's last snapshot its log must grow before the next snapshot:
    /// snapshots then cost at most 1/ratio of the log's writes, and recovery replays at most
    /// ratio x the state's bytes of log. A shard remembering 2M answers snapshots ~100 MB;
    /// at 1, busy shards spent a third of their write volume (and a tenth of the CPU) on
    /// snapshots.
    pub snapshot_log_ratio: u64,
    /// Whether a graceful shutdown snapshots every shard, so the next start replays nothing.
    pub snapshot_on_shutdown: bool,
    /// Records per shard the log keeps for a registered consumer that has not acknowledged
    /// them, beyond what snapshots need; past it they are truncated anyway, with an error log
    /// naming the consumer.
    pub consumer_retention_records_max: u64,
    /// sled's page cache for the log, in bytes (`Runtime::open` only).
    pub wal_cache_bytes: u64,
    /// A shard step taking this long or longer is counted as slow (`slow_steps`, the
    /// `flashstock_shard_slow_steps_total` metric) and logged: every reply of it waited.
    pub slow_step_ms: u64,
    /// The engine's per-shard bounds.
    pub shard: ShardConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        RuntimeConfig {
            shard_count: cores.clamp(1, 64) as u16,
            inbox_capacity: 64 * 1024,
            consumer_retention_records_max: 20_000_000,
            batch_jobs_max: 1024,
            tick_interval_ms: 10,
            durability_queue_batches: 64,
            syncs_in_flight_max: 2,
            snapshot_every_records: 1_000_000,
            snapshot_every_ms: 60_000,
            snapshot_log_ratio: 4,
            snapshot_on_shutdown: true,
            wal_cache_bytes: 256 << 20,
            slow_step_ms: 50,
            shard: ShardConfig::default(),
        }
    }
}

impl RuntimeConfig {
    /// Panics when a knob is out of range; called when the runtime starts.
    pub fn validate(&self) {
        assert!(self.shard_count >= 1, "shard_count must be at least 1");
        assert!(self.inbox_capacity >= 1, "inbox_capacity must be at least 1");
        assert!(
            (1..=BATCH_JOBS_LIMIT).contains(&self.batch_jobs_max),
            "batch_jobs_max must be in 1..={BATCH_JOBS_LIMIT}"
        );
        assert!(self.tick_interval_ms >= 1, "tick_interval_ms must be at least 1");
        assert!(self.durability_queue_batches >= 1, "durability_queue_batches must be >= 1");
        assert!(
            (1..=SYNCS_IN_FLIGHT_LIMIT).contains(&self.syncs_in_flight_max),
            "syncs_in_flight_max must be in 1..={SYNCS_IN_FLIGHT_LIMIT}"
        );
        assert!(self.snapshot_every_records >= 1, "snapshot_every_records must be >= 1");
        assert!(self.snapshot_log_ratio >= 1, "snapshot_log_ratio must be >= 1");
        self.shard.validate();
    }
}
