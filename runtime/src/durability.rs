//! The durability threads.
//!
//! Durability is group commit: take every batch waiting, append each to its shard's log, sync
//! once, and only then release the batches' replies. It then publishes, per log, the sequence
//! number below which every record is durable.
//!
//! Syncs overlap. Up to `syncs_in_flight_max` threads take turns: one takes the waiting
//! batches and appends them (in the order the actors sent them; appending is a copy into the
//! log's buffer, under one lock), then syncs on its own while the next thread appends the next
//! group. This disk runs several `fdatasync`s at once nearly as fast as one, so a batch that
//! arrives during a sync starts its own instead of waiting for that one to end. Groups are
//! released strictly in the order they were appended: a group's replies may show effects of
//! earlier groups (a query, a sold-out answer), so it waits until those are durable too, and a
//! failed sync fails every group after it.
//!
//! Snapshots are the checkpoint thread's business (see `checkpoint`): it reads the durable
//! log, never the commits in flight.
//!
//! A failed append or sync is final: the batch's effects are in memory but not durable, so the
//! runtime stops acknowledging anything (fail-stop) until a restart recovers what is durable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crossbeam_channel::Receiver;
use crossbeam_channel::{Sender, TrySendError};
use flashstock_engine::{EncodedLog, ShardMessage};
use flashstock_wal::{LogId, Wal};

use crate::actor::{Delivery, Job};
use crate::error::RuntimeError;
use tokio::sync::watch;

/// The most actor steps one group commit takes.
const GROUP_JOBS_MAX: usize = 1024;

/// One actor step: its records (possibly none, in batch-sized chunks) and the replies they
/// gate.
#[derive(Debug)]
pub(crate) struct Commit {
    pub(crate) log: LogId,
    pub(crate) first_seq: u64,
    pub(crate) records: EncodedLog,
    pub(crate) replies: Vec<Delivery>,
    /// Messages the step left for other shards (carts): sent once its records are durable.
    pub(crate) messages: Vec<ShardMessage>,
}

/// Set once the log fails; read by handles to refuse work at once, and awaited by the server,
/// which then stops (fail-stop: a supervisor restarts it into recovery).
#[derive(Debug, Default)]
pub(crate) struct Failure {
    failed: AtomicBool,
    reason: Mutex<String>,
    notify: tokio::sync::Notify,
}

