//! Log records: what the write-ahead log stores and what replay feeds back in.
//!
//! A record is a state-changing command with the time it was applied at, or a tick that
//! expired reservations. Replaying the records of a run through `Shard::replay` (the same code
//! path as `apply`) rebuilds the same state, because the engine is deterministic.
//!
//! Encoding: one tag byte, then fixed-width little-endian fields (see `encode`).

use crate::buckets::StockMove;
use crate::cart::codec::{self as cart_codec, GROUPS_BYTES_MAX, LINES_BYTES_MAX};
use crate::cart::{CartEnd, CommitCart, Groups, LinesEnd, PrepareLines};
use crate::codec::{Reader, Writer};
use crate::command::{Command, Reserve, SaleWindow};
use crate::error::EngineError;
use crate::ids::{BuyerId, OrderRef, RequestId, ReservationId, ShardId, SkuId};
use crate::outcome::{Outcome, ReservationState};
use crate::slots::{self, SlotItem, SlotRange, SlotsStep};

/// One entry of a shard's log.
///
/// Records say what happened, not only what was asked: a confirm that ended a reservation is
/// logged with what the reservation held, and every expiry is logged one by one. The
/// committed-deduction stream is then read from the log alone, without replaying it.
///
/// Cart records box their lines: a record is as large as its largest variant, and recovery
/// moves every record it decodes, nearly all of them one-line ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A reserve or admin `command` was applied at `at_ms` and changed state.
    Apply {
        /// The shard's clock when it was applied.
        at_ms: u64,
        /// The command (never a confirm or cancel: those are logged as `Ended`).
        command: Command,
    },
    /// A confirm or cancel ended a reservation: as asked, or as expired when it came after the
    /// reservation's deadline.
    Ended {
        /// The shard's clock when it was applied.
        at_ms: u64,
        /// The request, with a confirm's order reference set to the one that took effect.
        command: Command,
        /// What ended, and how.
        ended: Ended,
    },
    /// A tick expired one reservation.
    Expired {
        /// The shard's clock at the tick.
        at_ms: u64,
        /// What expired (`state` is `Expired`).
        ended: Ended,
    },
    /// A participant held its lines of a cart, in doubt until the coordinator's decision.
    LinesPrepared {
        /// The shard's clock.
        at_ms: u64,
        /// What was prepared (the group's id is the shard's next one, as replay finds it).
        prepare: Box<PrepareLines>,
    },
    /// A participant's group in doubt was settled: held by its cart, or released.
    LinesResolved {
        /// The shard's clock.
        at_ms: u64,
        /// The cart's request id.
        cart: RequestId,
        /// The group.
        group: u64,
        /// The cart holding it and when that lapses; `None` when released.
        held_by: Option<(ReservationId, u64)>,
    },
    /// A participant's group ended with its cart (one event per line).
    LinesEnded {
        /// The shard's clock.
        at_ms: u64,
        /// What ended, and how.
        end: Box<LinesEnd>,
    },
    /// The coordinator held a cart: the commit point of a cart reserve.
    CartCommitted {
        /// The shard's clock.
        at_ms: u64,
        /// The commit (the cart's id is the shard's next reservation id, as replay finds it).
        commit: Box<CommitCart>,
    },
    /// The coordinator decided that a cart is never held.
    CartAborted {
        /// The shard's clock.
        at_ms: u64,
        /// The cart's request id: the outcome is remembered under it.
        request: RequestId,
        /// `CartRefused` or `CartTimedOut`.
        outcome: Outcome,
        /// The groups released by the decision.
        groups: Box<Groups>,
    },
    /// Units of a sale came back (`ReturnSold`).
    Returned {
        /// The shard's clock.
        at_ms: u64,
        /// The return's request id.
        request: RequestId,
        /// What came back.
        returned: SaleReturned,
    },
    /// The coordinator ended a cart: the commit point of its confirm, cancel or expiry.
    CartEnded {
        /// The shard's clock.
        at_ms: u64,
        /// The confirm or cancel that ended it; `None` for an expiry.
        command: Option<Command>,
        /// How it ended.
        end: CartEnd,
    },
    /// Units left one of this shard's buckets for another bucket of the SKU; the move is in
    /// flight until acknowledged (docs/hot-skus.md).
    MovedOut {
        /// The shard's clock.
        at_ms: u64,
        /// The move (its id is the shard's next one, as replay checks).
        stock_move: StockMove,
    },
    /// Units another shard moved out arrived in one of this shard's buckets.
    MovedIn {
        /// The shard's clock.
        at_ms: u64,
        /// The sending shard.
        from: ShardId,
        /// The move.
        stock_move: StockMove,
    },
    /// The receiver has a move this shard sent: it is no longer in flight.
    MoveAcked {
        /// The shard's clock.
        at_ms: u64,
        /// The move's id.
        id: u64,
    },
    /// A step of a slot range's move between servers (docs/cluster.md).
    Slots {
        /// The shard's clock.
        at_ms: u64,
        /// The range.
        range: SlotRange,
        /// Frozen, thawed or released.
        step: SlotsStep,
    },
    /// One item of a slot range imported from the server it moves from.
    SlotImported {
        /// The shard's clock.
        at_ms: u64,
        /// The item (boxed: records are as large as their largest variant).
        item: Box<SlotItem>,
    },
}

