//! A coordinator's copy of the open transaction records it wrote last, and one turn at a time
//! per record.
//!
//! Every step of a transaction (register a partition, hold acks, decide) is a compare-and-set
//! of its record. Without this, each step first reads the record (a linearizable read, a round
//! through Raft), and two steps of one transaction on the same broker (its first send and its
//! first ack travel together) read the same version, so one of the two writes fails its
//! compare and is redone. With it, a step takes the record's turn, uses the copy this
//! coordinator wrote last as its guess, and leaves the record it wrote for the next step.
//!
//! The copy is only a guess: every write still compares the record's version, so a copy that
//! another node made stale fails its compare, is dropped, and the step reads the record again.
//! Decisions never un-happen, so a rule refusal found on a stale copy holds on the real one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strata_proto::TxnId;
use tokio::sync::OwnedMutexGuard;

use crate::tables::TxnRecord;

/// A record as this coordinator last saw it stored, with its key's version.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownRecord {
    pub record: TxnRecord,
    pub version: u64,
}

type Slot = Arc<tokio::sync::Mutex<Option<KnownRecord>>>;

/// Open records by transaction; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct RecordCache {
    slots: Mutex<HashMap<TxnId, Slot>>,
}

/// Slots kept before idle ones are dropped: well above the transactions one broker has open
/// at once, so a dropped slot only costs one read.
const MAX_SLOTS: usize = 16_384;

impl RecordCache {
    /// Waits for the record's turn: no other step of this coordinator writes the record
    /// until the turn is dropped.
    pub(crate) async fn turn(&self, id: TxnId) -> RecordTurn {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() >= MAX_SLOTS {
                // Idle slots (no turn taken or waited for) of transactions decided elsewhere.
                slots.retain(|_, s| Arc::strong_count(s) > 1);
            }
            slots.entry(id).or_default().clone()
        };
        RecordTurn {
            id,
            known: slot.lock_owned().await,
        }
    }

    /// Forgets a decided transaction (its record no longer changes through this coordinator).
    pub(crate) fn remove(&self, id: TxnId) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The turn on one record: the copy to guess from, if any.
#[derive(Debug)]
pub struct RecordTurn {
    id: TxnId,
    known: OwnedMutexGuard<Option<KnownRecord>>,
}

impl RecordTurn {
    pub fn id(&self) -> TxnId {
        self.id
    }

    /// The copy this coordinator holds, if any.
    pub fn known(&self) -> Option<&KnownRecord> {
        self.known.as_ref()
    }

    /// The record as just read or written (`None`: unknown, read it next time).
    pub fn set(&mut self, known: Option<KnownRecord>) {
        *self.known = known;
    }

    /// A write with `record` at `version` applied: the key is now at `version + 1`.
    pub fn wrote(&mut self, record: TxnRecord, version: u64) {
        self.set(Some(KnownRecord {
            record,
            version: version + 1,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> TxnRecord {
        TxnRecord::open("app", 0, 1_000)
    }

    /// A copy left by one turn is what the next turn of the same record starts from, and
    /// another record's turn does not see it.
    #[tokio::test]
    async fn a_turn_starts_from_what_the_last_one_wrote() {
        let cache = RecordCache::default();
        let mut first = cache.turn(TxnId(1)).await;
        assert_eq!(first.known(), None);
        first.wrote(open(), 1);
        drop(first);
        let second = cache.turn(TxnId(1)).await;
        assert_eq!(second.known().map(|k| k.version), Some(2));
        assert_eq!(cache.turn(TxnId(2)).await.known(), None);
    }

    /// Two steps of one transaction never hold its turn together: the second waits until the
    /// first is dropped (so they never compare against the same version).
    #[tokio::test]
    async fn turns_of_one_record_do_not_overlap() {
        let cache = Arc::new(RecordCache::default());
        let first = cache.turn(TxnId(7)).await;
        let waiting = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.turn(TxnId(7)).await.known().cloned() })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a second turn was given while the first was held"
        );
        let mut first = first;
        first.wrote(open(), 4);
        drop(first);
        let seen = waiting.await.expect("the waiting turn");
        assert_eq!(seen.map(|k| k.version), Some(5));
    }

    /// A decided transaction's copy is dropped, and idle slots do not pile up without bound.
    #[tokio::test]
    async fn slots_are_dropped_when_decided_or_idle() {
        let cache = RecordCache::default();
        cache.turn(TxnId(1)).await.wrote(open(), 1);
        cache.remove(TxnId(1));
        assert_eq!(cache.turn(TxnId(1)).await.known(), None);
        for i in 0..(MAX_SLOTS as u64 + 10) {
            cache.turn(TxnId(1_000 + i)).await.wrote(open(), 1);
        }
        assert!(cache.len() <= MAX_SLOTS, "{} slots kept", cache.len());
    }
}
