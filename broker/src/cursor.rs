//! A subscription's cursor as a plain struct: which messages are acknowledged.
//!
//! `mark_delete` is the last position below which everything is acknowledged (`None`: nothing
//! yet). Above it, `acked` holds entries acknowledged out of order: whole entries, or some
//! batch indexes of an entry. The broker persists this whole state with every change it must
//! make durable, so after a restart delivery resumes at the first unacknowledged message and
//! skips anything acknowledged individually.

use std::collections::{BTreeMap, BTreeSet};

use strata_metastore::tables::CursorRecord;
pub use strata_metastore::tables::EntryAck;
use strata_proto::{MessageId, Position};

/// A subscription's acknowledgement state. Its stored form is
/// [`strata_metastore::tables::CursorRecord`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorState {
    pub mark_delete: Option<Position>,
    pub acked: BTreeMap<Position, EntryAck>,
}

impl From<CursorRecord> for CursorState {
    fn from(r: CursorRecord) -> Self {
        CursorState {
            mark_delete: r.mark_delete,
            acked: r.acked,
        }
    }
}

impl CursorState {
    /// A cursor whose everything up to and including `mark_delete` is acknowledged.
    pub fn at(mark_delete: Option<Position>) -> Self {
        Self {
            mark_delete,
            acked: BTreeMap::new(),
        }
    }

    /// The stored form of this state.
    pub fn to_record(&self) -> CursorRecord {
        CursorRecord {
            mark_delete: self.mark_delete,
            acked: self.acked.clone(),
        }
    }

    /// Whether the message is acknowledged.
    pub fn is_acked(&self, id: MessageId) -> bool {
        let pos = id.position();
        if self.mark_delete.is_some_and(|md| pos <= md) {
            return true;
        }
        match self.acked.get(&pos) {
            Some(EntryAck::Full) => true,
            Some(EntryAck::Partial { indexes, .. }) => indexes.contains(&id.batch_index),
            None => false,
        }
    }

    /// Whether every message of the entry at `pos` is acknowledged.
    pub fn is_entry_acked(&self, pos: Position) -> bool {
        self.mark_delete.is_some_and(|md| pos <= md)
            || matches!(self.acked.get(&pos), Some(EntryAck::Full))
    }

    /// Acknowledges one message of an entry holding `batch_size` messages.
    /// Returns false if it was already acknowledged.
    pub fn ack_individual(&mut self, id: MessageId, batch_size: u32) -> bool {
        if self.is_acked(id) {
            return false;
        }
        let pos = id.position();
        let entry = self.acked.entry(pos).or_insert_with(|| EntryAck::Partial {
            batch_size,
            indexes: BTreeSet::new(),
        });
        if let EntryAck::Partial {
            batch_size,
            indexes,
        } = entry
        {
            indexes.insert(id.batch_index);
            if indexes.len() as u32 >= *batch_size {
                *entry = EntryAck::Full;
            }
        }
        true
    }

    /// Acknowledges everything up to and including `id`. `entry_before` names the entry just
    /// before `id`'s (None if it is the first of the log), used when `id` is not the last of
    /// its batch. Returns false if nothing new was acknowledged.
    pub fn ack_cumulative(
        &mut self,
        id: MessageId,
        batch_size: u32,
        entry_before: Option<Position>,
    ) -> bool {
        if self.is_acked(id)
            && (id.batch_index + 1 >= batch_size || self.is_entry_acked(id.position()))
        {
            return false;
        }
        let pos = id.position();
        if id.batch_index + 1 >= batch_size {
            self.move_mark_delete(pos);
        } else {
            if let Some(before) = entry_before {
                self.move_mark_delete(before);
            }
            for index in 0..=id.batch_index {
                self.ack_individual(
                    MessageId {
                        batch_index: index,
                        ..id
                    },
                    batch_size,
                );
            }
        }
        true
    }

    fn move_mark_delete(&mut self, to: Position) {
        if self.mark_delete.is_some_and(|md| md >= to) {
            return;
        }
        self.mark_delete = Some(to);
        self.acked = self.acked.split_off(&next_after(to));
    }

