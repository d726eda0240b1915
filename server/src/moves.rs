//! A server's side of slot moves that are over (docs/cluster.md): each range frozen here is
//! thawed when the map gives it to this server, and released when it gives it to another,
//! once no move of it is in progress in etcd. That is how a move completes after its flip,
//! rolls back after an abort, and how a server killed in the middle of one comes right when
//! it starts again, whether or not the operator's tool is still running.

use std::sync::Arc;
use std::time::Duration;

use flashstock_cluster::{ClusterView, ServerId};
use flashstock_cluster_etcd::{read_map, read_move, EtcdConfig};
use flashstock_engine::{SlotRange, SlotsStep};
use flashstock_runtime::Handle;
use tokio::sync::watch;

/// How often frozen ranges are looked at again besides each change of the cluster's view
/// (a freeze that raced an abort is then settled within this).
const SETTLE_INTERVAL: Duration = Duration::from_secs(2);

/// Settles this server's frozen ranges whenever the view changes, and every
/// `SETTLE_INTERVAL`, until `views` closes.
pub(crate) async fn settle(
    handle: Handle,
    etcd: EtcdConfig,
    server: ServerId,
    mut views: watch::Receiver<Arc<ClusterView>>,
) {
    loop {
        if let Err(err) = settle_once(&handle, &etcd, &server).await {
            tracing::warn!(%err, "settling frozen slot ranges failed; trying again");
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(SETTLE_INTERVAL) => {}
        }
    }
}

/// One pass. The frozen ranges are read before etcd: a move's key is stored before any
/// freeze of it, so a range frozen here with no move in etcd afterwards belongs to a move
/// that is over, and the map read then says who owns it. The watch's view could lag behind
/// the move's start; etcd's own reads do not.
async fn settle_once(
    handle: &Handle,
    etcd: &EtcdConfig,
    server: &ServerId,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let frozen = handle.frozen_ranges().await?;
    if frozen.is_empty() {
        return Ok(());
    }
    let moving = read_move(etcd).await?;
    let Some(map) = read_map(etcd).await? else { return Ok(()) };
    let view = ClusterView { map: Some(map), ..ClusterView::default() };
    for range in frozen {
        let (first, last) = (range.first().0, range.last().0);
        if moving.as_ref().is_some_and(|m| m.first <= last && first <= m.last) {
            continue;
        }
        let step = match view.owner_of_range(first, last) {
            Some(owner) if owner == server => SlotsStep::Thawed,
            Some(_) => SlotsStep::Released,
            None => {
                tracing::error!(%range, "a frozen range is split between servers in the map; left frozen");
                continue;
            }
        };
        settle_range(handle, range, step).await?;
    }
    Ok(())
}

async fn settle_range(
    handle: &Handle,
    range: SlotRange,
    step: SlotsStep,
) -> Result<(), flashstock_runtime::RuntimeError> {
    handle.slots_step(range, step).await?;
    let done = if step == SlotsStep::Thawed { "serving it" } else { "dropped its state" };
    tracing::info!(%range, "a slot move is over: {done}");
    Ok(())
}
