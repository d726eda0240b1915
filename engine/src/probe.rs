//! `ProbeTable`: an open-addressing hash table (linear probing, backward-shift deletion) for
//! the two maps every successful reserve touches at random: remembered answers and per-buyer
//! counts.
//!
//! Why not `std`'s map: hashbrown keeps control bytes and entries in separate arrays, so a
//! lookup in a map larger than the cache costs two cache misses, and an insert two more. Here
//! a slot carries its key (or enough of its hash) inline, so a lookup, an insert after it and
//! a removal each touch one line in the common case. Backward-shift deletion leaves no
//! tombstones: a table that evicts as fast as it inserts keeps short probe runs forever.
//!
//! The table is at most half full, so runs stay short. Keys come from clients (buyer and
//! request ids), so the hash is keyed ([`HashKey`], from `ShardConfig::hash_seed`, which the
//! runtime keeps per data directory): a client that does not know the key cannot pick ids
//! that pile into one run and slow its shard.

/// What a table stores: a fixed-size value that knows the hash it was placed by.
pub(crate) trait Slot: bytemuck::Pod {
    /// The value of a free slot, all zero bytes; never a stored value. Zero so that a table
    /// is zeroed memory: a large one sized up front costs address space, not a memset, and
    /// the kernel commits its pages as they are first written.
    const EMPTY: Self;
    /// Whether this is a free slot.
    fn is_empty(&self) -> bool;
    /// The hash this slot was placed by, under the table's key; its low bits pick the home
    /// slot.
    fn hash(&self, key: HashKey) -> u64;
}

/// The secret a table's hash is keyed with: an odd multiplier and an offset drawn from a
/// seed. Not a cryptographic hash, but multiply-shift with an unknown random multiplier: which
/// ids collide depends on the key, which no client sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HashKey {
    multiplier: u64,
    offset: u64,
}

impl HashKey {
    /// The key drawn from `seed` (SplitMix64 twice).
    pub(crate) fn new(seed: u64) -> HashKey {
        let first = splitmix64(seed);
        let second = splitmix64(first);
        // An odd multiplier near 2^64/phi's bit density keeps every key bit in the high half.
        HashKey { multiplier: (0x9e37_79b9_7f4a_7c15 ^ first) | 1, offset: second }
    }
}

impl Default for HashKey {
    fn default() -> Self {
        HashKey::new(0)
    }
}

fn splitmix64(seed: u64) -> u64 {
    crate::ids::SplitMix64::new(seed).next_u64()
}

/// Mixes a 64-bit id under `key` so that its low bits are usable as a table index: one
/// multiply by the key's odd multiplier, whose high half depends on every id bit, folded down
/// onto the low half. Sequential ids land far apart instead of forming one long run.
pub(crate) fn mix(id: u64, key: HashKey) -> u64 {
    let x = (id ^ key.offset).wrapping_mul(key.multiplier);
    x ^ (x >> 32)
}

/// A cache hint: never faults, reads or writes nothing architecturally visible.
#[allow(unsafe_code)]
pub(crate) fn prefetch_line<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only needs SSE, part of every x86_64 target; a prefetch of any
    // address is a hint that cannot fault, and this one is of a live reference anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// `count` free slots, as zeroed memory.
fn free_slots<S: Slot>(count: usize) -> Box<[S]> {
    debug_assert!(bytemuck::bytes_of(&S::EMPTY).iter().all(|&byte| byte == 0));
    bytemuck::allocation::zeroed_slice_box(count)
}

#[derive(Clone, Debug)]
pub(crate) struct ProbeTable<S> {
    /// A power of two slots, at most 1/`spread` of them full.
    slots: Box<[S]>,
    len: usize,
    /// Slots per stored entry, at least: 2 (half full) by default. A lookup of an absent key
    /// probes ~2.5 slots at half full and ~1.4 at a quarter, so a table probed for absent
    /// keys on every request (remembered answers) trades memory for speed with 4.
    spread: usize,
    /// What the slots' hashes are keyed with.
    key: HashKey,
}

/// Smallest table once something is stored; an empty table allocates nothing (a shard may
/// hold millions of SKUs, each with its own, mostly tiny, buyer counts).
const SLOTS_MIN: usize = 8;

impl<S: Slot> Default for ProbeTable<S> {
    fn default() -> Self {
        ProbeTable::with_capacity(0)
    }
}

impl<S: Slot> ProbeTable<S> {
    /// A table that holds `entries` without growing, at most half full.
    pub(crate) fn with_capacity(entries: usize) -> ProbeTable<S> {
        ProbeTable::with_spread(entries, 2)
    }

    /// A table that holds `entries` without growing, at most 1/`spread` full.
    pub(crate) fn with_spread(entries: usize, spread: usize) -> ProbeTable<S> {
        assert!(spread >= 2, "a table at most half full keeps probe runs short");
        let slots =
            if entries == 0 { 0 } else { (entries * spread).next_power_of_two().max(SLOTS_MIN) };
        let key = HashKey::default();
        ProbeTable { slots: free_slots(slots), len: 0, spread, key }
    }

    /// The key its slots are hashed with.
    pub(crate) fn key(&self) -> HashKey {
        self.key
    }

    /// Hashes its slots with `key` from now on; only an empty table may change its key, as
    /// every stored slot sits where the old key put it.
    pub(crate) fn set_key(&mut self, key: HashKey) {
        assert!(self.len == 0 || self.key == key, "re-keying a table that holds entries");
        self.key = key;
    }

    /// Slots allocated, free or not.
    #[cfg(test)]
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The index of the first slot of `hash`'s run that `matches`, or `None` once the run
    /// ends at a free slot.
    pub(crate) fn find(&self, hash: u64, mut matches: impl FnMut(&S) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut index = hash as usize & mask;
        loop {
            let slot = &self.slots[index];
            if slot.is_empty() {
                return None;
            }
            if matches(slot) {
                return Some(index);
            }
            index = (index + 1) & mask;
        }
    }

