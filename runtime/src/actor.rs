//! The shard actor: one thread that owns one `Shard`, drains its inbox in batches, applies
//! them, and hands the batch's records and replies to the durability thread.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use flashstock_engine::{
    Ask, Command, Decide, EncodedLog, EngineError, MoveOut, PrepareLines, Prepared, ReservationId,
    Settle, Shard, ShardId, ShardMessage, SkuId, SkuView, SlotsStep, StockMove,
};
use flashstock_protocol::{Refusal, Reply, Request};
use tokio::sync::oneshot;

use crate::buckets::BucketTable;
use crate::clock::Clock;
use crate::config::RuntimeConfig;
use crate::durability::Commit;
use crate::error::RuntimeError;
use crate::metrics::ShardMetrics;
use crate::slots::{SlotsDone, SlotsJob, SlotsTo};
use flashstock_wal::BATCH_RECORDS_BYTES_MAX;

/// How many commands of a batch ahead the actor asks the shard to prefetch: the random cache
/// misses of ~8 commands then overlap (see `Shard::prefetch`).
const PREFETCH_AHEAD: usize = 8;

/// Where an actor sends a job's answer, in the wire's vocabulary. Answers leave only once
/// everything the actor applied before them is durable, so no reader ever sees an effect that
/// a crash could undo.
pub(crate) type AnswerTo = oneshot::Sender<Result<Reply, RuntimeError>>;

/// A request to a shard actor.
#[derive(Debug)]
pub(crate) enum Job {
    Apply {
        command: Command,
        reply: AnswerTo,
    },
    QuerySku {
        sku: SkuId,
        reply: AnswerTo,
    },
    QueryReservation {
        reservation: ReservationId,
        reply: AnswerTo,
    },
    /// The shard's first `limit` SKUs after `after`, in id order, one `Reply::Sku` each.
    ListSkus {
        after: Option<SkuId>,
        limit: usize,
        reply: BatchReply,
    },
    /// Several requests to this shard with one reply: a network batch's share of the shard.
    /// At most `batch_jobs_max` items, so that one step can always take it whole.
    Batch {
        items: Vec<Request>,
        reply: BatchReply,
    },
    /// A cart's participant: prepare this shard's lines (boxed: carts are rare, jobs many).
    PrepareLines {
        prepare: Box<PrepareLines>,
        reply: PreparedTo,
    },
    /// A cart's coordinator: decide it. Answered with the cart's outcome.
    DecideCart {
        decide: Box<Decide>,
        reply: AnswerTo,
    },
    /// A cart's participant: settle a group as the coordinator decided. Not answered.
    Settle(Settle),
    /// A cart's coordinator: a participant asks about its group. Answered with a `Settle`.
    Ask(Ask),
    /// Read a cart this shard coordinates.
    QueryCart {
        cart: ReservationId,
        reply: AnswerTo,
    },
    /// Hot-SKU buckets: move units out of one of this shard's buckets. Answered with the
    /// move (`None` when the bucket had none) once it is durable.
    MoveOut {
        ask: MoveOut,
        reply: MovedTo,
    },
    /// Units another shard moved out arrive here. Not answered.
    MoveIn {
        from: ShardId,
        stock_move: StockMove,
    },
    /// A move this shard sent is in. Not answered.
    MoveAck(u64),
    /// Answered once move `id` from `from` is in here (at once when it is already).
    AwaitMove {
        from: ShardId,
        id: u64,
        reply: oneshot::Sender<()>,
    },
    /// Applies a command whose earlier refusal went stale (`Shard::apply_again`).
    ApplyAgain {
        command: Command,
        reply: AnswerTo,
    },
    /// A slot move's step, export, import or listing (docs/cluster.md).
    Slots {
        job: SlotsJob,
        reply: SlotsTo,
    },
    /// Finish the current step, snapshot, and exit.
    Stop,
}

/// Where a participant's answer to a prepare goes.
pub(crate) type PreparedTo = oneshot::Sender<Result<Prepared, RuntimeError>>;

/// Where the answer to a `MoveOut` goes.
pub(crate) type MovedTo = oneshot::Sender<Result<Option<StockMove>, RuntimeError>>;

