//! [`ReadPlan`]: which replica to read an entry from, with failover and speculative reads.
//!
//! Rules (BookKeeper's sequential read): try the entry's write set in order, starting at a
//! preferred index (e.g. a local bookie, or spreading load), with bookies known to be failed
//! moved to the end (tried only when every other replica failed). Read one replica at a
//! time; when every replica read so far has failed, read the next one at once. If a read is
//! slower than the speculative delay, also read the next replica without cancelling the
//! first; the first success wins. When every replica has failed, the read fails.

use std::time::{Duration, Instant};

use strata_proto::EntryId;

use super::schedule::{IndexSet, WriteSchedule};

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStep {
    /// Send a read to this ensemble index.
    Send(usize),
    /// Wait for an outstanding read (or the next timeout).
    Wait,
    /// Every replica failed.
    Failed,
    /// A replica answered; the read is over.
    Done,
}

/// The replicas of one entry read, in the order to try them.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    order: Vec<usize>,
    /// `order[..sent]` have been sent a read.
    sent: usize,
    errored: IndexSet,
    speculative_delay: Option<Duration>,
    last_sent_at: Option<Instant>,
    state: ReadStep,
}

impl ReadPlan {
    /// A read of `entry`. `preferred` rotates the write set to start there if it is a member;
    /// `known_failed` indexes go last; `speculative_delay` of `None` disables speculation.
    pub fn new(
        schedule: WriteSchedule,
        entry: EntryId,
        preferred: Option<usize>,
        known_failed: IndexSet,
        speculative_delay: Option<Duration>,
    ) -> Self {
        let mut order: Vec<usize> = schedule.write_set(entry).collect();
        if let Some(at) = preferred.and_then(|p| order.iter().position(|i| *i == p)) {
            order.rotate_left(at);
        }
        // Stable: keeps the rotation's order within each group.
        order.sort_by_key(|i| known_failed.contains(*i));
        ReadPlan {
            order,
            sent: 0,
            errored: IndexSet::new(),
            speculative_delay,
            last_sent_at: None,
            state: ReadStep::Wait,
        }
    }

    /// The replicas in the order they will be tried.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The first read to send.
    pub fn start(&mut self, now: Instant) -> ReadStep {
        if self.sent > 0 || self.is_over() {
            return self.state;
        }
        self.send_next(now)
    }

    /// The read sent to `index` failed (error, or "no such entry" on a normal read).
    pub fn on_error(&mut self, index: usize, now: Instant) -> ReadStep {
        if self.is_over() || !self.order[..self.sent].contains(&index) {
            return self.state;
        }
        self.errored.insert(index);
        if self.outstanding() > 0 {
            return ReadStep::Wait;
        }
        self.send_next(now)
    }

    /// The read sent to `index` succeeded. Returns whether to use its answer (the first
    /// success of a read that was sent and not over).
    pub fn on_success(&mut self, index: usize) -> bool {
        let sent = self.order[..self.sent].contains(&index);
        if self.is_over() || !sent || self.errored.contains(index) {
            return false;
        }
        self.state = ReadStep::Done;
        true
    }