/// Units of a sale that came back: the detail of a return, for the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct SaleReturned {
    /// The reservation, or the cart.
    pub reservation: ReservationId,
    /// The cart's line (0 for a one-line reservation).
    pub line: u8,
    /// The SKU.
    pub sku: SkuId,
    /// Who had bought it.
    pub buyer: BuyerId,
    /// Units returned now.
    pub qty: u32,
    /// Units of the sale returned so far, this return included: an order store sets its
    /// returned count to this, so applying one return twice changes nothing.
    pub returned_total: u32,
}

/// A reservation that ended, with what it held: the detail of a committed deduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct Ended {
    /// The reservation.
    pub reservation: ReservationId,
    /// How it ended: `Confirmed` (the units are sold), `Cancelled` or `Expired`.
    pub state: ReservationState,
    /// Who held it.
    pub buyer: BuyerId,
    /// What it held.
    pub sku: SkuId,
    /// How many units.
    pub qty: u32,
    /// The caller's order reference, from the confirm or else from the reserve.
    pub order_ref: Option<OrderRef>,
}

/// The longest encoded record, in bytes: a `CartCommitted` of a full cart with every integer
/// at its widest varint (tag, time, request, buyer, ttl, optional order reference, deadline,
/// lines, groups).
pub const RECORD_BYTES_MAX: usize =
    1 + 10 + 16 + 10 + 10 + 17 + 10 + LINES_BYTES_MAX + GROUPS_BYTES_MAX;

/// The longest single-line record (a compact `Ended`: tag, time, request, reservation's
/// shard and sequence, state, buyer, sku, qty, optional order reference).
const _: () = assert!(1 + 10 + 16 + (3 + 7) + 1 + 10 + 10 + 5 + 17 < RECORD_BYTES_MAX);

const TAG_RESERVE: u8 = 1;
const TAG_SET_STOCK: u8 = 4;
const TAG_ADJUST_STOCK: u8 = 5;
const TAG_SET_BUYER_LIMIT: u8 = 6;
const TAG_SET_SALE_WINDOW: u8 = 7;
// Tags 2, 3 and 8 (confirm, cancel and tick without their detail) belong to the first log
// format; this build does not read it.
// Tags 1 (reserve), 9, 10 and 11 (confirm, cancel, expiry with their detail) write every
// integer at full width; they are still read, so a store written before the compact tags
// recovers. The compact tags below carry the same fields with varint integers: the records
// of a successful reserve and its end shrink from 93 to ~55 bytes, and every byte of log is
// copied ~3.6 times by sled on its way to disk.
const TAG_CONFIRM_ENDED: u8 = 9;
const TAG_CANCEL_ENDED: u8 = 10;
const TAG_EXPIRED: u8 = 11;
const TAG_RESERVE_COMPACT: u8 = 12;
const TAG_CONFIRM_ENDED_COMPACT: u8 = 13;
const TAG_CANCEL_ENDED_COMPACT: u8 = 14;
const TAG_EXPIRED_COMPACT: u8 = 15;
// Carts (docs/carts.md): varint integers, as the compact tags.
pub(crate) const TAG_LINES_PREPARED: u8 = 16;
pub(crate) const TAG_LINES_RESOLVED: u8 = 17;
pub(crate) const TAG_LINES_ENDED: u8 = 18;
pub(crate) const TAG_CART_COMMITTED: u8 = 19;
pub(crate) const TAG_CART_ABORTED: u8 = 20;
pub(crate) const TAG_CART_ENDED: u8 = 21;
const TAG_RETURNED: u8 = 22;
// Hot-SKU buckets (docs/hot-skus.md): moves with varint integers, and the admin command at
// full width as the other admin commands.
const TAG_MOVED_OUT: u8 = 23;
const TAG_MOVED_IN: u8 = 24;
const TAG_MOVE_ACKED: u8 = 25;
const TAG_SET_BUCKETS: u8 = 26;
// Slot moves (docs/cluster.md).
const TAG_SLOTS: u8 = 27;
const TAG_SLOT_IMPORTED: u8 = 28;

/// How a record's integers are written: at full width (the first tags) or as varints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ints {
    Fixed,
    Varint,
}

impl Ints {
    /// How records with `tag` write their integers; `None` for a tag no build has written.
    fn of(tag: u8) -> Option<Ints> {
        match tag {
            TAG_RESERVE_COMPACT
            | TAG_CONFIRM_ENDED_COMPACT
            | TAG_CANCEL_ENDED_COMPACT
            | TAG_EXPIRED_COMPACT
            | TAG_LINES_PREPARED..=TAG_CART_ENDED
            | TAG_RETURNED
            | TAG_MOVED_OUT..=TAG_MOVE_ACKED
            | TAG_SLOTS..=TAG_SLOT_IMPORTED => Some(Ints::Varint),
            TAG_RESERVE | TAG_SET_STOCK | TAG_ADJUST_STOCK | TAG_SET_BUYER_LIMIT
            | TAG_SET_SALE_WINDOW | TAG_CONFIRM_ENDED | TAG_CANCEL_ENDED | TAG_EXPIRED
            | TAG_SET_BUCKETS => Some(Ints::Fixed),
            _ => None,
        }
    }

