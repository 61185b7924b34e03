use super::*;

/// Bookie ids differ from their ensemble indexes, so mixing them up shows.
fn id(index: usize) -> u32 {
    100 + index as u32
}

fn quorum(e: usize, qw: usize, qa: usize) -> AddQuorum<u32> {
    let schedule = WriteSchedule::new(e, qw, qa).expect("valid schedule");
    AddQuorum::new(schedule, (0..e).map(id).collect(), None).expect("valid ensemble")
}

fn send(q: &mut AddQuorum<u32>, n: u64) {
    for _ in 0..n {
        let next = q.next_entry().expect("ids left");
        q.sent(next).expect("in order");
    }
}

fn acked(q: &mut AddQuorum<u32>, entry: u64, index: usize) -> Vec<u64> {
    q.acked(EntryId(entry), &id(index))
        .entries
        .iter()
        .map(|e| e.0)
        .collect()
}

/// Calls `f` with every permutation of `items` (Heap's algorithm).
fn for_each_permutation<T: Clone>(items: &mut [T], k: usize, f: &mut impl FnMut(&[T])) {
    if k <= 1 {
        f(items);
        return;
    }
    for i in 0..k {
        for_each_permutation(items, k - 1, f);
        let j = if k & 1 == 0 { i } else { 0 };
        items.swap(j, k - 1);
    }
}

/// For every order of all acks of a few entries (several schedules): entries are
/// acknowledged in id order, each exactly once, exactly when it and every earlier entry have
/// Qa acks; the reported LAC always equals that prefix.
#[test]
fn every_ack_order_acknowledges_in_entry_order_once() {
    for (e, qw, qa, n) in [(3, 3, 2, 3), (3, 2, 2, 4), (2, 2, 1, 4), (4, 3, 1, 3)] {
        let schedule = WriteSchedule::new(e, qw, qa).expect("valid");
        let mut acks: Vec<(u64, usize)> = (0..n)
            .flat_map(|entry| schedule.write_set(EntryId(entry)).map(move |i| (entry, i)))
            .collect();
        let len = acks.len();
        let mut runs = 0u64;
        for_each_permutation(&mut acks, len, &mut |order: &[(u64, usize)]| {
            runs += 1;
            let mut q = quorum(e, qw, qa);
            send(&mut q, n);
            let mut counts = vec![0usize; n as usize];
            let mut out = Vec::new();
            for (entry, index) in order {
                counts[*entry as usize] += 1;
                let got = q.acked(EntryId(*entry), &id(*index));
                out.extend(got.entries.iter().map(|e| e.0));
                let prefix = counts.iter().take_while(|c| **c >= qa).count() as u64;
                let expected_lac = prefix.checked_sub(1).map(EntryId);
                assert_eq!(got.lac, expected_lac, "E={e} Qw={qw} Qa={qa} {order:?}");
                assert_eq!(q.last_add_confirmed(), expected_lac);
                assert_eq!(out, (0..prefix).collect::<Vec<_>>(), "{order:?}");
            }
            assert_eq!(q.outstanding(), 0);
        });
        assert!(runs > 1000, "E={e} Qw={qw} Qa={qa}: only {runs} orders");
    }
}

/// Duplicate acks, acks from bookies outside the entry's write set or outside the ensemble,
/// and acks for entries not outstanding count for nothing.
#[test]
fn stray_and_duplicate_acks_are_ignored() {
    let mut q = quorum(3, 2, 2);
    send(&mut q, 2);
    // Entry 0 is stored at indexes 0 and 1.
    assert!(
        acked(&mut q, 0, 2).is_empty(),
        "index 2 is outside the write set"
    );
    assert!(acked(&mut q, 0, 0).is_empty());
    assert!(acked(&mut q, 0, 0).is_empty(), "duplicate");
    assert!(q.acked(EntryId(0), &999).is_empty(), "not in the ensemble");
    assert!(acked(&mut q, 5, 0).is_empty(), "never sent");
    assert_eq!(q.last_add_confirmed(), None);
    assert_eq!(acked(&mut q, 0, 1), vec![0]);
    assert!(acked(&mut q, 0, 1).is_empty(), "already acknowledged");
    assert!(acked(&mut q, 1, 1).is_empty());
    assert_eq!(acked(&mut q, 1, 2), vec![1]);
    assert_eq!(q.last_add_confirmed(), Some(EntryId(1)));
}

