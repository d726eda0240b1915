//! The committed-deduction stream's server side, without the network: reading events off the
//! log, and the registry of consumers and their acknowledged cursors.
//!
//! Events are read from the WAL, below each shard's durable end only, so a consumer never sees
//! an effect a crash could undo, and a restarted server resumes every consumer from its
//! acknowledged cursor. The registry is stored in the log's metadata and holds truncation back:
//! the snapshot thread never removes records a registered consumer has not acknowledged, up to
//! `consumer_retention_records_max` records per shard.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use flashstock_engine::{decode_records, Event, EventKind};
use flashstock_protocol::StreamEvent;
use flashstock_wal::{Wal, WalError};
use tokio::sync::watch;

use crate::durability::DurableEnds;

/// The metadata key the consumer registry is stored under.
const CONSUMERS_KEY: &str = "consumers";
pub use flashstock_protocol::tokens::CONSUMER_NAME_BYTES_MAX;

/// Why reading the stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The consumer name is empty, too long, or has characters outside `A-Z a-z 0-9 _ - .`.
    #[error("consumer name {0:?} must be 1 to 64 of A-Z a-z 0-9 _ - .")]
    BadConsumerName(String),
    /// A cursor with the wrong number of shards.
    #[error("a cursor has one position per shard: {shard_count}, not {found}")]
    CursorLength {
        /// The server's shard count.
        shard_count: usize,
        /// The length given.
        found: usize,
    },
    /// A cursor beyond what the shard's log holds durably.
    #[error("shard {shard}: position {requested} is beyond the log's durable end {durable_end}")]
    CursorBeyondEnd {
        /// The shard.
        shard: u16,
        /// The position asked for.
        requested: u64,
        /// Where the durable log ends.
        durable_end: u64,
    },
    /// The log no longer holds the records asked for.
    #[error("shard {shard}: records from {requested} were truncated; the log starts at {first_available}")]
    Truncated {
        /// The shard.
        shard: u16,
        /// The position asked for.
        requested: u64,
        /// The first position the log still holds.
        first_available: u64,
    },
    /// The log could not be read or decoded.
    #[error("reading log {shard}: {detail}")]
    Read {
        /// The shard.
        shard: u16,
        /// What failed.
        detail: String,
    },
    /// The registry could not be stored.
    #[error("storing consumer cursors: {0}")]
    Store(WalError),
    /// The runtime has stopped and let go of its log.
    #[error("the runtime has stopped")]
    Stopped,
}

/// The log as the stream and the consumer registry reach it. The runtime releases it when it
/// stops, so that a handle outliving the runtime (a task not yet finished, a caller keeping
/// its clone) does not keep the store open, and its lock with it: a restart in the same
/// process must be able to open the log at once.
#[derive(Clone)]
pub(crate) struct WalRef(Arc<std::sync::RwLock<Option<Arc<dyn Wal>>>>);

impl WalRef {
    pub(crate) fn new(wal: Arc<dyn Wal>) -> WalRef {
        WalRef(Arc::new(std::sync::RwLock::new(Some(wal))))
    }

    fn get(&self) -> Result<Arc<dyn Wal>, StreamError> {
        let wal = self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        wal.clone().ok_or(StreamError::Stopped)
    }

    /// Lets go of the log; later reads and stores fail with `Stopped`.
    pub(crate) fn release(&self) {
        self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    }
}

/// Read access to the committed log, shared by every subscription.
#[derive(Clone)]
pub struct EventLog {
    wal: WalRef,
    durable_ends: DurableEnds,
    committed: watch::Receiver<u64>,
    consumers: Arc<Consumers>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("shards", &self.durable_ends.len()).finish()
    }
}

/// One read of a shard's log.
#[derive(Debug, Default)]
pub struct EventRead {
    /// The events found, in log order.
    pub events: Vec<StreamEvent>,
    /// Every record below this was looked at.
    pub end_seq: u64,
}

impl EventLog {
    pub(crate) fn new(
        wal: WalRef,
        durable_ends: DurableEnds,
        committed: watch::Receiver<u64>,
        consumers: Arc<Consumers>,
    ) -> EventLog {
        EventLog { wal, durable_ends, committed, consumers }
    }

    /// How many shards (and so cursor positions) there are.
    pub fn shard_count(&self) -> usize {
        self.durable_ends.len()
    }

    /// Where shard `shard`'s durable log ends.
    pub fn durable_end(&self, shard: u16) -> u64 {
        self.durable_ends[usize::from(shard)].load(Ordering::Acquire)
    }

