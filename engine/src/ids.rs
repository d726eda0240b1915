//! Identifiers, and the one place that decides which shard owns what.
//!
//! Routing lives here, in the pure crate, so that the runtime, the client library and the
//! tests all agree on it by construction.

use std::fmt;

/// A stock-keeping unit: one product variant whose stock the engine holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct SkuId(pub u64);

impl SkuId {
    /// The top bit marks a hot SKU's bucket (docs/hot-skus.md): ids with it set are the
    /// engine's own, and a client naming one is refused before any shard sees it.
    pub const BUCKET_FLAG: u64 = 1 << 63;
    /// The largest SKU id that may be spread over buckets: a bucket's id keeps the SKU's id
    /// in its low 55 bits, and the bucket's index in the 8 above them.
    pub const BUCKETED_MAX: u64 = (1 << 55) - 1;
    const BUCKET_INDEX_SHIFT: u32 = 55;

    /// Bucket `index` of this SKU: bucket 0 is the SKU itself, so a SKU spread over buckets
    /// keeps its stock, holds and buyer counts where they were. `index` is below 256 and the
    /// SKU at most [`SkuId::BUCKETED_MAX`] (callers check: `BUCKETS_MAX` and `set_buckets`).
    pub fn bucket(self, index: u32) -> SkuId {
        debug_assert!(index < 256 && self.0 <= Self::BUCKETED_MAX, "{self:?} bucket {index}");
        if index == 0 {
            return self;
        }
        SkuId(Self::BUCKET_FLAG | (u64::from(index) << Self::BUCKET_INDEX_SHIFT) | self.0)
    }

    /// Whether this is a bucket other than bucket 0 (an id only the engine makes).
    pub fn is_bucket(self) -> bool {
        self.0 & Self::BUCKET_FLAG != 0
    }

    /// The SKU this bucket belongs to (itself when it is no bucket).
    pub fn base(self) -> SkuId {
        if self.is_bucket() {
            SkuId(self.0 & Self::BUCKETED_MAX)
        } else {
            self
        }
    }

    /// Which bucket of its SKU this is (0 when it is no bucket).
    pub fn bucket_index(self) -> u32 {
        if self.is_bucket() {
            ((self.0 >> Self::BUCKET_INDEX_SHIFT) & 0xff) as u32
        } else {
            0
        }
    }
}

/// The buyer on whose behalf a reservation is made; per-buyer limits count against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct BuyerId(pub u64);

/// A client-chosen id carried by every mutating request. Retrying with the same id is safe:
/// the engine answers with the first outcome and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct RequestId(pub u128);

/// The caller's reference for the order a reservation becomes (a UUID, a snowflake id, a
/// numeric order number), carried through to the committed-deduction stream so the order
/// writer can join the sale to the caller's order. Fixed-size so commands stay `Copy` and log
/// records stay fixed-width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct OrderRef(pub u128);

/// The index of a shard: a single-threaded owner of a subset of SKUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

/// How many slots SKUs hash to (docs/cluster.md). A power of two: a slot is the low bits of
/// the SKU's hash. Servers of a cluster own ranges of slots, so a move moves whole slots.
pub const SLOT_COUNT: u16 = 4_096;

/// One slot, `0..SLOT_COUNT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u16);

/// The slot of `sku`: the low bits of its hash. A server's shard map uses the hash's high
/// bits ([`ShardMap::shard_of_sku`]), so slots and shards spread independently; a hot SKU's
/// buckets hash by the SKU itself, so they share its slot and move with it.
pub fn slot_of(sku: SkuId) -> Slot {
    Slot((mix64(sku.base().0) & u64::from(SLOT_COUNT - 1)) as u16)
}

/// A reservation (or a cart), named by its SKU's slot, the shard that made it and a per-shard
/// sequence number: `[slot 12 bits][shard 8 bits][sequence 44 bits]`.
///
/// The slot lets a cluster's clients route confirm and cancel to the server owning the slot
/// now, after a move, with no lookup; the shard routes inside the server. The sequence never
/// repeats within a shard (2^44 reservations, ~200 days at 1M/s on one shard).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "rkyv", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct ReservationId(pub u64);

impl ReservationId {
    /// Bits of the id that hold the per-shard sequence number.
    pub const SEQ_BITS: u32 = 44;
    /// The largest sequence number a shard may issue.
    pub const SEQ_MAX: u64 = (1 << Self::SEQ_BITS) - 1;
    /// Bits of the id that hold the shard: a server runs at most 2^8 shards.
    pub const SHARD_BITS: u32 = 8;
    const SLOT_SHIFT: u32 = Self::SEQ_BITS + Self::SHARD_BITS;

    /// Builds the id of reservation `seq` of a SKU in `slot`, made by `shard`.
    pub fn new(slot: Slot, shard: ShardId, seq: u64) -> ReservationId {
        assert!(seq <= Self::SEQ_MAX, "reservation sequence {seq} exceeds 44 bits");
        assert!(shard.0 < ShardMap::SHARDS_MAX && slot.0 < SLOT_COUNT, "{slot:?} {shard:?}");
        ReservationId(
            (u64::from(slot.0) << Self::SLOT_SHIFT) | (u64::from(shard.0) << Self::SEQ_BITS) | seq,
        )
    }