    pub(crate) fn u64(self, r: &mut Reader<'_>, field: &'static str) -> Result<u64, EngineError> {
        match self {
            Ints::Fixed => r.u64(),
            Ints::Varint => r.varint(field),
        }
    }

    pub(crate) fn u32(self, r: &mut Reader<'_>, field: &'static str) -> Result<u32, EngineError> {
        match self {
            Ints::Fixed => r.u32(),
            Ints::Varint => {
                let value = r.varint(field)?;
                u32::try_from(value).map_err(|_| EngineError::InvalidField { field, value })
            }
        }
    }

    pub(crate) fn reservation(self, r: &mut Reader<'_>) -> Result<ReservationId, EngineError> {
        if self == Ints::Fixed {
            return Ok(ReservationId(r.u64()?));
        }
        let slot_and_shard = r.varint("reservation slot and shard")?;
        let seq = r.varint("reservation sequence")?;
        if slot_and_shard >> (64 - ReservationId::SEQ_BITS) != 0 {
            let value = slot_and_shard;
            return Err(EngineError::InvalidField { field: "reservation slot and shard", value });
        }
        if seq > ReservationId::SEQ_MAX {
            return Err(EngineError::InvalidField { field: "reservation sequence", value: seq });
        }
        Ok(ReservationId((slot_and_shard << ReservationId::SEQ_BITS) | seq))
    }
}

/// Where `apply` and `tick` put the records they emit.
pub trait LogSink {
    /// Takes one record.
    fn push(&mut self, record: &Record);
}

impl LogSink for Vec<Record> {
    fn push(&mut self, record: &Record) {
        Vec::push(self, record.clone());
    }
}

/// A sink that drops records: for reads and for benchmarks of the decision logic alone.
#[derive(Debug, Default)]
pub struct DiscardLog;

impl LogSink for DiscardLog {
    fn push(&mut self, _record: &Record) {}
}

/// A sink that encodes records straight into a byte buffer, counting them, and cuts the
/// buffer into chunks of at most `chunk_bytes_max` bytes at record boundaries (a store may cap
/// the bytes of one batch; one step of a shard may log more than that).
#[derive(Debug)]
pub struct EncodedLog {
    /// The encoded records, back to back.
    pub bytes: Vec<u8>,
    /// How many records `bytes` holds.
    pub record_count: u32,
    chunk_bytes_max: usize,
    /// Where each closed chunk ends in `bytes`, and how many records it holds.
    chunk_ends: Vec<(usize, u32)>,
    open_chunk_start: usize,
    open_chunk_records: u32,
}

impl Default for EncodedLog {
    fn default() -> EncodedLog {
        EncodedLog::with_chunk_bytes_max(usize::MAX)
    }
}

impl EncodedLog {
    /// An empty log whose chunks hold at most `chunk_bytes_max` bytes (at least one record).
    pub fn with_chunk_bytes_max(chunk_bytes_max: usize) -> EncodedLog {
        assert!(chunk_bytes_max >= RECORD_BYTES_MAX, "a chunk must hold any one record");
        EncodedLog {
            bytes: Vec::new(),
            record_count: 0,
            chunk_bytes_max,
            chunk_ends: Vec::new(),
            open_chunk_start: 0,
            open_chunk_records: 0,
        }
    }

    /// Empties the buffer, keeping its allocation.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.record_count = 0;
        self.chunk_ends.clear();
        self.open_chunk_start = 0;
        self.open_chunk_records = 0;
    }

    /// The chunks, in order: their bytes and record counts. Empty when no record was pushed.
    pub fn chunks(&self) -> impl Iterator<Item = (&[u8], u32)> + '_ {
        let open =
            (self.open_chunk_records > 0).then_some((self.bytes.len(), self.open_chunk_records));
        let mut start = 0;
        self.chunk_ends.iter().copied().chain(open).map(move |(end, count)| {
            let chunk = &self.bytes[start..end];
            start = end;
            (chunk, count)
        })
    }
}

impl LogSink for EncodedLog {
    fn push(&mut self, record: &Record) {
        let start = self.bytes.len();
        record.encode(&mut self.bytes);
        if self.bytes.len() - self.open_chunk_start > self.chunk_bytes_max {
            // The record goes into a new chunk (the open one is never empty here: one record
            // alone always fits).
            self.chunk_ends.push((start, self.open_chunk_records));
            self.open_chunk_start = start;
            self.open_chunk_records = 0;
        }
        self.open_chunk_records += 1;
        self.record_count += 1;
    }
}

