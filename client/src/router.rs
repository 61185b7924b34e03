//! Which partition a message goes to (no I/O).
//!
//! A keyed message goes to `hash(key) % partitions`, with the hash every Strata node and
//! client shares, so all of a key's messages land on one partition, in order. Messages
//! without a key go round-robin a batch at a time: they stay on one partition until a full
//! batch went there or a batching delay passed, so batches fill as on an unpartitioned topic
//! and a slow sender still spreads (Pulsar switches partitions per batching interval for the
//! same reason).

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct MessageRouter {
    partitions: usize,
    batch_size: usize,
    switch_after: Duration,
    started: Instant,
    unkeyed: Mutex<Unkeyed>,
}

/// Where unkeyed messages go now.
#[derive(Debug, Default)]
struct Unkeyed {
    partition: usize,
    sent: usize,
    /// The batching interval (counted from `started`) the current partition was chosen in.
    interval: u64,
}

impl MessageRouter {
    pub fn new(partitions: usize, batch_size: usize, batch_delay: Duration) -> Self {
        Self {
            partitions: partitions.max(1),
            batch_size: batch_size.max(1),
            switch_after: batch_delay.max(Duration::from_millis(1)),
            started: Instant::now(),
            unkeyed: Mutex::new(Unkeyed::default()),
        }
    }

    /// The partition of the next message, by its key if it has one (an empty key is none).
    pub fn partition(&self, key: Option<&str>) -> usize {
        self.partition_at(key, Instant::now())
    }

    fn partition_at(&self, key: Option<&str>, now: Instant) -> usize {
        if self.partitions == 1 {
            return 0;
        }
        if let Some(k) = key.filter(|k| !k.is_empty()) {
            return strata_proto::stable_hash(k.as_bytes()) as usize % self.partitions;
        }
        let interval = (now.saturating_duration_since(self.started).as_nanos()
            / self.switch_after.as_nanos()) as u64;
        let mut u = self.unkeyed.lock().unwrap_or_else(|p| p.into_inner());
        if u.sent >= self.batch_size || interval != u.interval {
            u.partition = (u.partition + 1) % self.partitions;
            u.sent = 0;
            u.interval = interval;
        }
        u.sent += 1;
        u.partition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One key always maps to one partition, and keys spread over all of them.
    #[test]
    fn keys_stick_to_one_partition_and_spread() {
        let router = MessageRouter::new(4, 100, Duration::from_millis(1));
        let mut used = [0usize; 4];
        for i in 0..1000 {
            let key = format!("key-{i}");
            let p = router.partition(Some(&key));
            assert_eq!(p, router.partition(Some(&key)), "{key} moved");
            used[p] += 1;
        }
        assert!(used.iter().all(|&n| n > 150), "uneven spread {used:?}");
    }

    /// Unkeyed messages fill a batch on one partition, then move to the next, visiting all.
    #[test]
    fn unkeyed_messages_go_round_robin_a_batch_at_a_time() {
        let router = MessageRouter::new(3, 2, Duration::from_secs(3600));
        let now = router.started;
        let seen: Vec<usize> = (0..8).map(|_| router.partition_at(None, now)).collect();
        assert_eq!(seen, [0, 0, 1, 1, 2, 2, 0, 0]);
        assert_eq!(
            router.partition_at(Some(""), now),
            1,
            "an empty key is no key"
        );
    }

    /// A sender slower than the batching delay still spreads: each interval moves on.
    #[test]
    fn unkeyed_messages_move_on_after_the_batching_delay() {
        let router = MessageRouter::new(3, 1000, Duration::from_millis(10));
        let t = |ms| router.started + Duration::from_millis(ms);
        assert_eq!(router.partition_at(None, t(0)), 0);
        assert_eq!(router.partition_at(None, t(5)), 0, "same interval");
        assert_eq!(router.partition_at(None, t(12)), 1);
        assert_eq!(router.partition_at(None, t(25)), 2);
        assert_eq!(router.partition_at(None, t(31)), 0);
    }

    #[test]
    fn one_partition_takes_everything() {
        let router = MessageRouter::new(1, 10, Duration::from_millis(1));
        assert_eq!(router.partition(Some("k")), 0);
        assert_eq!(router.partition(None), 0);
    }
}
