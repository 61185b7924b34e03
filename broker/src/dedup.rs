//! Producer deduplication as a plain struct: which (producer name, sequence id) batches a
//! topic has stored, so a batch resent after a reconnect or a broker failover is not stored
//! twice. No I/O here; [`crate::topic::Topic`] feeds it and persists its snapshots.
//!
//! As in Pulsar, each producer has two marks: `pushed`, the highest sequence id handed to the
//! log, and `persisted`, the highest one known durable. A batch at or below `persisted` is a
//! duplicate; one above `persisted` but at or below `pushed` is still being written, and the
//! producer is told to retry once it is settled; anything above `pushed` is new.
//!
//! A producer idle for longer than the topic's expiry, with nothing in flight, is forgotten
//! (Pulsar's producer inactivity timeout, Kafka's `producer.id.expiration.ms`): generated
//! producer names would otherwise pile up in memory and in every snapshot. A resend from a
//! forgotten producer is stored again. What remains of the forgotten is one number, the
//! highest id any of them reached: a producer the topic does not know is told to continue
//! above it, so one that comes back never reuses an id that an older snapshot (snapshot
//! writes are not ordered) or a rebuild from before the forgetting still holds for it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use strata_metastore::tables::DedupRecord;
use strata_proto::Position;

/// Publishes between two snapshots (bounds the replay after a failover).
pub const SNAPSHOT_EVERY: u64 = 1000;

/// Recent (sequence id, position) pairs kept per producer, to answer a duplicate with the
/// position the batch was stored at.
const RECENT_PER_PRODUCER: usize = 1024;

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: store it.
    New,
    /// Already stored; the position when still known.
    Duplicate(Option<Position>),
    /// Handed to the log but not yet durable (or its write failed): retry later.
    InFlight,
}

#[derive(Debug, Clone)]
struct ProducerMarks {
    pushed: u64,
    persisted: u64,
    recent: VecDeque<(u64, Position)>,
    /// When this producer last sent a new batch (or was found in the log, on a rebuild).
    last_active: Instant,
}

impl ProducerMarks {
    fn new(seq: u64, last_active: Instant) -> Self {
        Self {
            pushed: seq,
            persisted: seq,
            recent: VecDeque::new(),
            last_active,
        }
    }

    fn remember(&mut self, sequence_id: u64, position: Position) {
        if self.recent.back().is_some_and(|(s, _)| *s >= sequence_id) {
            return;
        }
        if self.recent.len() == RECENT_PER_PRODUCER {
            self.recent.pop_front();
        }
        self.recent.push_back((sequence_id, position));
    }

    fn position_of(&self, sequence_id: u64) -> Option<Position> {
        let i = self
            .recent
            .binary_search_by_key(&sequence_id, |(s, _)| *s)
            .ok()?;
        Some(self.recent[i].1)
    }
}

/// A topic's dedup state.
#[derive(Debug)]
pub struct DedupState {
    producers: HashMap<String, ProducerMarks>,
    /// The highest id of any producer forgotten so far (see the module documentation).
    forgotten_floor: u64,
    publishes_since_snapshot: u64,
    /// The latest time this state was told of: a producer first seen as durable (never
    /// through [`DedupState::check`]) counts as active then.
    clock: Instant,
}

