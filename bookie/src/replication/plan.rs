//! The decisions of re-replication, without I/O: which bookies count as lost
//! ([`LostBookies`]) and which fragments of a ledger need a copy made, of which entries
//! ([`repairs`]).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use strata_proto::EntryId;
use strata_proto::pb::bookie::{LedgerMetadata, LedgerState};

use crate::ledger::quorum::WriteSchedule;

/// When bookies named in ledger metadata went missing from the registrations, and which of
/// them have been missing for longer than the delay (lost: their copies must be made again).
/// A bookie that registers again before the delay is forgotten: a restart costs nothing.
#[derive(Debug, Clone)]
pub struct LostBookies {
    delay: Duration,
    missing_since: HashMap<String, Instant>,
}

impl LostBookies {
    pub fn new(delay: Duration) -> Self {
        LostBookies {
            delay,
            missing_since: HashMap::new(),
        }
    }

    /// Feeds one audit: `referenced` are the bookies ledger metadata names, `registered` the
    /// ones registered now. Returns the lost ones, sorted.
    pub fn observe<'a>(
        &mut self,
        referenced: impl IntoIterator<Item = &'a str>,
        registered: &BTreeSet<String>,
        now: Instant,
    ) -> Vec<String> {
        let missing: BTreeSet<&str> = referenced
            .into_iter()
            .filter(|b| !registered.contains(*b))
            .collect();
        self.missing_since
            .retain(|bookie, _| missing.contains(bookie.as_str()));
        for bookie in &missing {
            self.missing_since
                .entry((*bookie).to_owned())
                .or_insert(now);
        }
        missing
            .into_iter()
            .filter(|b| {
                self.missing_since
                    .get(*b)
                    .is_some_and(|since| now.duration_since(*since) >= self.delay)
            })
            .map(str::to_owned)
            .collect()
    }

    /// How long `bookie` has been missing, if it is.
    pub fn missing_for(&self, bookie: &str, now: Instant) -> Option<Duration> {
        self.missing_since
            .get(bookie)
            .map(|since| now.duration_since(*since))
    }
}

/// Copies of one fragment that a lost bookie held and that must be made on another bookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentRepair {
    /// Position of the fragment in the metadata.
    pub fragment: usize,
    /// Ensemble index the lost bookie holds in it.
    pub index: usize,
    pub lost_bookie: String,
    /// The entries of the fragment the lost bookie stored (its write sets include `index`).
    pub entries: Vec<EntryId>,
}

/// What a ledger needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerRepairs {
    /// Sealed fragments (not the last one, or any of a CLOSED ledger) naming a lost bookie.
    pub repairs: Vec<FragmentRepair>,
    /// The last fragment of a ledger still being written names a lost bookie: its writer
    /// replaces it, or a recovery closes the ledger and it becomes repairable.
    pub waits_for_close: bool,
}

impl LedgerRepairs {
    pub fn is_done(&self) -> bool {
        self.repairs.is_empty() && !self.waits_for_close
    }
}

