//! Snapshot files: each shard's snapshots as plain files beside sled's, not inside it.
//!
//! sled has one flush for the whole store, so snapshot chunks stored in sled were written out
//! by whichever log sync came next: every commit in flight while a 100 MB snapshot was being
//! stored inherited up to 4 MiB of it. A file of its own is synced on its own, and a log sync
//! writes only log batches.
//!
//! A snapshot is written to `shard-LLLLL-SSSS.partial`, synced, renamed to `.snapshot`, and the
//! directory synced: a crash leaves either the previous snapshot or the new one, never half of
//! one. Older snapshots of the shard are removed only after that. The file is a 32-byte header
//! (magic, format version, log, sequence number, length, CRC-32 of the state) and the state.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::io_error;
use crate::{LogId, Snapshot, WalError};

const FILE_MAGIC: [u8; 4] = *b"FSSF";
const FILE_VERSION: u16 = 1;
const HEADER_BYTES: usize = 32;
/// Bytes written between syncs of a snapshot file: the most of it the disk's queue holds at
/// once, ahead of a concurrent log sync.
const SYNC_BYTES: usize = 4 << 20;
const SUFFIX: &str = ".snapshot";
const PARTIAL_SUFFIX: &str = ".partial";

/// The directory of snapshot files.
#[derive(Debug)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    /// Opens (creating, durably) the directory `dir`.
    pub(crate) fn open(dir: PathBuf) -> Result<SnapshotFiles, WalError> {
        std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let files = SnapshotFiles { dir };
        if let Some(parent) = files.dir.parent() {
            sync_dir(parent)?;
        }
        Ok(files)
    }

    fn prefix(log: LogId) -> String {
        format!("shard-{log:05}-")
    }

    fn path(&self, log: LogId, seq: u64, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}{seq:020}{suffix}", SnapshotFiles::prefix(log)))
    }

    /// Stores the snapshot of `log` covering records below `seq`; durable on return.
    pub(crate) fn write(&self, log: LogId, seq: u64, state: &[u8]) -> Result<(), WalError> {
        let partial = self.path(log, seq, PARTIAL_SUFFIX);
        let mut file = File::create(&partial).map_err(io_error("create", &partial))?;
        file.write_all(&header(log, seq, state)).map_err(io_error("write", &partial))?;
        for piece in state.chunks(SYNC_BYTES) {
            file.write_all(piece).map_err(io_error("write", &partial))?;
            file.sync_data().map_err(io_error("fdatasync", &partial))?;
        }
        let path = self.path(log, seq, SUFFIX);
        std::fs::rename(&partial, &path).map_err(io_error("rename", &partial))?;
        sync_dir(&self.dir)?;
        for (older, name) in self.listed(log)? {
            let stale_partial = name.ends_with(PARTIAL_SUFFIX) && older != seq;
            if stale_partial || (name.ends_with(SUFFIX) && older < seq) {
                let old = self.dir.join(&name);
                std::fs::remove_file(&old).map_err(io_error("remove", &old))?;
            }
        }
        Ok(())
    }

    /// The newest snapshot file of `log`, checked; `None` when it has none.
    pub(crate) fn latest(&self, log: LogId) -> Result<Option<Snapshot>, WalError> {
        let newest = self
            .listed(log)?
            .into_iter()
            .filter(|(_, name)| name.ends_with(SUFFIX))
            .max_by_key(|&(seq, _)| seq);
        let Some((seq, _)) = newest else { return Ok(None) };
        let path = self.path(log, seq, SUFFIX);
        let bytes = std::fs::read(&path).map_err(io_error("read", &path))?;
        let corrupt = |detail| WalError::CorruptSnapshot { log, seq, detail };
        if bytes.len() < HEADER_BYTES {
            return Err(corrupt("file shorter than its header"));
        }
        let (head, state) = bytes.split_at(HEADER_BYTES);
        if head[..4] != FILE_MAGIC || u16::from_le_bytes([head[4], head[5]]) != FILE_VERSION {
            return Err(corrupt("not a snapshot file of this format"));
        }
        if head != header(log, seq, state) {
            return Err(corrupt("checksum, length or name mismatch"));
        }
        Ok(Some(Snapshot { seq, state: state.to_vec() }))
    }

    /// `(seq, file name)` of every file of `log`, complete or partial.
    fn listed(&self, log: LogId) -> Result<Vec<(u64, String)>, WalError> {
        let prefix = SnapshotFiles::prefix(log);
        let entries = std::fs::read_dir(&self.dir).map_err(io_error("list", &self.dir))?;
        let mut found = Vec::new();
        for entry in entries {
            let name = entry.map_err(io_error("list", &self.dir))?.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix(&prefix) else { continue };
            let digits = rest.strip_suffix(SUFFIX).or_else(|| rest.strip_suffix(PARTIAL_SUFFIX));
            if let Some(seq) = digits.and_then(|digits| digits.parse::<u64>().ok()) {
                found.push((seq, name.to_owned()));
            }
        }
        Ok(found)
    }
}

fn header(log: LogId, seq: u64, state: &[u8]) -> [u8; HEADER_BYTES] {
    let mut out = [0u8; HEADER_BYTES];
    out[..4].copy_from_slice(&FILE_MAGIC);
    out[4..6].copy_from_slice(&FILE_VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&log.to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..24].copy_from_slice(&(state.len() as u64).to_le_bytes());
    out[24..28].copy_from_slice(&crc32fast::hash(state).to_le_bytes());
    out
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    let handle = File::open(dir).map_err(io_error("open", dir))?;
    handle.sync_all().map_err(io_error("fsync", dir))
}
