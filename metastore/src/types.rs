//! The raft type configuration and the commands replicated through the log.

use std::io::Cursor;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Raft node id of a metastore voter.
pub type NodeId = u64;

/// The node id the standalone (one-voter) metastore runs as.
pub const STANDALONE_NODE_ID: NodeId = 1;

openraft::declare_raft_types!(
    /// openraft type configuration of the metastore group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Condition for a write (compare-and-set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// Unconditional.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist at exactly this version (so `Version(0)` never holds).
    Version(u64),
}

impl Expect {
    /// Maps the wire form (`optional uint64 expected_version`: absent = unconditional, 0 = must
    /// not exist, n = must be at version n) onto an [`Expect`].
    pub fn from_wire(expected_version: Option<u64>) -> Expect {
        match expected_version {
            None => Expect::Any,
            Some(0) => Expect::Absent,
            Some(v) => Expect::Version(v),
        }
    }

    /// The wire form of this condition; inverse of [`Expect::from_wire`] (except `Version(0)`,
    /// which has no wire form and maps to "must not exist").
    pub fn to_wire(self) -> Option<u64> {
        match self {
            Expect::Any => None,
            Expect::Absent => Some(0),
            Expect::Version(v) => Some(v),
        }
    }

    /// Whether the condition holds for a key currently at `actual` (`None` = absent).
    pub fn holds(self, actual: Option<u64>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => actual.is_none(),
            Expect::Version(v) => actual == Some(v),
        }
    }
}

/// Result of a successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The global revision this write created.
    pub revision: u64,
    /// The key's version after the write (1 on creation).
    pub version: u64,
}

/// A mutating command, as replicated in the raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Sets `key` to `value` if `expect` holds, bound to `lease` (0: to none; a key put
    /// without a lease leaves the lease it had).
    Put {
        key: String,
        #[serde(with = "hex_bytes")]
        value: Bytes,
        expect: Expect,
        #[serde(default, skip_serializing_if = "is_zero")]
        lease: LeaseId,
    },
    /// Removes `key` if `expect` holds.
    Delete { key: String, expect: Expect },
    /// A multi-key transaction, as etcd's Txn: if every comparison holds, the `success`
    /// operations are applied, else the `failure` ones; all in this one log entry, atomically.
    Txn(Txn),
    /// Creates a lease with a time-to-live; the state machine assigns its id.
    LeaseGrant { ttl_ms: u64 },
    /// Ends a lease and deletes every key bound to it: a client's revoke, or the leader's
    /// decision that it expired (`expired`, for the record and the metrics).
    LeaseRevoke {
        id: LeaseId,
        #[serde(default)]
        expired: bool,
    },
    /// Drops the change history below `revision` (watches from older revisions then fail with
    /// "compacted").
    Compact { revision: u64 },
    /// Several commands in one log entry, applied in order, each exactly as if it had an entry
    /// of its own (group commit; built only by the leader, never nested).
    Batch { commands: Vec<Command> },
}

impl Command {
    /// The key and value bytes this command carries (what a batch is sized by).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Command::Put { key, value, .. } => key.len() + value.len(),
            Command::Delete { key, .. } => key.len(),
            Command::Txn(txn) => {
                let compares = txn.compares.iter().map(|c| match c {
                    Compare::Version { key, .. } => key.len(),
                    Compare::Value { key, value } => key.len() + value.len(),
                    Compare::LeaderTimeAtMost { .. } => 0,
                });
                let ops = txn.success.iter().chain(&txn.failure).map(|op| match op {
                    TxnOp::Put { key, value, .. } => key.len() + value.len(),
                    TxnOp::Delete { key } => key.len(),
                });
                compares.chain(ops).sum()
            }
            Command::Batch { commands } => commands.iter().map(Command::payload_bytes).sum(),
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } | Command::Compact { .. } => 0,
        }
    }

    /// Stamps every [`Compare::LeaderTimeAtMost`] in this command with the leader's clock
    /// (`now_ms`); done by the leader just before it proposes the command.
    pub fn stamp_leader_time(&mut self, now_ms: u64) {
        match self {
            Command::Txn(txn) => {
                for compare in &mut txn.compares {
                    if let Compare::LeaderTimeAtMost { leader_ms, .. } = compare {
                        *leader_ms = now_ms;
                    }
                }
            }
            Command::Batch { commands } => {
                for command in commands {
                    command.stamp_leader_time(now_ms);
                }
            }
            Command::Put { .. }
            | Command::Delete { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::Compact { .. } => {}
        }
    }
}

