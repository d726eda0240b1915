//! `Client`: the API order services call. Pipelined, automatically batched, with deadlines,
//! reconnects, retries that reuse the request id, and a circuit breaker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashstock_engine::{
    BuyerId, CartView, Command, Lines, OrderRef, Outcome, RequestId, ReservationId,
    ReservationView, Reserve, ReserveCart, SaleWindow, SkuId, SkuView, CART_LINES_MAX,
};
use flashstock_protocol::{
    keys, AdminReply, AdminRequest, ConsumerInfo, RateLimit, RateLimitEntry, Refusal, Reply,
    Request, SlotsAction, SKU_PAGE_MAX,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::breaker::Breaker;
use crate::cluster::ClusterRoute;
use crate::connection::Connection;
use crate::error::ClientError;
use crate::tls::ClientTls;
use flashstock_cluster_etcd::EtcdConfig;

/// How a [`Client`] connects and behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server.
    pub addr: SocketAddr,
    /// The name its certificate is checked against.
    pub server_name: String,
    /// Which certificates to trust.
    pub tls: ClientTls,
    /// The bearer token, if the server wants one.
    pub token: Option<String>,
    /// QUIC connections calls are spread over (default 1).
    pub connections: usize,
    /// The most requests one batch frame carries (default 256).
    pub batch_requests_max: usize,
    /// A call's deadline, all attempts included (default 5 s).
    pub call_timeout: Duration,
    /// One attempt's deadline (default 2 s); after it the connection is replaced.
    pub attempt_timeout: Duration,
    /// Retries after the first attempt (default 3), each with the same request id.
    pub retries_max: u32,
    /// The first retry's delay, doubled for each next one (default 10 ms).
    pub retry_backoff: Duration,
    /// Consecutive transport failures that open the circuit (default 5).
    pub breaker_failures_max: u32,
    /// How long an open circuit fails calls fast before it lets a probe through (default
    /// 250 ms: a server back from a restart is found within that).
    pub breaker_open_for: Duration,
    /// A cluster to route by (its etcd and prefix) instead of the one server at `addr`:
    /// see [`ClientConfig::cluster`]. Each server gets connections of its own, with these
    /// settings.
    pub cluster: Option<EtcdConfig>,
}

impl ClientConfig {
    /// The defaults for a server at `addr`.
    pub fn new(addr: SocketAddr, server_name: &str, tls: ClientTls, token: Option<&str>) -> Self {
        ClientConfig {
            addr,
            server_name: server_name.to_owned(),
            tls,
            token: token.map(str::to_owned),
            connections: 1,
            batch_requests_max: 256,
            call_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            retries_max: 3,
            retry_backoff: Duration::from_millis(10),
            breaker_failures_max: 5,
            breaker_open_for: Duration::from_millis(250),
            cluster: None,
        }
    }

    /// The defaults for a cluster whose map and members live in `etcd` (docs/cluster.md):
    /// each request goes to the server owning its SKU's slot (confirm, cancel and return:
    /// the slot their reservation id carries), a batch is split by server, and a `Moved`
    /// answer is followed. Every server must trust `tls` and accept `token`.
    pub fn cluster(etcd: EtcdConfig, tls: ClientTls, token: Option<&str>) -> Self {
        let unrouted = SocketAddr::from(([0, 0, 0, 0], 0));
        ClientConfig { cluster: Some(etcd), ..ClientConfig::new(unrouted, "", tls, token) }
    }
}

