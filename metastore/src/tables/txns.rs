//! Transactions: the coordinator's records and the rules of their state machine (no I/O).
//!
//! - `/txns/<id, 20 digits>` → [`TxnRecord`] (JSON): state, deadline, participants.
//! - `/txn-deadlines/<deadline ms, 20 digits>/<id, 20 digits>` → [`DeadlineMark`]: the
//!   deadline index, in expiry order, that the metastore leader scans to time transactions
//!   out. Written in the same metastore transaction as the record it indexes.
//! - `/txn-partitions/<tenant>/<ns>/<topic>/<id, 20 digits>` → [`TxnPartitionMark`]: the
//!   transactions that wrote to a partition, so its next owner finds them after a failover.
//! - `/txn-acks/<tenant>/<ns>/<topic>/<subscription>/<ledger>-<entry>-<index>` →
//!   [`PendingAck`]: messages one ack write held in a transaction (up to a few thousand per
//!   record), not yet applied to the cursor, keyed by the first of them. Written only by the topic's owner (compared
//!   against its managed-ledger record), which holds every one of them in memory and so
//!   refuses a second transaction acknowledging the same message.
//!
//! The decision of a transaction is one compare-and-set of its record (one Raft entry):
//! every participant learns it from that record. A transaction's record only moves forward,
//! OPEN → COMMITTED | ABORTED | TIMED_OUT, and a decided one never changes again; commit and
//! abort are idempotent (asking again for the same decision answers it again).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use strata_proto::{MessageId, Position, TopicName, TxnId};

use super::cursors::CursorKey;
use super::txn_producers::ProducerEpoch;

use super::{DecodeError, JsonRecord, Listing, Schema};

pub const PREFIX: &str = "/txns/";
pub const DEADLINE_PREFIX: &str = "/txn-deadlines/";
pub const PARTITION_PREFIX: &str = "/txn-partitions/";
pub const ACK_PREFIX: &str = "/txn-acks/";

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TxnState {
    Open,
    Committed,
    Aborted,
    /// Aborted by the coordinator because its deadline passed.
    TimedOut,
}

impl TxnState {
    pub fn is_open(self) -> bool {
        self == TxnState::Open
    }

    /// Its messages are visible and its acks applied.
    pub fn is_committed(self) -> bool {
        self == TxnState::Committed
    }
}

impl fmt::Display for TxnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TxnState::Open => "OPEN",
            TxnState::Committed => "COMMITTED",
            TxnState::Aborted => "ABORTED",
            TxnState::TimedOut => "TIMED_OUT",
        })
    }
}

/// A partition a transaction wrote to: where its first entry there is, and, once committed,
/// its last one (entries of the transaction after it are late writes, treated as aborted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnPartition {
    pub first: Position,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Position>,
}

/// A transaction as the coordinator keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub state: TxnState,
    /// The client that began it; only it may send, ack, commit or abort in it.
    pub owner: String,
    pub created_ms: u64,
    /// When the coordinator times it out if still open.
    pub deadline_ms: u64,
    /// When it was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_ms: Option<u64>,
    /// Partitions written, by full topic name.
    #[serde(default)]
    pub partitions: BTreeMap<String, TxnPartition>,
    /// Subscriptions acknowledged in it: (full topic name, subscription).
    #[serde(default)]
    pub subscriptions: BTreeSet<(String, String)>,
    /// The producer group whose live members the coordinator may ask (check-back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The transactional producer (and its epoch) that began it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<ProducerEpoch>,
    /// Check-back: how often the group's checkers are asked, and when next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSchedule>,
    /// The sends are done and each partition's last entry recorded: a checker of the
    /// group may commit it without the client.
    #[serde(default)]
    pub prepared: bool,
    /// How many times the group's checkers have been asked.
    #[serde(default)]
    pub checks: u32,
    /// Its participants mark themselves (`/txn-partitions/`, `/txn-subs/`) until they have
    /// settled it, so once decided it may be forgotten when no mark is left. Records written
    /// before participants marked themselves lack it and are kept.
    #[serde(default)]
    pub marked: bool,
}

/// When a check-back transaction's group is asked about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSchedule {
    pub interval_ms: u64,
    /// The key of its mark in the check index.
    pub next_ms: u64,
}

