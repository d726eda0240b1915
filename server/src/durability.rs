//! The durability thread: group commit. It takes every batch waiting, appends each to its
//! shard's log, syncs once, and only then releases the batches' replies. Snapshots are written
//! after the records they cover are durable, and the log below them is truncated.
//!
//! A failed append or sync is final: the batch's effects are in memory but not durable, so the
//! runtime stops acknowledging anything (fail-stop) until a restart recovers what is durable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::Receiver;
use flashstock_wal::{LogId, Wal};

use crate::actor::{Answer, Reply};
use crate::error::RuntimeError;

/// The most jobs one group commit takes.
const GROUP_JOBS_MAX: usize = 1024;

/// Work for the durability thread.
#[derive(Debug)]
pub(crate) enum WalJob {
    /// One actor step: its records (possibly none) and the replies they gate.
    Commit {
        log: LogId,
        first_seq: u64,
        record_count: u32,
        records: Vec<u8>,
        replies: Vec<(Reply, Answer)>,
    },
    /// A shard snapshot covering the records below `seq`.
    Snapshot { log: LogId, seq: u64, state: Vec<u8> },
}

/// Set once the log fails; read by handles to refuse work at once.
#[derive(Debug, Default)]
pub(crate) struct Failure {
    failed: AtomicBool,
    reason: Mutex<String>,
}

impl Failure {
    pub(crate) fn reason(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        Some(self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn set(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        self.failed.store(true, Ordering::Release);
    }
}

/// Counters of the group commit, for reports and benchmarks.
#[derive(Debug, Default)]
pub struct DurabilityStats {
    /// Syncs performed.
    pub syncs: AtomicU64,
    /// Batches appended.
    pub batches: AtomicU64,
    /// Records appended.
    pub records: AtomicU64,
    /// Snapshots written.
    pub snapshots: AtomicU64,
    /// Total time spent in sync, in microseconds.
    pub sync_us_total: AtomicU64,
}

pub(crate) struct Durability<W> {
    pub(crate) wal: W,
    pub(crate) jobs: Receiver<WalJob>,
    pub(crate) failure: Arc<Failure>,
    pub(crate) stats: Arc<DurabilityStats>,
}

impl<W: Wal> Durability<W> {
    pub(crate) fn run(mut self) {
        let mut group = Vec::with_capacity(GROUP_JOBS_MAX);
        while let Ok(first) = self.jobs.recv() {
            group.push(first);
            while group.len() < GROUP_JOBS_MAX {
                match self.jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            self.commit(&mut group);
        }
        tracing::debug!("durability thread stopped");
    }

    fn commit(&mut self, group: &mut Vec<WalJob>) {
        let durable = self.append_and_sync(group);
        for job in group.drain(..) {
            match job {
                WalJob::Commit { replies, .. } => {
                    for (reply, answer) in replies {
                        let answer = match &durable {
                            Ok(()) => Ok(answer),
                            Err(reason) => Err(RuntimeError::WalFailed { reason: reason.clone() }),
                        };
                        // The caller may have given up waiting; that is its business.
                        let _ = reply.send(answer);
                    }
                }
                WalJob::Snapshot { log, seq, state } if durable.is_ok() => {
                    self.write_snapshot(log, seq, &state);
                }
                WalJob::Snapshot { .. } => {}
            }
        }
    }

    fn append_and_sync(&mut self, group: &[WalJob]) -> Result<(), String> {
        if let Some(reason) = self.failure.reason() {
            return Err(reason);
        }
        let mut appended = false;
        for job in group {
            if let WalJob::Commit { log, first_seq, record_count, records, .. } = job {
                if *record_count == 0 {
                    continue;
                }
                if let Err(err) = self.wal.append(*log, *first_seq, *record_count, records) {
                    return Err(self.fail(format!("append to log {log}: {err}")));
                }
                appended = true;
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.records.fetch_add(u64::from(*record_count), Ordering::Relaxed);
            }
        }
        if appended {
            let started = Instant::now();
            if let Err(err) = self.wal.sync() {
                return Err(self.fail(format!("sync: {err}")));
            }
            let sync_us = started.elapsed().as_micros() as u64;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.stats.sync_us_total.fetch_add(sync_us, Ordering::Relaxed);
        }
        Ok(())
    }

    fn fail(&self, reason: String) -> String {
        tracing::error!(%reason, "write-ahead log failed; no further requests are acknowledged");
        self.failure.set(reason.clone());
        reason
    }

    fn write_snapshot(&mut self, log: LogId, seq: u64, state: &[u8]) {
        // A failed snapshot loses nothing: the log still holds every record, and the previous
        // snapshot stays in force. Report it and carry on.
        let written = self.wal.write_snapshot(log, seq, state);
        let truncated = written.and_then(|()| self.wal.truncate_below(log, seq));
        match truncated {
            Ok(()) => {
                self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(log, seq, bytes = state.len(), "snapshot written");
            }
            Err(err) => tracing::warn!(log, seq, %err, "snapshot failed; the log is kept"),
        }
    }
}