/// A flashstock client. Cheap to clone; clones share connections, batching and the breaker.
///
/// ```no_run
/// # async fn checkout() -> Result<(), flashstock_client::ClientError> {
/// use flashstock_client::{Client, ClientConfig, ClientTls};
/// use flashstock_engine::{BuyerId, Outcome, SkuId};
///
/// let tls = ClientTls::trust_pem_file("flashstock-data/tls/cert.pem".as_ref())?;
/// let config = ClientConfig::new("127.0.0.1:7400".parse().unwrap(), "localhost", tls, Some("<token>"));
/// let client = Client::connect(config).await?;
/// if let Outcome::Reserved { reservation, .. } =
///     client.reserve(BuyerId(42), SkuId(7), 1, 15 * 60 * 1000).await?
/// {
///     // ... take the payment, then:
///     client.confirm(reservation).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
    /// The caller's key every request id is derived from (see [`Client::keyed`]), or `None`
    /// for fresh ids.
    key: Option<Arc<str>>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    /// The current connection of each slot: read on every call, so a plain mutex held for an
    /// `Arc` clone; `reconnecting` serialises the slow path.
    links: Vec<std::sync::Mutex<Option<Arc<Link>>>>,
    reconnecting: Vec<tokio::sync::Mutex<()>>,
    next_link: AtomicUsize,
    breaker: Breaker,
    /// The cluster's routes, when this client is a cluster's (and has no links of its own).
    cluster: Option<ClusterRoute>,
    /// Request ids: a random prefix per client, a counter per request.
    id_prefix: u64,
    id_counter: AtomicU64,
}

#[derive(Debug)]
struct Link {
    connection: Arc<Connection>,
    calls: mpsc::Sender<Call>,
    broken: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Call {
    request: Request,
    reply: oneshot::Sender<Result<Reply, ClientError>>,
    /// When this attempt gives up: the batch carrying it waits no longer than its earliest.
    deadline: Instant,
}

impl Client {
    /// Connects (every connection, so bad addresses or credentials show at once).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let mut prefix = [0u8; 8];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut prefix)
            .map_err(|_| ClientError::Setup("no secure random source".into()))?;
        let breaker = Breaker::new(config.breaker_failures_max, config.breaker_open_for);
        let cluster = match &config.cluster {
            Some(etcd) => Some(ClusterRoute::start(etcd.clone(), config.clone()).await?),
            None => None,
        };
        // A cluster's client holds no connections itself: each server's client does.
        let slots = if cluster.is_some() { 0 } else { config.connections.max(1) };
        let links = (0..slots).map(|_| std::sync::Mutex::new(None)).collect();
        let reconnecting = (0..slots).map(|_| tokio::sync::Mutex::new(())).collect();
        let inner = Inner {
            config,
            links,
            reconnecting,
            next_link: AtomicUsize::new(0),
            breaker,
            cluster,
            id_prefix: u64::from_le_bytes(prefix),
            id_counter: AtomicU64::new(1),
        };
        let client = Client { inner: Arc::new(inner), key: None };
        for index in 0..client.inner.links.len() {
            client.first_link(index).await?;
        }
        Ok(client)
    }

