//! `Handle`: the async API to the shard actors. Cheap to clone; every clone talks to the same
//! runtime. The network layer calls this; so do the tests and benchmarks.

use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};
use flashstock_engine::{
    BuyerId, CartDriver, CartView, Command, Outcome, RequestId, ReservationId, ReservationView,
    Reserve, ReserveCart, RouteKey, SaleWindow, ShardId, ShardMap, SkuId, SkuView,
};
use tokio::sync::oneshot;

use flashstock_protocol::{Refusal, Reply, Request};

use crate::actor::{AnswerTo, BatchReply, Job};
use crate::buckets::{BucketTable, Refill, Rewrite};
use crate::clock::Clock;
use crate::durability::Failure;
use crate::error::RuntimeError;
use crate::slots::Exports;
use crate::stream::EventLog;

/// A way in to a running [`crate::Runtime`].
#[derive(Clone, Debug)]
pub struct Handle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) inboxes: Vec<Sender<Job>>,
    pub(crate) map: ShardMap,
    pub(crate) failure: Arc<Failure>,
    /// The most items one batch job may carry (a step must be able to take it whole).
    pub(crate) batch_jobs_max: usize,
    pub(crate) events: EventLog,
    /// Cart drivers read it for their prepare deadline.
    pub(crate) clock: Arc<dyn Clock>,
    /// The SKUs spread over buckets (docs/hot-skus.md); the shard actors publish their
    /// buckets' stock into it.
    pub(crate) buckets: Arc<BucketTable>,
    /// Slot ranges' exports kept for paging (see `slots`).
    pub(crate) exports: Exports,
}

impl Handle {
    pub(crate) fn new(shared: Shared) -> Handle {
        Handle { shared: Arc::new(shared) }
    }

    pub(crate) fn inboxes(&self) -> &[Sender<Job>] {
        &self.shared.inboxes
    }

    pub(crate) fn buckets(&self) -> &BucketTable {
        &self.shared.buckets
    }

    pub(crate) fn exports(&self) -> &Exports {
        &self.shared.exports
    }

    pub(crate) fn batch_jobs_max(&self) -> usize {
        self.shared.batch_jobs_max
    }

    /// Which shard owns what.
    pub fn shard_map(&self) -> ShardMap {
        self.shared.map
    }

    /// Completes, with the log's error, once the write-ahead log has failed: from then on
    /// nothing is acknowledged, and a server should stop so that it restarts into recovery.
    pub async fn wal_failed(&self) -> String {
        self.shared.failure.failed().await
    }

    /// The log's error, if it has failed (then nothing more is acknowledged).
    pub fn wal_failure(&self) -> Option<String> {
        self.shared.failure.reason()
    }

    /// The committed log, for the committed-deduction stream.
    pub fn events(&self) -> &EventLog {
        &self.shared.events
    }

    /// Applies any state-changing command; the answer arrives once its effect is durable.
    pub async fn apply(&self, command: Command) -> Result<Outcome, RuntimeError> {
        outcome_of(self.submit_command(command)?.await?)
    }

    /// Holds `qty` units of `sku` for `buyer` for `ttl_ms`.
    pub async fn reserve(
        &self,
        request: RequestId,
        buyer: BuyerId,
        sku: SkuId,
        qty: u32,
        ttl_ms: u64,
    ) -> Result<Outcome, RuntimeError> {
        self.apply(Command::Reserve(Reserve { request, buyer, sku, qty, ttl_ms, order_ref: None }))
            .await
    }

    /// Turns a held reservation into a sale.
    pub async fn confirm(
        &self,
        request: RequestId,
        reservation: ReservationId,
    ) -> Result<Outcome, RuntimeError> {
        self.apply(Command::Confirm { request, reservation, order_ref: None }).await
    }

    /// Gives a held reservation's units back.
    pub async fn cancel(
        &self,
        request: RequestId,
        reservation: ReservationId,
    ) -> Result<Outcome, RuntimeError> {
        self.apply(Command::Cancel { request, reservation }).await
    }

    /// Admin: sets a SKU's total stock, creating the SKU if new.
    pub async fn set_stock(
        &self,
        request: RequestId,
        sku: SkuId,
        total: u64,
    ) -> Result<Outcome, RuntimeError> {
        self.apply(Command::SetStock { request, sku, total }).await
    }

