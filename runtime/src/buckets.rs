//! Hot-SKU buckets in the runtime (docs/hot-skus.md): which SKUs are spread, how a request
//! naming one is rewritten for its buckets, a reserve's refill from the sibling buckets when
//! its own runs dry, the spread after `SetBuckets`, and reads that add the buckets up.
//!
//! The engine decides every unit (moves are logged on both sides, idempotent by id); this
//! module only chooses which bucket a request goes to, and waits on other shards, which the
//! engine never does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use flashstock_engine::{
    mix64, CartLine, Command, LineRefusal, Lines, MoveOut, MoveSplit, Outcome, Reserve,
    ReserveCart, SkuId, SkuView, StockMove, BUCKETS_MAX,
};
use flashstock_protocol::{Reply, Request};
use tokio::sync::oneshot;

use crate::actor::Job;
use crate::error::RuntimeError;
use crate::handle::Handle;

/// The spread SKUs and their bucket counts, read on every reserve: a concurrent map, with a
/// flag that lets the common case (nothing spread) skip even its lookup.
#[derive(Debug, Default)]
pub(crate) struct BucketTable {
    skus: DashMap<SkuId, Arc<Spread>>,
    any: AtomicBool,
    /// Each bucket's available units plus those on their way out of it, as its shard
    /// published them after its latest step (`Shard::bucket_stock`).
    published: DashMap<SkuId, u64>,
    metrics: BucketMetrics,
}

/// The buckets' metrics, resolved once (a sold-out storm counts one per refused reserve).
#[derive(Debug)]
struct BucketMetrics {
    moves: metrics::Counter,
    held: metrics::Counter,
    sold_out: metrics::Counter,
    sold_out_published: metrics::Counter,
}

impl Default for BucketMetrics {
    fn default() -> BucketMetrics {
        use crate::metrics::{from_zero, BUCKET_MOVES_TOTAL, BUCKET_REFILLS_TOTAL};
        let refills = |result: &'static str| {
            from_zero(metrics::counter!(BUCKET_REFILLS_TOTAL, "result" => result))
        };
        BucketMetrics {
            moves: from_zero(metrics::counter!(BUCKET_MOVES_TOTAL)),
            held: refills("held"),
            sold_out: refills("sold_out"),
            sold_out_published: refills("sold_out_published"),
        }
    }
}

impl BucketMetrics {
    /// Counts what a refill ended with.
    fn refilled(&self, outcome: &Outcome) {
        match outcome {
            Outcome::SoldOut { .. } => self.sold_out.increment(1),
            Outcome::Reserved { .. } => self.held.increment(1),
            _ => {}
        }
    }
}

/// One spread SKU.
#[derive(Debug)]
struct Spread {
    buckets: u32,
    /// Held by the one refill moving units into a bucket of this SKU (see `Handle::refill`).
    refill: tokio::sync::Mutex<()>,
}

/// The most rounds of one refill (each asks every sibling once, or waits for another
/// refill). Every round that moves units either holds the reserve or lost them to reserves
/// that held, so the bound is hardly reached; it keeps a pathological case from looping.
const REFILL_ROUNDS_MAX: usize = 64;

impl BucketTable {
    /// The table as the recovered shards' logs left it.
    pub(crate) fn new(spread: impl IntoIterator<Item = (SkuId, u32)>) -> BucketTable {
        let table = BucketTable::default();
        for (sku, buckets) in spread {
            table.insert(sku, buckets);
        }
        table
    }

    /// How many buckets `sku` is spread over, when it is.
    pub(crate) fn buckets_of(&self, sku: SkuId) -> Option<u32> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.skus.get(&sku).map(|entry| entry.buckets)
    }

    /// Called by a shard actor after each step, for each bucket it holds.
    pub(crate) fn publish(&self, bucket: SkuId, units: u64) {
        self.published.insert(bucket, units);
    }

    /// The units every bucket of `sku` had to give as of its shard's latest step; `None`
    /// while a bucket has published nothing yet.
    fn published_total(&self, sku: SkuId, buckets: u32) -> Option<u64> {
        let units = (0..buckets).map(|index| self.published.get(&sku.bucket(index)).map(|u| *u));
        units.sum()
    }

    fn spread(&self, sku: SkuId) -> Option<Arc<Spread>> {
        self.skus.get(&sku).map(|entry| entry.clone())
    }

    fn insert(&self, sku: SkuId, buckets: u32) {
        let spread = Spread { buckets, refill: tokio::sync::Mutex::new(()) };
        self.skus.entry(sku).or_insert_with(|| Arc::new(spread));
        self.any.store(true, Ordering::Release);
    }
}

