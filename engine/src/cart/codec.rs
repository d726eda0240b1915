//! The encoding of cart records (tags 16-21 of `record`), and of lines and groups, which
//! snapshots share. Integers are varints, as in the compact single-line records.

use crate::cart::CART_LINES_MAX;
use crate::cart::{CartEnd, CartLine, CommitCart, Groups, Lines, LinesEnd, PrepareLines};
use crate::codec::{Reader, Writer};
use crate::command::Command;
use crate::error::EngineError;
use crate::ids::{BuyerId, OrderRef, RequestId, ShardId, SkuId};
use crate::outcome::{LineRefusal, Outcome, ReservationState};
use crate::record::{encode_reservation, Ints, Record};
use crate::record::{
    TAG_CART_ABORTED, TAG_CART_COMMITTED, TAG_CART_ENDED, TAG_LINES_ENDED, TAG_LINES_PREPARED,
    TAG_LINES_RESOLVED,
};

/// The longest encoding of [`Lines`]: a count, then per line its index, SKU and quantity.
pub(crate) const LINES_BYTES_MAX: usize = 1 + CART_LINES_MAX * (1 + 10 + 5);
/// The longest encoding of [`Groups`]: a count, then per group its shard and id.
pub(crate) const GROUPS_BYTES_MAX: usize = 1 + CART_LINES_MAX * (3 + 10);

/// How a cart end's command is written: none (an expiry), a confirm or a cancel.
const ENDED_BY_EXPIRY: u8 = 0;
const ENDED_BY_CONFIRM: u8 = 1;
const ENDED_BY_CANCEL: u8 = 2;

/// Appends a cart record (any other record is a caller's bug).
pub(crate) fn encode(w: &mut Writer<'_>, record: &Record) {
    match *record {
        Record::LinesPrepared { at_ms, prepare: ref p } => {
            head(w, TAG_LINES_PREPARED, at_ms, p.cart);
            w.varint(u64::from(p.coordinator.0));
            w.varint(p.buyer.0);
            w.varint(p.deadline_ms);
            encode_lines(w, &p.lines);
        }
        Record::LinesResolved { at_ms, cart, group, held_by } => {
            head(w, TAG_LINES_RESOLVED, at_ms, cart);
            w.varint(group);
            w.u8(u8::from(held_by.is_some()));
            if let Some((reservation, expires_at_ms)) = held_by {
                encode_reservation(w, reservation);
                w.varint(expires_at_ms);
            }
        }
        Record::LinesEnded { at_ms, ref end } => {
            head(w, TAG_LINES_ENDED, at_ms, end.cart);
            w.varint(end.group);
            encode_end(w, &end.end);
            w.varint(end.buyer.0);
            encode_lines(w, &end.lines);
        }
        Record::CartCommitted { at_ms, commit: ref c } => {
            head(w, TAG_CART_COMMITTED, at_ms, c.request);
            w.varint(c.buyer.0);
            w.varint(c.ttl_ms);
            w.opt_u128(c.order_ref.map(|o| o.0));
            w.varint(c.deadline_ms);
            encode_lines(w, &c.lines);
            encode_groups(w, &c.groups);
        }
        Record::CartAborted { at_ms, request, outcome, ref groups } => {
            head(w, TAG_CART_ABORTED, at_ms, request);
            encode_abort(w, outcome);
            encode_groups(w, groups);
        }
        Record::CartEnded { at_ms, command, end } => {
            let (by, request) = match command {
                None => (ENDED_BY_EXPIRY, RequestId(0)),
                Some(Command::Confirm { request, .. }) => (ENDED_BY_CONFIRM, request),
                Some(Command::Cancel { request, .. }) => (ENDED_BY_CANCEL, request),
                Some(other) => unreachable!("only confirm and cancel end carts: {other:?}"),
            };
            head(w, TAG_CART_ENDED, at_ms, request);
            w.u8(by);
            encode_end(w, &end);
        }
        _ => unreachable!("not a cart record: {record:?}"),
    }
}

/// Decodes the body of a cart record whose tag and time were read.
pub(crate) fn decode(r: &mut Reader<'_>, tag: u8, at_ms: u64) -> Result<Record, EngineError> {
    let request = RequestId(r.u128()?);
    Ok(match tag {
        TAG_LINES_PREPARED => Record::LinesPrepared {
            at_ms,
            prepare: Box::new(PrepareLines {
                cart: request,
                coordinator: shard(r, "coordinator")?,
                buyer: BuyerId(r.varint("buyer")?),
                deadline_ms: r.varint("deadline")?,
                lines: decode_lines(r)?,
            }),
        },
        TAG_LINES_RESOLVED => {
            let group = r.varint("group")?;
            let held_by = match r.u8()? {
                0 => None,
                1 => Some((Ints::Varint.reservation(r)?, r.varint("expiry")?)),
                value => return Err(invalid("held flag", value.into())),
            };
            Record::LinesResolved { at_ms, cart: request, group, held_by }
        }
        TAG_LINES_ENDED => {
            let group = r.varint("group")?;
            let end = decode_end(r)?;
            let buyer = BuyerId(r.varint("buyer")?);
            let lines = decode_lines(r)?;
            let end = Box::new(LinesEnd { cart: request, group, end, buyer, lines });
            Record::LinesEnded { at_ms, end }
        }
        TAG_CART_COMMITTED => Record::CartCommitted {
            at_ms,
            commit: Box::new(CommitCart {
                request,
                buyer: BuyerId(r.varint("buyer")?),
                ttl_ms: r.varint("ttl")?,
                order_ref: r.opt_u128("order reference flag")?.map(OrderRef),
                deadline_ms: r.varint("deadline")?,
                lines: decode_lines(r)?,
                groups: decode_groups(r)?,
            }),
        },
        TAG_CART_ABORTED => {
            let outcome = decode_abort(r)?;
            let groups = Box::new(decode_groups(r)?);
            Record::CartAborted { at_ms, request, outcome, groups }
        }
        TAG_CART_ENDED => decode_cart_ended(r, at_ms, request)?,
        _ => unreachable!("the caller passes cart tags only"),
    })
}

