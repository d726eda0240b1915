//! Outcomes: what applying a command did. Business results such as "sold out" are values
//! here, not errors; errors are for broken input bytes and broken invariants.

use crate::ids::{BuyerId, ReservationId, SkuId};

/// The answer to one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub enum Outcome {
    /// The units are held until `expires_at_ms` unless confirmed or cancelled first.
    Reserved {
        /// The new reservation; confirm and cancel name it.
        reservation: ReservationId,
        /// When the hold lapses on its own.
        expires_at_ms: u64,
    },
    /// Fewer than the requested units are available.
    SoldOut {
        /// Units available when the request was decided.
        available: u64,
    },
    /// The buyer would hold plus have bought more than the SKU's per-buyer limit.
    LimitExceeded {
        /// Units the buyer holds plus has bought already.
        taken: u64,
        /// The SKU's per-buyer limit.
        limit: u32,
    },
    /// The SKU's sale window has not opened yet.
    SaleNotOpen {
        /// When it opens.
        opens_at_ms: u64,
    },
    /// The SKU's sale window has closed.
    SaleClosed {
        /// When it closed.
        closed_at_ms: u64,
    },
    /// No stock was ever set for this SKU.
    UnknownSku,
    /// The quantity is 0 or above the maximum.
    InvalidQuantity {
        /// The largest quantity one reservation may hold.
        qty_max: u32,
    },
    /// The time-to-live is 0 or above the maximum.
    InvalidTtl {
        /// The longest time-to-live accepted.
        ttl_ms_max: u64,
    },
    /// The shard already holds as many live reservations as it may.
    TooManyReservations {
        /// The shard's bound on live reservations.
        live_max: u64,
    },
    /// The reservation is confirmed: its units are sold.
    Confirmed,
    /// The reservation is cancelled: its units are available again.
    Cancelled,
    /// The reservation was already confirmed (by an earlier request).
    AlreadyConfirmed,
    /// The reservation was already cancelled (by an earlier request).
    AlreadyCancelled,
    /// The reservation's time-to-live passed before it was confirmed or cancelled; its units
    /// went back to available and are never resurrected.
    Expired,
    /// No such reservation: never made, made by another shard, or ended long enough ago to be
    /// forgotten (see `ShardConfig::ended_retention_ms`).
    UnknownReservation,
    /// The SKU's stock now stands at these figures.
    StockChanged {
        /// Total units.
        total: u64,
        /// Units available to reserve.
        available: u64,
    },
    /// `set_stock` would put the total below what is already reserved plus sold.
    StockBelowCommitted {
        /// Units reserved plus sold.
        committed: u64,
    },
    /// `adjust_stock` would drive available below zero.
    InsufficientAvailable {
        /// Units available now.
        available: u64,
    },
    /// The resulting total would exceed the per-SKU maximum.
    StockOutOfRange {
        /// The largest total a SKU may have.
        total_max: u64,
    },
    /// The shard already holds as many SKUs as it may.
    TooManySkus {
        /// The shard's bound on SKUs.
        skus_max: u64,
    },
    /// The per-buyer limit is set (or cleared).
    LimitSet,
    /// The new limit is below what some buyer already holds plus has bought.
    LimitBelowHoldings {
        /// The most any buyer holds plus has bought.
        taken_max: u64,
    },
    /// The sale window is set.
    WindowSet,
    /// The window opens at or after it closes.
    InvalidWindow,
    /// A line of a cart was refused, so no line of it is held.
    CartRefused {
        /// The failed line's index in the cart (the first failed one, when several did).
        line: u8,
        /// Why it failed.
        refusal: LineRefusal,
        /// The figure the refusal names (see [`LineRefusal`]).
        value: u64,
    },
    /// The cart's lines were not all prepared in time (a driver stopped, or the server
    /// restarted while it was in doubt): no line is held. A new request id may try again.
    CartTimedOut,
    /// The cart has no lines, more than `CART_LINES_MAX`, or names a SKU twice.
    InvalidCart {
        /// The most lines a cart may have.
        lines_max: u32,
    },
    /// The units went back to available.
    Returned {
        /// Units of the sale returned so far, this return included.
        returned_total: u32,
    },
    /// No returnable sale of that reservation, line and SKU here: never confirmed, or sold
    /// longer ago than the return window (an operator adjusts the stock instead).
    NotReturnable,
    /// More units than the sale has left to return.
    ReturnExceedsSold {
        /// Units of the sale not returned yet.
        returnable: u32,
    },
    // Added with hot-SKU buckets (protocol 7).
    /// The SKU is spread over this many buckets now.
    BucketsSet {
        /// The bucket count.
        buckets: u32,
    },
    /// The bucket count is below 2 or above the maximum, or the SKU's id is too large to
    /// be spread.
    InvalidBuckets {
        /// The most buckets a SKU may have here (the server's shard count, or less).
        buckets_max: u32,
    },
    /// The SKU is spread over buckets: it cannot be spread again, and its total, limit and
    /// window are fixed (stock is added with `adjust_stock`).
    Bucketed {
        /// Its bucket count.
        buckets: u32,
    },
    /// Buyers already hold or bought the SKU, so it cannot be spread: their counts would
    /// stay in one bucket while their reserves went to another.
    BuyersCounted {
        /// How many buyers.
        buyers: u64,
    },
}

