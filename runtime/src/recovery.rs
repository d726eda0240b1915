//! Rebuilding a shard: the latest snapshot, then the log from where it ends, replayed through
//! the engine's own `replay`, then the full invariant check.

use std::time::Instant;

use flashstock_engine::{
    check_carts, decode_records, settle_all, EncodedLog, Shard, ShardConfig, ShardId,
};
use flashstock_wal::BATCH_RECORDS_BYTES_MAX;
use flashstock_wal::{BatchRef, VisitError, Wal, WalError};

use crate::error::RuntimeError;

/// What recovering one shard found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The shard.
    pub shard: u16,
    /// Where the snapshot it started from ends, if there was one.
    pub snapshot_seq: Option<u64>,
    /// Batches replayed after the snapshot.
    pub batches: u64,
    /// Records replayed after the snapshot.
    pub records: u64,
    /// Where the shard's log continues.
    pub next_seq: u64,
    /// A torn last batch that was dropped (never acknowledged), if any.
    pub dropped_tail: Option<u64>,
    /// Live reservations after recovery.
    pub reservations_live: usize,
    /// How long recovery took.
    pub elapsed_us: u64,
}

/// Recovers every shard, each on its own thread (their logs are independent, and a restart is
/// what an operator waits for), then discards torn tails so appends can continue.
pub(crate) fn recover_shards<W: Wal>(
    wal: &W,
    shard_count: u16,
    config: ShardConfig,
) -> Result<Vec<(Shard, RecoveryReport)>, RuntimeError> {
    let recovered: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..shard_count)
            .map(|id| scope.spawn(move || recover_shard(wal, ShardId(id), config)))
            .collect();
        workers.into_iter().map(|w| w.join().expect("a recovery thread panicked")).collect()
    });
    let recovered = recovered.into_iter().collect::<Result<Vec<_>, _>>()?;
    for (_, report) in &recovered {
        if let Some(seq) = report.dropped_tail {
            let recovery = |source| RuntimeError::Recovery { shard: report.shard, source };
            wal.discard_tail(report.shard, seq).map_err(recovery)?;
        }
    }
    Ok(recovered)
}

fn recover_shard<W: Wal>(
    wal: &W,
    id: ShardId,
    config: ShardConfig,
) -> Result<(Shard, RecoveryReport), RuntimeError> {
    let started = Instant::now();
    let recovery = |source| RuntimeError::Recovery { shard: id.0, source };
    let snapshot = wal.latest_snapshot(id.0).map_err(recovery)?;
    let (mut shard, from_seq) = match &snapshot {
        Some(snapshot) => {
            let shard = Shard::restore(id, config, &snapshot.state).map_err(|err| {
                recovery(WalError::Visit { log: id.0, seq: snapshot.seq, source: Box::new(err) })
            })?;
            (shard, snapshot.seq)
        }
        None => (Shard::new(id, config), 0),
    };
    shard.begin_replay();
    let summary = wal
        .replay(id.0, from_seq, &mut |batch| replay_batch(&mut shard, batch))
        .map_err(recovery)?;
    shard
        .finish_replay()
        .and_then(|()| shard.check_invariants())
        .map_err(|source| RuntimeError::RecoveredInvariant { shard: id.0, source })?;
    let report = RecoveryReport {
        shard: id.0,
        snapshot_seq: snapshot.map(|s| s.seq),
        batches: summary.batches,
        records: summary.records,
        next_seq: summary.next_seq,
        dropped_tail: summary.torn_tail,
        reservations_live: shard.reservations_live(),
        elapsed_us: started.elapsed().as_micros() as u64,
    };
    Ok((shard, report))
}

/// Replays one batch's records into `shard`, checking the count its header gives. Recovery
/// and the checkpoint thread's replicas both take this path.
pub(crate) fn replay_batch(shard: &mut Shard, batch: BatchRef<'_>) -> Result<(), VisitError> {
    let mut replayed = 0u32;
    for record in decode_records(batch.records) {
        shard.replay(&record?)?;
        replayed += 1;
    }
    if replayed != batch.record_count {
        let expected = batch.record_count;
        return Err(format!("batch header says {expected} records, found {replayed}").into());
    }
    Ok(())
}

/// The start-up pass of carts (docs/carts.md): every line group a crash left open asks its
/// coordinator, the answers are applied, and what that logs is appended and synced before any
/// shard serves. Then the invariants between shards are checked. Returns how many groups
/// asked.
pub(crate) fn settle_open_carts<W: Wal>(
    wal: &W,
    shards: &mut [Shard],
    next_seqs: &mut [u64],
    now_ms: u64,
) -> Result<usize, RuntimeError> {
    let mut logs: Vec<EncodedLog> =
        shards.iter().map(|_| EncodedLog::with_chunk_bytes_max(BATCH_RECORDS_BYTES_MAX)).collect();
    let broken = |shard: u16| move |source| RuntimeError::RecoveredInvariant { shard, source };
    let asked = settle_all(shards, now_ms, &mut logs).map_err(broken(0))?;
    let mut appended = false;
    for (index, (log, next_seq)) in logs.iter().zip(next_seqs.iter_mut()).enumerate() {
        let shard = index as u16;
        for (records, record_count) in log.chunks() {
            wal.append(shard, *next_seq, record_count, records)
                .map_err(|source| RuntimeError::Recovery { shard, source })?;
            *next_seq += u64::from(record_count);
            appended = true;
        }
    }
    if appended {
        wal.sync().map_err(|source| RuntimeError::Recovery { shard: 0, source })?;
    }
    check_carts(shards).map_err(broken(0))?;
    Ok(asked)
}
