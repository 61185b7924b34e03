//! What each kind of write answers, read out of the [`CommandResult`] its log entry produced.
//! One place for [`crate::MetaStore`] (in process) and [`crate::MetaClient`] (remote), so both
//! report the same typed errors.

use std::time::Duration;

use crate::MetaError;
use crate::store::Lease;
use crate::types::{CommandResult, Expect, TxnResponse, Written};

impl CommandResult {
    /// A put's answer: the write, or why nothing was written.
    pub(crate) fn into_put(self, key: &str, expect: Expect) -> Result<Written, MetaError> {
        match self {
            CommandResult::Written(w) => Ok(w),
            CommandResult::LeaseNotFound { id } => Err(MetaError::LeaseNotFound { id }),
            CommandResult::Mismatch { actual } => Err(mismatch(key, expect, actual)),
            other => Err(unexpected("put", &other)),
        }
    }

    /// A delete's answer: whether a key was removed.
    pub(crate) fn into_delete(self, key: &str, expect: Expect) -> Result<bool, MetaError> {
        match self {
            CommandResult::Deleted { .. } => Ok(true),
            CommandResult::Absent => Ok(false),
            CommandResult::Mismatch { actual } => Err(mismatch(key, expect, actual)),
            other => Err(unexpected("delete", &other)),
        }
    }

    pub(crate) fn into_txn(self) -> Result<TxnResponse, MetaError> {
        match self {
            CommandResult::Txn(r) => Ok(r),
            CommandResult::LeaseNotFound { id } => Err(MetaError::LeaseNotFound { id }),
            other => Err(unexpected("txn", &other)),
        }
    }

    pub(crate) fn into_lease_grant(self) -> Result<Lease, MetaError> {
        match self {
            CommandResult::LeaseGranted { id, ttl_ms } => Ok(Lease {
                id,
                ttl: Duration::from_millis(ttl_ms),
            }),
            other => Err(unexpected("lease grant", &other)),
        }
    }

    /// A revoke's answer: how many keys went with the lease.
    pub(crate) fn into_lease_revoke(self) -> Result<u64, MetaError> {
        match self {
            CommandResult::LeaseRevoked { deleted_keys, .. } => Ok(deleted_keys),
            CommandResult::LeaseNotFound { id } => Err(MetaError::LeaseNotFound { id }),
            other => Err(unexpected("lease revoke", &other)),
        }
    }

    /// A compaction's answer: the oldest revision kept.
    pub(crate) fn into_compact(self) -> Result<u64, MetaError> {
        match self {
            CommandResult::Compacted { oldest } => Ok(oldest),
            CommandResult::CompactBeyondRevision { requested, current } => {
                Err(MetaError::FutureRevision { requested, current })
            }
            other => Err(unexpected("compact", &other)),
        }
    }
}

fn mismatch(key: &str, expected: Expect, actual: Option<u64>) -> MetaError {
    MetaError::VersionMismatch {
        key: key.to_string(),
        expected,
        actual,
    }
}

fn unexpected(op: &str, result: &CommandResult) -> MetaError {
    MetaError::Raft(format!("{op} produced an unexpected result: {result:?}"))
}
