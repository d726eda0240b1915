//! [`ClusterView`]: what a server or a client knows of its cluster at one etcd revision (the
//! slot map and the members' addresses), and [`Member`], a server's entry under `members/`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::MapError;
use crate::map::{ServerId, SlotMap};
use crate::moves::SlotMove;
use crate::slots::{Slot, SLOT_COUNT};

/// The longest member entry read from etcd, in bytes: an address, a TLS name and an HTTP
/// address fit in far less; anything longer is refused rather than parsed.
pub const MEMBER_BYTES_MAX: usize = 1_024;

/// A server's entry under `members/<id>`, written with a lease it keeps alive: where clients
/// reach it. Gone when its lease lapses (the server stopped or lost etcd).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Its QUIC address, as clients dial it.
    pub quic: SocketAddr,
    /// The name its TLS certificate is checked against.
    pub server_name: String,
    /// Its HTTP API address, if it serves one.
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// Its shard count: a reservation id names its shard, so every server of a cluster must
    /// run the same count for reservations to move between them (0: not said).
    #[serde(default)]
    pub shards: u16,
}

impl Member {
    /// The stored form (JSON, readable with `etcdctl get`).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a member serialises")
    }

    /// The entry stored as `bytes`, if it is one.
    pub fn parse(bytes: &[u8]) -> Result<Member, MapError> {
        if bytes.len() > MEMBER_BYTES_MAX {
            let detail =
                format!("a member entry of {} bytes (at most {MEMBER_BYTES_MAX})", bytes.len());
            return Err(MapError::Malformed(detail));
        }
        serde_json::from_slice(bytes).map_err(|err| MapError::Malformed(err.to_string()))
    }
}

/// The cluster as read from etcd: the map (none until an operator stores one) and the live
/// members. Servers answer by it, clients route by it; each keeps the last good one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The shard map, if one is stored.
    pub map: Option<SlotMap>,
    /// The live members, by id.
    pub members: BTreeMap<ServerId, Member>,
    /// The slot move in progress, if any.
    pub moving: Option<SlotMove>,
}

impl ClusterView {
    /// A member other than `server` whose shard count is not `shards`, if any: `server`
    /// must not join a cluster whose reservations it could not name.
    pub fn other_shard_count(&self, server: &ServerId, shards: u16) -> Option<(&ServerId, u16)> {
        self.members
            .iter()
            .find(|(id, member)| *id != server && member.shards != 0 && member.shards != shards)
            .map(|(id, member)| (id, member.shards))
    }

    /// The server owning `slot`, if a map is stored.
    pub fn owner(&self, slot: Slot) -> Option<&ServerId> {
        self.map.as_ref().map(|map| map.owner(slot))
    }

    /// The one server owning every slot of `first..=last`, if one does (and a map is stored).
    pub fn owner_of_range(&self, first: u16, last: u16) -> Option<&ServerId> {
        let owner = self.owner(Slot(first))?;
        let map = self.map.as_ref()?;
        let one = map.ranges().iter().filter(|r| r.first <= last && first <= r.last).count() == 1;
        one.then_some(owner)
    }

    /// The map's revision (0 without a map).
    pub fn map_revision(&self) -> i64 {
        self.map.as_ref().map_or(0, SlotMap::revision)
    }

    /// Which slots `server` owns, as a bit per slot: the check a server makes per request.
    pub fn owned_by(&self, server: &ServerId) -> OwnedSlots {
        let mut owned = OwnedSlots { words: [0; OwnedSlots::WORDS] };
        for range in self.map.iter().flat_map(SlotMap::ranges) {
            if &range.server == server {
                for slot in range.first..=range.last {
                    owned.words[usize::from(slot / 64)] |= 1 << (slot % 64);
                }
            }
        }
        owned
    }
}

/// A set of slots, a bit each (512 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedSlots {
    words: [u64; OwnedSlots::WORDS],
}

impl OwnedSlots {
    const WORDS: usize = SLOT_COUNT as usize / 64;

    /// Whether `slot` is in the set.
    pub fn contains(&self, slot: Slot) -> bool {
        let slot = usize::from(slot.0);
        slot < usize::from(SLOT_COUNT) && self.words[slot / 64] & (1 << (slot % 64)) != 0
    }

    /// How many slots are in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|word| word.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ServerId {
        ServerId(name.to_owned())
    }

    #[test]
    fn an_even_map_gives_each_server_its_share_and_owned_sets_agree_with_owner() {
        let servers = [id("a"), id("b"), id("c")];
        let map = SlotMap::even(&servers).unwrap();
        let view = ClusterView { map: Some(map), ..ClusterView::default() };
        let owned: Vec<OwnedSlots> = servers.iter().map(|s| view.owned_by(s)).collect();
        let sizes: Vec<usize> = owned.iter().map(OwnedSlots::len).collect();
        assert_eq!(sizes, [1365, 1365, 1366]);
        for slot in 0..SLOT_COUNT {
            let owner = view.owner(Slot(slot)).unwrap();
            for (server, set) in servers.iter().zip(&owned) {
                assert_eq!(set.contains(Slot(slot)), server == owner, "slot {slot}");
            }
        }
        assert!(view.owned_by(&id("d")).is_empty());
        assert!(ClusterView::default().owned_by(&id("a")).is_empty(), "no map, no slots");
    }

    #[test]
    fn member_entries_round_trip_and_oversized_or_unknown_ones_are_refused() {
        let member = Member {
            quic: "127.0.0.1:7400".parse().unwrap(),
            server_name: "localhost".into(),
            http: None,
            shards: 2,
        };
        assert_eq!(Member::parse(&member.to_json()).unwrap(), member);
        assert!(Member::parse(br#"{"quic":"127.0.0.1:1","server_name":"x","role":"a"}"#).is_err());
        let long = format!(r#"{{"quic":"127.0.0.1:1","server_name":"{}"}}"#, "x".repeat(2000));
        assert!(
            matches!(Member::parse(long.as_bytes()), Err(MapError::Malformed(m)) if m.contains("2"))
        );
    }
}
