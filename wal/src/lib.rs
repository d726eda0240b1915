//! flashstock's write-ahead log.
//!
//! A log holds *batches*: the records one shard actor produced in one step, encoded together
//! and stored as one value with one checksum. Sequence numbers count records, so a batch is
//! named by its first record's sequence number and the next batch starts where it ends.
//!
//! Map of the modules:
//! - [`batch`]: the on-disk batch format (header, checksum) and its validation.
//! - [`sled_wal`]: [`SledWal`], the production log: one sled tree per shard, one insert per
//!   batch, `flush` followed by an `fdatasync` of sled's data file.
//! - `snapshot_files`: [`SledWal`]'s snapshots, one synced file each, outside sled.
//! - [`mem`]: [`MemWal`], the in-memory twin for tests, with injectable faults.
//! - [`error`]: [`WalError`], the one error type.
//!
//! The contract both implementations keep, and the tests check:
//! - `append` then `sync`: once `sync` returns, the batch survives a crash;
//! - `replay` visits batches in order from a sequence number, refuses a gap or a corrupt batch
//!   in the middle of the log with an error naming its sequence number, and reports a corrupt
//!   *last* batch (a torn write that was never acknowledged), which `discard_tail` removes;
//! - `write_snapshot` is durable when it returns, and `truncate_below` never removes a batch
//!   holding a record at or above the given sequence number.

pub mod batch;
pub mod error;
pub mod mem;
pub mod sled_wal;
mod snapshot_files;

pub use batch::{BatchRef, BATCH_HEADER_BYTES, BATCH_RECORDS_BYTES_MAX};
pub use error::WalError;
pub use mem::MemWal;
pub use sled_wal::{SledWal, SledWalConfig};

/// Names one shard's log within a store.
pub type LogId = u16;

/// A snapshot of a shard's state, covering every record below `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The first record sequence number the snapshot does not include.
    pub seq: u64,
    /// The shard's encoded state.
    pub state: Vec<u8>,
}

/// What a replay saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Batches visited.
    pub batches: u64,
    /// Records in those batches.
    pub records: u64,
    /// The sequence number the next append must start at.
    pub next_seq: u64,
    /// The first sequence number of a damaged last batch, if any: a write whose sync never
    /// finished, so never acknowledged. It was not visited; remove it with
    /// [`Wal::discard_tail`] before appending.
    pub torn_tail: Option<u64>,
}

/// The error a replay visitor may return; it is wrapped in [`WalError::Visit`].
pub type VisitError = Box<dyn std::error::Error + Send + Sync>;

/// A store of per-shard logs and snapshots.
///
/// Every method takes `&self`, as sled's do: shards recover in parallel, and snapshots are
/// written by their own thread while the durability thread appends. Appends and syncs come
/// from one thread.
pub trait Wal: Send + Sync {
    /// Appends the batch of `record_count` encoded records starting at `first_seq`. Not
    /// durable until [`Wal::sync`] returns.
    fn append(
        &self,
        log: LogId,
        first_seq: u64,
        record_count: u32,
        records: &[u8],
    ) -> Result<(), WalError>;

    /// Makes every appended batch durable.
    fn sync(&self) -> Result<(), WalError>;

    /// Visits, in order, every batch of `log` from record `from_seq` on. A damaged last batch
    /// is reported in [`ReplaySummary::torn_tail`], not visited; a damaged batch before the
    /// last one is an error.
    fn replay(
        &self,
        log: LogId,
        from_seq: u64,
        visit: &mut dyn FnMut(BatchRef<'_>) -> Result<(), VisitError>,
    ) -> Result<ReplaySummary, WalError>;

    /// Reads records for a reader other than recovery (the committed-deduction stream):
    /// visits, in order, the batches holding records in `from_seq..until_seq`, the first being
    /// the batch that contains `from_seq`, until `visit` returns false. `until_seq` must not
    /// pass what is durable. Fails with [`WalError::Truncated`] when records at `from_seq` are
    /// gone (the error says where the log now starts).
    fn read(
        &self,
        log: LogId,
        from_seq: u64,
        until_seq: u64,
        visit: &mut dyn FnMut(BatchRef<'_>) -> bool,
    ) -> Result<(), WalError>;

    /// Removes the torn last batch `replay` reported, so appends can continue from `seq`.
    fn discard_tail(&self, log: LogId, seq: u64) -> Result<(), WalError>;

    /// Stores a snapshot of `log`'s shard covering records below `seq`; durable on return.
    fn write_snapshot(&self, log: LogId, seq: u64, state: &[u8]) -> Result<(), WalError>;

    /// The latest complete snapshot of `log`, if any.
    fn latest_snapshot(&self, log: LogId) -> Result<Option<Snapshot>, WalError>;

    /// Removes the batches of `log` whose records all lie below `seq`.
    fn truncate_below(&self, log: LogId, seq: u64) -> Result<(), WalError>;

    /// Reads a small store-wide value (layout facts such as the shard count).
    fn read_meta(&self, key: &str) -> Result<Option<Vec<u8>>, WalError>;

    /// Writes a small store-wide value; durable on return.
    fn write_meta(&self, key: &str, value: &[u8]) -> Result<(), WalError>;
}