/// Sends go to the entry's write set, in id order only.
#[test]
fn sends_follow_the_write_set_in_order() {
    let mut q = quorum(4, 3, 2);
    let targets = q.sent(EntryId(0)).expect("first");
    let got: Vec<(usize, u32)> = targets.iter().map(|t| (t.index, t.bookie)).collect();
    assert_eq!(got, vec![(0, 100), (1, 101), (2, 102)]);
    let got: Vec<usize> = q
        .sent(EntryId(1))
        .expect("second")
        .iter()
        .map(|t| t.index)
        .collect();
    assert_eq!(got, vec![1, 2, 3]);
    assert_eq!(
        q.sent(EntryId(5)),
        Err(AddQuorumError::OutOfOrder {
            expected: EntryId(2),
            got: EntryId(5)
        })
    );
    let got: Vec<usize> = q
        .sent(EntryId(2))
        .expect("third")
        .iter()
        .map(|t| t.index)
        .collect();
    assert_eq!(got, vec![2, 3, 0]);
}

/// A failure starts one ensemble change at LAC + 1 naming the failed index; a second
/// failure during it is deferred; repeated or foreign failures are ignored.
#[test]
fn failure_starts_one_change_at_lac_plus_one() {
    let mut q = quorum(3, 3, 2);
    send(&mut q, 3);
    acked(&mut q, 0, 0);
    assert_eq!(acked(&mut q, 0, 1), vec![0]);
    assert_eq!(
        q.bookie_failed(&id(2)),
        FailureAction::ChangeEnsemble(ChangeEnsemble {
            first_entry: EntryId(1),
            failed: vec![2]
        })
    );
    assert_eq!(q.changing(), Some(EntryId(1)));
    assert_eq!(q.bookie_failed(&id(2)), FailureAction::Ignored, "again");
    assert_eq!(
        q.bookie_failed(&999),
        FailureAction::Ignored,
        "not a member"
    );
    assert_eq!(q.bookie_failed(&id(0)), FailureAction::Deferred);
    assert_eq!(q.failed_indexes().iter().collect::<Vec<_>>(), vec![0, 2]);
}

/// While a change is in progress nothing is acknowledged, even entries with Qa acks from
/// healthy bookies; once the metadata names the replacement they are, in order.
#[test]
fn nothing_is_acknowledged_during_a_change() {
    let mut q = quorum(3, 3, 2);
    send(&mut q, 2);
    assert!(matches!(
        q.bookie_failed(&id(2)),
        FailureAction::ChangeEnsemble(_)
    ));
    for entry in 0..2 {
        acked(&mut q, entry, 0);
        assert!(acked(&mut q, entry, 1).is_empty(), "held back");
    }
    assert_eq!(q.last_add_confirmed(), None);
    let changed = q.ensemble_changed(&[(2, 7)]).expect("change");
    assert_eq!(changed.acknowledged.entries, vec![EntryId(0), EntryId(1)]);
    assert_eq!(changed.acknowledged.lac, Some(EntryId(1)));
    assert_eq!(changed.next_change, None);
    // Both were outstanding and stored at index 2: the replacement gets them.
    let resent: Vec<(u64, usize, u32)> = changed
        .resend
        .iter()
        .map(|r| (r.entry.0, r.index, r.bookie))
        .collect();
    assert_eq!(resent, vec![(0, 2, 7), (1, 2, 7)]);
    assert_eq!(q.ensemble(), &[100, 101, 7]);
}

/// A failed bookie's acks stop counting (the new fragment will not name it), its late acks
/// are ignored before and after its replacement, and the replacement's acks count at its
/// index.
#[test]
fn failed_bookie_acks_are_forgotten() {
    let mut q = quorum(3, 3, 2);
    send(&mut q, 1);
    acked(&mut q, 0, 0);
    assert!(matches!(
        q.bookie_failed(&id(0)),
        FailureAction::ChangeEnsemble(_)
    ));
    acked(&mut q, 0, 0);
    acked(&mut q, 0, 1);
    let changed = q.ensemble_changed(&[(0, 9)]).expect("change");
    assert!(
        changed.acknowledged.is_empty(),
        "only bookie 1's ack counts"
    );
    assert!(
        acked(&mut q, 0, 0).is_empty(),
        "late ack of the replaced bookie"
    );
    assert_eq!(q.acked(EntryId(0), &9).entries, vec![EntryId(0)]);
}

