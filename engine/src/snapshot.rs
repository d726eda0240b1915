//! Snapshots: a canonical encoding of a shard's durable state, and its restore.
//!
//! Canonical (SKUs, buyers and reservations sorted) so that two shards in the same state encode
//! to the same bytes: `digest` is a hash of this encoding and is how tests compare a replayed
//! shard with the live one. The rejection cache is not part of it (see `dedup`).

use crate::cart::codec as cart_codec;
use crate::codec::{Reader, Writer};
use crate::command::SaleWindow;
use crate::dedup::{Answer, SLOT_NONE};
use crate::error::EngineError;
use crate::ids::{slot_of, BuyerId, OrderRef, RequestId, ReservationId, ShardId, SkuId, Slot};
use crate::limits::ShardConfig;
use crate::outcome::{LineRefusal, Outcome, ReservationState};
use crate::probe::HashKey;
use crate::record::Record;
use crate::returns::Sale;
use crate::shard::{Cart, LineGroup, Reservation, Shard, SkuState};
use crate::slots;
use crate::table::ReservationTable;
use crate::taken::BuyerCounts;

const SNAPSHOT_MAGIC: u32 = u32::from_le_bytes(*b"FSSN");
/// Where the clock sits in a snapshot: after magic, version and shard id.
const CLOCK_FIELD: std::ops::Range<usize> = 8..16;
/// The snapshot format this build writes and reads.
pub const SNAPSHOT_VERSION: u16 = 5;
/// The format before slot moves: answers without their slot, no frozen ranges at the end.
const SNAPSHOT_VERSION_NO_SLOTS: u16 = 4;
/// The format before hot-SKU buckets: the same, without the buckets section at the end.
const SNAPSHOT_VERSION_NO_BUCKETS: u16 = 3;
/// The format before carts: without the cart sections either.
const SNAPSHOT_VERSION_NO_CARTS: u16 = 2;

impl Shard {
    /// Appends the canonical encoding of the shard's durable state to `out`.
    pub fn encode_snapshot(&self, out: &mut Vec<u8>) {
        // Sized up front: a large shard encodes to hundreds of MB, and growing by doubling
        // would copy it several times over while the shard waits.
        let estimate = 24
            + self.skus.values().map(|sku| 80 + sku.taken.len() * 16).sum::<usize>()
            + self.reservations.len() * 37
            + self.order_refs.len() * 24
            + self.ended.len() * 16
            + self.dedup.answers.len() * 41
            + self.groups.len() * 120
            + self.carts.len() * 200
            + self.returnable.len() * 45;
        if out.is_empty() && out.capacity() < estimate {
            // A reused, cleared buffer that is too small: replace it rather than `reserve`,
            // which reallocates and so copies the old capacity's worth of stale bytes (under
            // mimalloc a real copy of ~100 MB; glibc remaps instead). A quarter of headroom
            // lets the next few snapshots of a growing shard fit.
            *out = Vec::with_capacity(estimate + estimate / 4);
        }
        out.reserve(estimate);
        let mut w = Writer { bytes: out };
        w.u32(SNAPSHOT_MAGIC);
        w.u16(SNAPSHOT_VERSION);
        w.u16(self.id.0);
        w.u64(self.clock_ms);
        w.u64(self.reservation_seq_next);

        let mut skus: Vec<_> = self.skus.iter().collect();
        skus.sort_unstable_by_key(|(id, _)| **id);
        w.u64(skus.len() as u64);
        for (id, sku) in skus {
            encode_sku(&mut w, *id, sku);
        }

        w.u64(self.reservations.len() as u64);
        for (id, r) in self.reservations.iter_in_order() {
            w.u64(id.0);
            w.u64(r.buyer.0);
            w.u64(r.sku.0);
            w.u64(r.expires_at_ms);
            w.u32(r.qty);
            w.u8(r.state.code());
        }

        let mut order_refs: Vec<_> = self.order_refs.iter().collect();
        order_refs.sort_unstable_by_key(|(id, _)| **id);
        w.u64(order_refs.len() as u64);
        for (id, order_ref) in order_refs {
            w.u64(id.0);
            w.u128(order_ref.0);
        }

        w.u64(self.ended.len() as u64);
        for &(id, ended_at_ms) in &self.ended {
            w.u64(id.0);
            w.u64(ended_at_ms);
        }

        w.u64(self.dedup.answers.len() as u64);
        for answer in self.dedup.answers.iter() {
            w.u128(RequestId::from(answer.request).0);
            w.u64(answer.answered_at_ms());
            w.u16(answer.slot().0);
            encode_answer(&mut w, answer.outcome);
        }
        self.encode_carts(&mut w);
        self.encode_buckets(&mut w);
        w.u64(self.frozen.len() as u64);
        for &range in &self.frozen {
            slots::encode_range(&mut w, range);
        }
    }

