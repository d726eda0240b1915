//! The stored form of a batch: a 32-byte header, then the records.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "FSWB"
//!      4     2  format version (1)
//!      6     2  log id
//!      8     8  first record sequence number (also the key, big-endian)
//!     16     4  record count
//!     20     4  record bytes
//!     24     4  zero (reserved)
//!     28     4  CRC-32 of bytes 0..28 and of the records
//! ```

use std::fmt;

use crate::{LogId, ReplaySummary, VisitError, WalError};

const MAGIC: u32 = u32::from_le_bytes(*b"FSWB");
const VERSION: u16 = 1;

/// Bytes of a batch header.
pub const BATCH_HEADER_BYTES: usize = 32;

/// The most record bytes one batch may hold.
///
/// sled 0.34 writes any value larger than a quarter of its segment (128 KiB by default) to a
/// separate blob file that it never fsyncs; batches stay well under that so every byte goes
/// through sled's log, which our sync covers.
pub const BATCH_RECORDS_BYTES_MAX: usize = 64 * 1024 - BATCH_HEADER_BYTES;

/// A validated batch, borrowed from its stored bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRef<'a> {
    /// The first record's sequence number.
    pub first_seq: u64,
    /// How many records the batch holds.
    pub record_count: u32,
    /// The encoded records.
    pub records: &'a [u8],
}

impl BatchRef<'_> {
    /// The sequence number after the batch's last record.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.record_count)
    }
}

/// What makes a stored batch invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchDefect {
    /// Shorter than its header, or than the record bytes its header announces.
    Short,
    /// The magic is wrong.
    Magic,
    /// The version is not one this build reads.
    Version(u16),
    /// The header names another log or another sequence number than its key.
    Misplaced,
    /// The checksum does not match.
    Checksum,
}

impl fmt::Display for BatchDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchDefect::Short => write!(f, "shorter than its header says"),
            BatchDefect::Magic => write!(f, "bad magic"),
            BatchDefect::Version(v) => write!(f, "unknown format version {v}"),
            BatchDefect::Misplaced => write!(f, "header names another log or position"),
            BatchDefect::Checksum => write!(f, "checksum mismatch"),
        }
    }
}

/// Refuses record bytes that one stored batch may not hold.
pub(crate) fn check_size(records: &[u8]) -> Result<(), WalError> {
    if records.len() > BATCH_RECORDS_BYTES_MAX {
        return Err(WalError::BatchTooLarge { bytes: records.len(), max: BATCH_RECORDS_BYTES_MAX });
    }
    Ok(())
}

/// Encodes a batch into `out` (cleared first).
pub fn encode(log: LogId, first_seq: u64, record_count: u32, records: &[u8], out: &mut Vec<u8>) {
    assert!(records.len() <= BATCH_RECORDS_BYTES_MAX, "caller checks the batch size");
    out.clear();
    out.reserve(BATCH_HEADER_BYTES + records.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&log.to_le_bytes());
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(&record_count.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let crc = checksum(&out[..28], records);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(records);
    debug_assert_eq!(out.len(), BATCH_HEADER_BYTES + records.len());
}

/// Validates the stored bytes of the batch keyed `key_seq` in `log`.
pub fn decode(log: LogId, key_seq: u64, bytes: &[u8]) -> Result<BatchRef<'_>, BatchDefect> {
    let header = bytes.get(..BATCH_HEADER_BYTES).ok_or(BatchDefect::Short)?;
    let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
    if u32_at(0) != MAGIC {
        return Err(BatchDefect::Magic);
    }
    if u16_at(4) != VERSION {
        return Err(BatchDefect::Version(u16_at(4)));
    }
    if u16_at(6) != log || u64_at(8) != key_seq {
        return Err(BatchDefect::Misplaced);
    }
    let records = &bytes[BATCH_HEADER_BYTES..];
    if records.len() != u32_at(20) as usize {
        return Err(BatchDefect::Short);
    }
    if u32_at(24) != 0 || checksum(&header[..28], records) != u32_at(28) {
        return Err(BatchDefect::Checksum);
    }
    // A batch whose records would run past the last sequence number cannot have been written.
    if key_seq.checked_add(u64::from(u32_at(16))).is_none() {
        return Err(BatchDefect::Misplaced);
    }
    Ok(BatchRef { first_seq: key_seq, record_count: u32_at(16), records })
}

/// The body of the `wal_batch` fuzz target (and of the test replaying its corpus): arbitrary
/// bytes as a stored batch value, keyed as its own header says, must be refused or decoded,
/// never panic.
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) {
    let log = bytes.get(6..8).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    let key_seq = bytes.get(8..16).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    if let Ok(batch) = decode(log, key_seq, bytes) {
        assert!(batch.end_seq() >= batch.first_seq);
        assert_eq!(record_count_of(bytes), Some(batch.record_count));
    }
}

