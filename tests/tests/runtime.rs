//! The runtime end to end, in process: shard actors, group commit, recovery.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashstock_engine::{BuyerId, Outcome, RequestId, ReservationState, SkuId, SkuView};
use flashstock_runtime::{Handle, ManualClock, Runtime, RuntimeConfig, RuntimeError, SystemClock};
use flashstock_wal::{BatchRef, LogId, MemWal, ReplaySummary, Snapshot, VisitError, Wal, WalError};

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

fn request() -> RequestId {
    RequestId(u128::from(NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)))
}

fn config(shards: u16) -> RuntimeConfig {
    RuntimeConfig { shard_count: shards, tick_interval_ms: 2, ..RuntimeConfig::default() }
}

async fn stock(handle: &Handle, sku: u64, total: u64) {
    let outcome = handle.set_stock(request(), SkuId(sku), total).await.unwrap();
    assert!(matches!(outcome, Outcome::StockChanged { .. }), "{outcome:?}");
}

async fn view(handle: &Handle, sku: u64) -> SkuView {
    handle.query_sku(SkuId(sku)).await.unwrap().expect("a known sku")
}

fn counts(v: &SkuView) -> (u64, u64, u64, u64) {
    (v.total, v.available, v.reserved, v.sold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_tasks_race_for_a_hundred_units() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::open(dir.path(), config(2), Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    stock(&handle, 1, 100).await;
    let tasks: Vec<_> = (0..1000u64)
        .map(|buyer| {
            let handle = handle.clone();
            tokio::spawn(async move {
                handle.reserve(request(), BuyerId(buyer), SkuId(1), 1, 60_000).await.unwrap()
            })
        })
        .collect();
    let (mut reserved, mut sold_out) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Outcome::Reserved { .. } => reserved += 1,
            Outcome::SoldOut { available: 0 } => sold_out += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((reserved, sold_out), (100, 900));
    assert_eq!(counts(&view(&handle, 1).await), (100, 0, 100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_buyer_with_limit_one_gets_exactly_one_of_two_hundred() {
    let runtime = Runtime::start(config(2), MemWal::new(), Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    stock(&handle, 2, 1_000).await;
    handle.set_buyer_limit(request(), SkuId(2), Some(1)).await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move {
                handle.reserve(request(), BuyerId(42), SkuId(2), 1, 60_000).await.unwrap()
            })
        })
        .collect();
    let mut reserved = 0;
    for task in tasks {
        match task.await.unwrap() {
            Outcome::Reserved { .. } => reserved += 1,
            Outcome::LimitExceeded { taken: 1, limit: 1 } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reserved, 1);
    assert_eq!(counts(&view(&handle, 2).await), (1_000, 999, 1, 0));
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn expiry_returns_units_and_ended_reservations_answer_once() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let runtime = Runtime::start(config(2), MemWal::new(), clock.clone()).unwrap();
    let handle = runtime.handle();
    stock(&handle, 3, 10).await;

    let Outcome::Reserved { reservation: lapsing, .. } =
        handle.reserve(request(), BuyerId(1), SkuId(3), 4, 1_000).await.unwrap()
    else {
        panic!("expected a reservation")
    };
    assert_eq!(counts(&view(&handle, 3).await), (10, 6, 4, 0));
    clock.advance(1_000);
    wait_for("the tick to expire the hold", async || view(&handle, 3).await.available == 10).await;
    assert_eq!(handle.confirm(request(), lapsing).await.unwrap(), Outcome::Expired);
    let state = handle.query_reservation(lapsing).await.unwrap().unwrap().state;
    assert_eq!(state, ReservationState::Expired);
    assert_eq!(counts(&view(&handle, 3).await), (10, 10, 0, 0), "expired units stay released");

    let Outcome::Reserved { reservation, .. } =
        handle.reserve(request(), BuyerId(2), SkuId(3), 2, 60_000).await.unwrap()
    else {
        panic!("expected a reservation")
    };
    assert_eq!(handle.cancel(request(), reservation).await.unwrap(), Outcome::Cancelled);
    assert_eq!(handle.cancel(request(), reservation).await.unwrap(), Outcome::AlreadyCancelled);
    assert_eq!(counts(&view(&handle, 3).await), (10, 10, 0, 0), "one cancel, one effect");

    // A retried request id gets its first answer back, and nothing more happens.
    let retried = request();
    let first = handle.reserve(retried, BuyerId(3), SkuId(3), 1, 60_000).await.unwrap();
    let again = handle.reserve(retried, BuyerId(3), SkuId(3), 1, 60_000).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(counts(&view(&handle, 3).await), (10, 9, 1, 0));
}

/// Runs a little traffic over several shards; returns the state a restart must reproduce.
async fn traffic(handle: &Handle) -> Vec<SkuView> {
    for sku in 10..20 {
        stock(handle, sku, 50).await;
    }
    for round in 0..40u64 {
        let sku = SkuId(10 + round % 10);
        if let Outcome::Reserved { reservation, .. } =
            handle.reserve(request(), BuyerId(round), sku, 2, 60_000).await.unwrap()
        {
            if round % 3 == 0 {
                handle.confirm(request(), reservation).await.unwrap();
            } else if round % 3 == 1 {
                handle.cancel(request(), reservation).await.unwrap();
            }
        }
    }
    handle.list_skus().await.unwrap()
}

#[tokio::test]
async fn a_restart_recovers_from_a_snapshot_plus_the_log_tail() {
    let wal = MemWal::new();
    let config =
        RuntimeConfig { snapshot_every_records: 25, snapshot_on_shutdown: false, ..config(2) };
    let before = {
        let runtime = Runtime::start(config.clone(), wal.clone(), Arc::new(SystemClock)).unwrap();
        traffic(&runtime.handle()).await;
        // Snapshots are taken off the shards' threads, a few milliseconds behind the log:
        // wait for one per shard, then leave a tail behind them.
        let stats = runtime.durability_stats();
        wait_for("a snapshot of each shard", async || stats.snapshots.load(Ordering::Relaxed) >= 2)
            .await;
        let before = traffic(&runtime.handle()).await;
        runtime.shutdown();
        before
    };
    let runtime = Runtime::start(config, wal.clone(), Arc::new(SystemClock)).unwrap();
    for report in runtime.recovery() {
        assert!(report.snapshot_seq.is_some(), "shard {} had a snapshot: {report:?}", report.shard);
        assert!(report.records > 0, "and a tail to replay: {report:?}");
        assert!(wal.batch_seqs(report.shard)[0] >= report.snapshot_seq.unwrap() - 25);
    }
    assert_eq!(runtime.handle().list_skus().await.unwrap(), before);
}

#[tokio::test]
async fn a_torn_tail_is_dropped_and_mid_log_corruption_is_refused() {
    let wal = MemWal::new();
    let config = RuntimeConfig { snapshot_on_shutdown: false, ..config(1) };
    {
        let runtime = Runtime::start(config.clone(), wal.clone(), Arc::new(SystemClock)).unwrap();
        let handle = runtime.handle();
        stock(&handle, 30, 5).await;
        stock(&handle, 31, 5).await;
        stock(&handle, 30, 7).await; // the last batch: torn below
        runtime.shutdown();
    }
    let seqs = wal.batch_seqs(0);
    wal.tear_last_batch(0, 40);
    {
        let runtime = Runtime::start(config.clone(), wal.clone(), Arc::new(SystemClock)).unwrap();
        assert_eq!(runtime.recovery()[0].dropped_tail, Some(*seqs.last().unwrap()));
        assert_eq!(view(&runtime.handle(), 30).await.total, 5, "the torn batch is gone");
        assert_eq!(view(&runtime.handle(), 31).await.total, 5, "the batches before it are not");
        stock(&runtime.handle(), 32, 1).await;
        runtime.shutdown();
    }
    wal.flip_bit(0, seqs[1], 8 * 45);
    let err = Runtime::start(config, wal, Arc::new(SystemClock)).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Recovery { shard: 0, source: WalError::Corrupt { seq, .. } } if *seq == seqs[1]),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("batch at record {}", seqs[1])), "{err}");
}

#[tokio::test]
async fn a_store_refuses_another_shard_count() {
    let wal = MemWal::new();
    drop(Runtime::start(config(2), wal.clone(), Arc::new(SystemClock)).unwrap());
    let err = Runtime::start(config(3), wal, Arc::new(SystemClock)).unwrap_err();
    assert!(matches!(err, RuntimeError::ShardCountMismatch { stored: 2, configured: 3 }), "{err}");
}

#[tokio::test]
async fn a_store_written_before_ids_carried_their_slot_is_refused_by_name() {
    // A store of the old layout has a shard count and no layout mark.
    let wal = MemWal::new();
    wal.write_meta("shard_count", &2u16.to_le_bytes()).unwrap();
    let err = Runtime::start(config(2), wal, Arc::new(SystemClock)).unwrap_err();
    assert!(matches!(err, RuntimeError::IdLayout { stored: 1, supported: 2 }), "{err}");
    assert!(err.to_string().contains("new data directory"), "{err}");
    // A store this runtime made starts again.
    let wal = MemWal::new();
    drop(Runtime::start(config(2), wal.clone(), Arc::new(SystemClock)).unwrap());
    drop(Runtime::start(config(2), wal, Arc::new(SystemClock)).unwrap());
}

#[tokio::test]
async fn a_failed_sync_stops_acknowledging_and_loses_nothing_acknowledged() {
    let wal = MemWal::new();
    {
        let runtime = Runtime::start(config(1), wal.clone(), Arc::new(SystemClock)).unwrap();
        let handle = runtime.handle();
        stock(&handle, 40, 10).await;
        wal.fail_next_syncs(1);
        let err = handle.set_stock(request(), SkuId(40), 99).await.unwrap_err();
        assert!(matches!(err, RuntimeError::WalFailed { .. }), "{err}");
        let err = handle.query_sku(SkuId(40)).await.unwrap_err();
        assert!(matches!(err, RuntimeError::WalFailed { .. }), "fail-stop: {err}");
        runtime.shutdown();
    }
    wal.lose_unsynced();
    let runtime = Runtime::start(config(1), wal, Arc::new(SystemClock)).unwrap();
    assert_eq!(view(&runtime.handle(), 40).await.total, 10, "the acknowledged stock survived");
}

/// Syncs overlap, but groups are released in order: a query answered while an earlier write's
/// sync is still in flight shows that write, so it must wait for that sync, although its own
/// group logged nothing and needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_not_released_before_the_earlier_syncs_it_may_show() {
    let wal = GatedWal::new(true);
    let config = RuntimeConfig { syncs_in_flight_max: 2, ..config(1) };
    let runtime = Runtime::start(config, wal.clone(), Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    stock(&handle, 70, 10).await;
    *wal.open.lock().unwrap() = false;
    let batches = wal.inner.batch_seqs(0).len();
    let write = tokio::spawn({
        let handle = handle.clone();
        async move { handle.set_stock(request(), SkuId(70), 99).await }
    });
    wait_for("the write to be appended", async || wal.inner.batch_seqs(0).len() > batches).await;
    let query = tokio::spawn({
        let handle = handle.clone();
        async move { view(&handle, 70).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (write_early, query_early) = (write.is_finished(), query.is_finished());
    // Opened before asserting, so that a failure does not leave the runtime stuck in a sync.
    *wal.open.lock().unwrap() = true;
    assert!(!write_early, "the write's sync is held");
    assert!(!query_early, "a query showing a write that is not yet durable was answered");
    assert!(matches!(write.await.unwrap(), Ok(Outcome::StockChanged { .. })));
    assert_eq!(query.await.unwrap().total, 99, "the query saw the write");
    runtime.shutdown();
}

/// A replica that cannot follow the log stops being snapshotted: the failure is counted, the
/// log is kept whole (nothing is truncated that no snapshot covers), the shard keeps serving,
/// and a restart recovers everything from the log.
#[tokio::test]
async fn a_snapshot_replica_that_cannot_read_the_log_keeps_the_log_and_the_shard_serving() {
    let wal = GatedWal::new(true);
    let config = RuntimeConfig { snapshot_every_records: 1, ..config(1) };
    {
        let runtime = Runtime::start(config.clone(), wal.clone(), Arc::new(SystemClock)).unwrap();
        let handle = runtime.handle();
        stock(&handle, 50, 10).await;
        let stats = runtime.durability_stats();
        wait_for("a first snapshot", async || stats.snapshots.load(Ordering::Relaxed) >= 1).await;
        wal.reads_fail.store(true, Ordering::Relaxed);
        for sku in 51..60 {
            stock(&handle, sku, 10).await;
        }
        let failed = async || stats.snapshot_failures.load(Ordering::Relaxed) >= 1;
        wait_for("the replica to report it cannot read", failed).await;
        wal.reads_fail.store(false, Ordering::Relaxed);
        let first_kept = wal.inner.batch_seqs(0)[0];
        stock(&handle, 60, 10).await;
        assert_eq!(view(&handle, 60).await.total, 10, "the shard still serves");
        assert_eq!(stats.snapshots.load(Ordering::Relaxed), 1, "no snapshot since");
        runtime.shutdown();
        assert_eq!(wal.inner.batch_seqs(0)[0], first_kept, "nor at shutdown: the log is whole");
    }
    let runtime = Runtime::start(config, wal.inner.clone(), Arc::new(SystemClock)).unwrap();
    let skus = runtime.handle().list_skus().await.unwrap();
    assert_eq!(skus.len(), 11, "every acknowledged SKU recovered: {skus:?}");
}

/// A snapshot that fails (a full disk) is tried again after a wait, not re-encoded on every
/// catch-up (each attempt encodes the whole state: a soak saw 150 MB encoded every 50 ms), and
/// succeeds once the disk is back; the shard serves throughout.
#[tokio::test]
async fn a_failing_snapshot_is_retried_after_a_wait_not_at_every_catch_up() {
    let wal = GatedWal::new(true);
    let config = RuntimeConfig { snapshot_every_records: 1, ..config(1) };
    let runtime = Runtime::start(config, wal.clone(), Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    wal.snapshots_fail.store(true, Ordering::Relaxed);
    stock(&handle, 70, 10).await;
    let stats = runtime.durability_stats();
    wait_for("a failed snapshot", async || stats.snapshot_failures.load(Ordering::Relaxed) >= 1)
        .await;
    for sku in 71..80 {
        stock(&handle, sku, 10).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let attempts = wal.snapshot_attempts.load(Ordering::Relaxed);
    assert!(attempts <= 2, "{attempts} attempts in ~300 ms: retried without waiting");
    wal.snapshots_fail.store(false, Ordering::Relaxed);
    wait_for("the retried snapshot", async || stats.snapshots.load(Ordering::Relaxed) >= 1).await;
    assert_eq!(view(&handle, 79).await.total, 10, "the shard served throughout");
}

/// A log whose syncs wait until the test opens the gate (a slow disk), and whose reads other
/// than recovery's fail while `reads_fail` is set (a log the checkpoint thread cannot read).
#[derive(Clone)]
struct GatedWal {
    inner: MemWal,
    open: Arc<Mutex<bool>>,
    reads_fail: Arc<AtomicBool>,
    snapshots_fail: Arc<AtomicBool>,
    snapshot_attempts: Arc<AtomicU64>,
}

impl GatedWal {
    fn new(open: bool) -> GatedWal {
        GatedWal {
            inner: MemWal::new(),
            open: Arc::new(Mutex::new(open)),
            reads_fail: Arc::new(AtomicBool::new(false)),
            snapshots_fail: Arc::new(AtomicBool::new(false)),
            snapshot_attempts: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Wal for GatedWal {
    fn append(&self, log: LogId, seq: u64, count: u32, records: &[u8]) -> Result<(), WalError> {
        self.inner.append(log, seq, count, records)
    }
    fn sync(&self) -> Result<(), WalError> {
        while !*self.open.lock().unwrap() {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.inner.sync()
    }
    fn replay(
        &self,
        log: LogId,
        from: u64,
        visit: &mut dyn FnMut(BatchRef<'_>) -> Result<(), VisitError>,
    ) -> Result<ReplaySummary, WalError> {
        self.inner.replay(log, from, visit)
    }
    fn read(
        &self,
        log: LogId,
        from: u64,
        until: u64,
        visit: &mut dyn FnMut(BatchRef<'_>) -> bool,
    ) -> Result<(), WalError> {
        if self.reads_fail.load(Ordering::Relaxed) {
            return Err(WalError::InjectedFault("read"));
        }
        self.inner.read(log, from, until, visit)
    }
    fn discard_tail(&self, log: LogId, seq: u64) -> Result<(), WalError> {
        self.inner.discard_tail(log, seq)
    }
    fn write_snapshot(&self, log: LogId, seq: u64, state: &[u8]) -> Result<(), WalError> {
        self.snapshot_attempts.fetch_add(1, Ordering::Relaxed);
        if self.snapshots_fail.load(Ordering::Relaxed) {
            return Err(WalError::InjectedFault("snapshot write"));
        }
        self.inner.write_snapshot(log, seq, state)
    }
    fn latest_snapshot(&self, log: LogId) -> Result<Option<Snapshot>, WalError> {
        self.inner.latest_snapshot(log)
    }
    fn truncate_below(&self, log: LogId, seq: u64) -> Result<(), WalError> {
        self.inner.truncate_below(log, seq)
    }
    fn read_meta(&self, key: &str) -> Result<Option<Vec<u8>>, WalError> {
        self.inner.read_meta(key)
    }
    fn write_meta(&self, key: &str, value: &[u8]) -> Result<(), WalError> {
        self.inner.write_meta(key, value)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_answers_overloaded_at_once_and_nothing_is_lost() {
    let wal = GatedWal::new(false);
    let open = wal.open.clone();
    let config = RuntimeConfig {
        inbox_capacity: 4,
        durability_queue_batches: 1,
        batch_jobs_max: 1,
        ..config(1)
    };
    let runtime = Runtime::start(config, wal, Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    // With syncs stalled, at most a few requests fit in the pipeline; the rest are refused.
    let tasks: Vec<_> = (0..50u64)
        .map(|sku| {
            let handle = handle.clone();
            tokio::spawn(async move { (sku, handle.set_stock(request(), SkuId(sku), 5).await) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    *open.lock().unwrap() = true;
    let mut accepted = Vec::new();
    let mut overloaded = 0;
    for task in tasks {
        match task.await.unwrap() {
            (sku, Ok(Outcome::StockChanged { .. })) => accepted.push(sku),
            (_, Err(RuntimeError::Overloaded { shard: 0 })) => overloaded += 1,
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(overloaded > 0, "a stalled log must push back");
    assert!(!accepted.is_empty(), "what fit in the pipeline is served");
    for sku in accepted {
        assert_eq!(view(&handle, sku).await.total, 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_a_step_is_answered_in_order_across_shards() {
    use flashstock_protocol::{Reply, Request};
    // Steps of at most 4 jobs' worth: a batch of 60 items must be split and carried over.
    let config = RuntimeConfig { batch_jobs_max: 4, ..config(2) };
    let runtime = Runtime::start(config, MemWal::new(), Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    for sku in 100..110 {
        stock(&handle, sku, 3).await;
    }
    // Four reserves per SKU (one too many) and a read after each SKU's reserves.
    let mut items = Vec::new();
    for sku in 100..110u64 {
        for buyer in 0..4u64 {
            let reserve = flashstock_engine::Reserve {
                request: request(),
                buyer: BuyerId(buyer),
                sku: SkuId(sku),
                qty: 1,
                ttl_ms: 60_000,
                order_ref: None,
            };
            items.push(Request::Apply(flashstock_engine::Command::Reserve(reserve)));
        }
        items.push(Request::QuerySku(SkuId(sku)));
    }
    items.push(Request::QueryReservation(flashstock_engine::ReservationId::new(
        flashstock_engine::Slot(0),
        flashstock_engine::ShardId(9),
        1,
    )));
    let answers = handle.submit_batch(&items).wait().await;
    assert_eq!(answers.len(), items.len());
    for (sku_index, chunk) in answers.chunks(5).take(10).enumerate() {
        let outcomes: Vec<_> = chunk[..4].iter().map(|a| a.as_ref().unwrap().clone()).collect();
        let reserved = outcomes
            .iter()
            .filter(|a| matches!(a, Reply::Outcome(Outcome::Reserved { .. })))
            .count();
        assert_eq!(reserved, 3, "sku {}: {outcomes:?}", 100 + sku_index);
        assert_eq!(outcomes[3], Reply::Outcome(Outcome::SoldOut { available: 0 }), "in order");
        let Ok(Reply::Sku(Some(view))) = &chunk[4] else { panic!("a SKU read: {:?}", chunk[4]) };
        assert_eq!((view.available, view.reserved), (0, 3), "the read sees the reserves before it");
    }
    assert!(matches!(answers.last(), Some(Ok(Reply::Reservation(None)))), "a forged id is unknown");
}

/// A runtime shut down while a handle to it lives on (a task that has not finished, a demo
/// that keeps its handle) must let go of its log: a restart in the same process opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_same_process_works_while_old_handles_live() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::open(dir.path(), config(2), Arc::new(SystemClock)).unwrap();
    let kept = runtime.handle().clone();
    stock(&kept, 1, 10).await;
    runtime.shutdown();
    let started = Instant::now();
    let restarted = Runtime::open(dir.path(), config(2), Arc::new(SystemClock))
        .expect("the log is free once the runtime is shut down");
    assert!(started.elapsed() < Duration::from_secs(1), "opened at once: {:?}", started.elapsed());
    assert_eq!(counts(&view(&restarted.handle(), 1).await), (10, 10, 0, 0));
    // The old handle refuses, typed, rather than reaching into a log it no longer owns.
    assert!(matches!(kept.query_sku(SkuId(1)).await, Err(RuntimeError::ShuttingDown)));
    restarted.shutdown();
}

/// Slow steps are counted against the configured threshold: at 0 ms every step that did
/// work is slow, at a minute none is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_steps_are_counted_against_the_threshold() {
    for (slow_step_ms, expect_slow) in [(0, true), (60_000, false)] {
        let dir = tempfile::tempdir().unwrap();
        let config = RuntimeConfig { slow_step_ms, ..config(2) };
        let runtime = Runtime::open(dir.path(), config, Arc::new(SystemClock)).unwrap();
        stock(&runtime.handle(), 1, 10).await;
        view(&runtime.handle(), 1).await;
        let slow = runtime.durability_stats().slow_steps.load(Ordering::Relaxed);
        assert_eq!(slow > 0, expect_slow, "threshold {slow_step_ms} ms: {slow} slow steps");
        runtime.shutdown();
    }
}

/// A slot range moved between two runtimes (docs/cluster.md): frozen on both, exported from
/// every shard of the source, imported into the target's, thawed there and released at the
/// source. Commands of the frozen range are answered `SlotMoving`; after a restart of both,
/// the target holds the range as the source did, and the source none of it.
#[tokio::test]
async fn a_slot_range_moves_between_runtimes_and_survives_their_restarts() {
    use flashstock_engine::{slot_of, Slot, SlotRange, SlotsStep};
    let range = SlotRange::new(Slot(0), Slot(2047)).unwrap();
    let moving = |view: &SkuView| range.contains(slot_of(view.sku));
    let config = RuntimeConfig { snapshot_every_records: 40, ..config(2) };
    let (source_wal, target_wal) = (MemWal::new(), MemWal::new());
    let start = |wal: &MemWal| Runtime::start(config.clone(), wal.clone(), Arc::new(SystemClock));
    let (source, target) = (start(&source_wal).unwrap(), start(&target_wal).unwrap());
    let (from, to) = (source.handle(), target.handle());
    let sku = traffic(&from).await.into_iter().find(moving).expect("a SKU of the range").sku;
    let held = from.reserve(request(), BuyerId(9), sku, 1, 600_000).await.unwrap();
    let Outcome::Reserved { reservation, .. } = held else { panic!("{held:?}") };
    let before: Vec<SkuView> = from.list_skus().await.unwrap().into_iter().filter(moving).collect();

    for handle in [&from, &to] {
        handle.slots_step(range, SlotsStep::Frozen).await.unwrap();
    }
    let refused = from.set_stock(request(), sku, 1).await.unwrap_err();
    assert!(matches!(refused, RuntimeError::SlotMoving { .. }), "{refused:?}");
    for shard in 0..2 {
        let (mut offset, mut total) = (0, usize::MAX);
        while offset < total {
            let (page, all) = from.export_slots(range, shard, offset, 7).await.unwrap();
            (offset, total) = (offset + page.len(), all);
            to.import_slots(shard, page).await.unwrap();
        }
    }
    to.slots_step(range, SlotsStep::Thawed).await.unwrap();
    from.slots_step(range, SlotsStep::Released).await.unwrap();
    let after_move = to.query_reservation(reservation).await.unwrap().expect("moved with its SKU");
    source.shutdown();
    target.shutdown();

    let (source, target) = (start(&source_wal).unwrap(), start(&target_wal).unwrap());
    let moved: Vec<SkuView> =
        target.handle().list_skus().await.unwrap().into_iter().filter(moving).collect();
    assert_eq!(moved, before);
    assert!(source.handle().list_skus().await.unwrap().iter().all(|v| !moving(v)));
    let restarted = target.handle().query_reservation(reservation).await.unwrap();
    assert_eq!(restarted, Some(after_move));
    let confirmed = target.handle().confirm(request(), reservation).await.unwrap();
    assert_eq!(confirmed, Outcome::Confirmed);
    assert!(target.handle().frozen_ranges().await.unwrap().is_empty());
}
