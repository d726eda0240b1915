//! [`ClusterRoute`]: a [`Client`] of a cluster (docs/cluster.md). It reads and watches the
//! shard map and the members in etcd, sends each request to the server owning its slot (a
//! SKU's, or the one a reservation id carries) over a client of that server's own, splits a
//! batch by server, and follows a `Moved` answer: to the server it names, once the map at its
//! revision is read (or after a short wait, when the server is the one behind).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flashstock_cluster::{ClusterView, ServerId};
use flashstock_cluster_etcd::{ClusterWatch, EtcdConfig};
use flashstock_protocol::{Moved, Refusal, Reply, Request};

use crate::client::{Client, ClientConfig};
use crate::error::ClientError;

/// How many `Moved` answers one request follows before failing with `ClientError::Moved`.
pub const MOVED_FOLLOWS_MAX: u32 = 4;

/// The first wait before following a `Moved` again, doubled each time.
const MOVED_BACKOFF: Duration = Duration::from_millis(5);

/// The wait before sending again requests of a slot that is moving (docs/cluster.md): a
/// move's freeze lasts about as long as shipping the range, tens of milliseconds to seconds.
pub(crate) const MOVING_BACKOFF: Duration = Duration::from_millis(20);

/// The cluster's view and a client per server.
#[derive(Debug)]
pub(crate) struct ClusterRoute {
    watch: ClusterWatch,
    /// Every setting but the address, for each server's client.
    template: ClientConfig,
    servers: std::sync::RwLock<HashMap<ServerId, Client>>,
    connecting: tokio::sync::Mutex<()>,
}

impl ClusterRoute {
    /// Reads the cluster from etcd and keeps following it.
    pub(crate) async fn start(
        etcd: EtcdConfig,
        template: ClientConfig,
    ) -> Result<Self, ClientError> {
        let watch = ClusterWatch::start(etcd).await?;
        let template = ClientConfig { cluster: None, ..template };
        Ok(ClusterRoute {
            watch,
            template,
            servers: Default::default(),
            connecting: Default::default(),
        })
    }

    /// The view the client routes by now.
    pub(crate) fn view(&self) -> Arc<ClusterView> {
        self.watch.view()
    }

    /// Sends `request` to its slot's owner, following `Moved` answers.
    pub(crate) async fn call(&self, request: Request) -> Result<Reply, ClientError> {
        let slot = request.slot();
        let mut follow: Option<String> = None;
        for follows in 0..=MOVED_FOLLOWS_MAX {
            let server = self.server_for(slot.0, follow.take()).await?;
            match server.call(request.clone()).await? {
                Reply::Moved(moved) if follows < MOVED_FOLLOWS_MAX => {
                    follow = self.after_moved(&moved, follows).await;
                }
                Reply::Moved(moved) => return Err(moved_error(&moved)),
                reply => return Ok(reply),
            }
        }
        unreachable!("the last follow returns")
    }

    /// Sends `requests` split by owner, each server's share as one batch, concurrently;
    /// the replies come back in the requests' order. Requests answered `Moved` are sent
    /// again (to where the map says, once it is current) up to `MOVED_FOLLOWS_MAX` times;
    /// requests of a moving slot are sent again every `MOVING_BACKOFF` until the call's
    /// timeout, and then answered with their `SlotMoving` refusal.
    pub(crate) async fn call_batch(&self, requests: &[Request]) -> Result<Vec<Reply>, ClientError> {
        let mut replies: Vec<Option<Reply>> = vec![None; requests.len()];
        let mut pending: Vec<usize> = (0..requests.len()).collect();
        // Where a `Moved` answer sent a request, while this client's map is no newer.
        let mut sent_on: HashMap<usize, String> = HashMap::new();
        let deadline = tokio::time::Instant::now() + self.template.call_timeout;
        let mut follows = 0;
        while !pending.is_empty() {
            let mut by_server: HashMap<String, Vec<usize>> = HashMap::new();
            let view = self.view();
            for &index in &pending {
                let owner = match sent_on.remove(&index) {
                    Some(server) => server,
                    None => view.owner(requests[index].slot()).ok_or(ClientError::NoMap)?.0.clone(),
                };
                by_server.entry(owner).or_default().push(index);
            }
            let calls = by_server.into_iter().map(|(server, indexes)| async move {
                let client =
                    self.client_of(&ServerId(server), requests[indexes[0]].slot().0).await?;
                let share: Vec<Request> = indexes.iter().map(|&i| requests[i].clone()).collect();
                Ok::<_, ClientError>((indexes, client.call_batch(&share).await?))
            });
            let mut moved: Vec<(usize, Box<Moved>)> = Vec::new();
            let mut moving = Vec::new();
            let in_time = tokio::time::Instant::now() < deadline;
            for answered in futures_util::future::join_all(calls).await {
                let (indexes, share) = answered?;
                for (index, reply) in indexes.into_iter().zip(share) {
                    match reply {
                        Reply::Moved(m) if follows < MOVED_FOLLOWS_MAX => moved.push((index, m)),
                        Reply::Moved(m) => return Err(moved_error(&m)),
                        Reply::Refused(Refusal::SlotMoving { .. }) if in_time => moving.push(index),
                        reply => replies[index] = Some(reply),
                    }
                }
            }
            if !moving.is_empty() {
                // Moving slots answer again once the move is done: here or, after the map
                // changed, `Moved` to their new owner.
                tokio::time::sleep(MOVING_BACKOFF).await;
            }
            let newest = moved.iter().map(|(_, m)| m.as_ref()).max_by_key(|m| m.map_revision);
            let Some(newest) = newest else {
                pending = moving;
                continue;
            };
            // Once the map is as new as the newest answer, the batch is routed by it again;
            // otherwise each request goes where its answer said.
            if self.after_moved(newest, follows).await.is_some() {
                sent_on = moved
                    .iter()
                    .filter(|(_, m)| !m.server.is_empty())
                    .map(|(i, m)| (*i, m.server.clone()))
                    .collect();
            }
            pending = moved.into_iter().map(|(index, _)| index).chain(moving).collect();
            follows += 1;
        }
        Ok(replies.into_iter().map(|reply| reply.expect("every request answered")).collect())
    }

