use super::*;
use crate::ledger::quorum::schedule::all_schedules;

fn schedule(e: usize, qw: usize, qa: usize) -> WriteSchedule {
    WriteSchedule::new(e, qw, qa).expect("valid schedule")
}

/// Calls `f` with every permutation of `items`.
fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let x = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, x);
            out.push(p);
        }
    }
    out
}

/// For every schedule with E <= 5 and every combination of answers (each bookie: a LAC, no
/// LAC, fenced, no ledger, error, or silent), fed in two orders: the outcome is `Done` iff
/// the bookies that answered cover the ensemble, `Failed` iff the bookies that did not fail
/// could not cover it, and `Pending` otherwise; `Done` carries the highest LAC fed.
#[test]
fn lac_recovery_decides_by_coverage() {
    for s in all_schedules(5) {
        let e = s.ensemble_size();
        let kinds = 6usize;
        for code in 0..kinds.pow(e as u32) {
            let answers: Vec<Option<LacAnswer>> = (0..e)
                .map(|i| match (code / kinds.pow(i as u32)) % kinds {
                    0 => Some(LacAnswer::Lac(Some(EntryId(10 + i as u64)))),
                    1 => Some(LacAnswer::Lac(None)),
                    2 => Some(LacAnswer::Fenced),
                    3 => Some(LacAnswer::NoLedger),
                    4 => Some(LacAnswer::Error),
                    _ => None,
                })
                .collect();
            let answered: IndexSet = (0..e)
                .filter(|i| matches!(answers[*i], Some(a) if a != LacAnswer::Error))
                .collect();
            let errored: IndexSet = (0..e)
                .filter(|i| answers[*i] == Some(LacAnswer::Error))
                .collect();
            let expected_kind = if s.lac_coverage(answered) {
                "done"
            } else if !s.lac_coverage(IndexSet::all(e).difference(errored)) {
                "failed"
            } else {
                "pending"
            };
            for order in [(0..e).collect::<Vec<_>>(), (0..e).rev().collect::<Vec<_>>()] {
                let mut r = LacRecovery::new(s);
                let mut max_fed = None;
                let mut decided_at = None;
                for i in &order {
                    if let Some(a) = answers[*i] {
                        if let (LacAnswer::Lac(l), None) = (a, decided_at) {
                            max_fed = max_fed.max(l);
                        }
                        if r.answer(*i, a) != LacOutcome::Pending && decided_at.is_none() {
                            decided_at = Some(*i);
                        }
                    }
                }
                let ctx = format!("{s:?} {answers:?} order {order:?}");
                match (expected_kind, r.outcome()) {
                    ("done", LacOutcome::Done { lac }) => assert_eq!(lac, max_fed, "{ctx}"),
                    ("failed", LacOutcome::Failed) | ("pending", LacOutcome::Pending) => {}
                    (want, got) => panic!("expected {want}, got {got:?}: {ctx}"),
                }
            }
        }
    }
}

