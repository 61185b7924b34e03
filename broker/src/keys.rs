//! The broker's key layout in the metastore (documented in docs/ARCHITECTURE.md).
//!
//! ```text
//! /namespaces/<tenant>/<namespace>              NamespacePolicies (JSON)
//! /topics/<tenant>/<namespace>/<topic>          TopicRecord (JSON)
//! /managed-ledgers/<tenant>/<namespace>/<topic> ManagedLedgerRecord (JSON)
//! /cursors/<tenant>/<namespace>/<topic>/<sub>   CursorState (JSON)
//! /ledgers/<id, 20 digits>                      LedgerMetadata (protobuf; bookie crate)
//! ```

use strata_proto::{NamespaceName, TopicName};

pub fn namespace(ns: &NamespaceName) -> String {
    format!("/namespaces/{ns}")
}

pub fn topic(t: &TopicName) -> String {
    format!("/topics/{}", t.path())
}

/// Prefix of every topic of a namespace.
pub fn topics_of(ns: &NamespaceName) -> String {
    format!("/topics/{ns}/")
}

pub fn managed_ledger(t: &TopicName) -> String {
    format!("/managed-ledgers/{}", t.path())
}

pub fn cursor(t: &TopicName, subscription: &str) -> String {
    format!("/cursors/{}/{subscription}", t.path())
}

/// Prefix of every cursor of a topic.
pub fn cursors_of(t: &TopicName) -> String {
    format!("/cursors/{}/", t.path())
}
