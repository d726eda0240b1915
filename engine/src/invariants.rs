//! The full invariant check: run on recovery, and after every step in the simulation tests.
//! `apply` checks the touched SKU in O(1); this checks everything in O(state).

use rustc_hash::FxHashMap;

use crate::error::EngineError;
use crate::ids::{slot_of, SkuId};
use crate::outcome::ReservationState;
use crate::shard::Shard;

impl Shard {
    /// Verifies every invariant of the shard's state.
    ///
    /// 1. `available + reserved + sold == total` for every SKU (none negative: unsigned, and
    ///    every subtraction in the engine is checked);
    /// 2. no buyer holds plus bought more than the SKU's limit, and the per-buyer counts add up
    ///    to reserved + sold;
    /// 3. a SKU's reserved count is the sum over its live reservations;
    /// 4. reservation bookkeeping: live count, ended list and ids agree.
    pub fn check_invariants(&self) -> Result<(), EngineError> {
        let mut held_by_sku: FxHashMap<SkuId, u64> = FxHashMap::default();
        let (mut live, mut frozen) = (0usize, 0usize);
        for (id, r) in self.reservations.iter() {
            if id.shard() != self.id || id.seq() == 0 || id.seq() >= self.reservation_seq_next {
                return Err(bookkeeping(Some(id), "id not issued by this shard"));
            }
            if !self.skus.contains_key(&r.sku) {
                return Err(bookkeeping(Some(id), "reservation of an unknown SKU"));
            }
            if r.state == ReservationState::Held {
                live += 1;
                frozen += usize::from(self.frozen_slot(id.slot()));
                *held_by_sku.entry(r.sku).or_insert(0) += u64::from(r.qty);
            }
        }
        if live != self.reservations_live || frozen != self.reservations_frozen {
            return Err(bookkeeping(None, "live count differs from held reservations"));
        }
        for group in self.groups.values() {
            if group.group == 0 || group.group >= self.group_seq_next {
                return Err(cart_bookkeeping(None, "line group id not issued by this shard"));
            }
            for line in group.lines.as_slice() {
                if !self.skus.contains_key(&line.sku) {
                    return Err(cart_bookkeeping(None, "line group of an unknown SKU"));
                }
                *held_by_sku.entry(line.sku).or_insert(0) += u64::from(line.qty);
            }
        }
        self.check_carts_here()?;
        if self.asks_due.len() != self.groups.len() + self.asks_stale {
            return Err(cart_bookkeeping(None, "scheduled questions differ from open plus stale"));
        }
        self.check_returnable()?;
        self.check_moves()?;
        for id in self.order_refs.keys() {
            if self.reservations.get(*id).is_none_or(|r| r.state != ReservationState::Held) {
                return Err(bookkeeping(
                    Some(*id),
                    "order reference kept for an ended reservation",
                ));
            }
        }
        if self.ended.len() + live != self.reservations.len() {
            return Err(bookkeeping(None, "ended list differs from ended reservations"));
        }
        for &(id, _) in &self.ended {
            match self.reservations.get(id) {
                Some(r) if r.state != ReservationState::Held => {}
                _ => return Err(bookkeeping(Some(id), "ended list names a reservation not ended")),
            }
        }
        // Each held reservation has one expiry entry, but for those of frozen slot ranges;
        // entries of reservations that ended early stay until popped or compacted, and are
        // counted.
        if self.expiries.len() != live - frozen + self.carts_live + self.expiries_stale {
            return Err(bookkeeping(None, "expiry entries differ from held plus stale"));
        }
        for (&sku_id, sku) in &self.skus {
            // A frozen range may be half imported: its reservations and buyers arrive after
            // their SKU, so they may still add up to less (`thaw_slots` checks they are all in).
            let complete = !self.frozen_slot(slot_of(sku_id));
            check_sku(sku_id, sku, held_by_sku.get(&sku_id).copied().unwrap_or(0), complete)?;
        }
        let (answers, ordered) = (self.dedup.answers.indexed(), self.dedup.answers.len());
        if answers != ordered {
            return Err(EngineError::DedupBookkeeping { answers, ordered });
        }
        Ok(())
    }
}

impl Shard {
    /// The returnable sales: one entry per sale in order, of known SKUs, never more returned
    /// than sold.
    fn check_returnable(&self) -> Result<(), EngineError> {
        let returnable = &self.returnable;
        if returnable.len() != returnable.stored() {
            return Err(bookkeeping(None, "returnable order differs from returnable sales"));
        }
        for &key in &returnable.order {
            let Some(sale) = returnable.get(key) else {
                return Err(bookkeeping(Some(key.0), "returnable order names an unknown sale"));
            };
            if sale.returned > sale.qty || !self.skus.contains_key(&sale.sku) {
                return Err(bookkeeping(Some(key.0), "a sale returned more than it sold"));
            }
        }
        Ok(())
    }

