//! Managed ledgers: `/managed-ledgers/<tenant>/<namespace>/<topic>` → [`ManagedLedgerRecord`]
//! (JSON), the ordered ledgers that make up a topic's log. Written by the topic's owner only,
//! by compare-and-set on the version it last wrote.

use serde::{Deserialize, Serialize};
use strata_proto::{LedgerId, NamespaceName, TopicName};

use super::{JsonRecord, Listing, Schema};

/// Prefix of every managed-ledger key.
pub const PREFIX: &str = "/managed-ledgers/";

/// One ledger of a managed ledger. `entries` is known once it is closed (`None`: still open
/// for writing, or left open by a crashed owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerInfo {
    pub id: LedgerId,
    pub entries: Option<u64>,
    pub size_bytes: u64,
    /// When the ledger was closed (retention counts age from there); absent while open and
    /// in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_ms: Option<u64>,
}

/// The ordered ledgers that make up a topic's log; the last one is the one written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedLedgerRecord {
    pub ledgers: Vec<LedgerInfo>,
}

impl JsonRecord for ManagedLedgerRecord {
    const FORMAT_VERSION: u32 = 1;
}

/// The managed-ledgers table, keyed by topic; list those of a namespace.
#[derive(Debug)]
pub struct ManagedLedgers;

impl Schema for ManagedLedgers {
    type Key = TopicName;
    type Record = ManagedLedgerRecord;
    const NAME: &'static str = "managed ledger";

    fn key(topic: &TopicName) -> String {
        format!("{PREFIX}{}", topic.path())
    }
}

impl Listing for ManagedLedgers {
    type Parent = NamespaceName;

    fn prefix(ns: &NamespaceName) -> String {
        format!("{PREFIX}{ns}/")
    }

    fn child(ns: &NamespaceName, rest: &str) -> Result<TopicName, String> {
        super::topics::topic_under(ns, rest)
    }
}
