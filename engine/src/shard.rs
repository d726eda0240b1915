//! `Shard`: the state machine that owns the stock of the SKUs hashed to it.
//!
//! `apply(command, now_ms, log)` decides, changes state, and emits the records that let
//! `replay` rebuild the same state. Nothing here reads a clock or does IO: time is an argument,
//! and a shard's clock never runs backwards (an earlier `now_ms` is read as the latest seen).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rustc_hash::FxHashMap;

use crate::buckets::Moves;
use crate::cart::{CartEnd, Groups, Lines};
use crate::command::{Command, Reserve, SaleWindow};
use crate::dedup::Dedup;
use crate::error::EngineError;
use crate::expiry::ExpiryQueue;
use crate::ids::{slot_of, BuyerId, OrderRef, RequestId, ReservationId, ShardId, SkuId};
use crate::limits::{ShardConfig, RESERVE_QTY_MAX, STOCK_TOTAL_MAX, TICK_EXPIRIES_MAX, TTL_MS_MAX};
use crate::message::ShardMessage;
use crate::outcome::{Outcome, ReservationState, ReservationView, SkuView};
use crate::probe::HashKey;
use crate::record::{Ended, LogSink, Record, SaleReturned};
use crate::returns::{Returnable, Sale, SaleKey};
use crate::slots::SlotRange;
use crate::table::ReservationTable;
use crate::taken::BuyerCounts;

/// One SKU's stock. `available + reserved + sold == total` always.
#[derive(Clone, Debug, Default)]
pub(crate) struct SkuState {
    pub(crate) total: u64,
    pub(crate) available: u64,
    pub(crate) reserved: u64,
    pub(crate) sold: u64,
    pub(crate) buyer_limit: Option<u32>,
    pub(crate) window: SaleWindow,
    /// Units each buyer holds plus has bought. Kept whether or not a limit is set, so that a
    /// limit set mid-sale counts what was taken before it. Buyers at zero are removed.
    pub(crate) taken: BuyerCounts,
}

/// One reservation, 32 bytes: it is the bulk of a busy shard's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub(crate) buyer: BuyerId,
    pub(crate) sku: SkuId,
    pub(crate) expires_at_ms: u64,
    pub(crate) qty: u32,
    pub(crate) state: ReservationState,
}

const _: () = assert!(std::mem::size_of::<Reservation>() == 32);

/// A participant's lines of one cart: their units are reserved, in doubt until the
/// coordinator's decision settles them (`held_by`), and released or sold when the cart ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LineGroup {
    /// This shard's id for the group: a stale prepare of the same cart gets another.
    pub(crate) group: u64,
    pub(crate) coordinator: ShardId,
    pub(crate) buyer: BuyerId,
    pub(crate) lines: Lines,
    pub(crate) deadline_ms: u64,
    /// The cart holding the group and when it lapses, once the coordinator committed it.
    pub(crate) held_by: Option<(ReservationId, u64)>,
    /// When the group next asks its coordinator what became of it. In memory only: a
    /// restored group asks at its deadline (in doubt) or its cart's expiry plus a grace.
    pub(crate) ask_at_ms: u64,
}

/// A cart this shard decided, as its coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cart {
    pub(crate) request: RequestId,
    pub(crate) buyer: BuyerId,
    pub(crate) expires_at_ms: u64,
    pub(crate) state: ReservationState,
    pub(crate) order_ref: Option<OrderRef>,
    pub(crate) lines: Lines,
    pub(crate) groups: Groups,
}

/// The stock state machine of one shard. `Clone` is for the runtime's snapshot replica: a
/// one-time copy at start-up, kept current by `replay`.
#[derive(Clone, Debug)]
pub struct Shard {
    pub(crate) id: ShardId,
    pub(crate) config: ShardConfig,
    pub(crate) clock_ms: u64,
    pub(crate) reservation_seq_next: u64,
    pub(crate) skus: FxHashMap<SkuId, SkuState>,
    /// Live reservations and ended ones still remembered (see `ended`).
    pub(crate) reservations: ReservationTable,
    pub(crate) reservations_live: usize,
    /// Order references given at reserve, for live reservations only: few callers give one
    /// that early, so it stays out of the 32-byte reservation.
    pub(crate) order_refs: FxHashMap<ReservationId, OrderRef>,
    /// Ended reservations still remembered, oldest first, with when they ended.
    pub(crate) ended: VecDeque<(ReservationId, u64)>,
    /// Expiry times of live reservations, earliest first. Entries of reservations that ended
    /// early are left in place (counted in `expiries_stale`) and skipped when popped; the queue
    /// is compacted when they outnumber the live ones, so memory stays within twice the live set.
    pub(crate) expiries: ExpiryQueue,
    pub(crate) expiries_stale: usize,
    pub(crate) dedup: Dedup,
    /// What per-buyer counts hash buyer ids with (from `config.hash_seed`).
    pub(crate) hash_key: HashKey,
    /// Participant: the groups of cart lines this shard holds, by the cart's request id.
    /// Boxed: a group is ~330 bytes, and a map that doubles moves its values.
    pub(crate) groups: FxHashMap<RequestId, Box<LineGroup>>,
    pub(crate) group_seq_next: u64,
    /// When open groups ask their coordinator, earliest first: (ask time, cart, group).
    /// Entries whose group moved on (counted in `asks_stale`) are skipped when popped, and
    /// dropped all at once when they outnumber the open groups: a group held for 15 minutes
    /// and confirmed at once would otherwise leave its entry for those 15 minutes.
    pub(crate) asks_due: BinaryHeap<Reverse<(u64, RequestId, u64)>>,
    pub(crate) asks_stale: usize,
    /// Coordinator: carts decided here, held or ended and still remembered.
    /// Boxed: a cart is ~600 bytes, and a map that doubles moves its values.
    pub(crate) carts: FxHashMap<ReservationId, Box<Cart>>,
    /// The same carts by their request id, for participants' questions.
    pub(crate) cart_ids: FxHashMap<RequestId, ReservationId>,
    pub(crate) carts_live: usize,
    /// Ended carts still remembered, oldest first, with when they ended.
    pub(crate) carts_ended: VecDeque<(ReservationId, u64)>,
    /// Sales that may still be returned (see `returns`).
    pub(crate) returnable: Returnable,
    /// Messages for other shards left by `apply`, the cart calls and `tick`; the runtime
    /// takes them with `take_messages` and delivers them once the step is durable.
    pub(crate) outbox: Vec<ShardMessage>,
    /// Hot-SKU buckets: the SKUs spread from here, and the moves of stock between buckets.
    pub(crate) moves: Moves,
    /// Slot ranges being moved between servers (see `slots`): no command of them applies,
    /// none of their holds expires.
    pub(crate) frozen: Vec<SlotRange>,
    /// Held reservations of frozen ranges: they have no expiry entry until thawed.
    pub(crate) reservations_frozen: usize,
}

