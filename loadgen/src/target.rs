//! Targets: flashstock over QUIC, or the Redis Lua baseline ([`crate::redis_target`]).
//!
//! Both answer the same questions the same way, so one runner drives either: set up the
//! run's SKUs, send a batch of reserves, settle a batch of holds, and read each SKU's counts
//! for the audit.

use std::net::SocketAddr;
use std::path::PathBuf;

use flashstock_client::{Client, ClientConfig, ClientTls, EtcdConfig};
use flashstock_engine::{
    BuyerId, Command, Lines, Outcome, RequestId, ReservationId, Reserve, ReserveCart, SkuId,
};
use flashstock_protocol::{Refusal, Reply, Request};

use crate::redis_target::RedisTarget;
use crate::scenario::{ReserveOp, SkuSetup};

/// Why the load generator could not go on.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The flashstock client failed (connection, credentials).
    #[error("flashstock: {0}")]
    Flashstock(#[from] flashstock_client::ClientError),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A setup step was refused.
    #[error("setting up the run: {0}")]
    Setup(String),
    /// A file (certificate, tokens, report) could not be read or written.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// A held reservation or cart, as the target names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    /// The target's id for it.
    pub id: u64,
    /// What it holds.
    pub lines: Lines,
}

impl Hold {
    /// Its lines as (SKU, units).
    pub fn units(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.lines.as_slice().iter().map(|line| (line.sku.0, line.qty))
    }
}

/// The answer to one reserve. A hold carries its lines inline (a cart's up to 16): answers
/// live for one batch, and boxing would allocate once per reserve in the generator's hot loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum ReserveAnswer {
    /// Held.
    Held(Hold),
    /// Not held, and why (an outcome name: `sold_out`, `limit_exceeded`, `overloaded`...).
    Refused(&'static str),
}

/// One SKU's counts, as the target reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SkuCounts {
    /// The SKU.
    pub sku: u64,
    /// Units in all.
    pub total: u64,
    /// Units free.
    pub available: u64,
    /// Units held.
    pub reserved: u64,
    /// Units sold.
    pub sold: u64,
}

/// Where the load goes.
#[derive(Debug)]
pub enum Target {
    /// flashstock over QUIC.
    Flashstock(FlashstockTarget),
    /// Redis with the Lua scripts flash-sale systems use.
    Redis(RedisTarget),
}

impl Target {
    /// `flashstock` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Flashstock(_) => "flashstock",
            Target::Redis(_) => "redis",
        }
    }

    /// Creates the run's SKUs with their stock and limits.
    pub async fn setup(&self, skus: &[SkuSetup]) -> Result<(), LoadError> {
        match self {
            Target::Flashstock(t) => t.setup(skus).await,
            Target::Redis(t) => t.setup(skus).await,
        }
    }

    /// Sends a batch of reserves; one answer per op, in order.
    pub async fn reserve(&self, ops: &[ReserveOp]) -> Result<Vec<ReserveAnswer>, LoadError> {
        match self {
            Target::Flashstock(t) => t.reserve(ops).await,
            Target::Redis(t) => t.reserve(ops).await,
        }
    }

    /// Confirms (`confirm` true) or cancels a batch of holds; one outcome name per hold.
    pub async fn settle(
        &self,
        holds: &[Hold],
        confirm: bool,
    ) -> Result<Vec<&'static str>, LoadError> {
        match self {
            Target::Flashstock(t) => t.settle(holds, confirm).await,
            Target::Redis(t) => t.settle(holds, confirm).await,
        }
    }

    /// Each SKU's counts, for the audit.
    pub async fn counts(&self, skus: &[u64]) -> Result<Vec<SkuCounts>, LoadError> {
        match self {
            Target::Flashstock(t) => t.counts(skus).await,
            Target::Redis(t) => t.counts(skus).await,
        }
    }

    /// A line saying what the target is and how it persists, for reports.
    pub async fn describe(&self) -> String {
        match self {
            Target::Flashstock(t) if t.service.map_revision() > 0 => format!(
                "a flashstock cluster (map revision {}; WAL, fsync before every answer)",
                t.service.map_revision()
            ),
            Target::Flashstock(t) => {
                format!("flashstock at {} (WAL, fsync before every answer)", t.addr)
            }
            Target::Redis(t) => t.describe().await,
        }
    }
}