impl Job {
    /// The job that carries a message one shard left for another.
    pub(crate) fn of_message(message: ShardMessage) -> (u16, Job) {
        match message {
            ShardMessage::Settle { to, settle } => (to.0, Job::Settle(settle)),
            ShardMessage::Ask { to, ask } => (to.0, Job::Ask(ask)),
            ShardMessage::MoveIn { to, from, stock_move } => {
                (to.0, Job::MoveIn { from, stock_move })
            }
            ShardMessage::MoveAck { to, id } => (to.0, Job::MoveAck(id)),
        }
    }
}

impl Job {
    /// How much of a step's capacity (`batch_jobs_max`) the job takes.
    fn weight(&self) -> usize {
        match self {
            Job::Batch { items, .. } => items.len(),
            Job::Slots { job: SlotsJob::Import(items), .. } => items.len(),
            _ => 1,
        }
    }
}

/// Where a batch job's answers go, all at once.
pub(crate) type BatchReply = oneshot::Sender<Result<Vec<Reply>, RuntimeError>>;

/// An answer (or a batch of them) waiting for its step to be durable.
#[derive(Debug)]
pub(crate) enum Delivery {
    One(AnswerTo, Reply),
    Many(BatchReply, Vec<Reply>),
    Prepared(PreparedTo, Prepared),
    Moved(MovedTo, Option<StockMove>),
    Arrived(oneshot::Sender<()>),
    Slots(SlotsTo, Result<SlotsDone, EngineError>),
}

pub(crate) struct Actor {
    pub(crate) shard: Shard,
    pub(crate) inbox: Receiver<Job>,
    pub(crate) durable: Sender<Commit>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: RuntimeConfig,
    /// The sequence number of the next record this shard logs.
    pub(crate) next_seq: u64,
    /// A job taken from the inbox that did not fit the previous step.
    pub(crate) carried: Option<Job>,
    pub(crate) metrics: ShardMetrics,
    pub(crate) stats: Arc<crate::DurabilityStats>,
    /// Callers waiting for a move to arrive here: its sender, its id, and where to answer.
    /// Lost with the process, as their callers are.
    pub(crate) move_waiters: Vec<(ShardId, u64, oneshot::Sender<()>)>,
    /// Where the buckets held here publish their stock after each step.
    pub(crate) buckets: Arc<BucketTable>,
}