/// Entries sent during a change skip the failed index and are resent to the replacement;
/// only outstanding entries whose write set holds the replaced index are resent.
#[test]
fn resends_cover_exactly_outstanding_entries_of_the_replaced_index() {
    let mut q = quorum(4, 2, 2);
    send(&mut q, 2);
    assert!(matches!(
        q.bookie_failed(&id(1)),
        FailureAction::ChangeEnsemble(_)
    ));
    let targets: Vec<usize> = q
        .sent(EntryId(2))
        .expect("send")
        .iter()
        .map(|t| t.index)
        .collect();
    assert_eq!(targets, vec![2, 3]);
    let targets: Vec<usize> = q
        .sent(EntryId(3))
        .expect("send")
        .iter()
        .map(|t| t.index)
        .collect();
    assert_eq!(targets, vec![3, 0]);
    let targets: Vec<usize> = q
        .sent(EntryId(4))
        .expect("send")
        .iter()
        .map(|t| t.index)
        .collect();
    assert_eq!(targets, vec![0], "index 1 skipped");
    let changed = q.ensemble_changed(&[(1, 50)]).expect("change");
    let resent: Vec<(u64, usize)> = changed
        .resend
        .iter()
        .map(|r| (r.entry.0, r.index))
        .collect();
    // Write sets: 0 -> {0,1}, 1 -> {1,2}, 2 -> {2,3}, 3 -> {3,0}, 4 -> {0,1}.
    assert_eq!(resent, vec![(0, 1), (1, 1), (4, 1)]);
}

/// Bookies that fail during a change are asked for in the next change, which starts at the
/// LAC reached once the first change released its entries.
#[test]
fn failures_during_a_change_make_the_next_change() {
    let mut q = quorum(4, 3, 2);
    send(&mut q, 3);
    assert!(matches!(
        q.bookie_failed(&id(3)),
        FailureAction::ChangeEnsemble(_)
    ));
    acked(&mut q, 0, 0);
    acked(&mut q, 0, 1);
    assert_eq!(q.bookie_failed(&id(2)), FailureAction::Deferred);
    let changed = q.ensemble_changed(&[(3, 30)]).expect("change");
    assert_eq!(changed.acknowledged.entries, vec![EntryId(0)]);
    assert_eq!(
        changed.next_change,
        Some(ChangeEnsemble {
            first_entry: EntryId(1),
            failed: vec![2]
        })
    );
    assert_eq!(q.changing(), Some(EntryId(1)));
    // Index 2 left out: it stays failed and is asked for again.
    let again = q.ensemble_changed(&[]).expect("empty change");
    assert_eq!(again.next_change.map(|c| c.failed), Some(vec![2]));
    let done = q.ensemble_changed(&[(2, 20)]).expect("change");
    assert_eq!(done.next_change, None);
    assert_eq!(q.ensemble(), &[100, 101, 20, 30]);
    assert!(q.failed_indexes().is_empty());
}

/// A change must replace failed indexes with bookies outside the ensemble, and only while
/// one is in progress; a refused change alters nothing.
#[test]
fn bad_ensemble_changes_are_refused() {
    let mut q = quorum(3, 2, 2);
    send(&mut q, 1);
    assert_eq!(
        q.ensemble_changed(&[(0, 9)]),
        Err(AddQuorumError::NoChangeInProgress)
    );
    q.bookie_failed(&id(0));
    assert_eq!(
        q.ensemble_changed(&[(1, 9)]),
        Err(AddQuorumError::NotFailed { index: 1 })
    );
    assert_eq!(
        q.ensemble_changed(&[(0, 9), (0, 8)]),
        Err(AddQuorumError::NotFailed { index: 0 })
    );
    assert_eq!(
        q.ensemble_changed(&[(0, id(2))]),
        Err(AddQuorumError::DuplicateBookie { index: 0 })
    );
    assert_eq!(q.ensemble(), &[100, 101, 102]);
    assert_eq!(q.changing(), Some(EntryId(0)));
    assert!(q.ensemble_changed(&[(0, 9)]).is_ok());
}

/// Stopping fails every outstanding entry and nothing after it, keeps the LAC, and makes
/// the quorum refuse sends, changes, acks and failures.
#[test]
fn stop_fails_outstanding_and_keeps_acknowledged() {
    let mut q = quorum(3, 3, 2);
    send(&mut q, 4);
    acked(&mut q, 0, 0);
    assert_eq!(acked(&mut q, 0, 1), vec![0]);
    acked(&mut q, 2, 0);
    acked(&mut q, 2, 1);
    q.bookie_failed(&id(2));
    let failed = q.stop(Stop::EnsembleChangeFailed);
    assert_eq!(failed, vec![EntryId(1), EntryId(2), EntryId(3)]);
    assert!(q.stop(Stop::Fenced).is_empty(), "idempotent");
    assert_eq!(q.stopped(), Some(Stop::EnsembleChangeFailed));
    assert_eq!(q.last_add_confirmed(), Some(EntryId(0)));
    assert_eq!(
        q.sent(EntryId(4)),
        Err(AddQuorumError::Stopped(Stop::EnsembleChangeFailed))
    );
    assert!(acked(&mut q, 1, 0).is_empty());
    assert_eq!(q.bookie_failed(&id(0)), FailureAction::Ignored);
    assert!(q.ensemble_changed(&[(2, 9)]).is_err());
    assert_eq!(q.last_add_confirmed(), Some(EntryId(0)));
}

