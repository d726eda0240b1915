//! Slot moves (docs/cluster.md): one shard's side of moving a range of cluster slots from one
//! server to another.
//!
//! Both servers freeze the range first: a frozen range takes no command (the runtime answers
//! "moving, retry"; [`Shard::frozen_slot`]) and none of its holds expires, so what the source
//! exports stays what it holds. The source exports the range as [`SlotItem`]s; the target
//! imports them one record each into its frozen copy. The map in etcd then names the owner:
//! the owner thaws the range (its holds' expiries are scheduled again) and the other releases
//! it (drops its state). Every step is a record, so replay and snapshots rebuild it.
//!
//! What moves: each SKU with its buyers' counts, its reservations (live ones with their
//! deadlines and order references, ended ones still remembered), its returnable sales, and the
//! answers remembered for requests of the range. Ranges holding carts, line groups or spread
//! SKUs are refused at the freeze (their parts may sit on other shards).

use std::fmt;

use rustc_hash::FxHashMap;

use crate::codec::{Reader, Writer};
use crate::command::SaleWindow;
use crate::error::EngineError;
use crate::ids::{slot_of, BuyerId, OrderRef, RequestId, ReservationId, SkuId, Slot, SLOT_COUNT};
use crate::invariants::check_sku;
use crate::outcome::{Outcome, ReservationState, SkuView};
use crate::record::{encode_reservation, Ints, LogSink, Record};
use crate::returns::{Sale, SaleKey};
use crate::shard::{remember_ended, Reservation, Shard, SkuState};
use crate::snapshot::{decode_answer, encode_answer};

/// Slots `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotRange {
    first: Slot,
    last: Slot,
}

impl SlotRange {
    /// Slots `first..=last`; `None` unless `first <= last < SLOT_COUNT`.
    pub fn new(first: Slot, last: Slot) -> Option<SlotRange> {
        (first <= last && last.0 < SLOT_COUNT).then_some(SlotRange { first, last })
    }

    /// The first slot.
    pub fn first(self) -> Slot {
        self.first
    }

    /// The last slot (included).
    pub fn last(self) -> Slot {
        self.last
    }

    /// Whether `slot` is in the range.
    pub fn contains(self, slot: Slot) -> bool {
        (self.first..=self.last).contains(&slot)
    }

    fn overlaps(self, other: SlotRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    fn refused(self, detail: &'static str) -> EngineError {
        EngineError::Slots { first: self.first.0, last: self.last.0, detail }
    }
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first.0, self.last.0)
    }
}

/// One piece of a slot range's state, as the source exports it and the target imports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotItem {
    /// A SKU's stock and settings (as read); first, before anything of the SKU.
    Sku(SkuView),
    /// Units a buyer of the SKU holds plus has bought.
    Taken {
        /// The SKU.
        sku: SkuId,
        /// The buyer.
        buyer: BuyerId,
        /// Units held plus bought (above 0).
        units: u64,
    },
    /// A reservation, held or ended and still remembered.
    Reservation {
        /// Its id, kept: callers hold it.
        id: ReservationId,
        /// Who holds it.
        buyer: BuyerId,
        /// Its SKU.
        sku: SkuId,
        /// Units.
        qty: u32,
        /// When the hold lapses.
        expires_at_ms: u64,
        /// Held, or how it ended.
        state: ReservationState,
        /// The order reference given at reserve (held ones only).
        order_ref: Option<OrderRef>,
    },
    /// A sale still returnable.
    Sale {
        /// The reservation (or cart) that sold.
        reservation: ReservationId,
        /// The cart's line (0 for a one-line reservation).
        line: u8,
        /// The buyer.
        buyer: BuyerId,
        /// The SKU.
        sku: SkuId,
        /// Units sold.
        qty: u32,
        /// Units returned so far.
        returned: u32,
        /// When it sold: the return window runs from here.
        sold_at_ms: u64,
    },
    /// The answer remembered for a request of the range.
    Answer {
        /// The request.
        request: RequestId,
        /// The slot of what it named.
        slot: Slot,
        /// Its first answer.
        outcome: Outcome,
    },
}

