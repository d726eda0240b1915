//! `ReservationTable`: a shard's reservations, indexed by their sequence number.
//!
//! A shard issues reservation sequence numbers in order, so most lookups are an index into a
//! ring that starts at the oldest reservation still remembered: no hashing, 32 bytes a slot.
//! Ended-and-forgotten reservations leave empty slots, trimmed from the front as it empties.
//! A reservation that outlives its neighbours by far (a long hold among short ones) would pin
//! the ring's front and keep every slot behind it; once empty slots outnumber full ones, the
//! oldest are moved to an overflow map so the ring can advance. Each entry moves at most once,
//! so the cost stays O(1) amortised and memory within about twice the entries held.
//!
//! Reservations imported from another server by a slot move (docs/cluster.md) keep their ids,
//! whose sequences were issued by the source's shard: they go to the overflow map, which is
//! keyed by the whole id, since one sequence may then name two reservations of different
//! slots.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::ids::{slot_of, ReservationId, ShardId};
use crate::shard::Reservation;

/// Below this many slots the ring is never compacted: small rings are cheap either way.
const RING_SLOTS_COMPACT_MIN: usize = 1024;

#[derive(Clone, Debug)]
pub(crate) struct ReservationTable {
    shard: ShardId,
    /// The sequence number of `ring[0]`.
    base_seq: u64,
    ring: VecDeque<Option<Reservation>>,
    /// Full slots in `ring`.
    ring_entries: usize,
    /// By whole id: reservations older than `base_seq` still remembered, and imported ones.
    overflow: FxHashMap<u64, Reservation>,
}

impl ReservationTable {
    /// An empty table whose ring holds `ring_slots` before it grows.
    pub(crate) fn new(shard: ShardId, first_seq: u64, ring_slots: usize) -> ReservationTable {
        ReservationTable {
            shard,
            base_seq: first_seq,
            ring: VecDeque::with_capacity(ring_slots),
            ring_entries: 0,
            overflow: FxHashMap::default(),
        }
    }

    /// Makes room in the ring for `slots` in all without growing.
    pub(crate) fn reserve_ring(&mut self, slots: usize) {
        self.ring.reserve_exact(slots.saturating_sub(self.ring.len()));
    }

    /// Slots the ring holds before it must grow.
    #[cfg(test)]
    pub(crate) fn ring_capacity(&self) -> usize {
        self.ring.capacity()
    }

    pub(crate) fn len(&self) -> usize {
        self.ring_entries + self.overflow.len()
    }

    fn seq_of(&self, id: ReservationId) -> Option<u64> {
        (id.shard() == self.shard).then_some(id.seq())
    }

    /// The reservation named `id`: its sequence finds it, and its slot must be its SKU's (an
    /// id with another slot is forged or corrupted, and names nothing).
    pub(crate) fn get(&self, id: ReservationId) -> Option<&Reservation> {
        match self.ring_index(id)? {
            Some(index) => self.ring[index].as_ref(),
            None => self.overflow.get(&id.0),
        }
    }

    pub(crate) fn get_mut(&mut self, id: ReservationId) -> Option<&mut Reservation> {
        match self.ring_index(id)? {
            Some(index) => self.ring[index].as_mut(),
            None => self.overflow.get_mut(&id.0),
        }
    }

    /// Where `id` is kept: `Some(index)` in the ring when its slot there holds a reservation
    /// of the id's slot (an id with another slot is forged, or imported and in the overflow
    /// map), `None` in the overflow map; no answer for another shard's id.
    fn ring_index(&self, id: ReservationId) -> Option<Option<usize>> {
        let seq = self.seq_of(id)?;
        let index = seq.checked_sub(self.base_seq).map(|i| i as usize);
        let in_ring = index.filter(|&index| {
            self.ring
                .get(index)
                .is_some_and(|slot| slot.as_ref().is_some_and(|r| slot_of(r.sku) == id.slot()))
        });
        Some(in_ring)
    }

