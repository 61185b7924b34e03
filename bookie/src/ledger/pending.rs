//! [`PendingAddQueue`]: the ordering and last-add-confirmed rules of a ledger writer, as a
//! plain struct without I/O.
//!
//! Rules (BookKeeper's):
//!
//! - Entry ids are assigned densely from 0 in call order ([`PendingAddQueue::push`]).
//! - Adds become durable in any order, but complete in id order: an add completes once it is
//!   durable and every earlier add has completed.
//! - The last-add-confirmed (LAC) is the highest id such that every id up to it completed.
//! - When an add fails, it and every later pending add fail; earlier pending adds may still
//!   complete. The queue then refuses new adds: a writer that lost an entry cannot go on past
//!   the hole.
//!
//! The replicated client will count acks per entry (durable at Qa bookies) here; for now one
//! durable report makes an entry durable.

use std::collections::VecDeque;

use strata_proto::EntryId;

/// Why [`PendingAddQueue::push`] refused an add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddRefused {
    /// An earlier add, this entry, failed.
    Failed { entry: EntryId },
    /// The writer is closing or closed.
    Closed,
}

/// Adds whose outcome is settled, each with the waiter given at push.
#[derive(Debug)]
pub struct Settled<W> {
    /// Completed successfully, in id order.
    pub completed: Vec<(EntryId, W)>,
    /// Failed, in id order: the reported failure first, then the later adds failed with it.
    pub failed: Vec<(EntryId, W)>,
}

