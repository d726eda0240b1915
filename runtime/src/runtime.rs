//! `Runtime`: recovers the shards, starts the actors and the durability thread, and stops
//! them gracefully.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::bounded;
use flashstock_engine::{Shard, ShardMap};
use flashstock_wal::{SledWal, SledWalConfig, Wal};

use crate::actor::{Actor, Job};
use crate::buckets::BucketTable;
use crate::checkpoint::{CheckpointParts, Checkpointer};
use crate::clock::Clock;
use crate::config::RuntimeConfig;
use crate::durability::{Durability, DurabilityParts, DurabilityStats, DurableEnds, Failure};
use crate::error::RuntimeError;
use crate::handle::{Handle, Shared};
use crate::recovery::{recover_shards, settle_open_carts, RecoveryReport};
use crate::stream::{Consumers, EventLog, WalRef};
use tokio::sync::watch;

const SHARD_COUNT_KEY: &str = "shard_count";
/// The metadata key of the store's reservation-id layout.
const ID_LAYOUT_KEY: &str = "id_layout";
/// The reservation-id layout this runtime writes: 2 is `[slot 12][shard 8][sequence 44]`
/// (docs/cluster.md); 1, unmarked, was `[shard 16][sequence 48]`.
const ID_LAYOUT: u8 = 2;

/// The running shard actors and durability threads. Dropping it shuts down gracefully too.
#[derive(Debug)]
pub struct Runtime {
    handle: Handle,
    actors: Vec<JoinHandle<()>>,
    durability: Vec<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
    /// Dropped to tell the checkpoint thread to take its last snapshots and exit.
    checkpoint_stop: Option<crossbeam_channel::Sender<()>>,
    recovery: Vec<RecoveryReport>,
    stats: Arc<DurabilityStats>,
}

