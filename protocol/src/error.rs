//! The protocol's one error type: what can be wrong with bytes received.

/// Why bytes received are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes do not start with the frame magic: not flashstock, or out of step. Fatal.
    #[error("bad frame magic {found:#010x}")]
    BadMagic {
        /// The four bytes found, little-endian.
        found: u32,
    },
    /// The peer speaks a protocol version this build does not. Fatal; the server answers with
    /// a `ConnectionError` naming the versions it supports.
    #[error("protocol version {found} is not supported (supported: {supported:?})")]
    UnsupportedVersion {
        /// The version the frame carries.
        found: u8,
        /// The versions this build speaks.
        supported: &'static [u8],
    },
    /// Reserved header bits are set. Fatal.
    #[error("reserved header fields are not zero")]
    ReservedBitsSet,
    /// The frame announces more payload than the limit. Fatal: nothing of it is buffered.
    #[error("frame of {bytes} payload bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// The announced payload length.
        bytes: u64,
        /// The limit.
        limit: u32,
    },
    /// The payload is not a valid archived message. The frame itself was well delimited, so
    /// the stream stays in step; the peer may answer this correlation id with an error.
    #[error("frame {correlation}: invalid payload: {reason}")]
    InvalidPayload {
        /// The frame's correlation id.
        correlation: u64,
        /// What the validator said.
        reason: String,
    },
}

impl FrameError {
    /// Whether the stream can no longer be read in step after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::InvalidPayload { .. })
    }
}