    /// Opens connection `index`, trying again within `call_timeout` while the server does not
    /// answer (a busy server can take longer than one handshake's 250 ms, a restarting one
    /// longer still); anything the server did answer (wrong credentials, an unknown
    /// certificate) fails at once.
    async fn first_link(&self, index: usize) -> Result<(), ClientError> {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.call_timeout;
        let mut backoff = config.retry_backoff;
        loop {
            match self.link(index).await {
                Ok(_) => return Ok(()),
                Err(err) if err.is_transport() && Instant::now() + backoff < deadline => {
                    tracing::debug!(%err, "connecting failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(config.breaker_open_for);
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The server this client talks to (unspecified for a cluster's client).
    pub fn addr(&self) -> SocketAddr {
        self.inner.config.addr
    }

    /// The revision of the shard map a cluster's client routes by (0: none, or no cluster).
    pub fn map_revision(&self) -> i64 {
        self.inner.cluster.as_ref().map_or(0, |cluster| cluster.view().map_revision())
    }

    /// This client with every request id derived from `key` (the caller's order id, say)
    /// instead of drawn fresh: a call made again with the same key and the same arguments,
    /// even by another process after this one died, is the same request and gets the first
    /// answer. One key serves every step of one order: the id covers the call's arguments,
    /// so a confirm, a cancel or a reserve of another SKU under the same key is another
    /// request. Shares the connections; cheap.
    pub fn keyed(&self, key: &str) -> Result<Client, ClientError> {
        let bytes_max = keys::REQUEST_KEY_BYTES_MAX;
        if key.is_empty() || key.len() > bytes_max {
            return Err(ClientError::InvalidKey { bytes: key.len(), bytes_max });
        }
        Ok(Client { inner: self.inner.clone(), key: Some(key.into()) })
    }

    /// `request` with its id derived from this client's key, if it has one.
    fn identified(&self, request: Request) -> Request {
        match &self.key {
            Some(key) => keys::keyed(&request, key).expect("keys are checked by `keyed`"),
            None => request,
        }
    }

    /// A fresh request id, unique to this client.
    pub fn request_id(&self) -> RequestId {
        let counter = self.inner.id_counter.fetch_add(1, Ordering::Relaxed);
        RequestId((u128::from(self.inner.id_prefix) << 64) | u128::from(counter))
    }

    /// Holds `qty` units of `sku` for `buyer` for `ttl_ms`.
    pub async fn reserve(
        &self,
        buyer: BuyerId,
        sku: SkuId,
        qty: u32,
        ttl_ms: u64,
    ) -> Result<Outcome, ClientError> {
        let request = self.request_id();
        self.apply(Command::Reserve(Reserve { request, buyer, sku, qty, ttl_ms, order_ref: None }))
            .await
    }

    /// Turns a held reservation into a sale.
    pub async fn confirm(&self, reservation: ReservationId) -> Result<Outcome, ClientError> {
        self.apply(Command::Confirm { request: self.request_id(), reservation, order_ref: None })
            .await
    }

    /// Turns a held reservation into a sale of order `order_ref`: the committed-deduction
    /// stream carries the reference, so the order writer's row names the caller's order.
    pub async fn confirm_order(
        &self,
        reservation: ReservationId,
        order_ref: OrderRef,
    ) -> Result<Outcome, ClientError> {
        let request = self.request_id();
        self.apply(Command::Confirm { request, reservation, order_ref: Some(order_ref) }).await
    }

    /// Gives a held reservation's units back.
    pub async fn cancel(&self, reservation: ReservationId) -> Result<Outcome, ClientError> {
        self.apply(Command::Cancel { request: self.request_id(), reservation }).await
    }

    /// A refund or payment reversal after the sale: gives `qty` units of a confirmed
    /// reservation (`line` 0) or of line `line` of a confirmed cart back to available, never
    /// more than it sold. `sku` is the line's SKU. Each return of a sale needs a request of
    /// its own: on a keyed client, give each return its own key (or a different `qty`).
    pub async fn return_sold(
        &self,
        reservation: ReservationId,
        line: u8,
        sku: SkuId,
        qty: u32,
    ) -> Result<Outcome, ClientError> {
        let request = self.request_id();
        self.apply(Command::ReturnSold { request, reservation, line, sku, qty }).await
    }

    /// Admin: sets a SKU's total stock.
    pub async fn set_stock(&self, sku: SkuId, total: u64) -> Result<Outcome, ClientError> {
        self.apply(Command::SetStock { request: self.request_id(), sku, total }).await
    }

    /// Admin: adds (or with a negative delta, removes) units.
    pub async fn adjust_stock(&self, sku: SkuId, delta: i64) -> Result<Outcome, ClientError> {
        self.apply(Command::AdjustStock { request: self.request_id(), sku, delta }).await
    }

    /// Admin: sets or clears the per-buyer limit.
    pub async fn set_buyer_limit(
        &self,
        sku: SkuId,
        limit: Option<u32>,
    ) -> Result<Outcome, ClientError> {
        self.apply(Command::SetBuyerLimit { request: self.request_id(), sku, limit }).await
    }

    /// Admin: sets when a SKU may be reserved.
    pub async fn set_sale_window(
        &self,
        sku: SkuId,
        window: SaleWindow,
    ) -> Result<Outcome, ClientError> {
        self.apply(Command::SetSaleWindow { request: self.request_id(), sku, window }).await
    }

    /// Admin: spreads a SKU's stock over `buckets` buckets on as many shards, so that its
    /// reserves are decided by several threads (docs/hot-skus.md). Set once, after the SKU's
    /// stock, limit and window and before any buyer holds it; answered `BucketsSet`, or
    /// `InvalidBuckets`, `Bucketed` or `BuyersCounted`.
    pub async fn set_buckets(&self, sku: SkuId, buckets: u32) -> Result<Outcome, ClientError> {
        self.apply(Command::SetBuckets { request: self.request_id(), sku, buckets }).await
    }

    /// Reads a SKU.
    pub async fn query_sku(&self, sku: SkuId) -> Result<Option<SkuView>, ClientError> {
        match self.call(Request::QuerySku(sku)).await? {
            Reply::Sku(view) => Ok(view.map(|view| *view)),
            other => Err(ClientError::Unexpected(format!("{other:?} for a SKU query"))),
        }
    }

    /// Reads a reservation.
    pub async fn query_reservation(
        &self,
        id: ReservationId,
    ) -> Result<Option<ReservationView>, ClientError> {
        match self.call(Request::QueryReservation(id)).await? {
            Reply::Reservation(view) => Ok(view.map(|view| *view)),
            other => Err(ClientError::Unexpected(format!("{other:?} for a reservation query"))),
        }
    }

    /// Holds every line of a cart (`(sku, qty)` pairs, each SKU once, at most
    /// `CART_LINES_MAX`) for `buyer` for `ttl_ms`, or none of them. A refusal names the line:
    /// `Outcome::CartRefused { line, refusal, value }`.
    pub async fn reserve_cart(
        &self,
        buyer: BuyerId,
        lines: &[(SkuId, u32)],
        ttl_ms: u64,
    ) -> Result<Outcome, ClientError> {
        let Some(lines) = Lines::numbered(lines.iter().copied()) else {
            return Ok(Outcome::InvalidCart { lines_max: CART_LINES_MAX as u32 });
        };
        let request = self.request_id();
        self.apply_cart(ReserveCart { request, buyer, ttl_ms, order_ref: None, lines }).await
    }

    /// Reserves a cart; the cart's own request id is reused by every retry.
    pub async fn apply_cart(&self, cart: ReserveCart) -> Result<Outcome, ClientError> {
        match self.call(Request::ReserveCart(Box::new(cart))).await? {
            Reply::Outcome(outcome) => Ok(outcome),
            other => Err(ClientError::Unexpected(format!("{other:?} for a cart"))),
        }
    }

    /// Reads a cart (its lines, state and expiry).
    pub async fn query_cart(&self, cart: ReservationId) -> Result<Option<CartView>, ClientError> {
        match self.call(Request::QueryCart(cart)).await? {
            Reply::Cart(view) => Ok(view.map(|view| *view)),
            other => Err(ClientError::Unexpected(format!("{other:?} for a cart query"))),
        }
    }

    /// Many reserves at once: they travel together and come back in order.
    pub async fn reserve_many(
        &self,
        reserves: impl IntoIterator<Item = (BuyerId, SkuId, u32, u64)>,
    ) -> Vec<Result<Outcome, ClientError>> {
        let calls: Vec<_> = reserves
            .into_iter()
            .map(|(buyer, sku, qty, ttl_ms)| {
                let request = self.request_id();
                let client = self.clone();
                tokio::spawn(async move {
                    client
                        .apply(Command::Reserve(Reserve {
                            request,
                            buyer,
                            sku,
                            qty,
                            ttl_ms,
                            order_ref: None,
                        }))
                        .await
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(calls.len());
        for call in calls {
            outcomes.push(
                call.await.unwrap_or_else(|err| Err(ClientError::Unexpected(err.to_string()))),
            );
        }
        outcomes
    }

    /// Applies any command; the command's own request id (on a keyed client, the id its key
    /// gives) is reused by every retry.
    pub async fn apply(&self, command: Command) -> Result<Outcome, ClientError> {
        match self.call(Request::Apply(command)).await? {
            Reply::Outcome(outcome) => Ok(outcome),
            other => Err(ClientError::Unexpected(format!("{other:?} for a command"))),
        }
    }

    /// Sends one request, retrying transport failures and refusals within the deadline. A
    /// keyed client replaces the request's id with the one its key gives.
    pub async fn call(&self, request: Request) -> Result<Reply, ClientError> {
        let request = self.identified(request);
        if let Some(cluster) = &self.inner.cluster {
            // Boxed: each server's client is called through this same method.
            return Box::pin(cluster.call(request)).await;
        }
        let batch_max = self.inner.config.batch_requests_max.max(1);
        // Runs of `batch_requests_max` consecutive calls share a connection, so that each
        // batcher sees full batches: spreading calls one by one over 8 connections made every
        // frame 8x smaller and cost more per call than one connection did.
        let run = self.inner.next_link.fetch_add(1, Ordering::Relaxed) / batch_max;
        let request = &request;
        self.with_retries(run, |index, deadline| async move {
            match self.attempt(index, request.clone(), deadline).await? {
                Reply::Refused(refusal) => Err(ClientError::Refused { refusal }),
                reply => Ok(reply),
            }
        })
        .await
    }

    /// Sends `requests` as one frame and returns their replies, in order. A transport failure
    /// or a lost reply retries the whole batch on a (new) connection, with the same request
    /// ids, so nothing is applied twice; a refusal of one request (`Overloaded`) is its reply,
    /// left to the caller.
    pub async fn call_batch(&self, requests: &[Request]) -> Result<Vec<Reply>, ClientError> {
        let identified: Vec<Request>;
        let requests = match self.key {
            Some(_) => {
                identified = requests.iter().map(|r| self.identified(r.clone())).collect();
                &identified[..]
            }
            None => requests,
        };
        if let Some(cluster) = &self.inner.cluster {
            return Box::pin(cluster.call_batch(requests)).await;
        }
        let base = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
        self.with_retries(base, |index, deadline| async move {
            let link = self.link_by(index, deadline).await?;
            let timed_out = |_| ClientError::Timeout { deadline_ms: 0 };
            let replies =
                tokio::time::timeout_at(deadline, link.connection.call(requests.to_vec()))
                    .await
                    .map_err(timed_out)?;
            if replies.is_err() {
                link.broken.store(true, Ordering::Release);
            }
            replies
        })
        .await
    }

    /// Admin: the registered consumers of the committed-deduction stream.
    pub async fn list_consumers(&self) -> Result<Vec<ConsumerInfo>, ClientError> {
        match self.admin(AdminRequest::ListConsumers).await? {
            AdminReply::Consumers(consumers) => Ok(consumers),
            other => Err(ClientError::Unexpected(format!("{other:?} for a consumer listing"))),
        }
    }

    /// Admin: forgets a consumer (its cursor stops holding the log back; its open
    /// subscription is closed); whether it was registered. Safe to retry.
    pub async fn remove_consumer(&self, consumer: &str) -> Result<bool, ClientError> {
        let request = AdminRequest::RemoveConsumer(consumer.to_owned());
        match self.admin(request).await? {
            AdminReply::ConsumerRemoved { existed } => Ok(existed),
            other => Err(ClientError::Unexpected(format!("{other:?} for a consumer removal"))),
        }
    }

    /// Admin: one page of SKUs in id order, after `after` (from the first when `None`), at
    /// most `limit` (the server clamps it to `SKU_PAGE_MAX`); and where the next page starts,
    /// `None` after the last.
    pub async fn list_skus_page(
        &self,
        after: Option<SkuId>,
        limit: u32,
    ) -> Result<(Vec<SkuView>, Option<SkuId>), ClientError> {
        match self.admin(AdminRequest::ListSkus { after, limit }).await? {
            AdminReply::Skus { skus, next_after } => Ok((skus, next_after)),
            other => Err(ClientError::Unexpected(format!("{other:?} for a SKU listing"))),
        }
    }

    /// Admin, slot moves (docs/cluster.md): freezes, thaws or releases slots
    /// `first..=last` on every shard of this server, durably.
    pub async fn slots_action(
        &self,
        first: u16,
        last: u16,
        action: SlotsAction,
    ) -> Result<(), ClientError> {
        match self.admin(AdminRequest::Slots { first, last, action }).await? {
            AdminReply::SlotsDone => Ok(()),
            other => Err(invalid_or_unexpected(other, "a slot step")),
        }
    }

    /// Admin, slot moves: a page of what `shard` holds of the frozen range, encoded, with
    /// its item count and the shard's total for the range.
    pub async fn export_slots(
        &self,
        (first, last): (u16, u16),
        shard: u16,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<u8>, u32, u64), ClientError> {
        let request = AdminRequest::ExportSlots { first, last, shard, offset, limit };
        match self.admin(request).await? {
            AdminReply::SlotItems { items, count, total } => Ok((items, count, total)),
            other => Err(invalid_or_unexpected(other, "a slot export")),
        }
    }

    /// Admin, slot moves: imports a page of `export_slots` into `shard`, durably.
    pub async fn import_slots(&self, shard: u16, items: Vec<u8>) -> Result<(), ClientError> {
        match self.admin(AdminRequest::ImportSlots { shard, items }).await? {
            AdminReply::SlotsDone => Ok(()),
            other => Err(invalid_or_unexpected(other, "a slot import")),
        }
    }

    /// Admin, slot moves: the ranges frozen on this server, and its shard count.
    pub async fn slots_status(&self) -> Result<(Vec<(u16, u16)>, u16), ClientError> {
        match self.admin(AdminRequest::SlotsStatus).await? {
            AdminReply::SlotsStatus { frozen, shards } => Ok((frozen, shards)),
            other => Err(invalid_or_unexpected(other, "a slot status")),
        }
    }

    /// Admin: every SKU, in id order, a page at a time.
    pub async fn list_skus(&self) -> Result<Vec<SkuView>, ClientError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (page, next_after) = self.list_skus_page(after, SKU_PAGE_MAX).await?;
            all.extend(page);
            match next_after {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Admin: sets the reserve rate limits of `sku`, or the global ones (`None`); both rates
    /// `None` removes them. Returns every limit in force after.
    pub async fn set_rate_limit(
        &self,
        sku: Option<SkuId>,
        limit: RateLimit,
    ) -> Result<Vec<RateLimitEntry>, ClientError> {
        match self.admin(AdminRequest::SetRateLimit { sku, limit }).await? {
            AdminReply::RateLimits(entries) => Ok(entries),
            other => Err(invalid_or_unexpected(other, "a rate limit")),
        }
    }

    /// Admin: the reserve rate limits in force, global first.
    pub async fn list_rate_limits(&self) -> Result<Vec<RateLimitEntry>, ClientError> {
        match self.admin(AdminRequest::ListRateLimits).await? {
            AdminReply::RateLimits(entries) => Ok(entries),
            other => Err(ClientError::Unexpected(format!("{other:?} for a rate limit listing"))),
        }
    }

    /// Sends an admin operation, retried on a lost connection; a refusal is an error.
    async fn admin(&self, request: AdminRequest) -> Result<AdminReply, ClientError> {
        if self.inner.cluster.is_some() {
            return Err(ClientError::AdminInCluster);
        }
        let base = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
        let reply = self
            .with_retries(base, |index, deadline| {
                let request = request.clone();
                async move {
                    let link = self.link_by(index, deadline).await?;
                    let timed_out = |_| ClientError::Timeout { deadline_ms: 0 };
                    let answer = link.connection.admin(request);
                    tokio::time::timeout_at(deadline, answer).await.map_err(timed_out)?
                }
            })
            .await?;
        match reply {
            AdminReply::Refused(refusal) => Err(ClientError::Refused { refusal }),
            reply => Ok(reply),
        }
    }

    /// Runs `attempt` on connection `base`, then on the next ones, until it succeeds, fails
    /// for good, or the call's deadline or retries run out. Every attempt of a call carries
    /// the same request ids, so retrying is safe.
    async fn with_retries<T, Fut>(
        &self,
        base: usize,
        mut attempt: impl FnMut(usize, Instant) -> Fut,
    ) -> Result<T, ClientError>
    where
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.call_timeout;
        let deadline_ms = config.call_timeout.as_millis() as u64;
        let mut backoff = config.retry_backoff;
        let mut tries = 0;
        loop {
            if let Err(refused) = self.inner.breaker.allow() {
                let retry_after_ms = refused.retry_after.as_millis() as u64;
                return Err(ClientError::CircuitOpen { retry_after_ms });
            }
            let attempt_deadline = deadline.min(Instant::now() + config.attempt_timeout);
            let index = (base + tries as usize) % self.inner.links.len();
            let failure = match attempt(index, attempt_deadline).await {
                Ok(answer) => {
                    self.inner.breaker.succeeded();
                    return Ok(answer);
                }
                Err(refused @ ClientError::Refused { .. }) => {
                    // It answered: the server is alive, just not taking this now.
                    self.inner.breaker.succeeded();
                    refused
                }
                Err(ClientError::Timeout { .. }) => {
                    // No answer in time: do not trust that connection again.
                    self.inner.breaker.failed();
                    self.drop_link(index);
                    ClientError::Timeout { deadline_ms }
                }
                Err(err) if err.is_transport() => {
                    self.inner.breaker.failed();
                    err
                }
                Err(err) => return Err(err),
            };
            tries += 1;
            // Retrying a rate limit early only spends the bucket again: the caller decides.
            let permanent = matches!(
                failure,
                ClientError::Refused {
                    refusal: Refusal::PermissionDenied | Refusal::RateLimited { .. }
                }
            );
            // A moving slot answers once its move is done: retried until the deadline.
            let moving =
                matches!(failure, ClientError::Refused { refusal: Refusal::SlotMoving { .. } });
            let out_of_tries = tries > config.retries_max && !moving;
            // Still moving with no time for another try: say so, not "timed out".
            let out_of_time = Instant::now() + if moving { backoff } else { Duration::ZERO };
            if permanent || out_of_tries || out_of_time >= deadline {
                return Err(failure);
            }
            tracing::debug!(tries, %failure, "retrying with the same request ids");
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff *= 2;
            if moving {
                backoff = backoff.min(crate::cluster::MOVING_BACKOFF);
            }
        }
    }

    /// One try on connection `index`, given up at `deadline`. No timer per call: the batch
    /// carrying the call waits no longer than its earliest deadline (a tokio timer per call
    /// cost ~15% of the client's CPU); only reconnecting and a full queue arm one here.
    async fn attempt(
        &self,
        index: usize,
        request: Request,
        deadline: Instant,
    ) -> Result<Reply, ClientError> {
        // The deadline is named by `call`, which turns every attempt timeout into its own.
        let timed_out = |_| ClientError::Timeout { deadline_ms: 0 };
        let link = self.link_by(index, deadline).await?;
        let (reply, answer) = oneshot::channel();
        let lost = || ClientError::ConnectionLost { detail: "the batcher stopped".into() };
        match link.calls.try_send(Call { request, reply, deadline }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(call)) => {
                let sent = tokio::time::timeout_at(deadline, link.calls.send(call));
                sent.await.map_err(timed_out)?.map_err(|_| lost())?;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(lost()),
        }
        answer.await.map_err(|_| lost())?
    }

    /// The connection in slot `index`, (re)connecting if need be, no later than `deadline`.
    async fn link_by(&self, index: usize, deadline: Instant) -> Result<Arc<Link>, ClientError> {
        if let Some(link) = self.current(index) {
            return Ok(link);
        }
        let timed_out = |_| ClientError::Timeout { deadline_ms: 0 };
        tokio::time::timeout_at(deadline, self.link(index)).await.map_err(timed_out)?
    }

    fn current(&self, index: usize) -> Option<Arc<Link>> {
        let slot = self.inner.links[index].lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|link| !link.broken.load(Ordering::Acquire) && !link.connection.is_closed())
            .cloned()
    }

    /// The connection in slot `index`, (re)connected if it is missing or broken.
    async fn link(&self, index: usize) -> Result<Arc<Link>, ClientError> {
        if let Some(link) = self.current(index) {
            return Ok(link);
        }
        let _reconnecting = self.inner.reconnecting[index].lock().await;
        // Another call may have reconnected while this one waited.
        if let Some(link) = self.current(index) {
            return Ok(link);
        }
        let config = &self.inner.config;
        let connection = Arc::new(
            Connection::connect(
                config.addr,
                &config.server_name,
                &config.tls,
                config.token.as_deref(),
            )
            .await?,
        );
        let (calls, queued) = mpsc::channel(config.batch_requests_max * 4);
        let broken = Arc::new(AtomicBool::new(false));
        tokio::spawn(batch_calls(
            connection.clone(),
            queued,
            config.batch_requests_max,
            broken.clone(),
        ));
        let link = Arc::new(Link { connection, calls, broken });
        let old =
            self.inner.links[index].lock().unwrap_or_else(|p| p.into_inner()).replace(link.clone());
        if let Some(old) = old {
            old.connection.close();
        }
        Ok(link)
    }

    /// Marks the connection in slot `index` broken, so the next call there opens a new one.
    fn drop_link(&self, index: usize) {
        let slot = self.inner.links[index].lock().unwrap_or_else(|p| p.into_inner());
        if let Some(link) = slot.as_ref() {
            link.broken.store(true, Ordering::Release);
        }
    }

    /// Closes every connection, and waits (at most `CLOSE_FLUSH_MAX`) until the closes have
    /// gone out, so that the server frees their places at once even if the process exits.
    pub async fn close(&self) {
        if let Some(cluster) = &self.inner.cluster {
            // Boxed: each server's client closes through this same method.
            Box::pin(cluster.close()).await;
        }
        let links: Vec<Arc<Link>> = (self.inner.links.iter())
            .filter_map(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).take())
            .collect();
        // All closes first, so that they go out together and the waits overlap.
        for link in &links {
            link.connection.close();
        }
        for link in &links {
            link.connection.flushed().await;
        }
    }
}

/// Coalesces calls waiting on one connection into batch frames; each batch is awaited in its
/// own task, so batches pipeline.
async fn batch_calls(
    connection: Arc<Connection>,
    mut queued: mpsc::Receiver<Call>,
    batch_max: usize,
    broken: Arc<AtomicBool>,
) {
    while let Some(first) = queued.recv().await {
        // Let the callers that are ready run first: when a reply frame wakes many calls, they
        // enqueue their next requests together, and those should travel in one frame, not
        // one packet each (QUIC's per-packet cost is the bottleneck otherwise).
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match queued.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        // A call whose attempt is already over must not set a batch's deadline in the past
        // (that would mark a healthy connection broken): it times out alone.
        let now = Instant::now();
        let (batch, expired): (Vec<Call>, Vec<Call>) =
            batch.into_iter().partition(|call| call.deadline > now);
        for call in expired {
            let _ = call.reply.send(Err(ClientError::Timeout { deadline_ms: 0 }));
        }
        let Some(deadline) = batch.iter().map(|call| call.deadline).min() else { continue };
        let (connection, broken) = (connection.clone(), broken.clone());
        tokio::spawn(async move {
            let (requests, replies): (Vec<Request>, Vec<_>) =
                batch.into_iter().map(|call| (call.request, call.reply)).unzip();
            let answered = tokio::time::timeout_at(deadline, connection.call(requests)).await;
            let Ok(answered) = answered else {
                // No answer in time: the caller stops trusting this connection.
                broken.store(true, Ordering::Release);
                for reply in replies {
                    let _ = reply.send(Err(ClientError::Timeout { deadline_ms: 0 }));
                }
                return;
            };
            match answered {
                Ok(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(err) => {
                    broken.store(true, Ordering::Release);
                    let detail = err.to_string();
                    for reply in replies {
                        let _ =
                            reply.send(Err(ClientError::ConnectionLost { detail: detail.clone() }));
                    }
                }
            }
        });
    }
}

/// An admin reply that is not the one wanted: the server's `Invalid` detail, or unexpected.
fn invalid_or_unexpected(reply: AdminReply, wanted: &str) -> ClientError {
    match reply {
        AdminReply::Invalid { detail } => ClientError::Invalid(detail),
        other => ClientError::Unexpected(format!("{other:?} for {wanted}")),
    }
}
