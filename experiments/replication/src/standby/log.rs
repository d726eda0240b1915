//! A node's shard and its log of batches, each batch stored with the epoch that wrote it. The
//! primary decides onto the shard and appends; a standby appends and replays. (The spike keeps
//! the whole log and replays it at start; the build would add the product's snapshots.)

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use flashstock_engine::{EncodedLog, Shard};

use crate::app;
use crate::disk::{self, Disk};
use crate::wire::ClientRequest;

/// One entry: the epoch of the primary that decided it, and its records.
pub type Entry = (u64, Vec<u8>);

pub struct State {
    pub shard: Shard,
    pub last_index: u64,
    /// Where each epoch's entries start, in log order.
    pub boundaries: Vec<(u64, u64)>,
    /// The highest epoch this node accepted batches from (persisted before its first ack).
    pub epoch: u64,
    /// Set from the start of a campaign (and while primary) until a primary's `start`:
    /// no batch is accepted, so none of the old epoch is acknowledged past that point.
    pub fenced: bool,
}

pub struct ShardLog {
    pub disk: Disk,
    state: Mutex<State>,
}

fn encode(epoch: u64, bytes: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + bytes.len());
    value.extend_from_slice(&epoch.to_le_bytes());
    value.extend_from_slice(bytes);
    value
}

fn decode(value: &[u8]) -> (u64, &[u8]) {
    (u64::from_le_bytes(value[..8].try_into().expect("entry header")), &value[8..])
}

impl ShardLog {
    pub fn open(dir: &Path) -> anyhow::Result<ShardLog> {
        let disk = Disk::open(&dir.join("log"))?;
        let epoch = disk
            .meta
            .get("epoch")?
            .map_or(0, |v| u64::from_le_bytes(v.as_ref().try_into().unwrap()));
        let state = rebuild(&disk, u64::MAX, epoch)?;
        Ok(ShardLog { disk, state: Mutex::new(state) })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn audit(&self) -> (u64, u64, u64) {
        let state = self.lock();
        let (sold, digest) = app::audit(&state.shard);
        (sold, digest, state.last_index)
    }

    /// Primary: decides `requests` and appends their records as one entry of `epoch`.
    /// Returns the entry's index (None when nothing changed) and each request's units sold;
    /// `Err` when this node no longer holds `epoch` (a newer primary started it).
    pub fn decide(
        &self,
        epoch: u64,
        requests: &[&ClientRequest],
    ) -> Result<(Option<u64>, Vec<u32>), u64> {
        let mut state = self.lock();
        if state.epoch != epoch {
            return Err(state.epoch);
        }
        let mut log = EncodedLog::default();
        let now_ms = app::now_ms();
        let sold =
            requests.iter().map(|r| app::decide(&mut state.shard, r, now_ms, &mut log)).collect();
        if log.record_count == 0 {
            return Ok((None, sold));
        }
        let index = state.last_index + 1;
        self.put(&mut state, index, epoch, &log.bytes);
        Ok((Some(index), sold))
    }

    fn put(&self, state: &mut State, index: u64, epoch: u64, bytes: &[u8]) {
        self.disk.log.insert(disk::key(index), encode(epoch, bytes)).expect("sled insert");
        if state.boundaries.last().is_none_or(|&(e, _)| e != epoch) {
            state.boundaries.push((epoch, index));
        }
        state.last_index = index;
    }

    /// Standby: takes entries from `first_index` on, replaying them. False when they do not
    /// follow the log (the connection is then dropped and starts over).
    pub fn accept(&self, epoch: u64, first_index: u64, entries: &[Entry]) -> Result<u64, u64> {
        let mut state = self.lock();
        if state.fenced || epoch != state.epoch || first_index != state.last_index + 1 {
            return Err(state.epoch);
        }
        for (i, (entry_epoch, bytes)) in entries.iter().enumerate() {
            app::replay(&mut state.shard, bytes);
            self.put(&mut state, first_index + i as u64, *entry_epoch, bytes);
        }
        Ok(state.last_index)
    }

    /// Standby: a primary of `epoch` will ship from `from`. Refused (with the epoch this node
    /// holds) when `epoch` is older; otherwise the epoch is stored and the log cut at `from`.
    pub fn start(&self, epoch: u64, from: u64) -> Result<(), u64> {
        let mut state = self.lock();
        if epoch < state.epoch {
            return Err(state.epoch);
        }
        state.epoch = epoch;
        state.fenced = false;
        self.disk.meta.insert("epoch", &epoch.to_le_bytes()).expect("sled insert");
        if from <= state.last_index {
            let cut: Vec<_> = self
                .disk
                .log
                .range(disk::key(from)..)
                .keys()
                .map(|k| k.expect("sled read"))
                .collect();
            for key in cut {
                self.disk.log.remove(key).expect("sled remove");
            }
            eprintln!("{} log cut back from {} to {}", app::now_ms(), state.last_index, from - 1);
            *state = rebuild(&self.disk, from - 1, epoch).expect("log replays");
        }
        Ok(())
    }

    /// Stops accepting batches (a campaign starts).
    pub fn fence(&self) {
        self.lock().fenced = true;
    }

    /// Accepts batches of the current epoch again (the campaign was lost).
    pub fn unfence(&self) {
        let mut state = self.lock();
        state.fenced = false;
    }

    /// This node leads `epoch` now: stored before anything of it is shipped.
    pub fn lead(&self, epoch: u64) {
        let mut state = self.lock();
        state.epoch = epoch;
        state.fenced = true;
        self.disk.meta.insert("epoch", &epoch.to_le_bytes()).expect("sled insert");
    }

    /// Entries `from..` (at most `max`), for shipping.
    pub fn entries(&self, from: u64, max: usize) -> Vec<Entry> {
        self.disk
            .log
            .range(disk::key(from)..)
            .take(max)
            .map(|item| {
                let (_, value) = item.expect("sled read");
                let (epoch, bytes) = decode(&value);
                (epoch, bytes.to_vec())
            })
            .collect()
    }

    /// The last index at which a log with `theirs` boundaries and `their_last` index agrees with
    /// this one (same epoch at the same index means the same entry and the same log before it).
    pub fn agreed(&self, theirs: &[(u64, u64)], their_last: u64) -> u64 {
        let state = self.lock();
        let mut i = their_last.min(state.last_index);
        while i > 0 {
            let (mine, my_start) = epoch_at(&state.boundaries, i);
            let (other, their_start) = epoch_at(theirs, i);
            if mine == other {
                return i;
            }
            i = my_start.max(their_start) - 1;
        }
        0
    }
}

fn epoch_at(boundaries: &[(u64, u64)], index: u64) -> (u64, u64) {
    boundaries.iter().rev().find(|&&(_, start)| start <= index).copied().unwrap_or((0, 1))
}

/// The state after replaying entries `1..=up_to`.
fn rebuild(disk: &Disk, up_to: u64, epoch: u64) -> anyhow::Result<State> {
    let mut state = State {
        shard: app::new_shard(),
        last_index: 0,
        boundaries: Vec::new(),
        epoch,
        fenced: false,
    };
    for item in disk.log.iter() {
        let (key, value) = item?;
        let index = disk::index_of(&key);
        if index > up_to {
            break;
        }
        let (entry_epoch, bytes) = decode(&value);
        app::replay(&mut state.shard, bytes);
        if state.boundaries.last().is_none_or(|&(e, _)| e != entry_epoch) {
            state.boundaries.push((entry_epoch, index));
        }
        state.last_index = index;
    }
    Ok(state)
}
