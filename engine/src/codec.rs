//! Little-endian byte writing and bounds-checked reading shared by records and snapshots.

use crate::error::EngineError;

/// Appends fixed-width little-endian fields to a buffer.
pub(crate) struct Writer<'a> {
    pub(crate) bytes: &'a mut Vec<u8>,
}

impl Writer<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u128(&mut self, v: u128) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn opt_u64(&mut self, v: Option<u64>) {
        self.u8(u8::from(v.is_some()));
        self.u64(v.unwrap_or(0));
    }
    pub(crate) fn opt_u32(&mut self, v: Option<u32>) {
        self.u8(u8::from(v.is_some()));
        self.u32(v.unwrap_or(0));
    }
    /// LEB128: 7 bits a byte, low first. Ids, counts and times are mostly small or share
    /// their high bits with nothing: a buyer id of 10^6 takes 3 bytes instead of 8.
    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.bytes.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.bytes.push(v as u8);
    }
    /// A flag, then the value only when present: most reservations carry no order reference,
    /// and 16 zero bytes on every log record would cost a third of its size.
    pub(crate) fn opt_u128(&mut self, v: Option<u128>) {
        self.u8(u8::from(v.is_some()));
        if let Some(v) = v {
            self.u128(v);
        }
    }
}

/// Reads fixed-width little-endian fields, failing with `Truncated` instead of panicking.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { bytes, offset: 0, what }
    }

    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], EngineError> {
        let end = self.offset + N;
        let Some(slice) = self.bytes.get(self.offset..end) else {
            return Err(EngineError::Truncated { what: self.what, offset: self.offset });
        };
        self.offset = end;
        Ok(slice.try_into().expect("slice of length N"))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, EngineError> {
        Ok(self.take::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, EngineError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, EngineError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, EngineError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, EngineError> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    pub(crate) fn u128(&mut self) -> Result<u128, EngineError> {
        Ok(u128::from_le_bytes(self.take()?))
    }
    /// A LEB128 integer of at most 10 bytes that fits 64 bits; `field` names it in errors.
    pub(crate) fn varint(&mut self, field: &'static str) -> Result<u64, EngineError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(EngineError::InvalidField { field, value: u64::from(byte) });
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(EngineError::InvalidField { field, value })
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, EngineError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(EngineError::InvalidField { field, value: u64::from(value) }),
        }
    }
    pub(crate) fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, EngineError> {
        let present = self.flag(field)?;
        let value = self.u64()?;
        Ok(present.then_some(value))
    }
    pub(crate) fn opt_u32(&mut self, field: &'static str) -> Result<Option<u32>, EngineError> {
        let present = self.flag(field)?;
        let value = self.u32()?;
        Ok(present.then_some(value))
    }
    pub(crate) fn opt_u128(&mut self, field: &'static str) -> Result<Option<u128>, EngineError> {
        if self.flag(field)? {
            Ok(Some(self.u128()?))
        } else {
            Ok(None)
        }
    }
    /// A count of entries that follow, each at least `entry_bytes_min` long: refused when the
    /// remaining bytes could not hold that many, so a corrupt count never drives a huge
    /// allocation.
    pub(crate) fn count(&mut self, entry_bytes_min: usize) -> Result<usize, EngineError> {
        let count = self.u64()?;
        let fits = (self.remaining() / entry_bytes_min.max(1)) as u64;
        if count > fits {
            return Err(EngineError::InvalidField { field: "entry count", value: count });
        }
        Ok(count as usize)
    }
}
