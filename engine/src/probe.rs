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

/// One linear-probing array: the table's current slots, or the old ones it is moving out of.
#[derive(Clone, Debug)]
struct Slots<S> {
    /// A power of two slots (or none).
    slots: Box<[S]>,
    len: usize,
}

impl<S: Slot> Slots<S> {
    fn new(count: usize) -> Slots<S> {
        Slots { slots: free_slots(count), len: 0 }
    }

    /// Free slots out of a growth's prepared memory, the rest of it written now.
    fn from_prepared(mut prepared: Preparing<S>) -> Slots<S> {
        prepared.write(usize::MAX);
        Slots { slots: prepared.slots.into_boxed_slice(), len: 0 }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn find(&self, hash: u64, mut matches: impl FnMut(&S) -> bool) -> Option<usize> {
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

    fn prefetch(&self, hash: u64) {
        if !self.slots.is_empty() {
            prefetch_line(&self.slots[hash as usize & self.mask()]);
        }
    }

    fn place(&mut self, slot: S, key: HashKey) -> usize {
        let mask = self.mask();
        let mut index = slot.hash(key) as usize & mask;
        while !self.slots[index].is_empty() {
            index = (index + 1) & mask;
        }
        self.slots[index] = slot;
        self.len += 1;
        index
    }

    /// Frees the slot at `index`, moving later slots of the run back so that no lookup
    /// stops early at the hole.
    fn remove(&mut self, index: usize, key: HashKey) -> S {
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
            let home = slot.hash(key) as usize & mask;
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = slot;
                hole = next;
            }
        }
        self.slots[hole] = S::EMPTY;
        self.len -= 1;
        removed
    }
}

/// The slots of a big table's next growth, allocated ahead of it and written (free) a page per
/// insert, so that their memory is committed by then. Left to the growth, the first touches
/// come all at once: a drained entry lands on a random page of the new slots, so within a few
/// thousand inserts every page is faulted in and zeroed, inside one or two shard steps. With
/// transparent huge pages that was 30-60 faults of 2 MiB each: shard steps of 50-160 ms while
/// a 4,000-caller load filled the remembered-answer index (`perf` of the shard threads:
/// `clear_page_erms` under `Answers::push`).
#[derive(Debug)]
struct Preparing<S> {
    /// Allocated for all the slots (not zeroed, so not touched), written up to its length.
    slots: Vec<S>,
}

impl<S: Slot> Preparing<S> {
    fn new(count: usize) -> Preparing<S> {
        Preparing { slots: Vec::with_capacity(count) }
    }

    /// How many slots the growth takes.
    fn count(&self) -> usize {
        self.slots.capacity()
    }

    /// Writes up to `count` more slots free.
    fn write(&mut self, count: usize) {
        let more = count.min(self.slots.capacity() - self.slots.len());
        self.slots.extend(std::iter::repeat_n(S::EMPTY, more));
    }
}

/// Growths to slots of at least this many bytes are prepared ahead (see `Preparing`); smaller
/// ones allocate zeroed memory when they happen, which costs at most four 2 MiB page faults
/// (~2.5 ms each on this VM), and a shard's many small buyer tables are left alone. (Tiny in
/// tests, so the property test covers prepared growths.)
#[cfg(not(test))]
const PREPARED_BYTES_MIN: usize = 8 << 20;
#[cfg(test)]
const PREPARED_BYTES_MIN: usize = 64;

/// Bytes of the next growth's slots each insert writes: a page. A table starts preparing at
/// three quarters of its load, so the last quarter's inserts write 4 KiB each; the new slots
/// take 2 x spread x slot size bytes per entry of that quarter (at most 128 for the tables
/// here), so they are written long before the growth comes.
const PREPARED_BYTES_PER_INSERT: usize = 4096;

/// The old slots of a table that grew, still being moved into the new ones.
#[derive(Clone, Debug)]
struct Draining<S> {
    slots: Slots<S>,
    /// Every slot below it is free: entries are moved out from the front, and a removal's
    /// backward shift only ever fills its hole from behind, so nothing lands below it again.
    cursor: usize,
}