    /// The buckets section: spread SKUs, then moves sent and not acknowledged, then the
    /// highest move applied from each sender (docs/hot-skus.md).
    fn encode_buckets(&self, w: &mut Writer<'_>) {
        let moves = &self.moves;
        w.u64(moves.bucketed.len() as u64);
        for (&sku, &buckets) in &moves.bucketed {
            w.u64(sku.0);
            w.u32(buckets);
        }
        w.u64(moves.seq_next);
        w.u64(moves.in_flight.len() as u64);
        for stock_move in moves.in_flight.values() {
            Record::MovedOut { at_ms: 0, stock_move: *stock_move }.encode(w.bytes);
        }
        w.u64(moves.applied.len() as u64);
        for (&from, &id) in &moves.applied {
            w.u16(from.0);
            w.u64(id);
        }
    }

    /// Reads the frozen slot ranges back (restore only; the invariant check follows).
    fn restore_frozen(&mut self, r: &mut Reader<'_>) -> Result<(), EngineError> {
        for _ in 0..r.count(4)? {
            let range = slots::decode_range(r)?;
            if self
                .frozen
                .iter()
                .any(|frozen| frozen.first() <= range.last() && range.first() <= frozen.last())
            {
                return Err(invalid("frozen slot range", range.first().0.into()));
            }
            self.frozen.push(range);
        }
        self.reservations_frozen = self
            .reservations
            .iter()
            .filter(|(id, r)| r.state == ReservationState::Held && self.frozen_slot(id.slot()))
            .count();
        Ok(())
    }

    /// Reads the buckets section back (restore only; the invariant check follows).
    fn restore_buckets(&mut self, r: &mut Reader<'_>) -> Result<(), EngineError> {
        for _ in 0..r.count(12)? {
            let (sku, buckets) = (SkuId(r.u64()?), r.u32()?);
            if self.moves.bucketed.insert(sku, buckets).is_some() {
                return Err(invalid("spread SKU", sku.0));
            }
        }
        self.moves.seq_next = r.u64()?;
        for _ in 0..r.count(9)? {
            let record = crate::record::decode_one(r)?;
            let Record::MovedOut { stock_move, .. } = record else {
                return Err(invalid("move in flight", 0));
            };
            if self.moves.in_flight.insert(stock_move.id, stock_move).is_some() {
                return Err(invalid("move in flight", stock_move.id));
            }
        }
        for _ in 0..r.count(10)? {
            let (from, id) = (ShardId(r.u16()?), r.u64()?);
            if self.moves.applied.insert(from, id).is_some() {
                return Err(invalid("move sender", from.0.into()));
            }
        }
        let buckets = self.skus.keys().copied().filter(|sku| sku.is_bucket());
        self.moves.buckets_here = self.moves.bucketed.keys().copied().chain(buckets).collect();
        Ok(())
    }

    /// The cart sections: line groups held as a participant, then carts as coordinator.
    fn encode_carts(&self, w: &mut Writer<'_>) {
        w.u64(self.group_seq_next);
        let mut groups: Vec<_> = self.groups.iter().collect();
        groups.sort_unstable_by_key(|(request, _)| **request);
        w.u64(groups.len() as u64);
        for (request, g) in groups {
            w.u128(request.0);
            w.u64(g.group);
            w.u16(g.coordinator.0);
            w.u64(g.buyer.0);
            w.u64(g.deadline_ms);
            w.u8(u8::from(g.held_by.is_some()));
            let (cart, expires_at_ms) = g.held_by.unwrap_or((ReservationId(0), 0));
            w.u64(cart.0);
            w.u64(expires_at_ms);
            cart_codec::encode_lines(w, &g.lines);
        }
        let mut carts: Vec<_> = self.carts.iter().collect();
        carts.sort_unstable_by_key(|(id, _)| **id);
        w.u64(carts.len() as u64);
        for (id, c) in carts {
            w.u64(id.0);
            w.u128(c.request.0);
            w.u64(c.buyer.0);
            w.u64(c.expires_at_ms);
            w.u8(c.state.code());
            w.opt_u128(c.order_ref.map(|o| o.0));
            cart_codec::encode_lines(w, &c.lines);
            cart_codec::encode_groups(w, &c.groups);
        }
        w.u64(self.carts_ended.len() as u64);
        for &(id, ended_at_ms) in &self.carts_ended {
            w.u64(id.0);
            w.u64(ended_at_ms);
        }
        // Sales still returnable, in the order they were made (the oldest go first).
        w.u64(self.returnable.len() as u64);
        for &key in &self.returnable.order {
            let sale = self.returnable.get(key).expect("every sale in order is stored");
            w.u64(key.0 .0);
            w.u8(key.1);
            w.u64(sale.buyer.0);
            w.u64(sale.sku.0);
            w.u32(sale.qty);
            w.u32(sale.returned);
            w.u64(sale.sold_at_ms);
        }
    }

