//! The commands a shard applies. Every command here may change state and carries the
//! client's request id; reads go through `Shard::query_*` instead.

use crate::ids::{slot_of, BuyerId, OrderRef, RequestId, ReservationId, SkuId, Slot};

/// Hold `qty` units of `sku` for `buyer` for `ttl_ms`.
///
/// A reservation is one line today. Multi-SKU carts will add lines kept in a side table of
/// the shard, so that the common one-line reservation stays small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct Reserve {
    /// The client's id for this request; retries reuse it.
    pub request: RequestId,
    /// Who the units are held for.
    pub buyer: BuyerId,
    /// What is held.
    pub sku: SkuId,
    /// How many units, 1..=`RESERVE_QTY_MAX`.
    pub qty: u32,
    /// How long the hold lasts without a confirm, 1..=`TTL_MS_MAX`.
    pub ttl_ms: u64,
    /// The caller's order reference, if it has one already; a confirm may give it instead.
    pub order_ref: Option<OrderRef>,
}

/// When a SKU may be reserved: from `opens_at_ms` (inclusive) until `closes_at_ms`
/// (exclusive). `None` leaves that side open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct SaleWindow {
    /// The first millisecond at which reserves are taken.
    pub opens_at_ms: Option<u64>,
    /// The first millisecond at which reserves are refused again.
    pub closes_at_ms: Option<u64>,
}

/// A state-changing request to one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub enum Command {
    /// Hold units for a buyer (see [`Reserve`]).
    Reserve(Reserve),
    /// Payment succeeded: the held units become sold.
    Confirm {
        /// The client's id for this request.
        request: RequestId,
        /// The reservation to confirm.
        reservation: ReservationId,
        /// The caller's order reference; when given it replaces one given at reserve.
        order_ref: Option<OrderRef>,
    },
    /// The buyer or a compensating saga gives the units back.
    Cancel {
        /// The client's id for this request.
        request: RequestId,
        /// The reservation to cancel.
        reservation: ReservationId,
    },
    /// Admin: set a SKU's total stock, creating the SKU if it is new.
    SetStock {
        /// The client's id for this request.
        request: RequestId,
        /// The SKU to set.
        sku: SkuId,
        /// The new total; refused when below what is already reserved plus sold.
        total: u64,
    },
    /// Admin: add to (restock) or take from (correction) a SKU's available stock.
    AdjustStock {
        /// The client's id for this request.
        request: RequestId,
        /// The SKU to adjust.
        sku: SkuId,
        /// Units to add; a negative delta that would drive `available` below zero is refused.
        delta: i64,
    },
    /// Admin: set or clear the most units one buyer may hold plus buy of a SKU.
    SetBuyerLimit {
        /// The client's id for this request.
        request: RequestId,
        /// The SKU to limit.
        sku: SkuId,
        /// The limit; `None` removes it. Refused when a buyer already holds more.
        limit: Option<u32>,
    },
    /// Admin: set when a SKU may be reserved.
    SetSaleWindow {
        /// The client's id for this request.
        request: RequestId,
        /// The SKU whose window is set.
        sku: SkuId,
        /// The window; refused when it opens at or after it closes.
        window: SaleWindow,
    },
    // Added with carts (protocol 6), last so that the earlier variants keep their tags.
    /// A refund or a payment reversal after the sale: `qty` units of a confirmed reservation
    /// (or of one line of a confirmed cart) go back to available, never more than it sold.
    ReturnSold {
        /// The client's id for this request; each return of a sale needs its own.
        request: RequestId,
        /// The reservation, or the cart.
        reservation: ReservationId,
        /// The cart's line (0 for a one-line reservation).
        line: u8,
        /// The line's SKU: the shard that owns it keeps the sale.
        sku: SkuId,
        /// Units returned, 1..=what the sale sold and has not returned yet.
        qty: u32,
    },
    // Added with hot-SKU buckets (protocol 7), last for the same reason.
    /// Admin: spread a SKU's stock over `buckets` buckets on as many shards, so that its
    /// reserves are decided by several threads (docs/hot-skus.md). Set once, after its
    /// stock, limit and window and before any buyer holds it.
    SetBuckets {
        /// The client's id for this request.
        request: RequestId,
        /// The SKU to spread.
        sku: SkuId,
        /// How many buckets, 2..=`BUCKETS_MAX` (and at most the server's shard count).
        buckets: u32,
    },
}

/// What decides the shard that must apply a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKey {
    /// The shard owning this SKU.
    Sku(SkuId),
    /// The shard that made this reservation.
    Reservation(ReservationId),
}

impl RouteKey {
    /// The cluster slot owning what this key names (docs/cluster.md): a SKU's by its hash, a
    /// reservation's by the slot its id carries.
    pub fn slot(self) -> Slot {
        match self {
            RouteKey::Sku(sku) => slot_of(sku),
            RouteKey::Reservation(reservation) => reservation.slot(),
        }
    }
}

impl Command {
    /// The command's name, as metrics labels, logs and tools spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Reserve(_) => "reserve",
            Command::Confirm { .. } => "confirm",
            Command::Cancel { .. } => "cancel",
            Command::SetStock { .. } => "set_stock",
            Command::AdjustStock { .. } => "adjust_stock",
            Command::SetBuyerLimit { .. } => "set_buyer_limit",
            Command::SetSaleWindow { .. } => "set_sale_window",
            Command::ReturnSold { .. } => "return_sold",
            Command::SetBuckets { .. } => "set_buckets",
        }
    }

    /// Whether only an admin may send it: it changes a SKU's stock or its rules.
    pub fn is_admin(&self) -> bool {
        match self {
            Command::SetStock { .. }
            | Command::AdjustStock { .. }
            | Command::SetBuyerLimit { .. }
            | Command::SetSaleWindow { .. }
            | Command::SetBuckets { .. } => true,
            Command::Reserve(_)
            | Command::Confirm { .. }
            | Command::Cancel { .. }
            | Command::ReturnSold { .. } => false,
        }
    }

    /// The client's request id.
    pub fn request(&self) -> RequestId {
        let mut command = *self;
        *command.request_mut()
    }

    /// The client's request id, to set (a keyed client derives it from the caller's key).
    pub fn request_mut(&mut self) -> &mut RequestId {
        match self {
            Command::Reserve(Reserve { request, .. })
            | Command::Confirm { request, .. }
            | Command::Cancel { request, .. }
            | Command::SetStock { request, .. }
            | Command::AdjustStock { request, .. }
            | Command::SetBuyerLimit { request, .. }
            | Command::SetSaleWindow { request, .. }
            | Command::ReturnSold { request, .. }
            | Command::SetBuckets { request, .. } => request,
        }
    }

    /// What routes this command to its shard.
    pub fn route_key(&self) -> RouteKey {
        match *self {
            Command::Reserve(Reserve { sku, .. })
            | Command::SetStock { sku, .. }
            | Command::AdjustStock { sku, .. }
            | Command::SetBuyerLimit { sku, .. }
            | Command::SetSaleWindow { sku, .. }
            | Command::ReturnSold { sku, .. }
            | Command::SetBuckets { sku, .. } => RouteKey::Sku(sku),
            Command::Confirm { reservation, .. } | Command::Cancel { reservation, .. } => {
                RouteKey::Reservation(reservation)
            }
        }
    }
}