impl Record {
    /// The shard clock at which the record was made.
    pub fn at_ms(&self) -> u64 {
        match *self {
            Record::Apply { at_ms, .. }
            | Record::Ended { at_ms, .. }
            | Record::Expired { at_ms, .. }
            | Record::LinesPrepared { at_ms, .. }
            | Record::LinesResolved { at_ms, .. }
            | Record::LinesEnded { at_ms, .. }
            | Record::CartCommitted { at_ms, .. }
            | Record::CartAborted { at_ms, .. }
            | Record::CartEnded { at_ms, .. }
            | Record::Returned { at_ms, .. }
            | Record::MovedOut { at_ms, .. }
            | Record::MovedIn { at_ms, .. }
            | Record::MoveAcked { at_ms, .. }
            | Record::Slots { at_ms, .. }
            | Record::SlotImported { at_ms, .. } => at_ms,
        }
    }

    /// Appends the record's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer { bytes: out };
        match *self {
            Record::Apply { at_ms, command } => encode_apply(&mut w, at_ms, &command),
            Record::Ended { at_ms, command, ended } => {
                let tag = match command {
                    Command::Confirm { .. } => TAG_CONFIRM_ENDED_COMPACT,
                    Command::Cancel { .. } => TAG_CANCEL_ENDED_COMPACT,
                    other => unreachable!("only confirm and cancel end reservations: {other:?}"),
                };
                w.u8(tag);
                w.varint(at_ms);
                w.u128(command.request().0);
                encode_ended(&mut w, &ended);
            }
            Record::Expired { at_ms, ended } => {
                w.u8(TAG_EXPIRED_COMPACT);
                w.varint(at_ms);
                encode_ended(&mut w, &ended);
            }
            Record::Returned { at_ms, request, returned: r } => {
                w.u8(TAG_RETURNED);
                w.varint(at_ms);
                w.u128(request.0);
                encode_reservation(&mut w, r.reservation);
                w.u8(r.line);
                w.varint(r.sku.0);
                w.varint(r.buyer.0);
                w.varint(u64::from(r.qty));
                w.varint(u64::from(r.returned_total));
            }
            Record::MovedOut { at_ms, ref stock_move } => {
                w.u8(TAG_MOVED_OUT);
                w.varint(at_ms);
                encode_move(&mut w, stock_move);
            }
            Record::MovedIn { at_ms, from, ref stock_move } => {
                w.u8(TAG_MOVED_IN);
                w.varint(at_ms);
                w.varint(u64::from(from.0));
                encode_move(&mut w, stock_move);
            }
            Record::MoveAcked { at_ms, id } => {
                w.u8(TAG_MOVE_ACKED);
                w.varint(at_ms);
                w.varint(id);
            }
            Record::Slots { at_ms, range, step } => {
                w.u8(TAG_SLOTS);
                w.varint(at_ms);
                slots::encode_step(&mut w, range, step);
            }
            Record::SlotImported { at_ms, ref item } => {
                w.u8(TAG_SLOT_IMPORTED);
                w.varint(at_ms);
                slots::encode_item(&mut w, item);
            }
            _ => cart_codec::encode(&mut w, self),
        }
    }
}

fn encode_move(w: &mut Writer<'_>, m: &StockMove) {
    w.varint(m.id);
    w.varint(m.from_sku.0);
    w.varint(m.to_sku.0);
    w.varint(u64::from(m.to.0));
    w.varint(m.units);
    w.opt_u32(m.buyer_limit);
    w.opt_u64(m.window.opens_at_ms);
    w.opt_u64(m.window.closes_at_ms);
}

fn decode_shard(r: &mut Reader<'_>, field: &'static str) -> Result<ShardId, EngineError> {
    let value = r.varint(field)?;
    u16::try_from(value).map(ShardId).map_err(|_| EngineError::InvalidField { field, value })
}

fn decode_move(r: &mut Reader<'_>) -> Result<StockMove, EngineError> {
    Ok(StockMove {
        id: r.varint("move id")?,
        from_sku: SkuId(r.varint("move's sending SKU")?),
        to_sku: SkuId(r.varint("move's receiving SKU")?),
        to: decode_shard(r, "move's receiving shard")?,
        units: r.varint("move's units")?,
        buyer_limit: r.opt_u32("move's buyer limit flag")?,
        window: SaleWindow {
            opens_at_ms: r.opt_u64("move's window open flag")?,
            closes_at_ms: r.opt_u64("move's window close flag")?,
        },
    })
}

/// Decodes the move records' fields after their tag and time.
fn decode_move_record(r: &mut Reader<'_>, tag: u8, at_ms: u64) -> Result<Record, EngineError> {
    Ok(match tag {
        TAG_MOVED_OUT => Record::MovedOut { at_ms, stock_move: decode_move(r)? },
        TAG_MOVED_IN => {
            let from = decode_shard(r, "move's sending shard")?;
            Record::MovedIn { at_ms, from, stock_move: decode_move(r)? }
        }
        _ => Record::MoveAcked { at_ms, id: r.varint("move id")? },
    })
}