    /// Admin: adds `delta` units to a SKU's stock (negative to remove).
    pub async fn adjust_stock(
        &self,
        request: RequestId,
        sku: SkuId,
        delta: i64,
    ) -> Result<Outcome, RuntimeError> {
        self.apply(Command::AdjustStock { request, sku, delta }).await
    }

    /// Admin: sets or clears a SKU's per-buyer limit.
    pub async fn set_buyer_limit(
        &self,
        request: RequestId,
        sku: SkuId,
        limit: Option<u32>,
    ) -> Result<Outcome, RuntimeError> {
        self.apply(Command::SetBuyerLimit { request, sku, limit }).await
    }

    /// Admin: sets when a SKU may be reserved.
    pub async fn set_sale_window(
        &self,
        request: RequestId,
        sku: SkuId,
        window: SaleWindow,
    ) -> Result<Outcome, RuntimeError> {
        self.apply(Command::SetSaleWindow { request, sku, window }).await
    }

    /// Admin: spreads a SKU over `buckets` buckets on as many shards (docs/hot-skus.md),
    /// then moves an even share of its available units into each.
    pub async fn set_buckets(
        &self,
        request: RequestId,
        sku: SkuId,
        buckets: u32,
    ) -> Result<Outcome, RuntimeError> {
        self.apply(Command::SetBuckets { request, sku, buckets }).await
    }

    /// Holds every line of a cart, or none (docs/carts.md). The cart is driven by a task of
    /// its own, so a caller that stops waiting leaves no group waiting for its deadline.
    pub async fn reserve_cart(&self, cart: ReserveCart) -> Result<Outcome, RuntimeError> {
        match self.spawn_cart(Box::new(cart)).await {
            Ok(Ok(Reply::Outcome(outcome))) => Ok(outcome),
            Ok(Ok(other)) => unreachable!("a cart answered {other:?}"),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(RuntimeError::ShuttingDown),
        }
    }

    /// Reads a cart, live or recently ended.
    pub async fn query_cart(&self, cart: ReservationId) -> Result<Option<CartView>, RuntimeError> {
        let Some(shard) = self.shared.map.shard_of_reservation(cart) else {
            return Ok(None);
        };
        match self.ask(shard, |reply| Job::QueryCart { cart, reply }).await? {
            Reply::Cart(view) => Ok(view.map(|view| *view)),
            other => unreachable!("query_cart answered {other:?}"),
        }
    }

    /// Runs a cart reserve to its decision: every prepare at once, then the coordinator.
    async fn drive_cart(&self, mut driver: CartDriver) -> Result<Outcome, RuntimeError> {
        let deadline_ms = driver.prepares()[0].1.deadline_ms;
        let prepares: Vec<_> = driver.prepares().to_vec();
        let answers = prepares.iter().map(|&(shard, prepare)| {
            self.until_deadline(deadline_ms, move |handle| {
                let (reply, answer) = oneshot::channel();
                let job = Job::PrepareLines { prepare: Box::new(prepare), reply };
                let sent = handle.send_job(shard, job);
                async move {
                    sent?;
                    answer.await.map_err(|_| RuntimeError::ShuttingDown)?
                }
            })
        });
        let mut overloaded = false;
        for (index, answer) in futures_util::future::join_all(answers).await.into_iter().enumerate()
        {
            match answer {
                Ok(prepared) => driver.prepared(index, prepared),
                Err(RuntimeError::Overloaded { .. }) => overloaded = true,
                // The log failed or the runtime stops: what was prepared is settled by the
                // participants' deadlines, or by the start-up pass.
                Err(err) => return Err(err),
            }
        }
        let decide = match driver.decision() {
            Some(decide) if !overloaded => decide,
            _ => driver.give_up(),
        };
        let coordinator = driver.coordinator();
        self.until_deadline(deadline_ms, move |handle| {
            let decide = Box::new(decide);
            let sent = handle.send(coordinator, |reply| Job::DecideCart { decide, reply });
            async move {
                match sent?.await? {
                    Reply::Outcome(outcome) => Ok(outcome),
                    other => unreachable!("a cart decision answered {other:?}"),
                }
            }
        })
        .await
    }

