//! `flashstock cluster move|resume|abort`: the operator's side of a slot move
//! (docs/cluster.md). This tool only drives; what makes a move safe is elsewhere: the move's
//! key in etcd (stored before any freeze), the servers' durable freezes and imports, the one
//! transaction that flips the map, and each server settling its frozen copy by the map once
//! the move's key is gone. So this tool may die at any point: `resume` starts the copy over,
//! `abort` rolls the move back.

use std::time::{Duration, Instant};

use flashstock_client::{Client, ClientConfig, ClientTls};
use flashstock_cluster::{ClusterView, Member, ServerId, SlotMove};
use flashstock_cluster_etcd::{
    abort_move, flip_move, read_map, read_move, start_move, ClusterWatch, EtcdConfig, EtcdError,
};
use flashstock_protocol::{SlotsAction, SLOT_ITEMS_PAGE_MAX};
use serde_json::json;

use crate::cli::MovePhase;
use crate::report::Report;
use crate::AdminError;

/// How long the tool waits for a server of the move to be registered (one restarting after
/// a crash registers within seconds), and for both to settle after the flip.
const SERVER_WAIT: Duration = Duration::from_secs(30);

/// What reaching the servers takes: their certificate and an admin token.
#[derive(Clone, Debug)]
pub struct Access {
    /// The servers' TLS trust.
    pub tls: ClientTls,
    /// An admin token.
    pub token: String,
}

/// Starts moving slots `slots` (`FIRST-LAST`) to `to`, then drives the move.
pub async fn start(
    etcd: &EtcdConfig,
    access: &Access,
    (slots, to): (&str, &str),
    pause: Option<MovePhase>,
) -> Result<Report, AdminError> {
    let (first, last) = parse_slots(slots)?;
    let map = read_map(etcd).await?.ok_or_else(|| usage("no shard map is stored"))?;
    let view = ClusterView { map: Some(map.clone()), ..ClusterView::default() };
    let from = view
        .owner_of_range(first, last)
        .ok_or_else(|| usage(format!("slots {first}-{last} are owned by more than one server")))?
        .clone();
    let to = ServerId(to.to_owned());
    if from == to {
        return Err(usage(format!("slots {first}-{last} are owned by {} already", to.0)));
    }
    let moving = SlotMove { first, last, from, to, map_revision: map.revision() };
    start_move(etcd, &moving).await?;
    eprintln!("move {first}-{last} from {} to {} recorded in etcd", moving.from.0, moving.to.0);
    drive(etcd, access, &moving, pause).await
}

/// Drives the move in progress from its start again.
pub async fn resume(
    etcd: &EtcdConfig,
    access: &Access,
    pause: Option<MovePhase>,
) -> Result<Report, AdminError> {
    let moving = read_move(etcd).await?.ok_or_else(|| usage("no slot move is in progress"))?;
    drive(etcd, access, &moving, pause).await
}

/// Abandons the move in progress.
pub async fn abort(etcd: &EtcdConfig) -> Result<Report, AdminError> {
    let moving = read_move(etcd).await?;
    let removed = abort_move(etcd).await?;
    let json = json!({"aborted": removed, "move": moving.as_ref().map(move_json)});
    let report = Report::table(vec!["aborted"], vec![vec![removed.to_string()]], json);
    Ok(match moving {
        Some(m) if removed => report.with_note(format!(
            "slots {}-{}: {} serves them again and {} drops its copy, each within seconds",
            m.first, m.last, m.from.0, m.to.0
        )),
        _ => report.failed("no slot move was in progress".into()),
    })
}

/// Freeze on both, copy every shard's items, flip the map, wait for both to settle.
async fn drive(
    etcd: &EtcdConfig,
    access: &Access,
    moving: &SlotMove,
    pause: Option<MovePhase>,
) -> Result<Report, AdminError> {
    let started = Instant::now();
    let mut phases = Vec::new();
    let (source, target) = connect_both(etcd, access, moving).await?;
    let range = (moving.first, moving.last);
    source.slots_action(range.0, range.1, SlotsAction::Freeze).await?;
    // A copy cut short before (this tool or the target died) is dropped, then made again.
    for action in [SlotsAction::Freeze, SlotsAction::Release, SlotsAction::Freeze] {
        target.slots_action(range.0, range.1, action).await?;
    }
    phases.push(phase("frozen", started, json!({})));
    if pause == Some(MovePhase::Frozen) {
        return Ok(paused(moving, phases));
    }
    let items = copy(&source, &target, moving).await?;
    phases.push(phase("copied", started, json!({"items": items})));
    if pause == Some(MovePhase::Copied) {
        return Ok(paused(moving, phases));
    }
    let map = read_map(etcd).await?.ok_or_else(|| usage("the shard map was deleted"))?;
    let moved = map
        .with_range_moved(
            flashstock_cluster::Slot(range.0),
            flashstock_cluster::Slot(range.1),
            moving.to.clone(),
        )
        .map_err(EtcdError::from)?;
    let revision = flip_move(etcd, moving, &moved).await?;
    phases.push(phase("flipped", started, json!({"map_revision": revision})));
    eprintln!(
        "flipped: the map at revision {revision} gives slots {}-{} to {}",
        range.0, range.1, moving.to.0
    );
    let settled = settled(&[&source, &target], range).await;
    phases.push(phase("settled", started, json!({"settled": settled})));
    source.close().await;
    target.close().await;
    let report = phases_report(moving, phases);
    Ok(if settled {
        report.with_note(format!("moved in {} ms", started.elapsed().as_millis()))
    } else {
        report.failed(
            "flipped, but a server did not settle its copy in time (it will on its own)".into(),
        )
    })
}