    /// A receiver that changes after every group commit.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// The consumer registry.
    pub fn consumers(&self) -> &Arc<Consumers> {
        &self.consumers
    }

    /// Reads a metadata value of the log (blocking: sled).
    pub fn read_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StreamError> {
        self.wal.get()?.read_meta(key).map_err(StreamError::Store)
    }

    /// Writes a metadata value of the log, durable on return (blocking: sled).
    pub fn write_meta(&self, key: &str, value: &[u8]) -> Result<(), StreamError> {
        self.wal.get()?.write_meta(key, value).map_err(StreamError::Store)
    }

    /// Lets go of the log (the runtime has stopped).
    pub(crate) fn release_wal(&self) {
        self.wal.release();
    }

    /// The first position shard `shard`'s log still holds.
    pub fn first_available(&self, shard: u16) -> Result<u64, StreamError> {
        let durable_end = self.durable_end(shard);
        match self.wal.get()?.read(shard, 0, durable_end, &mut |_| false) {
            Ok(()) => Ok(0),
            Err(WalError::Truncated { first_available, .. }) => Ok(first_available),
            Err(err) => Err(StreamError::Read { shard, detail: err.to_string() }),
        }
    }

    /// Reads shard `shard`'s events of the `kinds_mask` kinds from `from_seq`, below its
    /// durable end: at most `events_max` events, and at most about `records_max` records looked
    /// at (whole WAL batches), so one read is bounded whatever the consumer filters out.
    /// Blocking (sled); call it off the async executor.
    pub fn read(
        &self,
        shard: u16,
        from_seq: u64,
        kinds_mask: u8,
        events_max: usize,
        records_max: u64,
    ) -> Result<EventRead, StreamError> {
        let until_seq = self.durable_end(shard);
        let mut read = EventRead { events: Vec::new(), end_seq: from_seq };
        let mut failure = None;
        let visited = self.wal.get()?.read(shard, from_seq, until_seq, &mut |batch| {
            for (seq, record) in (batch.first_seq..).zip(decode_records(batch.records)) {
                let record = match record {
                    Ok(record) => record,
                    Err(err) => {
                        failure = Some(format!("record {seq}: {err}"));
                        return false;
                    }
                };
                if seq >= from_seq {
                    // A record's events travel together (a cart's lines share its sequence
                    // number, and the cursor moves by records): the first record of a read
                    // may pass `events_max` by up to `CART_LINES_MAX - 1`.
                    let wanted = |e: &Event| kinds_mask & e.change.kind().bit() != 0;
                    let count = record.events().filter(wanted).count();
                    if !read.events.is_empty() && read.events.len() + count > events_max {
                        return false;
                    }
                    let events = record.events().filter(wanted);
                    read.events.extend(events.map(|event| StreamEvent { seq, event }));
                    read.end_seq = seq + 1;
                }
            }
            read.end_seq.saturating_sub(from_seq) < records_max
        });
        match (visited, failure) {
            (_, Some(detail)) => Err(StreamError::Read { shard, detail }),
            (Ok(()), None) => Ok(read),
            (Err(WalError::Truncated { requested, first_available, .. }), None) => {
                Err(StreamError::Truncated { shard, requested, first_available })
            }
            (Err(err), None) => Err(StreamError::Read { shard, detail: err.to_string() }),
        }
    }
}

/// A mask of every kind in `kinds`; all kinds when empty.
pub fn kinds_mask(kinds: &[EventKind]) -> u8 {
    if kinds.is_empty() {
        return EventKind::ALL.iter().fold(0, |mask, kind| mask | kind.bit());
    }
    kinds.iter().fold(0, |mask, kind| mask | kind.bit())
}

/// The registered consumers, their acknowledged cursors, and which are subscribed now.
pub struct Consumers {
    wal: WalRef,
    state: Mutex<Registry>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumers").field("cursors", &self.lock().cursors).finish()
    }
}

#[derive(Debug, Default)]
struct Registry {
    cursors: BTreeMap<String, Vec<u64>>,
    /// The live subscription of each consumer: its generation, and how to tell it that a
    /// newer one took its place.
    subscribed: BTreeMap<String, (u64, watch::Sender<bool>)>,
    generation: u64,
}

/// Which consumer holds a shard's log back, and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The consumer.
    pub consumer: String,
    /// Its acknowledged position in the shard.
    pub acked_seq: u64,
}

