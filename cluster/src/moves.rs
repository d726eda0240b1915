//! [`SlotMove`]: the slot move in progress, as stored under `move` in etcd (docs/cluster.md).
//! At most one at a time per cluster; its presence tells both servers to leave their frozen
//! copies of the range alone, and its removal (by the flip that changes the map, or by an
//! abort) tells each to thaw or release by what the map then says.

use serde::{Deserialize, Serialize};

use crate::error::MapError;
use crate::map::ServerId;
use crate::slots::{Slot, SLOT_COUNT};

/// The longest stored move read, in bytes (two server ids of at most 64 bytes and a few
/// numbers fit in far less).
pub const MOVE_BYTES_MAX: usize = 1_024;

/// A slot range on its way from one server to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotMove {
    /// The range's first slot.
    pub first: u16,
    /// Its last slot (included).
    pub last: u16,
    /// The server that owns it in the map the move started from.
    pub from: ServerId,
    /// The server it goes to.
    pub to: ServerId,
    /// The revision of that map: the flip stores the new map only if it is still current.
    pub map_revision: i64,
}

impl SlotMove {
    /// The stored form (JSON, readable with `etcdctl get`).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a move serialises")
    }

    /// The move stored as `bytes`, if it is one.
    pub fn parse(bytes: &[u8]) -> Result<SlotMove, MapError> {
        if bytes.len() > MOVE_BYTES_MAX {
            let detail = format!("a move of {} bytes (at most {MOVE_BYTES_MAX})", bytes.len());
            return Err(MapError::Malformed(detail));
        }
        let parsed: SlotMove =
            serde_json::from_slice(bytes).map_err(|err| MapError::Malformed(err.to_string()))?;
        if parsed.first > parsed.last || parsed.last >= SLOT_COUNT {
            return Err(MapError::BadRange { first: parsed.first, last: parsed.last });
        }
        Ok(parsed)
    }

    /// Whether `slot` is in the moving range.
    pub fn contains(&self, slot: Slot) -> bool {
        (self.first..=self.last).contains(&slot.0)
    }
}