fn encode_apply(w: &mut Writer<'_>, at_ms: u64, command: &Command) {
    if let Command::Reserve(r) = command {
        w.u8(TAG_RESERVE_COMPACT);
        w.varint(at_ms);
        w.u128(r.request.0);
        w.varint(r.buyer.0);
        w.varint(r.sku.0);
        w.varint(u64::from(r.qty));
        w.varint(r.ttl_ms);
        w.opt_u128(r.order_ref.map(|o| o.0));
        return;
    }
    // Admin commands are rare: full width keeps their decoding unchanged.
    let tag = match command {
        Command::Reserve(_) => unreachable!("encoded above"),
        Command::SetStock { .. } => TAG_SET_STOCK,
        Command::AdjustStock { .. } => TAG_ADJUST_STOCK,
        Command::SetBuyerLimit { .. } => TAG_SET_BUYER_LIMIT,
        Command::SetSaleWindow { .. } => TAG_SET_SALE_WINDOW,
        Command::Confirm { .. } | Command::Cancel { .. } => {
            unreachable!("confirm and cancel are logged as Record::Ended")
        }
        Command::ReturnSold { .. } => unreachable!("a return is logged as Record::Returned"),
        Command::SetBuckets { .. } => TAG_SET_BUCKETS,
    };
    w.u8(tag);
    w.u64(at_ms);
    w.u128(command.request().0);
    match *command {
        Command::Reserve(_) => unreachable!("encoded above"),
        Command::SetStock { sku, total, .. } => {
            w.u64(sku.0);
            w.u64(total);
        }
        Command::AdjustStock { sku, delta, .. } => {
            w.u64(sku.0);
            w.i64(delta);
        }
        Command::SetBuyerLimit { sku, limit, .. } => {
            w.u64(sku.0);
            w.opt_u32(limit);
        }
        Command::SetSaleWindow { sku, window, .. } => {
            w.u64(sku.0);
            w.opt_u64(window.opens_at_ms);
            w.opt_u64(window.closes_at_ms);
        }
        Command::SetBuckets { sku, buckets, .. } => {
            w.u64(sku.0);
            w.u32(buckets);
        }
        Command::Confirm { .. } | Command::Cancel { .. } | Command::ReturnSold { .. } => {
            unreachable!("refused above")
        }
    }
}

/// A reservation id as two varints: its slot and shard (the bits above the sequence), and
/// its sequence.
pub(crate) fn encode_reservation(w: &mut Writer<'_>, reservation: ReservationId) {
    w.varint(reservation.0 >> ReservationId::SEQ_BITS);
    w.varint(reservation.seq());
}

fn encode_ended(w: &mut Writer<'_>, ended: &Ended) {
    encode_reservation(w, ended.reservation);
    w.u8(ended.state.code());
    w.varint(ended.buyer.0);
    w.varint(ended.sku.0);
    w.varint(u64::from(ended.qty));
    w.opt_u128(ended.order_ref.map(|o| o.0));
}

fn decode_ended(r: &mut Reader<'_>, ints: Ints) -> Result<Ended, EngineError> {
    let reservation = ints.reservation(r)?;
    let code = r.u8()?;
    let state = match ReservationState::from_code(code) {
        Some(state) if state != ReservationState::Held => state,
        _ => return Err(EngineError::InvalidField { field: "ended state", value: code.into() }),
    };
    Ok(Ended {
        reservation,
        state,
        buyer: BuyerId(ints.u64(r, "buyer")?),
        sku: SkuId(ints.u64(r, "sku")?),
        qty: ints.u32(r, "qty")?,
        order_ref: r.opt_u128("order reference flag")?.map(OrderRef),
    })
}

/// Decodes records encoded back to back, yielding an error (and then nothing) at the first
/// malformed one.
pub fn decode_records(bytes: &[u8]) -> RecordDecoder<'_> {
    RecordDecoder { reader: Reader::new(bytes, "record"), failed: false }
}

/// Iterator returned by [`decode_records`].
pub struct RecordDecoder<'a> {
    reader: Reader<'a>,
    failed: bool,
}

impl std::fmt::Debug for RecordDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordDecoder").field("offset", &self.reader.offset()).finish()
    }
}

impl Iterator for RecordDecoder<'_> {
    type Item = Result<Record, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.reader.remaining() == 0 {
            return None;
        }
        let record = decode_one(&mut self.reader);
        self.failed = record.is_err();
        Some(record)
    }
}