/// How the load generator hands requests to the client library.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CallMode {
    /// Each batch as one frame (`Client::call_batch`): what a batching gateway sends.
    #[default]
    Frames,
    /// Each request as its own call (`Client::call`), one at a time per caller, left to the
    /// client's automatic batching: what order services with one handler per request send.
    Client,
    /// Each request as its own call over the server's HTTP/JSON API (`--http-addr`), one at
    /// a time per caller, each caller on a keep-alive connection: what a service in another
    /// language sends. Setting up and the audit's reads stay on QUIC.
    Http,
}

/// flashstock over QUIC, through the client library: `--connections` service connections and
/// an admin one; each batch of requests goes out as one frame. A lost connection is replaced
/// and its batch retried with the same request ids, so a rehearsal rides through a server
/// restart; a batch that still gets no answer counts as unknown, not as the run's end.
#[derive(Debug)]
pub struct FlashstockTarget {
    addr: SocketAddr,
    admin: Client,
    service: Client,
    calls: CallMode,
    /// The HTTP API's caller, in [`CallMode::Http`].
    http: Option<crate::http_target::HttpCaller>,
}

/// How long one batch may take, retries and reconnects included, before it counts as unknown:
/// long enough to ride through a server's restart.
const BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl FlashstockTarget {
    /// Connects `connections` service connections and one admin connection, with the
    /// `(admin, service)` tokens.
    pub async fn connect(
        (addr, server_name, tls, cluster): (SocketAddr, &str, &ClientTls, Option<&EtcdConfig>),
        (admin_token, service_token): (&str, &str),
        connections: usize,
        calls: CallMode,
    ) -> Result<FlashstockTarget, LoadError> {
        let config = |token: &str, connections: usize| ClientConfig {
            connections,
            call_timeout: BATCH_TIMEOUT,
            retries_max: 100,
            // A rehearsal wants every answer it can get: keep trying through an outage.
            breaker_failures_max: u32::MAX,
            ..match cluster {
                Some(etcd) => ClientConfig::cluster(etcd.clone(), tls.clone(), Some(token)),
                None => ClientConfig::new(addr, server_name, tls.clone(), Some(token)),
            }
        };
        let admin = Client::connect(config(admin_token, 1)).await?;
        let service = Client::connect(config(service_token, connections.max(1))).await?;
        Ok(FlashstockTarget { addr, admin, service, calls, http: None })
    }

    /// Sends the service calls over the HTTP API at `addr` (in [`CallMode::Http`]).
    pub fn with_http(self, addr: SocketAddr, service_token: &str) -> FlashstockTarget {
        let http = Some(crate::http_target::HttpCaller::new(addr, service_token));
        FlashstockTarget { http, ..self }
    }

    /// Sends requests as the call mode says; one reply per request, in order.
    async fn send(&self, requests: &[Request]) -> Result<Vec<Reply>, LoadError> {
        if self.calls == CallMode::Frames {
            return Ok(self.service.call_batch(requests).await?);
        }
        if let Some(http) = &self.http {
            let mut replies = Vec::with_capacity(requests.len());
            for request in requests {
                replies.push(http.call(request).await?);
            }
            return Ok(replies);
        }
        let mut replies = Vec::with_capacity(requests.len());
        for request in requests {
            replies.push(match self.service.call(request.clone()).await {
                Ok(reply) => reply,
                Err(flashstock_client::ClientError::Refused { refusal }) => Reply::Refused(refusal),
                Err(err) => return Err(err.into()),
            });
        }
        Ok(replies)
    }

    /// A request id unique to this run (the client's random prefix and its counter).
    fn request(&self) -> RequestId {
        self.service.request_id()
    }

    async fn setup(&self, skus: &[SkuSetup]) -> Result<(), LoadError> {
        let mut requests = Vec::new();
        for s in skus {
            let sku = SkuId(s.sku);
            requests.push(Request::Apply(Command::SetStock {
                request: self.request(),
                sku,
                total: s.units,
            }));
            if let Some(limit) = s.buyer_limit {
                requests.push(Request::Apply(Command::SetBuyerLimit {
                    request: self.request(),
                    sku,
                    limit: Some(limit),
                }));
            }
        }
        // The buckets after the stock and the limit (a spread SKU's are fixed), in a batch of
        // their own: one batch's requests may be applied in any order.
        let spread = skus.iter().filter_map(|s| {
            let buckets = s.buckets?;
            let request = self.request();
            Some(Request::Apply(Command::SetBuckets { request, sku: SkuId(s.sku), buckets }))
        });
        let spread: Vec<Request> = spread.collect();
        for chunk in requests.chunks(1_000).chain(spread.chunks(1_000)) {
            for reply in self.admin.call_batch(chunk).await? {
                match reply {
                    Reply::Outcome(
                        Outcome::StockChanged { .. }
                        | Outcome::LimitSet
                        | Outcome::BucketsSet { .. },
                    ) => {}
                    other => return Err(LoadError::Setup(format!("{other:?}"))),
                }
            }
        }
        Ok(())
    }

    async fn reserve(&self, ops: &[ReserveOp]) -> Result<Vec<ReserveAnswer>, LoadError> {
        let requests: Vec<Request> = ops
            .iter()
            .map(|op| {
                let (request, buyer, ttl_ms) = (self.request(), BuyerId(op.buyer), op.ttl_ms);
                if op.cart {
                    let cart =
                        ReserveCart { request, buyer, ttl_ms, order_ref: None, lines: op.lines };
                    return Request::ReserveCart(Box::new(cart));
                }
                let line = op.lines.as_slice()[0];
                let (sku, qty) = (line.sku, line.qty);
                Request::Apply(Command::Reserve(Reserve {
                    request,
                    buyer,
                    sku,
                    qty,
                    ttl_ms,
                    order_ref: None,
                }))
            })
            .collect();
        let replies = self.send(&requests).await?;
        Ok(replies
            .iter()
            .zip(ops)
            .map(|(reply, op)| match reply {
                Reply::Outcome(Outcome::Reserved { reservation, .. }) => {
                    ReserveAnswer::Held(Hold { id: reservation.0, lines: op.lines })
                }
                other => ReserveAnswer::Refused(reply_name(other)),
            })
            .collect())
    }

    async fn settle(&self, holds: &[Hold], confirm: bool) -> Result<Vec<&'static str>, LoadError> {
        let requests: Vec<Request> = holds
            .iter()
            .map(|hold| {
                let (request, reservation) = (self.request(), ReservationId(hold.id));
                Request::Apply(if confirm {
                    Command::Confirm { request, reservation, order_ref: None }
                } else {
                    Command::Cancel { request, reservation }
                })
            })
            .collect();
        let replies = self.send(&requests).await?;
        Ok(replies.iter().map(reply_name).collect())
    }

    async fn counts(&self, skus: &[u64]) -> Result<Vec<SkuCounts>, LoadError> {
        let mut counts = Vec::with_capacity(skus.len());
        for chunk in skus.chunks(1_000) {
            let requests: Vec<Request> =
                chunk.iter().map(|&sku| Request::QuerySku(SkuId(sku))).collect();
            for (reply, &sku) in self.admin.call_batch(&requests).await?.into_iter().zip(chunk) {
                let Reply::Sku(Some(view)) = reply else {
                    return Err(LoadError::Setup(format!("sku {sku} is missing: {reply:?}")));
                };
                counts.push(SkuCounts {
                    sku,
                    total: view.total,
                    available: view.available,
                    reserved: view.reserved,
                    sold: view.sold,
                });
            }
        }
        Ok(counts)
    }
}

/// The outcome name a reply counts under.
fn reply_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Outcome(outcome) => match outcome {
            Outcome::Reserved { .. } => "reserved",
            Outcome::SoldOut { .. } => "sold_out",
            Outcome::LimitExceeded { .. } => "limit_exceeded",
            Outcome::SaleNotOpen { .. } | Outcome::SaleClosed { .. } => "sale_closed",
            Outcome::Confirmed => "confirmed",
            Outcome::Cancelled => "cancelled",
            Outcome::Expired => "expired",
            Outcome::AlreadyConfirmed | Outcome::AlreadyCancelled => "already_ended",
            Outcome::CartRefused { refusal, .. } => refusal.name(),
            _ => "other",
        },
        Reply::Refused(Refusal::Overloaded) => "overloaded",
        Reply::Refused(_) => "refused",
        Reply::Moved(_) => "moved",
        Reply::Sku(_) | Reply::Reservation(_) | Reply::Cart(_) => "other",
    }
}
