//! What the shard remembers of answers it gave, so that a retried request id gets its first
//! answer and changes nothing.
//!
//! Two stores with different promises:
//! - answers: every request that changed state. Part of the durable state (snapshotted,
//!   rebuilt by replay), bounded by count and age, evicted oldest first. Eviction happens only
//!   when a new answer is remembered, so replay evicts exactly what the live run evicted.
//!   Answers live in a ring in the order they were given, found through a `ProbeTable` index
//!   whose slots hold 31 bits of the request's hash and the answer's position: a request seen
//!   for the first time (nearly every request) costs one cache line to look up and to insert,
//!   and evicting the oldest answer one more; the ring itself is only read or written in order.
//! - `rejections`: requests that changed nothing (sold out, limit exceeded, ...). A fixed-size
//!   direct-mapped cache in memory only: a newer colliding rejection or a restart forgets one,
//!   and then a retry is decided afresh. That is safe because the first attempt had no effect.

use std::collections::VecDeque;

use crate::ids::{RequestId, Slot as ClusterSlot};
use crate::limits::ShardConfig;
use crate::outcome::Outcome;
use crate::probe::{mix, HashKey, ProbeTable, Slot};

/// A request id as two words: a `u128` is 16-byte aligned, which pads every ring slot by
/// 8 bytes; at millions of remembered answers that is worth avoiding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RequestKey([u64; 2]);

impl From<RequestId> for RequestKey {
    fn from(request: RequestId) -> RequestKey {
        RequestKey([request.0 as u64, (request.0 >> 64) as u64])
    }
}

impl From<RequestKey> for RequestId {
    fn from(key: RequestKey) -> RequestId {
        RequestId(u128::from(key.0[0]) | (u128::from(key.0[1]) << 64))
    }
}

impl RequestKey {
    /// The index hash under `key`: 31 bits, with the top bit set so that a slot's hash half
    /// is never 0, the free marker (a free slot is all zero bytes: see `ProbeTable`).
    fn hash31(self, key: HashKey) -> u32 {
        (mix(self.0[0] ^ self.0[1].rotate_left(32), key) | 0x8000_0000) as u32
    }
}

/// How many evictions ahead the index slot of an answer about to be evicted is prefetched:
/// far enough for ~100 ns of memory latency to pass, near enough to still be cached.
const EVICT_PREFETCH_AHEAD: usize = 8;

/// One remembered answer: 48 bytes, a shard keeping up to `dedup_entries_max` of them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answer {
    pub(crate) request: RequestKey,
    /// When it was answered (low 48 bits, ms) and the slot of what the request named (high
    /// 16 bits), in one word so that the slot costs no memory. The slot lets a slot move ship
    /// the answers of its range (docs/cluster.md); [`SLOT_NONE`] for a cart's answers (ranges
    /// holding carts do not move) and for answers restored from a snapshot older than slots.
    at_ms_and_slot: u64,
    pub(crate) outcome: Outcome,
}

/// The latest answer time an `Answer` holds (2^48 - 1 ms, in the year 10889); later times are
/// kept as this one, which only makes such an answer look older than it is.
const ANSWERED_AT_MS_MAX: u64 = (1 << 48) - 1;

const _: () = assert!(std::mem::size_of::<Answer>() == 48);

impl Answer {
    pub(crate) fn new(
        request: RequestKey,
        answered_at_ms: u64,
        outcome: Outcome,
        slot: ClusterSlot,
    ) -> Answer {
        let at_ms_and_slot = answered_at_ms.min(ANSWERED_AT_MS_MAX) | (u64::from(slot.0) << 48);
        Answer { request, at_ms_and_slot, outcome }
    }

    /// When the request was answered, in ms.
    pub(crate) fn answered_at_ms(&self) -> u64 {
        self.at_ms_and_slot & ANSWERED_AT_MS_MAX
    }

    /// The slot of what the request named ([`SLOT_NONE`] for none).
    pub(crate) fn slot(&self) -> ClusterSlot {
        ClusterSlot((self.at_ms_and_slot >> 48) as u16)
    }
}

