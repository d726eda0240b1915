//! Events: what the committed-deduction stream tells consumers, read off log records.
//!
//! Every reservation that ends is an event (a confirm is the committed deduction the order
//! writer turns into an order row; cancels and expiries are there for visibility), and so is
//! every admin change of stock. Reserves and the other admin commands are not: holds are not
//! sales, and limits and windows are configuration.

use crate::cart::LinesEnd;
use crate::command::Command;
use crate::ids::SkuId;
use crate::outcome::ReservationState;
use crate::record::{Ended, Record, SaleReturned};

/// Something that happened at `at_ms` (the owning shard's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct Event {
    /// When it happened, in the shard's clock (milliseconds since the Unix epoch in a server).
    pub at_ms: u64,
    /// What happened.
    pub change: Change,
}

/// What an [`Event`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub enum Change {
    /// A reservation ended; `Confirmed` is a committed deduction.
    Ended(Ended),
    /// An admin set a SKU's total stock.
    StockSet {
        /// The SKU.
        sku: SkuId,
        /// Its new total.
        total: u64,
    },
    /// An admin added to or took from a SKU's stock.
    StockAdjusted {
        /// The SKU.
        sku: SkuId,
        /// Units added (negative: taken).
        delta: i64,
    },
    // Added with carts and returns, last so that the earlier variants keep their archived
    // tags.
    /// One line of a cart ended with its cart (`reservation` is the cart's id); a confirmed
    /// line is a committed deduction, stored under the cart's id and the line's index.
    CartLineEnded {
        /// The line's index in the cart.
        line: u8,
        /// What the line held, and how the cart ended.
        ended: Ended,
    },
    /// Units of a sale came back: a refund or a payment reversal after the confirm.
    Returned(SaleReturned),
}

/// The kinds of events, for filtering a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub enum EventKind {
    /// A reservation was confirmed: a committed deduction.
    Confirmed,
    /// A reservation was cancelled.
    Cancelled,
    /// A reservation expired.
    Expired,
    /// A SKU's stock was set or adjusted.
    Stock,
    /// Units of a sale came back.
    Returned,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 5] = [
        EventKind::Confirmed,
        EventKind::Cancelled,
        EventKind::Expired,
        EventKind::Stock,
        EventKind::Returned,
    ];

    /// The kind's bit in a filter mask.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl Change {
    /// Which kind of event this is.
    pub fn kind(&self) -> EventKind {
        match self {
            Change::Ended(ended) | Change::CartLineEnded { ended, .. } => match ended.state {
                ReservationState::Confirmed => EventKind::Confirmed,
                ReservationState::Cancelled => EventKind::Cancelled,
                // `Held` never ends a reservation; decoding refuses it.
                ReservationState::Expired | ReservationState::Held => EventKind::Expired,
            },
            Change::StockSet { .. } | Change::StockAdjusted { .. } => EventKind::Stock,
            Change::Returned(_) => EventKind::Returned,
        }
    }
}

impl Record {
    /// The events this record reports: none, one, or one per line of a cart's group that
    /// ended (all with the record's time).
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        let at_ms = self.at_ms();
        let change = match *self {
            Record::Ended { ended, .. } | Record::Expired { ended, .. } => {
                Some(Change::Ended(ended))
            }
            Record::Apply { command: Command::SetStock { sku, total, .. }, .. } => {
                Some(Change::StockSet { sku, total })
            }
            Record::Apply { command: Command::AdjustStock { sku, delta, .. }, .. } => {
                Some(Change::StockAdjusted { sku, delta })
            }
            Record::Returned { returned, .. } => Some(Change::Returned(returned)),
            _ => None,
        };
        let lines = match self {
            Record::LinesEnded { end, .. } => end.lines.as_slice(),
            _ => &[],
        };
        let line_events = lines.iter().map(move |line| {
            let LinesEnd { end, buyer, .. } = match self {
                Record::LinesEnded { end, .. } => **end,
                _ => unreachable!("lines come from a LinesEnded record"),
            };
            let ended = Ended {
                reservation: end.cart,
                state: end.state,
                buyer,
                sku: line.sku,
                qty: line.qty,
                order_ref: end.order_ref,
            };
            Change::CartLineEnded { line: line.index, ended }
        });
        let events = change.into_iter().chain(line_events);
        events.map(move |change| Event { at_ms, change: change.of_named_sku() })
    }
}

