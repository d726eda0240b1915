//! Hot-SKU buckets (docs/hot-skus.md): one SKU's stock spread over buckets on several
//! shards, so that its reserves are not all decided by one thread.
//!
//! A bucket is a SKU of its own ([`SkuId::bucket`]) on its own shard, and every rule of a
//! SKU (conservation, limits, windows, expiry) holds per bucket unchanged. What is new is
//! the one write that spans buckets, a **move** of units from one bucket to another:
//! 1. the sender logs `MovedOut` (its total and available drop) and keeps the move as in
//!    flight; its outbox carries `MoveIn` to the receiver;
//! 2. the receiver logs `MovedIn` (its total and available rise) unless it has applied that
//!    move already, and answers `MoveAck` either way; it knows by the highest move id it
//!    applied from each sender, since one sender's messages to one shard arrive in order;
//! 3. the sender logs `MoveAcked` and forgets the move.
//!
//! A crash between 1 and 3 leaves the move in flight in the sender's state; the start-up
//! pass sends it again, and step 2 makes that harmless. So a SKU's total over its buckets,
//! plus the units in flight, never changes by a move.

use std::collections::{BTreeMap, BTreeSet};

use crate::command::SaleWindow;
use crate::error::EngineError;
use crate::ids::{ShardId, SkuId};
use crate::message::ShardMessage;
use crate::outcome::Outcome;
use crate::record::{LogSink, Record};
use crate::shard::{Shard, SkuState, Step};

/// The most buckets one SKU may be spread over (the runtime also caps it at its shard
/// count: two buckets on one shard would gain nothing).
pub const BUCKETS_MAX: u32 = 64;

/// Units moved from one bucket of a SKU to another, as the sender logged them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StockMove {
    /// The sender's id for the move: its moves are numbered 1, 2, ... in log order.
    pub id: u64,
    /// The bucket the units left.
    pub from_sku: SkuId,
    /// The bucket they go to.
    pub to_sku: SkuId,
    /// The receiving bucket's shard.
    pub to: ShardId,
    /// How many units.
    pub units: u64,
    /// The SKU's per-buyer limit, for a receiving bucket made by this move.
    pub buyer_limit: Option<u32>,
    /// The SKU's sale window, likewise.
    pub window: SaleWindow,
}

/// How many units a [`MoveOut`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveSplit {
    /// `units`, or what is available when that is less (spreading stock evenly).
    Exact,
    /// At least `units` and at least half of what is available, or all of it when that is
    /// less (refilling a drained bucket: moving half keeps the next refill far off).
    HalfOrMore,
}

/// A request to a bucket's shard: move units from `from_sku` to `to_sku`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoveOut {
    /// The sending bucket (on the shard asked).
    pub from_sku: SkuId,
    /// The receiving bucket.
    pub to_sku: SkuId,
    /// The receiving bucket's shard.
    pub to: ShardId,
    /// The units wanted.
    pub units: u64,
    /// How `units` is read.
    pub split: MoveSplit,
}

/// A shard's side of the moves: what it sent and has not heard back about, and what it
/// applied from each sender.
#[derive(Clone, Debug, Default)]
pub(crate) struct Moves {
    /// SKUs spread over buckets, by their bucket 0 (on this shard), with their bucket count.
    pub(crate) bucketed: BTreeMap<SkuId, u32>,
    /// The id of the next move this shard sends.
    pub(crate) seq_next: u64,
    /// Moves sent and not acknowledged yet, by id.
    pub(crate) in_flight: BTreeMap<u64, StockMove>,
    /// The highest move id applied from each sending shard.
    pub(crate) applied: BTreeMap<ShardId, u64>,
    /// The buckets held here (bucket 0 of the spread SKUs, and buckets moves made): derived,
    /// not in snapshots.
    pub(crate) buckets_here: BTreeSet<SkuId>,
}

impl Moves {
    pub(crate) fn new() -> Moves {
        Moves { seq_next: 1, ..Moves::default() }
    }
}

