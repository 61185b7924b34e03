//! What lets a decided transaction's record and index marks be deleted without losing what
//! its participants still need (no I/O).
//!
//! - `/txn-aborts/<tenant>/<ns>/<topic>/<ledger, 20 digits>/<id, 20 digits>` →
//!   [`SkippedRange`]: entries of a transaction a read-committed reader of the partition must
//!   skip (an aborted one's, or a committed one's late writes). Keyed by the ledger the range
//!   starts in, and deleted when retention deletes the ledger it ends in. Once a partition
//!   has recorded this (or found nothing to skip), it drops the transaction's partition mark:
//!   any other entry of a transaction it no longer knows is committed.
//! - `/txn-subs/<tenant>/<ns>/<topic>/<subscription>/<id, 20 digits>` → [`TxnSubMark`]: the
//!   subscription holds (or held) pending acks of the transaction; deleted with the last of
//!   them, once they are applied (commit) or released (abort).
//! - `/txn-decided/<decided ms, 20 digits>/<id, 20 digits>` → [`DecidedMark`]: the decided
//!   transactions in decision order. The metastore leader deletes a record some time after
//!   its decision (a client retrying a commit still gets "committed" meanwhile), once none of
//!   its partition and subscription marks is left.

use serde::{Deserialize, Serialize};
use strata_proto::{LedgerId, Position, TopicName, TxnId};

use super::cursors::CursorKey;
use super::record::JsonRecord;
use super::table::{Listing, Schema};
use super::txns::{parse_id, parse_time_and_id};

pub const ABORTS_PREFIX: &str = "/txn-aborts/";
pub const SUBS_PREFIX: &str = "/txn-subs/";
pub const DECIDED_PREFIX: &str = "/txn-decided/";

/// Entries of one transaction in `[from, before)` that read-committed readers skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRange {
    pub from: Position,
    /// Exclusive.
    pub before: Position,
}

impl SkippedRange {
    /// The range, unless it is empty.
    pub fn new(from: Position, before: Position) -> Option<Self> {
        (from < before).then_some(Self { from, before })
    }

    pub fn contains(&self, p: Position) -> bool {
        self.from <= p && p < self.before
    }
}

impl JsonRecord for SkippedRange {
    const FORMAT_VERSION: u32 = 1;
}

/// The skipped ranges of each partition, by (topic, ledger the range starts in, id).
#[derive(Debug)]
pub struct TxnAborts;

impl Schema for TxnAborts {
    type Key = (TopicName, LedgerId, TxnId);
    type Record = SkippedRange;
    const NAME: &'static str = "skipped transaction range";

    fn key((topic, ledger, id): &(TopicName, LedgerId, TxnId)) -> String {
        format!(
            "{ABORTS_PREFIX}{}/{:020}/{:020}",
            topic.path(),
            ledger.0,
            id.0
        )
    }
}

impl Listing for TxnAborts {
    type Parent = TopicName;

    fn prefix(topic: &TopicName) -> String {
        format!("{ABORTS_PREFIX}{}/", topic.path())
    }

    fn child(topic: &TopicName, rest: &str) -> Result<(TopicName, LedgerId, TxnId), String> {
        let (ledger, id) = parse_time_and_id(rest)?;
        Ok((topic.clone(), LedgerId(ledger), id))
    }
}

/// A subscription holds pending acks of the transaction in its key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnSubMark {}

impl JsonRecord for TxnSubMark {
    const FORMAT_VERSION: u32 = 1;
}

/// The transactions acknowledging on each subscription, by (cursor, id).
#[derive(Debug)]
pub struct TxnSubs;

impl Schema for TxnSubs {
    type Key = (CursorKey, TxnId);
    type Record = TxnSubMark;
    const NAME: &'static str = "transaction subscription";

    fn key((cursor, id): &(CursorKey, TxnId)) -> String {
        format!(
            "{SUBS_PREFIX}{}/{}/{:020}",
            cursor.topic.path(),
            cursor.subscription,
            id.0
        )
    }
}

impl Listing for TxnSubs {
    type Parent = CursorKey;

    fn prefix(cursor: &CursorKey) -> String {
        format!(
            "{SUBS_PREFIX}{}/{}/",
            cursor.topic.path(),
            cursor.subscription
        )
    }

    fn child(cursor: &CursorKey, rest: &str) -> Result<(CursorKey, TxnId), String> {
        Ok((cursor.clone(), parse_id(rest)?))
    }
}

/// A transaction decided at the time in its key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedMark {}

impl JsonRecord for DecidedMark {
    const FORMAT_VERSION: u32 = 1;
}

/// The decided transactions, by (decision time, id); list with parent `()`.
#[derive(Debug)]
pub struct TxnDecided;

impl Schema for TxnDecided {
    type Key = (u64, TxnId);
    type Record = DecidedMark;
    const NAME: &'static str = "decided transaction";

    fn key((decided_ms, id): &(u64, TxnId)) -> String {
        format!("{DECIDED_PREFIX}{decided_ms:020}/{:020}", id.0)
    }
}

impl Listing for TxnDecided {
    type Parent = ();

    fn prefix(_: &()) -> String {
        DECIDED_PREFIX.to_owned()
    }

    fn child(_: &(), rest: &str) -> Result<(u64, TxnId), String> {
        parse_time_and_id(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ledger: u64, entry: u64) -> Position {
        Position::new(ledger, entry)
    }

    /// A range holds its start and not its end; an empty one is not made.
    #[test]
    fn ranges_are_half_open() {
        let r = SkippedRange::new(at(3, 5), at(4, 0)).expect("non-empty");
        assert!(r.contains(at(3, 5)));
        assert!(r.contains(at(3, 900)));
        assert!(!r.contains(at(4, 0)));
        assert!(!r.contains(at(3, 4)));
        assert_eq!(SkippedRange::new(at(3, 5), at(3, 5)), None);
        assert_eq!(SkippedRange::new(at(3, 6), at(3, 5)), None);
    }

    /// Keys parse back to what made them, and sort by ledger, then id.
    #[test]
    fn keys_round_trip_and_sort_by_ledger() {
        let topic = TopicName::parse("t").expect("topic");
        let key = TxnAborts::key(&(topic.clone(), LedgerId(12), TxnId(7)));
        let rest = &key[TxnAborts::prefix(&topic).len()..];
        assert_eq!(
            TxnAborts::child(&topic, rest),
            Ok((topic.clone(), LedgerId(12), TxnId(7)))
        );
        assert!(key < TxnAborts::key(&(topic.clone(), LedgerId(13), TxnId(1))));
        let cursor = CursorKey::new(topic.clone(), "s");
        let key = TxnSubs::key(&(cursor.clone(), TxnId(9)));
        let rest = &key[TxnSubs::prefix(&cursor).len()..];
        assert_eq!(TxnSubs::child(&cursor, rest), Ok((cursor, TxnId(9))));
        let key = TxnDecided::key(&(1_000, TxnId(3)));
        assert_eq!(
            TxnDecided::child(&(), &key[DECIDED_PREFIX.len()..]),
            Ok((1_000, TxnId(3)))
        );
    }
}