#[derive(Debug)]
pub(crate) struct ProbeTable<S> {
    /// Where inserts go: a power of two slots, at most 1/`spread` of them full.
    current: Slots<S>,
    /// After a growth, the old slots, emptied a few entries per insert.
    draining: Option<Draining<S>>,
    /// Before a big table's growth, its next slots, written a page per insert.
    preparing: Option<Preparing<S>>,
    /// Slots per stored entry, at least: 2 (half full) by default. A lookup of an absent key
    /// probes ~2.5 slots at half full and ~1.4 at a quarter, so a table probed for absent
    /// keys on every request (remembered answers) trades memory for speed with 4.
    spread: usize,
    /// What the slots' hashes are keyed with.
    key: HashKey,
    /// The most entries the owner ever stores, if it keeps a bound: a growth beyond what
    /// holds them is never prepared (see `prepare`).
    entries_max: Option<usize>,
}

/// Smallest table once something is stored; an empty table allocates nothing (a shard may
/// hold millions of SKUs, each with its own, mostly tiny, buyer counts).
const SLOTS_MIN: usize = 8;

/// Entries moved from the old slots to the new ones per insert while a table grows. Growth
/// is incremental, as in Redis's dict: rehashing a 2M-entry index at once stalled its shard
/// for ~100 ms. At 4 per insert the old slots are empty long before the new ones fill (they
/// hold at most half as many entries as the new slots take).
const MIGRATE_PER_INSERT: usize = 4;

/// Marks an index into the draining slots (the top bit: no table has 2^63 slots).
const DRAINING: usize = 1 << (usize::BITS - 1);

