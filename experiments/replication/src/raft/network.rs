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

impl RaftNetwork<Tc> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Tc>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self
            .link
            .call(&PeerRequest::Append(rpc), option.hard_ttl())
            .await
            .map_err(unreachable)?
        {
            PeerReply::Append(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(wrong_reply()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Tc>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .link
            .call(&PeerRequest::Snapshot(rpc), option.hard_ttl())
            .await
            .map_err(unreachable)?
        {
            PeerReply::Snapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(wrong_reply()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self
            .link
            .call(&PeerRequest::Vote(rpc), option.hard_ttl())
            .await
            .map_err(unreachable)?
        {
            PeerReply::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(wrong_reply()),
        }
    }
}
