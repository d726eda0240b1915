//! [`ClusterWatch`]: the cluster as etcd has it now. One read of every key under the prefix,
//! then a watch from the revision after it; when the watch breaks (etcd restarted, the
//! connection dropped, the revision compacted) it reads everything again and watches anew.
//! A stored map that fails its checks is logged and the last good one kept.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use flashstock_cluster::{ClusterView, Member, ServerId, SlotMap, SlotMove};
use tokio::sync::watch;

use crate::error::EtcdError;
use crate::keys::EtcdConfig;

/// How long the watch waits before reading the cluster again after etcd failed it.
const REWATCH_DELAY: Duration = Duration::from_millis(500);

/// The cluster's current view, kept current by a task of its own (stopped on drop).
#[derive(Debug)]
pub struct ClusterWatch {
    view: watch::Receiver<Arc<ClusterView>>,
    task: tokio::task::JoinHandle<()>,
}

impl ClusterWatch {
    /// Reads the cluster (failing when etcd does not answer), then keeps following it.
    pub async fn start(config: EtcdConfig) -> Result<ClusterWatch, EtcdError> {
        let mut client = config.connect().await?;
        let (view, revision) = read_view(&config, &mut client, None).await?;
        let (publish, view) = watch::channel(Arc::new(view));
        let task = tokio::spawn(follow(config, client, publish, revision));
        Ok(ClusterWatch { view, task })
    }

    /// The view now.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// A receiver that sees every new view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    /// Waits, up to `timeout`, until the map is at `revision` or later; whether it is.
    pub async fn wait_for_map(&self, revision: i64, timeout: Duration) -> bool {
        let mut view = self.view.clone();
        let reached =
            tokio::time::timeout(timeout, view.wait_for(|view| view.map_revision() >= revision))
                .await;
        matches!(reached, Ok(Ok(_)))
    }
}

impl Drop for ClusterWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every key of the cluster, as a view, and the etcd revision it was read at. A bad or
/// missing map leaves `previous`'s map (the last good one) in force; a bad member entry is
/// left out.
async fn read_view(
    config: &EtcdConfig,
    client: &mut etcd_client::Client,
    previous: Option<&ClusterView>,
) -> Result<(ClusterView, i64), EtcdError> {
    let options = GetOptions::new().with_prefix();
    let response =
        client.get(config.cluster_prefix(), Some(options)).await.map_err(|e| config.error(e))?;
    let revision = response.header().map_or(0, |header| header.revision());
    // A map deleted meanwhile leaves the last one in force, as a delete event does.
    let mut view = ClusterView { map: previous.and_then(|v| v.map.clone()), ..Default::default() };
    for kv in response.kvs() {
        apply_put(config, &mut view, kv);
    }
    Ok((view, revision))
}

/// Follows the cluster until every receiver is gone.
async fn follow(
    config: EtcdConfig,
    mut client: etcd_client::Client,
    publish: watch::Sender<Arc<ClusterView>>,
    mut revision: i64,
) {
    while !publish.is_closed() {
        if let Err(err) = watch_from(&config, &mut client, &publish, revision).await {
            tracing::warn!(%err, "the cluster watch broke; reading the cluster again");
        }
        loop {
            tokio::time::sleep(REWATCH_DELAY).await;
            let read = async {
                let mut fresh = config.connect().await?;
                let previous = publish.borrow().clone();
                let (view, at) = read_view(&config, &mut fresh, Some(&previous)).await?;
                Ok::<_, EtcdError>((fresh, view, at))
            };
            match read.await {
                Ok((fresh, view, at)) => {
                    client = fresh;
                    revision = at;
                    publish.send_if_modified(|current| replace_if_changed(current, view));
                    break;
                }
                Err(err) => tracing::warn!(%err, "reading the cluster failed; trying again"),
            }
        }
    }
}

/// Applies the watch's events from `revision + 1` on until etcd ends or cancels the watch.
async fn watch_from(
    config: &EtcdConfig,
    client: &mut etcd_client::Client,
    publish: &watch::Sender<Arc<ClusterView>>,
    revision: i64,
) -> Result<(), EtcdError> {
    let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let (_watcher, mut stream) =
        client.watch(config.cluster_prefix(), Some(options)).await.map_err(|e| config.error(e))?;
    while let Some(response) = stream.message().await.map_err(|e| config.error(e))? {
        if response.canceled() {
            tracing::warn!(reason = response.cancel_reason(), "etcd cancelled the cluster watch");
            return Ok(());
        }
        if response.events().is_empty() {
            continue;
        }
        let mut view = ClusterView::clone(&publish.borrow());
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => apply_put(config, &mut view, kv),
                EventType::Delete => apply_delete(config, &mut view, kv),
            }
        }
        publish.send_if_modified(|current| replace_if_changed(current, view));
        if publish.is_closed() {
            return Ok(());
        }
    }
    Ok(())
}

fn replace_if_changed(current: &mut Arc<ClusterView>, view: ClusterView) -> bool {
    let changed = **current != view;
    if changed {
        *current = Arc::new(view);
    }
    changed
}

fn apply_put(config: &EtcdConfig, view: &mut ClusterView, kv: &KeyValue) {
    if kv.key() == config.map_key().as_bytes() {
        match SlotMap::parse(kv.value(), kv.mod_revision()) {
            Ok(map) => view.map = Some(map),
            Err(err) => {
                tracing::error!(%err, "the stored shard map is bad; keeping the last good one")
            }
        }
    } else if kv.key() == config.move_key().as_bytes() {
        match SlotMove::parse(kv.value()) {
            Ok(moving) => view.moving = Some(moving),
            Err(err) => tracing::error!(%err, "the stored slot move is bad; ignored"),
        }
    } else if let Some(server) = member_of(config, kv) {
        match Member::parse(kv.value()) {
            Ok(member) => {
                view.members.insert(server, member);
            }
            Err(err) => tracing::warn!(%err, server = %server.0, "a member entry is bad; left out"),
        }
    }
}

fn apply_delete(config: &EtcdConfig, view: &mut ClusterView, kv: &KeyValue) {
    if kv.key() == config.map_key().as_bytes() {
        tracing::warn!("the shard map was deleted; keeping the last one");
    } else if kv.key() == config.move_key().as_bytes() {
        view.moving = None;
    } else if let Some(server) = member_of(config, kv) {
        view.members.remove(&server);
    }
}

fn member_of(config: &EtcdConfig, kv: &KeyValue) -> Option<ServerId> {
    let rest = kv.key().strip_prefix(config.members_prefix().as_bytes())?;
    let id = std::str::from_utf8(rest).ok()?;
    (!id.is_empty()).then(|| ServerId(id.to_owned()))
}
