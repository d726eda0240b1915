//! The checkpoint thread: snapshots that never stop a shard.
//!
//! A snapshot of a busy shard is hundreds of MB; encoding it on the shard's own thread froze
//! that shard for 90 ms to a second, and every caller of it waited. Instead the checkpoint
//! thread keeps a *replica* of each shard: a copy taken when the runtime starts, kept current
//! by replaying the shard's durable log records through the engine's own `replay` (the path
//! recovery takes). A snapshot is the replica's encoding at a batch boundary; the shard thread
//! takes no part in it.
//!
//! Costs, paid on this thread: one more copy of each shard's state in memory, and replaying
//! every logged record once more (recovery speed, a fraction of a core at full load). In
//! return each snapshot is also checked: the replica is the log's own account of the state, so
//! a record that would not replay is found while the server runs, not at the next restart.
//!
//! Policy (unchanged from when shards snapshotted themselves): a shard is due when enough
//! records or time have passed *and* the log written since its last snapshot is at least
//! `snapshot_log_ratio` times that snapshot; at shutdown every shard with new records is
//! snapshotted once the durability thread has drained.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use flashstock_engine::Shard;
use flashstock_wal::{LogId, Wal};

use crate::clock::Clock;
use crate::config::RuntimeConfig;
use crate::durability::{DurabilityStats, DurableEnds};
use crate::metrics::{self as metrics_names, SnapshotMetrics};
use crate::recovery::replay_batch;
use crate::stream::Consumers;

/// How often the checkpoint thread catches its replicas up with the durable log: the replay
/// work comes in pieces of about this many milliseconds of log, read while sled still has
/// them in its cache.
const CATCH_UP_INTERVAL: Duration = Duration::from_millis(10);

/// How long after a failed snapshot the next attempt waits, doubling with each failure in a
/// row up to `snapshot_every_ms`: each attempt encodes the whole state again (a full disk
/// once had the thread re-encoding 150 MB every 50 ms).
const SNAPSHOT_RETRY_MS_MIN: u64 = 1_000;

/// One shard's replica and its snapshot bookkeeping.
struct Replica {
    log: LogId,
    /// `None` once a record failed to replay: the shard is no longer snapshotted (its log is
    /// kept whole) and the failure is reported once.
    shard: Option<Shard>,
    /// The first record the replica has not replayed; always a batch boundary.
    next_seq: u64,
    records_since_snapshot: u64,
    log_bytes_since_snapshot: u64,
    last_snapshot_bytes: u64,
    last_snapshot_ms: u64,
    /// After a failed snapshot: no attempt before this time, and the wait that led to it.
    retry: Option<(u64, u64)>,
    metrics: SnapshotMetrics,
}

pub(crate) struct Checkpointer<W> {
    wal: Arc<W>,
    replicas: Vec<Replica>,
    durable_ends: DurableEnds,
    consumers: Arc<Consumers>,
    config: RuntimeConfig,
    clock: Arc<dyn Clock>,
    /// Disconnected when the runtime stops, after the durability thread has drained.
    stop: Receiver<()>,
    stats: Arc<DurabilityStats>,
    /// The one encoding buffer, reused: a fresh one of hundreds of MB costs ~100 ms of page
    /// faults every time.
    buffer: Vec<u8>,
}

/// What the checkpoint thread needs besides the replicas.
pub(crate) struct CheckpointParts<W> {
    pub(crate) wal: Arc<W>,
    pub(crate) durable_ends: DurableEnds,
    pub(crate) consumers: Arc<Consumers>,
    pub(crate) config: RuntimeConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) stop: Receiver<()>,
    pub(crate) stats: Arc<DurabilityStats>,
}