/// Id of a lease; 0 means "no lease".
pub type LeaseId = u64;

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A multi-key transaction (see [`Command::Txn`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One comparison of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// The key's version satisfies `expect` (`Absent`: the key does not exist).
    Version { key: String, expect: Expect },
    /// The key exists and its value equals `value`.
    Value {
        key: String,
        #[serde(with = "hex_bytes")]
        value: Bytes,
    },
    /// The leader's clock, read as it proposes the write, is at most `deadline_ms` (ms since
    /// the Unix epoch). The leader fills `leader_ms` in ([`Command::stamp_leader_time`]),
    /// over whatever the proposer put there; unstamped (0) it never holds. Apply compares
    /// the stamped value, so every replica decides alike.
    LeaderTimeAtMost {
        deadline_ms: u64,
        #[serde(default)]
        leader_ms: u64,
    },
}

impl Compare {
    /// The key this comparison reads, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Compare::Version { key, .. } | Compare::Value { key, .. } => Some(key),
            Compare::LeaderTimeAtMost { .. } => None,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        key: String,
        #[serde(with = "hex_bytes")]
        value: Bytes,
        /// The lease to bind the key to (0: none).
        #[serde(default, skip_serializing_if = "is_zero")]
        lease: LeaseId,
    },
    Delete {
        key: String,
    },
}

impl TxnOp {
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// What one transaction operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    Written(Written),
    Deleted { revision: u64 },
    Absent,
}

/// The outcome of a transaction: which branch ran, and each of its operations' results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub results: Vec<TxnOpResult>,
}

/// What applying one log entry produced; one per entry, in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A blank or membership entry: nothing to report.
    None,
    /// A put succeeded.
    Written(Written),
    /// A delete removed the key, creating `revision`.
    Deleted { revision: u64 },
    /// A delete found nothing to remove (and its condition allowed that); nothing changed.
    Absent,
    /// The CAS condition did not hold; nothing changed. `actual` is the key's version.
    Mismatch { actual: Option<u64> },
    /// A transaction ran.
    Txn(TxnResponse),
    /// A [`Command::Batch`] ran: one result per command, in order.
    Batch(Vec<CommandResult>),
    /// A lease was created.
    LeaseGranted { id: LeaseId, ttl_ms: u64 },
    /// A lease ended; its keys were deleted (one revision each, in key order).
    LeaseRevoked { id: LeaseId, deleted_keys: u64 },
    /// The command names a lease that does not exist (never granted, revoked or expired);
    /// nothing changed.
    LeaseNotFound { id: LeaseId },
    /// History below `oldest` is gone (now, or already before this command).
    Compacted { oldest: u64 },
    /// A compaction asked for a revision above the current one; nothing changed.
    CompactBeyondRevision { requested: u64, current: u64 },
}

/// serde for `Bytes` as a lowercase hex string: compact enough in the JSON log (2x, against
/// ~3.5x for serde's default array of numbers) without another dependency.
mod hex_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub(super) fn serialize<S: Serializer>(v: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(v.len() * 2);
        for b in v.iter() {
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 0xF)] as char);
        }
        s.serialize_str(&out)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        let raw = s.as_bytes();
        if raw.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd-length hex string"));
        }
        let nibble = |c: u8| -> Result<u8, D::Error> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(serde::de::Error::custom(format!(
                    "invalid hex digit {:?}",
                    c as char
                ))),
            }
        };
        let mut out = Vec::with_capacity(raw.len() / 2);
        for pair in raw.chunks_exact(2) {
            out.push((nibble(pair[0])? << 4) | nibble(pair[1])?);
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command survives the JSON log encoding unchanged, including arbitrary value bytes.
    #[test]
    fn command_json_round_trips() -> Result<(), serde_json::Error> {
        let cmd = Command::Put {
            key: "a/b".into(),
            value: Bytes::from_static(&[0, 1, 0x7f, 0x80, 0xff]),
            expect: Expect::Version(3),
            lease: 0,
        };
        let json = serde_json::to_string(&cmd)?;
        assert!(json.contains("\"00017f80ff\""), "{json}");
        assert_eq!(serde_json::from_str::<Command>(&json)?, cmd);
        // Log entries written before leases existed (no `lease` field) still decode.
        let old = r#"{"op":"put","key":"k","value":"00","expect":"Any"}"#;
        assert!(matches!(
            serde_json::from_str::<Command>(old)?,
            Command::Put { lease: 0, .. }
        ));
        Ok(())
    }

    /// Malformed hex in the log is a decode error, not a panic.
    #[test]
    fn malformed_hex_is_rejected() {
        let bad = r#"{"op":"put","key":"k","value":"0g","expect":"Any"}"#;
        assert!(serde_json::from_str::<Command>(bad).is_err());
        let odd = r#"{"op":"put","key":"k","value":"abc","expect":"Any"}"#;
        assert!(serde_json::from_str::<Command>(odd).is_err());
    }

    /// The wire mapping of conditions round-trips and `holds` follows the documented rules.
    #[test]
    fn expect_wire_mapping_and_holds() {
        for e in [Expect::Any, Expect::Absent, Expect::Version(7)] {
            assert_eq!(Expect::from_wire(e.to_wire()), e);
        }
        assert!(Expect::Absent.holds(None));
        assert!(!Expect::Absent.holds(Some(1)));
        assert!(Expect::Version(2).holds(Some(2)));
        assert!(!Expect::Version(2).holds(None));
        assert!(!Expect::Version(0).holds(None));
    }
}