/// Why one line of a cart was refused. The value beside it in [`Outcome::CartRefused`] is
/// the figure the single-line outcome of the same name carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub enum LineRefusal {
    /// Fewer units available than the line asks (value: units available).
    SoldOut,
    /// The buyer's limit would be passed (value: units the buyer holds plus bought).
    LimitExceeded,
    /// The SKU's sale window has not opened (value: when it opens).
    SaleNotOpen,
    /// The SKU's sale window has closed (value: when it closed).
    SaleClosed,
    /// No stock was ever set for the SKU (value: 0).
    UnknownSku,
    /// The quantity is 0 or above the maximum (value: the maximum).
    InvalidQuantity,
    /// The shard holds as many reservations as it may (value: its bound).
    TooManyReservations,
    /// The cart's request id was used before for other lines (value: 0).
    RequestReused,
    /// The line's SKU is in a slot range moving to another server (docs/cluster.md): retry
    /// the cart with a new request id shortly (value: the slot).
    SlotMoving,
}

impl LineRefusal {
    /// The refusal's name: the single-line outcome's name where there is one.
    pub fn name(self) -> &'static str {
        match self {
            LineRefusal::SoldOut => "sold_out",
            LineRefusal::LimitExceeded => "limit_exceeded",
            LineRefusal::SaleNotOpen => "sale_not_open",
            LineRefusal::SaleClosed => "sale_closed",
            LineRefusal::UnknownSku => "unknown_sku",
            LineRefusal::InvalidQuantity => "invalid_quantity",
            LineRefusal::TooManyReservations => "too_many_reservations",
            LineRefusal::RequestReused => "request_reused",
            LineRefusal::SlotMoving => "slot_moving",
        }
    }

    /// The refusal's byte in log records and snapshots.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The refusal a byte of [`LineRefusal::code`] names.
    pub fn from_code(code: u8) -> Option<LineRefusal> {
        const ALL: [LineRefusal; 9] = [
            LineRefusal::SoldOut,
            LineRefusal::LimitExceeded,
            LineRefusal::SaleNotOpen,
            LineRefusal::SaleClosed,
            LineRefusal::UnknownSku,
            LineRefusal::InvalidQuantity,
            LineRefusal::TooManyReservations,
            LineRefusal::RequestReused,
            LineRefusal::SlotMoving,
        ];
        ALL.get(usize::from(code)).copied()
    }

    /// A one-line refusal as a cart line's: `None` for an outcome that is not a refusal of
    /// a line.
    pub fn of(outcome: Outcome) -> Option<(LineRefusal, u64)> {
        Some(match outcome {
            Outcome::SoldOut { available } => (LineRefusal::SoldOut, available),
            Outcome::LimitExceeded { taken, .. } => (LineRefusal::LimitExceeded, taken),
            Outcome::SaleNotOpen { opens_at_ms } => (LineRefusal::SaleNotOpen, opens_at_ms),
            Outcome::SaleClosed { closed_at_ms } => (LineRefusal::SaleClosed, closed_at_ms),
            Outcome::UnknownSku => (LineRefusal::UnknownSku, 0),
            Outcome::InvalidQuantity { qty_max } => {
                (LineRefusal::InvalidQuantity, u64::from(qty_max))
            }
            Outcome::TooManyReservations { live_max } => {
                (LineRefusal::TooManyReservations, live_max)
            }
            _ => return None,
        })
    }
}