/// Decodes one record at the reader's position (also for snapshots, which keep moves in
/// flight as their records).
pub(crate) fn decode_one(r: &mut Reader<'_>) -> Result<Record, EngineError> {
    let offset = r.offset();
    let tag = r.u8()?;
    // An unknown tag is named as such, not reported as whatever its bytes fail to parse as.
    let Some(ints) = Ints::of(tag) else {
        return Err(EngineError::UnknownRecordTag { tag, offset });
    };
    let at_ms = ints.u64(r, "time")?;
    if (TAG_LINES_PREPARED..=TAG_CART_ENDED).contains(&tag) {
        return cart_codec::decode(r, tag, at_ms);
    }
    if (TAG_MOVED_OUT..=TAG_MOVE_ACKED).contains(&tag) {
        return decode_move_record(r, tag, at_ms);
    }
    if tag == TAG_SLOTS {
        return slots::decode_step(r, at_ms);
    }
    if tag == TAG_SLOT_IMPORTED {
        return Ok(Record::SlotImported { at_ms, item: Box::new(slots::decode_item(r)?) });
    }
    if tag == TAG_RETURNED {
        let request = RequestId(r.u128()?);
        let returned = SaleReturned {
            reservation: ints.reservation(r)?,
            line: r.u8()?,
            sku: SkuId(r.varint("sku")?),
            buyer: BuyerId(r.varint("buyer")?),
            qty: ints.u32(r, "qty")?,
            returned_total: ints.u32(r, "returned total")?,
        };
        return Ok(Record::Returned { at_ms, request, returned });
    }
    if tag == TAG_EXPIRED || tag == TAG_EXPIRED_COMPACT {
        let ended = decode_ended(r, ints)?;
        if ended.state != ReservationState::Expired {
            let value = ended.state.code().into();
            return Err(EngineError::InvalidField { field: "expired state", value });
        }
        return Ok(Record::Expired { at_ms, ended });
    }
    let request = RequestId(r.u128()?);
    let command = match tag {
        TAG_CONFIRM_ENDED
        | TAG_CANCEL_ENDED
        | TAG_CONFIRM_ENDED_COMPACT
        | TAG_CANCEL_ENDED_COMPACT => {
            let ended = decode_ended(r, ints)?;
            let reservation = ended.reservation;
            let command = if tag == TAG_CONFIRM_ENDED || tag == TAG_CONFIRM_ENDED_COMPACT {
                Command::Confirm { request, reservation, order_ref: ended.order_ref }
            } else {
                Command::Cancel { request, reservation }
            };
            return Ok(Record::Ended { at_ms, command, ended });
        }
        TAG_RESERVE | TAG_RESERVE_COMPACT => Command::Reserve(Reserve {
            request,
            buyer: BuyerId(ints.u64(r, "buyer")?),
            sku: SkuId(ints.u64(r, "sku")?),
            qty: ints.u32(r, "qty")?,
            ttl_ms: ints.u64(r, "ttl")?,
            order_ref: r.opt_u128("order reference flag")?.map(OrderRef),
        }),
        TAG_SET_STOCK => Command::SetStock { request, sku: SkuId(r.u64()?), total: r.u64()? },
        TAG_ADJUST_STOCK => Command::AdjustStock { request, sku: SkuId(r.u64()?), delta: r.i64()? },
        TAG_SET_BUYER_LIMIT => Command::SetBuyerLimit {
            request,
            sku: SkuId(r.u64()?),
            limit: r.opt_u32("buyer limit flag")?,
        },
        TAG_SET_SALE_WINDOW => Command::SetSaleWindow {
            request,
            sku: SkuId(r.u64()?),
            window: SaleWindow {
                opens_at_ms: r.opt_u64("window open flag")?,
                closes_at_ms: r.opt_u64("window close flag")?,
            },
        },
        TAG_SET_BUCKETS => Command::SetBuckets { request, sku: SkuId(r.u64()?), buckets: r.u32()? },
        tag => return Err(EngineError::UnknownRecordTag { tag, offset }),
    };
    Ok(Record::Apply { at_ms, command })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;

    fn samples() -> Vec<Record> {
        let request = RequestId(u128::MAX - 7);
        let sku = SkuId(42);
        let order_ref = Some(OrderRef(u128::MAX - 1));
        let commands = [
            Command::Reserve(Reserve {
                request,
                buyer: BuyerId(9),
                sku,
                qty: 3,
                ttl_ms: 500,
                order_ref: None,
            }),
            Command::Reserve(Reserve {
                request,
                buyer: BuyerId(9),
                sku,
                qty: 3,
                ttl_ms: 5,
                order_ref,
            }),
            Command::SetStock { request, sku, total: 1 << 39 },
            Command::AdjustStock { request, sku, delta: -5 },
            Command::SetBuyerLimit { request, sku, limit: Some(2) },
            Command::SetBuyerLimit { request, sku, limit: None },
            Command::SetSaleWindow {
                request,
                sku,
                window: SaleWindow { opens_at_ms: Some(10), closes_at_ms: None },
            },
            Command::SetBuckets { request, sku, buckets: 4 },
        ];
        let mut records: Vec<Record> =
            commands.iter().map(|&command| Record::Apply { at_ms: 123, command }).collect();
        let reservation = ReservationId(77);
        let ended = |state, order_ref| Ended {
            reservation,
            state,
            buyer: BuyerId(9),
            sku,
            qty: 3,
            order_ref,
        };
        records.push(Record::Ended {
            at_ms: 200,
            command: Command::Confirm { request, reservation, order_ref },
            ended: ended(ReservationState::Confirmed, order_ref),
        });
        records.push(Record::Ended {
            at_ms: 201,
            command: Command::Confirm { request, reservation, order_ref: None },
            ended: ended(ReservationState::Expired, None),
        });
        records.push(Record::Ended {
            at_ms: 202,
            command: Command::Cancel { request, reservation },
            ended: ended(ReservationState::Cancelled, order_ref),
        });
        records.push(Record::Expired { at_ms: 456, ended: ended(ReservationState::Expired, None) });
        records.extend(cart_samples(request, order_ref));
        let stock_move = StockMove {
            id: u64::MAX,
            from_sku: SkuId(u64::MAX),
            to_sku: sku.bucket(3),
            to: ShardId(u16::MAX),
            units: u64::MAX,
            buyer_limit: Some(u32::MAX),
            window: SaleWindow { opens_at_ms: Some(u64::MAX), closes_at_ms: Some(1) },
        };
        records.push(Record::MovedOut { at_ms: 7, stock_move });
        let stock_move =
            StockMove { buyer_limit: None, window: SaleWindow::default(), ..stock_move };
        records.push(Record::MovedIn { at_ms: u64::MAX, from: ShardId(3), stock_move });
        records.push(Record::MoveAcked { at_ms: 8, id: u64::MAX });
        // Every integer at its widest varint: the longest single-line record.
        let reservation =
            ReservationId::new(crate::ids::Slot(4095), ShardId(255), ReservationId::SEQ_MAX);
        records.push(Record::Ended {
            at_ms: u64::MAX,
            command: Command::Confirm { request, reservation, order_ref },
            ended: Ended {
                reservation,
                state: ReservationState::Confirmed,
                buyer: BuyerId(u64::MAX),
                sku: SkuId(u64::MAX),
                qty: u32::MAX,
                order_ref,
            },
        });
        records
    }

    /// One of each cart record; the last, a full cart with every integer at its widest
    /// varint, is the longest record there is.
    fn cart_samples(request: RequestId, order_ref: Option<OrderRef>) -> Vec<Record> {
        use crate::cart::{CartLine, Lines, CART_LINES_MAX};
        let lines = Lines::numbered([(SkuId(7), 2), (SkuId(1 << 40), 1)]).unwrap();
        let cart = ReservationId::new(crate::ids::Slot(0), ShardId(2), 99);
        let mut groups = Groups::default();
        groups.push(ShardId(0), 5);
        groups.push(ShardId(1), 6);
        let prepare = PrepareLines {
            cart: request,
            coordinator: ShardId(1),
            buyer: BuyerId(4),
            deadline_ms: 9,
            lines,
        };
        let end = CartEnd { cart, state: ReservationState::Confirmed, order_ref };
        let commit = CommitCart {
            request,
            buyer: BuyerId(4),
            ttl_ms: 60_000,
            order_ref: None,
            deadline_ms: 5_000,
            lines,
            groups,
        };
        let refused = Outcome::CartRefused {
            line: 1,
            refusal: crate::outcome::LineRefusal::LimitExceeded,
            value: 3,
        };
        let mut widest_lines = Lines::default();
        let mut widest_groups = Groups::default();
        for index in 0..CART_LINES_MAX {
            widest_lines.push(CartLine { index: index as u8, sku: SkuId(u64::MAX), qty: u32::MAX });
            widest_groups.push(ShardId(u16::MAX), u64::MAX);
        }
        let widest = CommitCart {
            request,
            buyer: BuyerId(u64::MAX),
            ttl_ms: u64::MAX,
            order_ref,
            deadline_ms: u64::MAX,
            lines: widest_lines,
            groups: widest_groups,
        };
        vec![
            Record::LinesPrepared { at_ms: 1, prepare: Box::new(prepare) },
            Record::LinesResolved { at_ms: 2, cart: request, group: 5, held_by: Some((cart, 77)) },
            Record::LinesResolved { at_ms: 2, cart: request, group: 5, held_by: None },
            Record::LinesEnded {
                at_ms: 3,
                end: Box::new(LinesEnd { cart: request, group: 5, end, buyer: BuyerId(4), lines }),
            },
            Record::CartCommitted { at_ms: 4, commit: Box::new(commit) },
            Record::CartAborted { at_ms: 5, request, outcome: refused, groups: Box::new(groups) },
            Record::CartAborted {
                at_ms: 5,
                request,
                outcome: Outcome::CartTimedOut,
                groups: Box::new(groups),
            },
            Record::CartEnded {
                at_ms: 6,
                command: Some(Command::Confirm { request, reservation: cart, order_ref }),
                end,
            },
            Record::CartEnded {
                at_ms: 6,
                command: Some(Command::Cancel { request, reservation: cart }),
                end: CartEnd { cart, state: ReservationState::Cancelled, order_ref: None },
            },
            Record::CartEnded {
                at_ms: 6,
                command: None,
                end: CartEnd { cart, state: ReservationState::Expired, order_ref: None },
            },
            Record::CartCommitted { at_ms: u64::MAX, commit: Box::new(widest) },
        ]
    }

    /// Records as the first log format wrote them (every integer at full width) still decode,
    /// so a store written before the compact tags recovers.
    #[test]
    fn full_width_records_of_older_stores_decode() {
        let (request, buyer, sku) = (u128::MAX - 7, 9u64, 42u64);
        let mut bytes = vec![TAG_RESERVE];
        bytes.extend_from_slice(&123u64.to_le_bytes());
        bytes.extend_from_slice(&request.to_le_bytes());
        bytes.extend_from_slice(&buyer.to_le_bytes());
        bytes.extend_from_slice(&sku.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&500u64.to_le_bytes());
        bytes.push(0);
        let reservation = ReservationId::new(crate::ids::Slot(0), ShardId(1), 77);
        bytes.push(TAG_EXPIRED);
        bytes.extend_from_slice(&456u64.to_le_bytes());
        bytes.extend_from_slice(&reservation.0.to_le_bytes());
        bytes.push(ReservationState::Expired.code());
        bytes.extend_from_slice(&buyer.to_le_bytes());
        bytes.extend_from_slice(&sku.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.push(0);
        let decoded: Vec<Record> = decode_records(&bytes).map(Result::unwrap).collect();
        let reserve = Reserve {
            request: RequestId(request),
            buyer: BuyerId(buyer),
            sku: SkuId(sku),
            qty: 3,
            ttl_ms: 500,
            order_ref: None,
        };
        let ended = Ended {
            reservation,
            state: ReservationState::Expired,
            buyer: BuyerId(buyer),
            sku: SkuId(sku),
            qty: 3,
            order_ref: None,
        };
        let expected = vec![
            Record::Apply { at_ms: 123, command: Command::Reserve(reserve) },
            Record::Expired { at_ms: 456, ended },
        ];
        assert_eq!(decoded, expected);
        // The compact form of the same records is much shorter.
        let mut compact = Vec::new();
        expected.iter().for_each(|record| record.encode(&mut compact));
        assert!(compact.len() * 3 < bytes.len() * 2, "{} vs {} bytes", compact.len(), bytes.len());
    }

    #[test]
    fn overlong_and_out_of_range_varints_are_typed_errors() {
        // A reserve whose buyer varint never ends, then one whose qty exceeds 32 bits.
        let mut endless = vec![TAG_RESERVE_COMPACT, 1];
        endless.extend_from_slice(&[0; 16]);
        endless.extend_from_slice(&[0xff; 11]);
        let result: Vec<_> = decode_records(&endless).collect();
        assert!(matches!(result[0], Err(EngineError::InvalidField { field: "buyer", .. })));
        let mut wide_qty = vec![TAG_RESERVE_COMPACT, 1];
        wide_qty.extend_from_slice(&[0; 16]);
        wide_qty.extend_from_slice(&[1, 1, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 0]);
        let result: Vec<_> = decode_records(&wide_qty).collect();
        assert!(matches!(result[0], Err(EngineError::InvalidField { field: "qty", .. })));
    }

    #[test]
    fn an_encoded_log_cuts_chunks_at_record_boundaries() {
        let mut log = EncodedLog::with_chunk_bytes_max(RECORD_BYTES_MAX * 2);
        assert_eq!(log.chunks().count(), 0);
        let records: Vec<Record> = samples().into_iter().cycle().take(50).collect();
        for record in &records {
            log.push(record);
        }
        let mut decoded = Vec::new();
        let mut counted = 0;
        for (bytes, count) in log.chunks() {
            assert!(bytes.len() <= RECORD_BYTES_MAX * 2 && count >= 1);
            let chunk: Vec<Record> = decode_records(bytes).map(Result::unwrap).collect();
            assert_eq!(chunk.len(), count as usize);
            decoded.extend(chunk);
            counted += count;
        }
        assert_eq!((decoded, counted), (records, log.record_count));
        log.clear();
        assert_eq!((log.chunks().count(), log.bytes.len()), (0, 0));
    }

    #[test]
    fn every_record_round_trips() {
        let mut bytes = Vec::new();
        let mut longest = 0;
        for record in samples() {
            let start = bytes.len();
            record.encode(&mut bytes);
            longest = longest.max(bytes.len() - start);
        }
        assert_eq!(longest, RECORD_BYTES_MAX);
        let decoded: Vec<Record> = decode_records(&bytes).map(Result::unwrap).collect();
        assert_eq!(decoded, samples());
    }

    #[test]
    fn truncation_unknown_tags_and_bad_states_are_typed_errors() {
        let mut bytes = Vec::new();
        samples()[0].encode(&mut bytes);
        let cut = &bytes[..bytes.len() - 1];
        let result: Vec<_> = decode_records(cut).collect();
        assert!(matches!(result[0], Err(EngineError::Truncated { .. })));

        let mut bad = bytes.clone();
        bad[0] = 99;
        let result: Vec<_> = decode_records(&bad).collect();
        assert_eq!(result.len(), 1, "decoding stops at the first error");
        assert!(matches!(result[0], Err(EngineError::UnknownRecordTag { tag: 99, offset: 0 })));

        // An expiry record whose state byte says "held": after the tag, a 2-byte time and
        // the 1-byte shard and sequence of reservation 77.
        let mut expired = Vec::new();
        let expiry = samples().into_iter().find(|r| matches!(r, Record::Expired { .. }));
        expiry.unwrap().encode(&mut expired);
        expired[1 + 2 + 1 + 1] = ReservationState::Held.code();
        let result: Vec<_> = decode_records(&expired).collect();
        assert!(matches!(result[0], Err(EngineError::InvalidField { field: "ended state", .. })));
    }
}
