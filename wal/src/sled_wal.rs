//! `SledWal`: the production log on sled 0.34.
//!
//! Layout: tree `log.<id>` maps a batch's first sequence number (big-endian, so sled's order is
//! log order) to the batch; tree `meta` holds store-wide values. Snapshots are files in
//! `shard-snapshots/` (see [`crate::snapshot_files`]), outside sled, so that writing one adds
//! nothing to a log sync. Stores written before that kept them in sled (tree `snap.<id>`,
//! chunks keyed by (seq, chunk index), header in `meta`); those are still read, and removed
//! once a snapshot file replaces them.
//!
//! Blobs: see [`SLED_SEGMENT_BYTES`]; a test asserts `blobs/` stays empty under load.
//!
//! Durability: sled's `flush` writes its buffers with `pwrite` and `sync_file_range`, which
//! reaches neither the drive's cache nor the file's metadata. `sync` therefore follows it with
//! `fdatasync` of sled's data file, which does both; sled keeps everything but blobs in that
//! one file, and batches and snapshot chunks are kept small enough never to become blobs.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::batch::{self, BATCH_RECORDS_BYTES_MAX};
use crate::error::io_error;
use crate::snapshot_files::SnapshotFiles;
use crate::{BatchRef, LogId, ReplaySummary, Snapshot, VisitError, Wal, WalError};

/// Bytes per snapshot chunk in stores that kept snapshots in sled: the same bound as a batch.
#[cfg(test)]
const LEGACY_SNAPSHOT_CHUNK_BYTES: usize = 60 * 1024;

/// sled's segment size. sled writes any log item above a quarter of a segment to a blob file
/// it never fsyncs, and a leaf node is one item holding up to 17 values (leaves split by count,
/// not size). With 8 MiB segments the threshold is 2 MiB, above 17 full 64 KiB batches.
pub const SLED_SEGMENT_BYTES: usize = 8 << 20;

const _: () = assert!(17 * (BATCH_RECORDS_BYTES_MAX + 64) < SLED_SEGMENT_BYTES / 4 - 64);

/// How to open a [`SledWal`].
#[derive(Clone, Debug)]
pub struct SledWalConfig {
    /// The directory sled keeps its files in.
    pub path: PathBuf,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// Whether `sync` also fdatasyncs sled's data file (it must, for real durability; turning
    /// it off exists only to measure what it costs).
    pub fdatasync: bool,
}

impl SledWalConfig {
    /// The defaults for a store in `path`.
    pub fn new(path: impl Into<PathBuf>) -> SledWalConfig {
        SledWalConfig { path: path.into(), cache_bytes: 256 << 20, fdatasync: true }
    }
}

/// A write-ahead log in sled. See the module documentation for layout and durability.
#[derive(Debug)]
pub struct SledWal {
    db: sled::Db,
    meta: sled::Tree,
    /// The appender's bookkeeping. Appends come from one thread, so the lock is uncontended;
    /// it exists because every method takes `&self` (sled's own API does too).
    appender: Mutex<Appender>,
    data_file: Option<(PathBuf, File)>,
    snapshots: SnapshotFiles,
}

#[derive(Debug, Default)]
struct Appender {
    /// Each log's batch tree, opened on first use.
    batches: Vec<Option<sled::Tree>>,
    /// Where each log's next batch must start, once known.
    next_seq: Vec<Option<u64>>,
    /// A reused buffer for encoding batches.
    scratch: Vec<u8>,
}

impl Appender {
    fn slot(
        &mut self,
        db: &sled::Db,
        log: LogId,
    ) -> Result<(sled::Tree, &mut Option<u64>), WalError> {
        let index = usize::from(log);
        if self.batches.len() <= index {
            self.batches.resize_with(index + 1, || None);
            self.next_seq.resize(index + 1, None);
        }
        if self.batches[index].is_none() {
            self.batches[index] = Some(db.open_tree(batch_tree(log))?);
        }
        let tree = self.batches[index].clone().expect("opened above");
        Ok((tree, &mut self.next_seq[index]))
    }
}

fn batch_tree(log: LogId) -> String {
    format!("log.{log}")
}

fn chunk_tree(log: LogId) -> String {
    format!("snap.{log}")
}

impl SledWal {
    /// Opens (or creates) the store described by `config`.
    pub fn open(config: &SledWalConfig) -> Result<SledWal, WalError> {
        let db = open_db(config)?;
        let data_file = if config.fdatasync {
            let path = config.path.join("db");
            let file = File::open(&path).map_err(io_error("open", &path))?;
            // The data file's directory entry must be durable too: sync the directory once.
            let dir = File::open(&config.path).map_err(io_error("open", &config.path))?;
            dir.sync_all().map_err(io_error("fsync", &config.path))?;
            Some((path, file))
        } else {
            None
        };
        let meta = db.open_tree("meta")?;
        let snapshots = SnapshotFiles::open(config.path.join("shard-snapshots"))?;
        let appender = Mutex::new(Appender::default());
        Ok(SledWal { db, meta, appender, data_file, snapshots })
    }