impl JsonRecord for TxnRecord {
    const FORMAT_VERSION: u32 = 1;
}

/// Why a request on a transaction was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnRuleError {
    #[error("{id} is {state}, not open")]
    NotOpen { id: TxnId, state: TxnState },
    #[error("{id} is {state}: it cannot be {asked}")]
    AlreadyDecided {
        id: TxnId,
        state: TxnState,
        asked: &'static str,
    },
    #[error("{id} belongs to another client")]
    NotOwner { id: TxnId },
    #[error("{id} is prepared: its sends and acks are done")]
    Prepared { id: TxnId },
    #[error("{id} is not prepared: only its client can commit it")]
    NotPrepared { id: TxnId },
    #[error("{id} is not a transaction of producer group {group}")]
    NotInGroup { id: TxnId, group: String },
    #[error(
        "transactional producer {name} at epoch {epoch} is fenced: a newer instance holds epoch {current}"
    )]
    ProducerFenced {
        name: String,
        epoch: u64,
        current: u64,
    },
    #[error("{id} wrote to {topic}, but the commit does not say where its last entry there is")]
    MissingLastPosition { id: TxnId, topic: String },
    #[error("{id}'s last entry on {topic} ({last}) is before its first ({first})")]
    BadRange {
        id: TxnId,
        topic: String,
        first: Position,
        last: Position,
    },
}

/// What a decision request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// The record changed: write it (one compare-and-set decides).
    Now,
    /// It was already decided so: answer the same, write nothing.
    Already,
}

impl TxnRecord {
    /// A new open transaction of `owner`, timing out `timeout_ms` after `now_ms`.
    pub fn open(owner: &str, now_ms: u64, timeout_ms: u64) -> Self {
        Self {
            state: TxnState::Open,
            owner: owner.to_owned(),
            created_ms: now_ms,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            decided_ms: None,
            partitions: BTreeMap::new(),
            subscriptions: BTreeSet::new(),
            group: None,
            producer: None,
            check: None,
            prepared: false,
            checks: 0,
            marked: true,
        }
    }

    /// Checks that `client` may act in the open transaction.
    pub fn check_open(&self, id: TxnId, client: &str) -> Result<(), TxnRuleError> {
        if self.owner != client {
            return Err(TxnRuleError::NotOwner { id });
        }
        if !self.state.is_open() {
            return Err(TxnRuleError::NotOpen {
                id,
                state: self.state,
            });
        }
        Ok(())
    }

    /// Records the first entry the transaction wrote to `topic`. `Ok(false)` if it was
    /// registered already (nothing to write).
    pub fn register_partition(
        &mut self,
        id: TxnId,
        topic: &TopicName,
        first: Position,
    ) -> Result<bool, TxnRuleError> {
        if !self.state.is_open() {
            return Err(TxnRuleError::NotOpen {
                id,
                state: self.state,
            });
        }
        if self.partitions.contains_key(&topic.to_string()) {
            return Ok(false);
        }
        if self.prepared {
            return Err(TxnRuleError::Prepared { id });
        }
        self.partitions
            .insert(topic.to_string(), TxnPartition { first, last: None });
        Ok(true)
    }

    /// Records that the transaction acknowledges on `subscription` of `topic`. `Ok(false)`
    /// if it was registered already.
    pub fn register_subscription(
        &mut self,
        id: TxnId,
        topic: &TopicName,
        subscription: &str,
    ) -> Result<bool, TxnRuleError> {
        if !self.state.is_open() {
            return Err(TxnRuleError::NotOpen {
                id,
                state: self.state,
            });
        }
        Ok(self
            .subscriptions
            .insert((topic.to_string(), subscription.to_owned())))
    }

