//! Ledger recovery: [`LacRecovery`] (fence and read the last-add-confirmed until the
//! answers cover the ensemble), [`EntryRecovery`] (decide one entry from its write set's
//! answers) and [`RecoveryPlan`] (read forward from the LAC to the first absent entry).

use strata_proto::EntryId;

use super::add_quorum::next_id;
use super::schedule::{IndexSet, WriteSchedule};

/// A bookie's answer to "fence the ledger and tell me your last-add-confirmed".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LacAnswer {
    /// Fenced; its LAC (`None`: it has entries but no confirmed one yet).
    Lac(Option<EntryId>),
    /// Fenced (e.g. by another recovery) without reporting a LAC. It refuses the old writer
    /// from now on, so it counts towards coverage, but adds nothing to the LAC.
    Fenced,
    /// The bookie has nothing of the ledger: it never acked an entry of it (and records the
    /// fence).
    NoLedger,
    /// Failed or timed out: does not count.
    Error,
}

/// State of a [`LacRecovery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LacOutcome {
    /// Not enough answers yet.
    Pending,
    /// Coverage met: every ack quorum holds a fenced bookie, so the old writer can get
    /// nothing more acknowledged. `lac` is the highest LAC reported; every entry up to it was
    /// acknowledged, and reading forward from it finds the rest.
    Done { lac: Option<EntryId> },
    /// Too many errors: some write set has Qa bookies that failed, so coverage cannot be met.
    Failed,
}

/// Fence-and-read-LAC answers of the current ensemble. Decides as soon as it can; the first
/// decision sticks (later answers are ignored), as do the first answer of each bookie and
/// answers from indexes outside the ensemble.
#[derive(Debug, Clone)]
pub struct LacRecovery {
    schedule: WriteSchedule,
    answered: IndexSet,
    errored: IndexSet,
    max_lac: Option<EntryId>,
    outcome: LacOutcome,
}

impl LacRecovery {
    pub fn new(schedule: WriteSchedule) -> Self {
        LacRecovery {
            schedule,
            answered: IndexSet::new(),
            errored: IndexSet::new(),
            max_lac: None,
            outcome: LacOutcome::Pending,
        }
    }

    /// The indexes to send the fence to: the whole ensemble.
    pub fn targets(&self) -> impl Iterator<Item = usize> + use<> {
        0..self.schedule.ensemble_size()
    }

    /// Feeds the answer of the bookie at `index`.
    pub fn answer(&mut self, index: usize, answer: LacAnswer) -> LacOutcome {
        let all = IndexSet::all(self.schedule.ensemble_size());
        let seen = self.answered.union(self.errored);
        if self.outcome != LacOutcome::Pending || !all.contains(index) || seen.contains(index) {
            return self.outcome;
        }
        match answer {
            LacAnswer::Error => {
                self.errored.insert(index);
            }
            LacAnswer::Lac(lac) => {
                self.answered.insert(index);
                self.max_lac = self.max_lac.max(lac);
            }
            LacAnswer::Fenced | LacAnswer::NoLedger => {
                self.answered.insert(index);
            }
        }
        if self.schedule.lac_coverage(self.answered) {
            self.outcome = LacOutcome::Done { lac: self.max_lac };
        } else if !self.schedule.lac_coverage(all.difference(self.errored)) {
            self.outcome = LacOutcome::Failed;
        }
        self.outcome
    }

    pub fn outcome(&self) -> LacOutcome {
        self.outcome
    }
}

/// A bookie's answer to a recovery read of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryAnswer<P> {
    Found(P),
    /// The bookie is up and does not have the entry. Only a *fencing* read's answer counts:
    /// a bookie not fenced yet could store the entry for the old writer right after denying
    /// it, and the writer could complete it with an ack sent before the fence.
    NoSuchEntry,
    /// Failed or timed out: neither presence nor absence.
    Error,
}

/// What the answers so far say about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome<P> {
    Pending,
    /// Some replica has it: it is part of the ledger (re-write it to its write quorum).
    Recovered(P),
    /// Qw - Qa + 1 replicas of its write set do not have it: it was never acknowledged.
    Absent,
    /// Every replica answered, none has it, and too many failed to prove it absent.
    Unrecoverable,
}

/// Recovery read of one entry from its write set. The first decision sticks; answers from
/// outside the write set and second answers of a bookie are ignored.
#[derive(Debug, Clone)]
pub struct EntryRecovery<P> {
    schedule: WriteSchedule,
    entry: EntryId,
    no_such_entry: IndexSet,
    answered: IndexSet,
    outcome: EntryOutcome<P>,
}

impl<P: Clone> EntryRecovery<P> {
    pub fn new(schedule: WriteSchedule, entry: EntryId) -> Self {
        EntryRecovery {
            schedule,
            entry,
            no_such_entry: IndexSet::new(),
            answered: IndexSet::new(),
            outcome: EntryOutcome::Pending,
        }
    }

    pub fn entry(&self) -> EntryId {
        self.entry
    }

    /// The indexes to read from (all at once): the entry's write set.
    pub fn targets(&self) -> Vec<usize> {
        self.schedule.write_set(self.entry).collect()
    }