    /// Retries `attempt` while the shard it asks is overloaded, backing off, until the
    /// cart's prepare deadline (past it a commit is refused anyway).
    async fn until_deadline<T, F>(
        &self,
        deadline_ms: u64,
        attempt: impl Fn(&Handle) -> F,
    ) -> Result<T, RuntimeError>
    where
        F: std::future::Future<Output = Result<T, RuntimeError>>,
    {
        let mut backoff_ms = 1;
        loop {
            match attempt(self).await {
                Err(RuntimeError::Overloaded { shard })
                    if self.shared.clock.now_ms() + backoff_ms < deadline_ms =>
                {
                    tracing::trace!(shard, backoff_ms, "cart job refused by a full inbox");
                    tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
                    backoff_ms = (backoff_ms * 2).min(CART_BACKOFF_MS_MAX);
                }
                other => return other,
            }
        }
    }

    /// Reads a SKU's stock.
    /// A SKU spread over buckets reads as one: its buckets added up.
    pub async fn query_sku(&self, sku: SkuId) -> Result<Option<SkuView>, RuntimeError> {
        if sku.is_bucket() {
            return Ok(None);
        }
        self.query_spread(sku).await
    }

    /// Reads a reservation, live or recently ended.
    pub async fn query_reservation(
        &self,
        reservation: ReservationId,
    ) -> Result<Option<ReservationView>, RuntimeError> {
        let Some(shard) = self.shared.map.shard_of_reservation(reservation) else {
            return Ok(None);
        };
        match self.ask(shard, |reply| Job::QueryReservation { reservation, reply }).await? {
            Reply::Reservation(view) => Ok(view.map(|view| *view)),
            other => unreachable!("query_reservation answered {other:?}"),
        }
    }