    /// Stores `reservation` under `id`, which must be new. Issued ids arrive in order and land
    /// at the back of the ring; a restore may leave gaps, which stay empty.
    pub(crate) fn insert(&mut self, id: ReservationId, reservation: Reservation) {
        assert_eq!(id.shard(), self.shard, "reservation {id} stored in the wrong shard");
        assert_eq!(id.slot(), slot_of(reservation.sku), "reservation {id} names another slot");
        let seq = id.seq();
        let index = seq.checked_sub(self.base_seq).map(|i| i as usize);
        let taken = index.is_some_and(|index| self.ring.get(index).is_some_and(Option::is_some));
        let Some(index) = index.filter(|_| !taken) else {
            // Older than the ring, or a sequence the ring holds for another slot's
            // reservation (an imported id).
            self.insert_keyed(id, reservation);
            return;
        };
        if index >= self.ring.len() {
            self.ring.resize(index + 1, None);
        }
        self.ring[index] = Some(reservation);
        self.ring_entries += 1;
    }

    /// Stores a reservation imported from another server under its whole id. Its sequence
    /// was issued by another shard's counter, so it has no place in this ring.
    pub(crate) fn insert_keyed(&mut self, id: ReservationId, reservation: Reservation) {
        assert_eq!(id.shard(), self.shard, "reservation {id} stored in the wrong shard");
        assert_eq!(id.slot(), slot_of(reservation.sku), "reservation {id} names another slot");
        assert!(self.get(id).is_none(), "reservation {id} stored twice");
        self.overflow.insert(id.0, reservation);
    }

    /// Restarts the ring at `seq`, the shard's next sequence after it jumped past imported
    /// ids: what the ring holds moves to the overflow map, so the next issued id does not
    /// ask for a ring spanning the jump.
    pub(crate) fn restart_ring_at(&mut self, seq: u64) {
        if seq <= self.base_seq + self.ring.len() as u64 {
            return;
        }
        let base_seq = self.base_seq;
        for (index, slot) in std::mem::take(&mut self.ring).into_iter().enumerate() {
            if let Some(r) = slot {
                let id = ReservationId::new(slot_of(r.sku), self.shard, base_seq + index as u64);
                self.overflow.insert(id.0, r);
            }
        }
        self.ring_entries = 0;
        self.base_seq = seq;
    }

    pub(crate) fn remove(&mut self, id: ReservationId) -> Option<Reservation> {
        let Some(index) = self.ring_index(id)? else {
            return self.overflow.remove(&id.0);
        };
        let removed = self.ring[index].take();
        if removed.is_some() {
            self.ring_entries -= 1;
            self.trim();
        }
        removed
    }

    /// Drops empty slots from the front; moves stragglers to the overflow map when the ring is
    /// mostly empty.
    fn trim(&mut self) {
        loop {
            while let Some(None) = self.ring.front() {
                self.ring.pop_front();
                self.base_seq += 1;
            }
            let mostly_empty =
                self.ring.len() > RING_SLOTS_COMPACT_MIN && self.ring.len() > 2 * self.ring_entries;
            if !mostly_empty {
                return;
            }
            if let Some(Some(straggler)) = self.ring.pop_front() {
                let id = self.id_of(self.base_seq, &straggler);
                self.overflow.insert(id.0, straggler);
                self.ring_entries -= 1;
            }
            self.base_seq += 1;
        }
    }

    /// The id of the reservation at `seq`: its slot is its SKU's.
    fn id_of(&self, seq: u64, reservation: &Reservation) -> ReservationId {
        ReservationId::new(slot_of(reservation.sku), self.shard, seq)
    }