impl Shard {
    /// Moves units out of bucket `ask.from_sku` towards `ask.to_sku`, logging `MovedOut` and
    /// leaving `MoveIn` in the outbox. When the bucket has nothing to give but units of an
    /// earlier move to `ask.to_sku` may not have arrived yet, that move: the caller waits for
    /// it as for a new one, so units in flight are never missed by both buckets at once.
    /// `None` when the bucket has nothing to give and nothing on its way (or is not here).
    pub fn move_out(
        &mut self,
        ask: &MoveOut,
        now_ms: u64,
        log: &mut impl LogSink,
    ) -> Option<StockMove> {
        let now_ms = self.advance_clock(now_ms);
        let same_sku = ask.from_sku.base() == ask.to_sku.base() && ask.from_sku != ask.to_sku;
        let sku = self.skus.get(&ask.from_sku).filter(|_| same_sku)?;
        let units = match ask.split {
            MoveSplit::Exact => ask.units.min(sku.available),
            MoveSplit::HalfOrMore => ask.units.max(sku.available.div_ceil(2)).min(sku.available),
        };
        if units == 0 {
            let mut towards = self.moves.in_flight.values().rev();
            return towards.find(|m| m.from_sku == ask.from_sku && m.to_sku == ask.to_sku).copied();
        }
        let stock_move = StockMove {
            id: self.moves.seq_next,
            from_sku: ask.from_sku,
            to_sku: ask.to_sku,
            to: ask.to,
            units,
            buyer_limit: sku.buyer_limit,
            window: sku.window,
        };
        self.take_out(&stock_move).expect("checked just above");
        log.push(&Record::MovedOut { at_ms: now_ms, stock_move });
        let to = stock_move.to;
        self.outbox.push(ShardMessage::MoveIn { to, from: self.id, stock_move });
        Some(stock_move)
    }

    /// Puts a move's units into its receiving bucket (made by it when new), unless this
    /// move was applied already; acknowledges it either way. Returns whether it applied.
    pub fn move_in(
        &mut self,
        from: ShardId,
        stock_move: &StockMove,
        now_ms: u64,
        log: &mut impl LogSink,
    ) -> bool {
        let now_ms = self.advance_clock(now_ms);
        let fresh = stock_move.id > self.move_applied_from(from);
        if fresh {
            self.put_in(from, stock_move);
            log.push(&Record::MovedIn { at_ms: now_ms, from, stock_move: *stock_move });
        }
        self.outbox.push(ShardMessage::MoveAck { to: from, id: stock_move.id });
        fresh
    }

    /// The receiver has the move: forget it, logging `MoveAcked` (once).
    pub fn move_acked(&mut self, id: u64, now_ms: u64, log: &mut impl LogSink) {
        let now_ms = self.advance_clock(now_ms);
        if self.moves.in_flight.remove(&id).is_some() {
            log.push(&Record::MoveAcked { at_ms: now_ms, id });
        }
    }

    /// The highest move id applied from `from` (0 when none).
    pub fn move_applied_from(&self, from: ShardId) -> u64 {
        self.moves.applied.get(&from).copied().unwrap_or(0)
    }