impl SlotItem {
    /// The slot the item belongs to.
    pub fn slot(&self) -> Slot {
        match *self {
            SlotItem::Sku(SkuView { sku, .. })
            | SlotItem::Taken { sku, .. }
            | SlotItem::Reservation { sku, .. }
            | SlotItem::Sale { sku, .. } => slot_of(sku),
            SlotItem::Answer { slot, .. } => slot,
        }
    }
}

/// What a slot-range record does (see [`Record::Slots`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotsStep {
    /// The range takes no command and expires nothing from here on.
    Frozen,
    /// The range is served again: this server owns it.
    Thawed,
    /// The range's state is dropped: another server owns it.
    Released,
}

impl Shard {
    /// Whether a move froze `slot` here: the runtime must not apply a command of it
    /// (`Command::route_key().slot()`), and answers "moving, retry" instead.
    pub fn frozen_slot(&self, slot: Slot) -> bool {
        !self.frozen.is_empty() && self.frozen.iter().any(|range| range.contains(slot))
    }

    /// The ranges frozen here, for operators and for the start-up check against the map.
    pub fn frozen_ranges(&self) -> &[SlotRange] {
        &self.frozen
    }

    /// Freezes `range` (again: a range frozen already is left as it is). Refused when it
    /// overlaps another frozen range or holds carts, line groups or spread SKUs.
    pub fn freeze_slots(
        &mut self,
        range: SlotRange,
        now_ms: u64,
        log: &mut impl LogSink,
    ) -> Result<(), EngineError> {
        if self.frozen.contains(&range) {
            return Ok(());
        }
        if self.frozen.iter().any(|frozen| frozen.overlaps(range)) {
            return Err(range.refused("overlaps a range already moving"));
        }
        self.check_movable(range)?;
        let at_ms = self.advance_clock(now_ms);
        self.apply_slots(range, SlotsStep::Frozen);
        log.push(&Record::Slots { at_ms, range, step: SlotsStep::Frozen });
        Ok(())
    }

    /// Thaws `range` (a frozen one): its holds expire again from here.
    pub fn thaw_slots(
        &mut self,
        range: SlotRange,
        now_ms: u64,
        log: &mut impl LogSink,
    ) -> Result<(), EngineError> {
        self.step_frozen(range, SlotsStep::Thawed, now_ms, log)
    }

    /// Drops what `range` (a frozen one) holds and unfreezes it. Remembered answers stay
    /// (they age out): this server answers the range `Moved` before looking them up.
    pub fn release_slots(
        &mut self,
        range: SlotRange,
        now_ms: u64,
        log: &mut impl LogSink,
    ) -> Result<(), EngineError> {
        self.step_frozen(range, SlotsStep::Released, now_ms, log)
    }

    fn step_frozen(
        &mut self,
        range: SlotRange,
        step: SlotsStep,
        now_ms: u64,
        log: &mut impl LogSink,
    ) -> Result<(), EngineError> {
        if !self.frozen.contains(&range) {
            return Err(range.refused("not frozen here"));
        }
        if step == SlotsStep::Thawed {
            self.check_complete(range)?;
        }
        let at_ms = self.advance_clock(now_ms);
        self.apply_slots(range, step);
        log.push(&Record::Slots { at_ms, range, step });
        Ok(())
    }

    /// Checks that every SKU of `range` adds up (an import that stopped halfway does not:
    /// such a range must not be served).
    fn check_complete(&self, range: SlotRange) -> Result<(), EngineError> {
        let mut held_by_sku: FxHashMap<SkuId, u64> = FxHashMap::default();
        for (id, r) in self.reservations.iter() {
            if range.contains(id.slot()) && r.state == ReservationState::Held {
                *held_by_sku.entry(r.sku).or_default() += u64::from(r.qty);
            }
        }
        for (&sku, state) in self.skus.iter().filter(|(&sku, _)| range.contains(slot_of(sku))) {
            let held = held_by_sku.get(&sku).copied().unwrap_or(0);
            check_sku(sku, state, held, true)?;
        }
        Ok(())
    }