/// Entries in each of a shard's bounded tables (see [`Shard::table_entries`]); the bounds
/// are [`ShardConfig`]'s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableEntries {
    /// Answers remembered for retries (`dedup_entries_max`, `dedup_retention_ms`).
    pub remembered_answers: usize,
    /// Ended reservations still remembered (`ended_entries_max`, `ended_retention_ms`).
    pub ended_reservations: usize,
    /// Carts this shard coordinates, held or ended and remembered (live ones, plus
    /// `carts_ended_max` ended ones at most).
    pub carts: usize,
    /// Cart line groups this shard holds as a participant (in doubt or held).
    pub cart_groups: usize,
    /// Sales that may still be returned (`returnable_entries_max`, `return_window_ms`).
    pub returnable_sales: usize,
}

/// How many expiries ahead `expire_due` prefetches a buyer count (see `Shard::prefetch`).
const EXPIRY_PREFETCH_AHEAD: usize = 8;

/// What one step did, before the answer is remembered and logged.
pub(crate) enum Step {
    /// The state changed; the command must be logged.
    Changed(Outcome),
    /// A confirm or cancel ended a reservation; logged with what it held.
    Ended(Outcome, Ended),
    /// A confirm or cancel ended a cart (this shard is its coordinator).
    CartEnded(Outcome, CartEnd),
    /// Units of a sale came back.
    Returned(Outcome, SaleReturned),
    /// Nothing changed.
    Unchanged(Outcome),
}

impl Shard {
    /// An empty shard.
    pub fn new(id: ShardId, config: ShardConfig) -> Shard {
        config.validate();
        Shard {
            id,
            config,
            clock_ms: 0,
            reservation_seq_next: 1,
            skus: FxHashMap::default(),
            reservations: ReservationTable::new(id, 1, config.reservation_slots_presized()),
            reservations_live: 0,
            order_refs: FxHashMap::default(),
            ended: VecDeque::with_capacity(config.ended_slots_presized()),
            expiries: ExpiryQueue::with_capacity(config.expiry_slots_presized()),
            expiries_stale: 0,
            dedup: Dedup::new(&config),
            hash_key: HashKey::new(config.hash_seed),
            groups: FxHashMap::default(),
            group_seq_next: 1,
            asks_due: BinaryHeap::new(),
            asks_stale: 0,
            carts: FxHashMap::default(),
            cart_ids: FxHashMap::default(),
            carts_live: 0,
            carts_ended: VecDeque::new(),
            returnable: Returnable::new(
                HashKey::new(config.hash_seed),
                config.returnable_entries_max,
            ),
            outbox: Vec::new(),
            moves: Moves::new(),
            frozen: Vec::new(),
            reservations_frozen: 0,
        }
    }