/// The bucket a buyer's reserves of a SKU spread over `buckets` go to: always the same one,
/// so that the buyer's count (and its limit) lives in one place.
pub(crate) fn home_bucket(sku: SkuId, buyer: u64, buckets: u32) -> SkuId {
    sku.bucket((mix64(buyer) % u64::from(buckets)) as u32)
}

/// What a request naming a spread SKU (or a bucket's own id) becomes.
pub(crate) enum Rewrite {
    /// Nothing to change.
    Unchanged,
    /// Sent as this request instead; a reserve may need a refill afterwards.
    Sent(Request, Option<Refill>),
    /// Answered at once (a client named a bucket's id).
    Answered(Reply),
    /// Answered by a task of its own (a spread SKU's read, a `SetBuckets`).
    Task,
}

/// A reserve sent to its buyer's home bucket: if that answers sold out, the siblings refill
/// it and it is applied again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refill {
    pub(crate) reserve: Reserve,
    pub(crate) buckets: u32,
}

impl Refill {
    /// Whether `outcome` asks for this refill.
    pub(crate) fn wanted(outcome: &Outcome) -> bool {
        matches!(outcome, Outcome::SoldOut { .. } | Outcome::UnknownSku)
    }
}

/// A home bucket no move ever reached is as sold out as an empty one.
fn sold_out_if_unknown(outcome: Outcome) -> Outcome {
    if outcome == Outcome::UnknownSku {
        Outcome::SoldOut { available: 0 }
    } else {
        outcome
    }
}

impl Handle {
    /// How `item` is rewritten for spread SKUs (nothing at all while none is spread).
    pub(crate) fn rewrite(&self, item: &Request) -> Rewrite {
        let unknown = |reply| Rewrite::Answered(reply);
        match *item {
            Request::Apply(command) => self.rewrite_command(command),
            Request::QuerySku(sku) if sku.is_bucket() => unknown(Reply::Sku(None)),
            Request::QuerySku(sku) if self.buckets().buckets_of(sku).is_some() => Rewrite::Task,
            // A cart's lines are rewritten where its driver starts (`Handle::spawn_cart`).
            _ => Rewrite::Unchanged,
        }
    }

    fn rewrite_command(&self, command: Command) -> Rewrite {
        let sku = match command.route_key() {
            flashstock_engine::RouteKey::Sku(sku) => sku,
            flashstock_engine::RouteKey::Reservation(_) => return Rewrite::Unchanged,
        };
        if sku.is_bucket() {
            return Rewrite::Answered(Reply::Outcome(Outcome::UnknownSku));
        }
        if let Command::SetBuckets { .. } = command {
            return Rewrite::Task;
        }
        let Some(buckets) = self.buckets().buckets_of(sku) else {
            return Rewrite::Unchanged;
        };
        match command {
            Command::Reserve(reserve) => {
                let reserve =
                    Reserve { sku: home_bucket(sku, reserve.buyer.0, buckets), ..reserve };
                let refill = Some(Refill { reserve, buckets });
                Rewrite::Sent(Request::Apply(Command::Reserve(reserve)), refill)
            }
            // The sale is kept by one bucket: the reservation's, or the cart line's.
            Command::ReturnSold { .. } => Rewrite::Task,
            _ => Rewrite::Unchanged,
        }
    }

    /// The cart with each line of a spread SKU sent to the buyer's home bucket; `None` when
    /// no line names one. A line naming a bucket's own id is refused as an unknown SKU.
    pub(crate) fn cart_of_named_skus(
        &self,
        cart: &ReserveCart,
    ) -> Result<Option<ReserveCart>, Outcome> {
        let mut lines = Lines::default();
        let mut changed = false;
        for line in cart.lines.as_slice() {
            if line.sku.is_bucket() {
                let refusal = LineRefusal::UnknownSku;
                return Err(Outcome::CartRefused { line: line.index, refusal, value: 0 });
            }
            let sku = match self.buckets().buckets_of(line.sku) {
                Some(buckets) => home_bucket(line.sku, cart.buyer.0, buckets),
                None => line.sku,
            };
            changed |= sku != line.sku;
            lines.push(CartLine { sku, ..*line });
        }
        Ok(changed.then_some(ReserveCart { lines, ..*cart }))
    }