    /// The slot of the reservation's SKU (of a cart's first line).
    pub fn slot(self) -> Slot {
        Slot((self.0 >> Self::SLOT_SHIFT) as u16)
    }

    /// The shard that made this reservation (and alone can end it).
    pub fn shard(self) -> ShardId {
        ShardId(((self.0 >> Self::SEQ_BITS) & ((1 << Self::SHARD_BITS) - 1)) as u16)
    }

    /// The per-shard sequence number.
    pub fn seq(self) -> u64 {
        self.0 & Self::SEQ_MAX
    }
}

impl fmt::Debug for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "R{}.{}.{}", self.slot().0, self.shard().0, self.seq())
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Which shard owns a SKU or a reservation, for a fixed number of shards.
///
/// The mapping is part of the durable state: the SKUs a shard's log describes must hash to
/// that shard again after a restart, so the runtime refuses to start with a different count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardMap {
    shard_count: u16,
}

impl ShardMap {
    /// The most shards one process may run: a reservation id has 8 bits for its shard.
    pub const SHARDS_MAX: u16 = 1 << ReservationId::SHARD_BITS;

    /// A map over `shard_count` shards; panics when the count is 0 or above [`Self::SHARDS_MAX`].
    pub fn new(shard_count: u16) -> ShardMap {
        assert!(
            (1..=Self::SHARDS_MAX).contains(&shard_count),
            "shard count {shard_count} outside 1..={}",
            Self::SHARDS_MAX
        );
        ShardMap { shard_count }
    }

    /// How many shards the map spreads over.
    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    /// The shard that owns `sku`.
    pub fn shard_of_sku(&self, sku: SkuId) -> ShardId {
        // SKU ids are often sequential; mix them first so neighbours spread evenly, then map
        // the 64-bit hash onto 0..count with a multiply instead of a division.
        let mixed = mix64(sku.base().0);
        let home = ((u128::from(mixed) * u128::from(self.shard_count)) >> 64) as u32;
        // Bucket i of a SKU sits i shards after its bucket 0: B buckets on B shards.
        let index = (home + sku.bucket_index()) % u32::from(self.shard_count);
        ShardId(index as u16)
    }

    /// The shard that made `reservation`, or `None` for an id no shard of this map could have
    /// issued (a forged or corrupted id).
    pub fn shard_of_reservation(&self, reservation: ReservationId) -> Option<ShardId> {
        let shard = reservation.shard();
        (shard.0 < self.shard_count).then_some(shard)
    }
}

/// The splitmix64 finaliser: a cheap bijective mixer with good avalanche. The one copy of
/// it: the shard map, the table keys and the seeded generators all mix with this.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// splitmix64's step: the golden-ratio increment.
const SPLITMIX_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// A seeded generator (splitmix64): the same seed, the same numbers. For workloads and tests
/// that must replay; not a source of secrets (the engine takes no randomness).
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator replaying from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(SPLITMIX_GAMMA);
        mix64(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_id_round_trips_shard_and_seq() {
        let id = ReservationId::new(Slot(4095), ShardId(255), ReservationId::SEQ_MAX);
        assert_eq!(
            (id.slot(), id.shard(), id.seq()),
            (Slot(4095), ShardId(255), ReservationId::SEQ_MAX)
        );
        assert_eq!(format!("{id}"), format!("R4095.255.{}", ReservationId::SEQ_MAX));
        let id = ReservationId::new(Slot(7), ShardId(0), 1);
        assert_eq!((id.slot(), id.shard(), id.seq()), (Slot(7), ShardId(0), 1));
    }

    #[test]
    fn skus_spread_over_all_shards() {
        let map = ShardMap::new(8);
        let mut counts = [0u32; 8];
        for sku in 0..80_000 {
            counts[usize::from(map.shard_of_sku(SkuId(sku)).0)] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn buckets_of_a_sku_sit_on_consecutive_shards_and_name_their_sku() {
        let map = ShardMap::new(4);
        let sku = SkuId(SkuId::BUCKETED_MAX);
        let home = map.shard_of_sku(sku).0;
        for index in 0..4 {
            let bucket = sku.bucket(index);
            assert_eq!(bucket.is_bucket(), index > 0);
            assert_eq!((bucket.base(), bucket.bucket_index()), (sku, index));
            assert_eq!(map.shard_of_sku(bucket).0, (home + index as u16) % 4);
        }
        assert_eq!(SkuId(7).bucket(0), SkuId(7));
    }

    #[test]
    fn forged_reservation_shard_is_refused() {
        let map = ShardMap::new(2);
        assert_eq!(
            map.shard_of_reservation(ReservationId::new(Slot(0), ShardId(1), 5)),
            Some(ShardId(1))
        );
        assert_eq!(map.shard_of_reservation(ReservationId::new(Slot(0), ShardId(2), 5)), None);
    }
}