/// Connects to the move's two servers (waiting for one that is restarting) and checks they
/// run the same shard count.
async fn connect_both(
    etcd: &EtcdConfig,
    access: &Access,
    moving: &SlotMove,
) -> Result<(Client, Client), AdminError> {
    let watch = ClusterWatch::start(etcd.clone()).await?;
    let mut clients = Vec::new();
    for server in [&moving.from, &moving.to] {
        let member = registered(&watch, server).await?;
        let config = ClientConfig::new(
            member.quic,
            &member.server_name,
            access.tls.clone(),
            Some(&access.token),
        );
        clients.push(Client::connect(config).await?);
    }
    let target = clients.pop().expect("two clients");
    let source = clients.pop().expect("two clients");
    let (_, source_shards) = source.slots_status().await?;
    let (_, target_shards) = target.slots_status().await?;
    if source_shards != target_shards {
        return Err(usage(format!(
            "{} runs {source_shards} shards and {} {target_shards}: a move needs equal counts",
            moving.from.0, moving.to.0
        )));
    }
    Ok((source, target))
}

/// `server`'s member entry, waited for up to `SERVER_WAIT`.
async fn registered(watch: &ClusterWatch, server: &ServerId) -> Result<Member, AdminError> {
    let mut views = watch.subscribe();
    let found = views.wait_for(|view| view.members.contains_key(server));
    let member = match tokio::time::timeout(SERVER_WAIT, found).await {
        Ok(Ok(view)) => Some(view.members[server].clone()),
        _ => None,
    };
    member.ok_or_else(|| usage(format!("server {} is not registered in the cluster", server.0)))
}

/// Copies every shard's items of the range from `source` to `target`, a page at a time, the
/// shards concurrently (each shard's pages are read and written by its own thread on both
/// servers); returns how many.
async fn copy(source: &Client, target: &Client, moving: &SlotMove) -> Result<u64, AdminError> {
    let range = (moving.first, moving.last);
    let (_, shards) = source.slots_status().await?;
    let mut copies = tokio::task::JoinSet::new();
    for shard in 0..shards {
        let (source, target) = (source.clone(), target.clone());
        copies.spawn(async move { copy_shard(&source, &target, range, shard).await });
    }
    let mut copied = 0;
    while let Some(done) = copies.join_next().await {
        copied += done.map_err(|err| usage(format!("a shard's copy stopped: {err}")))??;
    }
    Ok(copied)
}

/// Copies one shard's items of `range`; returns how many.
async fn copy_shard(
    source: &Client,
    target: &Client,
    range: (u16, u16),
    shard: u16,
) -> Result<u64, AdminError> {
    let (mut offset, mut total) = (0u64, u64::MAX);
    while offset < total {
        let (items, count, all) =
            source.export_slots(range, shard, offset, SLOT_ITEMS_PAGE_MAX).await?;
        total = all;
        if count == 0 && offset < total {
            return Err(usage(format!("shard {shard}: the export ended at {offset} of {total}")));
        }
        target.import_slots(shard, items).await?;
        offset += u64::from(count);
    }
    eprintln!("shard {shard}: {total} items copied");
    Ok(total)
}

/// Whether neither server lists the range as frozen any more, within `SERVER_WAIT`.
async fn settled(servers: &[&Client], (first, last): (u16, u16)) -> bool {
    let deadline = Instant::now() + SERVER_WAIT;
    while Instant::now() < deadline {
        let mut frozen = false;
        for server in servers {
            match server.slots_status().await {
                Ok((ranges, _)) => frozen |= ranges.contains(&(first, last)),
                Err(_) => frozen = true,
            }
        }
        if !frozen {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn parse_slots(slots: &str) -> Result<(u16, u16), AdminError> {
    let bad = || usage(format!("slots {slots:?}: expected FIRST-LAST, 0 <= FIRST <= LAST <= 4095"));
    let (first, last) = slots.split_once('-').ok_or_else(bad)?;
    let (first, last): (u16, u16) =
        (first.trim().parse().map_err(|_| bad())?, last.trim().parse().map_err(|_| bad())?);
    if first > last || last >= flashstock_cluster::SLOT_COUNT {
        return Err(bad());
    }
    Ok((first, last))
}

fn usage(detail: impl Into<String>) -> AdminError {
    AdminError::Usage(detail.into())
}

fn move_json(moving: &SlotMove) -> serde_json::Value {
    json!({"first": moving.first, "last": moving.last, "from": moving.from.0, "to": moving.to.0, "map_revision": moving.map_revision})
}

/// One phase done, with the time since the start; printed as it happens.
fn phase(
    name: &'static str,
    started: Instant,
    detail: serde_json::Value,
) -> (String, u128, serde_json::Value) {
    let elapsed_ms = started.elapsed().as_millis();
    eprintln!("{name} after {elapsed_ms} ms");
    (name.to_owned(), elapsed_ms, detail)
}

fn phases_report(moving: &SlotMove, phases: Vec<(String, u128, serde_json::Value)>) -> Report {
    let rows = phases.iter().map(|(name, ms, _)| vec![name.clone(), ms.to_string()]).collect();
    let phases_json: Vec<_> = phases
        .iter()
        .map(|(name, ms, detail)| json!({"phase": name, "ms": ms, "detail": detail}))
        .collect();
    let json = json!({"move": move_json(moving), "phases": phases_json});
    Report::table(vec!["phase", "ms"], rows, json)
}

fn paused(moving: &SlotMove, phases: Vec<(String, u128, serde_json::Value)>) -> Report {
    phases_report(moving, phases)
        .with_note("paused: the move stays in etcd; `cluster resume` finishes it, `cluster abort` rolls it back".into())
}
