//! The primary: decides groups of requests, appends them to its log, ships them to every other
//! node, and acknowledges a group once its entry is on the disk of every in-sync node. Keeps
//! its etcd lease alive and the in-sync list current; steps down when the lease lapses or a
//! standby refuses its epoch.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::peer::{ToPrimary, ToStandby};
use super::{Node, Proposal, IN_SYNC_MIN};
use crate::app;
use crate::wire::{self, ClientReply, ClientRequest};

/// Entries per shipped frame, at most.
const SHIP_ENTRIES_MAX: usize = 64;
/// The most requests decided into one entry.
const GROUP_REQUESTS_MAX: usize = 4096;

struct Waiting {
    index: u64,
    since: Instant,
    replies: Vec<(u32, oneshot::Sender<ClientReply>)>,
}

struct Lead {
    node: Arc<Node>,
    epoch: u64,
    /// Each other node's highest acknowledged index in this epoch.
    acked: Mutex<HashMap<u64, u64>>,
    /// The in-sync list (this node included) and its etcd revision.
    in_sync: Mutex<(Vec<u64>, i64)>,
    synced: AtomicU64,
    last_index: watch::Sender<u64>,
    waiting: Mutex<VecDeque<Waiting>>,
    changed: Notify,
    deposed: AtomicBool,
    deposed_signal: Notify,
}

impl Lead {
    fn depose(&self, why: &str) {
        if !self.deposed.swap(true, Ordering::AcqRel) {
            eprintln!("{} deposed from epoch {}: {why}", app::now_ms(), self.epoch);
            self.deposed_signal.notify_waiters();
            self.changed.notify_one();
        }
    }

    fn is_deposed(&self) -> bool {
        self.deposed.load(Ordering::Acquire)
    }
}

/// Leads `epoch` until deposed; returns the proposal queue for the next term.
pub async fn lead(
    node: Arc<Node>,
    mut etcd: Client,
    epoch: u64,
    lease: i64,
    mut queue: mpsc::Receiver<Proposal>,
) -> mpsc::Receiver<Proposal> {
    node.log.lead(epoch);
    let _ = node.log.disk.sync().await;
    let isr_key = node.key("isr");
    let in_sync = match etcd.get(isr_key, None).await {
        Ok(found) => found.kvs().first().map(|kv| {
            let list =
                kv.value_str().unwrap_or("").split(',').filter_map(|v| v.parse().ok()).collect();
            (list, kv.mod_revision())
        }),
        Err(_) => None,
    };
    let Some(in_sync) = in_sync else { return queue };
    let last = node.log.lock().last_index;
    let lead = Arc::new(Lead {
        node: node.clone(),
        epoch,
        acked: Mutex::new(HashMap::new()),
        in_sync: Mutex::new(in_sync),
        synced: AtomicU64::new(last),
        last_index: watch::channel(last).0,
        waiting: Mutex::new(VecDeque::new()),
        changed: Notify::new(),
        deposed: AtomicBool::new(false),
        deposed_signal: Notify::new(),
    });
    eprintln!(
        "{} leading epoch {epoch} from index {last}, in sync {:?}",
        app::now_ms(),
        lead.in_sync.lock().unwrap().0
    );
    let peers = node.settings.peers.len() as u64;
    for peer in (0..peers).filter(|&p| p != node.id) {
        tokio::spawn(ship(lead.clone(), peer));
    }
    tokio::spawn(keep_lease(lead.clone(), etcd.clone(), lease));
    let committer = tokio::spawn(commit(lead.clone(), etcd.clone()));
    while !lead.is_deposed() {
        tokio::select! {
            first = queue.recv() => match first {
                Some(first) => propose(&lead, first, &mut queue),
                None => break,
            },
            _ = lead.deposed_signal.notified() => break,
        }
    }
    lead.depose("stopped leading");
    node.set_role(super::Role::Standby { primary: None });
    let _ = committer.await;
    // Lets another node campaign at once rather than after the lease's time (when etcd can be
    // reached at all: a partitioned primary cannot, and waits for nothing).
    let _ = tokio::time::timeout(Duration::from_millis(500), etcd.lease_revoke(lease)).await;
    queue
}