    /// A copy of the shard whose rings have the capacity `new` gives them (a derived clone's
    /// are only as large as their contents, and would double, copying, as the copy is kept
    /// current). For the runtime's snapshot replica.
    pub fn replica(&self) -> Shard {
        let mut copy = self.clone();
        let config = copy.config;
        copy.dedup.answers.reserve_ring(config.dedup_entries_max + 1);
        copy.reservations.reserve_ring(config.reservation_slots_presized());
        copy.ended.reserve_exact(config.ended_slots_presized().saturating_sub(copy.ended.len()));
        copy.expiries.reserve(config.expiry_slots_presized());
        copy
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The latest time this shard has seen.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// How many reservations are held right now.
    pub fn reservations_live(&self) -> usize {
        self.reservations_live
    }

    /// How many SKUs this shard holds.
    pub fn sku_count(&self) -> usize {
        self.skus.len()
    }

    /// How many answers to state-changing requests the shard remembers for retries.
    pub fn remembered_answers(&self) -> usize {
        self.dedup.answers.len()
    }

    /// How full each of the shard's bounded tables is, for operators: every one of them
    /// grows until its bound (count or age) and then stays there, so a gauge that keeps
    /// rising past its bound is a leak, and one still short of it is not.
    pub fn table_entries(&self) -> TableEntries {
        TableEntries {
            remembered_answers: self.dedup.answers.len(),
            ended_reservations: self.ended.len(),
            carts: self.carts.len(),
            cart_groups: self.groups.len(),
            returnable_sales: self.returnable.len(),
        }
    }

    /// Starts loading into cache the lines `apply(command)` will touch at random: its
    /// remembered-answer slot and, for a reserve, the buyer's count. Nothing changes. A
    /// caller holding a batch calls it a few commands ahead of `apply`, so the misses of
    /// several commands overlap instead of coming one after another.
    pub fn prefetch(&self, command: &Command) {
        self.dedup.prefetch(command.request());
        if let Command::Reserve(reserve) = command {
            if let Some(sku) = self.skus.get(&reserve.sku) {
                sku.taken.prefetch(reserve.buyer);
            }
        }
    }

    /// The earliest time at which a `tick` may have something to expire.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        let expiry = self.expiries.peek().map(|(at_ms, _)| at_ms);
        let ask = self.asks_due.peek().map(|Reverse((at_ms, _, _))| *at_ms);
        match (expiry, ask) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the messages for other shards that the calls since the last take left.
    pub fn take_messages(&mut self, into: &mut Vec<ShardMessage>) {
        into.append(&mut self.outbox);
    }

    /// Reservations and cart line groups held right now: what `reservations_live_max` bounds.
    pub(crate) fn holds_live(&self) -> usize {
        self.reservations_live + self.groups.len()
    }

    /// Applies `command` at `now_ms`, emitting a record to `log` when the state changed.
    pub fn apply(&mut self, command: &Command, now_ms: u64, log: &mut impl LogSink) -> Outcome {
        assert!(
            !self.frozen_slot(command.route_key().slot()),
            "{command:?} names a slot being moved: the caller must check `frozen_slot` first"
        );
        let now_ms = self.advance_clock(now_ms);
        let request = command.request();
        if let Some(first) = self.dedup.lookup(request) {
            return first;
        }
        let (outcome, record) = match self.decide(command, now_ms) {
            Step::Changed(outcome) => (outcome, Record::Apply { at_ms: now_ms, command: *command }),
            Step::Ended(outcome, ended) => {
                let command = with_effective_order_ref(command, &ended);
                (outcome, Record::Ended { at_ms: now_ms, command, ended })
            }
            Step::CartEnded(outcome, end) => {
                (outcome, Record::CartEnded { at_ms: now_ms, command: Some(*command), end })
            }
            Step::Returned(outcome, returned) => {
                (outcome, Record::Returned { at_ms: now_ms, request, returned })
            }
            Step::Unchanged(outcome) => {
                self.dedup.remember_rejection(request, outcome);
                return outcome;
            }
        };
        log.push(&record);
        let answer_of = (request, command.route_key().slot());
        let fresh = self.dedup.remember_change(answer_of, outcome, now_ms, &self.config);
        assert!(fresh, "request {request:?} was looked up unanswered just above");
        #[cfg(debug_assertions)]
        self.assert_touched(command);
        outcome
    }

    /// Applies `command` again after its first refusal went stale: a refusal is remembered
    /// for retries, and would be answered again without this. A request that changed state
    /// is still answered from what was remembered, so this never applies one twice. The
    /// runtime calls it once a hot SKU's drained bucket was refilled (docs/hot-skus.md).
    pub fn apply_again(
        &mut self,
        command: &Command,
        now_ms: u64,
        log: &mut impl LogSink,
    ) -> Outcome {
        self.dedup.forget_rejection(command.request());
        self.apply(command, now_ms, log)
    }

    /// Expires reservations whose time-to-live has passed (at most `TICK_EXPIRIES_MAX` per
    /// call), emitting one record per expiry. Returns how many expired.
    pub fn tick(&mut self, now_ms: u64, log: &mut impl LogSink) -> u32 {
        let now_ms = self.advance_clock(now_ms);
        let expired = self.expire_due(now_ms, TICK_EXPIRIES_MAX, log);
        self.ask_due(now_ms);
        expired
    }

    /// Re-applies one logged record through the same decisions as `apply` and `tick`. Fails
    /// when the record does not do on replay what it did when it was logged; the shard may
    /// then be half-changed and must be discarded (recovery stops).
    pub fn replay(&mut self, record: &Record) -> Result<(), EngineError> {
        let (at_ms, command, logged) = match *record {
            Record::Apply { at_ms, command } => (at_ms, command, None),
            Record::Ended { at_ms, command, ended } => (at_ms, command, Some(ended)),
            Record::Returned { at_ms, request, returned } => {
                return self.replay_return(at_ms, request, &returned);
            }
            Record::LinesPrepared { .. }
            | Record::LinesResolved { .. }
            | Record::LinesEnded { .. }
            | Record::CartCommitted { .. }
            | Record::CartAborted { .. }
            | Record::CartEnded { .. } => {
                let replayed = self.replay_cart(record);
                // Replay rebuilds state; the messages a live step left were delivered then,
                // and what was lost in a crash is settled by the start-up pass.
                self.outbox.clear();
                return replayed;
            }
            Record::Slots { .. } | Record::SlotImported { .. } => return self.replay_slots(record),
            Record::MovedOut { .. } | Record::MovedIn { .. } | Record::MoveAcked { .. } => {
                let replayed = self.replay_move(record);
                self.outbox.clear();
                return replayed;
            }
            Record::Expired { at_ms, ended } => {
                let now_ms = self.advance_clock(at_ms);
                let replayed = self.expire_logged(ended.reservation, now_ms);
                if replayed != Some(ended) {
                    let (logged, replayed) = (Box::new(ended), replayed.map(Box::new));
                    return Err(EngineError::ReplayMismatch { at_ms, logged, replayed });
                }
                return Ok(());
            }
        };
        let now_ms = self.advance_clock(at_ms);
        // No dedup lookup first: the record exists because the live run found no earlier
        // answer, and remembering the answer detects a duplicate anyway.
        let outcome = match (self.decide(&command, now_ms), logged) {
            (Step::Changed(outcome), None) => outcome,
            (Step::Ended(outcome, replayed), Some(logged)) => {
                if replayed != logged {
                    return Err(EngineError::ReplayMismatch {
                        at_ms,
                        logged: Box::new(logged),
                        replayed: Some(Box::new(replayed)),
                    });
                }
                outcome
            }
            _ => return Err(EngineError::ReplayNoEffect { at_ms, command }),
        };
        let answer_of = (command.request(), command.route_key().slot());
        if !self.dedup.remember_change(answer_of, outcome, now_ms, &self.config) {
            return Err(EngineError::ReplayNoEffect { at_ms, command });
        }
        Ok(())
    }

    /// Replays a logged return through the same decision as `apply`.
    fn replay_return(
        &mut self,
        at_ms: u64,
        request: crate::ids::RequestId,
        logged: &SaleReturned,
    ) -> Result<(), EngineError> {
        let now_ms = self.advance_clock(at_ms);
        let command = Command::ReturnSold {
            request,
            reservation: logged.reservation,
            line: logged.line,
            sku: logged.sku,
            qty: logged.qty,
        };
        match self.decide(&command, now_ms) {
            Step::Returned(outcome, replayed) if replayed == *logged => {
                let answer_of = (request, command.route_key().slot());
                if self.dedup.remember_change(answer_of, outcome, now_ms, &self.config) {
                    return Ok(());
                }
                Err(EngineError::ReplayNoEffect { at_ms, command })
            }
            _ => Err(EngineError::ReplayNoEffect { at_ms, command }),
        }
    }

    /// Starts a bulk replay: `replay` then collects remembered answers in log order, and
    /// [`Shard::finish_replay`] builds them once. Same resulting state as replaying without it,
    /// at a fraction of the hashing; recovery uses it.
    pub fn begin_replay(&mut self) {
        self.dedup.begin_bulk();
    }

    /// Ends a bulk replay. Fails when the log answered one request twice while its first
    /// answer was still remembered, which a live run never logs.
    pub fn finish_replay(&mut self) -> Result<(), EngineError> {
        self.dedup
            .finish_bulk(&self.config)
            .map_err(|request| EngineError::ReplayDuplicateRequest { request })
    }

    /// Reads one SKU.
    pub fn query_sku(&self, sku: SkuId) -> Option<SkuView> {
        self.skus.get(&sku).map(|s| SkuView {
            sku,
            total: s.total,
            available: s.available,
            reserved: s.reserved,
            sold: s.sold,
            buyer_limit: s.buyer_limit,
            window: s.window,
        })
    }

    /// Reads one reservation, live or remembered after its end.
    pub fn query_reservation(&self, reservation: ReservationId) -> Option<ReservationView> {
        self.reservations.get(reservation).map(|r| ReservationView {
            reservation,
            buyer: r.buyer,
            // A bucket's reservation is of the SKU the caller named.
            sku: r.sku.base(),
            qty: r.qty,
            expires_at_ms: r.expires_at_ms,
            state: r.state,
        })
    }

    /// Every SKU of the shard, in no particular order.
    pub fn skus(&self) -> impl Iterator<Item = SkuView> + '_ {
        self.skus.keys().filter_map(|&sku| self.query_sku(sku))
    }

