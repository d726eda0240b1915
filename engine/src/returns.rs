//! Returns: units of a confirmed sale (a reservation, or one line of a cart) given back to
//! `available`, never more than the sale sold.
//!
//! A return may come days after the sale, long after the reservation itself is forgotten, so
//! each shard keeps what it needs of every sale it made, in a table of its own: who bought,
//! which SKU, how many, and how many came back. The table is bounded by age
//! (`ShardConfig::return_window_ms`) and by count (`returnable_entries_max`); a sale past
//! either is no longer returnable here (`Outcome::NotReturnable`): an operator then corrects
//! the stock with an adjustment.
//!
//! Every confirm records a sale, so the table is a `ProbeTable` (48-byte slots inline, grown
//! a few entries per insert): a map that rehashed all at once when it doubled stalled a
//! shard for tens of milliseconds at a million sales.

use std::collections::VecDeque;

use crate::ids::{BuyerId, ReservationId, SkuId};
use crate::limits::ShardConfig;
use crate::probe::{mix, HashKey, ProbeTable, Slot};

/// A sale, by its reservation (or cart) and its line (0 for a one-line reservation).
pub(crate) type SaleKey = (ReservationId, u8);

/// What a sale sold, and what came back of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sale {
    pub(crate) buyer: BuyerId,
    pub(crate) sku: SkuId,
    pub(crate) qty: u32,
    pub(crate) returned: u32,
    pub(crate) sold_at_ms: u64,
}

/// One sale in the table. Reservation id 0 is never issued (sequences start at 1), so an
/// all-zero slot is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct SaleSlot {
    reservation: u64,
    sku: u64,
    buyer: u64,
    sold_at_ms: u64,
    qty: u32,
    returned: u32,
    line: u8,
    _pad: [u8; 7],
}

const _: () = assert!(std::mem::size_of::<SaleSlot>() == 48);

impl Slot for SaleSlot {
    const EMPTY: SaleSlot = SaleSlot {
        reservation: 0,
        sku: 0,
        buyer: 0,
        sold_at_ms: 0,
        qty: 0,
        returned: 0,
        line: 0,
        _pad: [0; 7],
    };
    fn is_empty(&self) -> bool {
        self.reservation == 0
    }
    fn hash(&self, key: HashKey) -> u64 {
        hash_of((ReservationId(self.reservation), self.line), key)
    }
}

fn hash_of((reservation, line): SaleKey, key: HashKey) -> u64 {
    mix(reservation.0.rotate_left(8) ^ u64::from(line), key)
}

/// The sales still returnable, and their order of sale (the oldest go first).
#[derive(Clone, Debug, Default)]
pub(crate) struct Returnable {
    table: ProbeTable<SaleSlot>,
    pub(crate) order: VecDeque<SaleKey>,
}

impl Returnable {
    /// An empty table whose slots are placed by `key` (the shard's), holding at most
    /// `entries_max` sales.
    pub(crate) fn new(key: HashKey, entries_max: usize) -> Returnable {
        let mut table = ProbeTable::with_capacity(0);
        table.set_key(key);
        // A sale is recorded before the oldest is forgotten: one more than the bound.
        table.set_entries_max(entries_max + 1);
        Returnable { table, order: VecDeque::new() }
    }

    fn find(&self, key: SaleKey) -> Option<usize> {
        let hash = hash_of(key, self.table.key());
        self.table.find(hash, |s| s.reservation == key.0 .0 && s.line == key.1)
    }

    /// The sale `key`, whatever its age.
    pub(crate) fn get(&self, key: SaleKey) -> Option<Sale> {
        let slot = self.table.slot(self.find(key)?);
        let (buyer, sku) = (BuyerId(slot.buyer), SkuId(slot.sku));
        Some(Sale {
            buyer,
            sku,
            qty: slot.qty,
            returned: slot.returned,
            sold_at_ms: slot.sold_at_ms,
        })
    }

    /// Records a sale made at `sale.sold_at_ms`, then forgets what is past the window or the
    /// count. Called on confirm, live and on replay alike, so both forget the same sales.
    pub(crate) fn record(&mut self, key: SaleKey, sale: Sale, config: &ShardConfig) {
        self.insert(key, sale);
        let now_ms = sale.sold_at_ms;
        while let Some(&oldest) = self.order.front() {
            let index = self.find(oldest).expect("every sale in order is stored");
            let sold_at_ms = self.table.slot(index).sold_at_ms;
            let too_many = self.order.len() > config.returnable_entries_max;
            let too_old = sold_at_ms.saturating_add(config.return_window_ms) <= now_ms;
            if !(too_many || too_old) {
                break;
            }
            self.order.pop_front();
            self.table.remove(index);
        }
    }

    /// Stores a sale as the newest (a snapshot restores them oldest first); false when the
    /// sale is already there.
    pub(crate) fn insert(&mut self, key: SaleKey, sale: Sale) -> bool {
        if self.find(key).is_some() {
            return false;
        }
        self.table.insert(SaleSlot {
            reservation: key.0 .0,
            sku: sale.sku.0,
            buyer: sale.buyer.0,
            sold_at_ms: sale.sold_at_ms,
            qty: sale.qty,
            returned: sale.returned,
            line: key.1,
            _pad: [0; 7],
        });
        self.order.push_back(key);
        true
    }

    /// Takes `qty` units back from the sale `key` if it is still returnable at `now_ms`, of
    /// `sku`, and has that many left: its running returned total, or why not.
    pub(crate) fn take_back(
        &mut self,
        key: SaleKey,
        sku: SkuId,
        qty: u32,
        now_ms: u64,
        config: &ShardConfig,
    ) -> Result<(BuyerId, u32), Option<u32>> {
        let index = self.find(key).ok_or(None)?;
        let slot = self.table.slot_mut(index);
        let open = slot.sold_at_ms.saturating_add(config.return_window_ms) > now_ms;
        if !open || slot.sku != sku.0 {
            return Err(None);
        }
        let returnable = slot.qty - slot.returned;
        if qty > returnable {
            return Err(Some(returnable));
        }
        slot.returned += qty;
        Ok((BuyerId(slot.buyer), slot.returned))
    }

    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// Keeps only the sales `keep` says to (a slot move releasing a range), in their order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Sale) -> bool) {
        let mut order = std::mem::take(&mut self.order);
        order.retain(|&key| {
            let sale = self.get(key).expect("every sale in order is stored");
            let kept = keep(&sale);
            if !kept {
                let index = self.find(key).expect("read just above");
                self.table.remove(index);
            }
            kept
        });
        self.order = order;
    }

    /// Sales in the table; equal to `len()` unless the bookkeeping is broken.
    pub(crate) fn stored(&self) -> usize {
        self.table.len()
    }
}