    /// Refuses a range whose state reaches beyond this shard.
    fn check_movable(&self, range: SlotRange) -> Result<(), EngineError> {
        let in_range = |sku: SkuId| range.contains(slot_of(sku));
        if self.carts.keys().any(|cart| range.contains(cart.slot()))
            || self.groups.values().any(|g| g.lines.as_slice().iter().any(|l| in_range(l.sku)))
        {
            return Err(range.refused("holds carts"));
        }
        if self.bucketed_skus().any(|(sku, _)| in_range(sku))
            || self.skus.keys().any(|&sku| sku.is_bucket() && in_range(sku))
            || self.moves_in_flight().any(|m| in_range(m.from_sku))
        {
            return Err(range.refused("holds spread SKUs"));
        }
        Ok(())
    }

    /// The state change of a range record, live and on replay alike.
    pub(crate) fn apply_slots(&mut self, range: SlotRange, step: SlotsStep) {
        match step {
            SlotsStep::Frozen => {
                let held = self.drop_expiries(range);
                self.reservations_frozen += held;
                self.frozen.push(range);
            }
            SlotsStep::Thawed => {
                self.frozen.retain(|&frozen| frozen != range);
                self.reservations_frozen -= self.schedule_expiries(range);
            }
            SlotsStep::Released => {
                self.frozen.retain(|&frozen| frozen != range);
                self.drop_range(range);
            }
        }
    }

    /// Takes the range's entries out of the expiry queue; returns how many were of held
    /// reservations (the rest were stale).
    fn drop_expiries(&mut self, range: SlotRange) -> usize {
        let (mut held, mut stale) = (0, 0);
        let mut expiries = std::mem::take(&mut self.expiries);
        expiries.retain(|at_ms, id| {
            if !range.contains(id.slot()) {
                return true;
            }
            if self.reservation_due(id, at_ms) {
                held += 1;
            } else {
                stale += 1;
            }
            false
        });
        self.expiries = expiries;
        self.expiries_stale -= stale;
        held
    }

    /// Queues the expiries of the range's held reservations; returns how many.
    fn schedule_expiries(&mut self, range: SlotRange) -> usize {
        let held: Vec<(u64, ReservationId)> = self
            .reservations
            .iter()
            .filter(|(id, r)| range.contains(id.slot()) && r.state == ReservationState::Held)
            .map(|(id, r)| (r.expires_at_ms, id))
            .collect();
        for &(at_ms, id) in &held {
            self.expiries.push(at_ms, id);
        }
        held.len()
    }

    /// Drops the SKUs, reservations and returnable sales of a frozen range.
    fn drop_range(&mut self, range: SlotRange) {
        self.skus.retain(|&sku, _| !range.contains(slot_of(sku)));
        let ids: Vec<(ReservationId, bool)> = self
            .reservations
            .iter()
            .filter(|(id, _)| range.contains(id.slot()))
            .map(|(id, r)| (id, r.state == ReservationState::Held))
            .collect();
        for &(id, held) in &ids {
            self.reservations.remove(id);
            if held {
                self.reservations_live -= 1;
                self.reservations_frozen -= 1;
                self.order_refs.remove(&id);
            }
        }
        self.ended.retain(|(id, _)| !range.contains(id.slot()));
        self.returnable.retain(|sale| !range.contains(slot_of(sale.sku)));
    }

    /// What this shard holds of `range` (a frozen one), in the order `import_slot` takes it.
    pub fn export_slots(&self, range: SlotRange) -> Result<Vec<SlotItem>, EngineError> {
        if !self.frozen.contains(&range) {
            return Err(range.refused("not frozen here"));
        }
        // A cart may have been decided here between the freeze and now (its lines were
        // refused, but the coordinator remembers the aborted cart).
        self.check_movable(range)?;
        let mut items = Vec::new();
        let mut skus: Vec<_> =
            self.skus.iter().filter(|(&sku, _)| range.contains(slot_of(sku))).collect();
        skus.sort_unstable_by_key(|(&sku, _)| sku);
        for (&sku, s) in skus {
            items.push(SlotItem::Sku(self.query_sku(sku).expect("listed just above")));
            let mut taken: Vec<_> = s.taken.iter().collect();
            taken.sort_unstable();
            items.extend(taken.into_iter().map(|(buyer, units)| SlotItem::Taken {
                sku,
                buyer,
                units,
            }));
        }
        for (id, r) in self.reservations.iter_in_order() {
            if range.contains(id.slot()) {
                let order_ref = self.order_refs.get(&id).copied();
                items.push(reservation_item(id, r, order_ref));
            }
        }
        for &key in &self.returnable.order {
            let sale = self.returnable.get(key).expect("every sale in order is stored");
            if range.contains(slot_of(sale.sku)) {
                items.push(sale_item(key, sale));
            }
        }
        for answer in self.dedup.answers.iter() {
            if range.contains(answer.slot()) {
                let request = RequestId::from(answer.request);
                items.push(SlotItem::Answer {
                    request,
                    slot: answer.slot(),
                    outcome: answer.outcome,
                });
            }
        }
        Ok(items)
    }

