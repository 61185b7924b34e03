//! The metastore's error type, [`MetaError`], and how openraft's errors map onto it.

use openraft::BasicNode;
use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RaftError};

use crate::config::ConfigError;
use crate::keys::CodecError;
use crate::membership::MembershipError;
use crate::types::{Expect, NodeId};

/// Everything a metastore call can fail with.
///
/// Only [`MetaError::NotLeader`] and a membership change refused because another is in
/// progress are worth retrying as-is (see [`MetaError::is_retryable`]);
/// a [`MetaError::VersionMismatch`] asks the caller to re-read and decide again.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The CAS condition did not hold; nothing was written. `actual` is `None` when the key is
    /// absent.
    #[error("version mismatch on key {key:?}: expected {expected:?}, actual {actual:?}")]
    VersionMismatch {
        key: String,
        expected: Expect,
        actual: Option<u64>,
    },
    /// The value is larger than `MetaStoreConfig::max_value_size`; nothing was proposed.
    #[error("value of key {key:?} is {len} bytes, above the maximum of {max} bytes")]
    ValueTooLarge { key: String, len: usize, max: usize },
    /// The key is empty, too long, or (for counters) holds something that is not a counter.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// This node is not the leader (future: forward/redirect).
    #[error("this metastore node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// A watch asked for history that is no longer kept.
    #[error("revision {requested} is compacted; the oldest kept revision is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    /// A request another node rejected as malformed (an invalid key, a bad page size).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The lease does not exist: never granted, revoked, or expired. Nothing was written.
    #[error("lease {id} not found (never granted, revoked or expired)")]
    LeaseNotFound { id: u64 },
    /// A lease TTL outside the configured range; nothing was proposed.
    #[error("lease TTL {ttl_ms} ms is outside the allowed {min_ms}..={max_ms} ms")]
    InvalidLeaseTtl {
        ttl_ms: u64,
        min_ms: u64,
        max_ms: u64,
    },
    /// A compaction asked for a revision that does not exist yet; nothing changed.
    #[error("revision {requested} is in the future; the current revision is {current}")]
    FutureRevision { requested: u64, current: u64 },
    /// A write was sent but its answer was lost (the node failed meanwhile): it may or may not
    /// have been applied. Re-read, or retry with a condition that makes a repeat harmless.
    #[error("write outcome unknown: {reason}")]
    OutcomeUnknown { reason: String },
    /// RocksDB or codec failure.
    #[error("metastore storage error: {0}")]
    Storage(String),
    /// An openraft fatal or API error, rendered.
    #[error("raft error: {0}")]
    Raft(String),
    /// The store has been shut down.
    #[error("metastore is shut down")]
    Closed,
    /// The configuration failed validation.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// This node is not (or no longer, or not yet) a member of the metastore cluster, so it
    /// serves no reads or writes: ask another node.
    #[error("metastore node {node_id} is not a member of the cluster")]
    NotMember { node_id: NodeId },
    /// A membership change was refused (see [`MembershipError`]).
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

impl MetaError {
    /// Adds how long was waited to a timeout-like error.
    pub(crate) fn with_context(self, waited: std::time::Duration) -> Self {
        match self {
            MetaError::NotLeader { leader: None } => {
                MetaError::Raft(format!("no leader known after waiting {waited:?}"))
            }
            other => other,
        }
    }

    /// Whether retrying the same call (possibly against the new leader) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MetaError::NotLeader { .. } | MetaError::Membership(MembershipError::InProgress { .. })
        )
    }
}

impl From<rocksdb::Error> for MetaError {
    fn from(e: rocksdb::Error) -> Self {
        MetaError::Storage(e.to_string())
    }
}

impl From<CodecError> for MetaError {
    fn from(e: CodecError) -> Self {
        MetaError::Storage(e.to_string())
    }
}

impl From<Fatal<NodeId>> for MetaError {
    fn from(e: Fatal<NodeId>) -> Self {
        match e {
            Fatal::Stopped => MetaError::Closed,
            other => MetaError::Raft(other.to_string()),
        }
    }
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>> for MetaError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => MetaError::NotLeader {
                leader: f.leader_id,
            },
            RaftError::APIError(other) => MetaError::Raft(other.to_string()),
            RaftError::Fatal(f) => f.into(),
        }
    }
}

impl From<RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>> for MetaError {
    fn from(e: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>) -> Self {
        match e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => MetaError::NotLeader {
                leader: f.leader_id,
            },
            // The leader could not reach a quorum: leadership is in doubt, the caller should
            // retry (against whichever node wins).
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)) => {
                MetaError::NotLeader { leader: None }
            }
            RaftError::Fatal(f) => f.into(),
        }
    }
}

impl From<RaftError<NodeId, InitializeError<NodeId, BasicNode>>> for MetaError {
    fn from(e: RaftError<NodeId, InitializeError<NodeId, BasicNode>>) -> Self {
        match e {
            RaftError::APIError(api) => MetaError::Raft(api.to_string()),
            RaftError::Fatal(f) => f.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only "not leader" is retryable: a CAS mismatch or a closed store never is.
    #[test]
    fn only_not_leader_is_retryable() {
        assert!(MetaError::NotLeader { leader: Some(2) }.is_retryable());
        assert!(!MetaError::Closed.is_retryable());
        assert!(
            !MetaError::VersionMismatch {
                key: "k".into(),
                expected: Expect::Absent,
                actual: Some(1)
            }
            .is_retryable()
        );
        assert!(!MetaError::Storage("x".into()).is_retryable());
    }
}
