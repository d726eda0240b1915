//! [`Gates`]: the checks a request passes before any shard sees it, shared by the QUIC
//! sessions and the HTTP API: whether this server owns its slot ([`Ownership`], in a
//! cluster), then the reserve rate limits.

use std::sync::Arc;

use flashstock_cluster::{slot_of, ClusterView, OwnedSlots, ServerId};
use flashstock_protocol::{Moved, Refusal, Reply, Request};
use tokio::sync::watch;

use crate::net::rate::RateGate;

/// The checks before submission. Without a cluster, only the rate limits.
#[derive(Clone, Debug)]
pub struct Gates {
    /// Reserve rate limits (also listed and set by admins).
    pub rates: Arc<RateGate>,
    /// Which slots this server serves, when it is one of a cluster's.
    pub ownership: Option<Arc<Ownership>>,
}

impl From<Arc<RateGate>> for Gates {
    fn from(rates: Arc<RateGate>) -> Gates {
        Gates { rates, ownership: None }
    }
}

impl Gates {
    /// Answers in `early` each request of `batch` not already answered that this server
    /// must not apply: `Moved` for a slot it does not own, `RateLimited` past a limit.
    pub fn check(&self, credential: u64, batch: &[Request], early: &mut [Option<Reply>]) {
        if let Some(ownership) = &self.ownership {
            ownership.check(batch, early);
        }
        self.rates.check(credential, batch, early);
    }
}

/// This server's slots by the cluster's current map: a request for another slot is answered
/// `Moved` (naming the owner), never applied. Follows the map as etcd changes it.
#[derive(Debug)]
pub struct Ownership {
    current: watch::Receiver<Arc<Owned>>,
    task: tokio::task::JoinHandle<()>,
}

/// One map's answer for this server: the view and the slots it gives this server.
#[derive(Debug)]
struct Owned {
    view: Arc<ClusterView>,
    slots: OwnedSlots,
}

impl Owned {
    fn publish_metrics(&self) {
        metrics::gauge!(crate::metrics::CLUSTER_SLOTS_OWNED).set(self.slots.len() as f64);
        let revision = self.view.map_revision() as f64;
        metrics::gauge!(crate::metrics::CLUSTER_MAP_REVISION).set(revision);
    }
}

impl Ownership {
    /// `server`'s slots, following `views` (a `ClusterWatch`'s receiver).
    pub fn follow(server: ServerId, mut views: watch::Receiver<Arc<ClusterView>>) -> Ownership {
        let owned =
            move |view: Arc<ClusterView>| Arc::new(Owned { slots: view.owned_by(&server), view });
        let first = owned(views.borrow_and_update().clone());
        first.publish_metrics();
        tracing::info!(
            slots = first.slots.len(),
            map_revision = first.view.map_revision(),
            "serving the slots the map gives this server"
        );
        let (publish, current) = watch::channel(first);
        let task = tokio::spawn(async move {
            while views.changed().await.is_ok() {
                let next = owned(views.borrow_and_update().clone());
                if next.slots != publish.borrow().slots {
                    tracing::info!(
                        slots = next.slots.len(),
                        map_revision = next.view.map_revision(),
                        "the map changed this server's slots"
                    );
                }
                next.publish_metrics();
                publish.send_replace(next);
            }
        });
        Ownership { current, task }
    }

    /// How many slots this server serves now.
    pub fn slots_owned(&self) -> usize {
        self.current.borrow().slots.len()
    }

    fn check(&self, batch: &[Request], early: &mut [Option<Reply>]) {
        let owned = self.current.borrow().clone();
        for (request, answer) in batch.iter().zip(early.iter_mut()) {
            if answer.is_some() {
                continue;
            }
            let slot = request.slot();
            if !owned.slots.contains(slot) {
                let server = owned.view.owner(slot).map(|id| id.0.clone()).unwrap_or_default();
                let map_revision = owned.view.map_revision();
                *answer =
                    Some(Reply::Moved(Box::new(Moved { slot: slot.0, server, map_revision })));
            } else if let Request::ReserveCart(cart) = request {
                // Every line must be this server's: carts across servers are not supported.
                let elsewhere = cart
                    .lines
                    .as_slice()
                    .iter()
                    .map(|line| slot_of(line.sku))
                    .find(|slot| !owned.slots.contains(*slot));
                if let Some(slot) = elsewhere {
                    *answer = Some(Reply::Refused(Refusal::SpansServers { slot: slot.0 }));
                }
            }
        }
    }
}

impl Drop for Ownership {
    fn drop(&mut self) {
        self.task.abort();
    }
}