    /// Imports one item of a frozen range from the source server. Refused (changing nothing)
    /// when its range is not frozen here, its SKU is unknown (or, for a SKU, known already),
    /// or the reservation or sale is here already; an answer already remembered is skipped.
    pub fn import_slot(
        &mut self,
        item: &SlotItem,
        now_ms: u64,
        log: &mut impl LogSink,
    ) -> Result<(), EngineError> {
        let at_ms = self.advance_clock(now_ms);
        self.check_import(item)?;
        self.apply_import(item, at_ms);
        log.push(&Record::SlotImported { at_ms, item: Box::new(*item) });
        Ok(())
    }

    fn check_import(&self, item: &SlotItem) -> Result<(), EngineError> {
        let slot = item.slot();
        let refused = |detail| EngineError::Slots { first: slot.0, last: slot.0, detail };
        if !self.frozen_slot(slot) {
            return Err(refused("not frozen here"));
        }
        let known = match *item {
            SlotItem::Sku(view) => !self.skus.contains_key(&view.sku),
            SlotItem::Taken { sku, buyer, units } => {
                units > 0 && self.skus.get(&sku).is_some_and(|s| s.taken.get(buyer) == 0)
            }
            SlotItem::Reservation { id, sku, qty, .. } => {
                self.skus.contains_key(&sku)
                    && id.shard() == self.id
                    && id.slot() == slot_of(sku)
                    && qty > 0
                    && self.reservations.get(id).is_none()
            }
            SlotItem::Sale { reservation, line, sku, qty, returned, .. } => {
                self.skus.contains_key(&sku)
                    && returned <= qty
                    && self.returnable.get((reservation, line)).is_none()
            }
            SlotItem::Answer { .. } => true,
        };
        if !known {
            return Err(refused("item does not fit the state imported so far"));
        }
        Ok(())
    }

    /// The state change of an import, live and on replay alike (checked first).
    pub(crate) fn apply_import(&mut self, item: &SlotItem, at_ms: u64) {
        match *item {
            SlotItem::Sku(view) => {
                let state = SkuState {
                    total: view.total,
                    available: view.available,
                    reserved: view.reserved,
                    sold: view.sold,
                    buyer_limit: view.buyer_limit,
                    window: view.window,
                    taken: Default::default(),
                };
                self.skus.insert(view.sku, state);
            }
            SlotItem::Taken { sku, buyer, units } => {
                let key = self.hash_key;
                let sku = self.skus.get_mut(&sku).expect("checked before");
                let fresh = sku.taken.restore(buyer, units, key);
                assert!(fresh, "buyer counted twice");
            }
            SlotItem::Reservation { id, buyer, sku, qty, expires_at_ms, state, order_ref } => {
                let reservation = Reservation { buyer, sku, expires_at_ms, qty, state };
                self.reservations.insert_keyed(id, reservation);
                if id.seq() >= self.reservation_seq_next {
                    // Ids this shard issues from here on must not repeat an imported one.
                    self.reservation_seq_next = id.seq() + 1;
                    self.reservations.restart_ring_at(self.reservation_seq_next);
                }
                if state == ReservationState::Held {
                    self.reservations_live += 1;
                    self.reservations_frozen += 1;
                    if let Some(order_ref) = order_ref {
                        self.order_refs.insert(id, order_ref);
                    }
                } else {
                    let bounds = (self.config.ended_entries_max, self.config.ended_retention_ms);
                    let reservations = &mut self.reservations;
                    remember_ended(&mut self.ended, (id, at_ms), bounds, |oldest| {
                        reservations.remove(oldest);
                    });
                }
            }
            SlotItem::Sale { reservation, line, buyer, sku, qty, returned, sold_at_ms } => {
                let sale = Sale { buyer, sku, qty, returned, sold_at_ms };
                self.returnable.record((reservation, line), sale, &self.config);
            }
            SlotItem::Answer { request, slot, outcome } => {
                // Remembered from the import on: answers are kept in the order given.
                let _known =
                    self.dedup.remember_change((request, slot), outcome, at_ms, &self.config);
            }
        }
    }

