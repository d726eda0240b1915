//! Slots: SKUs hash to a fixed number of slots, and servers own ranges of slots (as Redis
//! Cluster does), so that moving work between servers moves whole slots.

// One definition: the engine names reservations by their slot, so the slot function is
// the engine's; this crate re-exports it.
pub use flashstock_engine::{slot_of, Slot, SLOT_COUNT};

#[cfg(test)]
mod tests {
    use super::*;
    use flashstock_engine::{ShardMap, SkuId};

    #[test]
    fn skus_spread_over_every_slot_and_independently_of_shards() {
        let shards = ShardMap::new(2);
        let mut by_slot = vec![[0u32; 2]; usize::from(SLOT_COUNT)];
        for sku in 0..1_000_000u64 {
            let slot = slot_of(SkuId(sku));
            by_slot[usize::from(slot.0)][usize::from(shards.shard_of_sku(SkuId(sku)).0)] += 1;
        }
        for (slot, counts) in by_slot.iter().enumerate() {
            let total = counts[0] + counts[1];
            assert!((180..320).contains(&total), "slot {slot} holds {total} of 1M SKUs");
            // Within a slot, both shards get about half: the two hashes are independent.
            assert!(counts[0] > total / 4 && counts[1] > total / 4, "slot {slot}: {counts:?}");
        }
    }

    #[test]
    fn a_spread_skus_buckets_share_its_slot() {
        let sku = SkuId(123_456);
        for index in 0..8 {
            assert_eq!(slot_of(sku.bucket(index)), slot_of(sku));
        }
    }
}
