//! Prototype (b): a primary ships its shard log to synchronous standbys; etcd decides who is
//! primary and who may become it. No election or quorum code here: etcd's lease and
//! compare-and-swap do both.
//!
//! - `<prefix>/primary` holds the primary's id under its lease. The key's create revision is
//!   the primary's **epoch**, carried by every shipped batch. A standby persists the highest
//!   epoch it accepted and refuses batches of an older one, so a deposed primary (paused,
//!   partitioned, its lease gone) cannot have a write acknowledged.
//! - `<prefix>/isr` lists the in-sync nodes. A write is acknowledged once it is on the disk of
//!   every in-sync node. The primary drops a standby that stops acking (a CAS that also checks
//!   it is still primary) and adds it back once caught up; at least two must stay in sync,
//!   else writes wait. Only an in-sync node may campaign (a CAS on the list's revision), so the
//!   new primary holds every acknowledged write.
//! - A standby that campaigns first stops accepting the old epoch's batches: whatever the old
//!   primary had acknowledged is then on its disk.
//! - A node that becomes primary (or meets a new one) cuts its log back to where it agrees with
//!   the primary's (entries name their epoch); what it cut was never acknowledged.

mod log;
mod peer;
mod primary;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::app;
use crate::wire::{self, ClientReply, ClientRequest};

pub struct NodeSettings {
    pub id: u64,
    pub peers: Vec<String>,
    pub dir: PathBuf,
    pub etcd: String,
    pub prefix: String,
    pub lease_ttl_s: i64,
    pub standby_timeout_ms: u64,
}

/// Fewest nodes that must hold a write before it is acknowledged (the primary included).
const IN_SYNC_MIN: usize = 2;

/// How often a standby looks for a primary in etcd.
const POLL: Duration = Duration::from_millis(100);

/// What this node is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Following; the primary etcd names, if any.
    Standby {
        primary: Option<u64>,
    },
    /// Between "no primary" and the campaign's answer: the old epoch's batches are refused.
    Campaigning,
    Primary {
        epoch: u64,
    },
}

pub struct Node {
    pub id: u64,
    pub settings: NodeSettings,
    pub log: log::ShardLog,
    pub role: Mutex<Role>,
}

impl Node {
    pub fn role(&self) -> Role {
        *self.role.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_role(&self, role: Role) {
        eprintln!("{} role {role:?}", app::now_ms());
        *self.role.lock().unwrap_or_else(|p| p.into_inner()) = role;
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.settings.prefix)
    }
}

pub struct Proposal {
    pub request: ClientRequest,
    pub reply: oneshot::Sender<ClientReply>,
}