    /// Replays a slot-range or import record.
    pub(crate) fn replay_slots(&mut self, record: &Record) -> Result<(), EngineError> {
        match record {
            Record::Slots { at_ms, range, step } => {
                self.advance_clock(*at_ms);
                let frozen = self.frozen.contains(range);
                let fits = match step {
                    SlotsStep::Frozen => !frozen && self.check_movable(*range).is_ok(),
                    SlotsStep::Thawed => frozen && self.check_complete(*range).is_ok(),
                    SlotsStep::Released => frozen,
                };
                if !fits {
                    return Err(range.refused("logged step does not fit on replay"));
                }
                self.apply_slots(*range, *step);
                Ok(())
            }
            Record::SlotImported { at_ms, item } => {
                let at_ms = self.advance_clock(*at_ms);
                self.check_import(item)?;
                self.apply_import(item, at_ms);
                Ok(())
            }
            _ => unreachable!("only slot records are replayed here"),
        }
    }
}

fn reservation_item(id: ReservationId, r: &Reservation, order_ref: Option<OrderRef>) -> SlotItem {
    SlotItem::Reservation {
        id,
        buyer: r.buyer,
        sku: r.sku,
        qty: r.qty,
        expires_at_ms: r.expires_at_ms,
        state: r.state,
        order_ref,
    }
}

fn sale_item((reservation, line): SaleKey, sale: Sale) -> SlotItem {
    SlotItem::Sale {
        reservation,
        line,
        buyer: sale.buyer,
        sku: sale.sku,
        qty: sale.qty,
        returned: sale.returned,
        sold_at_ms: sale.sold_at_ms,
    }
}

/// The kinds of [`SlotItem`] as encoded.
const ITEM_SKU: u8 = 1;
const ITEM_TAKEN: u8 = 2;
const ITEM_RESERVATION: u8 = 3;
const ITEM_SALE: u8 = 4;
const ITEM_ANSWER: u8 = 5;

/// The encoded steps of [`SlotsStep`].
const STEP_FROZEN: u8 = 1;
const STEP_THAWED: u8 = 2;
const STEP_RELEASED: u8 = 3;

/// Encodes a range (for `Record::Slots` and snapshots).
pub(crate) fn encode_range(w: &mut Writer<'_>, range: SlotRange) {
    w.u16(range.first.0);
    w.u16(range.last.0);
}

pub(crate) fn decode_range(r: &mut Reader<'_>) -> Result<SlotRange, EngineError> {
    let (first, last) = (r.u16()?, r.u16()?);
    SlotRange::new(Slot(first), Slot(last)).ok_or(EngineError::InvalidField {
        field: "slot range",
        value: u64::from(first) << 16 | u64::from(last),
    })
}

/// Encodes a `Record::Slots` after its tag and time.
pub(crate) fn encode_step(w: &mut Writer<'_>, range: SlotRange, step: SlotsStep) {
    encode_range(w, range);
    w.u8(match step {
        SlotsStep::Frozen => STEP_FROZEN,
        SlotsStep::Thawed => STEP_THAWED,
        SlotsStep::Released => STEP_RELEASED,
    });
}

