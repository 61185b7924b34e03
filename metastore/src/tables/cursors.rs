//! Cursors: `/cursors/<tenant>/<namespace>/<topic>/<subscription>` → [`CursorRecord`]
//! (JSON), a subscription's acknowledgement state. Written by the broker that serves the
//! subscription, by compare-and-set on the version it last wrote. The acknowledgement logic
//! itself lives with the broker; this is only its stored form.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use strata_proto::{Position, TopicName};

use super::{JsonRecord, Listing, Schema};

/// Prefix of every cursor key.
pub const PREFIX: &str = "/cursors/";

/// Acknowledgement state of one entry above the mark-delete position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryAck {
    /// Every message of the entry is acknowledged.
    Full,
    /// Only these batch indexes are acknowledged (of `batch_size`).
    Partial {
        batch_size: u32,
        indexes: BTreeSet<u32>,
    },
}

/// A subscription's stored acknowledgement state: everything up to and including
/// `mark_delete` (`None`: nothing yet), plus entries above it acknowledged out of order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorRecord {
    pub mark_delete: Option<Position>,
    #[serde(with = "as_pairs")]
    pub acked: BTreeMap<Position, EntryAck>,
}

impl JsonRecord for CursorRecord {
    const FORMAT_VERSION: u32 = 1;
}

/// JSON objects need string keys, so the map is stored as a list of `[position, ack]` pairs.
mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};
    use strata_proto::Position;

    use super::EntryAck;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<Position, EntryAck>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Position, EntryAck>, D::Error> {
        Ok(Vec::<(Position, EntryAck)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

/// A cursor's key: a subscription of a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CursorKey {
    pub topic: TopicName,
    /// Non-empty, without `/` (the broker refuses other names).
    pub subscription: String,
}

impl CursorKey {
    pub fn new(topic: TopicName, subscription: impl Into<String>) -> Self {
        CursorKey {
            topic,
            subscription: subscription.into(),
        }
    }
}

/// The cursors table; list the cursors of a topic.
#[derive(Debug)]
pub struct Cursors;

impl Schema for Cursors {
    type Key = CursorKey;
    type Record = CursorRecord;
    const NAME: &'static str = "cursor";

    fn key(c: &CursorKey) -> String {
        format!("{PREFIX}{}/{}", c.topic.path(), c.subscription)
    }
}

impl Listing for Cursors {
    type Parent = TopicName;

    fn prefix(topic: &TopicName) -> String {
        format!("{PREFIX}{}/", topic.path())
    }

    fn child(topic: &TopicName, rest: &str) -> Result<CursorKey, String> {
        if rest.is_empty() || rest.contains('/') {
            return Err(format!("{rest:?} is not a subscription name"));
        }
        Ok(CursorKey::new(topic.clone(), rest))
    }
}
