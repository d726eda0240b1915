//! `ExpiryQueue`: the deadlines of held reservations, earliest first, ties by id.
//!
//! Most holds share a time-to-live, so deadlines mostly arrive in order: those go to the back
//! of a FIFO in O(1). A deadline earlier than the FIFO's last one goes to a binary heap. Popping
//! takes the smaller of the two heads, so entries leave in exact (deadline, id) order — the
//! order replay must reproduce.
//!
//! Entries are not removed when a reservation ends early; the shard skips them when they come
//! up and compacts the queue (`retain`) when they outnumber live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::ids::ReservationId;

type Entry = (u64, ReservationId);

#[derive(Clone, Debug, Default)]
pub(crate) struct ExpiryQueue {
    /// Entries in (deadline, id) order, pushed in that order.
    in_order: VecDeque<Entry>,
    /// Entries that arrived out of order.
    out_of_order: BinaryHeap<Reverse<Entry>>,
}

impl ExpiryQueue {
    /// A queue whose in-order part holds `entries` before it grows.
    pub(crate) fn with_capacity(entries: usize) -> ExpiryQueue {
        ExpiryQueue { in_order: VecDeque::with_capacity(entries), out_of_order: BinaryHeap::new() }
    }

    /// Makes room in the in-order part for `entries` in all without growing.
    pub(crate) fn reserve(&mut self, entries: usize) {
        self.in_order.reserve_exact(entries.saturating_sub(self.in_order.len()));
    }

    /// Entries the in-order part holds before it must grow.
    #[cfg(test)]
    pub(crate) fn in_order_capacity(&self) -> usize {
        self.in_order.capacity()
    }

    pub(crate) fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }

    pub(crate) fn push(&mut self, at_ms: u64, id: ReservationId) {
        let entry = (at_ms, id);
        match self.in_order.back() {
            Some(&last) if entry < last => self.out_of_order.push(Reverse(entry)),
            _ => self.in_order.push_back(entry),
        }
    }

    /// The earliest entry.
    pub(crate) fn peek(&self) -> Option<Entry> {
        let fifo = self.in_order.front().copied();
        let heap = self.out_of_order.peek().map(|Reverse(entry)| *entry);
        match (fifo, heap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The `ahead`-th entry of the in-order FIFO, a guess at what pops `ahead` pops from now
    /// (for prefetching only: it ignores the heap).
    pub(crate) fn in_order_ahead(&self, ahead: usize) -> Option<Entry> {
        self.in_order.get(ahead).copied()
    }

    /// Removes and returns the earliest entry.
    pub(crate) fn pop(&mut self) -> Option<Entry> {
        let fifo = self.in_order.front().copied();
        let heap = self.out_of_order.peek().map(|Reverse(entry)| *entry);
        match (fifo, heap) {
            (Some(a), Some(b)) if b < a => self.out_of_order.pop().map(|Reverse(e)| e),
            (Some(_), _) => self.in_order.pop_front(),
            (None, _) => self.out_of_order.pop().map(|Reverse(e)| e),
        }
    }

    /// Keeps the entries `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u64, ReservationId) -> bool) {
        self.in_order.retain(|&(at_ms, id)| keep(at_ms, id));
        self.out_of_order.retain(|&Reverse((at_ms, id))| keep(at_ms, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;

    proptest::proptest! {
        /// Whatever the push order, entries pop in (deadline, id) order.
        #[test]
        fn pops_in_deadline_then_id_order(
            deadlines in proptest::collection::vec(0u64..50, 0..300),
            pops_between in proptest::collection::vec(0usize..3, 0..300),
        ) {
            let mut queue = ExpiryQueue::default();
            let mut model = std::collections::BTreeSet::new();
            for (seq, &at_ms) in deadlines.iter().enumerate() {
                let id = ReservationId::new(crate::ids::Slot(0), ShardId(0), seq as u64 + 1);
                queue.push(at_ms, id);
                model.insert((at_ms, id));
                for _ in 0..pops_between.get(seq).copied().unwrap_or(0) {
                    proptest::prop_assert_eq!(queue.peek(), model.first().copied());
                    proptest::prop_assert_eq!(queue.pop(), model.pop_first());
                }
            }
            queue.retain(|at_ms, _| at_ms % 3 != 0);
            model.retain(|(at_ms, _)| at_ms % 3 != 0);
            proptest::prop_assert_eq!(queue.len(), model.len());
            while let Some(entry) = queue.pop() {
                proptest::prop_assert_eq!(Some(entry), model.pop_first());
            }
            proptest::prop_assert!(model.is_empty());
        }
    }
}
