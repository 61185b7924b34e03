//! The raft network over QUIC: each openraft RPC is one [`NodeRequest`] on a short-lived
//! stream to the target node's RPC server (see [`crate::rpc`] and [`crate::node_server`]).
//!
//! A peer that cannot be reached yields `Unreachable`, so openraft backs off and retries; an
//! error the peer's raft returned comes back as `RemoteError`.

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::rpc::{NodeRequest, NodeResponse, PeerClient, RpcError};
use crate::types::{NodeId, TypeConfig};

/// Creates [`QuicNetwork`] clients that share one connection cache.
#[derive(Clone)]
pub struct QuicNetworkFactory {
    peers: PeerClient,
}

impl QuicNetworkFactory {
    pub fn new(peers: PeerClient) -> Self {
        Self { peers }
    }
}

/// Raft RPCs to one target node.
pub struct QuicNetwork {
    peers: PeerClient,
    target: NodeId,
    addr: String,
}

/// The peer answered with a response of another RPC's type.
#[derive(Debug, thiserror::Error)]
#[error("node {target} answered {what} with a response of another kind")]
struct MismatchedResponse {
    target: NodeId,
    what: &'static str,
}

impl RaftNetworkFactory<TypeConfig> for QuicNetworkFactory {
    type Network = QuicNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> QuicNetwork {
        QuicNetwork {
            peers: self.peers.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl QuicNetwork {
    async fn call<E: std::error::Error>(
        &self,
        req: NodeRequest,
        option: &RPCOption,
    ) -> Result<NodeResponse, RPCError<NodeId, BasicNode, E>> {
        self.peers
            .call(&self.addr, &req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                RpcError::Unreachable { .. } | RpcError::NotSent { .. } => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                RpcError::Malformed { .. } => RPCError::Network(NetworkError::new(&e)),
            })
    }

    fn mismatch<E: std::error::Error>(&self, what: &'static str) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&MismatchedResponse {
            target: self.target,
            what,
        }))
    }
}

impl RaftNetwork<TypeConfig> for QuicNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(NodeRequest::AppendEntries(rpc), &option).await? {
            NodeResponse::AppendEntries(Ok(r)) => Ok(r),
            NodeResponse::AppendEntries(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.mismatch("AppendEntries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(NodeRequest::InstallSnapshot(rpc), &option)
            .await?
        {
            NodeResponse::InstallSnapshot(Ok(r)) => Ok(r),
            NodeResponse::InstallSnapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.mismatch("InstallSnapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(NodeRequest::Vote(rpc), &option).await? {
            NodeResponse::Vote(Ok(r)) => Ok(r),
            NodeResponse::Vote(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.mismatch("Vote")),
        }
    }
}
