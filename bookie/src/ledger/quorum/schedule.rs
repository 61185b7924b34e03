//! [`WriteSchedule`]: which bookies of an ensemble store which entry, and the coverage rules
//! recovery decides by. [`IndexSet`]: a set of ensemble indexes.

use strata_proto::EntryId;

use crate::ledger::LedgerConfig;

/// Largest ensemble a [`WriteSchedule`] accepts (an [`IndexSet`] is one `u64`).
pub const MAX_ENSEMBLE_SIZE: usize = 64;

/// Why a [`WriteSchedule`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The sizes break `E >= Qw >= Qa >= 1`.
    #[error(
        "need ensemble_size >= write_quorum >= ack_quorum >= 1, got E={ensemble_size} Qw={write_quorum} Qa={ack_quorum}"
    )]
    InvalidQuorum {
        ensemble_size: usize,
        write_quorum: usize,
        ack_quorum: usize,
    },
    /// The ensemble is larger than [`MAX_ENSEMBLE_SIZE`].
    #[error("ensemble_size {ensemble_size} exceeds the maximum {max}")]
    EnsembleTooLarge { ensemble_size: usize, max: usize },
}

/// A set of ensemble indexes (`0..MAX_ENSEMBLE_SIZE`). Indexes out of range are never members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IndexSet(u64);

impl IndexSet {
    /// The empty set.
    pub const fn new() -> Self {
        IndexSet(0)
    }

    /// `0..n` (all of an ensemble of `n`); `n` is capped at [`MAX_ENSEMBLE_SIZE`].
    pub fn all(n: usize) -> Self {
        if n >= MAX_ENSEMBLE_SIZE {
            IndexSet(u64::MAX)
        } else {
            IndexSet((1u64 << n) - 1)
        }
    }

    /// Adds `index`; returns whether it was new. Out-of-range indexes are refused (`false`).
    pub fn insert(&mut self, index: usize) -> bool {
        let Some(bit) = Self::bit(index) else {
            return false;
        };
        let new = self.0 & bit == 0;
        self.0 |= bit;
        new
    }

    /// Removes `index`; returns whether it was present.
    pub fn remove(&mut self, index: usize) -> bool {
        let Some(bit) = Self::bit(index) else {
            return false;
        };
        let present = self.0 & bit != 0;
        self.0 &= !bit;
        present
    }

    pub fn contains(&self, index: usize) -> bool {
        Self::bit(index).is_some_and(|bit| self.0 & bit != 0)
    }

    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// Members in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_ENSEMBLE_SIZE).filter(|i| self.contains(*i))
    }

    pub fn union(self, other: IndexSet) -> IndexSet {
        IndexSet(self.0 | other.0)
    }

    pub fn intersection(self, other: IndexSet) -> IndexSet {
        IndexSet(self.0 & other.0)
    }

    /// Members of `self` not in `other`.
    pub fn difference(self, other: IndexSet) -> IndexSet {
        IndexSet(self.0 & !other.0)
    }

    fn bit(index: usize) -> Option<u64> {
        (index < MAX_ENSEMBLE_SIZE).then(|| 1u64 << index)
    }
}

impl FromIterator<usize> for IndexSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        let mut set = IndexSet::new();
        for i in iter {
            set.insert(i);
        }
        set
    }
}

/// Round-robin striping of a ledger over an ensemble of E bookies: entry `e` is stored on the
/// Qw indexes `e mod E, e mod E + 1, ...` (mod E) and is durable at Qa acks among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSchedule {
    ensemble_size: usize,
    write_quorum: usize,
    ack_quorum: usize,
}

impl WriteSchedule {
    /// Checks `E >= Qw >= Qa >= 1` and `E <= MAX_ENSEMBLE_SIZE`.
    pub fn new(
        ensemble_size: usize,
        write_quorum: usize,
        ack_quorum: usize,
    ) -> Result<Self, ScheduleError> {
        if ack_quorum == 0 || write_quorum < ack_quorum || ensemble_size < write_quorum {
            return Err(ScheduleError::InvalidQuorum {
                ensemble_size,
                write_quorum,
                ack_quorum,
            });
        }
        if ensemble_size > MAX_ENSEMBLE_SIZE {
            return Err(ScheduleError::EnsembleTooLarge {
                ensemble_size,
                max: MAX_ENSEMBLE_SIZE,
            });
        }
        Ok(WriteSchedule {
            ensemble_size,
            write_quorum,
            ack_quorum,
        })
    }

