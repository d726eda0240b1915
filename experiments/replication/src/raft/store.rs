//! openraft's storage over sled: the log (entries, vote, purge point) and the state machine
//! (a flashstock shard built by `Shard::replay`, snapshots as the engine's snapshot encoding).

// openraft's traits fix the error type (`StorageError`, 224 bytes); the helpers return it too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use flashstock_engine::{Shard, ShardConfig, ShardId};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use serde::{Deserialize, Serialize};

use super::Tc;
use crate::app;
use crate::disk::{self, Disk};

type Error = StorageError<u64>;

fn write_err(e: impl std::error::Error + 'static) -> Error {
    StorageIOError::write(openraft::AnyError::new(&e)).into()
}

fn read_err(e: impl std::error::Error + 'static) -> Error {
    StorageIOError::read(openraft::AnyError::new(&e)).into()
}

/// The raft log on sled: key = index, value = bincode of the entry.
#[derive(Clone)]
pub struct LogStore {
    disk: Disk,
}

impl LogStore {
    pub fn new(disk: Disk) -> LogStore {
        LogStore { disk }
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, Error> {
        match self.disk.meta.get(name).map_err(read_err)? {
            Some(bytes) => Ok(Some(bincode::deserialize(&bytes).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, name: &str, value: &T) -> Result<(), Error> {
        let bytes = bincode::serialize(value).map_err(write_err)?;
        self.disk.meta.insert(name, bytes).map_err(write_err)?;
        Ok(())
    }

    fn remove_range(&self, from: u64, to_inclusive: u64) -> Result<(), Error> {
        let keys: Vec<_> = self
            .disk
            .log
            .range(disk::key(from)..=disk::key(to_inclusive))
            .keys()
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        for key in keys {
            self.disk.log.remove(key).map_err(write_err)?;
        }
        Ok(())
    }
}

impl RaftLogReader<Tc> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Tc>>, Error> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.disk.log.range(disk::key(start)..) {
            let (key, value) = item.map_err(read_err)?;
            if !range.contains(&disk::index_of(&key)) {
                break;
            }
            entries.push(bincode::deserialize(&value).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<Tc> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<Tc>, Error> {
        let last_purged_log_id: Option<LogId<u64>> = self.meta("purged")?;
        let last = match self.disk.log.last().map_err(read_err)? {
            Some((_, value)) => {
                let entry: Entry<Tc> = bincode::deserialize(&value).map_err(read_err)?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), Error> {
        self.put_meta("vote", vote)?;
        self.disk.sync().await.map_err(write_err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, Error> {
        self.meta("vote")
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Tc>) -> Result<(), Error>
    where
        I: IntoIterator<Item = Entry<Tc>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        for entry in entries {
            let value = bincode::serialize(&entry).map_err(write_err)?;
            self.disk.log.insert(disk::key(entry.log_id.index), value).map_err(write_err)?;
        }
        // Group commit: the sync thread syncs once for every append queued since its last sync.
        self.disk.after_sync(move |synced| callback.log_io_completed(synced));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), Error> {
        self.remove_range(log_id.index, u64::MAX)?;
        self.disk.sync().await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), Error> {
        self.put_meta("purged", &log_id)?;
        self.remove_range(0, log_id.index)
    }
}

/// The committed shard and what openraft needs beside it.
pub struct SmState {
    pub shard: Shard,
    pub applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
}

/// The state machine; the node's proposer reads the shard through `state`.
#[derive(Clone)]
pub struct StateMachine {
    pub state: Arc<Mutex<SmState>>,
    snapshot_path: PathBuf,
}

impl StateMachine {
    /// Opens the state machine from the last snapshot file, or empty.
    pub fn open(dir: &Path) -> anyhow::Result<StateMachine> {
        let snapshot_path = dir.join("snapshot.bin");
        let mut state = SmState {
            shard: app::new_shard(),
            applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
        };
        if let Ok(bytes) = std::fs::read(&snapshot_path) {
            let (meta, data): (SnapshotMeta<u64, BasicNode>, Vec<u8>) =
                bincode::deserialize(&bytes)?;
            state.shard = Shard::restore(ShardId(0), ShardConfig::default(), &data)?;
            state.applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            state.snapshot = Some((meta, data));
        }
        Ok(StateMachine { state: Arc::new(Mutex::new(state)), snapshot_path })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SmState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep(&self, meta: &SnapshotMeta<u64, BasicNode>, data: &[u8]) -> Result<(), Error> {
        let bytes = bincode::serialize(&(meta, data)).map_err(write_err)?;
        let tmp = self.snapshot_path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(write_err)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(write_err)?;
        std::fs::rename(&tmp, &self.snapshot_path).map_err(write_err)
    }
}

impl RaftSnapshotBuilder<Tc> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Tc>, Error> {
        let (meta, data) = {
            let state = self.lock();
            let mut data = Vec::new();
            state.shard.encode_snapshot(&mut data);
            let id = state.applied.map_or(0, |l| l.index);
            let meta = SnapshotMeta {
                last_log_id: state.applied,
                last_membership: state.membership.clone(),
                snapshot_id: format!("{id}"),
            };
            (meta, data)
        };
        self.keep(&meta, &data)?;
        self.lock().snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<Tc> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), Error> {
        let state = self.lock();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, Error>
    where
        I: IntoIterator<Item = Entry<Tc>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.lock();
        let mut replies = Vec::new();
        for entry in entries {
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => app::replay(&mut state.shard, &batch.0),
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                }
            }
            state.applied = Some(entry.log_id);
            replies.push(());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Error> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Error> {
        let data = snapshot.into_inner();
        let shard = Shard::restore(ShardId(0), ShardConfig::default(), &data).map_err(write_err)?;
        self.keep(meta, &data)?;
        let mut state = self.lock();
        state.shard = shard;
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Tc>>, Error> {
        let state = self.lock();
        Ok(state.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}