    /// Bytes sled says the store occupies on disk.
    pub fn size_on_disk_bytes(&self) -> Result<u64, WalError> {
        Ok(self.db.size_on_disk()?)
    }

    fn appender(&self) -> std::sync::MutexGuard<'_, Appender> {
        self.appender.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn flush_and_sync(&self) -> Result<(), WalError> {
        self.db.flush()?;
        if let Some((path, file)) = &self.data_file {
            file.sync_data().map_err(io_error("fdatasync", path))?;
        }
        Ok(())
    }
}

/// How long `open` waits for sled's file lock. A store just closed in this process can hold
/// it for a moment while sled's background threads wind down; another process holding it past
/// this is reported as `WalError::Locked`.
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn open_db(config: &SledWalConfig) -> Result<sled::Db, WalError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .segment_size(SLED_SEGMENT_BYTES)
            // We sync explicitly after each group commit; sled's own timer would only add
            // background fsyncs competing with ours.
            .flush_every_ms(None)
            .open();
        match opened {
            Err(sled::Error::Io(err)) if err.to_string().contains("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(WalError::Locked { path: config.path.clone() });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}

fn snapshot_meta_key(log: LogId) -> String {
    format!("snapshot.{log}")
}

impl Wal for SledWal {
    fn append(
        &self,
        log: LogId,
        first_seq: u64,
        record_count: u32,
        records: &[u8],
    ) -> Result<(), WalError> {
        batch::check_size(records)?;
        let mut appender = self.appender();
        let Appender { scratch, .. } = &mut *appender;
        let mut value = std::mem::take(scratch);
        let (batches, next_seq) = appender.slot(&self.db, log)?;
        if next_seq.is_none() {
            // First append since opening: continue from what is stored, if anything.
            *next_seq = stored_end(&batches)?;
        }
        if let Some(expected) = *next_seq {
            if expected != first_seq {
                return Err(WalError::OutOfOrder { log, expected, found: first_seq });
            }
        }
        batch::encode(log, first_seq, record_count, records, &mut value);
        let stored = batches.insert(first_seq.to_be_bytes(), value.as_slice());
        if stored.is_ok() {
            *next_seq = Some(first_seq + u64::from(record_count));
        }
        appender.scratch = value;
        stored?;
        Ok(())
    }

    fn sync(&self) -> Result<(), WalError> {
        self.flush_and_sync()
    }

    fn replay(
        &self,
        log: LogId,
        from_seq: u64,
        visit: &mut dyn FnMut(BatchRef<'_>) -> Result<(), VisitError>,
    ) -> Result<ReplaySummary, WalError> {
        let batches = self.db.open_tree(batch_tree(log))?;
        let stored = batches.range(from_seq.to_be_bytes()..).map(|entry| {
            let (key, value) = entry?;
            let key_seq = key_seq(&key);
            Ok((key_seq, value))
        });
        batch::replay_stored(log, from_seq, stored, visit)
    }

    fn read(
        &self,
        log: LogId,
        from_seq: u64,
        until_seq: u64,
        visit: &mut dyn FnMut(BatchRef<'_>) -> bool,
    ) -> Result<(), WalError> {
        let batches = self.db.open_tree(batch_tree(log))?;
        let preceding = batches.range(..=from_seq.to_be_bytes()).next_back().transpose()?;
        let start =
            batch::read_start(from_seq, preceding.as_ref().map(|(k, v)| (key_seq(k), &v[..])));
        let stored = batches.range(start.to_be_bytes()..).map(|entry| {
            let (key, value) = entry?;
            let key_seq = key_seq(&key);
            Ok((key_seq, value))
        });
        batch::read_stored(log, from_seq, until_seq, stored, visit)
    }

    fn discard_tail(&self, log: LogId, seq: u64) -> Result<(), WalError> {
        let mut appender = self.appender();
        let (batches, next_seq) = appender.slot(&self.db, log)?;
        let last = batches.last()?.map(|(key, _)| key);
        if last.as_deref() != Some(&seq.to_be_bytes()[..]) {
            return Err(WalError::NotTheTail { log, seq });
        }
        batches.remove(seq.to_be_bytes())?;
        self.flush_and_sync()?;
        *next_seq = Some(seq);
        Ok(())
    }

    fn write_snapshot(&self, log: LogId, seq: u64, state: &[u8]) -> Result<(), WalError> {
        self.snapshots.write(log, seq, state)?;
        // A snapshot kept in sled by an older build is now superseded.
        if self.meta.remove(snapshot_meta_key(log))?.is_some() {
            self.db.drop_tree(chunk_tree(log))?;
            self.flush_and_sync()?;
        }
        Ok(())
    }

    fn latest_snapshot(&self, log: LogId) -> Result<Option<Snapshot>, WalError> {
        match self.snapshots.latest(log)? {
            Some(snapshot) => Ok(Some(snapshot)),
            None => self.legacy_snapshot(log),
        }
    }

    fn truncate_below(&self, log: LogId, seq: u64) -> Result<(), WalError> {
        let batches = self.db.open_tree(batch_tree(log))?;
        for entry in batches.range(..seq.to_be_bytes()) {
            let (key, value) = entry?;
            let first_seq = key_seq(&key);
            let count = batch::record_count_of(&value).unwrap_or(u32::MAX);
            if first_seq.saturating_add(u64::from(count)) <= seq {
                batches.remove(key)?;
            }
        }
        Ok(())
    }

    fn read_meta(&self, key: &str) -> Result<Option<Vec<u8>>, WalError> {
        Ok(self.meta.get(format!("user.{key}"))?.map(|v| v.to_vec()))
    }

    fn write_meta(&self, key: &str, value: &[u8]) -> Result<(), WalError> {
        self.meta.insert(format!("user.{key}"), value)?;
        self.flush_and_sync()
    }
}

impl SledWal {
    /// The snapshot a store written before snapshot files kept in sled, if any.
    fn legacy_snapshot(&self, log: LogId) -> Result<Option<Snapshot>, WalError> {
        let Some(raw) = self.meta.get(snapshot_meta_key(log))? else {
            return Ok(None);
        };
        let header = SnapshotHeader::decode(&raw).ok_or(WalError::CorruptSnapshot {
            log,
            seq: 0,
            detail: "header unreadable",
        })?;
        let corrupt = |detail| WalError::CorruptSnapshot { log, seq: header.seq, detail };
        let chunks = self.db.open_tree(chunk_tree(log))?;
        let mut state = Vec::with_capacity(header.len as usize);
        for index in 0..header.chunk_count {
            let chunk =
                chunks.get(chunk_key(header.seq, index))?.ok_or(corrupt("chunk missing"))?;
            state.extend_from_slice(&chunk);
        }
        if state.len() as u64 != header.len || crc32fast::hash(&state) != header.crc {
            return Err(corrupt("checksum or length mismatch"));
        }
        Ok(Some(Snapshot { seq: header.seq, state }))
    }

    /// Stores a snapshot the way builds before snapshot files did, to test reading one.
    #[cfg(test)]
    fn write_legacy_snapshot(&self, log: LogId, seq: u64, state: &[u8]) -> Result<(), WalError> {
        let chunks = self.db.open_tree(chunk_tree(log))?;
        let chunk_count = state.chunks(LEGACY_SNAPSHOT_CHUNK_BYTES).count() as u32;
        for (index, chunk) in state.chunks(LEGACY_SNAPSHOT_CHUNK_BYTES).enumerate() {
            chunks.insert(chunk_key(seq, index as u32), chunk)?;
        }
        let crc = crc32fast::hash(state);
        let header = SnapshotHeader { seq, len: state.len() as u64, chunk_count, crc };
        self.meta.insert(snapshot_meta_key(log), header.encode().as_slice())?;
        self.flush_and_sync()
    }
}

/// Where the stored log ends: the last batch's first sequence number plus its record count.
fn stored_end(batches: &sled::Tree) -> Result<Option<u64>, WalError> {
    let Some((key, value)) = batches.last()? else { return Ok(None) };
    let first_seq = key_seq(&key);
    Ok(batch::record_count_of(&value).map(|count| first_seq.saturating_add(u64::from(count))))
}

/// The sequence number a batch key names (big-endian); a malformed key sorts last.
fn key_seq(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX)
}

fn chunk_key(seq: u64, index: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&seq.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The header that made a snapshot kept in sled visible once all its chunks were durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotHeader {
    pub(crate) seq: u64,
    pub(crate) len: u64,
    pub(crate) chunk_count: u32,
    pub(crate) crc: u32,
}

impl SnapshotHeader {
    #[cfg(test)]
    pub(crate) fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..20].copy_from_slice(&self.chunk_count.to_le_bytes());
        out[20..].copy_from_slice(&self.crc.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<SnapshotHeader> {
        let bytes: &[u8; 24] = bytes.try_into().ok()?;
        Some(SnapshotHeader {
            seq: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            len: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
            chunk_count: u32::from_le_bytes(bytes[16..20].try_into().ok()?),
            crc: u32::from_le_bytes(bytes[20..].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store from a build that kept snapshots in sled recovers from that snapshot, and the
    /// first snapshot file supersedes it (and removes it).
    #[test]
    fn a_snapshot_kept_in_sled_by_an_older_build_is_read_then_superseded() {
        let dir = tempfile::tempdir().unwrap();
        let config = SledWalConfig::new(dir.path());
        let wal = SledWal::open(&config).unwrap();
        let old_state: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        wal.write_legacy_snapshot(3, 1_000, &old_state).unwrap();
        let found = wal.latest_snapshot(3).unwrap().unwrap();
        assert_eq!((found.seq, found.state.len()), (1_000, old_state.len()));
        assert_eq!(found.state, old_state);

        wal.write_snapshot(3, 2_000, b"newer").unwrap();
        drop(wal);
        let wal = SledWal::open(&config).unwrap();
        let found = wal.latest_snapshot(3).unwrap().unwrap();
        assert_eq!((found.seq, &found.state[..]), (2_000, &b"newer"[..]));
        assert!(wal.legacy_snapshot(3).unwrap().is_none(), "the sled copy is gone");
    }
}
