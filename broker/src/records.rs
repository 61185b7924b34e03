//! Records the broker keeps in the metastore. Each carries a `format_version` so a later
//! release can migrate it.

use serde::{Deserialize, Serialize};
use strata_proto::LedgerId;

pub const FORMAT_VERSION: u32 = 1;

/// Policies of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamespacePolicies {
    pub format_version: u32,
    /// Create a topic on its first producer or consumer instead of refusing it.
    pub auto_create_topics: bool,
}

impl Default for NamespacePolicies {
    fn default() -> Self {
        Self {
            format_version: FORMAT_VERSION,
            auto_create_topics: true,
        }
    }
}

/// A topic's existence record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub format_version: u32,
    pub created_ms: u64,
}

/// One ledger of a managed ledger. `entries`/`size_bytes` are known once it is closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerInfo {
    pub id: LedgerId,
    pub entries: Option<u64>,
    pub size_bytes: u64,
}

/// The ordered ledgers that make up a topic's log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedLedgerRecord {
    pub format_version: u32,
    pub ledgers: Vec<LedgerInfo>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