    /// Moves mark-delete over fully acknowledged entries that directly follow it.
    /// `next_of(p)` returns the entry that follows `p` in the log (None: unknown yet).
    pub fn compact(
        &mut self,
        first_entry: Option<Position>,
        next_of: impl Fn(Position) -> Option<Position>,
    ) {
        loop {
            let next = match self.mark_delete {
                Some(md) => next_of(md),
                None => first_entry,
            };
            match next {
                Some(n) if matches!(self.acked.get(&n), Some(EntryAck::Full)) => {
                    self.acked.remove(&n);
                    self.mark_delete = Some(n);
                }
                _ => return,
            }
        }
    }
}

/// The smallest position strictly greater than `p` (for range splits; it need not exist).
fn next_after(p: Position) -> Position {
    Position {
        ledger: p.ledger,
        entry: strata_proto::EntryId(p.entry.0.saturating_add(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(l: u64, e: u64, b: u32) -> MessageId {
        MessageId::new(l, e, b)
    }

    /// Individually acked messages are acked; others are not; acking twice reports no change.
    #[test]
    fn individual_acks_are_tracked_per_batch_index() {
        let mut c = CursorState::at(None);
        assert!(c.ack_individual(id(1, 0, 1), 3));
        assert!(c.is_acked(id(1, 0, 1)));
        assert!(!c.is_acked(id(1, 0, 0)));
        assert!(!c.ack_individual(id(1, 0, 1), 3), "second ack is a no-op");
        c.ack_individual(id(1, 0, 0), 3);
        assert!(!c.is_entry_acked(Position::new(1, 0)));
        c.ack_individual(id(1, 0, 2), 3);
        assert!(
            c.is_entry_acked(Position::new(1, 0)),
            "all three indexes make the entry whole"
        );
    }

    /// Cumulative ack covers everything before it, including earlier ledgers.
    #[test]
    fn cumulative_ack_acks_everything_up_to_the_id() {
        let mut c = CursorState::at(None);
        c.ack_individual(id(1, 7, 0), 1);
        assert!(c.ack_cumulative(id(2, 3, 0), 1, Some(Position::new(2, 2))));
        assert_eq!(c.mark_delete, Some(Position::new(2, 3)));
        assert!(c.is_acked(id(1, 999, 5)));
        assert!(
            c.acked.is_empty(),
            "entries below mark-delete are forgotten"
        );
        assert!(!c.is_acked(id(2, 4, 0)));
        assert!(
            !c.ack_cumulative(id(2, 1, 0), 1, Some(Position::new(2, 0))),
            "going backwards changes nothing"
        );
    }

    /// A cumulative ack in the middle of a batch acks the earlier indexes of that entry only.
    #[test]
    fn cumulative_ack_inside_a_batch_is_partial() {
        let mut c = CursorState::at(Some(Position::new(1, 0)));
        c.ack_cumulative(id(1, 2, 1), 4, Some(Position::new(1, 1)));
        assert_eq!(c.mark_delete, Some(Position::new(1, 1)));
        assert!(c.is_acked(id(1, 2, 0)) && c.is_acked(id(1, 2, 1)));
        assert!(!c.is_acked(id(1, 2, 2)));
    }

    /// Compaction moves mark-delete across consecutive whole entries, including a ledger switch.
    #[test]
    fn compact_moves_mark_delete_over_contiguous_acks() {
        let next_of = |p: Position| match (p.ledger.0, p.entry.0) {
            (1, 2) => Some(Position::new(3, 0)),
            (l, e) => Some(Position::new(l, e + 1)),
        };
        let mut c = CursorState::at(None);
        for (l, e) in [(1, 0), (1, 1), (1, 2), (3, 0), (3, 2)] {
            c.ack_individual(id(l, e, 0), 1);
        }
        c.compact(Some(Position::new(1, 0)), next_of);
        assert_eq!(c.mark_delete, Some(Position::new(3, 0)));
        assert_eq!(
            c.acked.keys().copied().collect::<Vec<_>>(),
            vec![Position::new(3, 2)],
            "a gap at 3:1 stops it"
        );
    }

    /// The state survives its stored form: to a record, encoded, decoded, and back.
    #[test]
    fn persisted_form_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        use strata_metastore::tables::Record;
        let mut c = CursorState::at(Some(Position::new(4, 4)));
        c.ack_individual(id(4, 6, 1), 2);
        c.ack_individual(id(4, 7, 0), 1);
        let stored = c.to_record().encode()?;
        assert_eq!(CursorState::from(CursorRecord::decode(&stored)?), c);
        Ok(())
    }
}
