//! Prototype (a): a shard's log replicated with openraft. The leader decides requests on a
//! shard of its own and proposes the records (one raft entry per group of requests); a write
//! is answered once openraft says the entry is committed (on a majority's disks) and applied.
//! Every node's state machine replays the records. A leader that loses its term drops its
//! deciding shard and, on winning again, copies it from the committed one.

mod network;
mod store;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flashstock_engine::{EncodedLog, Shard};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::app;
use crate::disk::Disk;
use crate::wire::{self, ClientReply, ClientRequest};

/// One raft entry: the records a group of requests produced, in the engine's encoding.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Batch(pub Vec<u8>);

openraft::declare_raft_types!(
    /// The spike's raft types: entries are record batches, the state machine answers nothing.
    pub Tc:
        D = Batch,
        R = (),
);

/// The most requests decided into one entry.
const GROUP_REQUESTS_MAX: usize = 4096;

/// How a raft node is run.
pub struct NodeSettings {
    pub id: u64,
    /// Every node's peer address; a node's client port is its peer port + 1.
    pub peers: Vec<String>,
    pub dir: PathBuf,
    pub election_timeout_ms: u64,
    pub heartbeat_ms: u64,
    /// Entries proposed and not yet answered, at most (0: no bound). Fewer in flight make
    /// each entry hold a bigger group.
    pub proposals_in_flight_max: usize,
}

pub async fn run(settings: NodeSettings) -> anyhow::Result<()> {
    let disk = Disk::open(&settings.dir.join("log"))?;
    let sm = store::StateMachine::open(&settings.dir)?;
    let config = Config {
        heartbeat_interval: settings.heartbeat_ms,
        election_timeout_min: settings.election_timeout_ms,
        election_timeout_max: settings.election_timeout_ms * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(200_000),
        max_payload_entries: 64,
        ..Config::default()
    }
    .validate()?;
    let net = network::Network { peers: Arc::new(settings.peers.clone()) };
    let raft =
        Raft::<Tc>::new(settings.id, Arc::new(config), net, store::LogStore::new(disk), sm.clone())
            .await?;
    if settings.id == 0 && !raft.is_initialized().await? {
        let members: BTreeMap<u64, BasicNode> = (0..settings.peers.len() as u64)
            .map(|i| (i, BasicNode::new(&settings.peers[i as usize])))
            .collect();
        raft.initialize(members).await?;
    }
    tokio::spawn(log_roles(raft.clone()));
    let peer_addr = &settings.peers[settings.id as usize];
    let peers = TcpListener::bind(peer_addr).await?;
    tokio::spawn(network::serve_peers(peers, raft.clone()));
    let (proposals, queue) = mpsc::channel(65_536);
    let in_flight = match settings.proposals_in_flight_max {
        0 => tokio::sync::Semaphore::MAX_PERMITS,
        n => n,
    };
    let in_flight = Arc::new(tokio::sync::Semaphore::new(in_flight));
    tokio::spawn(propose(settings.id, raft.clone(), sm.clone(), queue, in_flight));
    let clients = TcpListener::bind(crate::client_addr(peer_addr)).await?;
    loop {
        let (stream, _) = clients.accept().await?;
        let proposals = proposals.clone();
        let sm = sm.clone();
        let raft = raft.clone();
        tokio::spawn(wire::serve(stream, move |request: ClientRequest| {
            let proposals = proposals.clone();
            let sm = sm.clone();
            let raft = raft.clone();
            async move { answer(request, &proposals, &sm, &raft).await }
        }));
    }
}