    pub(crate) fn advance_clock(&mut self, now_ms: u64) -> u64 {
        self.clock_ms = self.clock_ms.max(now_ms);
        self.clock_ms
    }

    pub(crate) fn decide(&mut self, command: &Command, now_ms: u64) -> Step {
        match *command {
            Command::Reserve(ref reserve) => self.reserve(reserve, now_ms),
            Command::Confirm { reservation, order_ref, .. } => {
                self.end_on_request(reservation, ReservationState::Confirmed, order_ref, now_ms)
            }
            Command::Cancel { reservation, .. } => {
                self.end_on_request(reservation, ReservationState::Cancelled, None, now_ms)
            }
            Command::SetStock { sku, total, .. } => match self.refuse_if_bucketed(sku) {
                Some(refusal) => Step::Unchanged(refusal),
                None => self.set_stock(sku, total),
            },
            Command::AdjustStock { sku, delta, .. } => self.adjust_stock(sku, delta),
            Command::SetBuyerLimit { sku, limit, .. } => match self.refuse_if_bucketed(sku) {
                Some(refusal) => Step::Unchanged(refusal),
                None => self.set_buyer_limit(sku, limit),
            },
            Command::SetSaleWindow { sku, window, .. } => match self.refuse_if_bucketed(sku) {
                Some(refusal) => Step::Unchanged(refusal),
                None => self.set_sale_window(sku, window),
            },
            Command::SetBuckets { sku, buckets, .. } => self.set_buckets(sku, buckets),
            Command::ReturnSold { reservation, line, sku, qty, .. } => {
                self.return_sold((reservation, line), sku, qty, now_ms)
            }
        }
    }