    /// Reads the cart sections back (restore only; the invariant check follows).
    fn restore_carts(&mut self, r: &mut Reader<'_>) -> Result<(), EngineError> {
        self.group_seq_next = r.u64()?;
        for _ in 0..r.count(16 + 8 + 2 + 8 + 8 + 1 + 16 + 1)? {
            let request = RequestId(r.u128()?);
            let (group, coordinator) = (r.u64()?, ShardId(r.u16()?));
            let (buyer, deadline_ms) = (BuyerId(r.u64()?), r.u64()?);
            let held = r.u8()?;
            let (cart, expires_at_ms) = (ReservationId(r.u64()?), r.u64()?);
            let held_by = match held {
                0 => None,
                1 => Some((cart, expires_at_ms)),
                value => return Err(invalid("group held flag", value.into())),
            };
            if group == 0 || group >= self.group_seq_next {
                return Err(invalid("line group id", group));
            }
            let lines = cart_codec::decode_lines(r)?;
            let entry =
                LineGroup { group, coordinator, buyer, lines, deadline_ms, held_by, ask_at_ms: 0 };
            if self.groups.insert(request, Box::new(entry)).is_some() {
                return Err(invalid("line group's cart", request.0 as u64));
            }
        }
        for _ in 0..r.count(8 + 16 + 8 + 8 + 1 + 1 + 2)? {
            let id = ReservationId(r.u64()?);
            let cart = Cart {
                request: RequestId(r.u128()?),
                buyer: BuyerId(r.u64()?),
                expires_at_ms: r.u64()?,
                state: decode_state(r.u8()?)?,
                order_ref: r.opt_u128("order reference flag")?.map(OrderRef),
                lines: cart_codec::decode_lines(r)?,
                groups: cart_codec::decode_groups(r)?,
            };
            if self.cart_ids.insert(cart.request, id).is_some() {
                return Err(invalid("cart request", cart.request.0 as u64));
            }
            self.carts_live += usize::from(cart.state == ReservationState::Held);
            if self.carts.insert(id, Box::new(cart)).is_some() {
                return Err(invalid("cart id", id.0));
            }
        }
        for _ in 0..r.count(16)? {
            self.carts_ended.push_back((ReservationId(r.u64()?), r.u64()?));
        }
        for _ in 0..r.count(8 + 1 + 8 + 8 + 4 + 4 + 8)? {
            let key = (ReservationId(r.u64()?), r.u8()?);
            let sale = Sale {
                buyer: BuyerId(r.u64()?),
                sku: SkuId(r.u64()?),
                qty: r.u32()?,
                returned: r.u32()?,
                sold_at_ms: r.u64()?,
            };
            if key.0 .0 == 0 || !self.returnable.insert(key, sale) {
                return Err(invalid("returnable sale", key.0 .0));
            }
        }
        self.rebuild_asks();
        Ok(())
    }