    /// The carts this shard coordinates: live count, ended list, ids and the request index.
    fn check_carts_here(&self) -> Result<(), EngineError> {
        let live = self.carts.values().filter(|c| c.state == ReservationState::Held).count();
        if live != self.carts_live || self.carts_ended.len() + live != self.carts.len() {
            return Err(cart_bookkeeping(None, "live and ended carts differ from the carts"));
        }
        for (&id, cart) in &self.carts {
            // A cart is named by its first line's slot (its coordinator's SKU).
            let first_slot = cart.lines.as_slice().first().map(|line| slot_of(line.sku));
            let issued = id.shard() == self.id
                && (1..self.reservation_seq_next).contains(&id.seq())
                && first_slot == Some(id.slot());
            if !issued || self.reservations.get(id).is_some() {
                return Err(cart_bookkeeping(Some(id), "cart id not issued by this shard"));
            }
            if self.cart_ids.get(&cart.request) != Some(&id) {
                return Err(cart_bookkeeping(Some(id), "cart missing from the request index"));
            }
        }
        if self.cart_ids.len() != self.carts.len() {
            return Err(cart_bookkeeping(None, "request index names forgotten carts"));
        }
        for &(id, _) in &self.carts_ended {
            if self.carts.get(&id).is_none_or(|c| c.state == ReservationState::Held) {
                return Err(cart_bookkeeping(Some(id), "ended list names a cart not ended"));
            }
        }
        Ok(())
    }
}

fn cart_bookkeeping(cart: Option<crate::ids::ReservationId>, detail: &'static str) -> EngineError {
    EngineError::CartBookkeeping { cart, detail }
}

/// Checks one SKU; `complete` unless it is in a frozen range, where its reservations and
/// buyers may not all be imported yet (they may then add up to less, never to more).
pub(crate) fn check_sku(
    sku_id: SkuId,
    sku: &crate::shard::SkuState,
    held: u64,
    complete: bool,
) -> Result<(), EngineError> {
    let sum = sku.available.checked_add(sku.reserved).and_then(|s| s.checked_add(sku.sold));
    if sum != Some(sku.total) {
        return Err(EngineError::Conservation {
            sku: sku_id,
            total: sku.total,
            available: sku.available,
            reserved: sku.reserved,
            sold: sku.sold,
        });
    }
    if held > sku.reserved || (complete && held != sku.reserved) {
        return Err(EngineError::ReservedMismatch {
            sku: sku_id,
            recorded: sku.reserved,
            counted: held,
        });
    }
    let taken_sum: u64 = sku.taken.iter().map(|(_, units)| units).sum();
    if taken_sum > sku.reserved + sku.sold || (complete && taken_sum != sku.reserved + sku.sold) {
        return Err(EngineError::TakenMismatch {
            sku: sku_id,
            taken_sum,
            committed: sku.reserved + sku.sold,
        });
    }
    if let Some(limit) = sku.buyer_limit {
        if let Some((buyer, taken)) = sku.taken.iter().find(|&(_, t)| t > u64::from(limit)) {
            return Err(EngineError::BuyerOverLimit { sku: sku_id, buyer, taken, limit });
        }
    }
    Ok(())
}

fn bookkeeping(
    reservation: Option<crate::ids::ReservationId>,
    detail: &'static str,
) -> EngineError {
    EngineError::ReservationBookkeeping { reservation, detail }
}

impl Shard {
    /// Moves in flight were sent by this shard, in sequence, from its buckets; spread SKUs
    /// exist here as bucket 0 (docs/hot-skus.md).
    fn check_moves(&self) -> Result<(), EngineError> {
        let broken = |id, detail| Err(EngineError::MoveBookkeeping { id, detail });
        for (&id, stock_move) in &self.moves.in_flight {
            if id != stock_move.id || id == 0 || id >= self.moves.seq_next {
                return broken(id, "a move in flight with an id this shard did not issue");
            }
            if stock_move.from_sku.base() != stock_move.to_sku.base() {
                return broken(id, "a move between two SKUs");
            }
        }
        for (&sku, &buckets) in &self.moves.bucketed {
            if sku.is_bucket() || !self.skus.contains_key(&sku) || buckets < 2 {
                return broken(0, "a spread SKU whose bucket 0 is not here");
            }
        }
        Ok(())
    }
}
