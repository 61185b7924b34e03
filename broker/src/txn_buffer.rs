//! What a partition knows of the transactions that wrote to it, and what a read-committed
//! subscription may deliver: plain structs, no I/O.
//!
//! The partition's *stable position* is the first entry of its oldest open transaction.
//! Read-committed subscriptions deliver only entries before it, so a partition is never
//! reordered: an entry (transactional or not) written after an open transaction began waits
//! until that transaction is decided. Entries of aborted transactions, and entries of a
//! committed one beyond the last position its commit fixed (late writes), are skipped.
//!
//! A decided transaction is then *settled*: what its readers must skip is reduced to one
//! [`SkippedRange`] (none for a commit without late writes), recorded per ledger in the
//! metastore, and the transaction itself is forgotten here. So an entry of a transaction the
//! buffer does not know is committed: every transactional entry is registered here before it
//! is written, and a transaction stays known until it is settled.

use std::collections::{BTreeMap, HashMap};

use strata_metastore::tables::{SkippedRange, TxnState};
use strata_proto::{EntryId, Position, TxnId};

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

/// Where a transaction's entries here lie: from `first` (at or before its first entry) to
/// before `before` (`None`: it has written nothing here yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first: Position,
    pub before: Option<Position>,
}

impl Span {
    fn wrote(&mut self, position: Position) {
        let next = after(position);
        self.before = Some(self.before.map_or(next, |b| b.max(next)));
    }
}

/// The least position after `p` (whether an entry exists there or not).
fn after(p: Position) -> Position {
    Position {
        ledger: p.ledger,
        entry: EntryId(p.entry.0.saturating_add(1)),
    }
}

/// A decided transaction to settle: what its readers must skip here, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub txn: TxnId,
    pub skip: Option<SkippedRange>,
}

#[derive(Debug, Default)]
pub struct TxnBuffer {
    /// Open transactions.
    open: BTreeMap<TxnId, Span>,
    /// Decided transactions not settled yet (`None`: decided before it opened here).
    decided: HashMap<TxnId, (Outcome, Option<Span>)>,
    /// Settled transactions' entries that are never delivered.
    skipped: HashMap<TxnId, SkippedRange>,
}

impl TxnBuffer {
    /// A transaction's first entry here (registered before that entry is appended).
    pub fn opened(&mut self, txn: TxnId, first: Position) {
        self.opened_span(
            txn,
            Span {
                first,
                before: None,
            },
        );
    }

    /// A transaction found open (or decided, then [`TxnBuffer::decided`] follows) when the
    /// partition is loaded: its entries so far lie before `log_end`.
    pub fn opened_span(&mut self, txn: TxnId, span: Span) {
        if !self.decided.contains_key(&txn) {
            self.open.entry(txn).or_insert(span);
        }
    }

    /// An entry of `txn` was appended at `position`. False if the transaction is not known
    /// here (a bug: batches are stored only for registered transactions).
    pub fn appended(&mut self, txn: TxnId, position: Position) -> bool {
        if let Some(span) = self.open.get_mut(&txn) {
            span.wrote(position);
        } else if let Some((_, Some(span))) = self.decided.get_mut(&txn) {
            // Admitted before the decision arrived: a late write, skipped when settled.
            span.wrote(position);
        } else {
            return false;
        }
        true
    }

    /// Forgets an open transaction that never wrote here (its registration failed).
    pub fn cancel(&mut self, txn: TxnId) {
        self.open.remove(&txn);
    }

    /// A transaction was decided. Idempotent; the first decision stands.
    pub fn decided(&mut self, txn: TxnId, outcome: Outcome) {
        let span = self.open.remove(&txn);
        self.decided.entry(txn).or_insert((outcome, span));
    }

    pub fn is_open(&self, txn: TxnId) -> bool {
        self.open.contains_key(&txn)
    }

    /// The decision of a transaction not settled yet.
    pub fn outcome(&self, txn: TxnId) -> Option<Outcome> {
        self.decided.get(&txn).map(|(o, _)| *o)
    }

    /// The open transactions, with their first entries.
    pub fn open_transactions(&self) -> impl Iterator<Item = (TxnId, Position)> + '_ {
        self.open.iter().map(|(t, s)| (*t, s.first))
    }

    /// The first entry read-committed consumers may not read yet; `None`: no transaction is
    /// open, everything durable may be read.
    pub fn stable_position(&self) -> Option<Position> {
        self.open.values().map(|s| s.first).min()
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
            Some((Outcome::Committed { last }, _)) if position <= *last => Visibility::Deliver,
            Some(_) => Visibility::Skip,
            None if self.skipped.get(&txn).is_some_and(|r| r.contains(position)) => {
                Visibility::Skip
            }
            // Settled with nothing to skip here: committed.
            None => Visibility::Deliver,
        }
    }

    /// What settling each decided transaction records. Call only once no entry of them can
    /// still be appended (they are decided, and no append admitted before is under way).
    pub fn settlements(&self) -> Vec<Settlement> {
        self.decided
            .iter()
            .map(|(txn, (outcome, span))| Settlement {
                txn: *txn,
                skip: span.and_then(|s| skipped_part(*outcome, s)),
            })
            .collect()
    }

    /// `settlement` is durable: the transaction is forgotten, its skipped range kept.
    pub fn settled(&mut self, settlement: Settlement) {
        self.decided.remove(&settlement.txn);
        if let Some(skip) = settlement.skip {
            self.skipped.insert(settlement.txn, skip);
        }
    }

    /// A settled transaction's range, read back when the partition is loaded. Two ranges of
    /// one transaction (settled by two owners) are merged: skipping more of its own entries
    /// is the safe reading.
    pub fn restore_skipped(&mut self, txn: TxnId, skip: SkippedRange) {
        self.skipped
            .entry(txn)
            .and_modify(|r| {
                r.from = r.from.min(skip.from);
                r.before = r.before.max(skip.before);
            })
            .or_insert(skip);
    }

    /// Drops the skipped ranges wholly before `first_kept` (their ledgers are deleted);
    /// returns them.
    pub fn trim_before(&mut self, first_kept: Position) -> Vec<(TxnId, SkippedRange)> {
        let gone: Vec<(TxnId, SkippedRange)> = self
            .skipped
            .iter()
            .filter(|(_, r)| r.before <= first_kept)
            .map(|(t, r)| (*t, *r))
            .collect();
        for (t, _) in &gone {
            self.skipped.remove(t);
        }
        gone
    }

    /// How many decided transactions wait to be settled, and how many ranges are kept.
    pub fn backlog(&self) -> (usize, usize) {
        (self.decided.len(), self.skipped.len())
    }
}