/// Construction checks the ensemble against the schedule; ids past `u64::MAX - 1` are
/// refused instead of overflowing; a quorum can start after a known LAC.
#[test]
fn construction_and_id_limits() {
    let s = WriteSchedule::new(3, 2, 2).expect("valid");
    assert_eq!(
        AddQuorum::new(s, vec![1, 2], None).err(),
        Some(AddQuorumError::EnsembleSize {
            expected: 3,
            got: 2
        })
    );
    assert_eq!(
        AddQuorum::new(s, vec![1, 2, 1], None).err(),
        Some(AddQuorumError::DuplicateBookie { index: 2 })
    );
    assert_eq!(
        AddQuorum::new(s, vec![1, 2, 3], Some(EntryId(u64::MAX))).err(),
        Some(AddQuorumError::EntryIdOverflow)
    );
    let mut q = AddQuorum::new(s, vec![1, 2, 3], Some(EntryId(u64::MAX - 2))).expect("valid");
    assert_eq!(q.next_entry(), Some(EntryId(u64::MAX - 1)));
    q.sent(EntryId(u64::MAX - 1)).expect("last id");
    assert_eq!(
        q.sent(EntryId(u64::MAX)),
        Err(AddQuorumError::EntryIdOverflow)
    );
    let ws: Vec<u32> = s
        .write_set(EntryId(u64::MAX - 1))
        .map(|i| [1, 2, 3][i])
        .collect();
    q.acked(EntryId(u64::MAX - 1), &ws[0]);
    let done = q.acked(EntryId(u64::MAX - 1), &ws[1]);
    assert_eq!(done.entries, vec![EntryId(u64::MAX - 1)]);
}

/// With no replacement, a change can be postponed while Qa members of every write set are
/// left: the held-back entries are then acknowledged by the survivors, new entries skip the
/// failed index, and a later retry starts the change at the LAC + 1 of that time.
#[test]
fn postponed_change_goes_on_with_the_survivors() {
    let mut q = quorum(3, 3, 2);
    send(&mut q, 2);
    assert_eq!(acked(&mut q, 0, 0), Vec::<u64>::new());
    let FailureAction::ChangeEnsemble(change) = q.bookie_failed(&id(2)) else {
        panic!("a failure starts a change");
    };
    assert_eq!(change.first_entry, EntryId(0));
    assert_eq!(
        acked(&mut q, 0, 1),
        Vec::<u64>::new(),
        "held back by the change"
    );
    let released = q.postpone_change().expect("two of three left");
    assert_eq!(released.entries, vec![EntryId(0)]);
    assert_eq!(q.changing(), None);
    // New entries go to the survivors only.
    let targets = q.sent(EntryId(2)).expect("in order");
    assert_eq!(
        targets.iter().map(|t| t.index).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(acked(&mut q, 1, 0), Vec::<u64>::new());
    assert_eq!(acked(&mut q, 1, 1), vec![1]);
    // The failed bookie's acks still do not count.
    assert_eq!(acked(&mut q, 2, 2), Vec::<u64>::new());
    assert_eq!(acked(&mut q, 2, 0), Vec::<u64>::new());
    assert_eq!(acked(&mut q, 2, 1), vec![2]);
    let retry = q.retry_change().expect("the failed index still waits");
    assert_eq!(retry.first_entry, EntryId(3));
    assert_eq!(retry.failed, vec![2]);
    assert_eq!(q.retry_change(), None, "one change at a time");
}

/// A change cannot be postponed when the failures leave a write set below Qa; nor without a
/// change in progress; and a retry needs a failed index.
#[test]
fn postponing_needs_an_ack_quorum_of_survivors() {
    let mut q = quorum(3, 3, 2);
    send(&mut q, 1);
    assert_eq!(q.postpone_change(), Err(AddQuorumError::NoChangeInProgress));
    assert_eq!(q.retry_change(), None);
    assert!(matches!(
        q.bookie_failed(&id(0)),
        FailureAction::ChangeEnsemble(_)
    ));
    assert_eq!(q.bookie_failed(&id(1)), FailureAction::Deferred);
    assert_eq!(
        q.postpone_change(),
        Err(AddQuorumError::BelowAckQuorum {
            failed: 2,
            ack_quorum: 2
        })
    );
    // E5/Qw3/Qa2 tolerates one failed index per write set.
    let mut wide = quorum(5, 3, 2);
    send(&mut wide, 5);
    assert!(matches!(
        wide.bookie_failed(&id(4)),
        FailureAction::ChangeEnsemble(_)
    ));
    assert!(wide.postpone_change().is_ok());
}