/// The repairs `md` needs given the lost bookies. Metadata that does not validate yields
/// nothing (it is reported where it is read).
pub fn repairs(md: &LedgerMetadata, is_lost: impl Fn(&str) -> bool) -> LedgerRepairs {
    let mut out = LedgerRepairs::default();
    let Ok(schedule) = WriteSchedule::new(
        md.ensemble_size as usize,
        md.write_quorum as usize,
        md.ack_quorum as usize,
    ) else {
        return out;
    };
    let closed = md.state == LedgerState::Closed as i32;
    for (i, fragment) in md.fragments.iter().enumerate() {
        let is_last = i + 1 == md.fragments.len();
        let lost: Vec<(usize, &String)> = fragment
            .bookies
            .iter()
            .enumerate()
            .filter(|(_, b)| is_lost(b))
            .collect();
        if lost.is_empty() {
            continue;
        }
        if is_last && !closed {
            out.waits_for_close = true;
            continue;
        }
        let first = fragment.first_entry_id;
        let end = match md.fragments.get(i + 1) {
            Some(next) => next.first_entry_id.checked_sub(1),
            None => md.last_entry_id,
        };
        let entries_of = |index: usize| -> Vec<EntryId> {
            match end {
                Some(end) if end >= first => (first..=end)
                    .map(EntryId)
                    .filter(|e| schedule.stores(*e, index))
                    .collect(),
                _ => Vec::new(),
            }
        };
        for (index, bookie) in lost {
            out.repairs.push(FragmentRepair {
                fragment: i,
                index,
                lost_bookie: bookie.clone(),
                entries: entries_of(index),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::pb::bookie::Fragment;

    fn md(
        e: u32,
        qw: u32,
        state: LedgerState,
        last: Option<u64>,
        frags: &[(u64, &[&str])],
    ) -> LedgerMetadata {
        LedgerMetadata {
            format_version: 1,
            ledger_id: 1,
            ensemble_size: e,
            write_quorum: qw,
            ack_quorum: 1,
            state: state as i32,
            last_entry_id: last,
            fragments: frags
                .iter()
                .map(|(first, bookies)| Fragment {
                    first_entry_id: *first,
                    bookies: bookies.iter().map(|b| b.to_string()).collect(),
                })
                .collect(),
            created_ms: 0,
            length_bytes: 0,
            entry_format: 1,
        }
    }

    fn registered(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    /// A bookie counts as lost only after missing for the whole delay; registering again
    /// resets its clock.
    #[test]
    fn bookies_are_lost_only_after_the_delay() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(10);
        let mut lost = LostBookies::new(delay);
        let referenced = ["a", "b", "c"];
        assert!(
            lost.observe(referenced, &registered(&["a", "b"]), t0)
                .is_empty()
        );
        assert_eq!(lost.missing_for("c", t0 + delay), Some(delay));
        assert!(
            lost.observe(
                referenced,
                &registered(&["a", "b"]),
                t0 + Duration::from_secs(9)
            )
            .is_empty()
        );
        assert_eq!(
            lost.observe(referenced, &registered(&["a", "b"]), t0 + delay),
            vec!["c".to_string()]
        );
        // Back (a restart), then gone again: the clock starts over.
        assert!(
            lost.observe(
                referenced,
                &registered(&["a", "b", "c"]),
                t0 + Duration::from_secs(11)
            )
            .is_empty()
        );
        assert!(
            lost.observe(
                referenced,
                &registered(&["a", "b"]),
                t0 + Duration::from_secs(12)
            )
            .is_empty()
        );
        assert_eq!(
            lost.observe(
                referenced,
                &registered(&["a", "b"]),
                t0 + Duration::from_secs(22)
            ),
            vec!["c".to_string()]
        );
        // A bookie no metadata names is nobody's concern.
        assert!(
            lost.observe(["a"], &registered(&[]), t0 + Duration::from_secs(100))
                .is_empty()
        );
    }

    /// Sealed fragments get repairs of exactly the entries the lost bookie stored; the last
    /// fragment of an open ledger waits for the ledger to close.
    #[test]
    fn repairs_cover_exactly_the_lost_bookies_entries_of_sealed_fragments() {
        // E3/Qw2: entry e is on indexes e%3 and (e+1)%3. Fragment 0 holds 0..=5 on a,b,c;
        // fragment 1 holds 6.. on a,b,d.
        let open = md(
            3,
            2,
            LedgerState::Open,
            None,
            &[(0, &["a", "b", "c"]), (6, &["a", "b", "d"])],
        );
        let r = repairs(&open, |b| b == "b");
        assert_eq!(r.repairs.len(), 1);
        assert_eq!(r.repairs[0].fragment, 0);
        assert_eq!(r.repairs[0].index, 1);
        // Index 1 stores entries with e%3 in {0, 1}: 0, 1, 3, 4.
        assert_eq!(r.repairs[0].entries, [0, 1, 3, 4].map(EntryId).to_vec());
        assert!(r.waits_for_close, "fragment 1 is still being written");

        let closed = md(
            3,
            2,
            LedgerState::Closed,
            Some(8),
            &[(0, &["a", "b", "c"]), (6, &["a", "b", "d"])],
        );
        let r = repairs(&closed, |b| b == "d");
        assert!(!r.waits_for_close);
        // d is index 2 of fragment 1 (6..=8): entries with e%3 in {1, 2}: 7, 8.
        assert_eq!(
            r.repairs,
            vec![FragmentRepair {
                fragment: 1,
                index: 2,
                lost_bookie: "d".into(),
                entries: vec![EntryId(7), EntryId(8)],
            }]
        );
        assert!(repairs(&closed, |b| b == "x").is_done());
    }

    /// An empty closed ledger still gets its metadata repaired (no entries to copy).
    #[test]
    fn an_empty_fragment_needs_no_copies() {
        let empty = md(3, 3, LedgerState::Closed, None, &[(0, &["a", "b", "c"])]);
        let r = repairs(&empty, |b| b == "a");
        assert_eq!(r.repairs.len(), 1);
        assert!(r.repairs[0].entries.is_empty());
    }
}