    /// E.
    pub fn ensemble_size(&self) -> usize {
        self.ensemble_size
    }

    /// Qw.
    pub fn write_quorum(&self) -> usize {
        self.write_quorum
    }

    /// Qa.
    pub fn ack_quorum(&self) -> usize {
        self.ack_quorum
    }

    /// Ensemble index the write set of `entry` starts at.
    pub fn first_index(&self, entry: EntryId) -> usize {
        // `ensemble_size` fits in a u64 and the remainder is below it.
        (entry.0 % self.ensemble_size as u64) as usize
    }

    /// The Qw ensemble indexes that store `entry`, starting at `entry mod E`.
    pub fn write_set(&self, entry: EntryId) -> impl Iterator<Item = usize> + Clone + use<> {
        let (first, e) = (self.first_index(entry), self.ensemble_size);
        (0..self.write_quorum).map(move |i| (first + i) % e)
    }

    /// [`write_set`](Self::write_set) as a set.
    pub fn write_set_of(&self, entry: EntryId) -> IndexSet {
        self.write_set(entry).collect()
    }

    /// Whether ensemble index `index` stores `entry`.
    pub fn stores(&self, entry: EntryId, index: usize) -> bool {
        if index >= self.ensemble_size {
            return false;
        }
        let e = self.ensemble_size;
        (index + e - self.first_index(entry)) % e < self.write_quorum
    }

    /// Whether the bookies in `answered` cover the ensemble for a last-add-confirmed read or
    /// a fence: every write set has fewer than Qa indexes outside `answered`, so no ack
    /// quorum of any entry can form without one of them (once fenced, the old writer can get
    /// nothing more acknowledged; the max of their LACs is at least the last one it sent).
    pub fn lac_coverage(&self, answered: IndexSet) -> bool {
        let all = IndexSet::all(self.ensemble_size);
        // Entries `0..E` start their write sets at every index once.
        (0..self.ensemble_size as u64).all(|e| {
            let missing = self.write_set_of(EntryId(e)).difference(answered);
            missing.intersection(all).len() < self.ack_quorum
        })
    }

    /// Whether the indexes in `no_such_entry` (bookies that answered "no such entry" for
    /// `entry`) prove it was never acknowledged: Qw - Qa + 1 of them in its write set, so
    /// every ack quorum of the write set contains one. Indexes outside the write set do not
    /// count.
    pub fn absent_coverage(&self, entry: EntryId, no_such_entry: IndexSet) -> bool {
        let within = self.write_set_of(entry).intersection(no_such_entry);
        within.len() > self.write_quorum - self.ack_quorum
    }
}

impl TryFrom<LedgerConfig> for WriteSchedule {
    type Error = ScheduleError;

    fn try_from(config: LedgerConfig) -> Result<Self, Self::Error> {
        WriteSchedule::new(
            config.ensemble_size as usize,
            config.write_quorum as usize,
            config.ack_quorum as usize,
        )
    }
}

