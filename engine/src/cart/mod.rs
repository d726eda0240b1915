//! Carts: all-or-nothing reservations of several lines on any shards (docs/carts.md).
//!
//! A cart is decided by one shard, its **coordinator** (the shard of its first line), and its
//! lines are held by **participants** (the shards owning their SKUs; the coordinator may be
//! one). Everything here is pure: the messages between shards are values that the runtime
//! carries, and the order of events is the caller's.
//!
//! - `participant`: a participant's side: prepare a group of lines (moving their units to
//!   `reserved`), then settle it as the coordinator decided (held, released, or ended).
//! - `coordinator`: the coordinator's side: commit or abort a cart, end it (confirm, cancel,
//!   expiry), and answer a participant that asks what became of its group.
//! - `driver`: [`CartDriver`], the sans-IO run of one cart reserve (prepare everywhere, then
//!   ask the coordinator to decide), [`settle_all`], the start-up pass that settles every
//!   group still open after a crash, and [`check_carts`], the cross-shard invariants.
//!
//! The coordinator's records are the commit points: `CartCommitted` (or `CartAborted`) decides
//! a cart, `CartEnded` decides its end. Participants only follow, and every settle they get
//! comes from the coordinator's outbox, never from a driver's own view.

pub(crate) mod codec;
mod coordinator;
mod driver;
mod participant;

pub(crate) use crate::message::ShardMessage;
pub use driver::{check_carts, deliver, settle_all, CartDriver};

use crate::ids::{BuyerId, OrderRef, RequestId, ReservationId, ShardId, SkuId};
use crate::outcome::{LineRefusal, Outcome, ReservationState};

/// The most lines one cart may have.
pub const CART_LINES_MAX: usize = 16;

/// How long a participant holds a prepared group before it asks the coordinator what became
/// of it (a driver normally settles it within milliseconds). A commit that reaches the
/// coordinator after this deadline is refused, so a participant that gave up on it is safe.
pub const CART_PREPARE_TIMEOUT_MS: u64 = 5_000;

/// How long after a cart's expiry a participant whose lines are still held asks the
/// coordinator how the cart ended (the coordinator's own end normally arrives first).
pub const CART_END_GRACE_MS: u64 = 2_000;

/// How long a participant waits for an answer to its question before asking again.
pub const CART_ASK_RETRY_MS: u64 = 1_000;

/// One line of a cart: `qty` units of `sku`, at position `index` of the cart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct CartLine {
    /// The line's position in its cart (0-based): outcomes and events name lines by it.
    pub index: u8,
    /// What is held.
    pub sku: SkuId,
    /// How many units, 1..=`RESERVE_QTY_MAX`.
    pub qty: u32,
}

/// Up to [`CART_LINES_MAX`] lines, inline: commands and records stay `Copy` and allocate
/// nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct Lines {
    len: u8,
    items: [CartLine; CART_LINES_MAX],
}

impl Lines {
    /// Lines numbered in order from `(sku, qty)` pairs; `None` when there are more than
    /// [`CART_LINES_MAX`].
    pub fn numbered(lines: impl IntoIterator<Item = (SkuId, u32)>) -> Option<Lines> {
        let mut out = Lines::default();
        for (index, (sku, qty)) in lines.into_iter().enumerate() {
            if index >= CART_LINES_MAX {
                return None;
            }
            out.push(CartLine { index: index as u8, sku, qty });
        }
        Some(out)
    }

    /// Appends a line; panics past [`CART_LINES_MAX`] (callers check the count first).
    pub fn push(&mut self, line: CartLine) {
        assert!(usize::from(self.len) < CART_LINES_MAX, "a cart holds {CART_LINES_MAX} lines");
        self.items[usize::from(self.len)] = line;
        self.len += 1;
    }

    /// The lines, in order. Lines read off the wire may carry a forged count (an archive's
    /// structure is checked, not its values): never more than the array is read, and
    /// [`Lines::is_well_formed`] tells such lines apart.
    pub fn as_slice(&self) -> &[CartLine] {
        &self.items[..self.len()]
    }

    /// The lines, to change in place (never more than the count says).
    pub fn as_mut_slice(&mut self) -> &mut [CartLine] {
        let len = self.len();
        &mut self.items[..len]
    }

    /// How many lines.
    pub fn len(&self) -> usize {
        usize::from(self.len).min(CART_LINES_MAX)
    }

    /// Whether the count is one this type could have built (at most [`CART_LINES_MAX`]).
    pub fn is_well_formed(&self) -> bool {
        usize::from(self.len) <= CART_LINES_MAX
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The participants' groups of one cart: which shard holds which group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Groups {
    len: u8,
    items: [(ShardId, u64); CART_LINES_MAX],
}

impl Groups {
    /// Appends a group; panics past [`CART_LINES_MAX`] (a cart has at most one per line).
    pub fn push(&mut self, shard: ShardId, group: u64) {
        assert!(usize::from(self.len) < CART_LINES_MAX, "a cart has at most one group a line");
        self.items[usize::from(self.len)] = (shard, group);
        self.len += 1;
    }

    /// The groups, in order.
    pub fn as_slice(&self) -> &[(ShardId, u64)] {
        &self.items[..usize::from(self.len)]
    }

