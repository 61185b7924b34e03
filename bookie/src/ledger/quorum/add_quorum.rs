//! [`AddQuorum`]: the writer side of a replicated ledger. Counts acks per in-flight entry,
//! acknowledges entries in order, and drives ensemble changes when bookies fail.

use std::collections::VecDeque;

use strata_proto::EntryId;

use super::schedule::{IndexSet, WriteSchedule};

/// Why an [`AddQuorum`] stopped for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A failed bookie could not be replaced (not enough writable bookies, or the metadata
    /// compare-and-set lost to a recovery).
    EnsembleChangeFailed,
    /// A bookie answered that the ledger is fenced: a recovery took it over.
    Fenced,
}

/// A request [`AddQuorum`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddQuorumError {
    #[error("ensemble has {got} bookies, the schedule needs {expected}")]
    EnsembleSize { expected: usize, got: usize },
    #[error("bookie at ensemble index {index} appears twice in the ensemble")]
    DuplicateBookie { index: usize },
    #[error("entries must be sent in order: expected {expected}, got {got}")]
    OutOfOrder { expected: EntryId, got: EntryId },
    #[error("entry ids are exhausted")]
    EntryIdOverflow,
    #[error("no ensemble change is in progress")]
    NoChangeInProgress,
    #[error("ensemble index {index} is not waiting for a replacement")]
    NotFailed { index: usize },
    #[error("the writer stopped: {0:?}")]
    Stopped(Stop),
    #[error("{failed} failed bookies leave some write set below the ack quorum of {ack_quorum}")]
    BelowAckQuorum { failed: usize, ack_quorum: usize },
}

/// Send an entry to the bookie at this ensemble index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<B> {
    pub index: usize,
    pub bookie: B,
}

/// Send an outstanding entry again, to the replacement at `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resend<B> {
    pub entry: EntryId,
    pub index: usize,
    pub bookie: B,
}

/// Entries newly acknowledged to the client, in id order, and the last-add-confirmed after
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acknowledged {
    pub entries: Vec<EntryId>,
    pub lac: Option<EntryId>,
}

impl Acknowledged {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Replace these ensemble indexes; the new fragment starts at `first_entry` (LAC + 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEnsemble {
    pub first_entry: EntryId,
    pub failed: Vec<usize>,
}

/// What to do after [`AddQuorum::bookie_failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureAction {
    /// Pick replacements, compare-and-set the metadata with a new fragment, then call
    /// [`AddQuorum::ensemble_changed`] (or [`AddQuorum::stop`] if that is impossible).
    ChangeEnsemble(ChangeEnsemble),
    /// A change is already in progress; this bookie is replaced by the next one, which
    /// [`AddQuorum::ensemble_changed`] will ask for.
    Deferred,
    /// Not a member of the current ensemble, already failed, or the writer stopped.
    Ignored,
}

/// Outcome of [`AddQuorum::ensemble_changed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsembleChanged<B> {
    /// Outstanding entries the replacements must now store, by entry then index.
    pub resend: Vec<Resend<B>>,
    /// Entries that were held back during the change and are acknowledged now.
    pub acknowledged: Acknowledged,
    /// Bookies that failed during the change: replace them next.
    pub next_change: Option<ChangeEnsemble>,
}

/// Ack tracking of one ledger writer over an ensemble of bookies `B` (their ids) that can
/// change.
///
/// Rules (BookKeeper's):
///
/// - Entries are sent in id order; each goes to its write set ([`WriteSchedule`]).
/// - An entry is durable once Qa bookies of its write set acked it; it is acknowledged to the
///   client once it and every earlier entry are durable. The LAC is the last acknowledged
///   entry and never goes back.
/// - Acks count per bookie identity: a duplicate, an ack from a bookie outside the entry's
///   write set, or from a bookie that failed (or was replaced) is ignored.
/// - A failed bookie's earlier acks for outstanding entries are forgotten: the new fragment
///   will not name it, so they cannot count towards the entry's durability there.
/// - On a failure the ensemble changes: the new fragment starts at LAC + 1. While the change
///   is in progress nothing is acknowledged (the LAC stays at the fragment's start), new
///   entries skip the failed index, and further failures wait for the next change. Once the
///   metadata names the replacement, every outstanding entry whose write set holds the
///   replaced index is resent to it.
/// - If no replacement is available the change may be *postponed* (BookKeeper's delayed
///   ensemble change) as long as every write set keeps Qa members that have not failed:
///   entries are then acknowledged by the others, new entries skip the failed indexes, and the
///   missing copies are left to re-replication. [`retry_change`](AddQuorum::retry_change)
///   starts the change again later.
/// - If a change is impossible the writer stops: outstanding entries fail, nothing more is
///   acknowledged, entries at or below the LAC stay acknowledged.
#[derive(Debug, Clone)]
pub struct AddQuorum<B> {
    schedule: WriteSchedule,
    ensemble: Vec<B>,
    lac: Option<EntryId>,
    /// Id of `outstanding[0]` (LAC + 1).
    first_outstanding: u64,
    /// Acks per outstanding entry, by ensemble index.
    outstanding: VecDeque<IndexSet>,
    /// Indexes that failed and are not replaced yet.
    failed: IndexSet,
    /// First entry of the change in progress.
    changing: Option<EntryId>,
    stopped: Option<Stop>,
}

