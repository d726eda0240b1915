//! The log's one error type.

use std::path::{Path, PathBuf};

use crate::batch::BatchDefect;
use crate::LogId;

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// sled failed (IO error, or corruption of its own files).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// Another process holds the store open (sled's file lock).
    #[error("the store at {path} is in use by another process")]
    Locked {
        /// The store's directory.
        path: PathBuf,
    },
    /// A file operation outside sled failed (the fdatasync after a flush, say).
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// To which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A batch's records exceed what one stored value may hold.
    #[error("batch of {bytes} record bytes exceeds the maximum of {max}")]
    BatchTooLarge {
        /// The batch's record bytes.
        bytes: usize,
        /// The maximum.
        max: usize,
    },
    /// A batch does not start where the previous one ended.
    #[error("log {log}: batch starts at record {found}, expected {expected}")]
    OutOfOrder {
        /// The log.
        log: LogId,
        /// Where the batch should have started.
        expected: u64,
        /// Where it starts.
        found: u64,
    },
    /// A batch in the middle of the log fails validation: the log is damaged where
    /// acknowledged effects live, so recovery must stop rather than skip it.
    #[error("log {log}: batch at record {seq} is corrupt ({defect}) and is not the last batch")]
    Corrupt {
        /// The log.
        log: LogId,
        /// The batch's first record sequence number.
        seq: u64,
        /// What is wrong with it.
        defect: BatchDefect,
    },
    /// Records are missing between two batches, or between the snapshot and the first batch.
    #[error("log {log}: records missing, expected a batch at {expected}, found one at {found}")]
    Gap {
        /// The log.
        log: LogId,
        /// Where the next batch should start.
        expected: u64,
        /// Where the next stored batch starts.
        found: u64,
    },
    /// The latest snapshot is incomplete or fails its checksum.
    #[error("log {log}: snapshot at record {seq} is unusable: {detail}")]
    CorruptSnapshot {
        /// The log.
        log: LogId,
        /// The snapshot's sequence number.
        seq: u64,
        /// What is wrong with it.
        detail: &'static str,
    },
    /// The replay visitor refused a batch (for the engine: a record that does not fit).
    #[error("log {log}: replay of the batch at record {seq} failed: {source}")]
    Visit {
        /// The log.
        log: LogId,
        /// The batch's first record sequence number.
        seq: u64,
        /// The visitor's error.
        source: crate::VisitError,
    },
    /// `discard_tail` named a batch that is not the log's last.
    #[error("log {log}: the batch at record {seq} is not the last batch; refusing to discard it")]
    NotTheTail {
        /// The log.
        log: LogId,
        /// The batch named.
        seq: u64,
    },
    /// A reader asked for records that truncation (after a snapshot) already removed.
    #[error(
        "log {log}: records from {requested} were truncated; the log starts at {first_available}"
    )]
    Truncated {
        /// The log read.
        log: LogId,
        /// The first record asked for.
        requested: u64,
        /// The first record the log still holds.
        first_available: u64,
    },
    /// A fault injected into the in-memory log by a test.
    #[error("injected fault: {0}")]
    InjectedFault(&'static str),
}

/// For `map_err`: an IO failure of `action` on `path`, as a [`WalError::Io`].
pub(crate) fn io_error<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> WalError + 'p {
    move |source| WalError::Io { action, path: path.to_path_buf(), source }
}
