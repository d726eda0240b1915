//! `MemWal`: the log in memory, for tests, with the faults a disk can produce.
//!
//! Clones share one store, so a test can hand one clone to the runtime and keep another to
//! inject faults and to "restart" from what survived. Stored values use the same batch format
//! as `SledWal`, so torn and flipped batches are caught by the same checks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::batch;
use crate::{BatchRef, LogId, ReplaySummary, Snapshot, VisitError, Wal, WalError};

#[derive(Debug, Default)]
struct Store {
    batches: BTreeMap<(LogId, u64), Vec<u8>>,
    /// Appended since the last sync: what a crash may lose.
    unsynced: Vec<(LogId, u64)>,
    next_seq: BTreeMap<LogId, u64>,
    snapshots: BTreeMap<LogId, Snapshot>,
    meta: BTreeMap<String, Vec<u8>>,
    fail_syncs: u32,
    syncs: u64,
}

/// An in-memory [`Wal`] with fault injection. Cheap to clone; clones share the store.
#[derive(Clone, Debug, Default)]
pub struct MemWal {
    store: Arc<Mutex<Store>>,
}

impl MemWal {
    /// An empty store.
    pub fn new() -> MemWal {
        MemWal::default()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A crash: batches appended since the last sync are gone.
    pub fn lose_unsynced(&self) {
        let mut store = self.store();
        for key in std::mem::take(&mut store.unsynced) {
            store.batches.remove(&key);
        }
        store.next_seq.clear();
    }

    /// A torn write: the last batch of `log` keeps only its first `keep_bytes` bytes.
    pub fn tear_last_batch(&self, log: LogId, keep_bytes: usize) {
        let mut store = self.store();
        let last = store.batches.range_mut((log, 0)..=(log, u64::MAX)).next_back();
        let (_, bytes) = last.expect("a batch to tear");
        bytes.truncate(keep_bytes);
    }

    /// Bit rot: flips one bit of the stored batch of `log` starting at `seq`.
    pub fn flip_bit(&self, log: LogId, seq: u64, bit: usize) {
        let mut store = self.store();
        let bytes = store.batches.get_mut(&(log, seq)).expect("a batch at that seq");
        bytes[bit / 8] ^= 1 << (bit % 8);
    }

    /// Makes the next `count` syncs fail, as a full or failing disk would.
    pub fn fail_next_syncs(&self, count: u32) {
        self.store().fail_syncs = count;
    }

    /// First sequence numbers of the batches stored for `log`.
    pub fn batch_seqs(&self, log: LogId) -> Vec<u64> {
        self.store().batches.range((log, 0)..=(log, u64::MAX)).map(|(&(_, seq), _)| seq).collect()
    }

    /// How many syncs succeeded.
    pub fn sync_count(&self) -> u64 {
        self.store().syncs
    }
}

impl Wal for MemWal {
    fn append(
        &self,
        log: LogId,
        first_seq: u64,
        record_count: u32,
        records: &[u8],
    ) -> Result<(), WalError> {
        batch::check_size(records)?;
        let mut store = self.store();
        if !store.next_seq.contains_key(&log) {
            // First append since a (simulated) restart: continue from what is stored.
            let stored_end = store.batches.range((log, 0)..=(log, u64::MAX)).next_back().map(
                |(&(_, first), bytes)| {
                    first.saturating_add(u64::from(batch::record_count_of(bytes).unwrap_or(0)))
                },
            );
            if let Some(end) = stored_end {
                store.next_seq.insert(log, end);
            }
        }
        if let Some(&expected) = store.next_seq.get(&log) {
            if expected != first_seq {
                return Err(WalError::OutOfOrder { log, expected, found: first_seq });
            }
        }
        let mut value = Vec::new();
        batch::encode(log, first_seq, record_count, records, &mut value);
        store.batches.insert((log, first_seq), value);
        store.unsynced.push((log, first_seq));
        store.next_seq.insert(log, first_seq + u64::from(record_count));
        Ok(())
    }

    fn sync(&self) -> Result<(), WalError> {
        let mut store = self.store();
        if store.fail_syncs > 0 {
            store.fail_syncs -= 1;
            return Err(WalError::InjectedFault("sync failed"));
        }
        store.unsynced.clear();
        store.syncs += 1;
        Ok(())
    }

    fn replay(
        &self,
        log: LogId,
        from_seq: u64,
        visit: &mut dyn FnMut(BatchRef<'_>) -> Result<(), VisitError>,
    ) -> Result<ReplaySummary, WalError> {
        let store = self.store();
        let stored = store.batches.range((log, from_seq)..=(log, u64::MAX));
        let stored = stored.map(|(&(_, key_seq), bytes)| Ok((key_seq, bytes)));
        batch::replay_stored(log, from_seq, stored, visit)
    }

    fn read(
        &self,
        log: LogId,
        from_seq: u64,
        until_seq: u64,
        visit: &mut dyn FnMut(BatchRef<'_>) -> bool,
    ) -> Result<(), WalError> {
        let store = self.store();
        let preceding = store.batches.range((log, 0)..=(log, from_seq)).next_back();
        let start = batch::read_start(
            from_seq,
            preceding.map(|(&(_, key_seq), bytes)| (key_seq, &bytes[..])),
        );
        let stored = store.batches.range((log, start)..=(log, u64::MAX));
        let stored = stored.map(|(&(_, key_seq), bytes)| Ok((key_seq, bytes)));
        batch::read_stored(log, from_seq, until_seq, stored, visit)
    }

    fn discard_tail(&self, log: LogId, seq: u64) -> Result<(), WalError> {
        let mut store = self.store();
        let last = store.batches.range((log, 0)..=(log, u64::MAX)).next_back().map(|(k, _)| k.1);
        if last != Some(seq) {
            return Err(WalError::NotTheTail { log, seq });
        }
        store.batches.remove(&(log, seq));
        store.next_seq.insert(log, seq);
        Ok(())
    }

    fn write_snapshot(&self, log: LogId, seq: u64, state: &[u8]) -> Result<(), WalError> {
        self.store().snapshots.insert(log, Snapshot { seq, state: state.to_vec() });
        Ok(())
    }

    fn latest_snapshot(&self, log: LogId) -> Result<Option<Snapshot>, WalError> {
        Ok(self.store().snapshots.get(&log).cloned())
    }

    fn truncate_below(&self, log: LogId, seq: u64) -> Result<(), WalError> {
        let mut store = self.store();
        let doomed: Vec<(LogId, u64)> = store
            .batches
            .range((log, 0)..(log, seq))
            .filter(|(&(_, first), bytes)| {
                let count = batch::record_count_of(bytes).unwrap_or(u32::MAX);
                first.saturating_add(u64::from(count)) <= seq
            })
            .map(|(&key, _)| key)
            .collect();
        for key in doomed {
            store.batches.remove(&key);
        }
        Ok(())
    }

    fn read_meta(&self, key: &str) -> Result<Option<Vec<u8>>, WalError> {
        Ok(self.store().meta.get(key).cloned())
    }

    fn write_meta(&self, key: &str, value: &[u8]) -> Result<(), WalError> {
        self.store().meta.insert(key.to_owned(), value.to_vec());
        Ok(())
    }
}
