//! Namespaces: `/namespaces/<tenant>/<namespace>` → [`NamespacePolicies`] (JSON).

use serde::{Deserialize, Serialize};
use strata_proto::NamespaceName;

use super::tenants::TenantName;
use super::{JsonRecord, Listing, Schema};

/// Prefix of every namespace key.
pub const PREFIX: &str = "/namespaces/";

/// Policies of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamespacePolicies {
    /// Create a topic on its first producer or consumer instead of refusing it.
    pub auto_create_topics: bool,
    /// How the namespace's ledgers are replicated; `None`: the broker's default (E3/Qw3/Qa2
    /// on three or more bookies). Left out of the JSON when unset, so records written before
    /// it existed re-encode byte for byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationPolicy>,
    /// Boundaries of the namespace's bundles in the 32-bit topic-hash space (from 0 to
    /// `u32::MAX`); `None`: four equal bundles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundles: Option<Vec<u32>>,
    /// How long and how much consumed data is kept; `None`: a ledger every subscription has
    /// consumed is deleted at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionPolicy>,
    /// How much unconsumed data a topic may hold; `None`: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_quota: Option<BacklogQuota>,
    /// When a topic's ledger is closed and a new one opened; `None`: the broker's defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_rollover: Option<LedgerRolloverPolicy>,
}

/// A limit on a topic's backlog (Pulsar's backlog quota): the bytes from its slowest
/// subscription's position to the end of the log, counted in whole ledgers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacklogQuota {
    pub limit_mb: u64,
    pub policy: BacklogQuotaPolicy,
}

/// What happens to a topic over its backlog quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BacklogQuotaPolicy {
    /// New messages are refused with `BacklogQuotaExceeded` until consumers catch up.
    ProducerException,
    /// The slowest subscriptions skip their oldest ledgers until the backlog fits again.
    ConsumerBacklogEviction,
}

/// When a topic's ledger rolls over to a new one: at whichever limit comes first. Unset
/// fields keep the broker's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LedgerRolloverPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size_mb: Option<u64>,
    /// Age of the ledger being written, checked when a message is appended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_minutes: Option<u64>,
}

/// Consumed data kept after every subscription has acknowledged it (Pulsar's retention): a
/// consumed ledger is deleted once it is older than `minutes` or once the consumed ledgers
/// after it already hold `size_mb`, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    pub minutes: u64,
    pub size_mb: u64,
}

/// Replication of a namespace's ledgers: ensemble size E, write quorum Qw, ack quorum Qa.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationPolicy {
    pub ensemble_size: u32,
    pub write_quorum: u32,
    pub ack_quorum: u32,
}

impl Default for NamespacePolicies {
    fn default() -> Self {
        Self {
            auto_create_topics: true,
            replication: None,
            bundles: None,
            retention: None,
            backlog_quota: None,
            ledger_rollover: None,
        }
    }
}

impl JsonRecord for NamespacePolicies {
    const FORMAT_VERSION: u32 = 1;
}

/// The namespaces table; list the namespaces of a tenant.
#[derive(Debug)]
pub struct Namespaces;

impl Schema for Namespaces {
    type Key = NamespaceName;
    type Record = NamespacePolicies;
    const NAME: &'static str = "namespace";

    fn key(ns: &NamespaceName) -> String {
        format!("{PREFIX}{ns}")
    }
}

impl Listing for Namespaces {
    type Parent = TenantName;

    fn prefix(tenant: &TenantName) -> String {
        format!("{PREFIX}{tenant}/")
    }

    fn child(tenant: &TenantName, rest: &str) -> Result<NamespaceName, String> {
        NamespaceName::new(tenant.as_str(), rest).map_err(|e| e.to_string())
    }
}