    fn reserve(&mut self, r: &Reserve, now_ms: u64) -> Step {
        if r.qty == 0 || r.qty > RESERVE_QTY_MAX {
            return Step::Unchanged(Outcome::InvalidQuantity { qty_max: RESERVE_QTY_MAX });
        }
        if r.ttl_ms == 0 || r.ttl_ms > TTL_MS_MAX {
            return Step::Unchanged(Outcome::InvalidTtl { ttl_ms_max: TTL_MS_MAX });
        }
        if let Err(refusal) = self.check_line(r.sku, r.buyer, r.qty, now_ms) {
            return Step::Unchanged(refusal);
        }
        if let Err(refusal) = self.check_room() {
            return Step::Unchanged(refusal);
        }
        self.hold_units(r.sku, r.buyer, r.qty);

        let reservation = ReservationId::new(slot_of(r.sku), self.id, self.reservation_seq_next);
        self.reservation_seq_next += 1;
        let expires_at_ms = now_ms + r.ttl_ms;
        let held = Reservation {
            buyer: r.buyer,
            sku: r.sku,
            expires_at_ms,
            qty: r.qty,
            state: ReservationState::Held,
        };
        self.reservations.insert(reservation, held);
        if let Some(order_ref) = r.order_ref {
            self.order_refs.insert(reservation, order_ref);
        }
        self.expiries.push(expires_at_ms, reservation);
        self.reservations_live += 1;
        Step::Changed(Outcome::Reserved { reservation, expires_at_ms })
    }

    /// Whether `qty` units of `sku` may be held for `buyer` now: quantity, SKU, sale window,
    /// buyer limit and stock, in that order. One line of a reserve or of a cart.
    pub(crate) fn check_line(
        &self,
        sku: SkuId,
        buyer: BuyerId,
        qty: u32,
        now_ms: u64,
    ) -> Result<(), Outcome> {
        if qty == 0 || qty > RESERVE_QTY_MAX {
            return Err(Outcome::InvalidQuantity { qty_max: RESERVE_QTY_MAX });
        }
        let Some(sku) = self.skus.get(&sku) else {
            return Err(Outcome::UnknownSku);
        };
        if let Some(refusal) = window_refusal(&sku.window, now_ms) {
            return Err(refusal);
        }
        let qty = u64::from(qty);
        if let Some(limit) = sku.buyer_limit {
            let taken = sku.taken.get(buyer);
            if taken + qty > u64::from(limit) {
                return Err(Outcome::LimitExceeded { taken, limit });
            }
        }
        if sku.available < qty {
            return Err(Outcome::SoldOut { available: sku.available });
        }
        Ok(())
    }

    /// Whether the shard may hold one more reservation or line group.
    pub(crate) fn check_room(&self) -> Result<(), Outcome> {
        if self.holds_live() >= self.config.reservations_live_max {
            let live_max = self.config.reservations_live_max as u64;
            return Err(Outcome::TooManyReservations { live_max });
        }
        Ok(())
    }

    /// Moves `qty` units of `sku` from available to reserved for `buyer` (checked before).
    pub(crate) fn hold_units(&mut self, sku: SkuId, buyer: BuyerId, qty: u32) {
        let sku = self.skus.get_mut(&sku).expect("a checked line's SKU exists");
        let qty = u64::from(qty);
        sku.available = sku.available.checked_sub(qty).expect("a checked line's units are there");
        sku.reserved += qty;
        sku.taken.add(buyer, qty, self.hash_key);
    }

    /// Moves `qty` held units of `sku` to sold (`Confirmed`) or back to available.
    pub(crate) fn release_units(
        &mut self,
        sku: SkuId,
        buyer: BuyerId,
        qty: u32,
        end: ReservationState,
    ) {
        debug_assert_ne!(end, ReservationState::Held);
        let sku = self.skus.get_mut(&sku).expect("held units' SKU exists");
        let qty = u64::from(qty);
        sku.reserved = sku.reserved.checked_sub(qty).expect("reserved never goes negative");
        if end == ReservationState::Confirmed {
            sku.sold += qty;
        } else {
            sku.available += qty;
            sku.taken.sub(buyer, qty);
        }
    }

