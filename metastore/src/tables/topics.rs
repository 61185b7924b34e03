//! Topics and partitioned topics.
//!
//! - `/topics/<tenant>/<namespace>/<topic>` → [`TopicRecord`] (JSON): the topic exists. Every
//!   partition of a partitioned topic is a topic of its own here.
//! - `/partitioned-topics/<tenant>/<namespace>/<topic>` → [`PartitionedTopicRecord`] (JSON):
//!   `<topic>` is partitioned into `partitions` topics named `<topic>-partition-<i>`,
//!   `i` in `0..partitions` (Pulsar's naming).

use serde::{Deserialize, Serialize};
use strata_proto::{NamespaceName, TopicName, TopicNameError};

use super::{JsonRecord, Listing, Schema};

/// Prefix of every topic key.
pub const PREFIX: &str = "/topics/";
/// Prefix of every partitioned-topic key.
pub const PARTITIONED_PREFIX: &str = "/partitioned-topics/";
/// What separates a partitioned topic's name from a partition's index.
pub const PARTITION_SUFFIX: &str = "-partition-";

/// A topic's existence record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub created_ms: u64,
}

impl JsonRecord for TopicRecord {
    const FORMAT_VERSION: u32 = 1;
}

/// A partitioned topic: how many partitions it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionedTopicRecord {
    pub partitions: u32,
    pub created_ms: u64,
}

impl JsonRecord for PartitionedTopicRecord {
    const FORMAT_VERSION: u32 = 1;
}

impl PartitionedTopicRecord {
    /// The names of the partitions of `topic`, in index order.
    pub fn partition_names(&self, topic: &TopicName) -> Result<Vec<TopicName>, TopicNameError> {
        (0..self.partitions)
            .map(|i| partition_name(topic, i))
            .collect()
    }
}

/// The name of partition `index` of `topic`: `<topic>-partition-<index>`. Fails only if the
/// result is longer than a topic name may be.
pub fn partition_name(topic: &TopicName, index: u32) -> Result<TopicName, TopicNameError> {
    TopicName::parse(&format!("{}{PARTITION_SUFFIX}{index}", topic.path()))
}

/// If `topic` is a partition's name, the partitioned topic's name and the index.
pub fn partition_of(topic: &TopicName) -> Option<(TopicName, u32)> {
    let (base, index) = topic.local_name().rsplit_once(PARTITION_SUFFIX)?;
    // Only the canonical spelling (no sign, no leading zero), so one partition has one name.
    if index.is_empty()
        || !index.bytes().all(|b| b.is_ascii_digit())
        || (index.len() > 1 && index.starts_with('0'))
    {
        return None;
    }
    let index = index.parse().ok()?;
    let base = TopicName::parse(&format!("{}/{base}", topic.namespace())).ok()?;
    Some((base, index))
}

/// The topic named `rest` in `ns` (a key suffix of a table keyed by topic).
pub(super) fn topic_under(ns: &NamespaceName, rest: &str) -> Result<TopicName, String> {
    if rest.contains('/') {
        return Err(format!("{rest:?} is not a topic name"));
    }
    TopicName::parse(&format!("{ns}/{rest}")).map_err(|e| e.to_string())
}

/// The topics table; list the topics of a namespace.
#[derive(Debug)]
pub struct Topics;

impl Schema for Topics {
    type Key = TopicName;
    type Record = TopicRecord;
    const NAME: &'static str = "topic";

    fn key(topic: &TopicName) -> String {
        format!("{PREFIX}{}", topic.path())
    }
}

impl Listing for Topics {
    type Parent = NamespaceName;

    fn prefix(ns: &NamespaceName) -> String {
        format!("{PREFIX}{ns}/")
    }

    fn child(ns: &NamespaceName, rest: &str) -> Result<TopicName, String> {
        topic_under(ns, rest)
    }
}

/// The partitioned-topics table; list the partitioned topics of a namespace.
#[derive(Debug)]
pub struct PartitionedTopics;

impl Schema for PartitionedTopics {
    type Key = TopicName;
    type Record = PartitionedTopicRecord;
    const NAME: &'static str = "partitioned topic";

    fn key(topic: &TopicName) -> String {
        format!("{PARTITIONED_PREFIX}{}", topic.path())
    }
}

impl Listing for PartitionedTopics {
    type Parent = NamespaceName;

    fn prefix(ns: &NamespaceName) -> String {
        format!("{PARTITIONED_PREFIX}{ns}/")
    }

    fn child(ns: &NamespaceName, rest: &str) -> Result<TopicName, String> {
        topic_under(ns, rest)
    }
}
