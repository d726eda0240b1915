//! [`MapError`]: what is wrong with a stored shard map, or with a change asked of one.

use crate::map::ServerId;

/// A shard map that cannot be used, or a change that cannot be made to it. A server or client
/// that reads such a map from etcd keeps the one it had and says why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    /// The stored bytes are not the map's JSON form.
    #[error("the shard map is not valid JSON of its form: {0}")]
    Malformed(String),
    /// A range names a slot at or past `SLOT_COUNT`, or ends before it starts.
    #[error("slot range {first}..={last} is out of order or past the last slot")]
    BadRange {
        /// Its first slot.
        first: u16,
        /// Its last slot.
        last: u16,
    },
    /// Slots no range gives to any server: the first of them.
    #[error("slot {slot} is owned by no server")]
    Gap {
        /// The first slot left out.
        slot: u16,
    },
    /// Two ranges give the same slot: the first slot given twice.
    #[error("slot {slot} is given to two servers")]
    Overlap {
        /// The first slot given twice.
        slot: u16,
    },
    /// A range names a server with an empty name, or one longer than `SERVER_ID_BYTES_MAX`.
    #[error("server id {0:?} is empty or too long")]
    BadServer(ServerId),
}