    /// Answers a request the rewrite gave to a task: a spread SKU's read, or `SetBuckets`.
    pub(crate) async fn run_task(&self, item: Request) -> Result<Reply, RuntimeError> {
        match item {
            Request::QuerySku(sku) => Ok(Reply::Sku(self.query_spread(sku).await?.map(Box::new))),
            Request::Apply(Command::SetBuckets { request, sku, buckets }) => {
                let outcome = self.set_buckets_and_spread(request, sku, buckets).await?;
                Ok(Reply::Outcome(outcome))
            }
            Request::Apply(command @ Command::ReturnSold { .. }) => {
                Ok(Reply::Outcome(self.return_to_its_bucket(command).await?))
            }
            other => unreachable!("no task answers {other:?}"),
        }
    }

    /// A return of a spread SKU, at the bucket that sold it. A one-line reservation's bucket
    /// is on its shard; a cart line's is its buyer's home bucket, which the return does not
    /// name: the other buckets answer `not_returnable` and change nothing, so each is asked
    /// in turn, the reservation's shard's first.
    async fn return_to_its_bucket(&self, command: Command) -> Result<Outcome, RuntimeError> {
        let Command::ReturnSold { request, reservation, line, sku, qty } = command else {
            unreachable!("only returns are sent here: {command:?}");
        };
        let buckets = self.buckets().buckets_of(sku).unwrap_or(1);
        let map = self.shard_map();
        let (home, count) = (u32::from(map.shard_of_sku(sku).0), u32::from(map.shard_count()));
        let first = (u32::from(reservation.shard().0) + count - home) % count;
        let mut outcome = Outcome::NotReturnable;
        for step in 0..buckets {
            let sku = sku.bucket((first + step) % buckets);
            outcome = self
                .apply_unrouted(Command::ReturnSold { request, reservation, line, sku, qty })
                .await?;
            if outcome != Outcome::NotReturnable {
                break;
            }
        }
        Ok(outcome)
    }

    /// A reserve its home bucket answered sold out (or never had stock): the siblings move
    /// units into the home bucket (at least the reserve's, and half of their own) and the
    /// reserve is applied again.
    ///
    /// One refill of a SKU moves units at a time (its refill lock): two moving units towards
    /// each other's buckets at once could pass the same units back and forth, and a crowd of
    /// refused reserves asking at once would each move a share. A reserve that finds a
    /// refill under way waits for it, then tries its home bucket again, and moves units
    /// itself only if that fails. The refill that holds the lock asks each sibling in turn;
    /// a round in which none had a unit for the home bucket ends it, unless units the home
    /// bucket itself sent to a sibling were still on their way (then it waits for them and
    /// asks again); last, the home bucket is asked once more. So sold out means: no bucket
    /// had a unit for this reserve when it was asked, and none was in flight between them
    /// (or, at once, that the buckets' published stock was short: `answer_without_refill`).
    pub(crate) async fn refill(
        &self,
        refill: Refill,
        first: Outcome,
    ) -> Result<Outcome, RuntimeError> {
        if let Some(answer) = self.answer_without_refill(&refill, first) {
            return Ok(answer);
        }
        let outcome = self.refill_rounds(refill, first).await?;
        self.buckets().metrics.refilled(&outcome);
        Ok(outcome)
    }

    /// The rounds of [`Handle::refill`], once a refill may help.
    async fn refill_rounds(&self, refill: Refill, first: Outcome) -> Result<Outcome, RuntimeError> {
        let Some(spread) = self.buckets().spread(refill.reserve.sku.base()) else {
            return Ok(sold_out_if_unknown(first));
        };
        let mut outcome = first;
        for _ in 0..REFILL_ROUNDS_MAX {
            if !Refill::wanted(&outcome) {
                return Ok(outcome);
            }
            if let Some(available) = self.published_short(&refill) {
                return Ok(Outcome::SoldOut { available });
            }
            let Ok(_moving) = spread.refill.try_lock() else {
                // Another refill is moving units: wait for it, then look again.
                drop(spread.refill.lock().await);
                outcome = self.apply_again(refill.reserve).await?;
                continue;
            };
            let (next, moved) = self.refill_round(refill, outcome).await?;
            outcome = next;
            if Refill::wanted(&outcome) && !moved && !self.await_moves_from_home(refill).await? {
                // Units that reached the home bucket after its last answer (a move another
                // refill asked for) are found here.
                let last = self.apply_again(refill.reserve).await?;
                return Ok(sold_out_if_unknown(last));
            }
        }
        Ok(sold_out_if_unknown(outcome))
    }