impl<B: Clone + Eq> AddQuorum<B> {
    /// Tracks a ledger whose entries up to `lac` are acknowledged already (`None` for a new
    /// ledger; a recovery re-writing entries after the LAC passes the LAC it found).
    pub fn new(
        schedule: WriteSchedule,
        ensemble: Vec<B>,
        lac: Option<EntryId>,
    ) -> Result<Self, AddQuorumError> {
        if ensemble.len() != schedule.ensemble_size() {
            return Err(AddQuorumError::EnsembleSize {
                expected: schedule.ensemble_size(),
                got: ensemble.len(),
            });
        }
        if let Some(index) = (1..ensemble.len()).find(|i| ensemble[..*i].contains(&ensemble[*i])) {
            return Err(AddQuorumError::DuplicateBookie { index });
        }
        let first_outstanding = next_id(lac).ok_or(AddQuorumError::EntryIdOverflow)?;
        Ok(AddQuorum {
            schedule,
            ensemble,
            lac,
            first_outstanding,
            outstanding: VecDeque::new(),
            failed: IndexSet::new(),
            changing: None,
            stopped: None,
        })
    }

    /// Records that `entry` (the next id) is being sent; returns the bookies to send it to:
    /// its write set minus failed indexes (those get it as a [`Resend`] after the change).
    pub fn sent(&mut self, entry: EntryId) -> Result<Vec<Target<B>>, AddQuorumError> {
        if let Some(stop) = self.stopped {
            return Err(AddQuorumError::Stopped(stop));
        }
        // `u64::MAX` is never assigned, so `first_outstanding + 1` cannot overflow.
        let expected = self
            .next_entry()
            .filter(|e| e.0 < u64::MAX)
            .ok_or(AddQuorumError::EntryIdOverflow)?;
        if entry != expected {
            return Err(AddQuorumError::OutOfOrder {
                expected,
                got: entry,
            });
        }
        self.outstanding.push_back(IndexSet::new());
        Ok(self
            .schedule
            .write_set(entry)
            .filter(|i| !self.failed.contains(*i))
            .map(|index| Target {
                index,
                bookie: self.ensemble[index].clone(),
            })
            .collect())
    }

    /// Records that `bookie` stored `entry`. Returns the entries acknowledged because of it.
    pub fn acked(&mut self, entry: EntryId, bookie: &B) -> Acknowledged {
        if self.stopped.is_some() {
            return Acknowledged::default();
        }
        let Some(index) = self.index_of(bookie) else {
            return Acknowledged::default();
        };
        if self.failed.contains(index) || !self.schedule.stores(entry, index) {
            return Acknowledged::default();
        }
        if let Some(slot) = self.slot(entry).and_then(|s| self.outstanding.get_mut(s)) {
            slot.insert(index);
        }
        self.release()
    }

    /// Records that `bookie` failed an add or timed out.
    pub fn bookie_failed(&mut self, bookie: &B) -> FailureAction {
        if self.stopped.is_some() {
            return FailureAction::Ignored;
        }
        let Some(index) = self.index_of(bookie) else {
            return FailureAction::Ignored;
        };
        if !self.failed.insert(index) {
            return FailureAction::Ignored;
        }
        for acks in &mut self.outstanding {
            acks.remove(index);
        }
        if self.changing.is_some() {
            return FailureAction::Deferred;
        }
        FailureAction::ChangeEnsemble(self.begin_change())
    }

    /// The metadata now names `replacements` (ensemble index, new bookie) in a fragment
    /// starting at the change's first entry. Each index must be failed; indexes left out stay
    /// failed and are asked for again in `next_change`.
    pub fn ensemble_changed(
        &mut self,
        replacements: &[(usize, B)],
    ) -> Result<EnsembleChanged<B>, AddQuorumError> {
        if let Some(stop) = self.stopped {
            return Err(AddQuorumError::Stopped(stop));
        }
        if self.changing.is_none() {
            return Err(AddQuorumError::NoChangeInProgress);
        }
        let mut ensemble = self.ensemble.clone();
        let mut replaced = IndexSet::new();
        for (index, bookie) in replacements {
            if !self.failed.contains(*index) || !replaced.insert(*index) {
                return Err(AddQuorumError::NotFailed { index: *index });
            }
            if ensemble.contains(bookie) {
                return Err(AddQuorumError::DuplicateBookie { index: *index });
            }
            ensemble[*index] = bookie.clone();
        }
        self.ensemble = ensemble;
        self.failed = self.failed.difference(replaced);
        self.changing = None;

        let mut resend = Vec::new();
        for (offset, acks) in self.outstanding.iter().enumerate() {
            let entry = EntryId(self.first_outstanding + offset as u64);
            for index in replaced.iter() {
                if self.schedule.stores(entry, index) && !acks.contains(index) {
                    resend.push(Resend {
                        entry,
                        index,
                        bookie: self.ensemble[index].clone(),
                    });
                }
            }
        }
        let acknowledged = self.release();
        let next_change = (!self.failed.is_empty()).then(|| self.begin_change());
        Ok(EnsembleChanged {
            resend,
            acknowledged,
            next_change,
        })
    }

