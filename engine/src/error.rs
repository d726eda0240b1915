//! The engine's one error type: broken bytes (records, snapshots) and broken invariants.
//! Business results are never errors; they are `Outcome`s.

use crate::command::Command;
use crate::ids::{BuyerId, ReservationId, SkuId};

/// Why decoding, replay or an invariant check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The bytes end inside a record or snapshot.
    #[error("{what} truncated at byte {offset}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where the bytes ran out.
        offset: usize,
    },
    /// A record starts with a tag this build does not know.
    #[error("unknown record tag {tag} at byte {offset}")]
    UnknownRecordTag {
        /// The tag read.
        tag: u8,
        /// Where the record starts.
        offset: usize,
    },
    /// A field holds a value outside its range.
    #[error("field {field} holds invalid value {value}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// The value read.
        value: u64,
    },
    /// The bytes are not a shard snapshot.
    #[error("not a shard snapshot (bad magic)")]
    NotASnapshot,
    /// The snapshot format version is not one this build reads.
    #[error("snapshot format version {version} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// The version found.
        version: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The snapshot belongs to another shard.
    #[error("snapshot of shard {found} offered to shard {expected}")]
    WrongShard {
        /// The shard restoring.
        expected: u16,
        /// The shard that wrote the snapshot.
        found: u16,
    },
    /// The snapshot ends with bytes that belong to nothing.
    #[error("{count} trailing bytes after the snapshot")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A logged command changed nothing on replay: the log does not fit the state it is
    /// replayed onto.
    #[error("logged command at {at_ms} ms changed nothing on replay: {command:?}")]
    ReplayNoEffect {
        /// The command's logged time.
        at_ms: u64,
        /// The command.
        command: Command,
    },
    /// The log answers one request twice while its first answer was still remembered.
    #[error("request {request:?} is answered twice in the log")]
    ReplayDuplicateRequest {
        /// The request.
        request: crate::ids::RequestId,
    },
    /// A logged end of a reservation did something else on replay (or nothing: `replayed`
    /// is `None`).
    #[error("the log says {logged:?} at {at_ms} ms, replay did {replayed:?}")]
    ReplayMismatch {
        /// The record's logged time.
        at_ms: u64,
        /// What the log says ended (boxed: this error is rare, `Result`s are everywhere).
        logged: Box<crate::record::Ended>,
        /// What replay ended.
        replayed: Option<Box<crate::record::Ended>>,
    },
    /// Invariant 1: available + reserved + sold != total.
    #[error(
        "sku {sku:?}: available {available} + reserved {reserved} + sold {sold} != total {total}"
    )]
    Conservation {
        /// The SKU.
        sku: SkuId,
        /// Its total.
        total: u64,
        /// Its available units.
        available: u64,
        /// Its reserved units.
        reserved: u64,
        /// Its sold units.
        sold: u64,
    },
    /// A SKU's reserved count differs from the sum over its live reservations.
    #[error("sku {sku:?}: reserved {recorded} but live reservations hold {counted}")]
    ReservedMismatch {
        /// The SKU.
        sku: SkuId,
        /// The SKU's reserved count.
        recorded: u64,
        /// The sum over live reservations.
        counted: u64,
    },
    /// A SKU's per-buyer accounting differs from reserved + sold.
    #[error("sku {sku:?}: buyers hold+bought {taken_sum} but reserved+sold is {committed}")]
    TakenMismatch {
        /// The SKU.
        sku: SkuId,
        /// The sum of per-buyer taken counts.
        taken_sum: u64,
        /// reserved + sold.
        committed: u64,
    },
    /// Invariant 2: a buyer holds plus bought more than the SKU's limit.
    #[error("sku {sku:?}: buyer {buyer:?} took {taken}, above the limit {limit}")]
    BuyerOverLimit {
        /// The SKU.
        sku: SkuId,
        /// The buyer.
        buyer: BuyerId,
        /// What the buyer holds plus bought.
        taken: u64,
        /// The limit.
        limit: u32,
    },
    /// The reservation bookkeeping disagrees with itself (live count, ended list, ids).
    #[error("reservation bookkeeping broken at {reservation:?}: {detail}")]
    ReservationBookkeeping {
        /// The reservation concerned, if one.
        reservation: Option<ReservationId>,
        /// What disagrees.
        detail: &'static str,
    },
    /// The index of remembered answers disagrees with the answers themselves.
    #[error("dedup bookkeeping broken: {answers} answers indexed, {ordered} remembered")]
    DedupBookkeeping {
        /// Entries in the index.
        answers: usize,
        /// Answers remembered, in eviction order.
        ordered: usize,
    },
    /// A logged cart record did something else on replay than when it was logged.
    #[error("cart record at {at_ms} ms: {detail}")]
    ReplayCart {
        /// The record's logged time.
        at_ms: u64,
        /// What disagrees.
        detail: &'static str,
    },
    /// Carts and their line groups disagree, on one shard or between shards.
    #[error("cart bookkeeping broken at {cart:?}: {detail}")]
    CartBookkeeping {
        /// The cart concerned, if one.
        cart: Option<ReservationId>,
        /// What disagrees.
        detail: &'static str,
    },
    /// A move of stock between buckets disagrees with the shard's moves (docs/hot-skus.md).
    #[error("bucket move {id} broken: {detail}")]
    MoveBookkeeping {
        /// The move's id (its sender's).
        id: u64,
        /// What disagrees.
        detail: &'static str,
    },
    /// A slot-range step or import that does not fit this shard's state (docs/cluster.md):
    /// the range is not frozen here, overlaps one that is, holds what cannot move, or an
    /// imported item does not fit what was imported before it.
    #[error("slots {first}-{last}: {detail}")]
    Slots {
        /// The range's first slot.
        first: u16,
        /// Its last slot.
        last: u16,
        /// What does not fit.
        detail: &'static str,
    },
    /// A snapshot remembers two answers to one request.
    #[error("snapshot remembers request {request:?} twice")]
    DuplicateAnswer {
        /// The request.
        request: crate::ids::RequestId,
    },
}