    /// Confirm or cancel. A reservation past its time-to-live expires instead: a late confirm
    /// never resurrects units that were promised back to the pool.
    fn end_on_request(
        &mut self,
        reservation: ReservationId,
        wanted: ReservationState,
        order_ref: Option<OrderRef>,
        now_ms: u64,
    ) -> Step {
        let found = self.reservations.get(reservation);
        let Some(held) = found else {
            return self.end_cart_on_request(reservation, wanted, order_ref, now_ms);
        };
        let (end, outcome) = match end_decision(held.state, held.expires_at_ms, wanted, now_ms) {
            Ok(decided) => decided,
            Err(answer) => return Step::Unchanged(answer),
        };
        let mut ended = self.end_reservation(reservation, end, now_ms);
        if end == ReservationState::Confirmed && order_ref.is_some() {
            ended.order_ref = order_ref;
        }
        // Its expiry entry is now stale.
        self.expiries_stale += 1;
        self.compact_expiries_if_stale();
        Step::Ended(outcome, ended)
    }

    /// Moves a held reservation to its final state, exactly once; returns what it held.
    fn end_reservation(&mut self, id: ReservationId, end: ReservationState, now_ms: u64) -> Ended {
        debug_assert_ne!(end, ReservationState::Held);
        let r = self.reservations.get_mut(id).expect("ending a known reservation");
        assert_eq!(r.state, ReservationState::Held, "reservation {id} ends twice");
        r.state = end;
        let (sku_id, buyer, qty) = (r.sku, r.buyer, r.qty);
        self.release_units(sku_id, buyer, qty, end);
        if end == ReservationState::Confirmed {
            let sale = Sale { buyer, sku: sku_id, qty, returned: 0, sold_at_ms: now_ms };
            self.returnable.record((id, 0), sale, &self.config);
        }
        self.reservations_live -= 1;
        let order_ref = self.order_refs.remove(&id);
        let (max, retention_ms) = (self.config.ended_entries_max, self.config.ended_retention_ms);
        let reservations = &mut self.reservations;
        remember_ended(&mut self.ended, (id, now_ms), (max, retention_ms), |oldest| {
            reservations.remove(oldest);
        });
        Ended { reservation: id, state: end, buyer, sku: sku_id, qty, order_ref }
    }

    fn expire_due(&mut self, now_ms: u64, expiries_max: u32, log: &mut impl LogSink) -> u32 {
        let mut expired = 0;
        while expired < expiries_max {
            let Some((at_ms, id)) = self.expiries.peek() else {
                break;
            };
            if at_ms > now_ms {
                break;
            }
            self.expiries.pop();
            self.prefetch_expiry(EXPIRY_PREFETCH_AHEAD);
            if self.reservation_due(id, at_ms) {
                let ended = self.end_reservation(id, ReservationState::Expired, now_ms);
                log.push(&Record::Expired { at_ms: now_ms, ended });
                expired += 1;
            } else if self.cart_due(id, at_ms) {
                let end = self.end_cart(id, ReservationState::Expired, None, now_ms);
                log.push(&Record::CartEnded { at_ms: now_ms, command: None, end });
                expired += 1;
            } else {
                self.expiries_stale -= 1;
            }
        }
        expired
    }

    /// Starts loading the buyer count that the `ahead`-th next expiry will change.
    fn prefetch_expiry(&self, ahead: usize) {
        let Some((_, id)) = self.expiries.in_order_ahead(ahead) else { return };
        if let Some(r) = self.reservations.get(id) {
            if let Some(sku) = self.skus.get(&r.sku) {
                sku.taken.prefetch(r.buyer);
            }
        }
    }

    /// Replays one logged expiry: the reservation must be held and due. Its queue entry is
    /// left behind as stale, as when a confirm ends a reservation.
    fn expire_logged(&mut self, id: ReservationId, now_ms: u64) -> Option<Ended> {
        let r = self.reservations.get(id)?;
        if r.state != ReservationState::Held || r.expires_at_ms > now_ms {
            return None;
        }
        let ended = self.end_reservation(id, ReservationState::Expired, now_ms);
        self.expiries_stale += 1;
        self.compact_expiries_if_stale();
        Some(ended)
    }

    /// Drops stale expiry entries once they outnumber live ones. The cost is the heap's size,
    /// which is then at most twice the stale count, so it is O(1) per ended reservation; the
    /// table is never walked here (it also holds up to `ended_entries_max` ended ones).
    pub(crate) fn compact_expiries_if_stale(&mut self) {
        let live = self.reservations_live + self.carts_live;
        if self.expiries_stale > 1024 && self.expiries_stale > live {
            let mut expiries = std::mem::take(&mut self.expiries);
            expiries
                .retain(|at_ms, id| self.reservation_due(id, at_ms) || self.cart_due(id, at_ms));
            self.expiries = expiries;
            self.expiries_stale = 0;
            debug_assert_eq!(self.expiries.len(), live - self.reservations_frozen);
        }
    }

    /// Whether `(at_ms, id)` is the live expiry entry of a held reservation.
    pub(crate) fn reservation_due(&self, id: ReservationId, at_ms: u64) -> bool {
        self.reservations
            .get(id)
            .is_some_and(|r| r.state == ReservationState::Held && r.expires_at_ms == at_ms)
    }

    /// Whether `(at_ms, id)` is the live expiry entry of a held cart.
    pub(crate) fn cart_due(&self, id: ReservationId, at_ms: u64) -> bool {
        self.carts
            .get(&id)
            .is_some_and(|c| c.state == ReservationState::Held && c.expires_at_ms == at_ms)
    }