fn propose(lead: &Arc<Lead>, first: Proposal, queue: &mut mpsc::Receiver<Proposal>) {
    let mut group = vec![first];
    while group.len() < GROUP_REQUESTS_MAX {
        match queue.try_recv() {
            Ok(p) => group.push(p),
            Err(_) => break,
        }
    }
    let requests: Vec<&ClientRequest> = group.iter().map(|p| &p.request).collect();
    let Ok((index, sold)) = lead.node.log.decide(lead.epoch, &requests) else {
        lead.depose("a newer primary started this node");
        for p in group {
            let _ = p.reply.send(ClientReply::Failed { why: "primary deposed".into() });
        }
        return;
    };
    let replies = sold.into_iter().zip(group.into_iter().map(|p| p.reply)).collect();
    // A group that changed nothing (retries answered from memory) waits for what is before it.
    let index = match index {
        Some(index) => {
            lead.last_index.send_replace(index);
            let synced_lead = lead.clone();
            lead.node.log.disk.after_sync(move |synced| {
                if synced.is_ok() {
                    synced_lead.synced.fetch_max(index, Ordering::AcqRel);
                    synced_lead.changed.notify_one();
                }
            });
            index
        }
        None => *lead.last_index.borrow(),
    };
    lead.waiting.lock().unwrap().push_back(Waiting { index, since: Instant::now(), replies });
    lead.changed.notify_one();
}

/// Answers groups once on every in-sync disk; manages the in-sync list. Fails what waits when
/// deposed (it may or may not commit under the next primary: clients retry with the same ids).
async fn commit(lead: Arc<Lead>, mut etcd: Client) {
    let timeout = Duration::from_millis(lead.node.settings.standby_timeout_ms);
    let mut reported = Instant::now();
    loop {
        if reported.elapsed() > Duration::from_secs(1) {
            reported = Instant::now();
            eprintln!(
                "{} status: last {} synced {} committed {} acked {:?} in sync {:?} waiting {}",
                app::now_ms(),
                *lead.last_index.borrow(),
                lead.synced.load(Ordering::Acquire),
                committed_index(&lead),
                lead.acked.lock().unwrap(),
                lead.in_sync.lock().unwrap().0,
                lead.waiting.lock().unwrap().len()
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), lead.changed.notified()).await;
        if lead.is_deposed() {
            for w in lead.waiting.lock().unwrap().drain(..) {
                for (_, reply) in w.replies {
                    let _ = reply.send(ClientReply::Failed { why: "primary deposed".into() });
                }
            }
            return;
        }
        let oldest = answer_committed(&lead);
        maintain_in_sync(&lead, &mut etcd, oldest, timeout).await;
    }
}

/// Answers the groups at or below the committed index; returns the oldest still waiting.
fn answer_committed(lead: &Lead) -> Option<(u64, Instant)> {
    let committed = committed_index(lead);
    let mut waiting = lead.waiting.lock().unwrap();
    while waiting.front().is_some_and(|w| w.index <= committed) {
        for (sold, reply) in waiting.pop_front().expect("checked").replies {
            let _ = reply.send(ClientReply::Done { sold });
        }
    }
    waiting.front().map(|w| (w.index, w.since))
}

/// Drops standbys that kept the oldest waiting group past `timeout`; adds back caught-up ones.
async fn maintain_in_sync(
    lead: &Lead,
    etcd: &mut Client,
    oldest: Option<(u64, Instant)>,
    timeout: Duration,
) {
    if let Some((index, since)) = oldest.filter(|(_, since)| since.elapsed() > timeout) {
        let acked = lead.acked.lock().unwrap().clone();
        let (list, _) = lead.in_sync.lock().unwrap().clone();
        let keep: Vec<u64> = list
            .iter()
            .copied()
            .filter(|&n| n == lead.node.id || acked.get(&n).copied().unwrap_or(0) >= index)
            .collect();
        if keep.len() < list.len() && keep.len() >= IN_SYNC_MIN {
            eprintln!(
                "{} dropping from in-sync: waited {:?} for index {index}",
                app::now_ms(),
                since.elapsed()
            );
            change_in_sync(lead, etcd, keep).await;
        }
    }
    let last = *lead.last_index.borrow();
    let (list, _) = lead.in_sync.lock().unwrap().clone();
    let caught_up: Vec<u64> = lead
        .acked
        .lock()
        .unwrap()
        .iter()
        .filter(|&(n, &a)| a >= last && !list.contains(n))
        .map(|(&n, _)| n)
        .collect();
    if !caught_up.is_empty() {
        let mut grown = list.clone();
        grown.extend(caught_up);
        grown.sort_unstable();
        change_in_sync(lead, etcd, grown).await;
    }
}

fn committed_index(lead: &Lead) -> u64 {
    let acked = lead.acked.lock().unwrap();
    let (list, _) = &*lead.in_sync.lock().unwrap();
    list.iter()
        .filter(|&&n| n != lead.node.id)
        .map(|n| acked.get(n).copied().unwrap_or(0))
        .fold(lead.synced.load(Ordering::Acquire), u64::min)
}