pub(crate) fn decode_step(r: &mut Reader<'_>, at_ms: u64) -> Result<Record, EngineError> {
    let range = decode_range(r)?;
    let step = match r.u8()? {
        STEP_FROZEN => SlotsStep::Frozen,
        STEP_THAWED => SlotsStep::Thawed,
        STEP_RELEASED => SlotsStep::Released,
        code => return Err(EngineError::InvalidField { field: "slots step", value: code.into() }),
    };
    Ok(Record::Slots { at_ms, range, step })
}

/// Encodes a `Record::SlotImported`'s item after its tag and time.
pub(crate) fn encode_item(w: &mut Writer<'_>, item: &SlotItem) {
    match *item {
        SlotItem::Sku(v) => {
            w.u8(ITEM_SKU);
            for value in [v.sku.0, v.total, v.available, v.reserved, v.sold] {
                w.varint(value);
            }
            w.opt_u32(v.buyer_limit);
            w.opt_u64(v.window.opens_at_ms);
            w.opt_u64(v.window.closes_at_ms);
        }
        SlotItem::Taken { sku, buyer, units } => {
            w.u8(ITEM_TAKEN);
            for value in [sku.0, buyer.0, units] {
                w.varint(value);
            }
        }
        SlotItem::Reservation { id, buyer, sku, qty, expires_at_ms, state, order_ref } => {
            w.u8(ITEM_RESERVATION);
            encode_reservation(w, id);
            for value in [buyer.0, sku.0, u64::from(qty), expires_at_ms] {
                w.varint(value);
            }
            w.u8(state.code());
            w.opt_u128(order_ref.map(|o| o.0));
        }
        SlotItem::Sale { reservation, line, buyer, sku, qty, returned, sold_at_ms } => {
            w.u8(ITEM_SALE);
            encode_reservation(w, reservation);
            w.u8(line);
            for value in [buyer.0, sku.0, u64::from(qty), u64::from(returned), sold_at_ms] {
                w.varint(value);
            }
        }
        SlotItem::Answer { request, slot, outcome } => {
            w.u8(ITEM_ANSWER);
            w.u128(request.0);
            w.u16(slot.0);
            encode_answer(w, outcome);
        }
    }
}

pub(crate) fn decode_item(r: &mut Reader<'_>) -> Result<SlotItem, EngineError> {
    let ints = Ints::Varint;
    Ok(match r.u8()? {
        ITEM_SKU => SlotItem::Sku(SkuView {
            sku: SkuId(r.varint("sku")?),
            total: r.varint("total")?,
            available: r.varint("available")?,
            reserved: r.varint("reserved")?,
            sold: r.varint("sold")?,
            buyer_limit: r.opt_u32("buyer limit flag")?,
            window: SaleWindow {
                opens_at_ms: r.opt_u64("window open flag")?,
                closes_at_ms: r.opt_u64("window close flag")?,
            },
        }),
        ITEM_TAKEN => SlotItem::Taken {
            sku: SkuId(r.varint("sku")?),
            buyer: BuyerId(r.varint("buyer")?),
            units: r.varint("units")?,
        },
        ITEM_RESERVATION => SlotItem::Reservation {
            id: ints.reservation(r)?,
            buyer: BuyerId(r.varint("buyer")?),
            sku: SkuId(r.varint("sku")?),
            qty: ints.u32(r, "qty")?,
            expires_at_ms: r.varint("expiry")?,
            state: ReservationState::from_code(r.u8()?)
                .ok_or(EngineError::InvalidField { field: "reservation state", value: 0 })?,
            order_ref: r.opt_u128("order reference flag")?.map(OrderRef),
        },
        ITEM_SALE => SlotItem::Sale {
            reservation: ints.reservation(r)?,
            line: r.u8()?,
            buyer: BuyerId(r.varint("buyer")?),
            sku: SkuId(r.varint("sku")?),
            qty: ints.u32(r, "qty")?,
            returned: ints.u32(r, "returned")?,
            sold_at_ms: r.varint("sale time")?,
        },
        ITEM_ANSWER => SlotItem::Answer {
            request: RequestId(r.u128()?),
            slot: Slot(r.u16()?),
            outcome: decode_answer(r)?,
        },
        kind => return Err(EngineError::InvalidField { field: "slot item", value: kind.into() }),
    })
}