    /// Builds the expiry heap from the table (restore only).
    pub(crate) fn rebuild_expiries(&mut self) {
        let mut held: Vec<(u64, ReservationId)> = self
            .reservations
            .iter()
            .filter(|(id, r)| r.state == ReservationState::Held && !self.frozen_slot(id.slot()))
            .map(|(id, r)| (r.expires_at_ms, id))
            .collect();
        let carts = self.carts.iter().filter(|(_, c)| c.state == ReservationState::Held);
        held.extend(carts.map(|(&id, c)| (c.expires_at_ms, id)));
        held.sort_unstable();
        self.expiries = ExpiryQueue::with_capacity(self.config.expiry_slots_presized());
        for (at_ms, id) in held {
            self.expiries.push(at_ms, id);
        }
        self.expiries_stale = 0;
    }

    /// Gives `qty` units of a returnable sale back to available (and to the buyer's limit).
    fn return_sold(&mut self, key: SaleKey, sku_id: SkuId, qty: u32, now_ms: u64) -> Step {
        if qty == 0 || qty > RESERVE_QTY_MAX {
            return Step::Unchanged(Outcome::InvalidQuantity { qty_max: RESERVE_QTY_MAX });
        }
        let (buyer, returned_total) =
            match self.returnable.take_back(key, sku_id, qty, now_ms, &self.config) {
                Ok(taken) => taken,
                Err(None) => return Step::Unchanged(Outcome::NotReturnable),
                Err(Some(returnable)) => {
                    return Step::Unchanged(Outcome::ReturnExceedsSold { returnable })
                }
            };
        let sku = self.skus.get_mut(&sku_id).expect("a sale's SKU exists");
        sku.sold = sku.sold.checked_sub(u64::from(qty)).expect("a sale's units were sold");
        sku.available += u64::from(qty);
        sku.taken.sub(buyer, u64::from(qty));
        let (reservation, line) = key;
        let returned = SaleReturned { reservation, line, sku: sku_id, buyer, qty, returned_total };
        Step::Returned(Outcome::Returned { returned_total }, returned)
    }

    fn set_stock(&mut self, sku_id: SkuId, total: u64) -> Step {
        if total > STOCK_TOTAL_MAX {
            return Step::Unchanged(Outcome::StockOutOfRange { total_max: STOCK_TOTAL_MAX });
        }
        if !self.skus.contains_key(&sku_id) && self.skus.len() >= self.config.skus_max {
            return Step::Unchanged(Outcome::TooManySkus { skus_max: self.config.skus_max as u64 });
        }
        let sku = self.skus.entry(sku_id).or_default();
        let committed = sku.reserved + sku.sold;
        if total < committed {
            return Step::Unchanged(Outcome::StockBelowCommitted { committed });
        }
        sku.total = total;
        sku.available = total - committed;
        Step::Changed(Outcome::StockChanged { total, available: sku.available })
    }

    fn adjust_stock(&mut self, sku_id: SkuId, delta: i64) -> Step {
        let Some(sku) = self.skus.get_mut(&sku_id) else {
            return Step::Unchanged(Outcome::UnknownSku);
        };
        let Some(available) = sku.available.checked_add_signed(delta) else {
            return Step::Unchanged(Outcome::InsufficientAvailable { available: sku.available });
        };
        match sku.total.checked_add_signed(delta) {
            Some(total) if total <= STOCK_TOTAL_MAX => {
                sku.total = total;
                sku.available = available;
                Step::Changed(Outcome::StockChanged { total, available })
            }
            _ => Step::Unchanged(Outcome::StockOutOfRange { total_max: STOCK_TOTAL_MAX }),
        }
    }

    fn set_buyer_limit(&mut self, sku_id: SkuId, limit: Option<u32>) -> Step {
        let Some(sku) = self.skus.get_mut(&sku_id) else {
            return Step::Unchanged(Outcome::UnknownSku);
        };
        if let Some(limit) = limit {
            // A scan of the SKU's buyers: admin commands are rare, and a limit below what
            // someone already holds would break invariant 2 the moment it is set.
            let taken_max = sku.taken.iter().map(|(_, units)| units).max().unwrap_or(0);
            if taken_max > u64::from(limit) {
                return Step::Unchanged(Outcome::LimitBelowHoldings { taken_max });
            }
        }
        sku.buyer_limit = limit;
        Step::Changed(Outcome::LimitSet)
    }

    fn set_sale_window(&mut self, sku_id: SkuId, window: SaleWindow) -> Step {
        let Some(sku) = self.skus.get_mut(&sku_id) else {
            return Step::Unchanged(Outcome::UnknownSku);
        };
        if let (Some(opens), Some(closes)) = (window.opens_at_ms, window.closes_at_ms) {
            if opens >= closes {
                return Step::Unchanged(Outcome::InvalidWindow);
            }
        }
        sku.window = window;
        Step::Changed(Outcome::WindowSet)
    }

    /// Checks, after every apply in debug and test builds, the invariants of the SKU the
    /// command touched: the O(1) half of `check_invariants`.
    #[cfg(debug_assertions)]
    fn assert_touched(&self, command: &Command) {
        let sku_id = match command.route_key() {
            crate::command::RouteKey::Sku(sku) => Some(sku),
            crate::command::RouteKey::Reservation(id) => self.reservations.get(id).map(|r| r.sku),
        };
        let Some(sku) = sku_id.and_then(|id| self.skus.get(&id)) else {
            return;
        };
        assert_eq!(
            sku.available + sku.reserved + sku.sold,
            sku.total,
            "conservation broken by {command:?}"
        );
        if let (Command::Reserve(r), Some(limit)) = (command, sku.buyer_limit) {
            let taken = sku.taken.get(r.buyer);
            assert!(taken <= u64::from(limit), "buyer limit broken by {command:?}");
        }
    }
}