impl<W: Wal> Checkpointer<W> {
    /// A checkpointer for shards recovered to `(replica, next_seq)`; each replica is a copy of
    /// the shard its actor starts from.
    pub(crate) fn new(parts: CheckpointParts<W>, shards: Vec<(Shard, u64)>) -> Checkpointer<W> {
        let now_ms = parts.clock.now_ms();
        let replicas = shards
            .into_iter()
            .map(|(shard, next_seq)| Replica {
                log: shard.id().0,
                metrics: SnapshotMetrics::new(shard.id().0),
                shard: Some(shard),
                next_seq,
                records_since_snapshot: 0,
                log_bytes_since_snapshot: 0,
                last_snapshot_bytes: 0,
                last_snapshot_ms: now_ms,
                retry: None,
            })
            .collect();
        let CheckpointParts { wal, durable_ends, consumers, config, clock, stop, stats } = parts;
        Checkpointer {
            wal,
            replicas,
            durable_ends,
            consumers,
            config,
            clock,
            stop,
            stats,
            buffer: Vec::new(),
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            let stopping = match self.stop.recv_timeout(CATCH_UP_INTERVAL) {
                Err(RecvTimeoutError::Timeout) => false,
                Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
            };
            for index in 0..self.replicas.len() {
                self.catch_up(index);
                // At shutdown only the final snapshot the configuration asks for: the next
                // start then replays nothing.
                let due = match stopping {
                    true => self.config.snapshot_on_shutdown && self.has_news(index),
                    false => self.due(index),
                };
                if due {
                    self.snapshot(index);
                }
            }
            if stopping {
                break;
            }
        }
        tracing::debug!("checkpoint thread stopped");
    }

    /// Replays the shard's durable records the replica has not seen yet.
    fn catch_up(&mut self, index: usize) {
        let replica = &mut self.replicas[index];
        let durable_end = self.durable_ends[usize::from(replica.log)].load(Ordering::Acquire);
        let Some(shard) = replica.shard.as_mut() else { return };
        if durable_end <= replica.next_seq {
            return;
        }
        let (log, mut next_seq) = (replica.log, replica.next_seq);
        let (mut records, mut bytes) = (0u64, 0u64);
        let mut failure: Option<String> = None;
        let read = self.wal.read(log, next_seq, durable_end, &mut |batch| {
            if batch.first_seq != next_seq {
                failure =
                    Some(format!("expected a batch at {next_seq}, found {}", batch.first_seq));
                return false;
            }
            if let Err(err) = replay_batch(shard, batch) {
                failure = Some(format!("batch at {}: {err}", batch.first_seq));
                return false;
            }
            next_seq = batch.end_seq();
            records += u64::from(batch.record_count);
            bytes += batch.records.len() as u64;
            true
        });
        if let Err(err) = read {
            failure.get_or_insert(format!("reading the log: {err}"));
        }
        replica.next_seq = next_seq;
        replica.records_since_snapshot += records;
        replica.log_bytes_since_snapshot += bytes;
        replica.metrics.replayed(records);
        if let Some(reason) = failure {
            // The live shard decided something its own log cannot reproduce: recovery would
            // fail the same way. Keep the whole log (no more snapshots of this shard) and say
            // so loudly; the live shard keeps serving.
            tracing::error!(shard = log, seq = next_seq, %reason, "snapshot replica diverged from the log; this shard is no longer snapshotted");
            self.stats.snapshot_failures.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(metrics_names::SNAPSHOT_FAILURES_TOTAL).increment(1);
            replica.shard = None;
        }
    }

    /// Whether the replica is sound and holds records its last snapshot does not.
    fn has_news(&self, index: usize) -> bool {
        let replica = &self.replicas[index];
        replica.shard.is_some() && replica.records_since_snapshot > 0
    }

    fn due(&self, index: usize) -> bool {
        if !self.has_news(index) {
            return false;
        }
        let replica = &self.replicas[index];
        let now_ms = self.clock.now_ms();
        if replica.retry.is_some_and(|(not_before_ms, _)| now_ms < not_before_ms) {
            return false;
        }
        let by_count = replica.records_since_snapshot >= self.config.snapshot_every_records;
        let by_time =
            now_ms.saturating_sub(replica.last_snapshot_ms) >= self.config.snapshot_every_ms;
        let log_caught_up = replica.log_bytes_since_snapshot
            >= replica.last_snapshot_bytes.saturating_mul(self.config.snapshot_log_ratio);
        (by_count || by_time) && log_caught_up
    }