    /// Whether `shard`'s group `group` is one of them.
    pub fn contains(&self, shard: ShardId, group: u64) -> bool {
        self.as_slice().contains(&(shard, group))
    }
}

/// Hold every line of a cart for `buyer` for `ttl_ms`, or none of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct ReserveCart {
    /// The caller's id for this cart reserve; retries reuse it.
    pub request: RequestId,
    /// Who the units are held for; buyer limits count per line.
    pub buyer: BuyerId,
    /// How long the hold lasts without a confirm, 1..=`TTL_MS_MAX`.
    pub ttl_ms: u64,
    /// The caller's order reference, if it has one already; a confirm may give it instead.
    pub order_ref: Option<OrderRef>,
    /// The lines: 1..=[`CART_LINES_MAX`], each SKU at most once.
    pub lines: Lines,
}

/// Participant job: check and hold this shard's lines of a cart, in doubt until settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrepareLines {
    /// The cart's request id: a participant keeps at most one group per cart under it.
    pub cart: RequestId,
    /// The shard that decides the cart.
    pub coordinator: ShardId,
    /// Who the units are held for.
    pub buyer: BuyerId,
    /// When the participant stops waiting and asks the coordinator.
    pub deadline_ms: u64,
    /// This shard's lines of the cart.
    pub lines: Lines,
}

/// A participant's answer to [`PrepareLines`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// Every line passed; they are held as this group, in doubt until settled.
    Group(u64),
    /// A line failed; nothing was held.
    Refused {
        /// The failed line's index in the cart.
        line: u8,
        /// Why.
        refusal: LineRefusal,
        /// The detail the refusal names (see [`LineRefusal`]).
        value: u64,
    },
}

/// Coordinator job: decide a cart, once every participant answered its prepare. One per
/// cart, moved a few times: not worth an allocation to shrink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Decide {
    /// Every line is prepared: hold the cart.
    Commit(CommitCart),
    /// A line was refused: the cart is never held, and the groups prepared are released.
    Abort {
        /// The cart's request id.
        request: RequestId,
        /// What the caller is told.
        outcome: Outcome,
        /// The groups prepared before the refusal was known.
        groups: Groups,
    },
}

/// Everything the coordinator needs to hold a cart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitCart {
    /// The cart's request id: its answer is remembered under it.
    pub request: RequestId,
    /// Who the units are held for.
    pub buyer: BuyerId,
    /// How long the cart is held.
    pub ttl_ms: u64,
    /// The caller's order reference, if given at reserve.
    pub order_ref: Option<OrderRef>,
    /// The participants' prepare deadline: a commit at or after it is refused.
    pub deadline_ms: u64,
    /// Every line of the cart, in order.
    pub lines: Lines,
    /// Each participant's group.
    pub groups: Groups,
}

/// What a participant's group must become, as the coordinator decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The cart is held: the group's units stay reserved by it until it ends.
    Held {
        /// The cart.
        cart: ReservationId,
        /// When the cart lapses if still held.
        expires_at_ms: u64,
    },
    /// The cart ended: confirmed (the group's units are sold), cancelled or expired.
    Ended(CartEnd),
    /// The cart will never hold this group: its units go back.
    Released,
}

/// Participant job: settle a group as the coordinator decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settle {
    /// The cart's request id.
    pub cart: RequestId,
    /// The group (a stale group of the same cart is left alone).
    pub group: u64,
    /// What it becomes.
    pub fate: Fate,
}

/// Coordinator job: a participant asks what became of its group (its deadline passed, or its
/// held cart should have ended by now).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The cart's request id.
    pub cart: RequestId,
    /// The asking participant.
    pub participant: ShardId,
    /// Its group.
    pub group: u64,
    /// The cart, when the group was settled as held.
    pub held_by: Option<ReservationId>,
    /// The group's prepare deadline: a coordinator that has no decision yet presumes abort,
    /// with its clock moved to at least this, so no commit can follow.
    pub deadline_ms: u64,
}

/// How a cart ended, as its coordinator logs it and tells its participants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CartEnd {
    /// The cart.
    pub cart: ReservationId,
    /// `Confirmed`, `Cancelled` or `Expired`.
    pub state: ReservationState,
    /// The order reference in force: the confirm's, or else the reserve's.
    pub order_ref: Option<OrderRef>,
}

/// A participant's group ended with its cart, with what it held: the detail of one
/// committed deduction per line when the cart was confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinesEnd {
    /// The cart's request id.
    pub cart: RequestId,
    /// The group.
    pub group: u64,
    /// How the cart ended.
    pub end: CartEnd,
    /// Who held the lines.
    pub buyer: BuyerId,
    /// The group's lines.
    pub lines: Lines,
}

/// The coordinator's view of a cart, for queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct CartView {
    /// The cart.
    pub cart: ReservationId,
    /// Who it is held for.
    pub buyer: BuyerId,
    /// Its lines.
    pub lines: Lines,
    /// When it lapses if still held.
    pub expires_at_ms: u64,
    /// Where it is in its life.
    pub state: ReservationState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{BuyerId, ShardMap};

    /// Lines come off the wire as an archive: its structure is checked, not that its count
    /// is at most `CART_LINES_MAX`. A forged count must be refused, never read past.
    #[test]
    fn a_forged_line_count_is_refused_not_read_past() {
        let item = CartLine { index: 0, sku: SkuId(1), qty: 1 };
        let forged = Lines { len: 200, items: [item; CART_LINES_MAX] };
        assert!(forged.as_slice().len() <= CART_LINES_MAX);
        assert!(forged.len() <= CART_LINES_MAX);
        let cart = ReserveCart {
            request: RequestId(1),
            buyer: BuyerId(1),
            ttl_ms: 1_000,
            order_ref: None,
            lines: forged,
        };
        let refused = CartDriver::start(cart, &ShardMap::new(2), 0).map(|_| ());
        assert_eq!(refused, Err(Outcome::InvalidCart { lines_max: CART_LINES_MAX as u32 }));
    }
}
