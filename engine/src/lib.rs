//! flashstock's engine: the pure, deterministic state machine that owns stock.
//!
//! No IO, no clock, no threads, no randomness: time comes in as `now_ms`, ids come in with the
//! commands, and the same records replayed into an empty shard rebuild the same state. That is
//! what makes the simulation tests possible, and what the write-ahead log relies on.
//!
//! Map of the modules:
//! - [`ids`]: SKU, buyer, request, reservation and shard ids, and [`ShardMap`], the one place
//!   that decides which shard owns a SKU or a reservation.
//! - [`command`]: the state-changing commands ([`Command`]).
//! - [`buckets`]: hot-SKU buckets: one SKU spread over several shards, and the moves of
//!   stock between its buckets.
//! - [`message`]: [`ShardMessage`], what one shard's step leaves for another.
//! - [`cart`]: all-or-nothing carts across shards: the participants' and the coordinator's
//!   sides, the sans-IO [`CartDriver`], the start-up pass and the cross-shard invariants.
//! - [`outcome`]: what a command did ([`Outcome`]), and the read views.
//! - [`limits`]: every bound the engine enforces, and [`ShardConfig`].
//! - [`shard`]: [`Shard`], with `apply`, `tick`, `replay` and the queries.
//! - [`slots`]: a shard's side of moving a slot range between servers: freeze, export,
//!   import, thaw, release.
//! - [`record`]: log records, their encoding, and the sinks `apply` writes them to.
//! - [`event`]: the committed-deduction stream's events, read off records.
//! - `snapshot` and `invariants`: `Shard::encode_snapshot`, `Shard::restore`, `Shard::digest`
//!   and `Shard::check_invariants`.
//! - `dedup`: what is remembered of earlier answers, so retries are idempotent.
//! - `returns`: the sales each shard keeps returnable, bounded by age and count.
//! - `probe`: an open-addressing table with one cache line per lookup, under `dedup` and the
//!   per-buyer counts.
//! - `taken`: per-buyer counts of one SKU, for buyer limits.
//! - `table`: the reservation table, a ring indexed by sequence number.
//! - `expiry`: the expiry queue, a FIFO for in-order deadlines plus a heap for the rest.
//! - [`error`]: [`EngineError`], for broken bytes and broken invariants.

pub mod buckets;
pub mod cart;
pub mod command;
pub mod error;
pub mod event;
pub mod ids;
pub mod limits;
pub mod message;
pub mod outcome;
pub mod record;
pub mod shard;
pub mod slots;

mod codec;
mod dedup;
mod expiry;
mod invariants;
mod probe;
mod returns;
mod snapshot;
mod table;
mod taken;

pub use buckets::{MoveOut, MoveSplit, StockMove, BUCKETS_MAX};
pub use cart::{
    check_carts, settle_all, Ask, CartDriver, CartEnd, CartLine, CartView, CommitCart, Decide,
    Fate, Groups, Lines, LinesEnd, PrepareLines, Prepared, ReserveCart, Settle, CART_LINES_MAX,
    CART_PREPARE_TIMEOUT_MS,
};
pub use command::{Command, Reserve, RouteKey, SaleWindow};
pub use error::EngineError;
pub use event::{Change, Event, EventKind};
pub use ids::{
    mix64, slot_of, BuyerId, OrderRef, RequestId, ReservationId, ShardId, ShardMap, SkuId, Slot,
    SplitMix64, SLOT_COUNT,
};
pub use limits::{ShardConfig, RESERVE_QTY_MAX, STOCK_TOTAL_MAX, TICK_EXPIRIES_MAX, TTL_MS_MAX};
pub use message::ShardMessage;
pub use outcome::{LineRefusal, Outcome, ReservationState, ReservationView, SkuView};
pub use record::{
    decode_records, DiscardLog, EncodedLog, Ended, LogSink, Record, SaleReturned, RECORD_BYTES_MAX,
};
pub use shard::{Shard, TableEntries};
pub use slots::{SlotItem, SlotRange, SlotsStep};

/// The body of the `snapshot` fuzz target (and of the test replaying its corpus): arbitrary
/// bytes as a shard snapshot and as log records must be refused or decoded, never panic, and
/// a snapshot that restores must pass every invariant (restore checks them) and encode again.
#[doc(hidden)]
pub fn fuzz_restore(bytes: &[u8]) {
    if let Ok(shard) = Shard::restore(ShardId(0), ShardConfig::default(), bytes) {
        let mut again = Vec::new();
        shard.encode_snapshot(&mut again);
        let restored = Shard::restore(ShardId(0), ShardConfig::default(), &again);
        assert!(restored.is_ok(), "a restored shard's own snapshot must restore");
    }
    for record in decode_records(bytes) {
        if record.is_err() {
            break;
        }
    }
}
pub use snapshot::SNAPSHOT_VERSION;
