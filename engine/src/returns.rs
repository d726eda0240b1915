//! Returns: units of a confirmed sale (a reservation, or one line of a cart) given back to
//! `available`, never more than the sale sold.
//!
//! A return may come days after the sale, long after the reservation itself is forgotten, so
//! each shard keeps what it needs of every sale it made, in a table of its own: who bought,
//! which SKU, how many, and how many came back. The table is bounded by age
//! (`ShardConfig::return_window_ms`) and by count (`returnable_entries_max`); a sale past
//! either is no longer returnable here (`Outcome::NotReturnable`): an operator then corrects
//! the stock with an adjustment.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::ids::{BuyerId, ReservationId, SkuId};
use crate::limits::ShardConfig;

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

/// The sales still returnable, and their order of sale (the oldest go first).
#[derive(Clone, Debug, Default)]
pub(crate) struct Returnable {
    pub(crate) sales: FxHashMap<SaleKey, Sale>,
    pub(crate) order: VecDeque<SaleKey>,
}

impl Returnable {
    /// Records a sale made at `sale.sold_at_ms`, then forgets what is past the window or the
    /// count. Called on confirm, live and on replay alike, so both forget the same sales.
    pub(crate) fn record(&mut self, key: SaleKey, sale: Sale, config: &ShardConfig) {
        let previous = self.sales.insert(key, sale);
        assert!(previous.is_none(), "sale {key:?} recorded twice");
        self.order.push_back(key);
        let now_ms = sale.sold_at_ms;
        while let Some(&oldest) = self.order.front() {
            let sold_at_ms = self.sales[&oldest].sold_at_ms;
            let too_many = self.order.len() > config.returnable_entries_max;
            let too_old = sold_at_ms.saturating_add(config.return_window_ms) <= now_ms;
            if !(too_many || too_old) {
                break;
            }
            self.order.pop_front();
            self.sales.remove(&oldest);
        }
    }

    /// The sale `key`, if it is still returnable at `now_ms`.
    pub(crate) fn get_mut(
        &mut self,
        key: SaleKey,
        now_ms: u64,
        config: &ShardConfig,
    ) -> Option<&mut Sale> {
        self.sales
            .get_mut(&key)
            .filter(|sale| sale.sold_at_ms.saturating_add(config.return_window_ms) > now_ms)
    }

    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}