/// A live subscription's claim on its consumer name; released when dropped.
#[derive(Debug)]
pub struct Subscription {
    consumers: Arc<Consumers>,
    consumer: String,
    generation: u64,
    replaced: watch::Receiver<bool>,
}

impl Subscription {
    /// Completes when a newer subscription of the same consumer has taken over.
    pub async fn replaced(&mut self) {
        let _ = self.replaced.wait_for(|replaced| *replaced).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = self.consumers.lock();
        if registry.subscribed.get(&self.consumer).is_some_and(|(g, _)| *g == self.generation) {
            registry.subscribed.remove(&self.consumer);
        }
    }
}

impl Consumers {
    /// Loads the registry stored in `wal`.
    pub(crate) fn load(wal: WalRef, shard_count: u16) -> Result<Consumers, WalError> {
        // Loaded at start, before anything could release it.
        let store = wal.get().expect("a log being loaded is held");
        let cursors = match store.read_meta(CONSUMERS_KEY)? {
            Some(bytes) => decode_registry(&bytes, shard_count).unwrap_or_else(|| {
                // The registry only holds truncation back; an unreadable one is logged loudly
                // and consumers resume from where they say (or the log's start).
                tracing::error!("the stored consumer registry is unreadable; starting empty");
                BTreeMap::new()
            }),
            None => BTreeMap::new(),
        };
        Ok(Consumers { wal, state: Mutex::new(Registry { cursors, ..Registry::default() }) })
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Claims `consumer` for one subscription, registering it at `initial` if it is new;
    /// returns its acknowledged cursor. A subscription already open for the consumer is told
    /// it was replaced: the newest wins, so a consumer restarted after a crash is served at
    /// once instead of waiting for the server to notice the dead connection.
    pub fn subscribe(
        self: &Arc<Self>,
        consumer: &str,
        initial: impl FnOnce() -> Vec<u64>,
    ) -> Result<(Subscription, Vec<u64>), StreamError> {
        if !valid_name(consumer) {
            return Err(StreamError::BadConsumerName(consumer.to_owned()));
        }
        let mut registry = self.lock();
        registry.generation += 1;
        let generation = registry.generation;
        let (replace, replaced) = watch::channel(false);
        if let Some((_, older)) =
            registry.subscribed.insert(consumer.to_owned(), (generation, replace))
        {
            tracing::warn!(consumer, "a newer subscription replaces the open one");
            let _ = older.send(true);
        }
        let subscription = Subscription {
            consumers: self.clone(),
            consumer: consumer.to_owned(),
            generation,
            replaced,
        };
        let (cursor, fresh) = match registry.cursors.get(consumer) {
            Some(cursor) => (cursor.clone(), false),
            None => (initial(), true),
        };
        if fresh {
            registry.cursors.insert(consumer.to_owned(), cursor.clone());
            self.store(&registry)?;
            tracing::info!(consumer, ?cursor, "consumer registered");
        }
        Ok((subscription, cursor))
    }

    /// Records `cursor` as what `consumer` has handled for good (durable on return).
    pub fn acknowledge(&self, consumer: &str, cursor: &[u64]) -> Result<(), StreamError> {
        let mut registry = self.lock();
        registry.cursors.insert(consumer.to_owned(), cursor.to_vec());
        self.store(&registry)
    }

    /// The acknowledged cursor of `consumer`, if registered.
    pub fn cursor(&self, consumer: &str) -> Option<Vec<u64>> {
        self.lock().cursors.get(consumer).cloned()
    }

    /// Every registered consumer: its name, acknowledged cursor, and whether a subscription
    /// of it is open.
    pub fn list(&self) -> Vec<(String, Vec<u64>, bool)> {
        let registry = self.lock();
        let subscribed = |name: &String| registry.subscribed.contains_key(name);
        let cursors = registry.cursors.iter();
        cursors.map(|(name, cursor)| (name.clone(), cursor.clone(), subscribed(name))).collect()
    }

    /// Forgets `consumer` (durably on return): its cursor no longer holds the log back, and
    /// its open subscription, if any, is closed. Whether it was registered.
    pub fn remove(&self, consumer: &str) -> Result<bool, StreamError> {
        let mut registry = self.lock();
        let existed = registry.cursors.remove(consumer).is_some();
        if let Some((_, subscription)) = registry.subscribed.remove(consumer) {
            let _ = subscription.send(true);
        }
        if existed {
            self.store(&registry)?;
            tracing::warn!(consumer, "consumer removed by an admin");
        }
        Ok(existed)
    }

    /// The registered consumer furthest behind in shard `shard`, if any.
    pub fn slowest(&self, shard: u16) -> Option<Holder> {
        let registry = self.lock();
        registry
            .cursors
            .iter()
            .filter_map(|(name, cursor)| {
                let acked_seq = *cursor.get(usize::from(shard))?;
                Some(Holder { consumer: name.clone(), acked_seq })
            })
            .min_by_key(|holder| holder.acked_seq)
    }

    fn store(&self, registry: &Registry) -> Result<(), StreamError> {
        let bytes = encode_registry(&registry.cursors);
        self.wal.get()?.write_meta(CONSUMERS_KEY, &bytes).map_err(StreamError::Store)
    }
}

use flashstock_protocol::tokens::is_valid_consumer_name as valid_name;

/// `count, then per consumer: name length (u8), name, one u64 per shard`, little-endian.
fn encode_registry(cursors: &BTreeMap<String, Vec<u64>>) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(cursors.len() as u32).to_le_bytes());
    for (name, cursor) in cursors {
        bytes.push(name.len() as u8);
        bytes.extend_from_slice(name.as_bytes());
        for seq in cursor {
            bytes.extend_from_slice(&seq.to_le_bytes());
        }
    }
    bytes
}