    /// Feeds the answer of the bookie at `index`; returns the (possibly new) outcome.
    pub fn answer(&mut self, index: usize, answer: EntryAnswer<P>) -> EntryOutcome<P> {
        if !matches!(self.outcome, EntryOutcome::Pending)
            || !self.schedule.stores(self.entry, index)
            || !self.answered.insert(index)
        {
            return self.outcome.clone();
        }
        match answer {
            EntryAnswer::Found(payload) => self.outcome = EntryOutcome::Recovered(payload),
            EntryAnswer::NoSuchEntry => {
                self.no_such_entry.insert(index);
                if self
                    .schedule
                    .absent_coverage(self.entry, self.no_such_entry)
                {
                    self.outcome = EntryOutcome::Absent;
                }
            }
            EntryAnswer::Error => {}
        }
        if matches!(self.outcome, EntryOutcome::Pending)
            && self.answered.len() == self.schedule.write_quorum()
        {
            self.outcome = EntryOutcome::Unrecoverable;
        }
        self.outcome.clone()
    }

    pub fn outcome(&self) -> &EntryOutcome<P> {
        &self.outcome
    }
}

/// What a [`RecoveryPlan`] asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryAction<P> {
    /// Read `entry` from these ensemble indexes, in parallel, with the fencing flag (the
    /// bookie fences the ledger before answering; see [`EntryAnswer::NoSuchEntry`]).
    Read { entry: EntryId, indexes: Vec<usize> },
    /// `entry` is part of the ledger: write it to its write quorum (recovery add, accepted by
    /// fenced bookies) before closing.
    Rewrite { entry: EntryId, payload: P },
    /// Done: once every rewrite is durable, compare-and-set the metadata to CLOSED at
    /// `last_entry`.
    Close { last_entry: Option<EntryId> },
    /// `entry` could be neither recovered nor proven absent; the recovery must be retried.
    Failed { entry: EntryId },
}

/// The read-forward phase of recovery: from the first entry after the LAC, read each entry
/// from its write set; a recovered entry is re-written and the next one read; the first
/// absent entry ends the ledger just before it. Entries are read one at a time.
///
/// Indexes refer to the last fragment's ensemble: every entry read is in it, since the plan
/// starts no earlier than the fragment's first entry.
#[derive(Debug, Clone)]
pub struct RecoveryPlan<P> {
    schedule: WriteSchedule,
    /// Last entry known to be in the ledger.
    last: Option<EntryId>,
    current: Option<EntryRecovery<P>>,
    finished: Option<RecoveryAction<P>>,
}

impl<P: Clone> RecoveryPlan<P> {
    /// Starts after `lac` (from [`LacRecovery`]), but never before `fragment_first`, the
    /// first entry of the last fragment: an ensemble change starts a fragment at the
    /// writer's LAC + 1, so every earlier entry was acknowledged, and later ones are stored
    /// on the last ensemble only.
    pub fn new(schedule: WriteSchedule, lac: Option<EntryId>, fragment_first: EntryId) -> Self {
        let floor = fragment_first.0.checked_sub(1).map(EntryId);
        let last = lac.max(floor);
        let mut plan = RecoveryPlan {
            schedule,
            last,
            current: None,
            finished: None,
        };
        match next_id(last) {
            Some(next) => plan.current = Some(EntryRecovery::new(schedule, EntryId(next))),
            None => plan.finished = Some(RecoveryAction::Close { last_entry: last }),
        }
        plan
    }

    /// The first action: read the entry after the LAC.
    pub fn start(&self) -> RecoveryAction<P> {
        self.next_action()
    }

    /// Feeds the answer of the bookie at `index` for `entry`. Answers for any other entry
    /// than the one being read are ignored (empty). Returns the actions to take now.
    pub fn answer(
        &mut self,
        entry: EntryId,
        index: usize,
        answer: EntryAnswer<P>,
    ) -> Vec<RecoveryAction<P>> {
        let Some(current) = self.current.as_mut().filter(|c| c.entry() == entry) else {
            return Vec::new();
        };
        match current.answer(index, answer) {
            EntryOutcome::Pending => Vec::new(),
            EntryOutcome::Recovered(payload) => {
                self.last = Some(entry);
                let rewrite = RecoveryAction::Rewrite { entry, payload };
                match next_id(self.last) {
                    Some(next) => {
                        self.current = Some(EntryRecovery::new(self.schedule, EntryId(next)));
                    }
                    None => self.finish(RecoveryAction::Close {
                        last_entry: self.last,
                    }),
                }
                vec![rewrite, self.next_action()]
            }
            EntryOutcome::Absent => {
                self.finish(RecoveryAction::Close {
                    last_entry: self.last,
                });
                vec![self.next_action()]
            }
            EntryOutcome::Unrecoverable => {
                self.finish(RecoveryAction::Failed { entry });
                vec![self.next_action()]
            }
        }
    }

    /// Last entry known to be in the ledger so far.
    pub fn last_recovered(&self) -> Option<EntryId> {
        self.last
    }

    /// The entry being read, if not finished.
    pub fn reading(&self) -> Option<EntryId> {
        self.current.as_ref().map(|c| c.entry())
    }

    /// The final action (`Close` or `Failed`) once decided.
    pub fn finished(&self) -> Option<&RecoveryAction<P>> {
        self.finished.as_ref()
    }

    fn finish(&mut self, action: RecoveryAction<P>) {
        self.current = None;
        self.finished = Some(action);
    }

    fn next_action(&self) -> RecoveryAction<P> {
        match (&self.current, &self.finished) {
            (Some(current), _) => RecoveryAction::Read {
                entry: current.entry(),
                indexes: current.targets(),
            },
            (None, Some(done)) => done.clone(),
            // `new` sets one of the two and every transition keeps it so.
            (None, None) => RecoveryAction::Close {
                last_entry: self.last,
            },
        }
    }
}

#[cfg(test)]
#[path = "recovery_tests.rs"]
mod tests;
