//! Frames: a fixed header, then an rkyv-archived [`Message`].
//!
//! ```text
//! offset  size  field
//!      0     4  magic "FSTK"
//!      4     1  protocol version
//!      5     1  flags (0)
//!      6     2  reserved (0)
//!      8     4  payload bytes (at most the receiver's limit, 1 MiB by default)
//!     12     8  correlation id: a reply frame carries its request frame's
//! ```
//!
//! The magic and version sit first in every version to come, so any peer can tell an
//! unsupported version apart from garbage and answer it by name.

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use crate::error::FrameError;
use crate::message::{ArchivedMessage, Message};

/// The ALPN protocol id of flashstock over QUIC. A peer offering anything else is refused in
/// the TLS handshake.
pub const ALPN: &[u8] = b"flashstock/1";

/// The protocol version this build speaks. Version 2 added order references to reserve and
/// confirm and the committed-deduction stream's messages; version 3 archives without
/// alignment padding and boxes the query views in replies (a reserve request 112 -> 63 bytes,
/// a reply 96 -> 18); version 4 added the `Admin` messages (consumers listed and removed);
/// version 5 the paged SKU listing and rate limits (`ListSkus`, `SetRateLimit`, `RateLimited`);
/// version 6 carts (`ReserveCart`, `QueryCart`, `Reply::Cart`, the cart outcomes and the
/// `CartLineEnded` event); version 7 hot-SKU buckets (`SetBuckets` and its outcomes); version 8
/// clusters (`Reply::Moved`, `Refusal::SpansServers`, and reservation ids carrying their slot);
/// version 9 slot moves (`Refusal::SlotMoving`, `LineRefusal::SlotMoving`, the `Slots` admin
/// messages). An older peer is answered `UnsupportedVersion` rather than misread.
pub const PROTOCOL_VERSION: u8 = 9;
/// Every protocol version this build speaks.
pub const SUPPORTED_VERSIONS: &[u8] = &[PROTOCOL_VERSION];
/// Bytes of a frame header.
pub const HEADER_BYTES: usize = 20;
/// The default largest payload a receiver accepts: 1 MiB.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 1 << 20;
/// The largest payload of a frame a server reads before the peer has authenticated: a `Hello`
/// with a token and a client name fits in far less.
pub const HELLO_BYTES_MAX: u32 = 4 << 10;

const MAGIC: u32 = u32::from_le_bytes(*b"FSTK");

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Pairs a reply frame with its request frame.
    pub correlation: u64,
    /// What the frame carries.
    pub message: Message,
}

/// What [`FrameDecoder::decode`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid frame.
    Frame(Frame),
    /// The buffered bytes end inside a frame: push at least this many more.
    NeedMore {
        /// Bytes still missing from the frame begun.
        bytes: usize,
    },
}

/// Turns messages into frame bytes, reusing its buffers.
#[derive(Debug)]
pub struct FrameEncoder {
    frame_bytes_max: u32,
    scratch: AlignedVec,
}

impl FrameEncoder {
    /// An encoder that refuses payloads above `frame_bytes_max` (the peer's limit).
    pub fn new(frame_bytes_max: u32) -> FrameEncoder {
        FrameEncoder { frame_bytes_max, scratch: AlignedVec::new() }
    }

    /// Appends the frame of `message` to `out`; refuses, appending nothing, when its payload
    /// exceeds the limit (the caller splits the batch).
    pub fn encode(
        &mut self,
        correlation: u64,
        message: &Message,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        // Serialising owned, in-memory values into a growable buffer cannot fail.
        let payload = rkyv::api::high::to_bytes_in::<_, BoxedError>(message, scratch)
            .expect("serialising a message into memory");
        let payload_bytes = payload.len();
        if payload_bytes > self.frame_bytes_max as usize {
            self.scratch = payload;
            let limit = self.frame_bytes_max;
            return Err(FrameError::FrameTooLarge { bytes: payload_bytes as u64, limit });
        }
        out.reserve(HEADER_BYTES + payload_bytes);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(PROTOCOL_VERSION);
        out.push(0);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(payload_bytes as u32).to_le_bytes());
        out.extend_from_slice(&correlation.to_le_bytes());
        out.extend_from_slice(&payload);
        self.scratch = payload;
        Ok(())
    }
}