    /// Waits for the map a `Moved` answer was made under, or, when this client's map is
    /// newer (the server is the one behind), a little; returns the server it named, to try
    /// next when the map is no newer.
    async fn after_moved(&self, moved: &Moved, follows: u32) -> Option<String> {
        let ours = self.view().map_revision();
        if moved.map_revision > ours {
            let wait = self.template.attempt_timeout;
            if self.watch.wait_for_map(moved.map_revision, wait).await {
                return None;
            }
        } else {
            tokio::time::sleep(MOVED_BACKOFF * 2u32.pow(follows)).await;
        }
        (!moved.server.is_empty()).then(|| moved.server.clone())
    }

    /// The client of `server`, or of `slot`'s owner by the map.
    async fn server_for(&self, slot: u16, server: Option<String>) -> Result<Client, ClientError> {
        let owner = match server {
            Some(server) => ServerId(server),
            None => self
                .view()
                .owner(flashstock_cluster::Slot(slot))
                .cloned()
                .ok_or(ClientError::NoMap)?,
        };
        self.client_of(&owner, slot).await
    }

    /// The client of `server`, connected on first use (and again when its address changed).
    async fn client_of(&self, server: &ServerId, slot: u16) -> Result<Client, ClientError> {
        let view = self.member_view(server, slot).await?;
        let member = &view.members[server];
        let current = |servers: &HashMap<ServerId, Client>| {
            servers.get(server).filter(|client| client.addr() == member.quic).cloned()
        };
        if let Some(client) = current(&self.servers.read().unwrap_or_else(|p| p.into_inner())) {
            return Ok(client);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(client) = current(&self.servers.read().unwrap_or_else(|p| p.into_inner())) {
            return Ok(client);
        }
        let config = ClientConfig {
            addr: member.quic,
            server_name: member.server_name.clone(),
            ..self.template.clone()
        };
        let client = Client::connect(config).await?;
        let old = self
            .servers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(server.clone(), client.clone());
        if let Some(old) = old {
            old.close().await;
        }
        Ok(client)
    }

    /// The view once it has `server`'s member entry: a server restarting (its entry gone until
    /// it registers again) is waited for up to the call timeout, as a single server's client
    /// rides through a restart; then `ServerDown`.
    async fn member_view(
        &self,
        server: &ServerId,
        slot: u16,
    ) -> Result<Arc<ClusterView>, ClientError> {
        let view = self.view();
        if view.members.contains_key(server) {
            return Ok(view);
        }
        let mut views = self.watch.subscribe();
        let registered = tokio::time::timeout(
            self.template.call_timeout,
            views.wait_for(|view| view.members.contains_key(server)),
        )
        .await
        .map(|view| view.map(|view| view.clone()));
        match registered {
            Ok(Ok(view)) => Ok(view),
            _ => Err(ClientError::ServerDown { slot, server: server.0.clone() }),
        }
    }

    /// Closes every server's connections.
    pub(crate) async fn close(&self) {
        let servers: Vec<Client> = self
            .servers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        for client in servers {
            client.close().await;
        }
    }
}

fn moved_error(moved: &Moved) -> ClientError {
    ClientError::Moved { slot: moved.slot, server: moved.server.clone() }
}