impl Outcome {
    /// The outcome's name, as metrics labels, logs and tools spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Reserved { .. } => "reserved",
            Outcome::SoldOut { .. } => "sold_out",
            Outcome::LimitExceeded { .. } => "limit_exceeded",
            Outcome::SaleNotOpen { .. } => "sale_not_open",
            Outcome::SaleClosed { .. } => "sale_closed",
            Outcome::UnknownSku => "unknown_sku",
            Outcome::InvalidQuantity { .. } => "invalid_quantity",
            Outcome::InvalidTtl { .. } => "invalid_ttl",
            Outcome::TooManyReservations { .. } => "too_many_reservations",
            Outcome::Confirmed => "confirmed",
            Outcome::Cancelled => "cancelled",
            Outcome::AlreadyConfirmed => "already_confirmed",
            Outcome::AlreadyCancelled => "already_cancelled",
            Outcome::Expired => "expired",
            Outcome::UnknownReservation => "unknown_reservation",
            Outcome::StockChanged { .. } => "stock_changed",
            Outcome::StockBelowCommitted { .. } => "stock_below_committed",
            Outcome::InsufficientAvailable { .. } => "insufficient_available",
            Outcome::StockOutOfRange { .. } => "stock_out_of_range",
            Outcome::TooManySkus { .. } => "too_many_skus",
            Outcome::LimitSet => "limit_set",
            Outcome::LimitBelowHoldings { .. } => "limit_below_holdings",
            Outcome::WindowSet => "window_set",
            Outcome::InvalidWindow => "invalid_window",
            Outcome::CartRefused { .. } => "cart_refused",
            Outcome::CartTimedOut => "cart_timed_out",
            Outcome::InvalidCart { .. } => "invalid_cart",
            Outcome::Returned { .. } => "returned",
            Outcome::NotReturnable => "not_returnable",
            Outcome::ReturnExceedsSold { .. } => "return_exceeds_sold",
            Outcome::BucketsSet { .. } => "buckets_set",
            Outcome::InvalidBuckets { .. } => "invalid_buckets",
            Outcome::Bucketed { .. } => "bucketed",
            Outcome::BuyersCounted { .. } => "buyers_counted",
        }
    }
}

/// Where a reservation is in its life. It leaves `Held` exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub enum ReservationState {
    /// Units are held.
    Held,
    /// Units are sold.
    Confirmed,
    /// Units went back to available on request.
    Cancelled,
    /// Units went back to available when the time-to-live passed.
    Expired,
}

impl ReservationState {
    /// The state's name, as tools and logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            ReservationState::Held => "held",
            ReservationState::Confirmed => "confirmed",
            ReservationState::Cancelled => "cancelled",
            ReservationState::Expired => "expired",
        }
    }

    /// The state's byte in log records and snapshots.
    pub fn code(self) -> u8 {
        match self {
            ReservationState::Held => 0,
            ReservationState::Confirmed => 1,
            ReservationState::Cancelled => 2,
            ReservationState::Expired => 3,
        }
    }

    /// The state a byte of [`ReservationState::code`] names.
    pub fn from_code(code: u8) -> Option<ReservationState> {
        Some(match code {
            0 => ReservationState::Held,
            1 => ReservationState::Confirmed,
            2 => ReservationState::Cancelled,
            3 => ReservationState::Expired,
            _ => return None,
        })
    }
}

/// A read of one SKU's stock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct SkuView {
    /// The SKU read.
    pub sku: SkuId,
    /// Total units.
    pub total: u64,
    /// Units that may be reserved.
    pub available: u64,
    /// Units held by live reservations.
    pub reserved: u64,
    /// Units sold.
    pub sold: u64,
    /// The per-buyer limit, if any.
    pub buyer_limit: Option<u32>,
    /// When the SKU may be reserved.
    pub window: crate::command::SaleWindow,
}

/// A read of one reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct ReservationView {
    /// The reservation read.
    pub reservation: ReservationId,
    /// Who it is held for.
    pub buyer: BuyerId,
    /// What it holds.
    pub sku: SkuId,
    /// How many units.
    pub qty: u32,
    /// When it lapses if still held.
    pub expires_at_ms: u64,
    /// Where it is in its life.
    pub state: ReservationState,
}