    /// Commits, fixing each partition's last entry from `last` (what the client saw
    /// acknowledged). Committing a committed transaction answers `Already`; committing an
    /// aborted or timed-out one is refused.
    pub fn commit(
        &mut self,
        id: TxnId,
        last: &BTreeMap<String, Position>,
        now_ms: u64,
    ) -> Result<Decided, TxnRuleError> {
        match self.state {
            TxnState::Committed => return Ok(Decided::Already),
            TxnState::Aborted | TxnState::TimedOut => {
                return Err(TxnRuleError::AlreadyDecided {
                    id,
                    state: self.state,
                    asked: "committed",
                });
            }
            TxnState::Open => {}
        }
        // A prepared transaction's ends were fixed then (a checker names none).
        if self.prepared {
            self.check_prepared_ends(id, last)?;
        } else {
            self.fix_ranges(id, last)?;
        }
        self.state = TxnState::Committed;
        self.decided_ms = Some(now_ms);
        Ok(Decided::Now)
    }

    /// Fixes each partition's last entry from `last`; every partition written needs one, at
    /// or after its first.
    fn fix_ranges(
        &mut self,
        id: TxnId,
        last: &BTreeMap<String, Position>,
    ) -> Result<(), TxnRuleError> {
        for (topic, p) in &mut self.partitions {
            let Some(&l) = last.get(topic) else {
                return Err(TxnRuleError::MissingLastPosition {
                    id,
                    topic: topic.clone(),
                });
            };
            if l < p.first {
                return Err(TxnRuleError::BadRange {
                    id,
                    topic: topic.clone(),
                    first: p.first,
                    last: l,
                });
            }
        }
        for (topic, p) in &mut self.partitions {
            p.last = last.get(topic).copied();
        }
        Ok(())
    }

    /// Declares the sends done, fixing each partition's last entry (check-back: a checker
    /// may then commit it). Preparing again answers `Already`.
    pub fn prepare(
        &mut self,
        id: TxnId,
        last: &BTreeMap<String, Position>,
    ) -> Result<Decided, TxnRuleError> {
        if !self.state.is_open() {
            return Err(TxnRuleError::NotOpen {
                id,
                state: self.state,
            });
        }
        if self.prepared {
            self.check_prepared_ends(id, last)?;
            return Ok(Decided::Already);
        }
        self.fix_ranges(id, last)?;
        self.prepared = true;
        Ok(Decided::Now)
    }

    /// After prepare, a client naming ends beyond the prepared ones wrote after preparing:
    /// those entries would be dropped as late writes, so the request is refused instead.
    fn check_prepared_ends(
        &self,
        id: TxnId,
        last: &BTreeMap<String, Position>,
    ) -> Result<(), TxnRuleError> {
        let beyond = last.iter().any(|(topic, l)| {
            self.partitions
                .get(topic)
                .and_then(|p| p.last)
                .is_none_or(|prepared| *l > prepared)
        });
        if beyond {
            return Err(TxnRuleError::Prepared { id });
        }
        Ok(())
    }

    /// Checks that `group` may decide the transaction (a checker's answer): it is the
    /// transaction's group, and a commit needs the transaction prepared.
    pub fn check_group(&self, id: TxnId, group: &str, commit: bool) -> Result<(), TxnRuleError> {
        if self.group.as_deref() != Some(group) {
            return Err(TxnRuleError::NotInGroup {
                id,
                group: group.to_owned(),
            });
        }
        if commit && self.state.is_open() && !self.prepared {
            return Err(TxnRuleError::NotPrepared { id });
        }
        Ok(())
    }

    /// Aborts (`timed_out`: by the coordinator at the deadline). Aborting an aborted or
    /// timed-out transaction answers `Already`; aborting a committed one is refused.
    pub fn abort(
        &mut self,
        id: TxnId,
        timed_out: bool,
        now_ms: u64,
    ) -> Result<Decided, TxnRuleError> {
        match self.state {
            TxnState::Aborted | TxnState::TimedOut => return Ok(Decided::Already),
            TxnState::Committed => {
                return Err(TxnRuleError::AlreadyDecided {
                    id,
                    state: self.state,
                    asked: "aborted",
                });
            }
            TxnState::Open => {}
        }
        self.state = if timed_out {
            TxnState::TimedOut
        } else {
            TxnState::Aborted
        };
        self.decided_ms = Some(now_ms);
        Ok(Decided::Now)
    }

    /// Whether the entry of this transaction at `position` of `topic` is delivered:
    /// committed, and not a late write beyond the range the commit fixed.
    pub fn delivers(&self, topic: &TopicName, position: Position) -> bool {
        self.state.is_committed()
            && self
                .partitions
                .get(&topic.to_string())
                .and_then(|p| p.last)
                .is_some_and(|last| position <= last)
    }
}