/// Queues `ended` (an id and when it ended) and forgets, oldest first, what is past the
/// `(entries_max, retention_ms)` bound, calling `forget` on each: the one eviction rule of
/// ended reservations and ended carts. Run live and on replay alike, so both forget the same.
pub(crate) fn remember_ended(
    queue: &mut VecDeque<(ReservationId, u64)>,
    ended: (ReservationId, u64),
    (entries_max, retention_ms): (usize, u64),
    mut forget: impl FnMut(ReservationId),
) {
    let now_ms = ended.1;
    queue.push_back(ended);
    while let Some(&(oldest, ended_at_ms)) = queue.front() {
        let too_many = queue.len() > entries_max;
        let too_old = ended_at_ms.saturating_add(retention_ms) <= now_ms;
        if !(too_many || too_old) {
            break;
        }
        queue.pop_front();
        forget(oldest);
    }
}

/// How a confirm (`wanted` = `Confirmed`) or cancel of a reservation or cart in `state`,
/// lapsing at `expires_at_ms`, ends it at `now_ms`: its end and the answer, or (`Err`) the
/// answer when it already ended. Past its TTL it expires instead: a late confirm never
/// resurrects units that were promised back to the pool.
pub(crate) fn end_decision(
    state: ReservationState,
    expires_at_ms: u64,
    wanted: ReservationState,
    now_ms: u64,
) -> Result<(ReservationState, Outcome), Outcome> {
    match state {
        ReservationState::Confirmed => Err(Outcome::AlreadyConfirmed),
        ReservationState::Cancelled => Err(Outcome::AlreadyCancelled),
        ReservationState::Expired => Err(Outcome::Expired),
        ReservationState::Held if now_ms >= expires_at_ms => {
            Ok((ReservationState::Expired, Outcome::Expired))
        }
        ReservationState::Held if wanted == ReservationState::Confirmed => {
            Ok((wanted, Outcome::Confirmed))
        }
        ReservationState::Held => Ok((wanted, Outcome::Cancelled)),
    }
}

/// The confirm as logged: carrying the order reference that took effect, so the record alone
/// says which order the sale belongs to.
fn with_effective_order_ref(command: &Command, ended: &Ended) -> Command {
    match *command {
        Command::Confirm { request, reservation, .. } => {
            Command::Confirm { request, reservation, order_ref: ended.order_ref }
        }
        other => other,
    }
}

fn window_refusal(window: &SaleWindow, now_ms: u64) -> Option<Outcome> {
    if let Some(opens_at_ms) = window.opens_at_ms {
        if now_ms < opens_at_ms {
            return Some(Outcome::SaleNotOpen { opens_at_ms });
        }
    }
    match window.closes_at_ms {
        Some(closed_at_ms) if now_ms >= closed_at_ms => Some(Outcome::SaleClosed { closed_at_ms }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RequestId;

    /// Growing a ring copies it while every caller of the shard waits (a doubling ring stalled
    /// a busy shard for 100-500 ms): a shard's rings and queues are sized for its bounds when
    /// it is built, and stay that size while it works within them. (Hash indexes grow, but
    /// incrementally: see `probe`.)
    #[test]
    fn tables_never_grow_while_the_shard_works_within_its_bounds() {
        let config = ShardConfig {
            dedup_entries_max: 3_000,
            reservations_live_max: 1_000,
            ended_entries_max: 2_000,
            ..ShardConfig::default()
        };
        let mut shard = Shard::new(ShardId(0), config);
        let capacities = |shard: &Shard| {
            let answers = shard.dedup.answers.ring_capacity();
            let reservations = shard.reservations.ring_capacity();
            (answers, reservations, shard.ended.capacity(), shard.expiries.in_order_capacity())
        };
        let built = capacities(&shard);
        let mut log = Vec::new();
        let stock = Command::SetStock { request: RequestId(1), sku: SkuId(1), total: 1 << 30 };
        shard.apply(&stock, 0, &mut log);
        for n in 0..20_000u64 {
            let reserve = Reserve {
                request: RequestId(u128::from(n) + 2),
                buyer: BuyerId(n % 777),
                sku: SkuId(1),
                qty: 1,
                ttl_ms: 500,
                order_ref: None,
            };
            let outcome = shard.apply(&Command::Reserve(reserve), n, &mut log);
            assert!(matches!(outcome, Outcome::Reserved { .. }), "{outcome:?}");
            shard.tick(n, &mut log);
        }
        shard.check_invariants().unwrap();
        // Every bound was reached, so every table was as full as it gets.
        assert_eq!(shard.remembered_answers(), 3_000);
        assert_eq!(shard.ended.len(), 2_000);
        assert!(shard.reservations_live() >= 490, "{}", shard.reservations_live());
        assert_eq!(capacities(&shard), built, "a table grew");
        assert_eq!(capacities(&shard.replica()), built, "a replica starts as roomy");
    }
}