fn decode_cart_ended(
    r: &mut Reader<'_>,
    at_ms: u64,
    request: RequestId,
) -> Result<Record, EngineError> {
    let by = r.u8()?;
    let end = decode_end(r)?;
    let reservation = end.cart;
    let command = match by {
        ENDED_BY_EXPIRY => None,
        ENDED_BY_CONFIRM => {
            Some(Command::Confirm { request, reservation, order_ref: end.order_ref })
        }
        ENDED_BY_CANCEL => Some(Command::Cancel { request, reservation }),
        value => return Err(invalid("cart ended by", value.into())),
    };
    Ok(Record::CartEnded { at_ms, command, end })
}

fn head(w: &mut Writer<'_>, tag: u8, at_ms: u64, request: RequestId) {
    w.u8(tag);
    w.varint(at_ms);
    w.u128(request.0);
}

fn invalid(field: &'static str, value: u64) -> EngineError {
    EngineError::InvalidField { field, value }
}

fn shard(r: &mut Reader<'_>, field: &'static str) -> Result<ShardId, EngineError> {
    let value = r.varint(field)?;
    u16::try_from(value).map(ShardId).map_err(|_| invalid(field, value))
}

pub(crate) fn encode_lines(w: &mut Writer<'_>, lines: &Lines) {
    w.u8(lines.len() as u8);
    for line in lines.as_slice() {
        w.u8(line.index);
        w.varint(line.sku.0);
        w.varint(u64::from(line.qty));
    }
}

pub(crate) fn decode_lines(r: &mut Reader<'_>) -> Result<Lines, EngineError> {
    let count = r.u8()?;
    if usize::from(count) > CART_LINES_MAX {
        return Err(invalid("line count", count.into()));
    }
    let mut lines = Lines::default();
    for _ in 0..count {
        let index = r.u8()?;
        let sku = SkuId(r.varint("line sku")?);
        let qty = Ints::Varint.u32(r, "line qty")?;
        lines.push(CartLine { index, sku, qty });
    }
    Ok(lines)
}

pub(crate) fn encode_groups(w: &mut Writer<'_>, groups: &Groups) {
    let groups = groups.as_slice();
    w.u8(groups.len() as u8);
    for &(shard, group) in groups {
        w.varint(u64::from(shard.0));
        w.varint(group);
    }
}

pub(crate) fn decode_groups(r: &mut Reader<'_>) -> Result<Groups, EngineError> {
    let count = r.u8()?;
    if usize::from(count) > CART_LINES_MAX {
        return Err(invalid("group count", count.into()));
    }
    let mut groups = Groups::default();
    for _ in 0..count {
        groups.push(shard(r, "group shard")?, r.varint("group")?);
    }
    Ok(groups)
}

fn encode_end(w: &mut Writer<'_>, end: &CartEnd) {
    encode_reservation(w, end.cart);
    w.u8(end.state.code());
    w.opt_u128(end.order_ref.map(|o| o.0));
}

fn decode_end(r: &mut Reader<'_>) -> Result<CartEnd, EngineError> {
    let cart = Ints::Varint.reservation(r)?;
    let code = r.u8()?;
    let state = match ReservationState::from_code(code) {
        Some(state) if state != ReservationState::Held => state,
        _ => return Err(invalid("cart end state", code.into())),
    };
    Ok(CartEnd { cart, state, order_ref: r.opt_u128("order reference flag")?.map(OrderRef) })
}

/// An abort's outcome: 0 for timed out, 1 then line, refusal and value for a refused line.
pub(crate) fn encode_abort(w: &mut Writer<'_>, outcome: Outcome) {
    match outcome {
        Outcome::CartTimedOut => w.u8(0),
        Outcome::CartRefused { line, refusal, value } => {
            w.u8(1);
            w.u8(line);
            w.u8(refusal.code());
            w.varint(value);
        }
        other => unreachable!("a cart is aborted as refused or timed out, not {other:?}"),
    }
}

pub(crate) fn decode_abort(r: &mut Reader<'_>) -> Result<Outcome, EngineError> {
    match r.u8()? {
        0 => Ok(Outcome::CartTimedOut),
        1 => {
            let line = r.u8()?;
            let code = r.u8()?;
            let refusal =
                LineRefusal::from_code(code).ok_or_else(|| invalid("line refusal", code.into()))?;
            Ok(Outcome::CartRefused { line, refusal, value: r.varint("refusal value")? })
        }
        value => Err(invalid("abort kind", value.into())),
    }
}
