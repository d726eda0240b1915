//! Log records: what the write-ahead log stores and what replay feeds back in.
//!
//! A record is a state-changing command with the time it was applied at, or a tick that
//! expired reservations. Replaying the records of a run through `Shard::replay` (the same code
//! path as `apply`) rebuilds the same state, because the engine is deterministic.
//!
//! Encoding: one tag byte, then fixed-width little-endian fields (see `encode`).

use crate::codec::{Reader, Writer};
use crate::command::{Command, Reserve, SaleWindow};
use crate::error::EngineError;
use crate::ids::{BuyerId, RequestId, ReservationId, SkuId};

/// One entry of a shard's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// `command` was applied at `at_ms` and changed state.
    Apply {
        /// The shard's clock when it was applied.
        at_ms: u64,
        /// The command.
        command: Command,
    },
    /// A tick at `at_ms` expired `expired` reservations (at least one).
    Tick {
        /// The shard's clock at the tick.
        at_ms: u64,
        /// How many reservations it expired.
        expired: u32,
    },
}

/// The longest encoded record, in bytes (a reserve: tag, time, request, buyer, sku, qty, ttl).
pub const RECORD_BYTES_MAX: usize = 1 + 8 + 16 + 8 + 8 + 4 + 8;

const TAG_RESERVE: u8 = 1;
const TAG_CONFIRM: u8 = 2;
const TAG_CANCEL: u8 = 3;
const TAG_SET_STOCK: u8 = 4;
const TAG_ADJUST_STOCK: u8 = 5;
const TAG_SET_BUYER_LIMIT: u8 = 6;
const TAG_SET_SALE_WINDOW: u8 = 7;
const TAG_TICK: u8 = 8;

/// Where `apply` and `tick` put the records they emit.
pub trait LogSink {
    /// Takes one record.
    fn push(&mut self, record: &Record);
}

impl LogSink for Vec<Record> {
    fn push(&mut self, record: &Record) {
        Vec::push(self, *record);
    }
}

/// A sink that drops records: for reads and for benchmarks of the decision logic alone.
#[derive(Debug, Default)]
pub struct DiscardLog;

impl LogSink for DiscardLog {
    fn push(&mut self, _record: &Record) {}
}

/// A sink that encodes records straight into a byte buffer, counting them.
#[derive(Debug, Default)]
pub struct EncodedLog {
    /// The encoded records, back to back.
    pub bytes: Vec<u8>,
    /// How many records `bytes` holds.
    pub record_count: u32,
}

impl EncodedLog {
    /// Empties the buffer, keeping its allocation.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.record_count = 0;
    }
}

impl LogSink for EncodedLog {
    fn push(&mut self, record: &Record) {
        record.encode(&mut self.bytes);
        self.record_count += 1;
    }
}

impl Record {
    /// The shard clock at which the record was made.
    pub fn at_ms(&self) -> u64 {
        match *self {
            Record::Apply { at_ms, .. } | Record::Tick { at_ms, .. } => at_ms,
        }
    }

    /// Appends the record's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer { bytes: out };
        let (at_ms, command) = match *self {
            Record::Tick { at_ms, expired } => {
                w.u8(TAG_TICK);
                w.u64(at_ms);
                w.u32(expired);
                return;
            }
            Record::Apply { at_ms, command } => (at_ms, command),
        };
        let tag = match command {
            Command::Reserve(_) => TAG_RESERVE,
            Command::Confirm { .. } => TAG_CONFIRM,
            Command::Cancel { .. } => TAG_CANCEL,
            Command::SetStock { .. } => TAG_SET_STOCK,
            Command::AdjustStock { .. } => TAG_ADJUST_STOCK,
            Command::SetBuyerLimit { .. } => TAG_SET_BUYER_LIMIT,
            Command::SetSaleWindow { .. } => TAG_SET_SALE_WINDOW,
        };
        w.u8(tag);
        w.u64(at_ms);
        w.u128(command.request().0);
        match command {
            Command::Reserve(r) => {
                w.u64(r.buyer.0);
                w.u64(r.sku.0);
                w.u32(r.qty);
                w.u64(r.ttl_ms);
            }
            Command::Confirm { reservation, .. } | Command::Cancel { reservation, .. } => {
                w.u64(reservation.0);
            }
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
        }
    }
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

fn decode_one(r: &mut Reader<'_>) -> Result<Record, EngineError> {
    let offset = r.offset();
    let tag = r.u8()?;
    let at_ms = r.u64()?;
    if tag == TAG_TICK {
        return Ok(Record::Tick { at_ms, expired: r.u32()? });
    }
    let request = RequestId(r.u128()?);
    let command = match tag {
        TAG_RESERVE => Command::Reserve(Reserve {
            request,
            buyer: BuyerId(r.u64()?),
            sku: SkuId(r.u64()?),
            qty: r.u32()?,
            ttl_ms: r.u64()?,
        }),
        TAG_CONFIRM => Command::Confirm { request, reservation: ReservationId(r.u64()?) },
        TAG_CANCEL => Command::Cancel { request, reservation: ReservationId(r.u64()?) },
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
        tag => return Err(EngineError::UnknownRecordTag { tag, offset }),
    };
    Ok(Record::Apply { at_ms, command })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record> {
        let request = RequestId(u128::MAX - 7);
        let sku = SkuId(42);
        let commands = [
            Command::Reserve(Reserve { request, buyer: BuyerId(9), sku, qty: 3, ttl_ms: 500 }),
            Command::Confirm { request, reservation: ReservationId(77) },
            Command::Cancel { request, reservation: ReservationId(78) },
            Command::SetStock { request, sku, total: 1 << 39 },
            Command::AdjustStock { request, sku, delta: -5 },
            Command::SetBuyerLimit { request, sku, limit: Some(2) },
            Command::SetBuyerLimit { request, sku, limit: None },
            Command::SetSaleWindow {
                request,
                sku,
                window: SaleWindow { opens_at_ms: Some(10), closes_at_ms: None },
            },
        ];
        let mut records: Vec<Record> =
            commands.iter().map(|&command| Record::Apply { at_ms: 123, command }).collect();
        records.push(Record::Tick { at_ms: 456, expired: 3 });
        records
    }

    #[test]
    fn every_record_round_trips() {
        let mut bytes = Vec::new();
        for record in samples() {
            let start = bytes.len();
            record.encode(&mut bytes);
            assert!(bytes.len() - start <= RECORD_BYTES_MAX);
        }
        let decoded: Vec<Record> = decode_records(&bytes).map(Result::unwrap).collect();
        assert_eq!(decoded, samples());
    }

    #[test]
    fn truncation_and_unknown_tags_are_typed_errors() {
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
    }
}