    /// Every move this shard sent and has not heard back about, oldest first: the start-up
    /// pass sends them again.
    pub fn moves_in_flight(&self) -> impl Iterator<Item = &StockMove> + '_ {
        self.moves.in_flight.values()
    }

    /// Units of bucket `sku` on their way to another bucket.
    pub fn units_moving_out(&self, sku: SkuId) -> u64 {
        let moving = self.moves.in_flight.values().filter(|m| m.from_sku == sku);
        moving.map(|m| m.units).sum()
    }

    /// Each bucket held here, with its available units plus those on their way out of it:
    /// what it could give a refill. The runtime publishes these after every step, so that a
    /// reserve refused at the end of a sale is answered without asking every bucket.
    pub fn bucket_stock(&self) -> impl Iterator<Item = (SkuId, u64)> + '_ {
        self.moves.buckets_here.iter().map(|&sku| {
            let available = self.skus.get(&sku).map_or(0, |state| state.available);
            (sku, available + self.units_moving_out(sku))
        })
    }

    /// Whether any bucket is held here (so [`Shard::bucket_stock`] has something to say).
    pub fn holds_buckets(&self) -> bool {
        !self.moves.buckets_here.is_empty()
    }

    /// The SKUs whose bucket 0 is on this shard and that are spread, with their bucket
    /// counts: the runtime's routing table is rebuilt from these at start-up.
    pub fn bucketed_skus(&self) -> impl Iterator<Item = (SkuId, u32)> + '_ {
        self.moves.bucketed.iter().map(|(&sku, &buckets)| (sku, buckets))
    }

    /// Spreads a SKU over `buckets` buckets: logged on its bucket 0, the stock moves after
    /// (the runtime's job). Refused for a SKU spread already, and for one some buyer holds or
    /// bought: their counts would stay in bucket 0 while their reserves went to another
    /// bucket, and a limit could be passed.
    pub(crate) fn set_buckets(&mut self, sku_id: SkuId, buckets: u32) -> Step {
        let in_range = (2..=BUCKETS_MAX).contains(&buckets);
        if sku_id.is_bucket() || sku_id.0 > SkuId::BUCKETED_MAX || !in_range {
            return Step::Unchanged(Outcome::InvalidBuckets { buckets_max: BUCKETS_MAX });
        }
        let Some(sku) = self.skus.get(&sku_id) else {
            return Step::Unchanged(Outcome::UnknownSku);
        };
        if let Some(&buckets) = self.moves.bucketed.get(&sku_id) {
            return Step::Unchanged(Outcome::Bucketed { buckets });
        }
        if sku.taken.len() > 0 {
            return Step::Unchanged(Outcome::BuyersCounted { buyers: sku.taken.len() as u64 });
        }
        self.moves.bucketed.insert(sku_id, buckets);
        self.moves.buckets_here.insert(sku_id);
        Step::Changed(Outcome::BucketsSet { buckets })
    }

    /// The refusal of an admin command that would set a spread SKU's total, limit or window
    /// in one bucket only: they are set before the SKU is spread (stock is added with
    /// `AdjustStock`, into bucket 0, and moves on from there).
    pub(crate) fn refuse_if_bucketed(&self, sku: SkuId) -> Option<Outcome> {
        if sku.is_bucket() {
            return Some(Outcome::Bucketed { buckets: 0 });
        }
        self.moves.bucketed.get(&sku).map(|&buckets| Outcome::Bucketed { buckets })
    }

    /// The sender's half of a move, live and on replay.
    fn take_out(&mut self, stock_move: &StockMove) -> Result<(), EngineError> {
        let broken = |detail| EngineError::MoveBookkeeping { id: stock_move.id, detail };
        if stock_move.id != self.moves.seq_next {
            return Err(broken("a move out of sequence"));
        }
        let sku = self.skus.get_mut(&stock_move.from_sku).ok_or(broken("a move from no SKU"))?;
        if sku.available < stock_move.units {
            return Err(broken("a move of more units than were available"));
        }
        sku.available -= stock_move.units;
        sku.total -= stock_move.units;
        self.moves.seq_next += 1;
        self.moves.in_flight.insert(stock_move.id, *stock_move);
        Ok(())
    }

    /// The receiver's half of a move, live and on replay (the caller checked it is fresh).
    fn put_in(&mut self, from: ShardId, stock_move: &StockMove) {
        let sku = self.skus.entry(stock_move.to_sku).or_insert_with(|| SkuState {
            buyer_limit: stock_move.buyer_limit,
            window: stock_move.window,
            ..SkuState::default()
        });
        sku.total += stock_move.units;
        sku.available += stock_move.units;
        self.moves.applied.insert(from, stock_move.id);
        self.moves.buckets_here.insert(stock_move.to_sku);
    }

    /// Replays one logged step of a move through the same code as the live run.
    pub(crate) fn replay_move(&mut self, record: &Record) -> Result<(), EngineError> {
        match *record {
            Record::MovedOut { at_ms, ref stock_move } => {
                self.advance_clock(at_ms);
                self.take_out(stock_move)
            }
            Record::MovedIn { at_ms, from, ref stock_move } => {
                self.advance_clock(at_ms);
                if stock_move.id <= self.move_applied_from(from) {
                    let detail = "a move applied twice";
                    return Err(EngineError::MoveBookkeeping { id: stock_move.id, detail });
                }
                self.put_in(from, stock_move);
                Ok(())
            }
            Record::MoveAcked { at_ms, id } => {
                self.advance_clock(at_ms);
                match self.moves.in_flight.remove(&id) {
                    Some(_) => Ok(()),
                    None => Err(EngineError::MoveBookkeeping { id, detail: "an unknown move" }),
                }
            }
            _ => unreachable!("only move records are replayed here"),
        }
    }
}