/// Turns bytes, pushed in any chunks, into frames. Sans IO: the caller reads the stream.
///
/// Memory is bounded: a header announcing more than the limit is refused before any of its
/// payload is buffered, so the decoder holds at most one partial frame plus the last chunk.
#[derive(Debug)]
pub struct FrameDecoder {
    frame_bytes_max: u32,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already decoded.
    consumed: usize,
    /// Set by a fatal error: the stream is out of step for good.
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder that refuses payloads above `frame_bytes_max`.
    pub fn new(frame_bytes_max: u32) -> FrameDecoder {
        FrameDecoder { frame_bytes_max, buffer: Vec::new(), consumed: 0, failed: None }
    }

    /// Changes the largest payload accepted from the next frame on (a server raises it from
    /// [`HELLO_BYTES_MAX`] once the peer has authenticated).
    pub fn set_frame_bytes_max(&mut self, frame_bytes_max: u32) {
        self.frame_bytes_max = frame_bytes_max;
    }

    /// The largest payload accepted.
    pub fn frame_bytes_max(&self) -> u32 {
        self.frame_bytes_max
    }

    /// Takes bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.consumed > 0 {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes pushed but not yet decoded.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len() - self.consumed
    }

    /// Decodes the next frame, or says how many more bytes it needs. After a fatal error
    /// (see [`FrameError::is_fatal`]) every call returns that error again.
    pub fn decode(&mut self) -> Result<Decoded, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let available = &self.buffer[self.consumed..];
        let Some(header) = available.get(..HEADER_BYTES) else {
            return Ok(Decoded::NeedMore { bytes: HEADER_BYTES - available.len() });
        };
        let (payload_bytes, correlation) = match self.check_header(header) {
            Ok(fields) => fields,
            Err(err) => {
                self.failed = Some(err.clone());
                return Err(err);
            }
        };
        let frame_bytes = HEADER_BYTES + payload_bytes;
        let Some(frame) = available.get(..frame_bytes) else {
            return Ok(Decoded::NeedMore { bytes: frame_bytes - available.len() });
        };
        // Checked in place: archives are unaligned (rkyv's `unaligned` feature), so a payload
        // needs no copy to an aligned buffer wherever it lands in the stream.
        let validated = validate(&frame[HEADER_BYTES..]);
        self.consumed += frame_bytes;
        let message =
            validated.map_err(|reason| FrameError::InvalidPayload { correlation, reason })?;
        Ok(Decoded::Frame(Frame { correlation, message }))
    }

    fn check_header(&self, header: &[u8]) -> Result<(usize, u64), FrameError> {
        let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let version = header[4];
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(FrameError::UnsupportedVersion {
                found: version,
                supported: SUPPORTED_VERSIONS,
            });
        }
        if header[5] != 0 || header[6] != 0 || header[7] != 0 {
            return Err(FrameError::ReservedBitsSet);
        }
        let payload_bytes = u32_at(8);
        if payload_bytes > self.frame_bytes_max {
            let limit = self.frame_bytes_max;
            return Err(FrameError::FrameTooLarge { bytes: u64::from(payload_bytes), limit });
        }
        let correlation = u64::from_le_bytes(header[12..20].try_into().unwrap());
        Ok((payload_bytes as usize, correlation))
    }
}

/// Checks the archive with bytecheck, then deserialises it. `BoxedError` rather than
/// `rancor::Error`: in release builds the latter only says "failed without error information".
fn validate(payload: &[u8]) -> Result<Message, String> {
    let archived =
        rkyv::access::<ArchivedMessage, BoxedError>(payload).map_err(|e| e.to_string())?;
    rkyv::deserialize::<Message, BoxedError>(archived).map_err(|e| e.to_string())
}