    /// Encodes the replica (it covers exactly the records below its `next_seq`, all durable),
    /// writes it, and truncates the log below it.
    fn snapshot(&mut self, index: usize) {
        let replica = &mut self.replicas[index];
        let Some(shard) = replica.shard.as_ref() else { return };
        self.buffer.clear();
        let started = Instant::now();
        shard.encode_snapshot(&mut self.buffer);
        let encode = started.elapsed();
        let (log, seq, snapshot_bytes) = (replica.log, replica.next_seq, self.buffer.len() as u64);
        replica.metrics.encoded(snapshot_bytes, encode);
        let written = started.elapsed();
        let stored = self.wal.write_snapshot(log, seq, &self.buffer);
        let truncate_below = truncation_bound(&self.consumers, &self.config, log, seq);
        match stored.and_then(|()| self.wal.truncate_below(log, truncate_below)) {
            Ok(()) => {
                self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
                let write = started.elapsed() - written;
                replica.metrics.written(write);
                replica.records_since_snapshot = 0;
                replica.log_bytes_since_snapshot = 0;
                replica.last_snapshot_bytes = snapshot_bytes;
                replica.last_snapshot_ms = self.clock.now_ms();
                replica.retry = None;
                tracing::info!(
                    shard = log,
                    seq,
                    snapshot_bytes,
                    encode_ms = encode.as_millis() as u64,
                    write_ms = write.as_millis() as u64,
                    "snapshot written"
                );
            }
            Err(err) => self.failed(index, seq, &err),
        }
    }

    /// A failed snapshot loses nothing: the log still holds every record, and the previous
    /// snapshot stays in force. The next attempt waits, longer after each failure in a row.
    fn failed(&mut self, index: usize, seq: u64, err: &flashstock_wal::WalError) {
        self.stats.snapshot_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metrics_names::SNAPSHOT_FAILURES_TOTAL).increment(1);
        let replica = &mut self.replicas[index];
        let cap_ms = self.config.snapshot_every_ms.max(SNAPSHOT_RETRY_MS_MIN);
        let wait_ms = match replica.retry {
            None => SNAPSHOT_RETRY_MS_MIN,
            Some((_, last_wait_ms)) => last_wait_ms.saturating_mul(2).min(cap_ms),
        };
        replica.retry = Some((self.clock.now_ms().saturating_add(wait_ms), wait_ms));
        let shard = replica.log;
        tracing::error!(shard, seq, %err, retry_in_ms = wait_ms, "snapshot failed; the log is kept");
    }
}

/// Where the log may be cut after a snapshot at `seq`: below the snapshot, but not past what
/// the slowest registered consumer acknowledged, unless that consumer is more than the
/// retention cap behind. Then the cap wins (a stuck consumer must not fill the disk), loudly:
/// that consumer will find its cursor truncated.
fn truncation_bound(consumers: &Consumers, config: &RuntimeConfig, log: LogId, seq: u64) -> u64 {
    let Some(holder) = consumers.slowest(log) else {
        return seq;
    };
    let held_records = seq.saturating_sub(holder.acked_seq);
    metrics::gauge!(
        metrics_names::CONSUMER_HELD_RECORDS,
        "consumer" => holder.consumer.clone(),
        "shard" => log.to_string()
    )
    .set(held_records as f64);
    let retention_records_max = config.consumer_retention_records_max;
    if held_records <= retention_records_max {
        return seq.min(holder.acked_seq);
    }
    let bound = seq - retention_records_max;
    tracing::error!(
        consumer = %holder.consumer,
        shard = log,
        acked_seq = holder.acked_seq,
        snapshot_seq = seq,
        truncating_below = bound,
        retention_records_max,
        "consumer is holding the log back past the retention cap; records it has not \
         acknowledged are being removed and it will have to resubscribe from the earliest \
         record"
    );
    bound
}
