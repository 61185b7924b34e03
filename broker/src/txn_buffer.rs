//! What a partition knows of the transactions that wrote to it, and what a read-committed
//! subscription may deliver: plain structs, no I/O.
//!
//! The partition's *stable position* is the first entry of its oldest open transaction.
//! Read-committed subscriptions deliver only entries before it, so a partition is never
//! reordered: an entry (transactional or not) written after an open transaction began waits
//! until that transaction is decided. Entries of aborted transactions, and entries of a
//! committed one beyond the last position its commit fixed (late writes), are skipped.

use std::collections::{BTreeMap, HashMap};

use strata_metastore::tables::TxnState;
use strata_proto::{Position, TxnId};

/// How a transaction ended, as far as this partition is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed; its entries up to `last` are delivered, later ones are late writes.
    Committed {
        last: Position,
    },
    Aborted,
}

impl Outcome {
    /// The transaction state this outcome records.
    pub fn state(&self) -> TxnState {
        match self {
            Outcome::Committed { .. } => TxnState::Committed,
            Outcome::Aborted => TxnState::Aborted,
        }
    }
}

/// What a read-committed subscription does with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Deliver,
    /// An aborted transaction's entry, or a late write: never delivered.
    Skip,
    /// At or past the stable position: not yet.
    Wait,
}

#[derive(Debug, Default)]
pub struct TxnBuffer {
    /// Open transactions, by their first entry here.
    open: BTreeMap<TxnId, Position>,
    /// Decided transactions whose entries may still be read.
    decided: HashMap<TxnId, Outcome>,
}

impl TxnBuffer {
    /// A transaction's first entry here (registered before that entry is appended).
    pub fn opened(&mut self, txn: TxnId, first: Position) {
        if !self.decided.contains_key(&txn) {
            self.open.entry(txn).or_insert(first);
        }
    }

    /// Forgets an open transaction that never wrote here (its registration failed).
    pub fn cancel(&mut self, txn: TxnId) {
        self.open.remove(&txn);
    }

    /// A transaction was decided. Idempotent; the first decision stands.
    pub fn decided(&mut self, txn: TxnId, outcome: Outcome) {
        self.open.remove(&txn);
        self.decided.entry(txn).or_insert(outcome);
    }

    pub fn is_open(&self, txn: TxnId) -> bool {
        self.open.contains_key(&txn)
    }

    pub fn outcome(&self, txn: TxnId) -> Option<Outcome> {
        self.decided.get(&txn).copied()
    }

    /// The open transactions, with their first entries.
    pub fn open_transactions(&self) -> impl Iterator<Item = (TxnId, Position)> + '_ {
        self.open.iter().map(|(t, p)| (*t, *p))
    }

    /// The first entry read-committed consumers may not read yet; `None`: no transaction is
    /// open, everything durable may be read.
    pub fn stable_position(&self) -> Option<Position> {
        self.open.values().min().copied()
    }

    /// What a read-committed subscription does with the entry at `position` written in
    /// `txn` (`None`: not in a transaction).
    pub fn visibility(&self, txn: Option<TxnId>, position: Position) -> Visibility {
        if self
            .stable_position()
            .is_some_and(|stable| position >= stable)
        {
            return Visibility::Wait;
        }
        let Some(txn) = txn else {
            return Visibility::Deliver;
        };
        match self.decided.get(&txn) {
            Some(Outcome::Committed { last }) if position <= *last => Visibility::Deliver,
            Some(_) => Visibility::Skip,
            // Every transactional entry is registered before it is written, so an unknown
            // one is from a transaction this broker has not learnt of yet.
            None => Visibility::Wait,
        }
    }

    /// Forgets decided transactions with no entry at or after `read_from` (every
    /// subscription is past them): `last_entry` gives a transaction's last entry here.
    pub fn forget_before(
        &mut self,
        read_from: Position,
        last_entry: impl Fn(TxnId) -> Option<Position>,
    ) -> Vec<TxnId> {
        let gone: Vec<TxnId> = self
            .decided
            .keys()
            .copied()
            .filter(|t| last_entry(*t).is_none_or(|last| last < read_from))
            .collect();
        for t in &gone {
            self.decided.remove(t);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(entry: u64) -> Position {
        Position::new(1, entry)
    }

    const A: TxnId = TxnId(1);
    const B: TxnId = TxnId(2);

    /// The stable position is the first entry of the oldest open transaction; nothing at or
    /// after it is delivered, transactional or not, so no entry overtakes another.
    #[test]
    fn nothing_passes_the_oldest_open_transaction() {
        let mut buf = TxnBuffer::default();
        assert_eq!(buf.stable_position(), None);
        assert_eq!(buf.visibility(None, at(0)), Visibility::Deliver);
        buf.opened(A, at(5));
        buf.opened(B, at(3));
        assert_eq!(buf.stable_position(), Some(at(3)));
        assert_eq!(buf.visibility(None, at(2)), Visibility::Deliver);
        assert_eq!(buf.visibility(None, at(4)), Visibility::Wait);
        assert_eq!(buf.visibility(Some(A), at(5)), Visibility::Wait);
        buf.decided(B, Outcome::Aborted);
        assert_eq!(buf.stable_position(), Some(at(5)));
        assert_eq!(buf.visibility(Some(B), at(3)), Visibility::Skip);
        assert_eq!(buf.visibility(None, at(4)), Visibility::Deliver);
        assert_eq!(
            buf.visibility(None, at(6)),
            Visibility::Wait,
            "A still open"
        );
        buf.decided(A, Outcome::Committed { last: at(7) });
        assert_eq!(buf.stable_position(), None);
        assert_eq!(buf.visibility(Some(A), at(5)), Visibility::Deliver);
        assert_eq!(buf.visibility(Some(A), at(7)), Visibility::Deliver);
        assert_eq!(
            buf.visibility(Some(A), at(8)),
            Visibility::Skip,
            "late write"
        );
    }

    /// A decision is final: a repeated or contradicting one, or a registration after it,
    /// changes nothing.
    #[test]
    fn the_first_decision_stands() {
        let mut buf = TxnBuffer::default();
        buf.opened(A, at(1));
        buf.decided(A, Outcome::Aborted);
        buf.decided(A, Outcome::Committed { last: at(9) });
        buf.opened(A, at(4));
        assert_eq!(buf.outcome(A), Some(Outcome::Aborted));
        assert!(!buf.is_open(A));
        assert_eq!(buf.visibility(Some(A), at(1)), Visibility::Skip);
    }

    /// An entry of a transaction the broker has not heard of waits rather than being
    /// delivered early.
    #[test]
    fn unknown_transactions_wait() {
        let buf = TxnBuffer::default();
        assert_eq!(buf.visibility(Some(A), at(0)), Visibility::Wait);
    }

    /// Decided transactions are forgotten once every reader is past their last entry.
    #[test]
    fn decided_transactions_are_forgotten_behind_the_readers() {
        let mut buf = TxnBuffer::default();
        buf.opened(A, at(1));
        buf.opened(B, at(2));
        buf.decided(A, Outcome::Aborted);
        buf.decided(B, Outcome::Committed { last: at(6) });
        let last = |t: TxnId| Some(if t == A { at(3) } else { at(6) });
        assert_eq!(buf.forget_before(at(4), last), vec![A]);
        assert_eq!(buf.outcome(A), None);
        assert_eq!(buf.outcome(B), Some(Outcome::Committed { last: at(6) }));
    }
}