/// Replays stored batches `(key seq, bytes)` in key order: the one place that decides what a
/// torn tail, mid-log corruption and a gap are, for every `Wal` implementation.
pub(crate) fn replay_stored<B: AsRef<[u8]>>(
    log: LogId,
    from_seq: u64,
    stored: impl Iterator<Item = Result<(u64, B), WalError>>,
    visit: &mut dyn FnMut(BatchRef<'_>) -> Result<(), VisitError>,
) -> Result<ReplaySummary, WalError> {
    let mut summary = ReplaySummary { next_seq: from_seq, ..ReplaySummary::default() };
    let mut stored = stored.peekable();
    while let Some(entry) = stored.next() {
        let (key_seq, bytes) = entry?;
        let batch = match decode(log, key_seq, bytes.as_ref()) {
            Ok(batch) => batch,
            Err(defect) if stored.peek().is_none() => {
                // A damaged last batch was never acknowledged: its sync did not finish.
                tracing::warn!(log, seq = key_seq, %defect, "torn tail batch found");
                summary.torn_tail = Some(key_seq);
                break;
            }
            Err(defect) => return Err(WalError::Corrupt { log, seq: key_seq, defect }),
        };
        if batch.first_seq != summary.next_seq {
            let (expected, found) = (summary.next_seq, batch.first_seq);
            return Err(WalError::Gap { log, expected, found });
        }
        visit(batch).map_err(|source| WalError::Visit { log, seq: batch.first_seq, source })?;
        summary.batches += 1;
        summary.records += u64::from(batch.record_count);
        summary.next_seq = batch.end_seq();
    }
    Ok(summary)
}

/// Where a read from `from_seq` starts: at the last batch keyed at or below `from_seq` when it
/// still holds `from_seq`, else at `from_seq` itself.
pub(crate) fn read_start(from_seq: u64, preceding: Option<(u64, &[u8])>) -> u64 {
    match preceding {
        Some((key_seq, bytes))
            if record_count_of(bytes)
                .is_some_and(|count| key_seq.saturating_add(u64::from(count)) > from_seq) =>
        {
            key_seq
        }
        _ => from_seq,
    }
}

/// Reads stored batches `(key seq, bytes)` in key order for [`crate::Wal::read`]: `stored`
/// starts at the batch containing `from_seq` if there is one.
pub(crate) fn read_stored<B: AsRef<[u8]>>(
    log: LogId,
    from_seq: u64,
    until_seq: u64,
    stored: impl Iterator<Item = Result<(u64, B), WalError>>,
    visit: &mut dyn FnMut(BatchRef<'_>) -> bool,
) -> Result<(), WalError> {
    if from_seq >= until_seq {
        return Ok(());
    }
    let mut expected = None;
    for entry in stored {
        let (key_seq, bytes) = entry?;
        if key_seq >= until_seq {
            break;
        }
        let batch = decode(log, key_seq, bytes.as_ref()).map_err(|defect| WalError::Corrupt {
            log,
            seq: key_seq,
            defect,
        })?;
        match expected {
            None if batch.first_seq > from_seq => {
                let first_available = batch.first_seq;
                return Err(WalError::Truncated { log, requested: from_seq, first_available });
            }
            Some(expected) if batch.first_seq != expected => {
                return Err(WalError::Gap { log, expected, found: batch.first_seq });
            }
            _ => {}
        }
        expected = Some(batch.end_seq());
        if !visit(batch) {
            return Ok(());
        }
    }
    match expected {
        // Nothing at or after `from_seq` below `until_seq`: all of it was truncated.
        None => Err(WalError::Truncated { log, requested: from_seq, first_available: until_seq }),
        Some(_) => Ok(()),
    }
}

/// The record count of a stored batch, read from its header without validating the records
/// (truncation only needs to know where a batch ends).
pub fn record_count_of(bytes: &[u8]) -> Option<u32> {
    bytes.get(16..20).map(|b| u32::from_le_bytes(b.try_into().unwrap()))
}

fn checksum(header: &[u8], records: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(records);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips_and_any_flipped_bit_is_caught() {
        let records: Vec<u8> = (0..200u8).collect();
        let mut bytes = Vec::new();
        encode(3, 77, 4, &records, &mut bytes);
        let batch = decode(3, 77, &bytes).unwrap();
        assert_eq!((batch.first_seq, batch.record_count, batch.records), (77, 4, &records[..]));
        assert_eq!(batch.end_seq(), 81);
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(3, 77, &damaged).is_err(), "bit {bit} flipped unnoticed");
        }
        assert_eq!(decode(3, 77, &bytes[..40]), Err(BatchDefect::Short));
        assert_eq!(decode(4, 77, &bytes), Err(BatchDefect::Misplaced));
    }
}