/// Answers from outside the ensemble and second answers of a bookie are ignored; once
/// decided, later answers change nothing; the LAC is the maximum, not the last one.
#[test]
fn lac_recovery_ignores_strays_and_sticks() {
    let mut r = LacRecovery::new(schedule(3, 3, 2));
    assert_eq!(r.targets().collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(
        r.answer(7, LacAnswer::Lac(Some(EntryId(99)))),
        LacOutcome::Pending
    );
    assert_eq!(r.answer(0, LacAnswer::Error), LacOutcome::Pending);
    assert_eq!(
        r.answer(0, LacAnswer::Lac(Some(EntryId(50)))),
        LacOutcome::Pending,
        "second answer of bookie 0"
    );
    assert_eq!(
        r.answer(1, LacAnswer::Lac(Some(EntryId(5)))),
        LacOutcome::Pending
    );
    // Qw - Qa + 1 = 2 answers per write set: bookies 1 and 2 cover.
    assert_eq!(
        r.answer(2, LacAnswer::Lac(Some(EntryId(3)))),
        LacOutcome::Done {
            lac: Some(EntryId(5))
        }
    );
    assert_eq!(
        r.answer(0, LacAnswer::Lac(Some(EntryId(9)))),
        LacOutcome::Done {
            lac: Some(EntryId(5))
        }
    );
}

/// Safety of absence, exhaustively: for every schedule with E <= 5, every set of bookies
/// holding an acknowledged entry (at least Qa of its write set), every set of failing
/// bookies and every answer order, honest answers never make the entry `Absent`, and it is
/// `Recovered` unless every holder failed.
#[test]
fn acknowledged_entry_is_never_absent() {
    for s in all_schedules(5) {
        for entry in [0, s.ensemble_size() as u64 - 1] {
            let entry = EntryId(entry);
            let ws: Vec<usize> = s.write_set(entry).collect();
            let orders = permutations(&ws);
            let n = ws.len();
            for held in 0u32..1 << n {
                if (held.count_ones() as usize) < s.ack_quorum() {
                    continue;
                }
                for failing in 0u32..1 << n {
                    for order in &orders {
                        let mut r = EntryRecovery::new(s, entry);
                        let mut outcome = EntryOutcome::Pending;
                        for index in order {
                            let bit = 1 << ws.iter().position(|i| i == index).unwrap_or(0);
                            let answer = if failing & bit != 0 {
                                EntryAnswer::Error
                            } else if held & bit != 0 {
                                EntryAnswer::Found(*index)
                            } else {
                                EntryAnswer::NoSuchEntry
                            };
                            outcome = r.answer(*index, answer);
                            assert_ne!(outcome, EntryOutcome::Absent, "{s:?} {held:b} {failing:b}");
                        }
                        if held & !failing != 0 {
                            assert!(matches!(outcome, EntryOutcome::Recovered(_)), "{s:?}");
                        } else {
                            assert_eq!(outcome, EntryOutcome::Unrecoverable);
                        }
                    }
                }
            }
        }
    }
}

/// For every schedule with E <= 5 and every split of the write set into found / no such
/// entry / error / silent answers (fed in write-set order): with nothing found the entry is
/// `Absent` iff Qw - Qa + 1 denied it, else `Unrecoverable` once all answered, else
/// `Pending`; with a copy found and too few denials it is `Recovered`.
#[test]
fn entry_recovery_outcomes_follow_the_counts() {
    for s in all_schedules(5) {
        let entry = EntryId(1);
        let ws: Vec<usize> = s.write_set(entry).collect();
        let threshold = s.write_quorum() - s.ack_quorum() + 1;
        for code in 0..4usize.pow(ws.len() as u32) {
            let kinds: Vec<usize> = (0..ws.len())
                .map(|i| (code / 4usize.pow(i as u32)) % 4)
                .collect();
            let count = |k| kinds.iter().filter(|x| **x == k).count();
            let (found, denied, silent) = (count(0), count(1), count(3));
            let mut r = EntryRecovery::new(s, entry);
            for (index, kind) in ws.iter().zip(&kinds) {
                let answer = match kind {
                    0 => EntryAnswer::Found("payload"),
                    1 => EntryAnswer::NoSuchEntry,
                    2 => EntryAnswer::Error,
                    _ => continue,
                };
                r.answer(*index, answer);
            }
            let got = r.outcome().clone();
            let ctx = format!("{s:?} kinds {kinds:?}");
            if found == 0 {
                let want = if denied >= threshold {
                    EntryOutcome::Absent
                } else if silent == 0 {
                    EntryOutcome::Unrecoverable
                } else {
                    EntryOutcome::Pending
                };
                assert_eq!(got, want, "{ctx}");
            } else if denied < threshold {
                assert_eq!(got, EntryOutcome::Recovered("payload"), "{ctx}");
            } else {
                assert!(
                    matches!(got, EntryOutcome::Recovered(_) | EntryOutcome::Absent),
                    "{ctx}"
                );
            }
        }
    }
}

/// Answers from bookies outside the write set and repeated answers are ignored; the first
/// decision sticks.
#[test]
fn entry_recovery_ignores_strays_and_sticks() {
    // E=4, Qw=3, Qa=2: entry 0 lives on 0, 1, 2; absence needs 2 denials.
    let mut r = EntryRecovery::new(schedule(4, 3, 2), EntryId(0));
    assert_eq!(r.targets(), vec![0, 1, 2]);
    assert_eq!(r.answer(3, EntryAnswer::NoSuchEntry), EntryOutcome::Pending);
    assert_eq!(r.answer(0, EntryAnswer::NoSuchEntry), EntryOutcome::Pending);
    assert_eq!(r.answer(0, EntryAnswer::NoSuchEntry), EntryOutcome::Pending);
    assert_eq!(r.answer(1, EntryAnswer::NoSuchEntry), EntryOutcome::Absent);
    assert_eq!(r.answer(2, EntryAnswer::Found(7)), EntryOutcome::Absent);
}

fn ids(actions: &[RecoveryAction<u64>]) -> Vec<String> {
    actions.iter().map(|a| format!("{a:?}")).collect()
}

/// The plan reads forward from LAC + 1, asks to re-write each recovered entry, and closes at
/// the entry before the first absent one; answers for other entries are ignored.
#[test]
fn plan_reads_forward_rewrites_and_closes_at_first_absent() {
    // E=3, Qw=2, Qa=2: absence needs one denial.
    let s = schedule(3, 2, 2);
    let mut p = RecoveryPlan::new(s, Some(EntryId(1)), EntryId(0));
    assert_eq!(
        p.start(),
        RecoveryAction::Read {
            entry: EntryId(2),
            indexes: vec![2, 0]
        }
    );
    assert!(p.answer(EntryId(5), 2, EntryAnswer::Found(5)).is_empty());
    assert!(p.answer(EntryId(2), 2, EntryAnswer::Error).is_empty());
    let acts = p.answer(EntryId(2), 0, EntryAnswer::Found(22));
    assert_eq!(
        acts,
        vec![
            RecoveryAction::Rewrite {
                entry: EntryId(2),
                payload: 22
            },
            RecoveryAction::Read {
                entry: EntryId(3),
                indexes: vec![0, 1]
            }
        ]
    );
    assert!(
        p.answer(EntryId(2), 2, EntryAnswer::NoSuchEntry).is_empty(),
        "old entry"
    );
    assert_eq!(p.reading(), Some(EntryId(3)));
    let acts = p.answer(EntryId(3), 1, EntryAnswer::NoSuchEntry);
    assert_eq!(
        acts,
        vec![RecoveryAction::Close {
            last_entry: Some(EntryId(2))
        }],
        "{:?}",
        ids(&acts)
    );
    assert_eq!(p.last_recovered(), Some(EntryId(2)));
    assert_eq!(p.reading(), None);
    assert!(p.answer(EntryId(3), 0, EntryAnswer::Found(3)).is_empty());
    assert_eq!(p.start(), p.finished().cloned().expect("finished"));
}

/// Reading starts after the larger of the LAC and the entry before the last fragment; an
/// empty ledger closes at `None`; a LAC of `u64::MAX` closes there without overflow.
#[test]
fn plan_starts_after_lac_and_fragment_floor() {
    let s = schedule(3, 3, 2);
    let first_read = |lac: Option<u64>, fragment: u64| match RecoveryPlan::<u64>::new(
        s,
        lac.map(EntryId),
        EntryId(fragment),
    )
    .start()
    {
        RecoveryAction::Read { entry, .. } => Some(entry.0),
        _ => None,
    };
    assert_eq!(first_read(None, 0), Some(0));
    assert_eq!(first_read(None, 5), Some(5));
    assert_eq!(first_read(Some(7), 5), Some(8));
    assert_eq!(first_read(Some(2), 5), Some(5));
    let mut empty = RecoveryPlan::<u64>::new(s, None, EntryId(0));
    for i in 0..2 {
        let acts = empty.answer(EntryId(0), i, EntryAnswer::NoSuchEntry);
        assert_eq!(acts.is_empty(), i == 0);
    }
    assert_eq!(
        empty.finished(),
        Some(&RecoveryAction::Close { last_entry: None })
    );
    let max = RecoveryPlan::<u64>::new(s, Some(EntryId(u64::MAX)), EntryId(0));
    assert_eq!(
        max.start(),
        RecoveryAction::Close {
            last_entry: Some(EntryId(u64::MAX))
        }
    );
}

/// An entry that is neither found nor provably absent fails the recovery.
#[test]
fn plan_fails_on_unrecoverable_entry() {
    let s = schedule(3, 3, 2);
    let mut p = RecoveryPlan::<u64>::new(s, None, EntryId(0));
    assert!(p.answer(EntryId(0), 0, EntryAnswer::Error).is_empty());
    assert!(p.answer(EntryId(0), 1, EntryAnswer::Error).is_empty());
    assert_eq!(
        p.answer(EntryId(0), 2, EntryAnswer::NoSuchEntry),
        vec![RecoveryAction::Failed { entry: EntryId(0) }]
    );
}