/// The transactions table, keyed by id; list with parent `()`.
#[derive(Debug)]
pub struct Txns;

fn id_key(id: TxnId) -> String {
    format!("{:020}", id.0)
}

/// The `<ms, 20 digits>/<id>` tail of a time-ordered index key (deadlines, checks).
pub(super) fn parse_time_and_id(rest: &str) -> Result<(u64, TxnId), String> {
    let (ms, id) = rest
        .split_once('/')
        .ok_or_else(|| format!("{rest:?} is not <ms>/<id>"))?;
    if ms.len() != 20 || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{ms:?} is not a 20-digit time"));
    }
    let ms = ms.parse().map_err(|e| format!("{e}"))?;
    Ok((ms, parse_id(id)?))
}

pub(super) fn parse_id(s: &str) -> Result<TxnId, String> {
    if s.len() != 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a 20-digit transaction id"));
    }
    s.parse().map(TxnId).map_err(|e| e.to_string())
}

impl Schema for Txns {
    type Key = TxnId;
    type Record = TxnRecord;
    const NAME: &'static str = "transaction";

    fn key(id: &TxnId) -> String {
        format!("{PREFIX}{}", id_key(*id))
    }
}

impl Listing for Txns {
    type Parent = ();

    fn prefix(_: &()) -> String {
        PREFIX.to_owned()
    }

    fn child(_: &(), rest: &str) -> Result<TxnId, String> {
        parse_id(rest)
    }
}

/// A deadline-index entry: the transaction it names is due at the deadline in its key. The
/// index holds exactly the open transactions, so it also counts them per client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineMark {
    pub owner: String,
    /// The transactional producer that began it, if any (a new epoch aborts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<String>,
}

impl JsonRecord for DeadlineMark {
    const FORMAT_VERSION: u32 = 1;
}

/// The deadline index: keys sort by deadline, then id; list with parent `()`.
#[derive(Debug)]
pub struct TxnDeadlines;

impl Schema for TxnDeadlines {
    type Key = (u64, TxnId);
    type Record = DeadlineMark;
    const NAME: &'static str = "transaction deadline";

    fn key((deadline_ms, id): &(u64, TxnId)) -> String {
        format!("{DEADLINE_PREFIX}{deadline_ms:020}/{}", id_key(*id))
    }
}

impl Listing for TxnDeadlines {
    type Parent = ();

    fn prefix(_: &()) -> String {
        DEADLINE_PREFIX.to_owned()
    }

    fn child(_: &(), rest: &str) -> Result<(u64, TxnId), String> {
        parse_time_and_id(rest)
    }
}

/// A transaction wrote to the partition, starting at `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnPartitionMark {
    pub first: Position,
}

impl JsonRecord for TxnPartitionMark {
    const FORMAT_VERSION: u32 = 1;
}

/// The transactions of each partition, keyed by (topic, id); list those of a topic.
#[derive(Debug)]
pub struct TxnPartitions;

impl Schema for TxnPartitions {
    type Key = (TopicName, TxnId);
    type Record = TxnPartitionMark;
    const NAME: &'static str = "transaction partition";

    fn key((topic, id): &(TopicName, TxnId)) -> String {
        format!("{PARTITION_PREFIX}{}/{}", topic.path(), id_key(*id))
    }
}

impl Listing for TxnPartitions {
    type Parent = TopicName;

    fn prefix(topic: &TopicName) -> String {
        format!("{PARTITION_PREFIX}{}/", topic.path())
    }

    fn child(topic: &TopicName, rest: &str) -> Result<(TopicName, TxnId), String> {
        Ok((topic.clone(), parse_id(rest)?))
    }
}

/// Messages acknowledged in `txn` by one ack write, applied to the cursor if it commits.
/// The record's key names the first; the others follow in `more`. One record per write
/// rather than per message: a transaction acknowledging 100 messages costs one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAck {
    pub txn: TxnId,
    /// Messages in the keyed message's entry (to acknowledge one index of a batch).
    pub batch_size: u32,
    /// The write's other messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<HeldAck>,
}