    /// When to call [`on_timeout`](Self::on_timeout): the speculative deadline, if a
    /// replica is left to try and speculation is on.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_over() || self.sent == self.order.len() {
            return None;
        }
        Some(self.last_sent_at? + self.speculative_delay?)
    }

    /// Returns the index to send a speculative read to, if the deadline has passed.
    pub fn on_timeout(&mut self, now: Instant) -> Option<usize> {
        let deadline = self.poll_timeout()?;
        if now < deadline {
            return None;
        }
        match self.send_next(now) {
            ReadStep::Send(index) => Some(index),
            _ => None,
        }
    }

    /// Reads sent and not answered.
    pub fn outstanding(&self) -> usize {
        self.order[..self.sent]
            .iter()
            .filter(|i| !self.errored.contains(**i))
            .count()
    }

    fn is_over(&self) -> bool {
        matches!(self.state, ReadStep::Done | ReadStep::Failed)
    }

    fn send_next(&mut self, now: Instant) -> ReadStep {
        match self.order.get(self.sent) {
            Some(index) => {
                self.sent += 1;
                self.last_sent_at = Some(now);
                ReadStep::Send(*index)
            }
            None if self.outstanding() == 0 => {
                self.state = ReadStep::Failed;
                ReadStep::Failed
            }
            None => ReadStep::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(e: usize, qw: usize, qa: usize) -> WriteSchedule {
        WriteSchedule::new(e, qw, qa).expect("valid schedule")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The order is the write set rotated to the preferred member, with known-failed
    /// replicas last; a preferred index outside the write set changes nothing.
    #[test]
    fn order_starts_at_preferred_and_puts_failed_last() {
        let s = schedule(5, 3, 2);
        let plan = |pref, failed: &[usize]| {
            ReadPlan::new(s, EntryId(3), pref, failed.iter().copied().collect(), None)
                .order()
                .to_vec()
        };
        assert_eq!(plan(None, &[]), vec![3, 4, 0]);
        assert_eq!(plan(Some(4), &[]), vec![4, 0, 3]);
        assert_eq!(
            plan(Some(1), &[]),
            vec![3, 4, 0],
            "1 does not store entry 3"
        );
        assert_eq!(plan(Some(4), &[0]), vec![4, 3, 0]);
        assert_eq!(plan(None, &[3, 4]), vec![0, 3, 4]);
        assert_eq!(
            plan(None, &[2]),
            vec![3, 4, 0],
            "failures outside do not matter"
        );
    }

    /// Errors fail over replica by replica; after the last one the read fails, and it never
    /// sends to a replica twice.
    #[test]
    fn errors_fail_over_then_fail() {
        let now = Instant::now();
        let mut p = ReadPlan::new(schedule(3, 3, 2), EntryId(1), None, IndexSet::new(), None);
        assert_eq!(p.start(now), ReadStep::Send(1));
        assert_eq!(
            p.start(now),
            ReadStep::Wait,
            "start twice sends nothing more"
        );
        assert_eq!(
            p.on_error(0, now),
            ReadStep::Wait,
            "error from an unsent replica"
        );
        assert_eq!(p.on_error(1, now), ReadStep::Send(2));
        assert_eq!(p.on_error(1, now), ReadStep::Wait, "duplicate error");
        assert_eq!(p.on_error(2, now), ReadStep::Send(0));
        assert_eq!(p.on_error(0, now), ReadStep::Failed);
        assert_eq!(p.on_timeout(now + ms(1000)), None);
        assert!(!p.on_success(0), "a late success after failing is not used");
    }

    /// A speculative read goes to the next replica only once the delay has passed since the
    /// last send; an error while another read is outstanding sends nothing; the first
    /// success ends the read.
    #[test]
    fn speculative_read_after_delay() {
        let t0 = Instant::now();
        let mut p = ReadPlan::new(
            schedule(3, 3, 2),
            EntryId(0),
            None,
            IndexSet::new(),
            Some(ms(10)),
        );
        assert_eq!(p.poll_timeout(), None, "nothing sent yet");
        assert_eq!(p.start(t0), ReadStep::Send(0));
        assert_eq!(p.poll_timeout(), Some(t0 + ms(10)));
        assert_eq!(p.on_timeout(t0 + ms(9)), None);
        assert_eq!(p.on_timeout(t0 + ms(10)), Some(1));
        assert_eq!(p.poll_timeout(), Some(t0 + ms(20)));
        assert_eq!(p.outstanding(), 2);
        assert_eq!(p.on_error(0, t0 + ms(11)), ReadStep::Wait, "1 is still out");
        assert_eq!(p.on_timeout(t0 + ms(20)), Some(2));
        assert_eq!(p.poll_timeout(), None, "no replica left");
        assert!(p.on_success(2));
        assert!(!p.on_success(1), "only the first success is used");
        assert_eq!(p.on_error(1, t0 + ms(30)), ReadStep::Done);
    }

    /// Without a speculative delay no timeout is ever requested.
    #[test]
    fn no_speculation_without_delay() {
        let t0 = Instant::now();
        let mut p = ReadPlan::new(schedule(3, 2, 2), EntryId(0), None, IndexSet::new(), None);
        assert_eq!(p.start(t0), ReadStep::Send(0));
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.on_timeout(t0 + ms(1_000_000)), None);
        assert_eq!(p.on_error(0, t0), ReadStep::Send(1));
        assert!(p.on_success(1));
    }

    /// For every schedule and every pattern of failing replicas, reading with errors only
    /// tries each write-set member exactly once and fails exactly when all of them failed;
    /// otherwise the first healthy replica in order answers.
    #[test]
    fn every_failure_pattern_reads_each_replica_at_most_once() {
        let now = Instant::now();
        for s in super::super::schedule::all_schedules(5) {
            for entry in 0..s.ensemble_size() as u64 {
                let ws: Vec<usize> = s.write_set(EntryId(entry)).collect();
                for mask in 0u32..1 << ws.len() {
                    let bad: Vec<usize> = (0..ws.len())
                        .filter(|i| mask & (1 << i) != 0)
                        .map(|i| ws[i])
                        .collect();
                    let mut p = ReadPlan::new(s, EntryId(entry), None, IndexSet::new(), None);
                    let mut tried = Vec::new();
                    let mut step = p.start(now);
                    let used = loop {
                        match step {
                            ReadStep::Send(i) if bad.contains(&i) => {
                                tried.push(i);
                                step = p.on_error(i, now);
                            }
                            ReadStep::Send(i) => {
                                tried.push(i);
                                assert!(p.on_success(i));
                                break Some(i);
                            }
                            ReadStep::Failed => break None,
                            other => panic!("unexpected {other:?}"),
                        }
                    };
                    let first_good = ws.iter().copied().find(|i| !bad.contains(i));
                    assert_eq!(used, first_good, "{s:?} entry {entry} bad {bad:?}");
                    let mut dedup = tried.clone();
                    dedup.sort_unstable();
                    dedup.dedup();
                    assert_eq!(dedup.len(), tried.len(), "tried {tried:?}");
                }
            }
        }
    }
}