    /// Asks the CPU to start loading the line of `hash`'s home slot, so that a lookup a few
    /// commands later finds it in cache instead of waiting ~100 ns for memory.
    pub(crate) fn prefetch(&self, hash: u64) {
        if !self.slots.is_empty() {
            prefetch_line(&self.slots[hash as usize & self.mask()]);
        }
    }

    pub(crate) fn slot(&self, index: usize) -> &S {
        &self.slots[index]
    }

    pub(crate) fn slot_mut(&mut self, index: usize) -> &mut S {
        &mut self.slots[index]
    }

    /// Stores `slot`, whose key the caller has checked is absent; returns its index.
    pub(crate) fn insert(&mut self, slot: S) -> usize {
        debug_assert!(!slot.is_empty(), "storing the free-slot value");
        if (self.len + 1) * self.spread > self.slots.len() {
            self.grow();
        }
        self.len += 1;
        self.place(slot)
    }

    fn place(&mut self, slot: S) -> usize {
        let mask = self.mask();
        let mut index = slot.hash(self.key) as usize & mask;
        while !self.slots[index].is_empty() {
            index = (index + 1) & mask;
        }
        self.slots[index] = slot;
        index
    }

    /// Frees the slot at `index`, moving later slots of the run back so that no lookup
    /// stops early at the hole.
    pub(crate) fn remove(&mut self, index: usize) -> S {
        let mask = self.mask();
        let removed = self.slots[index];
        debug_assert!(!removed.is_empty(), "removing a free slot");
        let mut hole = index;
        let mut next = index;
        loop {
            next = (next + 1) & mask;
            let slot = self.slots[next];
            if slot.is_empty() {
                break;
            }
            // `slot` may fill the hole when its home is not between the hole (exclusive) and
            // itself, cyclically: it was placed at or before the hole.
            let home = slot.hash(self.key) as usize & mask;
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = slot;
                hole = next;
            }
        }
        self.slots[hole] = S::EMPTY;
        self.len -= 1;
        removed
    }

    fn grow(&mut self) {
        let doubled = free_slots((self.slots.len() * 2).max(SLOTS_MIN));
        let old = std::mem::replace(&mut self.slots, doubled);
        for slot in old.iter().filter(|slot| !slot.is_empty()) {
            self.place(*slot);
        }
    }

    /// Every stored slot, in table order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &S> + '_ {
        self.slots.iter().filter(|slot| !slot.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key with a chosen hash, so tests can force long runs and wrap-around.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct Pair {
        /// Never 0 when stored: 0 marks a free slot.
        key: u32,
        hash: u32,
    }

    impl Slot for Pair {
        const EMPTY: Pair = Pair { key: 0, hash: 0 };
        fn is_empty(&self) -> bool {
            self.key == 0
        }
        fn hash(&self, _key: HashKey) -> u64 {
            u64::from(self.hash)
        }
    }

    fn find(table: &ProbeTable<Pair>, key: u32, hash: u32) -> Option<usize> {
        table.find(u64::from(hash), |slot| slot.key == key)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Inserts and removals with few distinct hashes (long, wrapping runs), checked
        /// against a map after every operation.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((1u32..65, 0u32..8, proptest::prelude::any::<bool>()), 1..600)) {
            let mut table = ProbeTable::<Pair>::default();
            let mut model = std::collections::HashMap::new();
            for (key, hash_pick, insert) in ops {
                // Hashes near the table's end make runs wrap to its start.
                let hash = [0, 1, 13, 14, 15, 31, 63, 1 << 20][hash_pick as usize];
                let hash = *model.get(&key).unwrap_or(&hash);
                match (find(&table, key, hash), insert) {
                    (None, true) => {
                        table.insert(Pair { key, hash });
                        model.insert(key, hash);
                    }
                    (Some(index), false) => {
                        proptest::prop_assert_eq!(table.remove(index).key, key);
                        model.remove(&key);
                    }
                    (found, _) => proptest::prop_assert_eq!(found.is_some(), model.contains_key(&key)),
                }
                proptest::prop_assert_eq!(table.len(), model.len());
                for (&key, &hash) in &model {
                    let index = find(&table, key, hash);
                    proptest::prop_assert!(index.is_some(), "lost key {}", key);
                }
                proptest::prop_assert_eq!(table.iter().count(), model.len());
            }
        }
    }

    #[test]
    fn mixing_spreads_sequential_keys_under_any_key() {
        let mask = 1023u64;
        for seed in [0, 1, 42, u64::MAX] {
            let key = HashKey::new(seed);
            let homes: std::collections::HashSet<u64> =
                (0..512).map(|k| mix(k, key) & mask).collect();
            // A run of 512 sequential ids in 1,024 slots: well spread, not a block.
            assert!(homes.len() > 350, "seed {seed}: {} distinct homes", homes.len());
        }
    }

    #[test]
    fn ids_that_collide_under_one_key_scatter_under_another() {
        // What a client could find offline against a fixed hash: 64 ids sharing a home slot.
        let (fixed, mask) = (HashKey::new(0), 1023u64);
        let target = mix(0, fixed) & mask;
        let crafted: Vec<u64> =
            (0u64..).filter(|&id| mix(id, fixed) & mask == target).take(64).collect();
        let other = HashKey::new(0x5eed);
        let homes: std::collections::HashSet<u64> =
            crafted.iter().map(|&id| mix(id, other) & mask).collect();
        assert!(homes.len() > 40, "{} distinct homes under another key", homes.len());
    }
}