impl Runtime {
    /// Opens the sled log in `data_dir/wal` and starts on it.
    pub fn open(
        data_dir: &Path,
        config: RuntimeConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Runtime, RuntimeError> {
        let wal_config = SledWalConfig {
            cache_bytes: config.wal_cache_bytes,
            ..SledWalConfig::new(data_dir.join("wal"))
        };
        let wal = SledWal::open(&wal_config)?;
        Runtime::start(config, wal, clock)
    }

    /// Recovers every shard from `wal`, then starts the actors and the durability thread.
    pub fn start<W: Wal + 'static>(
        config: RuntimeConfig,
        wal: W,
        clock: Arc<dyn Clock>,
    ) -> Result<Runtime, RuntimeError> {
        config.validate();
        check_layout(&wal, config.shard_count)?;
        let mut config = config;
        config.shard.hash_seed = hash_seed(&wal)?;
        let mut shards = Vec::with_capacity(usize::from(config.shard_count));
        let mut next_seqs = Vec::with_capacity(shards.capacity());
        let mut recovery = Vec::with_capacity(shards.capacity());
        let recovery_started = std::time::Instant::now();
        let recovered = recover_shards(&wal, config.shard_count, config.shard)?;
        metrics::gauge!(crate::metrics::RECOVERY_SECONDS)
            .set(recovery_started.elapsed().as_secs_f64());
        let replayed: u64 = recovered.iter().map(|(_, report)| report.records).sum();
        metrics::gauge!(crate::metrics::RECOVERY_RECORDS).set(replayed as f64);
        for (shard, report) in recovered {
            tracing::info!(
                shard = report.shard,
                snapshot_seq = ?report.snapshot_seq,
                records = report.records,
                dropped_tail = ?report.dropped_tail,
                elapsed_us = report.elapsed_us,
                "shard recovered"
            );
            shards.push(shard);
            next_seqs.push(report.next_seq);
            recovery.push(report);
        }
        let groups = settle_open_carts(&wal, &mut shards, &mut next_seqs, clock.now_ms())?;
        if groups > 0 {
            tracing::info!(groups, "cart line groups left open by the last run settled");
        }
        let spread = shards.iter().flat_map(|shard| shard.bucketed_skus().collect::<Vec<_>>());
        let buckets = Arc::new(BucketTable::new(spread.collect::<Vec<_>>()));
        let shards: Vec<(Shard, u64)> = shards.into_iter().zip(next_seqs).collect();

        let wal = Arc::new(wal);
        let durable_ends: DurableEnds =
            shards.iter().map(|(_, next_seq)| AtomicU64::new(*next_seq)).collect();
        let shared_wal = WalRef::new(wal.clone());
        let consumers = Arc::new(Consumers::load(shared_wal.clone(), config.shard_count)?);
        let (committed, commits) = watch::channel(0);
        let events = EventLog::new(shared_wal, durable_ends.clone(), commits, consumers.clone());
        let queue = config.durability_queue_batches * usize::from(config.shard_count);
        let (durable_tx, durable_rx) = bounded(queue);
        // The inboxes exist before the durability threads: they forward messages between
        // shards once the steps that left them are durable.
        let (inboxes, inbox_receivers): (Vec<_>, Vec<_>) =
            shards.iter().map(|_| bounded(config.inbox_capacity)).unzip();
        let failure = Arc::new(Failure::default());
        let stats = Arc::new(DurabilityStats::default());
        let durability = Arc::new(Durability::new(DurabilityParts {
            wal: wal.clone(),
            commits: durable_rx,
            durable_ends: durable_ends.clone(),
            committed,
            failure: failure.clone(),
            stats: stats.clone(),
            inboxes: inboxes.clone(),
        }));
        let durability = (0..config.syncs_in_flight_max)
            .map(|n| {
                let durability = durability.clone();
                spawn(format!("flashstock-wal-{n}"), move || durability.run())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (checkpoint_stop, stop) = bounded(0);
        let parts = CheckpointParts {
            wal,
            durable_ends,
            consumers,
            config: config.clone(),
            clock: clock.clone(),
            stop,
            stats: stats.clone(),
        };
        // The replicas start as copies of the recovered shards (a one-time copy at start-up,
        // before any actor runs).
        let replicas =
            shards.iter().map(|(shard, next_seq)| (shard.replica(), *next_seq)).collect();
        let checkpointer = Checkpointer::new(parts, replicas);
        let checkpointer = spawn("flashstock-checkpoint".to_owned(), move || checkpointer.run())?;

        let mut actors = Vec::with_capacity(shards.len());
        for ((shard, next_seq), inbox_rx) in shards.into_iter().zip(inbox_receivers) {
            let name = format!("flashstock-shard-{}", shard.id().0);
            let metrics = crate::metrics::ShardMetrics::new(shard.id().0);
            let actor = Actor {
                shard,
                inbox: inbox_rx,
                durable: durable_tx.clone(),
                clock: clock.clone(),
                config: config.clone(),
                next_seq,
                carried: None,
                metrics,
                stats: stats.clone(),
                move_waiters: Vec::new(),
                buckets: buckets.clone(),
            };
            actors.push(spawn(name, move || actor.run())?);
        }
        let map = ShardMap::new(config.shard_count);
        let handle = Handle::new(Shared {
            inboxes,
            map,
            failure,
            batch_jobs_max: config.batch_jobs_max,
            events,
            clock,
            buckets,
            exports: Default::default(),
        });
        Ok(Runtime {
            handle,
            actors,
            durability,
            checkpointer: Some(checkpointer),
            checkpoint_stop: Some(checkpoint_stop),
            recovery,
            stats,
        })
    }

    /// A handle for making requests.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// What recovery found, per shard.
    pub fn recovery(&self) -> &[RecoveryReport] {
        &self.recovery
    }

    /// Group-commit counters.
    pub fn durability_stats(&self) -> &DurabilityStats {
        &self.stats
    }

    /// Stops taking work, lets every actor finish its step and snapshot, waits until the log
    /// has made everything durable, and joins every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for inbox in self.handle.inboxes() {
            // Blocks while the inbox is full; fails only if the actor is already gone.
            let _ = inbox.send(Job::Stop);
        }
        for actor in self.actors.drain(..) {
            if actor.join().is_err() {
                tracing::error!("a shard actor panicked");
            }
        }
        // Every actor has dropped its sender, so the durability threads drain and exit.
        for durability in self.durability.drain(..) {
            if durability.join().is_err() {
                tracing::error!("a durability thread panicked");
            }
        }
        // The checkpoint thread stops last: its final snapshots cover everything made durable
        // above.
        drop(self.checkpoint_stop.take());
        if let Some(checkpointer) = self.checkpointer.take() {
            if checkpointer.join().is_err() {
                tracing::error!("the checkpoint thread panicked");
            }
        }
        // Handles may outlive the runtime; the log (and its lock) must not.
        self.handle.events().release_wal();
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

fn check_layout<W: Wal>(wal: &W, configured: u16) -> Result<(), RuntimeError> {
    match wal.read_meta(SHARD_COUNT_KEY)? {
        None => {
            // A new store: the layout first, so a store with a shard count always has one.
            wal.write_meta(ID_LAYOUT_KEY, &[ID_LAYOUT])?;
            wal.write_meta(SHARD_COUNT_KEY, &configured.to_le_bytes())?;
        }
        Some(bytes) => {
            let layout =
                wal.read_meta(ID_LAYOUT_KEY)?.map_or(1, |b| b.first().copied().unwrap_or(0));
            if layout != ID_LAYOUT {
                return Err(RuntimeError::IdLayout { stored: layout, supported: ID_LAYOUT });
            }
            let stored = bytes.try_into().map(u16::from_le_bytes).unwrap_or(0);
            if stored != configured {
                return Err(RuntimeError::ShardCountMismatch { stored, configured });
            }
        }
    }
    Ok(())
}

/// The seed of the engine's table hashes: drawn from the system's secure random source when
/// the store is new, kept in its metadata after, so a data directory's tables sit the same
/// way on every start (and no client can learn where from the outside).
fn hash_seed<W: Wal>(wal: &W) -> Result<u64, RuntimeError> {
    if let Some(bytes) = wal.read_meta(HASH_SEED_KEY)? {
        let bytes: [u8; 8] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            RuntimeError::HashSeed(format!("the stored seed has {} bytes, not 8", bytes.len()))
        })?;
        return Ok(u64::from_le_bytes(bytes));
    }
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| RuntimeError::HashSeed("no secure random source".into()))?;
    let seed = u64::from_le_bytes(bytes);
    wal.write_meta(HASH_SEED_KEY, &seed.to_le_bytes())?;
    Ok(seed)
}

/// The metadata key the hash seed is kept under.
const HASH_SEED_KEY: &str = "hash_seed";

fn spawn(
    name: String,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, RuntimeError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(body)
        .map_err(|source| RuntimeError::Spawn { what: name, source })
}