    /// Every reservation held, in (sequence, id) order, without collecting and sorting them
    /// all (a busy shard holds millions; the snapshot encoder walks them): the overflow
    /// entries, sorted (there are few), merged into the ring's, which are in order.
    pub(crate) fn iter_in_order(&self) -> impl Iterator<Item = (ReservationId, &Reservation)> + '_ {
        let order = |id: ReservationId| (id.seq(), id.0);
        let mut overflow: Vec<_> =
            self.overflow.iter().map(|(&id, r)| (ReservationId(id), r)).collect();
        overflow.sort_unstable_by_key(|&(id, _)| order(id));
        let mut overflow = overflow.into_iter().peekable();
        let mut ring = self
            .ring
            .iter()
            .enumerate()
            .filter_map(move |(index, slot)| {
                let seq = self.base_seq + index as u64;
                slot.as_ref().map(|r| (self.id_of(seq, r), r))
            })
            .peekable();
        std::iter::from_fn(move || match (overflow.peek(), ring.peek()) {
            (Some(&(a, _)), Some(&(b, _))) if order(b) < order(a) => ring.next(),
            (Some(_), _) => overflow.next(),
            (None, _) => ring.next(),
        })
    }

    /// Every reservation held, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ReservationId, &Reservation)> + '_ {
        let ring = self.ring.iter().enumerate().filter_map(move |(index, slot)| {
            let seq = self.base_seq + index as u64;
            slot.as_ref().map(|r| (self.id_of(seq, r), r))
        });
        let overflow = self.overflow.iter().map(|(&id, r)| (ReservationId(id), r));
        ring.chain(overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{BuyerId, SkuId};
    use crate::outcome::ReservationState;

    fn reservation(qty: u32) -> Reservation {
        Reservation {
            buyer: BuyerId(1),
            sku: SkuId(2),
            expires_at_ms: 3,
            qty,
            state: ReservationState::Held,
        }
    }

    #[test]
    fn a_long_lived_straggler_moves_to_overflow_and_the_ring_advances() {
        let shard = ShardId(5);
        let mut table = ReservationTable::new(shard, 1, 0);
        let slot = slot_of(SkuId(2));
        let id = |seq| ReservationId::new(slot, shard, seq);
        for seq in 1..=10_000 {
            table.insert(id(seq), reservation(seq as u32));
        }
        // Everything but the first reservation ends: it must not pin 10,000 slots.
        for seq in 2..=10_000 {
            assert_eq!(table.remove(id(seq)).unwrap().qty, seq as u32);
        }
        assert!(table.ring.len() <= RING_SLOTS_COMPACT_MIN + 1, "ring kept {}", table.ring.len());
        assert_eq!(table.len(), 1);
        assert_eq!(table.get(id(1)).unwrap().qty, 1);
        table.insert(id(10_001), reservation(7));
        assert_eq!(table.iter().count(), 2);
        assert_eq!(table.remove(id(1)).unwrap().qty, 1);
        assert!(table.get(id(1)).is_none());
        assert!(table.get(ReservationId::new(slot, ShardId(6), 10_001)).is_none(), "foreign shard");
        let other_slot = crate::ids::Slot((slot.0 + 1) % crate::ids::SLOT_COUNT);
        let forged = ReservationId::new(other_slot, shard, 10_001);
        assert!(table.get(forged).is_none(), "another slot's id names nothing");
        assert!(table.remove(forged).is_none(), "another slot's id ends nothing");
        assert_eq!(table.get(id(10_001)).unwrap().qty, 7);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Random issue/remove sequences long enough to compact the ring, checked against a
        /// sorted map.
        #[test]
        fn the_table_behaves_like_a_map(
            ops in proptest::collection::vec((0u8..10, proptest::prelude::any::<usize>()), 500..5_000)
        ) {
            let shard = ShardId(1);
            let mut table = ReservationTable::new(shard, 1, 0);
            let mut model = std::collections::BTreeMap::new();
            let mut next_seq = 1u64;
            for (kind, pick) in ops {
                if kind < 6 || model.is_empty() {
                    let id = ReservationId::new(slot_of(SkuId(2)), shard, next_seq);
                    table.insert(id, reservation(next_seq as u32));
                    model.insert(next_seq, next_seq as u32);
                    next_seq += 1;
                } else {
                    // Mostly remove recent entries, so old ones linger as stragglers.
                    let keys: Vec<u64> = model.keys().copied().collect();
                    let seq = keys[keys.len() - 1 - pick % keys.len().min(50)];
                    let removed = table.remove(ReservationId::new(slot_of(SkuId(2)), shard, seq)).map(|r| r.qty);
                    proptest::prop_assert_eq!(removed, model.remove(&seq));
                }
            }
            proptest::prop_assert_eq!(table.len(), model.len());
            for seq in 1..next_seq {
                let got = table.get(ReservationId::new(slot_of(SkuId(2)), shard, seq)).map(|r| r.qty);
                proptest::prop_assert_eq!(got, model.get(&seq).copied(), "seq {}", seq);
            }
            let mut listed: Vec<u64> = table.iter().map(|(id, _)| id.seq()).collect();
            listed.sort_unstable();
            proptest::prop_assert_eq!(&listed, &model.keys().copied().collect::<Vec<_>>());
            // In order without sorting, stragglers in the overflow map included.
            let in_order: Vec<u64> = table.iter_in_order().map(|(id, _)| id.seq()).collect();
            proptest::prop_assert_eq!(in_order, listed);
            proptest::prop_assert!(table.ring.len() <= 2 * table.ring_entries + RING_SLOTS_COMPACT_MIN + 1);
        }
    }
}