pub async fn run(settings: NodeSettings) -> anyhow::Result<()> {
    let log = log::ShardLog::open(&settings.dir)?;
    let peer_addr = settings.peers[settings.id as usize].clone();
    let node = Arc::new(Node {
        id: settings.id,
        settings,
        log,
        role: Mutex::new(Role::Standby { primary: None }),
    });
    let mut etcd = Client::connect([node.settings.etcd.as_str()], None).await?;
    // The first node up lists every node as in sync (all logs are empty then).
    let all: Vec<String> = (0..node.settings.peers.len()).map(|i| i.to_string()).collect();
    let isr = node.key("isr");
    let create = Txn::new()
        .when([Compare::create_revision(isr.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(isr, all.join(","), None)]);
    etcd.txn(create).await?;
    tokio::spawn(peer::serve(TcpListener::bind(&peer_addr).await?, node.clone()));
    let (proposals, queue) = mpsc::channel(65_536);
    let clients = TcpListener::bind(crate::client_addr(&peer_addr)).await?;
    tokio::spawn(serve_clients(clients, node.clone(), proposals));
    let mut queue = Some(queue);
    loop {
        let Some(epoch_and_lease) = campaign(&node, &mut etcd).await? else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let (epoch, lease) = epoch_and_lease;
        node.set_role(Role::Primary { epoch });
        let returned =
            primary::lead(node.clone(), etcd.clone(), epoch, lease, queue.take().expect("queue"))
                .await;
        queue = Some(returned);
        node.set_role(Role::Standby { primary: None });
    }
}

/// One look at etcd as a standby: `Some((epoch, lease))` when this node became primary.
async fn campaign(node: &Node, etcd: &mut Client) -> anyhow::Result<Option<(u64, i64)>> {
    let primary_key = node.key("primary");
    let Ok(found) = etcd.get(primary_key.clone(), None).await else {
        return Ok(None);
    };
    if let Some(kv) = found.kvs().first() {
        let primary = kv.value_str().ok().and_then(|v| v.parse().ok());
        if let Role::Standby { .. } = node.role() {
            *node.role.lock().unwrap_or_else(|p| p.into_inner()) = Role::Standby { primary };
        }
        return Ok(None);
    }
    let isr_key = node.key("isr");
    let Ok(isr) = etcd.get(isr_key.clone(), None).await else {
        return Ok(None);
    };
    let Some(kv) = isr.kvs().first() else { return Ok(None) };
    let in_sync: Vec<u64> = kv.value_str()?.split(',').filter_map(|v| v.parse().ok()).collect();
    if !in_sync.contains(&node.id) {
        return Ok(None);
    }
    let isr_revision = kv.mod_revision();
    // The primary that was (its lease lapsed) leaves the in-sync list in the same txn, so the
    // first writes of the new epoch do not wait for a node that is likely dead; it comes back
    // once caught up.
    let previous = match node.role() {
        Role::Standby { primary } => primary.filter(|&p| p != node.id),
        _ => None,
    };
    let mut next_in_sync = in_sync.clone();
    next_in_sync.retain(|&n| Some(n) != previous);
    if next_in_sync.len() < IN_SYNC_MIN {
        next_in_sync = in_sync.clone();
    }
    let next_in_sync: Vec<String> = next_in_sync.iter().map(u64::to_string).collect();
    // From here no batch of the old epoch is taken: what the old primary had acknowledged is
    // on this disk already.
    node.set_role(Role::Campaigning);
    node.log.fence();
    let won = async {
        let lease = etcd.lease_grant(node.settings.lease_ttl_s, None).await?.id();
        let txn = Txn::new()
            .when([
                Compare::create_revision(primary_key.clone(), CompareOp::Equal, 0),
                Compare::mod_revision(isr_key.clone(), CompareOp::Equal, isr_revision),
            ])
            .and_then([
                TxnOp::put(
                    primary_key,
                    node.id.to_string(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::put(node.key("isr"), next_in_sync.join(","), None),
            ]);
        let answer = etcd.txn(txn).await?;
        let epoch = answer.header().map_or(0, |h| h.revision()) as u64;
        anyhow::Ok(answer.succeeded().then_some((epoch, lease)))
    }
    .await;
    match won {
        Ok(Some(won)) => Ok(Some(won)),
        _ => {
            node.log.unfence();
            node.set_role(Role::Standby { primary: None });
            Ok(None)
        }
    }
}

async fn serve_clients(listener: TcpListener, node: Arc<Node>, proposals: mpsc::Sender<Proposal>) {
    while let Ok((stream, _)) = listener.accept().await {
        let node = node.clone();
        let proposals = proposals.clone();
        tokio::spawn(wire::serve(stream, move |request: ClientRequest| {
            let node = node.clone();
            let proposals = proposals.clone();
            async move { answer(&node, request, &proposals).await }
        }));
    }
}

async fn answer(
    node: &Node,
    request: ClientRequest,
    proposals: &mpsc::Sender<Proposal>,
) -> ClientReply {
    let role = node.role();
    if let ClientRequest::Audit = request {
        let (sold, digest, applied) = node.log.audit();
        return ClientReply::Audit {
            sold,
            digest,
            applied,
            leading: matches!(role, Role::Primary { .. }),
        };
    }
    match role {
        Role::Primary { .. } => {}
        Role::Standby { primary } => return ClientReply::NotLeader { leader: primary },
        Role::Campaigning => return ClientReply::NotLeader { leader: None },
    }
    let (reply, answer) = oneshot::channel();
    if proposals.send(Proposal { request, reply }).await.is_err() {
        return ClientReply::Failed { why: "node stopping".into() };
    }
    answer.await.unwrap_or(ClientReply::Failed { why: "proposal dropped".into() })
}