    /// A 64-bit FNV-1a hash of the canonical snapshot without the clock: equal digests, equal
    /// durable state.
    ///
    /// The clock is left out because commands that change nothing (never logged) advance it
    /// too, so a replay can end at an earlier clock than the live run. That is harmless: the
    /// runtime feeds a recovered shard the wall clock, which is later still.
    pub fn digest(&self) -> u64 {
        let mut bytes = Vec::new();
        self.encode_snapshot(&mut bytes);
        let without_clock = bytes[..CLOCK_FIELD.start].iter().chain(&bytes[CLOCK_FIELD.end..]);
        without_clock.fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Rebuilds shard `id` from a snapshot and verifies every invariant before returning it.
    pub fn restore(id: ShardId, config: ShardConfig, bytes: &[u8]) -> Result<Shard, EngineError> {
        let mut r = Reader::new(bytes, "snapshot");
        if r.u32()? != SNAPSHOT_MAGIC {
            return Err(EngineError::NotASnapshot);
        }
        let version = r.u16()?;
        let known = [
            SNAPSHOT_VERSION,
            SNAPSHOT_VERSION_NO_SLOTS,
            SNAPSHOT_VERSION_NO_BUCKETS,
            SNAPSHOT_VERSION_NO_CARTS,
        ];
        if !known.contains(&version) {
            return Err(EngineError::UnsupportedVersion { version, supported: SNAPSHOT_VERSION });
        }
        let found = r.u16()?;
        if found != id.0 {
            return Err(EngineError::WrongShard { expected: id.0, found });
        }
        let mut shard = Shard::new(id, config);
        shard.clock_ms = r.u64()?;
        shard.reservation_seq_next = r.u64()?;
        for _ in 0..r.count(8 * 4)? {
            let (sku_id, sku) = decode_sku(&mut r, shard.hash_key)?;
            shard.skus.insert(sku_id, sku);
        }
        let mut reservations = Vec::with_capacity(r.count(8 * 4 + 5)?);
        for _ in 0..reservations.capacity() {
            let id = ReservationId(r.u64()?);
            let reservation = Reservation {
                buyer: BuyerId(r.u64()?),
                sku: SkuId(r.u64()?),
                expires_at_ms: r.u64()?,
                qty: r.u32()?,
                state: decode_state(r.u8()?)?,
            };
            // In (sequence, id) order: the slot bits above the sequence do not order ids by
            // age, and an imported id may share its sequence with one issued here.
            let in_order = reservations.last().is_none_or(|&(last, _): &(ReservationId, _)| {
                (last.seq(), last.0) < (id.seq(), id.0)
            });
            // A reservation is never newer than the shard's next sequence number.
            let issued = id.seq() < shard.reservation_seq_next;
            let slot_right = id.slot() == slot_of(reservation.sku);
            if id.shard() != shard.id || id.seq() == 0 || !in_order || !issued || !slot_right {
                return Err(EngineError::InvalidField { field: "reservation id", value: id.0 });
            }
            reservations.push((id, reservation));
        }
        let first_seq = ring_start(&reservations).unwrap_or(shard.reservation_seq_next);
        let ring_slots = config.reservation_slots_presized();
        shard.reservations = ReservationTable::new(id, first_seq, ring_slots);
        for (id, reservation) in reservations {
            if reservation.state == ReservationState::Held {
                shard.reservations_live += 1;
            }
            shard.reservations.insert(id, reservation);
        }
        for _ in 0..r.count(24)? {
            let id = ReservationId(r.u64()?);
            let held =
                shard.reservations.get(id).is_some_and(|r| r.state == ReservationState::Held);
            if !held {
                return Err(EngineError::InvalidField {
                    field: "order reference's reservation",
                    value: id.0,
                });
            }
            shard.order_refs.insert(id, OrderRef(r.u128()?));
        }
        for _ in 0..r.count(16)? {
            shard.ended.push_back((ReservationId(r.u64()?), r.u64()?));
        }
        let answers = r.count(16 + 8 + 17)?;
        let mut remembered = Vec::with_capacity(answers);
        for _ in 0..answers {
            let (request, answered_at_ms) = (RequestId(r.u128()?), r.u64()?);
            let slot = if version >= SNAPSHOT_VERSION { Slot(r.u16()?) } else { SLOT_NONE };
            let outcome = decode_answer(&mut r)?;
            remembered.push(Answer::new(request.into(), answered_at_ms, outcome, slot));
        }
        if version >= SNAPSHOT_VERSION_NO_BUCKETS {
            shard.restore_carts(&mut r)?;
        }
        if version >= SNAPSHOT_VERSION_NO_SLOTS {
            shard.restore_buckets(&mut r)?;
        }
        if version >= SNAPSHOT_VERSION {
            shard.restore_frozen(&mut r)?;
        }
        if r.remaining() != 0 {
            return Err(EngineError::TrailingBytes { count: r.remaining() });
        }
        shard
            .dedup
            .restore(remembered, &config)
            .map_err(|request| EngineError::DuplicateAnswer { request })?;
        shard.rebuild_expiries();
        shard.check_invariants()?;
        Ok(shard)
    }
}

fn encode_sku(w: &mut Writer<'_>, id: SkuId, sku: &SkuState) {
    w.u64(id.0);
    w.u64(sku.total);
    w.u64(sku.available);
    w.u64(sku.reserved);
    w.u64(sku.sold);
    w.opt_u32(sku.buyer_limit);
    w.opt_u64(sku.window.opens_at_ms);
    w.opt_u64(sku.window.closes_at_ms);
    let mut taken: Vec<_> = sku.taken.iter().collect();
    taken.sort_unstable_by_key(|&(buyer, _)| buyer);
    w.u64(taken.len() as u64);
    for (buyer, units) in taken {
        w.u64(buyer.0);
        w.u64(units);
    }
}

/// Where the restored table's ring starts: at the oldest reservation from which on the ring is
/// at least about half full. Older stragglers go to the table's overflow map, as they do live.
/// Starting at the oldest, one old straggler and one new hold would ask for a ring spanning
/// every sequence number between them (a fuzzed snapshot asked for 35 TB).
fn ring_start(reservations: &[(ReservationId, Reservation)]) -> Option<u64> {
    const SLACK_SLOTS: u64 = 64;
    let last = reservations.last()?.0.seq();
    let mut start = last;
    for (newer, (id, _)) in reservations.iter().rev().enumerate() {
        let span = last - id.seq() + 1;
        if span <= 2 * (newer as u64 + 1) + SLACK_SLOTS {
            start = id.seq();
        }
    }
    Some(start)
}

fn decode_sku(r: &mut Reader<'_>, key: HashKey) -> Result<(SkuId, SkuState), EngineError> {
    let id = SkuId(r.u64()?);
    let mut sku = SkuState {
        total: r.u64()?,
        available: r.u64()?,
        reserved: r.u64()?,
        sold: r.u64()?,
        buyer_limit: r.opt_u32("buyer limit flag")?,
        window: SaleWindow {
            opens_at_ms: r.opt_u64("window open flag")?,
            closes_at_ms: r.opt_u64("window close flag")?,
        },
        taken: Default::default(),
    };
    let buyers = r.count(16)?;
    sku.taken = BuyerCounts::with_capacity(buyers);
    for _ in 0..buyers {
        let (buyer, units) = (BuyerId(r.u64()?), r.u64()?);
        if !sku.taken.restore(buyer, units, key) {
            return Err(EngineError::InvalidField { field: "buyer's taken units", value: units });
        }
    }
    Ok((id, sku))
}

fn invalid(field: &'static str, value: u64) -> EngineError {
    EngineError::InvalidField { field, value }
}

fn decode_state(code: u8) -> Result<ReservationState, EngineError> {
    ReservationState::from_code(code)
        .ok_or(EngineError::InvalidField { field: "reservation state", value: code.into() })
}

/// Only outcomes of state-changing requests are remembered durably, so only those encode.
pub(crate) fn encode_answer(w: &mut Writer<'_>, outcome: Outcome) {
    let (tag, a, b) = match outcome {
        Outcome::Reserved { reservation, expires_at_ms } => (1, reservation.0, expires_at_ms),
        Outcome::Confirmed => (2, 0, 0),
        Outcome::Cancelled => (3, 0, 0),
        Outcome::Expired => (4, 0, 0),
        Outcome::StockChanged { total, available } => (5, total, available),
        Outcome::LimitSet => (6, 0, 0),
        Outcome::WindowSet => (7, 0, 0),
        Outcome::CartTimedOut => (8, 0, 0),
        Outcome::CartRefused { line, refusal, value } => {
            (9, u64::from(line) | u64::from(refusal.code()) << 8, value)
        }
        Outcome::Returned { returned_total } => (10, u64::from(returned_total), 0),
        Outcome::BucketsSet { buckets } => (11, u64::from(buckets), 0),
        other => unreachable!("{other:?} never changes state, so it is never remembered"),
    };
    w.u8(tag);
    w.u64(a);
    w.u64(b);
}

pub(crate) fn decode_answer(r: &mut Reader<'_>) -> Result<Outcome, EngineError> {
    let (tag, a, b) = (r.u8()?, r.u64()?, r.u64()?);
    Ok(match tag {
        1 => Outcome::Reserved { reservation: ReservationId(a), expires_at_ms: b },
        2 => Outcome::Confirmed,
        3 => Outcome::Cancelled,
        4 => Outcome::Expired,
        5 => Outcome::StockChanged { total: a, available: b },
        6 => Outcome::LimitSet,
        7 => Outcome::WindowSet,
        8 => Outcome::CartTimedOut,
        9 => {
            let code = (a >> 8) as u8;
            let refusal = LineRefusal::from_code(code)
                .filter(|_| a >> 16 == 0)
                .ok_or(EngineError::InvalidField { field: "answer's line refusal", value: a })?;
            Outcome::CartRefused { line: a as u8, refusal, value: b }
        }
        10 => Outcome::Returned {
            returned_total: u32::try_from(a).map_err(|_| EngineError::InvalidField {
                field: "answer's returned total",
                value: a,
            })?,
        },
        11 => Outcome::BucketsSet {
            buckets: u32::try_from(a)
                .map_err(|_| EngineError::InvalidField { field: "answer's buckets", value: a })?,
        },
        value => {
            return Err(EngineError::InvalidField { field: "answer tag", value: value.into() })
        }
    })
}
