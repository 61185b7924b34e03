//! Producer-dedup snapshots: `/dedup/<tenant>/<namespace>/<topic>` → [`DedupRecord`] (JSON).
//!
//! The highest sequence id stored per producer name, as of `position`: every entry of the
//! topic up to and including `position` is reflected, none after it. A broker loading the
//! topic starts from the snapshot and replays the entries after `position`, so the snapshot
//! may lag the log by any amount without being wrong. The dedup logic lives with the broker.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_proto::{NamespaceName, Position, TopicName};

use super::{JsonRecord, Listing, Schema};

/// Prefix of every dedup key.
pub const PREFIX: &str = "/dedup/";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRecord {
    /// Last entry the snapshot covers (`None`: the log was empty).
    pub position: Option<Position>,
    /// Producer name → highest sequence id stored up to `position`.
    pub producers: BTreeMap<String, u64>,
    /// The highest sequence id of any producer forgotten (idle too long) so far: a producer
    /// the topic does not know is told to continue above it, so a forgotten producer that
    /// comes back never reuses an id an older snapshot may still hold for it.
    #[serde(default)]
    pub forgotten_floor: u64,
}

impl JsonRecord for DedupRecord {
    const FORMAT_VERSION: u32 = 1;
}

/// The dedup table, keyed by topic; list those of a namespace.
#[derive(Debug)]
pub struct Dedup;

impl Schema for Dedup {
    type Key = TopicName;
    type Record = DedupRecord;
    const NAME: &'static str = "dedup snapshot";

    fn key(topic: &TopicName) -> String {
        format!("{PREFIX}{}", topic.path())
    }
}

impl Listing for Dedup {
    type Parent = NamespaceName;

    fn prefix(ns: &NamespaceName) -> String {
        format!("{PREFIX}{ns}/")
    }

    fn child(ns: &NamespaceName, rest: &str) -> Result<TopicName, String> {
        super::topics::topic_under(ns, rest)
    }
}