    /// Every SKU, in id order. For tests and small stores; operators page with
    /// [`Handle::list_skus_page`].
    pub async fn list_skus(&self) -> Result<Vec<SkuView>, RuntimeError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (page, next_after) = self.list_skus_page(after, 4_096).await?;
            all.extend(page);
            match next_after {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Up to `limit` SKUs after `after` (from the first when `None`), in id order, and where
    /// the next page starts (`None` after the last). Each shard is asked for its own first
    /// `limit`, and the smallest `limit` of those make the page.
    pub async fn list_skus_page(
        &self,
        after: Option<SkuId>,
        limit: usize,
    ) -> Result<(Vec<SkuView>, Option<SkuId>), RuntimeError> {
        let limit = limit.max(1);
        let mut all = Vec::new();
        let mut pending = Vec::new();
        for shard in 0..self.shared.map.shard_count() {
            let (reply, answers) = oneshot::channel();
            self.send_job(ShardId(shard), Job::ListSkus { after, limit, reply })?;
            pending.push(answers);
        }
        let mut some_shard_full = false;
        for answers in pending {
            let answers = answers.await.map_err(|_| RuntimeError::ShuttingDown)??;
            some_shard_full |= answers.len() == limit;
            for answer in answers {
                match answer {
                    Reply::Sku(Some(view)) => all.push(*view),
                    other => unreachable!("list_skus answered {other:?}"),
                }
            }
        }
        for view in &mut all {
            if self.buckets().buckets_of(view.sku).is_some() {
                *view = self.query_spread(view.sku).await?.unwrap_or(*view);
            }
        }
        all.sort_unstable_by_key(|view| view.sku);
        // More follow if this page left some out, or a shard may have had more than it sent.
        let more = all.len() > limit || some_shard_full;
        all.truncate(limit);
        let next_after = if more { all.last().map(|view| view.sku) } else { None };
        Ok((all, next_after))
    }

    pub(crate) async fn ask(
        &self,
        shard: ShardId,
        job: impl FnOnce(AnswerTo) -> Job,
    ) -> Result<Reply, RuntimeError> {
        self.send(shard, job)?.await
    }

    /// Sends a job without waiting: the returned [`Pending`] resolves once its answer is
    /// durable. A batch is submitted whole before any answer is awaited, so its requests reach
    /// the shards together and share group commits.
    fn send(
        &self,
        shard: ShardId,
        job: impl FnOnce(AnswerTo) -> Job,
    ) -> Result<Pending, RuntimeError> {
        let (reply, answer) = oneshot::channel();
        self.send_job(shard, job(reply))?;
        Ok(Pending { answer })
    }

    /// Submits many requests at once: grouped by owning shard, each group travels as one job
    /// with one reply, and is answered within one actor step. The returned [`PendingBatch`]
    /// yields the answers in the order of `items`. This is what network batches use: one
    /// channel message and one wake-up per shard, instead of one per request.
    pub fn submit_batch(&self, items: &[Request]) -> PendingBatch {
        let mut results: Vec<Option<Result<Reply, RuntimeError>>> = Vec::new();
        results.resize_with(items.len(), || None);
        let mut by_shard: Vec<Vec<(usize, Request)>> = vec![Vec::new(); self.shared.inboxes.len()];
        let (mut tasks, mut refills) = (Vec::new(), Vec::new());
        for (index, item) in items.iter().enumerate() {
            match self.route_item(item) {
                Route::Shard(shard, request, refill) => {
                    by_shard[usize::from(shard.0)].push((index, request));
                    refills.extend(refill.map(|refill| (index, refill)));
                }
                Route::Answered(answer) => results[index] = Some(Ok(answer)),
                Route::Cart(cart) => tasks.push((index, self.spawn_cart(cart))),
                Route::Task(answer) => tasks.push((index, answer)),
            }
        }
        let mut waiting = Vec::new();
        for (shard, mut routed) in by_shard.into_iter().enumerate() {
            while !routed.is_empty() {
                let rest = routed.split_off(routed.len().min(self.shared.batch_jobs_max));
                let (indices, batch): (Vec<usize>, Vec<Request>) = routed.into_iter().unzip();
                routed = rest;
                let (reply, answers): (BatchReply, _) = oneshot::channel();
                let job = Job::Batch { items: batch, reply };
                match self.send_job(ShardId(shard as u16), job) {
                    Ok(()) => waiting.push((indices, answers)),
                    Err(refusal) => {
                        for index in indices {
                            results[index] = Some(Err(refusal.duplicate()));
                        }
                    }
                }
            }
        }
        let handle = (!refills.is_empty()).then(|| self.clone());
        PendingBatch { results, waiting, tasks, refills, handle }
    }

    /// Starts a cart's driver on a task of its own; its outcome arrives on the returned
    /// channel (at once for a malformed cart).
    fn spawn_cart(&self, cart: Box<ReserveCart>) -> oneshot::Receiver<Result<Reply, RuntimeError>> {
        let (reply, answer) = oneshot::channel();
        // Lines of spread SKUs go to the buyer's home buckets (a line naming a bucket's own
        // id is refused), which are filled from the other buckets first when short.
        let (cart, spread) = match self.cart_of_named_skus(&cart) {
            Ok(Some(rewritten)) => (rewritten, true),
            Ok(None) => (*cart, false),
            Err(refused) => {
                let _ = reply.send(Ok(Reply::Outcome(refused)));
                return answer;
            }
        };
        match CartDriver::start(cart, &self.shared.map, self.shared.clock.now_ms()) {
            Err(refusal) => drop(reply.send(Ok(Reply::Outcome(refusal)))),
            Ok(mut driver) => {
                let handle = self.clone();
                tokio::spawn(async move {
                    if spread {
                        if let Err(err) = handle.fill_cart_buckets(&cart).await {
                            let _ = reply.send(Err(err));
                            return;
                        }
                        // The prepare deadline counts from now, after the fill.
                        let now_ms = handle.shared.clock.now_ms();
                        driver = CartDriver::start(cart, &handle.shared.map, now_ms)
                            .expect("the cart was valid a moment ago");
                    }
                    let mut outcome = handle.drive_cart(driver).await;
                    if spread {
                        outcome = outcome.map(|outcome| handle.cart_answer(&cart, outcome));
                    }
                    let _ = reply.send(outcome.map(Reply::Outcome));
                });
            }
        }
        answer
    }

    /// Where an item goes: a shard (as it is, or rewritten for a spread SKU), a cart driver,
    /// a task, or straight back when no shard could own it.
    fn route_item(&self, item: &Request) -> Route {
        let (item, refill) = match self.rewrite(item) {
            Rewrite::Unchanged => (item.clone(), None),
            Rewrite::Sent(request, refill) => (request, refill),
            Rewrite::Answered(reply) => return Route::Answered(reply),
            Rewrite::Task => return Route::Task(self.spawn_task(item.clone())),
        };
        let map = &self.shared.map;
        let shard = match item {
            Request::Apply(command) => match command.route_key() {
                RouteKey::Sku(sku) => Some(map.shard_of_sku(sku)),
                RouteKey::Reservation(id) => map.shard_of_reservation(id),
            },
            Request::QuerySku(sku) => Some(map.shard_of_sku(sku)),
            Request::QueryReservation(id) | Request::QueryCart(id) => map.shard_of_reservation(id),
            Request::ReserveCart(cart) => return Route::Cart(cart),
        };
        match (shard, &item) {
            (Some(shard), _) => Route::Shard(shard, item, refill),
            (None, Request::Apply(_)) => {
                Route::Answered(Reply::Outcome(Outcome::UnknownReservation))
            }
            (None, Request::QueryCart(_)) => Route::Answered(Reply::Cart(None)),
            (None, _) => Route::Answered(Reply::Reservation(None)),
        }
    }

    /// Answers `item` on a task of its own (see `buckets::Rewrite::Task`).
    fn spawn_task(&self, item: Request) -> oneshot::Receiver<Result<Reply, RuntimeError>> {
        let (reply, answer) = oneshot::channel();
        let handle = self.clone();
        tokio::spawn(async move {
            let _ = reply.send(handle.run_task(item).await);
        });
        answer
    }

    /// Applies `command` on the shard its key names, with no rewrite for spread SKUs (the
    /// bucket modules' own commands).
    pub(crate) async fn apply_unrouted(&self, command: Command) -> Result<Outcome, RuntimeError> {
        let shard = match command.route_key() {
            RouteKey::Sku(sku) => self.shared.map.shard_of_sku(sku),
            RouteKey::Reservation(id) => match self.shared.map.shard_of_reservation(id) {
                Some(shard) => shard,
                None => return Ok(Outcome::UnknownReservation),
            },
        };
        outcome_of(self.ask(shard, |reply| Job::Apply { command, reply }).await?)
    }

    /// Hands a job to a shard's inbox at once: a full inbox is `Overloaded`, never a wait.
    pub(crate) fn send_job(&self, shard: ShardId, job: Job) -> Result<(), RuntimeError> {
        if let Some(reason) = self.shared.failure.reason() {
            return Err(RuntimeError::WalFailed { reason });
        }
        match self.shared.inboxes[usize::from(shard.0)].try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(RuntimeError::Overloaded { shard: shard.0 }),
            Err(TrySendError::Disconnected(_)) => Err(RuntimeError::ShuttingDown),
        }
    }