    /// No replacement can be found now: end the change in progress and go on without the
    /// failed indexes, if every write set still has Qa members that did not fail. Returns the
    /// entries acknowledged because the change no longer holds them back.
    pub fn postpone_change(&mut self) -> Result<Acknowledged, AddQuorumError> {
        if let Some(stop) = self.stopped {
            return Err(AddQuorumError::Stopped(stop));
        }
        if self.changing.is_none() {
            return Err(AddQuorumError::NoChangeInProgress);
        }
        let (qw, qa) = (self.schedule.write_quorum(), self.schedule.ack_quorum());
        // A write set holds Qw consecutive indexes; the worst one contains every failed index
        // (when they fit in it), so Qw - |failed| >= Qa is what every write set needs.
        if self.failed.len() > qw - qa {
            return Err(AddQuorumError::BelowAckQuorum {
                failed: self.failed.len(),
                ack_quorum: qa,
            });
        }
        self.changing = None;
        Ok(self.release())
    }

    /// Starts again a change that was postponed: `Some` when failed indexes wait for a
    /// replacement and no change is in progress.
    pub fn retry_change(&mut self) -> Option<ChangeEnsemble> {
        if self.stopped.is_some() || self.changing.is_some() || self.failed.is_empty() {
            return None;
        }
        Some(self.begin_change())
    }

    /// Stops the writer for good: every outstanding entry fails (returned in order); entries
    /// at or below the LAC stay acknowledged. Idempotent (later calls return nothing).
    pub fn stop(&mut self, why: Stop) -> Vec<EntryId> {
        if self.stopped.is_some() {
            return Vec::new();
        }
        self.stopped = Some(why);
        self.changing = None;
        let first = self.first_outstanding;
        self.outstanding
            .drain(..)
            .enumerate()
            .map(|(i, _)| EntryId(first + i as u64))
            .collect()
    }

    /// The last entry acknowledged to the client.
    pub fn last_add_confirmed(&self) -> Option<EntryId> {
        self.lac
    }

    /// The id the next [`sent`](Self::sent) must carry (`None` once ids are exhausted).
    pub fn next_entry(&self) -> Option<EntryId> {
        self.first_outstanding
            .checked_add(self.outstanding.len() as u64)
            .map(EntryId)
    }

    /// Entries sent and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The current ensemble (failed members stay until replaced).
    pub fn ensemble(&self) -> &[B] {
        &self.ensemble
    }

    /// Indexes that failed and wait for a replacement.
    pub fn failed_indexes(&self) -> IndexSet {
        self.failed
    }

    /// First entry of the ensemble change in progress.
    pub fn changing(&self) -> Option<EntryId> {
        self.changing
    }

    pub fn stopped(&self) -> Option<Stop> {
        self.stopped
    }

    pub fn schedule(&self) -> WriteSchedule {
        self.schedule
    }

    fn begin_change(&mut self) -> ChangeEnsemble {
        let first_entry = EntryId(self.first_outstanding);
        self.changing = Some(first_entry);
        ChangeEnsemble {
            first_entry,
            failed: self.failed.iter().collect(),
        }
    }

    /// Pops the durable prefix of the outstanding entries, unless a change holds it back.
    fn release(&mut self) -> Acknowledged {
        let mut done = Acknowledged::default();
        if self.changing.is_some() {
            return done;
        }
        let qa = self.schedule.ack_quorum();
        while self
            .outstanding
            .front()
            .is_some_and(|acks| acks.len() >= qa)
        {
            self.outstanding.pop_front();
            let entry = EntryId(self.first_outstanding);
            self.first_outstanding += 1;
            self.lac = Some(entry);
            done.entries.push(entry);
        }
        done.lac = self.lac;
        done
    }

    fn index_of(&self, bookie: &B) -> Option<usize> {
        self.ensemble.iter().position(|b| b == bookie)
    }

    fn slot(&self, entry: EntryId) -> Option<usize> {
        let offset = usize::try_from(entry.0.checked_sub(self.first_outstanding)?).ok()?;
        (offset < self.outstanding.len()).then_some(offset)
    }
}

/// The id after `lac` (0 for none); `None` on overflow.
pub(crate) fn next_id(lac: Option<EntryId>) -> Option<u64> {
    match lac {
        None => Some(0),
        Some(l) => l.0.checked_add(1),
    }
}

#[cfg(test)]
#[path = "add_quorum_tests.rs"]
mod tests;