impl PendingAck {
    /// Every message the record holds, `first` being the one its key names.
    pub fn acks(&self, first: MessageId) -> impl Iterator<Item = HeldAck> + '_ {
        let keyed = HeldAck {
            id: first,
            batch_size: self.batch_size,
        };
        std::iter::once(keyed).chain(self.more.iter().copied())
    }
}

impl JsonRecord for PendingAck {
    /// 2: `more` (format 1 held one message per record).
    const FORMAT_VERSION: u32 = 2;

    fn upgrade(version: u32, raw: &[u8]) -> Result<Self, DecodeError> {
        match version {
            // The same fields, without `more`.
            1 => serde_json::from_slice(raw).map_err(|e| DecodeError::Malformed(e.to_string())),
            found => Err(DecodeError::UnsupportedVersion {
                found,
                supported: Self::FORMAT_VERSION,
            }),
        }
    }
}

/// A message held by a pending-ack record, with its entry's batch size. Stored as
/// `[ledger, entry, index, batch size]`, so that a record of many stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "[u64; 4]", try_from = "[u64; 4]")]
pub struct HeldAck {
    pub id: MessageId,
    pub batch_size: u32,
}

impl From<HeldAck> for [u64; 4] {
    fn from(a: HeldAck) -> Self {
        let id = a.id;
        [
            id.ledger.0,
            id.entry.0,
            u64::from(id.batch_index),
            u64::from(a.batch_size),
        ]
    }
}

impl TryFrom<[u64; 4]> for HeldAck {
    type Error = String;

    fn try_from([ledger, entry, index, size]: [u64; 4]) -> Result<Self, String> {
        let small =
            |n: u64, what: &str| u32::try_from(n).map_err(|_| format!("{what} {n} too big"));
        Ok(HeldAck {
            id: MessageId::new(ledger, entry, small(index, "batch index")?),
            batch_size: small(size, "batch size")?,
        })
    }
}

/// The pending acks of each subscription: keyed by (cursor, message), listed per cursor.
#[derive(Debug)]
pub struct PendingAcks;

impl Schema for PendingAcks {
    type Key = (CursorKey, MessageId);
    type Record = PendingAck;
    const NAME: &'static str = "pending ack";

    fn key((cursor, id): &(CursorKey, MessageId)) -> String {
        format!(
            "{ACK_PREFIX}{}/{}/{:020}-{:020}-{:010}",
            cursor.topic.path(),
            cursor.subscription,
            id.ledger.0,
            id.entry.0,
            id.batch_index
        )
    }
}

impl Listing for PendingAcks {
    type Parent = CursorKey;

    fn prefix(cursor: &CursorKey) -> String {
        format!(
            "{ACK_PREFIX}{}/{}/",
            cursor.topic.path(),
            cursor.subscription
        )
    }