impl<W> Default for Settled<W> {
    fn default() -> Self {
        Settled {
            completed: Vec::new(),
            failed: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Slot<W> {
    waiter: W,
    durable: bool,
}

/// Pending adds of one ledger writer, in id order. `W` is what the caller wants back when an
/// add settles (a reply channel, its size, ...).
#[derive(Debug)]
pub struct PendingAddQueue<W> {
    /// Next id to assign.
    next: u64,
    /// Id of `pending[0]`.
    first_pending: u64,
    pending: VecDeque<Slot<W>>,
    last_add_confirmed: Option<EntryId>,
    failed_at: Option<EntryId>,
    closed: bool,
}

impl<W> Default for PendingAddQueue<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> PendingAddQueue<W> {
    /// A queue for a new ledger: the first add gets id 0.
    pub fn new() -> Self {
        PendingAddQueue {
            next: 0,
            first_pending: 0,
            pending: VecDeque::new(),
            last_add_confirmed: None,
            failed_at: None,
            closed: false,
        }
    }

    /// Assigns the next id to a new add.
    pub fn push(&mut self, waiter: W) -> Result<EntryId, AddRefused> {
        if let Some(entry) = self.failed_at {
            return Err(AddRefused::Failed { entry });
        }
        if self.closed {
            return Err(AddRefused::Closed);
        }
        let id = EntryId(self.next);
        self.next += 1;
        self.pending.push_back(Slot {
            waiter,
            durable: false,
        });
        Ok(id)
    }

    /// Reports `entry` durable. Returns the adds that complete because of it (possibly none,
    /// if an earlier one is still pending). Unknown, settled or failed ids are ignored.
    pub fn durable(&mut self, entry: EntryId) -> Settled<W> {
        let mut settled = Settled::default();
        let Some(index) = self.index_of(entry) else {
            return settled;
        };
        if let Some(slot) = self.pending.get_mut(index) {
            slot.durable = true;
        }
        while self.pending.front().is_some_and(|slot| slot.durable) {
            let Some(slot) = self.pending.pop_front() else {
                break;
            };
            let id = EntryId(self.first_pending);
            self.first_pending += 1;
            self.last_add_confirmed = Some(id);
            settled.completed.push((id, slot.waiter));
        }
        settled
    }

    /// Reports `entry` failed: it and every later pending add fail, and the queue refuses new
    /// adds. Earlier pending adds stay pending. Reports about completed or never assigned ids
    /// are ignored; a failure, once recorded, is never forgotten.
    pub fn fail(&mut self, entry: EntryId) -> Settled<W> {
        let mut settled = Settled::default();
        if entry.0 >= self.first_pending && entry.0 < self.next {
            self.failed_at = Some(self.failed_at.map_or(entry, |f| f.min(entry)));
        }
        let Some(index) = self.index_of(entry) else {
            return settled;
        };
        let failed = self.pending.split_off(index);
        let first = self.first_pending + index as u64;
        settled.failed = failed
            .into_iter()
            .enumerate()
            .map(|(i, s)| (EntryId(first + i as u64), s.waiter))
            .collect();
        settled
    }

    /// Refuses new adds from now on; pending ones still settle.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Highest id such that every id up to it completed.
    pub fn last_add_confirmed(&self) -> Option<EntryId> {
        self.last_add_confirmed
    }

    /// Ids assigned so far (= the id the next add would get). Ids of failed adds count.
    pub fn entries_assigned(&self) -> u64 {
        self.next
    }

    /// Adds assigned and not yet settled.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The first add that failed, if any.
    pub fn failed_at(&self) -> Option<EntryId> {
        self.failed_at
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn index_of(&self, entry: EntryId) -> Option<usize> {
        let offset = entry.0.checked_sub(self.first_pending)?;
        let index = usize::try_from(offset).ok()?;
        (index < self.pending.len()).then_some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids<W>(v: &[(EntryId, W)]) -> Vec<u64> {
        v.iter().map(|(id, _)| id.0).collect()
    }

    fn queue_with(n: u64) -> PendingAddQueue<u64> {
        let mut q = PendingAddQueue::new();
        for i in 0..n {
            assert_eq!(q.push(i), Ok(EntryId(i)));
        }
        q
    }

    /// Ids are assigned densely from 0 in push order.
    #[test]
    fn ids_are_dense_and_in_call_order() {
        let q = queue_with(5);
        assert_eq!(q.entries_assigned(), 5);
        assert_eq!(q.pending(), 5);
        assert_eq!(q.last_add_confirmed(), None);
    }

    /// In-order durability completes each add at once and advances the LAC one by one.
    #[test]
    fn in_order_durability_completes_each_add() {
        let mut q = queue_with(3);
        for i in 0..3 {
            let s = q.durable(EntryId(i));
            assert_eq!(ids(&s.completed), vec![i]);
            assert_eq!(s.completed[0].1, i, "the waiter comes back");
            assert_eq!(q.last_add_confirmed(), Some(EntryId(i)));
        }
        assert_eq!(q.pending(), 0);
    }

    /// An add durable before an earlier one waits for it; then both complete, in id order.
    #[test]
    fn out_of_order_durability_completes_in_id_order() {
        let mut q = queue_with(4);
        assert!(q.durable(EntryId(2)).completed.is_empty());
        assert!(q.durable(EntryId(1)).completed.is_empty());
        assert_eq!(q.last_add_confirmed(), None);
        assert_eq!(ids(&q.durable(EntryId(0)).completed), vec![0, 1, 2]);
        assert_eq!(q.last_add_confirmed(), Some(EntryId(2)));
        assert_eq!(ids(&q.durable(EntryId(3)).completed), vec![3]);
        assert_eq!(q.last_add_confirmed(), Some(EntryId(3)));
    }

    /// Every permutation of durability reports yields completions in id order and a LAC that
    /// is always the highest id with all ids up to it durable.
    #[test]
    fn every_completion_order_yields_id_order() {
        fn permutations(items: Vec<u64>) -> Vec<Vec<u64>> {
            if items.len() <= 1 {
                return vec![items];
            }
            let mut out = Vec::new();
            for i in 0..items.len() {
                let mut rest = items.clone();
                let x = rest.remove(i);
                for mut p in permutations(rest) {
                    p.insert(0, x);
                    out.push(p);
                }
            }
            out
        }
        for order in permutations((0..5).collect()) {
            let mut q = queue_with(5);
            let mut done = Vec::new();
            let mut durable = [false; 5];
            for id in &order {
                durable[*id as usize] = true;
                done.extend(ids(&q.durable(EntryId(*id)).completed));
                let expected_lac = durable.iter().take_while(|d| **d).count().checked_sub(1);
                assert_eq!(
                    q.last_add_confirmed(),
                    expected_lac.map(|l| EntryId(l as u64)),
                    "{order:?}"
                );
            }
            assert_eq!(done, vec![0, 1, 2, 3, 4], "order {order:?}");
        }
    }

    /// Reporting an id twice, or an unknown id, completes nothing more.
    #[test]
    fn duplicate_and_unknown_reports_are_ignored() {
        let mut q = queue_with(2);
        assert_eq!(ids(&q.durable(EntryId(0)).completed), vec![0]);
        assert!(q.durable(EntryId(0)).completed.is_empty());
        assert!(q.durable(EntryId(7)).completed.is_empty());
        assert_eq!(q.last_add_confirmed(), Some(EntryId(0)));
        assert_eq!(ids(&q.durable(EntryId(1)).completed), vec![1]);
    }

    /// A failed add fails itself and every later pending add, even ones already durable.
    #[test]
    fn failure_fails_all_later_adds() {
        let mut q = queue_with(5);
        assert!(q.durable(EntryId(3)).completed.is_empty());
        let s = q.fail(EntryId(2));
        assert_eq!(ids(&s.failed), vec![2, 3, 4]);
        assert!(s.completed.is_empty());
        assert_eq!(q.failed_at(), Some(EntryId(2)));
        // Later reports about failed adds change nothing.
        assert!(q.durable(EntryId(4)).completed.is_empty());
        assert!(q.fail(EntryId(3)).failed.is_empty());
        assert_eq!(q.failed_at(), Some(EntryId(2)));
    }

    /// Adds before the failed one still complete normally, and the LAC stops below the hole.
    #[test]
    fn adds_before_a_failure_still_complete() {
        let mut q = queue_with(4);
        assert_eq!(ids(&q.fail(EntryId(2)).failed), vec![2, 3]);
        assert_eq!(ids(&q.durable(EntryId(1)).completed), Vec::<u64>::new());
        assert_eq!(ids(&q.durable(EntryId(0)).completed), vec![0, 1]);
        assert_eq!(q.last_add_confirmed(), Some(EntryId(1)));
        assert_eq!(q.pending(), 0);
    }

    /// After a failure the queue refuses new adds, naming the failed entry; ids are not reused.
    #[test]
    fn failure_refuses_later_pushes() {
        let mut q = queue_with(3);
        q.fail(EntryId(1));
        assert_eq!(q.push(9), Err(AddRefused::Failed { entry: EntryId(1) }));
        assert_eq!(q.entries_assigned(), 3);
    }

    /// An earlier failure reported after a later one moves the failure point down.
    #[test]
    fn earliest_failure_wins() {
        let mut q = queue_with(4);
        assert_eq!(ids(&q.fail(EntryId(3)).failed), vec![3]);
        assert_eq!(ids(&q.fail(EntryId(1)).failed), vec![1, 2]);
        assert_eq!(q.failed_at(), Some(EntryId(1)));
        assert_eq!(ids(&q.durable(EntryId(0)).completed), vec![0]);
        assert_eq!(q.last_add_confirmed(), Some(EntryId(0)));
    }

    /// A failure reported for an already completed add fails nothing.
    #[test]
    fn failure_of_a_completed_add_is_ignored() {
        let mut q = queue_with(2);
        q.durable(EntryId(0));
        assert!(q.fail(EntryId(0)).failed.is_empty());
        assert_eq!(q.failed_at(), None);
        assert_eq!(q.push(2), Ok(EntryId(2)));
    }

    /// A closed queue refuses new adds but lets pending ones settle.
    #[test]
    fn close_refuses_new_adds_and_drains_pending() {
        let mut q = queue_with(2);
        q.close();
        assert!(q.is_closed());
        assert_eq!(q.push(5), Err(AddRefused::Closed));
        assert_eq!(ids(&q.durable(EntryId(1)).completed), Vec::<u64>::new());
        assert_eq!(ids(&q.durable(EntryId(0)).completed), vec![0, 1]);
        assert_eq!(q.pending(), 0);
        assert_eq!(q.last_add_confirmed(), Some(EntryId(1)));
    }
}
