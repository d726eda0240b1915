//! [`SlotMap`]: which server owns which slots, as stored in etcd (docs/cluster.md).
//!
//! The stored form is JSON, `{"ranges": [{"first": 0, "last": 2047, "server": "a"}, ...]}`,
//! readable with `etcdctl get`; its etcd `mod_revision` is the map's revision, and every change
//! is a compare-and-swap on it. Every map this type holds passed [`SlotMap::parse`]'s checks:
//! every slot in exactly one range.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::MapError;
use crate::slots::{Slot, SLOT_COUNT};

/// The longest server id, in bytes (ids are names in etcd keys and in `Moved` answers).
pub const SERVER_ID_BYTES_MAX: usize = 64;

/// A server's name in the cluster (its key under `members/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerId(pub String);

/// Slots `first..=last`, owned by `server`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRange {
    /// The range's first slot.
    pub first: u16,
    /// Its last slot (inclusive).
    pub last: u16,
    /// The server that owns it.
    pub server: ServerId,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    ranges: Vec<SlotRange>,
}

/// The shard map: every slot's owner, and the etcd revision it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotMap {
    /// Sorted, adjacent ranges of different owners merged, covering every slot once.
    ranges: Vec<SlotRange>,
    revision: i64,
}

impl SlotMap {
    /// Every slot on `server`: a new cluster's first map, and a single server's view.
    pub fn single(server: ServerId) -> Result<SlotMap, MapError> {
        let all = SlotRange { first: 0, last: SLOT_COUNT - 1, server };
        SlotMap::checked(vec![all], 0)
    }

    /// The slots split evenly over `servers`, in the order given: a new cluster's map
    /// (`flashstock cluster init`).
    pub fn even(servers: &[ServerId]) -> Result<SlotMap, MapError> {
        let count = servers.len().clamp(1, usize::from(SLOT_COUNT));
        let ranges = servers
            .iter()
            .take(count)
            .enumerate()
            .map(|(index, server)| SlotRange {
                first: (index * usize::from(SLOT_COUNT) / count) as u16,
                last: ((index + 1) * usize::from(SLOT_COUNT) / count - 1) as u16,
                server: server.clone(),
            })
            .collect();
        SlotMap::checked(ranges, 0)
    }

    /// The map stored as `bytes` at etcd revision `revision`, if it passes every check.
    pub fn parse(bytes: &[u8], revision: i64) -> Result<SlotMap, MapError> {
        let stored: Stored =
            serde_json::from_slice(bytes).map_err(|err| MapError::Malformed(err.to_string()))?;
        SlotMap::checked(stored.ranges, revision)
    }

    /// The stored form.
    pub fn to_json(&self) -> Vec<u8> {
        let stored = Stored { ranges: self.ranges.clone() };
        serde_json::to_vec(&stored).expect("a map serialises")
    }

    /// The etcd revision the map was read at (0 for one made here and not stored yet).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The ranges, in slot order.
    pub fn ranges(&self) -> &[SlotRange] {
        &self.ranges
    }

    /// Every server that owns a slot.
    pub fn servers(&self) -> BTreeSet<&ServerId> {
        self.ranges.iter().map(|range| &range.server).collect()
    }

    /// The server that owns `slot`.
    pub fn owner(&self, slot: Slot) -> &ServerId {
        let after = self.ranges.partition_point(|range| range.first <= slot.0);
        &self.ranges[after - 1].server
    }

    /// The map with slots `first..=last` given to `to`: what a slot move's flip stores
    /// (compared against this map's revision). The revision stays this map's until stored.
    pub fn with_range_moved(
        &self,
        first: Slot,
        last: Slot,
        to: ServerId,
    ) -> Result<SlotMap, MapError> {
        if first > last || last.0 >= SLOT_COUNT {
            return Err(MapError::BadRange { first: first.0, last: last.0 });
        }
        let mut ranges = Vec::with_capacity(self.ranges.len() + 2);
        for range in &self.ranges {
            // The parts of each range outside the moved one keep their owner.
            if range.first < first.0 {
                let end = range.last.min(first.0 - 1);
                ranges.push(SlotRange { last: end, ..range.clone() });
            }
            if range.last > last.0 {
                let start = range.first.max(last.0 + 1);
                ranges.push(SlotRange { first: start, ..range.clone() });
            }
        }
        ranges.push(SlotRange { first: first.0, last: last.0, server: to });
        SlotMap::checked(ranges, self.revision)
    }

    /// Sorts, checks and merges `ranges`.
    fn checked(mut ranges: Vec<SlotRange>, revision: i64) -> Result<SlotMap, MapError> {
        ranges.sort_by_key(|range| range.first);
        let mut next = 0u16;
        for range in &ranges {
            let id = &range.server.0;
            if id.is_empty() || id.len() > SERVER_ID_BYTES_MAX {
                return Err(MapError::BadServer(range.server.clone()));
            }
            if range.first > range.last || range.last >= SLOT_COUNT {
                return Err(MapError::BadRange { first: range.first, last: range.last });
            }
            if range.first > next {
                return Err(MapError::Gap { slot: next });
            }
            if range.first < next {
                return Err(MapError::Overlap { slot: range.first });
            }
            next = range.last + 1;
        }
        if next < SLOT_COUNT {
            return Err(MapError::Gap { slot: next });
        }
        let mut merged: Vec<SlotRange> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                Some(last) if last.server == range.server => last.last = range.last,
                _ => merged.push(range),
            }
        }
        Ok(SlotMap { ranges: merged, revision })
    }
}