impl Change {
    /// The change as of the SKU its callers name: a bucket's sale is a sale of its SKU
    /// (docs/hot-skus.md), and the stream never shows a bucket's id.
    fn of_named_sku(self) -> Change {
        match self {
            Change::Ended(ended) => Change::Ended(Ended { sku: ended.sku.base(), ..ended }),
            Change::CartLineEnded { line, ended } => {
                Change::CartLineEnded { line, ended: Ended { sku: ended.sku.base(), ..ended } }
            }
            Change::Returned(returned) => {
                Change::Returned(SaleReturned { sku: returned.sku.base(), ..returned })
            }
            stock @ (Change::StockSet { .. } | Change::StockAdjusted { .. }) => stock,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Reserve;
    use crate::ids::{BuyerId, OrderRef, RequestId, ReservationId, ShardId};
    use crate::limits::ShardConfig;
    use crate::shard::Shard;

    #[test]
    fn a_sale_reads_back_as_its_events() {
        let mut shard = Shard::new(ShardId(0), ShardConfig::default());
        let mut log = Vec::new();
        let sku = SkuId(5);
        let request = |n: u128| RequestId(n);
        shard.apply(&Command::SetStock { request: request(1), sku, total: 10 }, 0, &mut log);
        let reserve = |n: u128, buyer: u64, order_ref| {
            Command::Reserve(Reserve {
                request: request(n),
                buyer: BuyerId(buyer),
                sku,
                qty: 2,
                ttl_ms: 100,
                order_ref,
            })
        };
        shard.apply(&reserve(2, 7, Some(OrderRef(700))), 10, &mut log);
        shard.apply(&reserve(3, 8, None), 10, &mut log);
        shard.apply(&reserve(4, 9, Some(OrderRef(900))), 10, &mut log);
        let first = ReservationId::new(crate::ids::slot_of(sku), ShardId(0), 1);
        let second = ReservationId::new(crate::ids::slot_of(sku), ShardId(0), 2);
        let third = ReservationId::new(crate::ids::slot_of(sku), ShardId(0), 3);
        // The order reference given at reserve reaches the event; one given at confirm wins.
        let confirm = |n, reservation, order_ref| Command::Confirm {
            request: request(n),
            reservation,
            order_ref,
        };
        shard.apply(&confirm(5, first, None), 20, &mut log);
        shard.apply(&confirm(6, second, Some(OrderRef(800))), 20, &mut log);
        shard.tick(200, &mut log);

        let events: Vec<Event> = log.iter().flat_map(Record::events).collect();
        let ended = |reservation, state, buyer, order_ref| {
            Change::Ended(Ended {
                reservation,
                state,
                buyer: BuyerId(buyer),
                sku,
                qty: 2,
                order_ref,
            })
        };
        assert_eq!(
            events,
            vec![
                Event { at_ms: 0, change: Change::StockSet { sku, total: 10 } },
                Event {
                    at_ms: 20,
                    change: ended(first, ReservationState::Confirmed, 7, Some(OrderRef(700)))
                },
                Event {
                    at_ms: 20,
                    change: ended(second, ReservationState::Confirmed, 8, Some(OrderRef(800)))
                },
                Event {
                    at_ms: 200,
                    change: ended(third, ReservationState::Expired, 9, Some(OrderRef(900)))
                },
            ]
        );
        let kinds: Vec<EventKind> = events.iter().map(|e| e.change.kind()).collect();
        use EventKind::*;
        assert_eq!(kinds, [Stock, Confirmed, Confirmed, Expired]);
        assert_eq!(shard.order_refs.len(), 0, "ended reservations drop their reference");
    }
}