/// The slot of an answer that no slot move ships.
pub(crate) const SLOT_NONE: ClusterSlot = ClusterSlot(u16::MAX);

/// An index slot: the request's 31-bit hash and its answer's position in the ring (wrapping;
/// the ring holds fewer than 2^31 answers, so the low 32 bits of a position name one answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct IndexSlot {
    hash31: u32,
    position: u32,
}

impl Slot for IndexSlot {
    const EMPTY: IndexSlot = IndexSlot { hash31: 0, position: 0 };
    fn is_empty(&self) -> bool {
        self.hash31 == 0
    }
    fn hash(&self, _key: HashKey) -> u64 {
        // Computed under the key when the slot was made.
        u64::from(self.hash31)
    }
}

/// Remembered answers: a ring in answer order plus an index by request.
#[derive(Clone, Debug)]
pub(crate) struct Answers {
    ring: VecDeque<Answer>,
    /// The position of `ring[0]`, wrapping.
    front_position: u32,
    index: ProbeTable<IndexSlot>,
}

impl Default for Answers {
    fn default() -> Self {
        Answers::new(0, 0, HashKey::default())
    }
}

/// The index is probed for an absent request on nearly every request: kept at most a quarter
/// full, a miss probes ~1.4 slots instead of ~2.5 (engine flash sale 31M -> 38M ops/s) for
/// 8 more bytes per remembered answer.
const INDEX_SPREAD: usize = 4;

