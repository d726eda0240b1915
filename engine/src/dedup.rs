//! What the shard remembers of answers it gave, so that a retried request id gets its first
//! answer and changes nothing.
//!
//! Two stores with different promises:
//! - `answers`: every request that changed state. Part of the durable state (snapshotted,
//!   rebuilt by replay), bounded by count and age, evicted oldest first. Eviction happens only
//!   when a new answer is remembered, so replay evicts exactly what the live run evicted.
//! - `rejections`: requests that changed nothing (sold out, limit exceeded, ...). A fixed-size
//!   direct-mapped cache in memory only: a newer colliding rejection or a restart forgets one,
//!   and then a retry is decided afresh. That is safe because the first attempt had no effect.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::ids::RequestId;
use crate::limits::ShardConfig;
use crate::outcome::Outcome;

/// A request id as two words: a `u128` is 16-byte aligned, which pads every map entry and
/// queue slot by 8 bytes; at millions of remembered answers that is worth avoiding.
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

#[derive(Debug)]
pub(crate) struct Dedup {
    pub(crate) answers: FxHashMap<RequestKey, Outcome>,
    /// Requests in `answers`, oldest first, with when they were answered.
    pub(crate) order: VecDeque<(RequestKey, u64)>,
    rejections: Box<[Option<(RequestKey, Outcome)>]>,
    /// During recovery: answers in log order, built into `answers` once at the end.
    pending: Option<Vec<(RequestKey, u64, Outcome)>>,
}

impl Dedup {
    pub(crate) fn new(config: &ShardConfig) -> Dedup {
        Dedup {
            answers: FxHashMap::default(),
            order: VecDeque::new(),
            rejections: vec![None; config.rejection_cache_slots].into_boxed_slice(),
            pending: None,
        }
    }

    fn rejection_slot(&self, request: RequestId) -> usize {
        // Fibonacci hashing: the top bits of a multiply by 2^64/phi spread even consecutive
        // ids over distinct slots.
        let folded = (request.0 as u64) ^ ((request.0 >> 64) as u64);
        let hashed = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot_bits = self.rejections.len().trailing_zeros();
        if slot_bits == 0 {
            return 0;
        }
        (hashed >> (64 - slot_bits)) as usize
    }

    pub(crate) fn lookup(&self, request: RequestId) -> Option<Outcome> {
        if let Some(outcome) = self.answers.get(&RequestKey::from(request)) {
            return Some(*outcome);
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
        request: RequestId,
        outcome: Outcome,
        now_ms: u64,
        config: &ShardConfig,
    ) -> bool {
        let key = RequestKey::from(request);
        if let Some(pending) = &mut self.pending {
            pending.push((key, now_ms, outcome));
            return true;
        }
        match self.answers.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => return false,
            std::collections::hash_map::Entry::Vacant(slot) => slot.insert(outcome),
        };
        self.order.push_back((key, now_ms));
        while let Some(&(oldest, answered_at_ms)) = self.order.front() {
            let too_many = self.order.len() > config.dedup_entries_max;
            let too_old = answered_at_ms.saturating_add(config.dedup_retention_ms) <= now_ms;
            if !(too_many || too_old) {
                break;
            }
            self.order.pop_front();
            self.answers.remove(&oldest);
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
    /// of them. Only those are inserted, into a map sized once.
    pub(crate) fn finish_bulk(&mut self, config: &ShardConfig) -> Result<(), RequestId> {
        let Some(pending) = self.pending.take() else { return Ok(()) };
        let Some(&(_, last_ms, _)) = pending.last() else { return Ok(()) };
        let old = std::mem::take(&mut self.order);
        let mut old_answers = std::mem::take(&mut self.answers);
        let mut all: Vec<(RequestKey, u64, Option<Outcome>)> =
            old.into_iter().map(|(key, at_ms)| (key, at_ms, None)).collect();
        all.extend(pending.into_iter().map(|(key, at_ms, outcome)| (key, at_ms, Some(outcome))));
        let by_count = all.len().saturating_sub(config.dedup_entries_max);
        let by_age = all.partition_point(|&(_, at_ms, _)| {
            at_ms.saturating_add(config.dedup_retention_ms) <= last_ms
        });
        let kept = &all[by_count.max(by_age)..];
        self.answers = FxHashMap::with_capacity_and_hasher(kept.len(), Default::default());
        self.order = VecDeque::with_capacity(kept.len());
        for &(key, at_ms, outcome) in kept {
            let outcome = outcome.or_else(|| old_answers.remove(&key)).expect("an answer");
            if self.answers.insert(key, outcome).is_some() {
                return Err(key.into());
            }
            self.order.push_back((key, at_ms));
        }
        Ok(())
    }

    /// Remembers, best effort, the answer to a request that changed nothing.
    pub(crate) fn remember_rejection(&mut self, request: RequestId, outcome: Outcome) {
        let slot = self.rejection_slot(request);
        self.rejections[slot] = Some((request.into(), outcome));
    }

    /// Rebuilds the durable store from its eviction order (snapshot restore).
    pub(crate) fn restore(&mut self, order: VecDeque<(RequestKey, u64)>, outcomes: Vec<Outcome>) {
        debug_assert_eq!(order.len(), outcomes.len());
        self.answers = order.iter().map(|&(request, _)| request).zip(outcomes).collect();
        self.order = order;
    }
}