/// A copy does not copy a growth's prepared slots: the copy prepares its own if it grows.
impl<S: Slot> Clone for ProbeTable<S> {
    fn clone(&self) -> Self {
        ProbeTable {
            current: self.current.clone(),
            draining: self.draining.clone(),
            preparing: None,
            spread: self.spread,
            key: self.key,
            entries_max: self.entries_max,
        }
    }
}

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
        let current = Slots::new(slots);
        ProbeTable { current, draining: None, preparing: None, spread, key, entries_max: None }
    }

    /// Tells the table its owner never stores more than `entries` at once. A table held at
    /// such a bound sits below its next growth for good: without this, past three quarters
    /// of its load it would write all of a growth's slots ahead, memory never used (at the
    /// bounds here, 128-192 MB for each remembered-answer index and returnable-sales table).
    pub(crate) fn set_entries_max(&mut self, entries: usize) {
        self.entries_max = Some(entries);
    }

    /// The key its slots are hashed with.
    pub(crate) fn key(&self) -> HashKey {
        self.key
    }

    /// Hashes its slots with `key` from now on; only an empty table may change its key, as
    /// every stored slot sits where the old key put it.
    pub(crate) fn set_key(&mut self, key: HashKey) {
        assert!(self.len() == 0 || self.key == key, "re-keying a table that holds entries");
        self.key = key;
    }

    /// (slots allocated, entries still in the old slots of a growth).
    #[cfg(test)]
    pub(crate) fn shape(&self) -> (usize, usize) {
        let draining = self.draining.as_ref().map_or(0, |d| d.slots.len);
        (self.current.slots.len(), draining)
    }

    /// (slots written, slots to write) of the next growth being prepared.
    #[cfg(test)]
    fn prepared(&self) -> Option<(usize, usize)> {
        self.preparing.as_ref().map(|p| (p.slots.len(), p.count()))
    }

    pub(crate) fn len(&self) -> usize {
        self.current.len + self.draining.as_ref().map_or(0, |d| d.slots.len)
    }

    /// The index of the first slot of `hash`'s run that `matches`, or `None` once the run
    /// ends at a free slot (in the old slots too, while the table grows).
    pub(crate) fn find(&self, hash: u64, mut matches: impl FnMut(&S) -> bool) -> Option<usize> {
        if let Some(index) = self.current.find(hash, &mut matches) {
            return Some(index);
        }
        let draining = self.draining.as_ref()?;
        draining.slots.find(hash, matches).map(|index| index | DRAINING)
    }

    /// Asks the CPU to start loading the line of `hash`'s home slot, so that a lookup a few
    /// commands later finds it in cache instead of waiting ~100 ns for memory.
    pub(crate) fn prefetch(&self, hash: u64) {
        self.current.prefetch(hash);
        if let Some(draining) = &self.draining {
            draining.slots.prefetch(hash);
        }
    }

    pub(crate) fn slot(&self, index: usize) -> &S {
        match &self.draining {
            Some(draining) if index & DRAINING != 0 => &draining.slots.slots[index & !DRAINING],
            _ => &self.current.slots[index],
        }
    }

    pub(crate) fn slot_mut(&mut self, index: usize) -> &mut S {
        match &mut self.draining {
            Some(draining) if index & DRAINING != 0 => &mut draining.slots.slots[index & !DRAINING],
            _ => &mut self.current.slots[index],
        }
    }

    /// Stores `slot`, whose key the caller has checked is absent; returns its index.
    pub(crate) fn insert(&mut self, slot: S) -> usize {
        debug_assert!(!slot.is_empty(), "storing the free-slot value");
        self.migrate(MIGRATE_PER_INSERT);
        self.prepare();
        if (self.current.len + 1) * self.spread > self.current.slots.len() {
            // Never two growths at once: finish the last one first (it is all but done).
            self.migrate(usize::MAX);
            self.grow();
        }
        self.current.place(slot, self.key)
    }

    /// Frees the slot at `index`.
    pub(crate) fn remove(&mut self, index: usize) -> S {
        match &mut self.draining {
            Some(draining) if index & DRAINING != 0 => {
                let removed = draining.slots.remove(index & !DRAINING, self.key);
                if draining.slots.len == 0 {
                    self.draining = None;
                }
                removed
            }
            _ => self.current.remove(index, self.key),
        }
    }

    /// Past three quarters of its load, a big table prepares its next slots: a page more of
    /// them per insert.
    fn prepare(&mut self) {
        if let Some(preparing) = &mut self.preparing {
            preparing.write(PREPARED_BYTES_PER_INSERT / std::mem::size_of::<S>());
            return;
        }
        let doubled = self.current.slots.len() * 2;
        let loaded = 4 * (self.current.len + 1) * self.spread > 3 * self.current.slots.len();
        // A growth only comes if the bound needs more than the current slots.
        let may_grow =
            self.entries_max.is_none_or(|max| max * self.spread > self.current.slots.len());
        if loaded
            && may_grow
            && self.draining.is_none()
            && doubled * std::mem::size_of::<S>() >= PREPARED_BYTES_MIN
        {
            self.preparing = Some(Preparing::new(doubled));
        }
    }

    /// Starts a growth: new slots twice as many (prepared ahead if the table is big), the old
    /// ones draining into them.
    fn grow(&mut self) {
        let count = (self.current.slots.len() * 2).max(SLOTS_MIN);
        let doubled = match self.preparing.take() {
            Some(prepared) if prepared.count() == count => Slots::from_prepared(prepared),
            _ => Slots::new(count),
        };
        let old = std::mem::replace(&mut self.current, doubled);
        if old.len > 0 {
            self.draining = Some(Draining { slots: old, cursor: 0 });
        }
        self.migrate(MIGRATE_PER_INSERT);
    }

    /// Moves up to `entries` entries from the old slots to the new ones.
    fn migrate(&mut self, entries: usize) {
        let Some(draining) = &mut self.draining else { return };
        let mut moved = 0;
        while moved < entries && draining.slots.len > 0 {
            let cursor = draining.cursor;
            if draining.slots.slots[cursor].is_empty() {
                draining.cursor += 1;
                continue;
            }
            // The removal may shift a later entry of the run into the cursor's slot, which
            // the next turn then moves too.
            let slot = draining.slots.remove(cursor, self.key);
            self.current.place(slot, self.key);
            moved += 1;
        }
        if draining.slots.len == 0 {
            self.draining = None;
        }
    }

    /// Every stored slot, in table order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &S> + '_ {
        let draining = self.draining.iter().flat_map(|d| d.slots.slots.iter());
        self.current.slots.iter().chain(draining).filter(|slot| !slot.is_empty())
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

    /// A growth never rehashes the whole table in one call: each insert moves at most
    /// `MIGRATE_PER_INSERT` old entries (plus the one inserted), every key stays findable
    /// while the old slots drain, and removals from either side keep it a map.
    #[test]
    fn growth_moves_a_few_entries_per_insert_and_loses_none() {
        let key = HashKey::new(7);
        let pair = |k: u32| Pair { key: k, hash: mix(u64::from(k), key) as u32 };
        let mut table = ProbeTable::<Pair>::default();
        let mut growths_seen = 0;
        for k in 1..=5_000u32 {
            let (before, len_before) = (table.shape(), table.len());
            table.insert(pair(k));
            let after = table.shape();
            if after.0 > before.0 {
                growths_seen += 1;
                // All but a few entries are still in the old slots: nothing was rehashed.
                assert!(after.1 + MIGRATE_PER_INSERT >= len_before, "{before:?} -> {after:?}");
            } else {
                assert!(before.1 - after.1 <= MIGRATE_PER_INSERT, "{before:?} -> {after:?}");
            }
            if k % 3 == 0 {
                let found = find(&table, k - 1, pair(k - 1).hash).expect("present");
                assert_eq!(table.remove(found).key, k - 1);
            }
            for probe in [1, (k / 2).max(1), k] {
                let present = probe % 3 != 2 || probe == k;
                let found = find(&table, probe, pair(probe).hash);
                assert_eq!(found.is_some(), present, "key {probe} after inserting {k}");
            }
        }
        assert!(growths_seen >= 8, "{growths_seen} growths");
        let live = (1..=5_000u32).filter(|k| k % 3 != 2 || *k == 5_000).count();
        assert_eq!((table.len(), table.iter().count()), (live, live));
    }

    /// A big table writes its next slots ahead, a page per insert, from three quarters of its
    /// load on, so that a growth finds them all written and touches no fresh memory at once.
    #[test]
    fn big_tables_write_their_next_slots_ahead_a_page_per_insert() {
        let key = HashKey::new(9);
        let pair = |k: u32| Pair { key: k, hash: mix(u64::from(k), key) as u32 };
        let per_insert = PREPARED_BYTES_PER_INSERT / std::mem::size_of::<Pair>();
        let mut table = ProbeTable::<Pair>::default();
        let mut prepared_growths = 0;
        for k in 1..=20_000u32 {
            let (slots, before) = (table.shape().0, table.prepared());
            let bytes_after_growth = 2 * slots * std::mem::size_of::<Pair>();
            let growing = (table.current.len + 1) * table.spread > slots;
            // (A table of a few slots reaches full load one insert after three quarters.)
            if growing && slots >= 64 && bytes_after_growth >= PREPARED_BYTES_MIN {
                let (written, count) = before.expect("a big table's growth is prepared");
                assert_eq!((written, count), (2 * slots, 2 * slots), "all written before");
                prepared_growths += 1;
            }
            table.insert(pair(k));
            match (before, table.prepared()) {
                (Some((was, _)), Some((now, _))) => assert!(now - was <= per_insert),
                (None, Some((now, count))) => {
                    assert!(4 * table.len() * table.spread > 3 * table.shape().0, "too early");
                    assert!(now <= per_insert && count == 2 * table.shape().0);
                }
                _ => {}
            }
        }
        assert!(prepared_growths >= 5, "{prepared_growths} prepared growths");
        assert!((1..=20_000).all(|k| find(&table, k, pair(k).hash).is_some()));
    }

    /// A table kept at a bound below its growth point (as the remembered answers and the
    /// returnable sales are) never writes a growth's slots ahead: it would never use them.
    #[test]
    fn a_table_held_at_its_bound_prepares_no_growth() {
        let key = HashKey::new(3);
        let pair = |k: u32| Pair { key: k, hash: mix(u64::from(k), key) as u32 };
        let bound = 3_500u32;
        let mut table = ProbeTable::<Pair>::default();
        table.set_entries_max(bound as usize);
        for k in 1..=20_000u32 {
            table.insert(pair(k));
            if k > bound {
                // Evict the oldest, as a bounded owner does.
                let old = k - bound;
                let found = find(&table, old, pair(old).hash).expect("present");
                table.remove(found);
            }
            if table.draining.is_none() && table.len() * table.spread * 2 > table.shape().0 {
                // Past half its growth point with room for the bound: nothing to prepare.
                let fits = bound as usize * table.spread <= table.shape().0;
                assert!(!(fits && table.prepared().is_some()), "k {k}: a growth prepared");
            }
        }
        assert_eq!(table.len(), bound as usize);
        assert!(table.prepared().is_none(), "{:?}", table.prepared());
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