impl Answers {
    /// Answers whose ring holds `ring_entries` (the shard's bound: appends are sequential, so
    /// a large ring costs only what is used) and whose index starts sized for
    /// `indexed_entries`. The index grows incrementally from there rather than starting at
    /// the bound: it is probed at random by every request, and a 64 MB index in place of a
    /// few MB made flash-sale requests ~30% dearer in server CPU (cache and TLB misses).
    fn new(ring_entries: usize, indexed_entries: usize, key: HashKey) -> Answers {
        let mut index = ProbeTable::with_spread(indexed_entries, INDEX_SPREAD);
        index.set_key(key);
        // An answer is pushed before the oldest is evicted: one more than the ring's bound.
        index.set_entries_max(ring_entries + 1);
        // One more than the bound: an answer is pushed before the oldest is evicted.
        Answers { ring: VecDeque::with_capacity(ring_entries + 1), front_position: 0, index }
    }

    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }

    /// Makes room in the ring for `entries` in all without growing.
    pub(crate) fn reserve_ring(&mut self, entries: usize) {
        self.ring.reserve_exact(entries.saturating_sub(self.ring.len()));
    }

    /// The ring's capacity: what remembering more answers would have to grow.
    #[cfg(test)]
    pub(crate) fn ring_capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Index entries; equal to `len()` unless the bookkeeping is broken.
    pub(crate) fn indexed(&self) -> usize {
        self.index.len()
    }

    /// Every answer, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Answer> + '_ {
        self.ring.iter()
    }

    fn find(&self, request: RequestKey) -> Option<&Answer> {
        let hash31 = request.hash31(self.index.key());
        let (ring, front) = (&self.ring, self.front_position);
        let found = self.index.find(u64::from(hash31), |slot| {
            slot.hash31 == hash31
                && ring[slot.position.wrapping_sub(front) as usize].request == request
        })?;
        Some(&ring[self.index.slot(found).position.wrapping_sub(front) as usize])
    }

    /// Appends an answer; false, changing nothing, when the request already has one.
    fn push(&mut self, answer: Answer) -> bool {
        if self.find(answer.request).is_some() {
            return false;
        }
        let position = self.front_position.wrapping_add(self.ring.len() as u32);
        let hash31 = answer.request.hash31(self.index.key());
        self.index.insert(IndexSlot { hash31, position });
        self.ring.push_back(answer);
        true
    }

    fn prefetch(&self, request: RequestKey) {
        self.index.prefetch(u64::from(request.hash31(self.index.key())));
    }

    fn oldest(&self) -> Option<&Answer> {
        self.ring.front()
    }

    fn pop_oldest(&mut self) {
        let Some(oldest) = self.ring.pop_front() else { return };
        let (hash31, position) = (oldest.request.hash31(self.index.key()), self.front_position);
        let found = self
            .index
            .find(u64::from(hash31), |slot| slot.position == position)
            .expect("every remembered answer is indexed");
        self.index.remove(found);
        self.front_position = self.front_position.wrapping_add(1);
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Dedup {
    pub(crate) answers: Answers,
    rejections: Box<[Option<(RequestKey, Outcome)>]>,
    /// During recovery: answers in log order, built into `answers` once at the end.
    pending: Option<Vec<Answer>>,
    /// The key request ids are hashed with (clients choose them).
    key: HashKey,
}

impl Dedup {
    pub(crate) fn new(config: &ShardConfig) -> Dedup {
        let key = HashKey::new(config.hash_seed);
        Dedup {
            answers: Answers::new(config.dedup_entries_max, 0, key),
            rejections: vec![None; config.rejection_cache_slots].into_boxed_slice(),
            pending: None,
            key,
        }
    }

    fn rejection_slot(&self, request: RequestId) -> usize {
        // Fibonacci hashing: the top bits of a multiply by 2^64/phi spread even consecutive
        // ids over distinct slots. Unkeyed on purpose: the cache is direct-mapped, so ids
        // crafted to collide only make it forget (a retry is then decided afresh, which is
        // safe), never make a lookup slower.
        let folded = (request.0 as u64) ^ ((request.0 >> 64) as u64);
        let hashed = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot_bits = self.rejections.len().trailing_zeros();
        if slot_bits == 0 {
            return 0;
        }
        (hashed >> (64 - slot_bits)) as usize
    }

    /// Starts loading what looking up `request` will touch (see `ProbeTable::prefetch`).
    pub(crate) fn prefetch(&self, request: RequestId) {
        self.answers.prefetch(request.into());
    }

    pub(crate) fn lookup(&self, request: RequestId) -> Option<Outcome> {
        if let Some(answer) = self.answers.find(RequestKey::from(request)) {
            return Some(answer.outcome);
        }
        match self.rejections[self.rejection_slot(request)] {
            Some((seen, outcome)) if seen == RequestKey::from(request) => Some(outcome),
            _ => None,
        }
    }

    /// Remembers the answer to a state-changing request, evicting what is past retention.
    /// Returns false, remembering nothing, when the request already has an answer.
    #[must_use]
    pub(crate) fn remember_change(
        &mut self,
        (request, slot): (RequestId, ClusterSlot),
        outcome: Outcome,
        now_ms: u64,
        config: &ShardConfig,
    ) -> bool {
        let answer = Answer::new(request.into(), now_ms, outcome, slot);
        if let Some(pending) = &mut self.pending {
            pending.push(answer);
            return true;
        }
        if !self.answers.push(answer) {
            return false;
        }
        // At the count bound every insert evicts the oldest answer, whose index slot is a
        // random line: start loading the one evicted `EVICT_PREFETCH_AHEAD` inserts from now.
        if self.answers.len() >= config.dedup_entries_max {
            if let Some(later) = self.answers.ring.get(EVICT_PREFETCH_AHEAD) {
                self.answers.prefetch(later.request);
            }
        }
        while let Some(oldest) = self.answers.oldest() {
            let too_many = self.answers.len() > config.dedup_entries_max;
            let too_old =
                oldest.answered_at_ms().saturating_add(config.dedup_retention_ms) <= now_ms;
            if !(too_many || too_old) {
                break;
            }
            self.answers.pop_oldest();
        }
        true
    }

    /// Starts collecting answers in log order instead of remembering each at once (recovery).
    pub(crate) fn begin_bulk(&mut self) {
        self.pending = Some(Vec::new());
    }

    /// Builds the answers collected since `begin_bulk`, exactly as remembering them one by one
    /// would have left them, or names a request answered twice.
    ///
    /// Answers are remembered at non-decreasing times and evicted oldest first, by count and by
    /// age, at each insert; so what survives a sequence of inserts is the suffix of answers
    /// younger than the retention at the last insert, and at most the last `dedup_entries_max`
    /// of them. Only those are inserted, into a store sized once.
    pub(crate) fn finish_bulk(&mut self, config: &ShardConfig) -> Result<(), RequestId> {
        let Some(pending) = self.pending.take() else { return Ok(()) };
        let Some(last) = pending.last() else { return Ok(()) };
        let last_ms = last.answered_at_ms();
        let old = std::mem::take(&mut self.answers);
        let all: Vec<Answer> = old.ring.into_iter().chain(pending).collect();
        let by_count = all.len().saturating_sub(config.dedup_entries_max);
        let by_age = all.partition_point(|answer| {
            answer.answered_at_ms().saturating_add(config.dedup_retention_ms) <= last_ms
        });
        let kept = &all[by_count.max(by_age)..];
        self.answers = Answers::new(config.dedup_entries_max, kept.len(), self.key);
        for &answer in kept {
            if !self.answers.push(answer) {
                return Err(answer.request.into());
            }
        }
        Ok(())
    }

    /// Remembers, best effort, the answer to a request that changed nothing.
    pub(crate) fn remember_rejection(&mut self, request: RequestId, outcome: Outcome) {
        let slot = self.rejection_slot(request);
        self.rejections[slot] = Some((request.into(), outcome));
    }

    /// Forgets the remembered refusal of `request`, if it is the one in its slot: the
    /// request is about to be tried again because what refused it changed (a hot SKU's bucket
    /// was refilled). Answers that changed state stay.
    pub(crate) fn forget_rejection(&mut self, request: RequestId) {
        let slot = self.rejection_slot(request);
        if matches!(self.rejections[slot], Some((seen, _)) if seen == RequestKey::from(request)) {
            self.rejections[slot] = None;
        }
    }

    /// Rebuilds the durable store from answers oldest first (snapshot restore), or names a
    /// request that appears twice.
    pub(crate) fn restore(
        &mut self,
        answers: Vec<Answer>,
        config: &ShardConfig,
    ) -> Result<(), RequestId> {
        let ring_entries = answers.len().max(config.dedup_entries_max);
        self.answers = Answers::new(ring_entries, answers.len(), self.key);
        for answer in answers {
            if !self.answers.push(answer) {
                return Err(answer.request.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ReservationId, ShardId};

    fn answer(n: u64) -> Answer {
        let reservation = ReservationId::new(crate::ids::Slot(0), ShardId(0), n + 1);
        let outcome = Outcome::Reserved { reservation, expires_at_ms: n };
        Answer::new(RequestId(u128::from(n) << 64 | 7).into(), n, outcome, SLOT_NONE)
    }

    /// Ring positions are 32-bit and wrap after 2^32 answers: lookups and evictions must work
    /// across the wrap.
    #[test]
    fn answers_are_found_and_evicted_across_the_position_wrap() {
        let mut answers = Answers { front_position: u32::MAX - 5, ..Answers::default() };
        for n in 0..40 {
            assert!(answers.push(answer(n)));
            assert!(!answers.push(answer(n)), "answer {n} remembered twice");
            if answers.len() > 10 {
                answers.pop_oldest();
            }
        }
        assert_eq!(answers.len(), 10);
        assert_eq!(answers.indexed(), 10);
        for n in 0..40 {
            let found = answers.find(answer(n).request).map(|a| a.answered_at_ms());
            assert_eq!(found, (n >= 30).then_some(n), "answer {n}");
        }
        let order: Vec<u64> = answers.iter().map(|a| a.answered_at_ms()).collect();
        assert_eq!(order, (30..40).collect::<Vec<_>>());
    }
}