    /// Submits a state-changing command without waiting for its answer.
    pub fn submit_command(&self, command: Command) -> Result<Pending, RuntimeError> {
        self.submit_one(Request::Apply(command))
    }

    /// Submits a SKU read without waiting for its answer.
    pub fn submit_query_sku(&self, sku: SkuId) -> Result<Pending, RuntimeError> {
        self.submit_one(Request::QuerySku(sku))
    }

    fn submit_one(&self, item: Request) -> Result<Pending, RuntimeError> {
        match self.route_item(&item) {
            Route::Shard(shard, Request::Apply(command), None) => {
                self.send(shard, |reply| Job::Apply { command, reply })
            }
            Route::Shard(shard, Request::QuerySku(sku), None) => {
                self.send(shard, |reply| Job::QuerySku { sku, reply })
            }
            Route::Shard(shard, Request::Apply(command), Some(refill)) => {
                let first = self.send(shard, |reply| Job::Apply { command, reply })?;
                let (reply, answer) = oneshot::channel();
                let handle = self.clone();
                tokio::spawn(async move {
                    let answered = match first.await {
                        Ok(Reply::Outcome(outcome)) if Refill::wanted(&outcome) => {
                            handle.refill(refill, outcome).await.map(Reply::Outcome)
                        }
                        other => other,
                    };
                    let _ = reply.send(answered);
                });
                Ok(Pending { answer })
            }
            Route::Answered(reply) => Ok(Pending::ready(reply)),
            Route::Task(answer) => Ok(Pending { answer }),
            other => unreachable!("one command or SKU read routed as {other:?}"),
        }
    }