fn decode_registry(bytes: &[u8], shard_count: u16) -> Option<BTreeMap<String, Vec<u64>>> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        rest = tail;
        Some(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut cursors = BTreeMap::new();
    for _ in 0..count {
        let len = usize::from(take(1)?[0]);
        let name = std::str::from_utf8(take(len)?).ok()?.to_owned();
        let cursor = (0..shard_count)
            .map(|_| take(8).map(|b| u64::from_le_bytes(b.try_into().unwrap())))
            .collect::<Option<Vec<u64>>>()?;
        cursors.insert(name, cursor);
    }
    Some(cursors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_round_trips_and_names_are_checked() {
        let mut cursors = BTreeMap::new();
        cursors.insert("order-writer".to_owned(), vec![5, 0, 77]);
        cursors.insert("a".to_owned(), vec![1, 2, 3]);
        let bytes = encode_registry(&cursors);
        assert_eq!(decode_registry(&bytes, 3), Some(cursors));
        assert_eq!(decode_registry(&bytes[..bytes.len() - 1], 3), None);
        assert!(valid_name("order-writer.eu_1"));
        assert!(!valid_name(""));
        assert!(!valid_name("has space"));
        assert!(!valid_name(&"x".repeat(65)));
    }

    #[tokio::test]
    async fn the_newest_subscription_wins_and_the_slowest_consumer_holds_the_log() {
        let wal: Arc<dyn Wal> = Arc::new(flashstock_wal::MemWal::new());
        let consumers = Arc::new(Consumers::load(WalRef::new(wal.clone()), 2).unwrap());
        let (mut first, cursor) = consumers.subscribe("writer", || vec![3, 4]).unwrap();
        assert_eq!(cursor, vec![3, 4]);
        let (second, cursor) = consumers.subscribe("writer", || vec![0, 0]).unwrap();
        assert_eq!(cursor, vec![3, 4], "registered once");
        tokio::time::timeout(std::time::Duration::from_secs(1), first.replaced()).await.unwrap();
        // The replaced claim going away leaves the newer one in place.
        drop(first);
        assert!(consumers.lock().subscribed.contains_key("writer"));
        drop(second);
        assert!(!consumers.lock().subscribed.contains_key("writer"));
        let (first, _) = consumers.subscribe("writer", || vec![0, 0]).unwrap();
        consumers.acknowledge("writer", &[10, 4]).unwrap();
        let (_other, _) = consumers.subscribe("audit", || vec![7, 9]).unwrap();
        let holder = |consumer: &str, acked_seq| Holder { consumer: consumer.into(), acked_seq };
        assert_eq!(consumers.slowest(0), Some(holder("audit", 7)));
        assert_eq!(consumers.slowest(1), Some(holder("writer", 4)));
        drop(first);
        // Released and durable: a new registry from the same store knows the cursor.
        let (_again, cursor) = consumers.subscribe("writer", || vec![0, 0]).unwrap();
        assert_eq!(cursor, vec![10, 4]);
        let reloaded = Consumers::load(WalRef::new(wal), 2).unwrap();
        assert_eq!(reloaded.cursor("writer"), Some(vec![10, 4]));
    }
}