impl Failure {
    pub(crate) fn reason(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        Some(self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Completes with the reason once the log has failed.
    pub(crate) async fn failed(&self) -> String {
        loop {
            // Registered before the check, so a failure between the two still wakes it.
            let notified = self.notify.notified();
            if let Some(reason) = self.reason() {
                return reason;
            }
            notified.await;
        }
    }

    fn set(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        self.failed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Counters of the group commit, the snapshots and the shard steps, for reports, benchmarks
/// and tests.
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
    /// Snapshots that failed to be written (the log is kept; the shard's next snapshot tries
    /// again).
    pub snapshot_failures: AtomicU64,
    /// Total time spent in sync, in microseconds.
    pub sync_us_total: AtomicU64,
    /// The slowest sync, in microseconds: every reply of its group waited that long.
    pub sync_us_max: AtomicU64,
    /// Shard steps that took `slow_step_ms` or longer.
    pub slow_steps: AtomicU64,
    /// Messages between shards that found their inbox full and waited for a later release.
    pub cart_messages_deferred: AtomicU64,
}

/// Per log, the sequence number below which every record is durable.
pub(crate) type DurableEnds = Arc<[AtomicU64]>;

pub(crate) struct Durability<W> {
    wal: Arc<W>,
    commits: Receiver<Commit>,
    durable_ends: DurableEnds,
    /// Bumped after every group commit that made records durable: wakes the stream readers.
    committed: watch::Sender<u64>,
    failure: Arc<Failure>,
    stats: Arc<DurabilityStats>,
    /// Every shard's inbox, for the messages between shards.
    inboxes: Vec<Sender<Job>>,
    /// Messages between shards that found their inbox full, oldest first.
    messages_waiting: Mutex<Vec<(u16, Job)>>,
    metrics: crate::metrics::WalMetrics,
    /// Held while a thread takes a group and appends it: the log sees batches in the order
    /// the actors sent them. Holds the next group's turn number.
    appending: Mutex<u64>,
    /// The turn of the next group to release; groups wait here for theirs.
    releasing: Mutex<u64>,
    turn_released: Condvar,
}

impl<W: Wal> Durability<W> {
    pub(crate) fn new(parts: DurabilityParts<W>) -> Durability<W> {
        let DurabilityParts { wal, commits, durable_ends, committed, failure, stats, inboxes } =
            parts;
        Durability {
            inboxes,
            messages_waiting: Mutex::new(Vec::new()),
            wal,
            commits,
            durable_ends,
            committed,
            failure,
            stats,
            metrics: crate::metrics::WalMetrics::new(),
            appending: Mutex::new(0),
            releasing: Mutex::new(0),
            turn_released: Condvar::new(),
        }
    }

    /// One durability thread's loop; several run it on one `Durability`.
    pub(crate) fn run(&self) {
        let mut group = Vec::with_capacity(GROUP_JOBS_MAX);
        loop {
            let (turn, appended) = {
                let mut next_turn = self.appending.lock().unwrap_or_else(|p| p.into_inner());
                let Ok(first) = self.commits.recv() else { break };
                group.push(first);
                while group.len() < GROUP_JOBS_MAX {
                    match self.commits.try_recv() {
                        Ok(commit) => group.push(commit),
                        Err(_) => break,
                    }
                }
                let turn = *next_turn;
                *next_turn += 1;
                (turn, self.append(&group))
            };
            // Outside the lock: the next group is appended while this one syncs.
            let durable = match appended {
                Ok(true) => self.sync(),
                Ok(false) => Ok(()),
                Err(reason) => Err(reason),
            };
            self.release(turn, &mut group, durable);
        }
        tracing::debug!("durability thread stopped");
    }

    /// Waits for `turn`, then delivers the group's replies (failed, if this or any earlier
    /// group failed) and publishes what is durable.
    fn release(&self, turn: u64, group: &mut Vec<Commit>, durable: Result<(), String>) {
        let mut released = self.releasing.lock().unwrap_or_else(|p| p.into_inner());
        while *released != turn {
            released = self.turn_released.wait(released).unwrap_or_else(|p| p.into_inner());
        }
        // An earlier group's failure is this group's too: its replies may show those effects.
        let durable = durable.and_then(|()| self.failure.reason().map_or(Ok(()), Err));
        let logged = group.iter().any(|commit| commit.records.record_count > 0);
        for commit in group.drain(..) {
            if durable.is_ok() && commit.records.record_count > 0 {
                let end = commit.first_seq + u64::from(commit.records.record_count);
                self.durable_ends[usize::from(commit.log)].store(end, Ordering::Release);
            }
            // Messages first (waiting ones before these, even when this commit carries
            // none): a caller that has its answer finds the settles it caused queued ahead of
            // anything it sends next.
            if durable.is_ok() {
                self.forward(commit.messages);
            }
            deliver(commit.replies, &durable);
        }
        if durable.is_ok() && logged {
            self.committed.send_modify(|count| *count += 1);
        }
        *released += 1;
        drop(released);
        self.turn_released.notify_all();
    }

    /// Hands messages between shards to their inboxes, oldest first. A message that finds
    /// its inbox full waits here for a later release (waiting in `send` would stall every
    /// reply): none is dropped, so a participant hears its cart's end long before the
    /// coordinator forgets the cart (see docs/carts.md). While an inbox stays full they add
    /// up: a settle per group decided or ended, and a question per open group per second.
    fn forward(&self, messages: Vec<ShardMessage>) {
        let mut waiting = self.messages_waiting.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = messages.into_iter().map(Job::of_message);
        let deferred = forward_in_order(&mut waiting, fresh, &self.inboxes);
        self.stats.cart_messages_deferred.fetch_add(deferred, Ordering::Relaxed);
    }

    /// Appends the group's records; whether there were any.
    fn append(&self, group: &[Commit]) -> Result<bool, String> {
        if let Some(reason) = self.failure.reason() {
            return Err(reason);
        }
        let mut appended = false;
        let (mut records_appended, mut bytes_appended) = (0u64, 0u64);
        let append_started = Instant::now();
        for commit in group {
            let mut seq = commit.first_seq;
            for (records, record_count) in commit.records.chunks() {
                if let Err(err) = self.wal.append(commit.log, seq, record_count, records) {
                    return Err(self.fail(format!("append to log {}: {err}", commit.log)));
                }
                seq += u64::from(record_count);
                appended = true;
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.records.fetch_add(u64::from(record_count), Ordering::Relaxed);
                records_appended += u64::from(record_count);
                bytes_appended += records.len() as u64;
            }
        }
        if appended {
            self.metrics.append_seconds.record(append_started.elapsed().as_secs_f64());
            self.metrics.records.increment(records_appended);
            self.metrics.bytes.increment(bytes_appended);
        }
        Ok(appended)
    }

    /// Makes everything appended so far durable (other threads' groups included).
    fn sync(&self) -> Result<(), String> {
        let started = Instant::now();
        if let Err(err) = self.wal.sync() {
            return Err(self.fail(format!("sync: {err}")));
        }
        let sync = started.elapsed();
        self.metrics.sync_seconds.record(sync.as_secs_f64());
        let sync_us = sync.as_micros() as u64;
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats.sync_us_total.fetch_add(sync_us, Ordering::Relaxed);
        self.stats.sync_us_max.fetch_max(sync_us, Ordering::Relaxed);
        Ok(())
    }

    fn fail(&self, reason: String) -> String {
        tracing::error!(%reason, "write-ahead log failed; no further requests are acknowledged");
        self.failure.set(reason.clone());
        reason
    }
}

/// What the runtime gives its durability threads.
pub(crate) struct DurabilityParts<W> {
    pub(crate) wal: Arc<W>,
    pub(crate) commits: Receiver<Commit>,
    pub(crate) durable_ends: DurableEnds,
    pub(crate) committed: watch::Sender<u64>,
    pub(crate) failure: Arc<Failure>,
    pub(crate) stats: Arc<DurabilityStats>,
    pub(crate) inboxes: Vec<Sender<Job>>,
}

/// Hands a group's answers to their callers, or the log's failure.
fn deliver(replies: Vec<Delivery>, durable: &Result<(), String>) {
    let failed = |reason: &String| RuntimeError::WalFailed { reason: reason.clone() };
    // A caller may have given up waiting; that is its business.
    for delivery in replies {
        match (delivery, durable) {
            (Delivery::One(reply, answer), Ok(())) => drop(reply.send(Ok(answer))),
            (Delivery::One(reply, _), Err(reason)) => drop(reply.send(Err(failed(reason)))),
            (Delivery::Many(reply, answers), Ok(())) => drop(reply.send(Ok(answers))),
            (Delivery::Many(reply, _), Err(reason)) => drop(reply.send(Err(failed(reason)))),
            (Delivery::Prepared(reply, answer), Ok(())) => drop(reply.send(Ok(answer))),
            (Delivery::Prepared(reply, _), Err(reason)) => drop(reply.send(Err(failed(reason)))),
            (Delivery::Moved(reply, moved), Ok(())) => drop(reply.send(Ok(moved))),
            (Delivery::Moved(reply, _), Err(reason)) => drop(reply.send(Err(failed(reason)))),
            // A waiter for a move is told it is in once this step is durable; on failure its
            // channel closes, and the caller sees the runtime stop.
            (Delivery::Arrived(reply), Ok(())) => drop(reply.send(())),
            (Delivery::Arrived(_), Err(_)) => {}
            (Delivery::Slots(reply, done), Ok(())) => drop(reply.send(Ok(done))),
            (Delivery::Slots(reply, _), Err(reason)) => drop(reply.send(Err(failed(reason)))),
        }
    }
}

/// Sends the messages waiting, then the fresh ones, each to its shard's inbox, keeping the
/// order of the messages to any one shard: once one to a shard finds its inbox full, every
/// later one to that shard waits behind it, even if the shard frees a slot meanwhile (it
/// drains its inbox while this runs). Messages that wait are left in `waiting`, oldest
/// first; returns how many were deferred. A message to a shard that stopped is dropped (the
/// start-up pass settles what is left).
fn forward_in_order<T>(
    waiting: &mut Vec<(u16, T)>,
    fresh: impl Iterator<Item = (u16, T)>,
    inboxes: &[Sender<T>],
) -> u64 {
    let queued = std::mem::take(waiting);
    let mut blocked = vec![false; inboxes.len()];
    let mut deferred = 0;
    for (to, message) in queued.into_iter().chain(fresh) {
        let Some(inbox) = inboxes.get(usize::from(to)) else { continue };
        let message = if blocked[usize::from(to)] {
            message
        } else {
            match inbox.try_send(message) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => continue,
                Err(TrySendError::Full(message)) => message,
            }
        };
        blocked[usize::from(to)] = true;
        deferred += 1;
        waiting.push((to, message));
    }
    deferred
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shard 0 drains its inbox on a thread of its own while messages are forwarded to it: a
    /// slot that frees between two sends must not let a later message pass an earlier one
    /// that is waiting (the stock moves between buckets count on each sibling's moves
    /// arriving in order).
    #[test]
    fn messages_to_one_shard_arrive_in_order_while_it_drains_its_inbox() {
        let (to_zero, inbox) = crossbeam_channel::bounded::<u64>(4);
        let (to_one, _other) = crossbeam_channel::bounded::<u64>(1 << 20);
        let inboxes = vec![to_zero, to_one];
        let count = 20_000u64;
        let drainer = std::thread::spawn(move || {
            let mut received = Vec::with_capacity(count as usize);
            while (received.len() as u64) < count {
                received.push(inbox.recv().expect("sent"));
            }
            received
        });
        let mut waiting = Vec::new();
        for chunk in (0..count).collect::<Vec<_>>().chunks(16) {
            let fresh = chunk.iter().flat_map(|&n| [(0u16, n), (1u16, n)]);
            forward_in_order(&mut waiting, fresh, &inboxes);
        }
        while !waiting.is_empty() {
            forward_in_order(&mut waiting, std::iter::empty(), &inboxes);
        }
        let received = drainer.join().unwrap();
        assert!(received.windows(2).all(|pair| pair[0] < pair[1]), "out of order");
    }
}
