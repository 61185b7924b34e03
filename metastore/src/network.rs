//! Raft networking. For now: none.
//!
//! A one-voter group never sends a raft RPC, so [`NoNetworkFactory`] hands openraft clients
//! whose every call fails with `Unreachable` ("multi-node networking is not configured"). The
//! multi-voter issue replaces this file with the QUIC raft transport (ALPN
//! `strata-meta-raft/1`); nothing else in the crate depends on how RPCs travel.

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::types::{NodeId, TypeConfig};

/// Why every RPC of [`NoNetwork`] fails.
#[derive(Debug, thiserror::Error)]
#[error(
    "metastore node {target}: multi-node raft networking is not configured (standalone metastore)"
)]
pub struct NetworkNotConfigured {
    /// The node openraft tried to reach.
    pub target: NodeId,
}

/// Creates [`NoNetwork`] clients.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNetworkFactory;

/// A raft client that reaches nobody.
#[derive(Debug, Clone, Copy)]
pub struct NoNetwork {
    target: NodeId,
}

impl NoNetwork {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&NetworkNotConfigured {
            target: self.target,
        }))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoNetworkFactory {
    type Network = NoNetwork;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> NoNetwork {
        NoNetwork { target }
    }
}

impl RaftNetwork<TypeConfig> for NoNetwork {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::Vote;

    use super::*;

    /// Every RPC of the standalone network fails as Unreachable, naming the missing transport.
    #[tokio::test]
    async fn every_rpc_is_unreachable() {
        let mut client = NoNetworkFactory
            .new_client(2, &BasicNode::new("10.0.0.2:1"))
            .await;
        let option = RPCOption::new(Duration::from_secs(1));
        let res = client
            .vote(VoteRequest::new(Vote::new(1, 1), None), option)
            .await;
        match res {
            Err(RPCError::Unreachable(e)) => {
                assert!(e.to_string().contains("not configured"), "{e}")
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
}