impl Actor {
    pub(crate) fn run(mut self) {
        let tick = Duration::from_millis(self.config.tick_interval_ms);
        loop {
            let first = match self.carried.take() {
                Some(job) => Some(job),
                None => match self.inbox.recv_timeout(tick) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            if self.step(first) {
                break;
            }
        }
        tracing::debug!(shard = self.shard.id().0, next_seq = self.next_seq, "shard actor stopped");
    }

    /// Applies up to `batch_jobs_max` jobs and due expiries at one instant, then hands the
    /// records and replies on. Returns true when a `Stop` was taken.
    fn step(&mut self, first: Option<Job>) -> bool {
        let now_ms = self.clock.now_ms();
        let started = std::time::Instant::now();
        let inbox_jobs = self.inbox.len();
        // A step may log more than one WAL batch holds (a big tick, long confirm records):
        // the log is cut into batch-sized chunks, all made durable by the same sync.
        let mut log = EncodedLog::with_chunk_bytes_max(BATCH_RECORDS_BYTES_MAX);
        let mut replies = Vec::new();
        let mut stop = false;
        let mut weight = 0;
        let mut next = first;
        while let Some(job) = next.take() {
            if let Job::Stop = job {
                stop = true;
                break;
            }
            // A step's records must fit one WAL batch: a job that would overflow this step
            // waits for the next one.
            if weight > 0 && weight + job.weight() > self.config.batch_jobs_max {
                self.carried = Some(job);
                break;
            }
            weight += job.weight();
            replies.extend(self.answer(job, now_ms, &mut log));
            if weight >= self.config.batch_jobs_max {
                break;
            }
            next = self.inbox.try_recv().ok();
        }
        let applied = started.elapsed();
        let mut expired = 0;
        if self.shard.next_expiry_ms().is_some_and(|due_ms| due_ms <= now_ms) {
            expired = self.shard.tick(now_ms, &mut log);
        }
        let elapsed = started.elapsed();
        self.metrics.step(inbox_jobs, weight, elapsed);
        let shard = &self.shard;
        self.metrics.state(shard.reservations_live(), shard.sku_count(), shard.table_entries());
        self.count_if_slow(weight, expired, applied, elapsed);
        if self.shard.holds_buckets() {
            for (bucket, units) in self.shard.bucket_stock() {
                self.buckets.publish(bucket, units);
            }
        }
        let mut messages = Vec::new();
        self.shard.take_messages(&mut messages);
        if !replies.is_empty() || log.record_count > 0 || !messages.is_empty() {
            let record_count = log.record_count;
            let (log_id, first_seq) = (self.shard.id().0, self.next_seq);
            let commit = Commit { log: log_id, first_seq, records: log, replies, messages };
            self.next_seq += u64::from(record_count);
            // Blocks when the durability thread is behind: the inbox then fills, and callers
            // are told `Overloaded` instead of queueing without bound.
            if self.durable.send(commit).is_err() {
                return true;
            }
        }
        stop
    }

    /// Counts and logs a step of `slow_step_ms` or more: every reply of it waited that long.
    /// The log line splits it into the jobs applied and the expiries of its tick.
    fn count_if_slow(&self, jobs: usize, expired: u32, applied: Duration, elapsed: Duration) {
        let elapsed_ms = elapsed.as_millis();
        if elapsed_ms < u128::from(self.config.slow_step_ms) {
            return;
        }
        self.stats.slow_steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.slow_step();
        let shard = self.shard.id().0;
        let (applied_ms, tick_ms) = (applied.as_millis(), (elapsed - applied).as_millis());
        tracing::warn!(shard, jobs, expired, applied_ms, tick_ms, elapsed_ms, "slow shard step");
    }

    fn answer(&mut self, job: Job, now_ms: u64, log: &mut EncodedLog) -> Option<Delivery> {
        let one = |reply, answer| Some(Delivery::One(reply, answer));
        match job {
            Job::Apply { command, reply } => one(reply, self.apply(&command, now_ms, log)),
            Job::QuerySku { sku, reply } => one(reply, self.sku_view(sku)),
            Job::QueryReservation { reservation, reply } => one(
                reply,
                Reply::Reservation(self.shard.query_reservation(reservation).map(Box::new)),
            ),
            Job::ListSkus { after, limit, reply } => {
                // One pass over the shard's SKUs, keeping the page: a stall of the shard in
                // proportion to its SKUs, for an admin's listing.
                let after = after.map_or(0, |sku| sku.0.wrapping_add(1));
                // A spread SKU is listed once, as its bucket 0 (the handle adds the others).
                let listed = |view: &SkuView| view.sku.0 >= after && !view.sku.is_bucket();
                let mut page: Vec<_> = self.shard.skus().filter(listed).collect();
                if page.len() > limit {
                    page.select_nth_unstable_by_key(limit, |view| view.sku);
                    page.truncate(limit);
                }
                page.sort_unstable_by_key(|view| view.sku);
                let views = page.into_iter().map(|view| Reply::Sku(Some(Box::new(view))));
                Some(Delivery::Many(reply, views.collect()))
            }
            Job::Batch { items, reply } => {
                for item in items.iter().take(PREFETCH_AHEAD) {
                    self.prefetch_item(item);
                }
                let answers = (0..items.len())
                    .map(|index| {
                        if let Some(ahead) = items.get(index + PREFETCH_AHEAD) {
                            self.prefetch_item(ahead);
                        }
                        self.answer_item(&items[index], now_ms, log)
                    })
                    .collect();
                Some(Delivery::Many(reply, answers))
            }
            Job::PrepareLines { prepare, reply } => {
                let prepared = self.shard.prepare_lines(&prepare, now_ms, log);
                Some(Delivery::Prepared(reply, prepared))
            }
            Job::DecideCart { decide, reply } => {
                one(reply, Reply::Outcome(self.shard.decide_cart(&decide, now_ms, log)))
            }
            Job::Settle(settle) => {
                self.shard.settle(&settle, now_ms, log);
                None
            }
            Job::Ask(ask) => {
                self.shard.answer_ask(&ask, now_ms, log);
                None
            }
            Job::QueryCart { cart, reply } => {
                one(reply, Reply::Cart(self.shard.query_cart(cart).map(Box::new)))
            }
            Job::MoveOut { ask, reply } => {
                Some(Delivery::Moved(reply, self.shard.move_out(&ask, now_ms, log)))
            }
            Job::MoveIn { from, stock_move } => {
                self.shard.move_in(from, &stock_move, now_ms, log);
                self.wake_move_waiter(from)
            }
            Job::MoveAck(id) => {
                self.shard.move_acked(id, now_ms, log);
                None
            }
            Job::AwaitMove { from, id, reply } => {
                if self.shard.move_applied_from(from) >= id {
                    return Some(Delivery::Arrived(reply));
                }
                self.move_waiters.push((from, id, reply));
                None
            }
            Job::ApplyAgain { command, reply } => match self.moving(&command) {
                Some(moving) => one(reply, moving),
                None => one(reply, Reply::Outcome(self.shard.apply_again(&command, now_ms, log))),
            },
            Job::Slots { job, reply } => Some(Delivery::Slots(reply, self.slots(job, now_ms, log))),
            Job::Stop => unreachable!("handled by the caller"),
        }
    }

    /// Answers a caller waiting for a move from `from` that is now in. One at most per
    /// move: each caller waits for the move it asked for.
    fn wake_move_waiter(&mut self, from: ShardId) -> Option<Delivery> {
        let applied = self.shard.move_applied_from(from);
        let ready = self.move_waiters.iter().position(|&(f, id, _)| f == from && id <= applied)?;
        let (_, _, reply) = self.move_waiters.swap_remove(ready);
        Some(Delivery::Arrived(reply))
    }

    /// A SKU's read; a bucket's units on their way to another bucket still count here
    /// until they arrive (docs/hot-skus.md), so a spread SKU's buckets add up at rest.
    fn sku_view(&self, sku: SkuId) -> Reply {
        let view = self.shard.query_sku(sku).map(|mut view| {
            let moving = self.shard.units_moving_out(sku);
            view.total += moving;
            view.available += moving;
            Box::new(view)
        });
        Reply::Sku(view)
    }

    /// Applies a command, unless its slot is moving to another server.
    fn apply(&mut self, command: &Command, now_ms: u64, log: &mut EncodedLog) -> Reply {
        match self.moving(command) {
            Some(moving) => moving,
            None => Reply::Outcome(self.shard.apply(command, now_ms, log)),
        }
    }

    /// The answer to a command of a slot a move froze here: retry shortly.
    fn moving(&self, command: &Command) -> Option<Reply> {
        let slot = command.route_key().slot();
        self.shard.frozen_slot(slot).then_some(Reply::Refused(Refusal::SlotMoving { slot: slot.0 }))
    }

    fn slots(
        &mut self,
        job: SlotsJob,
        now_ms: u64,
        log: &mut EncodedLog,
    ) -> Result<SlotsDone, EngineError> {
        let shard = &mut self.shard;
        match job {
            SlotsJob::Step(range, SlotsStep::Frozen) => shard.freeze_slots(range, now_ms, log),
            SlotsJob::Step(range, SlotsStep::Thawed) => shard.thaw_slots(range, now_ms, log),
            SlotsJob::Step(range, SlotsStep::Released) => shard.release_slots(range, now_ms, log),
            SlotsJob::Export(range) => return shard.export_slots(range).map(SlotsDone::Items),
            SlotsJob::Import(items) => {
                items.iter().try_for_each(|item| shard.import_slot(item, now_ms, log))
            }
            SlotsJob::Frozen => return Ok(SlotsDone::Frozen(shard.frozen_ranges().to_vec())),
        }
        .map(|()| SlotsDone::Done)
    }

    fn prefetch_item(&self, item: &Request) {
        if let Request::Apply(command) = item {
            self.shard.prefetch(command);
        }
    }

    fn answer_item(&mut self, item: &Request, now_ms: u64, log: &mut EncodedLog) -> Reply {
        match *item {
            Request::Apply(ref command) => self.apply(command, now_ms, log),
            Request::QuerySku(sku) => self.sku_view(sku),
            Request::QueryReservation(id) => {
                Reply::Reservation(self.shard.query_reservation(id).map(Box::new))
            }
            Request::QueryCart(id) => Reply::Cart(self.shard.query_cart(id).map(Box::new)),
            Request::ReserveCart(_) => unreachable!("a cart is driven by the handle, not a shard"),
        }
    }
}