    fn child(cursor: &CursorKey, rest: &str) -> Result<(CursorKey, MessageId), String> {
        let bad = || format!("{rest:?} is not <ledger>-<entry>-<index>");
        let mut parts = rest.splitn(3, '-');
        let mut next = || parts.next().ok_or_else(bad);
        let (l, e, i) = (next()?, next()?, next()?);
        let id = MessageId::new(
            l.parse().map_err(|_| bad())?,
            e.parse().map_err(|_| bad())?,
            i.parse().map_err(|_| bad())?,
        );
        Ok((cursor.clone(), id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: TxnId = TxnId(7);

    fn topic(name: &str) -> TopicName {
        TopicName::parse(name).expect("topic")
    }

    fn open_with_partition() -> TxnRecord {
        let mut t = TxnRecord::open("client-a", 1_000, 30_000);
        assert_eq!(t.deadline_ms, 31_000);
        assert_eq!(
            t.register_partition(ID, &topic("p0"), Position::new(3, 10)),
            Ok(true)
        );
        t
    }

    /// A pending-ack record holds every message of its write, the keyed one first, in a
    /// compact form; a record written before `more` existed reads as its one message.
    #[test]
    fn pending_ack_records_hold_their_whole_write() {
        use crate::tables::Record;
        let first = MessageId::new(3, 10, 0);
        let more = vec![
            HeldAck {
                id: MessageId::new(3, 11, 2),
                batch_size: 5,
            },
            HeldAck {
                id: MessageId::new(4, 0, 0),
                batch_size: 1,
            },
        ];
        let record = PendingAck {
            txn: ID,
            batch_size: 1,
            more: more.clone(),
        };
        let raw = record.encode().expect("encode");
        let text = std::str::from_utf8(&raw).expect("json");
        assert!(text.contains("[3,11,2,5]"), "compact: {text}");
        let back = PendingAck::decode(&raw).expect("decode");
        assert_eq!(back, record);
        let all: Vec<HeldAck> = back.acks(first).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].id, first);
        assert_eq!(&all[1..], &more[..]);

        let v1 = br#"{"format_version":1,"txn":7,"batch_size":4}"#;
        let old = PendingAck::decode(v1).expect("format 1");
        assert_eq!(
            old.acks(first)
                .map(|a| (a.id, a.batch_size))
                .collect::<Vec<_>>(),
            vec![(first, 4)]
        );

        let too_big = br#"{"format_version":2,"txn":7,"batch_size":1,"more":[[1,2,4294967296,1]]}"#;
        assert!(
            PendingAck::decode(too_big).is_err(),
            "a batch index beyond u32 is refused"
        );
    }

    /// A partition is registered once: the second write of the same partition changes
    /// nothing, so the broker writes the metastore once per partition per transaction.
    #[test]
    fn a_partition_is_registered_once() {
        let mut t = open_with_partition();
        assert_eq!(
            t.register_partition(ID, &topic("p0"), Position::new(3, 12)),
            Ok(false)
        );
        assert_eq!(
            t.partitions["persistent://public/default/p0"].first,
            Position::new(3, 10)
        );
        assert_eq!(t.register_subscription(ID, &topic("in"), "s"), Ok(true));
        assert_eq!(t.register_subscription(ID, &topic("in"), "s"), Ok(false));
    }

    /// Commit fixes each partition's range; committing again answers the same; aborting a
    /// committed one is refused; entries beyond the range are not delivered.
    #[test]
    fn commit_is_idempotent_and_fixes_the_range() {
        let mut t = open_with_partition();
        let p0 = "persistent://public/default/p0".to_owned();
        let last = BTreeMap::from([(p0.clone(), Position::new(3, 20))]);
        assert_eq!(t.commit(ID, &last, 2_000), Ok(Decided::Now));
        assert_eq!(t.state, TxnState::Committed);
        assert_eq!(t.decided_ms, Some(2_000));
        assert_eq!(t.commit(ID, &last, 3_000), Ok(Decided::Already));
        assert_eq!(
            t.decided_ms,
            Some(2_000),
            "a repeated commit changes nothing"
        );
        assert!(matches!(
            t.abort(ID, false, 3_000),
            Err(TxnRuleError::AlreadyDecided { .. })
        ));
        assert!(t.delivers(&topic("p0"), Position::new(3, 15)));
        assert!(t.delivers(&topic("p0"), Position::new(3, 20)));
        assert!(
            !t.delivers(&topic("p0"), Position::new(3, 21)),
            "late write"
        );
        assert!(
            !t.delivers(&topic("p1"), Position::new(3, 15)),
            "not a participant"
        );
        assert!(matches!(
            t.register_partition(ID, &topic("p1"), Position::new(4, 0)),
            Err(TxnRuleError::NotOpen { .. })
        ));
    }

    /// A commit must say where each partition's writes end, and not before they start.
    #[test]
    fn commit_needs_a_valid_range_for_every_partition() {
        let mut t = open_with_partition();
        assert!(matches!(
            t.commit(ID, &BTreeMap::new(), 2_000),
            Err(TxnRuleError::MissingLastPosition { .. })
        ));
        let before = BTreeMap::from([(
            "persistent://public/default/p0".to_owned(),
            Position::new(3, 9),
        )]);
        assert!(matches!(
            t.commit(ID, &before, 2_000),
            Err(TxnRuleError::BadRange { .. })
        ));
        assert_eq!(t.state, TxnState::Open, "a refused commit leaves it open");
    }

    /// Abort and timeout are idempotent, never deliver, and refuse a later commit.
    #[test]
    fn aborted_transactions_stay_aborted() {
        for timed_out in [false, true] {
            let mut t = open_with_partition();
            assert_eq!(t.abort(ID, timed_out, 5_000), Ok(Decided::Now));
            let expected = if timed_out {
                TxnState::TimedOut
            } else {
                TxnState::Aborted
            };
            assert_eq!(t.state, expected);
            assert_eq!(t.abort(ID, !timed_out, 6_000), Ok(Decided::Already));
            assert_eq!(t.state, expected, "the first decision stands");
            assert!(matches!(
                t.commit(ID, &BTreeMap::new(), 6_000),
                Err(TxnRuleError::AlreadyDecided { .. })
            ));
            assert!(!t.delivers(&topic("p0"), Position::new(3, 10)));
        }
    }

    /// Only the client that began the transaction may act in it, and only while it is open.
    #[test]
    fn only_the_owner_acts_in_an_open_transaction() {
        let mut t = open_with_partition();
        assert_eq!(t.check_open(ID, "client-a"), Ok(()));
        assert_eq!(
            t.check_open(ID, "client-b"),
            Err(TxnRuleError::NotOwner { id: ID })
        );
        t.abort(ID, false, 2_000).expect("abort");
        assert!(matches!(
            t.check_open(ID, "client-a"),
            Err(TxnRuleError::NotOpen { .. })
        ));
    }

    /// Keys sort by deadline, then id, so a prefix scan yields the most overdue first.
    #[test]
    fn deadline_keys_sort_by_deadline() {
        let early = TxnDeadlines::key(&(999, TxnId(50)));
        let late = TxnDeadlines::key(&(1_000, TxnId(2)));
        assert!(early < late);
        let rest = &early[DEADLINE_PREFIX.len()..];
        assert_eq!(TxnDeadlines::child(&(), rest), Ok((999, TxnId(50))));
        assert!(TxnDeadlines::child(&(), "12/34").is_err());
        assert_eq!(Txns::child(&(), &Txns::key(&ID)[PREFIX.len()..]), Ok(ID));
    }

    /// Prepare fixes the ranges once; afterwards no new partition joins, only the group may
    /// decide besides the owner, and a commit keeps the prepared ranges. A group may commit
    /// only a prepared transaction.
    #[test]
    fn prepare_fixes_the_ranges_and_lets_the_group_commit() {
        let mut t = open_with_partition();
        t.group = Some("orders".into());
        let p0 = "persistent://public/default/p0".to_owned();
        assert_eq!(
            t.check_group(ID, "orders", true),
            Err(TxnRuleError::NotPrepared { id: ID })
        );
        assert!(
            t.check_group(ID, "orders", false).is_ok(),
            "abort needs no prepare"
        );
        let at = |e| BTreeMap::from([(p0.clone(), Position::new(3, e))]);
        assert!(matches!(
            t.prepare(ID, &at(5)),
            Err(TxnRuleError::BadRange { .. })
        ));
        assert_eq!(t.prepare(ID, &at(12)), Ok(Decided::Now));
        assert_eq!(t.prepare(ID, &at(12)), Ok(Decided::Already));
        assert_eq!(
            t.prepare(ID, &at(20)),
            Err(TxnRuleError::Prepared { id: ID }),
            "written after preparing"
        );
        assert_eq!(
            t.clone().commit(ID, &at(13), 2_000),
            Err(TxnRuleError::Prepared { id: ID }),
            "a commit would drop the entries written after preparing"
        );
        assert_eq!(
            t.register_partition(ID, &topic("p1"), Position::new(4, 0)),
            Err(TxnRuleError::Prepared { id: ID })
        );
        assert!(t.check_group(ID, "orders", true).is_ok());
        assert_eq!(
            t.check_group(ID, "billing", false),
            Err(TxnRuleError::NotInGroup {
                id: ID,
                group: "billing".into()
            })
        );
        // A commit without positions (a checker's) takes the prepared ones.
        assert_eq!(t.commit(ID, &BTreeMap::new(), 2_000), Ok(Decided::Now));
        assert!(t.delivers(&topic("p0"), Position::new(3, 12)));
        assert!(!t.delivers(&topic("p0"), Position::new(3, 13)));
    }
}