/// A proposed group: whom to answer once its entry commits (or fails).
struct Submitted {
    term: u64,
    decided: Vec<(u32, oneshot::Sender<ClientReply>)>,
    failed_term: Arc<AtomicU64>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// Proposes `batch` (in the order of calls) and answers its group when it commits; a failure
/// marks the term so that the deciding shard, holding what never committed, is dropped.
async fn submit(raft: &Raft<Tc>, batch: Batch, submitted: Submitted) {
    let Submitted { term, decided, failed_term, permit } = submitted;
    let why = match raft.client_write_ff(batch).await {
        Ok(committed) => {
            tokio::spawn(async move {
                let _permit = permit;
                let why = match committed.await {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(e.to_string()),
                };
                answer_group(term, decided, &failed_term, why);
            });
            return;
        }
        Err(fatal) => Some(fatal.to_string()),
    };
    answer_group(term, decided, &failed_term, why);
}

fn answer_group(
    term: u64,
    decided: Vec<(u32, oneshot::Sender<ClientReply>)>,
    failed_term: &AtomicU64,
    why: Option<String>,
) {
    if why.is_some() {
        failed_term.store(term, Ordering::Release);
    }
    for (sold, reply) in decided {
        let _ = reply.send(match &why {
            None => ClientReply::Done { sold },
            Some(why) => ClientReply::Failed { why: why.clone() },
        });
    }
}

/// Logs each change of role, term or leader, with the wall clock in ms (failover timing).
async fn log_roles(raft: Raft<Tc>) {
    let mut metrics = raft.metrics();
    let mut last = None;
    while metrics.changed().await.is_ok() {
        let now = {
            let m = metrics.borrow();
            (m.state, m.current_term, m.current_leader)
        };
        if last != Some(now) {
            eprintln!("{} {:?} term {} leader {:?}", app::now_ms(), now.0, now.1, now.2);
            last = Some(now);
        }
    }
}

struct Proposal {
    request: ClientRequest,
    reply: oneshot::Sender<ClientReply>,
}

async fn answer(
    request: ClientRequest,
    proposals: &mpsc::Sender<Proposal>,
    sm: &store::StateMachine,
    raft: &Raft<Tc>,
) -> ClientReply {
    if let ClientRequest::Audit = request {
        let leading = raft.metrics().borrow().state == ServerState::Leader;
        let state = sm.state.lock().unwrap_or_else(|p| p.into_inner());
        let (sold, digest) = app::audit(&state.shard);
        let applied = state.applied.map_or(0, |l| l.index);
        return ClientReply::Audit { sold, digest, applied, leading };
    }
    let (reply, answer) = oneshot::channel();
    if proposals.send(Proposal { request, reply }).await.is_err() {
        return ClientReply::Failed { why: "node stopping".into() };
    }
    answer.await.unwrap_or(ClientReply::Failed { why: "proposal dropped".into() })
}

/// The leader's deciding loop: takes what is queued, decides it on the term's shard, proposes
/// the records as one entry without waiting for the previous one (openraft keeps their order).
async fn propose(
    id: u64,
    raft: Raft<Tc>,
    sm: store::StateMachine,
    mut queue: mpsc::Receiver<Proposal>,
    in_flight: Arc<tokio::sync::Semaphore>,
) {
    let mut leading: Option<(u64, Shard)> = None;
    // The term in which a proposal failed: the deciding shard holds state that never committed.
    let failed_term = Arc::new(AtomicU64::new(0));
    while let Some(first) = queue.recv().await {
        let permit = in_flight.clone().acquire_owned().await.expect("never closed");
        let mut group = vec![first];
        while group.len() < GROUP_REQUESTS_MAX {
            match queue.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let (state, term, leader) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term, m.current_leader)
        };
        if state != ServerState::Leader || failed_term.load(Ordering::Acquire) == term {
            leading = None;
            for p in group {
                let _ =
                    p.reply.send(ClientReply::NotLeader { leader: leader.filter(|&l| l != id) });
            }
            continue;
        }
        if leading.as_ref().map(|l| l.0) != Some(term) {
            let started = std::time::Instant::now();
            // Everything committed before this term is applied once this returns.
            if raft.ensure_linearizable().await.is_err() {
                for p in group {
                    let _ = p.reply.send(ClientReply::NotLeader { leader: None });
                }
                continue;
            }
            let applied_ms = started.elapsed().as_millis();
            let committed = sm.state.lock().unwrap_or_else(|p| p.into_inner());
            leading = Some((term, committed.shard.clone()));
            eprintln!(
                "{} term {term}: leading; committed log applied in {applied_ms} ms, shard copied in {} ms",
                app::now_ms(),
                started.elapsed().as_millis() - applied_ms
            );
        }
        let shard = &mut leading.as_mut().expect("set above").1;
        let mut log = EncodedLog::default();
        let now_ms = app::now_ms();
        let decided: Vec<_> = group
            .into_iter()
            .map(|p| (app::decide(shard, &p.request, now_ms, &mut log), p.reply))
            .collect();
        // A group that changed nothing (retries answered from the deciding shard's memory) is
        // still proposed, empty: its answer must wait until what it repeats has committed.
        let submitted = Submitted { term, decided, failed_term: failed_term.clone(), permit };
        submit(&raft, Batch(log.bytes), submitted).await;
    }
}