    /// Submits a reservation read without waiting for its answer.
    pub fn submit_query_reservation(
        &self,
        reservation: ReservationId,
    ) -> Result<Pending, RuntimeError> {
        let Some(shard) = self.shared.map.shard_of_reservation(reservation) else {
            return Ok(Pending::ready(Reply::Reservation(None)));
        };
        self.send(shard, |reply| Job::QueryReservation { reservation, reply })
    }
}

/// The longest wait between two tries of a cart's job at a full inbox.
const CART_BACKOFF_MS_MAX: u64 = 50;

/// Where one item of a batch goes.
#[derive(Debug)]
enum Route {
    /// To this shard, as this request; a reserve of a spread SKU may need a refill after.
    Shard(ShardId, Request, Option<Refill>),
    Cart(Box<ReserveCart>),
    Answered(Reply),
    /// Answered by a task of its own.
    Task(oneshot::Receiver<Result<Reply, RuntimeError>>),
}

/// Where a batch job's answers arrive.
type BatchAnswers = oneshot::Receiver<Result<Vec<Reply>, RuntimeError>>;

/// The answers to a [`Handle::submit_batch`], on their way.
#[derive(Debug)]
pub struct PendingBatch {
    results: Vec<Option<Result<Reply, RuntimeError>>>,
    /// Each job sent: the positions of its items, and where its answers arrive.
    waiting: Vec<(Vec<usize>, BatchAnswers)>,
    /// Each cart's or task's position, and where its outcome arrives.
    tasks: Vec<(usize, oneshot::Receiver<Result<Reply, RuntimeError>>)>,
    /// Reserves of spread SKUs, by position: refilled when their bucket was sold out.
    refills: Vec<(usize, Refill)>,
    /// For the refills (only when there are some).
    handle: Option<Handle>,
}

impl PendingBatch {
    /// Waits for every answer; they come back in the order the items were submitted.
    pub async fn wait(mut self) -> Vec<Result<Reply, RuntimeError>> {
        for (indices, answers) in self.waiting {
            match answers.await.unwrap_or(Err(RuntimeError::ShuttingDown)) {
                Ok(answers) => {
                    for (index, answer) in indices.into_iter().zip(answers) {
                        self.results[index] = Some(Ok(answer));
                    }
                }
                Err(err) => {
                    for index in indices {
                        self.results[index] = Some(Err(err.duplicate()));
                    }
                }
            }
        }
        for (index, answer) in self.tasks {
            self.results[index] = Some(answer.await.unwrap_or(Err(RuntimeError::ShuttingDown)));
        }
        if let Some(handle) = self.handle {
            let mut refilled = Vec::new();
            for (index, refill) in self.refills {
                let Some(Ok(Reply::Outcome(outcome))) = self.results[index] else { continue };
                match handle.answer_without_refill(&refill, outcome) {
                    Some(answer) => self.results[index] = Some(Ok(Reply::Outcome(answer))),
                    None => {
                        let handle = handle.clone();
                        refilled.push(async move { (index, handle.refill(refill, outcome).await) });
                    }
                }
            }
            for (index, outcome) in futures_util::future::join_all(refilled).await {
                self.results[index] = Some(outcome.map(Reply::Outcome));
            }
        }
        self.results.into_iter().map(|r| r.expect("every item is answered")).collect()
    }
}

/// An answer on its way: resolves once everything applied before it is durable.
#[derive(Debug)]
pub struct Pending {
    answer: oneshot::Receiver<Result<Reply, RuntimeError>>,
}

impl Pending {
    fn ready(answer: Reply) -> Pending {
        let (reply, receiver) = oneshot::channel();
        let _ = reply.send(Ok(answer));
        Pending { answer: receiver }
    }
}

impl std::future::Future for Pending {
    type Output = Result<Reply, RuntimeError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // A dropped reply means the actor stopped before answering.
        std::pin::Pin::new(&mut self.answer)
            .poll(cx)
            .map(|received| received.unwrap_or(Err(RuntimeError::ShuttingDown)))
    }
}

/// The outcome of an applied command, or `SlotMoving` for one of a slot a move froze.
pub(crate) fn outcome_of(reply: Reply) -> Result<Outcome, RuntimeError> {
    match reply {
        Reply::Outcome(outcome) => Ok(outcome),
        Reply::Refused(Refusal::SlotMoving { slot }) => Err(RuntimeError::SlotMoving { slot }),
        other => unreachable!("a command answered {other:?}"),
    }
}
