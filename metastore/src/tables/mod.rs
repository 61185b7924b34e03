//! Typed tables over the metastore's key space: each table fixes a key layout and a record
//! type, so callers never build keys or parse values by hand.
//!
//! | table                 | key                                                | record                   |
//! |-----------------------|----------------------------------------------------|--------------------------|
//! | [`tenants`]           | `/tenants/<tenant>`                                | [`TenantRecord`]         |
//! | [`namespaces`]        | `/namespaces/<tenant>/<ns>`                        | [`NamespacePolicies`]    |
//! | [`topics`]            | `/topics/<tenant>/<ns>/<topic>`                    | [`TopicRecord`]          |
//! | [`topics`] (partitioned) | `/partitioned-topics/<tenant>/<ns>/<topic>`     | [`PartitionedTopicRecord`] |
//! | [`ownership`]         | `/ownership/<tenant>/<ns>/<0xlower_0xupper>`       | [`OwnershipRecord`]      |
//! | [`managed_ledgers`]   | `/managed-ledgers/<tenant>/<ns>/<topic>`           | [`ManagedLedgerRecord`]  |
//! | [`ledgers`]           | `/ledgers/<id, 20 digits>`                         | protobuf `LedgerMetadata`|
//! | [`cursors`]           | `/cursors/<tenant>/<ns>/<topic>/<subscription>`    | [`CursorRecord`]         |
//! | [`dedup`]             | `/dedup/<tenant>/<ns>/<topic>`                     | [`DedupRecord`]          |
//! | [`txns`]              | `/txns/<id, 20 digits>`                            | [`TxnRecord`]            |
//! | [`txns`] (deadlines)  | `/txn-deadlines/<ms, 20 digits>/<id>`              | [`DeadlineMark`]         |
//! | [`txns`] (partitions) | `/txn-partitions/<tenant>/<ns>/<topic>/<id>`       | [`TxnPartitionMark`]     |
//! | [`txns`] (acks)       | `/txn-acks/<tenant>/<ns>/<topic>/<sub>/<l>-<e>-<i>` | [`PendingAck`]          |
//! | [`txn_cleanup`] (skipped) | `/txn-aborts/<tenant>/<ns>/<topic>/<ledger>/<id>` | [`SkippedRange`]   |
//! | [`txn_cleanup`] (subs) | `/txn-subs/<tenant>/<ns>/<topic>/<sub>/<id>`      | [`TxnSubMark`]           |
//! | [`txn_cleanup`] (decided) | `/txn-decided/<ms, 20 digits>/<id>`            | [`DecidedMark`]          |
//! | [`txn_checks`]        | `/txn-checks/<ms, 20 digits>/<id>`                 | [`CheckMark`]            |
//! | [`txn_producers`]     | `/txn-producers/<name>`                            | [`TxnProducerRecord`]    |
//! | [`counters`]          | `/counters/<name>`                                 | u64 big-endian           |
//!
//! Records are JSON objects with a `format_version` ([`JsonRecord`]), except ledger metadata
//! (protobuf, with its own `format_version` field) and counters (the metastore's `next_id`
//! encoding). A record of a newer format is refused with [`DecodeError::FutureVersion`]; a
//! malformed value is a [`TableError::Decode`] naming the key, never a panic.
//!
//! Every write is a compare-and-set: [`Table::create`] (the row must not exist),
//! [`Table::update`] (the row must be at the version read), or [`Table::put`] with any
//! [`crate::Expect`]. A failed one is [`TableError::VersionMismatch`].
//!
//! # Layout
//!
//! - `table`: [`Schema`], [`Listing`] and [`Table`], the generic operations.
//! - `record`: [`Record`] and [`JsonRecord`], the versioned encodings.
//! - `error`: [`TableError`], [`DecodeError`].
//! - one module per table, defining its keys and record: [`tenants`], [`namespaces`],
//!   [`topics`], [`ownership`], [`managed_ledgers`], [`ledgers`], [`cursors`], [`dedup`], [`counters`].

