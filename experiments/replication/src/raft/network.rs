//! openraft's RPCs over TCP frames: one connection per target, one call at a time (openraft
//! makes one call at a time per target), reconnected after any error.

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use super::Tc;
use crate::wire;

#[derive(Serialize, Deserialize)]
enum PeerRequest {
    Append(AppendEntriesRequest<Tc>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<Tc>),
}

#[derive(Serialize, Deserialize)]
enum PeerReply {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
}

/// Serves peers' RPCs to the local raft.
pub async fn serve_peers(listener: TcpListener, raft: Raft<Tc>) {
    while let Ok((stream, _)) = listener.accept().await {
        let raft = raft.clone();
        tokio::spawn(wire::serve(stream, move |request: PeerRequest| {
            let raft = raft.clone();
            async move {
                match request {
                    PeerRequest::Append(rpc) => PeerReply::Append(raft.append_entries(rpc).await),
                    PeerRequest::Vote(rpc) => PeerReply::Vote(raft.vote(rpc).await),
                    PeerRequest::Snapshot(rpc) => {
                        PeerReply::Snapshot(raft.install_snapshot(rpc).await)
                    }
                }
            }
        }));
    }
}

pub struct Network {
    pub peers: Arc<Vec<String>>,
}

impl RaftNetworkFactory<Tc> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Connection {
        Connection { target, link: wire::Link::new(self.peers[target as usize].clone()) }
    }
}

pub struct Connection {
    target: u64,
    link: wire::Link,
}

fn unreachable<E: std::error::Error>(e: std::io::Error) -> RPCError<u64, BasicNode, E> {
    if e.kind() == std::io::ErrorKind::TimedOut {
        RPCError::Network(NetworkError::new(&e))
    } else {
        RPCError::Unreachable(Unreachable::new(&e))
    }
}

fn wrong_reply<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other("reply of another kind")))
}

type RemoteResult<R, E> = Result<R, RaftError<u64, E>>;

impl Connection {
    /// One RPC: `pick` takes its answer out of the reply (None: a reply of another kind).
    async fn ask<R, E: std::error::Error>(
        &mut self,
        request: PeerRequest,
        option: RPCOption,
        pick: impl FnOnce(PeerReply) -> Option<RemoteResult<R, E>>,
    ) -> Result<R, RPCError<u64, BasicNode, RaftError<u64, E>>> {
        let reply = self.link.call(&request, option.hard_ttl()).await.map_err(unreachable)?;
        let answer = pick(reply).ok_or_else(wrong_reply)?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<Tc> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Tc>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.ask(PeerRequest::Append(rpc), option, |reply| match reply {
            PeerReply::Append(answer) => Some(answer),
            _ => None,
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Tc>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.ask(PeerRequest::Snapshot(rpc), option, |reply| match reply {
            PeerReply::Snapshot(answer) => Some(answer),
            _ => None,
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.ask(PeerRequest::Vote(rpc), option, |reply| match reply {
            PeerReply::Vote(answer) => Some(answer),
            _ => None,
        })
        .await
    }
}
