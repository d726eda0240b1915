//! `BuyerCounts`: units each buyer of one SKU holds plus has bought, for buyer limits.
//!
//! Every successful reserve adds to it and every cancel or expiry takes from it, at a buyer
//! picked by the client: a random access into a map that, on a hot SKU, holds hundreds of
//! thousands of buyers. A `ProbeTable` with the buyer and count inline makes that one cache
//! line. Buyers at zero are removed, so zero marks a free slot.

use crate::ids::BuyerId;
use crate::probe::{mix, HashKey, ProbeTable, Slot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Taken {
    buyer: u64,
    units: u64,
}

impl Slot for Taken {
    const EMPTY: Taken = Taken { buyer: 0, units: 0 };
    fn is_empty(&self) -> bool {
        self.units == 0
    }
    fn hash(&self, key: HashKey) -> u64 {
        mix(self.buyer, key)
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct BuyerCounts {
    table: ProbeTable<Taken>,
}

impl BuyerCounts {
    /// Room for `buyers` without growing.
    pub(crate) fn with_capacity(buyers: usize) -> BuyerCounts {
        BuyerCounts { table: ProbeTable::with_capacity(buyers) }
    }

    fn find(&self, buyer: BuyerId) -> Option<usize> {
        self.table.find(mix(buyer.0, self.table.key()), |slot| slot.buyer == buyer.0)
    }

    /// Starts loading `buyer`'s slot into cache (see `ProbeTable::prefetch`).
    pub(crate) fn prefetch(&self, buyer: BuyerId) {
        self.table.prefetch(mix(buyer.0, self.table.key()));
    }

    /// Units `buyer` holds plus has bought; 0 for a buyer never seen.
    pub(crate) fn get(&self, buyer: BuyerId) -> u64 {
        self.find(buyer).map_or(0, |index| self.table.slot(index).units)
    }

    /// Counts `units` (at least 1) more for `buyer`. A table still empty takes the shard's
    /// `key` (SKUs are created keyless, and lookups in an empty table find nothing anyway).
    pub(crate) fn add(&mut self, buyer: BuyerId, units: u64, key: HashKey) {
        debug_assert!(units > 0);
        match self.find(buyer) {
            Some(index) => self.table.slot_mut(index).units += units,
            None => {
                self.table.set_key(key);
                self.table.insert(Taken { buyer: buyer.0, units });
            }
        }
    }

    /// Counts `units` fewer for `buyer`, forgetting a buyer at zero. Panics when the buyer
    /// has fewer: the shard's bookkeeping is broken and must not go on.
    pub(crate) fn sub(&mut self, buyer: BuyerId, units: u64) {
        let index = self.find(buyer).expect("a holding buyer is counted");
        let slot = self.table.slot_mut(index);
        let left = slot.units.checked_sub(units).expect("taken never goes negative");
        if left == 0 {
            self.table.remove(index);
        } else {
            slot.units = left;
        }
    }

    /// Sets a buyer's count when restoring a snapshot; false for a zero count or a buyer
    /// already counted, which a snapshot never holds.
    #[must_use]
    pub(crate) fn restore(&mut self, buyer: BuyerId, units: u64, key: HashKey) -> bool {
        self.table.set_key(key);
        if units == 0 || self.find(buyer).is_some() {
            return false;
        }
        self.table.insert(Taken { buyer: buyer.0, units });
        true
    }

    /// Every counted buyer, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (BuyerId, u64)> + '_ {
        self.table.iter().map(|slot| (BuyerId(slot.buyer), slot.units))
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}