/// Every valid schedule with `E <= max_e` (for exhaustive tests).
#[cfg(test)]
pub(crate) fn all_schedules(max_e: usize) -> Vec<WriteSchedule> {
    let mut out = Vec::new();
    for e in 1..=max_e {
        for qw in 1..=e {
            for qa in 1..=qw {
                if let Ok(s) = WriteSchedule::new(e, qw, qa) {
                    out.push(s);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All subsets of `set` with exactly `k` members.
    fn subsets_of_size(set: IndexSet, k: usize) -> Vec<IndexSet> {
        let members: Vec<usize> = set.iter().collect();
        (0u64..1 << members.len())
            .filter(|mask| mask.count_ones() as usize == k)
            .map(|mask| {
                members
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, m)| *m)
                    .collect()
            })
            .collect()
    }

    fn subsets(n: usize) -> impl Iterator<Item = IndexSet> {
        (0u64..1 << n).map(move |mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
    }

    /// Exactly the sizes with `E >= Qw >= Qa >= 1` (and E within the maximum) are accepted.
    #[test]
    fn validation_accepts_exactly_the_quorum_rule() {
        for e in 0..=7 {
            for qw in 0..=7 {
                for qa in 0..=7 {
                    let ok = e >= qw && qw >= qa && qa >= 1;
                    let got = WriteSchedule::new(e, qw, qa);
                    assert_eq!(got.is_ok(), ok, "E={e} Qw={qw} Qa={qa}");
                    if !ok {
                        assert!(matches!(got, Err(ScheduleError::InvalidQuorum { .. })));
                    }
                }
            }
        }
        assert!(WriteSchedule::new(64, 3, 2).is_ok());
        assert_eq!(
            WriteSchedule::new(65, 3, 2),
            Err(ScheduleError::EnsembleTooLarge {
                ensemble_size: 65,
                max: 64
            })
        );
        let config = LedgerConfig {
            ensemble_size: 3,
            write_quorum: 4,
            ack_quorum: 2,
        };
        assert!(WriteSchedule::try_from(config).is_err());
    }

    /// A write set is Qw distinct consecutive indexes (mod E) starting at `e mod E`, `stores`
    /// agrees with it, and every index stores exactly Qw of any E consecutive entries.
    #[test]
    fn write_sets_stripe_round_robin() {
        for s in all_schedules(6) {
            let (e, qw) = (s.ensemble_size(), s.write_quorum());
            for entry in 0..(3 * e as u64) {
                let set: Vec<usize> = s.write_set(EntryId(entry)).collect();
                assert_eq!(set.len(), qw, "{s:?} entry {entry}");
                assert_eq!(set[0], (entry % e as u64) as usize);
                for pair in set.windows(2) {
                    assert_eq!(pair[1], (pair[0] + 1) % e);
                }
                assert_eq!(s.write_set_of(EntryId(entry)).len(), qw, "distinct");
                for index in 0..e + 2 {
                    assert_eq!(s.stores(EntryId(entry), index), set.contains(&index));
                }
            }
            for index in 0..e {
                for start in 0..e as u64 {
                    let stored = (start..start + e as u64)
                        .filter(|x| s.stores(EntryId(*x), index))
                        .count();
                    assert_eq!(stored, qw, "{s:?} index {index}");
                }
            }
        }
    }

    /// For every schedule with E <= 5 and every set of answering bookies: LAC coverage holds
    /// iff no ack quorum (Qa indexes) inside any write set consists only of bookies that did
    /// not answer.
    #[test]
    fn lac_coverage_iff_no_ack_quorum_of_silent_bookies() {
        for s in all_schedules(5) {
            let e = s.ensemble_size();
            for answered in subsets(e) {
                let silent_quorum_exists = (0..e as u64).any(|entry| {
                    subsets_of_size(s.write_set_of(EntryId(entry)), s.ack_quorum())
                        .iter()
                        .any(|quorum| quorum.intersection(answered).is_empty())
                });
                assert_eq!(
                    s.lac_coverage(answered),
                    !silent_quorum_exists,
                    "{s:?} answered {answered:?}"
                );
            }
            assert!(s.lac_coverage(IndexSet::all(e)), "everyone answered");
        }
    }

    /// For every schedule with E <= 5, entry and set of "no such entry" answers: absence is
    /// proven iff every ack quorum of the entry's write set contains such an answer (so, with
    /// honest bookies, no ack quorum can have stored it).
    #[test]
    fn absent_coverage_iff_every_ack_quorum_denies_the_entry() {
        for s in all_schedules(5) {
            let e = s.ensemble_size();
            for entry in 0..2 * e as u64 {
                let entry = EntryId(entry);
                for no_such in subsets(e) {
                    let every_quorum_denies =
                        subsets_of_size(s.write_set_of(entry), s.ack_quorum())
                            .iter()
                            .all(|quorum| !quorum.intersection(no_such).is_empty());
                    assert_eq!(
                        s.absent_coverage(entry, no_such),
                        every_quorum_denies,
                        "{s:?} entry {entry} no_such {no_such:?}"
                    );
                }
            }
        }
    }

    /// The index set behaves as a set and refuses indexes out of range.
    #[test]
    fn index_set_is_a_set_of_small_indexes() {
        let mut set = IndexSet::new();
        assert!(set.insert(3));
        assert!(!set.insert(3));
        assert!(set.insert(63));
        assert!(!set.insert(64));
        assert!(!set.contains(64));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![3, 63]);
        assert!(set.remove(3));
        assert!(!set.remove(3));
        assert_eq!(set.len(), 1);
        assert_eq!(IndexSet::all(64).len(), 64);
        assert_eq!(IndexSet::all(3).iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    }
}