/// The part of a decided transaction's span its readers skip: all of an aborted one, and
/// what a committed one wrote after its last position.
fn skipped_part(outcome: Outcome, span: Span) -> Option<SkippedRange> {
    let before = span.before?;
    match outcome {
        Outcome::Aborted => SkippedRange::new(span.first, before),
        Outcome::Committed { last } => SkippedRange::new(after(last), before),
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

    /// Once settled, a transaction is forgotten: an aborted one's entries are skipped
    /// through its range alone, a committed one's are delivered (late writes skipped), and
    /// entries of transactions never known here are taken as committed.
    #[test]
    fn settled_transactions_keep_only_what_readers_skip() {
        let mut buf = TxnBuffer::default();
        buf.opened(A, at(1));
        buf.opened(B, at(2));
        for (txn, e) in [(A, 1), (B, 2), (A, 3), (B, 4), (B, 6)] {
            assert!(buf.appended(txn, at(e)));
        }
        assert!(!buf.appended(TxnId(9), at(5)), "never registered here");
        buf.decided(A, Outcome::Aborted);
        buf.decided(B, Outcome::Committed { last: at(4) });
        assert!(
            buf.appended(B, at(7)),
            "admitted before the decision: a late write"
        );
        let mut settlements = buf.settlements();
        settlements.sort_by_key(|s| s.txn);
        assert_eq!(
            settlements,
            vec![
                Settlement {
                    txn: A,
                    skip: SkippedRange::new(at(1), at(4)),
                },
                Settlement {
                    txn: B,
                    skip: SkippedRange::new(at(5), at(8)),
                },
            ]
        );
        for s in settlements {
            buf.settled(s);
        }
        assert_eq!(buf.outcome(A), None, "forgotten once settled");
        assert_eq!(buf.visibility(Some(A), at(3)), Visibility::Skip);
        assert_eq!(buf.visibility(Some(B), at(4)), Visibility::Deliver);
        assert_eq!(buf.visibility(Some(B), at(6)), Visibility::Skip);
        assert_eq!(buf.visibility(Some(B), at(7)), Visibility::Skip);
        assert_eq!(buf.visibility(Some(TxnId(9)), at(5)), Visibility::Deliver);
        assert_eq!(buf.backlog(), (0, 2));
    }

    /// A commit without late writes leaves nothing to skip; a transaction decided before it
    /// wrote anything here leaves nothing at all.
    #[test]
    fn clean_commits_and_empty_transactions_record_nothing() {
        let mut buf = TxnBuffer::default();
        buf.opened(A, at(1));
        assert!(buf.appended(A, at(1)) && buf.appended(A, at(2)));
        buf.decided(A, Outcome::Committed { last: at(2) });
        buf.opened(B, at(3));
        buf.decided(B, Outcome::Aborted);
        buf.decided(TxnId(5), Outcome::Aborted); // decided before it opened here
        assert!(buf.settlements().iter().all(|s| s.skip.is_none()));
    }

    /// A transaction found open when the partition is loaded may have written anywhere up to
    /// the log's end then: an abort skips all of that.
    #[test]
    fn a_transaction_restored_at_load_spans_to_the_log_end() {
        let mut buf = TxnBuffer::default();
        buf.opened_span(
            A,
            Span {
                first: at(2),
                before: Some(at(9)),
            },
        );
        buf.decided(A, Outcome::Aborted);
        assert_eq!(
            buf.settlements(),
            vec![Settlement {
                txn: A,
                skip: SkippedRange::new(at(2), at(9)),
            }]
        );
    }

    /// Ranges wholly in deleted ledgers are dropped; one reaching a kept ledger stays.
    #[test]
    fn trimming_drops_ranges_of_deleted_ledgers() {
        let mut buf = TxnBuffer::default();
        let old = SkippedRange::new(Position::new(1, 0), Position::new(1, 5)).expect("range");
        let spanning = SkippedRange::new(Position::new(1, 3), Position::new(2, 1)).expect("range");
        buf.restore_skipped(A, old);
        buf.restore_skipped(B, spanning);
        assert_eq!(buf.trim_before(Position::new(2, 0)), vec![(A, old)]);
        assert_eq!(
            buf.visibility(Some(B), Position::new(2, 0)),
            Visibility::Skip
        );
    }
}