/// Stores a new in-sync list, if this node is still primary (etcd checks, in one txn).
async fn change_in_sync(lead: &Lead, etcd: &mut Client, list: Vec<u64>) {
    let revision = lead.in_sync.lock().unwrap().1;
    let value: Vec<String> = list.iter().map(u64::to_string).collect();
    let txn = Txn::new()
        .when([
            Compare::create_revision(lead.node.key("primary"), CompareOp::Equal, lead.epoch as i64),
            Compare::mod_revision(lead.node.key("isr"), CompareOp::Equal, revision),
        ])
        .and_then([TxnOp::put(lead.node.key("isr"), value.join(","), None)]);
    match tokio::time::timeout(Duration::from_secs(1), etcd.txn(txn)).await {
        Ok(Ok(answer)) if answer.succeeded() => {
            let revision = answer.header().map_or(0, |h| h.revision());
            eprintln!("{} in sync now {list:?}", app::now_ms());
            *lead.in_sync.lock().unwrap() = (list, revision);
            lead.changed.notify_one();
        }
        Ok(Ok(_)) => lead.depose("the in-sync list or the primary key changed under this primary"),
        _ => {} // etcd unreachable: the lease watchdog decides.
    }
}

/// Keeps the lease; deposes this primary when it cannot renew within the lease's time.
async fn keep_lease(lead: Arc<Lead>, mut etcd: Client, lease: i64) {
    let ttl = Duration::from_secs(lead.node.settings.lease_ttl_s as u64);
    let mut renewed = Instant::now();
    let mut keeper = None;
    while !lead.is_deposed() {
        tokio::time::sleep(ttl / 4).await;
        if keeper.is_none() {
            keeper = tokio::time::timeout(ttl / 4, etcd.lease_keep_alive(lease))
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let Some((k, stream)) = keeper.as_mut() {
            let renewal = async {
                k.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(ttl / 4, renewal).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => renewed = Instant::now(),
                Ok(Ok(Some(_))) => return lead.depose("the lease expired"),
                _ => keeper = None,
            }
        }
        // Renewals are measured from when they were sent; a margin of a quarter lease.
        if renewed.elapsed() > ttl * 3 / 4 {
            return lead.depose("the lease could not be renewed in time");
        }
    }
}

/// Ships this primary's log to `peer` for as long as it leads, reconnecting after errors.
async fn ship(lead: Arc<Lead>, peer: u64) {
    let addr = lead.node.settings.peers[peer as usize].clone();
    while !lead.is_deposed() {
        let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(&addr)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        if let Err(e) = ship_on(&lead, peer, stream).await {
            if lead.is_deposed() {
                return;
            }
            eprintln!("{} shipping to {peer}: {e}", app::now_ms());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn ship_on(lead: &Arc<Lead>, peer: u64, mut stream: TcpStream) -> anyhow::Result<()> {
    let (epoch, me) = (lead.epoch, lead.node.id);
    let handshake = async {
        wire::write(&mut stream, &ToStandby::Hello { epoch, primary: me }).await?;
        wire::read::<ToPrimary>(&mut stream).await
    };
    let from = match tokio::time::timeout(Duration::from_secs(1), handshake).await?? {
        ToPrimary::Log { boundaries, last_index } => {
            lead.node.log.agreed(&boundaries, last_index) + 1
        }
        ToPrimary::Refused { epoch } => {
            lead.depose(&format!("node {peer} holds epoch {epoch}"));
            return Ok(());
        }
        other => anyhow::bail!("handshake answered {other:?}"),
    };
    wire::write(&mut stream, &ToStandby::Start { epoch, primary: me, from }).await?;
    let (mut reader, mut writer) = stream.into_split();
    let acks = lead.clone();
    let reading = tokio::spawn(async move {
        while let Ok(message) = wire::read::<ToPrimary>(&mut reader).await {
            match message {
                ToPrimary::Ack { index } => {
                    acks.acked.lock().unwrap().insert(peer, index);
                    acks.changed.notify_one();
                }
                ToPrimary::Refused { epoch } => {
                    return acks.depose(&format!("node {peer} refused (epoch {epoch})"))
                }
                ToPrimary::Log { .. } => return,
            }
        }
    });
    let mut next = from;
    let mut appended = lead.last_index.subscribe();
    let shipping = async {
        while !lead.is_deposed() && !reading.is_finished() {
            let entries = lead.node.log.entries(next, SHIP_ENTRIES_MAX);
            if entries.is_empty() {
                let _ = tokio::time::timeout(Duration::from_millis(100), appended.changed()).await;
                continue;
            }
            let count = entries.len() as u64;
            wire::write(&mut writer, &ToStandby::Append { epoch, first_index: next, entries })
                .await?;
            next += count;
        }
        anyhow::Ok(())
    };
    let shipped = shipping.await;
    reading.abort();
    shipped
}