pub mod counters;
pub mod cursors;
pub mod dedup;
mod error;
pub mod ledgers;
pub mod managed_ledgers;
pub mod namespaces;
pub mod ownership;
mod record;
mod table;
pub mod tenants;
pub mod topics;
pub mod txn_checks;
pub mod txn_cleanup;
pub mod txn_producers;
pub mod txns;

#[cfg(test)]
mod tests;

pub use counters::{Counter, Counters};
pub use cursors::{CursorKey, CursorRecord, Cursors, EntryAck};
pub use dedup::{Dedup, DedupRecord};
pub use error::{DecodeError, TableError};
pub use ledgers::Ledgers;
pub use managed_ledgers::{LedgerInfo, ManagedLedgerRecord, ManagedLedgers};
pub use namespaces::{
    BacklogQuota, BacklogQuotaPolicy, LedgerRolloverPolicy, NamespacePolicies, Namespaces,
    ReplicationPolicy, RetentionPolicy,
};
pub use ownership::{BrokerId, BundleRange, NamespaceBundle, Ownership, OwnershipRecord};
pub use record::{JsonRecord, Record, now_ms};
pub use table::{Listing, Schema, Table, TableEvent, TableWatcher, Versioned};
pub use tenants::{TenantName, TenantRecord, Tenants};
pub use topics::{
    PartitionedTopicRecord, PartitionedTopics, TopicRecord, Topics, partition_name, partition_of,
};
pub use txn_checks::{CheckMark, TxnChecks};
pub use txn_cleanup::{DecidedMark, SkippedRange, TxnAborts, TxnDecided, TxnSubMark, TxnSubs};
pub use txn_producers::{ProducerEpoch, TxnProducerRecord, TxnProducers};
pub use txns::{
    CheckSchedule, DeadlineMark, Decided, HeldAck, PendingAck, PendingAcks, TxnDeadlines,
    TxnPartition, TxnPartitionMark, TxnPartitions, TxnRecord, TxnRuleError, TxnState, Txns,
};

use crate::Meta;

/// Every table over one metastore. Cheap to clone.
#[derive(Clone)]
pub struct Tables {
    pub tenants: Table<Tenants>,
    pub namespaces: Table<Namespaces>,
    pub topics: Table<Topics>,
    pub partitioned_topics: Table<PartitionedTopics>,
    pub ownership: Table<Ownership>,
    pub managed_ledgers: Table<ManagedLedgers>,
    pub ledgers: Table<Ledgers>,
    pub cursors: Table<Cursors>,
    pub dedup: Table<Dedup>,
    pub txns: Table<Txns>,
    pub txn_deadlines: Table<TxnDeadlines>,
    pub txn_partitions: Table<TxnPartitions>,
    pub pending_acks: Table<PendingAcks>,
    pub txn_producers: Table<TxnProducers>,
    pub txn_checks: Table<TxnChecks>,
    pub txn_aborts: Table<TxnAborts>,
    pub txn_subs: Table<TxnSubs>,
    pub txn_decided: Table<TxnDecided>,
    pub counters: Counters,
    meta: Meta,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tables")
    }
}

impl Tables {
    pub fn new(meta: impl Into<Meta>) -> Self {
        let meta: Meta = meta.into();
        Tables {
            tenants: Table::new(meta.clone()),
            namespaces: Table::new(meta.clone()),
            topics: Table::new(meta.clone()),
            partitioned_topics: Table::new(meta.clone()),
            ownership: Table::new(meta.clone()),
            managed_ledgers: Table::new(meta.clone()),
            ledgers: Table::new(meta.clone()),
            cursors: Table::new(meta.clone()),
            dedup: Table::new(meta.clone()),
            txns: Table::new(meta.clone()),
            txn_deadlines: Table::new(meta.clone()),
            txn_partitions: Table::new(meta.clone()),
            pending_acks: Table::new(meta.clone()),
            txn_producers: Table::new(meta.clone()),
            txn_checks: Table::new(meta.clone()),
            txn_aborts: Table::new(meta.clone()),
            txn_subs: Table::new(meta.clone()),
            txn_decided: Table::new(meta.clone()),
            counters: Counters::new(meta.clone()),
            meta,
        }
    }

    /// The metastore underneath (for transactions across tables).
    pub fn meta(&self) -> &Meta {
        &self.meta
    }
}