    /// Waits for the moves the home bucket sent to its siblings that may not have arrived
    /// yet; whether there were any.
    async fn await_moves_from_home(&self, refill: Refill) -> Result<bool, RuntimeError> {
        let Refill { reserve, buckets } = refill;
        let (sku, home) = (reserve.sku.base(), reserve.sku.bucket_index());
        let mut waited = false;
        for step in 1..buckets {
            let to_sku = sku.bucket((home + step) % buckets);
            // Zero units, exactly: moves nothing, and names a move still on its way.
            let moving = self.move_and_wait(reserve.sku, to_sku, 0, MoveSplit::Exact).await?;
            waited |= moving.is_some();
        }
        Ok(waited)
    }

    /// Fills, before a cart is decided, each of its lines' home buckets that is short of the
    /// line's units while the SKU's buckets have them between them (as published). A cart's
    /// refusal is its coordinator's logged decision, so it cannot be refilled and tried
    /// again under the same id as a reserve is: its buckets are filled first instead. Not
    /// exact (another reserve may take the units before the cart's prepare), but a line
    /// is then refused only in a race.
    pub(crate) async fn fill_cart_buckets(&self, cart: &ReserveCart) -> Result<(), RuntimeError> {
        for line in cart.lines.as_slice() {
            let (sku, home) = (line.sku.base(), line.sku.bucket_index());
            let Some(buckets) = self.buckets().buckets_of(sku) else { continue };
            let qty = u64::from(line.qty);
            let published = |bucket: SkuId| self.buckets().published.get(&bucket).map(|u| *u);
            let home_units = published(line.sku).unwrap_or(0);
            let total = self.buckets().published_total(sku, buckets);
            if home_units >= qty || total.is_some_and(|units| units < qty) {
                continue;
            }
            let units = qty - home_units;
            for step in 1..buckets {
                let sibling = sku.bucket((home + step) % buckets);
                let moved = self.move_and_wait(sibling, line.sku, units, MoveSplit::HalfOrMore);
                if moved.await?.is_some_and(|moved| moved.units >= units) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// A cart's outcome as of the SKUs its caller named: a line of a spread SKU refused
    /// sold out names the units all its buckets had, as a one-line reserve's refusal does.
    pub(crate) fn cart_answer(&self, cart: &ReserveCart, outcome: Outcome) -> Outcome {
        let Outcome::CartRefused { line, refusal: LineRefusal::SoldOut, value } = outcome else {
            return outcome;
        };
        let sku = cart.lines.as_slice().get(usize::from(line)).map(|l| l.sku.base());
        let buckets = sku.and_then(|sku| Some((sku, self.buckets().buckets_of(sku)?)));
        let total = buckets.and_then(|(sku, buckets)| self.buckets().published_total(sku, buckets));
        let value = total.map_or(value, |total| total.max(value));
        Outcome::CartRefused { line, refusal: LineRefusal::SoldOut, value }
    }

    /// The answer to a reserve of a spread SKU whose home bucket answered `outcome`, when
    /// no refill could change it; `None` when one might. A refill might when the reserve was
    /// refused for want of units and, as of their shards' latest steps, the buckets had at
    /// least the units asked between them. At the end of a sale every reserve is refused,
    /// and asking every bucket each time would cost a round trip to each; this costs a
    /// lookup a bucket. Sold out then names the units all buckets had.
    pub(crate) fn answer_without_refill(
        &self,
        refill: &Refill,
        outcome: Outcome,
    ) -> Option<Outcome> {
        if !Refill::wanted(&outcome) {
            return Some(outcome);
        }
        let available = self.published_short(refill)?;
        self.buckets().metrics.sold_out_published.increment(1);
        Some(Outcome::SoldOut { available })
    }

    /// The units all buckets of the reserve's SKU had between them as published, when fewer
    /// than it asks.
    fn published_short(&self, refill: &Refill) -> Option<u64> {
        let (sku, qty) = (refill.reserve.sku.base(), u64::from(refill.reserve.qty));
        let available = self.buckets().published_total(sku, refill.buckets)?;
        (available < qty).then_some(available)
    }

    /// One round: each sibling in turn, until the reserve holds. Returns the last outcome
    /// and whether any sibling moved units (or had some on their way).
    async fn refill_round(
        &self,
        refill: Refill,
        first: Outcome,
    ) -> Result<(Outcome, bool), RuntimeError> {
        let Refill { reserve, buckets } = refill;
        let (sku, home) = (reserve.sku.base(), reserve.sku.bucket_index());
        let (mut outcome, mut moved_any) = (first, false);
        for step in 1..buckets {
            if !Refill::wanted(&outcome) {
                break;
            }
            let sibling = sku.bucket((home + step) % buckets);
            let units = u64::from(reserve.qty);
            let moved = self.move_and_wait(sibling, reserve.sku, units, MoveSplit::HalfOrMore);
            if moved.await?.is_none() {
                continue;
            }
            moved_any = true;
            outcome = self.apply_again(reserve).await?;
        }
        Ok((outcome, moved_any))
    }

    /// Applies a reserve again at its bucket, past its stale refusal.
    async fn apply_again(&self, reserve: Reserve) -> Result<Outcome, RuntimeError> {
        let shard = self.shard_map().shard_of_sku(reserve.sku);
        let command = Command::Reserve(reserve);
        crate::handle::outcome_of(
            self.ask(shard, |reply| Job::ApplyAgain { command, reply }).await?,
        )
    }

    /// Logs `SetBuckets` on the SKU's bucket 0, then spreads its available units evenly.
    /// A retry (same request id) spreads again what is still uneven, so a spread cut short
    /// by a crash is finished by retrying; reserves refill their buckets meanwhile.
    async fn set_buckets_and_spread(
        &self,
        request: flashstock_engine::RequestId,
        sku: SkuId,
        buckets: u32,
    ) -> Result<Outcome, RuntimeError> {
        let buckets_max = BUCKETS_MAX.min(u32::from(self.shard_map().shard_count()));
        if buckets > buckets_max {
            return Ok(Outcome::InvalidBuckets { buckets_max });
        }
        let outcome = self.apply_unrouted(Command::SetBuckets { request, sku, buckets }).await?;
        let Outcome::BucketsSet { buckets } = outcome else {
            return Ok(outcome);
        };
        self.buckets().insert(sku, buckets);
        let mut available = Vec::with_capacity(buckets as usize);
        for index in 0..buckets {
            available.push(self.query_bucket(sku.bucket(index)).await?.map_or(0, |v| v.available));
        }
        let share = available.iter().sum::<u64>() / u64::from(buckets);
        for index in 1..buckets {
            let short = share.saturating_sub(available[index as usize]);
            if short > 0 {
                self.move_and_wait(sku, sku.bucket(index), short, MoveSplit::Exact).await?;
            }
        }
        Ok(outcome)
    }

    /// A SKU's read: its buckets added up when it is spread. Units moving between buckets
    /// count with the bucket they left until the receiver has them, so a read at rest is
    /// exact; a read taken while a move lands may count it twice for that instant.
    pub(crate) async fn query_spread(&self, sku: SkuId) -> Result<Option<SkuView>, RuntimeError> {
        let Some(buckets) = self.buckets().buckets_of(sku) else {
            return self.query_bucket(sku).await;
        };
        let Some(mut sum) = self.query_bucket(sku).await? else {
            return Ok(None);
        };
        for index in 1..buckets {
            if let Some(view) = self.query_bucket(sku.bucket(index)).await? {
                sum.total += view.total;
                sum.available += view.available;
                sum.reserved += view.reserved;
                sum.sold += view.sold;
            }
        }
        Ok(Some(sum))
    }

    async fn query_bucket(&self, sku: SkuId) -> Result<Option<SkuView>, RuntimeError> {
        let shard = self.shard_map().shard_of_sku(sku);
        match self.ask(shard, |reply| Job::QuerySku { sku, reply }).await? {
            Reply::Sku(view) => Ok(view.map(|view| *view)),
            other => unreachable!("query_sku answered {other:?}"),
        }
    }

    /// Moves units from bucket `from_sku` to bucket `to_sku` (as `Shard::move_out` reads
    /// `units` and `split`) and waits until they are in, durably; the move, or `None` when
    /// the sender had nothing to give and nothing on its way.
    async fn move_and_wait(
        &self,
        from_sku: SkuId,
        to_sku: SkuId,
        units: u64,
        split: MoveSplit,
    ) -> Result<Option<StockMove>, RuntimeError> {
        let (from, to) =
            (self.shard_map().shard_of_sku(from_sku), self.shard_map().shard_of_sku(to_sku));
        let ask = MoveOut { from_sku, to_sku, to, units, split };
        let (reply, answer) = oneshot::channel();
        self.send_job(from, Job::MoveOut { ask, reply })?;
        let moved = answer.await.map_err(|_| RuntimeError::ShuttingDown)??;
        if let Some(moved) = moved {
            self.buckets().metrics.moves.increment(1);
            let (reply, arrived) = oneshot::channel();
            self.send_job(to, Job::AwaitMove { from, id: moved.id, reply })?;
            arrived.await.map_err(|_| RuntimeError::ShuttingDown)?;
        }
        Ok(moved)
    }
}