impl DedupState {
    /// An empty state, as of `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            producers: HashMap::new(),
            forgotten_floor: 0,
            publishes_since_snapshot: 0,
            clock: now,
        }
    }

    /// The state a snapshot describes, as of `now` (replay the entries after its position
    /// next). Every producer in it counts as active at `now`: the snapshot does not say when
    /// each last published, and forgetting one early could store a resend twice.
    pub fn from_snapshot(record: &DedupRecord, now: Instant) -> Self {
        let producers = record
            .producers
            .iter()
            .map(|(name, &seq)| (name.clone(), ProducerMarks::new(seq, now)))
            .collect();
        Self {
            producers,
            forgotten_floor: record.forgotten_floor,
            publishes_since_snapshot: 0,
            clock: now,
        }
    }

    /// Whether [`DedupState::check`] would answer `New`, without recording anything (so a
    /// batch refused for another reason leaves no trace).
    pub fn is_new(&self, producer: &str, sequence_id: u64) -> bool {
        self.producers
            .get(producer)
            .is_none_or(|m| sequence_id > m.pushed.max(m.persisted))
    }

    /// Decides about a batch arriving at `now`; a `New` one counts as pushed from now on.
    pub fn check(&mut self, producer: &str, sequence_id: u64, now: Instant) -> Verdict {
        self.clock = self.clock.max(now);
        let marks = self
            .producers
            .entry(producer.to_owned())
            .or_insert_with(|| ProducerMarks::new(0, now));
        if sequence_id <= marks.persisted {
            return Verdict::Duplicate(marks.position_of(sequence_id));
        }
        if sequence_id <= marks.pushed {
            return Verdict::InFlight;
        }
        marks.pushed = sequence_id;
        marks.last_active = now;
        self.publishes_since_snapshot += 1;
        Verdict::New
    }

    /// A pushed batch became durable at `position`.
    pub fn persisted(&mut self, producer: &str, sequence_id: u64, position: Position) {
        let clock = self.clock;
        let marks = self
            .producers
            .entry(producer.to_owned())
            .or_insert_with(|| ProducerMarks::new(0, clock));
        marks.persisted = marks.persisted.max(sequence_id);
        marks.pushed = marks.pushed.max(sequence_id);
        marks.remember(sequence_id, position);
    }

    /// A batch read back from the log while rebuilding the state.
    pub fn replayed(&mut self, producer: &str, sequence_id: u64, position: Position) {
        self.persisted(producer, sequence_id, position);
    }

    /// Highest sequence id stored for `producer`; for a producer not known, the forgotten
    /// producers' highest (0 if none), which it is to continue above.
    pub fn last_persisted(&self, producer: &str) -> u64 {
        self.producers
            .get(producer)
            .map_or(self.forgotten_floor, |m| m.persisted)
    }

    /// The highest id of any producer forgotten so far, for snapshots.
    pub fn forgotten_floor(&self) -> u64 {
        self.forgotten_floor
    }

    /// Whether enough was published since the last snapshot to take another; resets the count.
    pub fn snapshot_due(&mut self) -> bool {
        if self.publishes_since_snapshot < SNAPSHOT_EVERY {
            return false;
        }
        self.publishes_since_snapshot = 0;
        true
    }

    /// Forgets the producers that sent no new batch for `idle` up to `now` and have nothing
    /// in flight; returns how many were forgotten.
    pub fn forget_idle(&mut self, now: Instant, idle: Duration) -> usize {
        self.clock = self.clock.max(now);
        let before = self.producers.len();
        let mut floor = self.forgotten_floor;
        self.producers.retain(|_, m| {
            let keep =
                m.pushed != m.persisted || now.saturating_duration_since(m.last_active) < idle;
            if !keep {
                floor = floor.max(m.persisted);
            }
            keep
        });
        self.forgotten_floor = floor;
        before - self.producers.len()
    }

    /// How many producers are remembered.
    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Whether every batch handed to the log is known durable (nothing in flight).
    pub fn all_persisted(&self) -> bool {
        self.producers.values().all(|m| m.pushed == m.persisted)
    }

    /// The pushed marks, to be written as a snapshot once every pushed batch is durable.
    pub fn pushed_marks(&self) -> BTreeMap<String, u64> {
        self.producers
            .iter()
            .filter(|(_, m)| m.pushed > 0)
            .map(|(name, m)| (name.clone(), m.pushed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(e: u64) -> Position {
        Position::new(7, e)
    }

    /// `is_new` agrees with `check` and records nothing: a batch refused after asking it
    /// (over a quota, say) leaves the state as it was.
    #[test]
    fn is_new_records_nothing() {
        let mut d = DedupState::new(Instant::now());
        assert!(d.is_new("p", 1));
        assert!(d.is_new("p", 1), "asking twice changes nothing");
        assert!(d.all_persisted());
        assert_eq!(d.check("p", 1, Instant::now()), Verdict::New);
        assert!(!d.is_new("p", 1), "in flight");
        d.persisted("p", 1, pos(0));
        assert!(!d.is_new("p", 1), "stored");
        assert!(d.is_new("p", 2));
    }

    /// A batch is new once; after it is durable a resend is a duplicate with its position;
    /// before that, a resend is in flight.
    #[test]
    fn a_resend_is_in_flight_then_duplicate() {
        let mut d = DedupState::new(Instant::now());
        assert_eq!(d.check("p", 1, Instant::now()), Verdict::New);
        assert_eq!(d.check("p", 1, Instant::now()), Verdict::InFlight);
        d.persisted("p", 1, pos(0));
        assert_eq!(
            d.check("p", 1, Instant::now()),
            Verdict::Duplicate(Some(pos(0)))
        );
        assert_eq!(d.check("p", 2, Instant::now()), Verdict::New);
        assert_eq!(
            d.check("q", 1, Instant::now()),
            Verdict::New,
            "producers are independent"
        );
    }

    /// Sequence ids only move forward: an older one than the last stored is a duplicate.
    #[test]
    fn older_sequence_ids_are_duplicates() {
        let mut d = DedupState::new(Instant::now());
        assert_eq!(d.check("p", 10, Instant::now()), Verdict::New);
        d.persisted("p", 10, pos(3));
        assert_eq!(d.check("p", 4, Instant::now()), Verdict::Duplicate(None));
        assert_eq!(d.last_persisted("p"), 10);
    }

    /// A snapshot plus a replay of the entries after it gives back the same decisions.
    #[test]
    fn snapshot_and_replay_restore_the_marks() {
        let mut d = DedupState::new(Instant::now());
        for seq in 1..=3 {
            assert_eq!(d.check("p", seq, Instant::now()), Verdict::New);
        }
        let snapshot = DedupRecord {
            position: Some(pos(2)),
            producers: d.pushed_marks(),
            forgotten_floor: 0,
        };
        let mut restored = DedupState::from_snapshot(&snapshot, Instant::now());
        restored.replayed("p", 4, pos(3));
        assert_eq!(
            restored.check("p", 3, Instant::now()),
            Verdict::Duplicate(None)
        );
        assert_eq!(
            restored.check("p", 4, Instant::now()),
            Verdict::Duplicate(Some(pos(3)))
        );
        assert_eq!(restored.check("p", 5, Instant::now()), Verdict::New);
    }

    /// Snapshots fall due every SNAPSHOT_EVERY new batches; duplicates do not count.
    #[test]
    fn snapshots_fall_due_by_new_batches() {
        let mut d = DedupState::new(Instant::now());
        for seq in 1..SNAPSHOT_EVERY {
            d.check("p", seq, Instant::now());
            d.check("p", seq, Instant::now());
        }
        assert!(!d.snapshot_due());
        d.check("p", SNAPSHOT_EVERY, Instant::now());
        assert!(d.snapshot_due());
        assert!(!d.snapshot_due(), "the count restarts");
    }

    /// Only the most recent positions are kept per producer.
    #[test]
    fn recent_positions_are_bounded() {
        let mut d = DedupState::new(Instant::now());
        let n = RECENT_PER_PRODUCER as u64 + 10;
        for seq in 1..=n {
            d.check("p", seq, Instant::now());
            d.persisted("p", seq, pos(seq));
        }
        assert_eq!(d.check("p", 1, Instant::now()), Verdict::Duplicate(None));
        assert_eq!(
            d.check("p", n, Instant::now()),
            Verdict::Duplicate(Some(pos(n)))
        );
    }

    /// A producer that sent nothing new for the expiry, with nothing in flight, is forgotten
    /// (and so left out of the next snapshot); one still active, or with a batch in flight,
    /// is kept, however long ago it began.
    #[test]
    fn idle_producers_are_forgotten_unless_in_flight() {
        let idle = Duration::from_secs(60);
        let t0 = Instant::now();
        let later = t0 + idle;
        let mut d = DedupState::new(t0);
        assert_eq!(d.check("gone", 1, t0), Verdict::New);
        d.persisted("gone", 1, pos(0));
        assert_eq!(d.check("busy", 1, t0), Verdict::New);
        assert_eq!(
            d.check("busy", 2, later - Duration::from_secs(1)),
            Verdict::New
        );
        d.persisted("busy", 1, pos(1));
        d.persisted("busy", 2, pos(2));
        assert_eq!(
            d.check("stuck", 1, t0),
            Verdict::New,
            "never becomes durable"
        );

        assert_eq!(d.forget_idle(later - Duration::from_millis(1), idle), 0);
        assert_eq!(
            d.forget_idle(later, idle),
            1,
            "only the idle, settled producer"
        );
        assert_eq!(d.producer_count(), 2);
        assert!(
            !d.pushed_marks().contains_key("gone"),
            "left out of snapshots"
        );
        assert_eq!(
            d.last_persisted("gone"),
            1,
            "told the floor, as any unknown producer"
        );
        assert_eq!(
            d.check("gone", 1, later),
            Verdict::New,
            "a forgotten producer starts afresh"
        );
        assert_eq!(
            d.check("stuck", 1, later),
            Verdict::InFlight,
            "in flight is never forgotten"
        );
    }

    /// Producers restored from a snapshot or found in the log count as active at the rebuild:
    /// the snapshot does not say when they last published.
    #[test]
    fn a_rebuild_counts_its_producers_as_active_then() {
        let idle = Duration::from_secs(60);
        let rebuilt_at = Instant::now();
        let snapshot = DedupRecord {
            position: Some(pos(0)),
            producers: BTreeMap::from([("old".to_owned(), 5)]),
            forgotten_floor: 0,
        };
        let mut d = DedupState::from_snapshot(&snapshot, rebuilt_at);
        d.replayed("tail", 1, pos(1));
        assert_eq!(
            d.forget_idle(rebuilt_at + idle - Duration::from_millis(1), idle),
            0
        );
        assert_eq!(d.forget_idle(rebuilt_at + idle, idle), 2);
    }

    /// A forgotten producer leaves only the floor: one the topic does not know (the same
    /// name back, or a new one) continues above it, in memory and after a rebuild; a
    /// snapshot from before the forgetting, still holding the old mark, then cannot take the
    /// new batches for duplicates.
    #[test]
    fn a_forgotten_producer_continues_above_the_floor() {
        let idle = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut d = DedupState::new(t0);
        assert_eq!(d.last_persisted("p"), 0);
        assert_eq!(d.check("p", 100, t0), Verdict::New);
        d.persisted("p", 100, pos(0));
        assert_eq!(d.check("q", 7, t0), Verdict::New);
        d.persisted("q", 7, pos(1));
        assert_eq!(d.forget_idle(t0 + idle, idle), 2);
        assert_eq!(d.forgotten_floor(), 100, "the highest forgotten id");
        assert_eq!(d.last_persisted("p"), 100);
        assert_eq!(d.last_persisted("new"), 100);

        // Back, it continues at 101; the topic is then rebuilt from a snapshot taken
        // before the forgetting, plus the log after it.
        let older = DedupRecord {
            position: Some(pos(1)),
            producers: BTreeMap::from([("p".to_owned(), 100), ("q".to_owned(), 7)]),
            forgotten_floor: 0,
        };
        let mut rebuilt = DedupState::from_snapshot(&older, t0 + idle);
        rebuilt.replayed("p", 101, pos(2));
        assert_eq!(rebuilt.last_persisted("p"), 101);
        assert_eq!(rebuilt.check("p", 102, t0 + idle), Verdict::New);

        let newer = DedupRecord {
            position: Some(pos(2)),
            producers: d.pushed_marks(),
            forgotten_floor: d.forgotten_floor(),
        };
        let restored = DedupState::from_snapshot(&newer, t0 + idle);
        assert_eq!(
            restored.last_persisted("new"),
            100,
            "the floor survives a snapshot"
        );
    }
}
