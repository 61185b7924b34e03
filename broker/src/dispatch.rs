//! Dispatch decisions as plain functions (no I/O): which consumer of a key_shared
//! subscription a key goes to, and how long a negatively acknowledged message waits.

use std::time::Duration;

use crate::bundles::stable_hash;

/// Points each consumer has on the key ring: enough that keys spread evenly, few enough
/// that rebuilding the ring on a join or leave is cheap.
const POINTS_PER_CONSUMER: u32 = 64;

/// A consistent-hash ring over the consumers of a key_shared subscription. A consumer joining
/// or leaving moves only the keys of the ring segments it gains or loses; every other key
/// keeps its consumer, so its order is undisturbed.
#[derive(Debug, Default, Clone)]
pub struct KeyRing {
    /// (point, consumer id), sorted by point.
    points: Vec<(u32, u64)>,
}

impl KeyRing {
    /// The ring of `consumers`, given as (id, name). Points derive from the name and id, so
    /// a consumer's place on the ring does not depend on who else is there.
    pub fn new<'a>(consumers: impl IntoIterator<Item = (u64, &'a str)>) -> Self {
        let mut points = Vec::new();
        for (id, name) in consumers {
            for i in 0..POINTS_PER_CONSUMER {
                points.push((stable_hash(format!("{name}#{id}#{i}").as_bytes()), id));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The consumer for a key hash: the first point at or after it, wrapping around.
    pub fn consumer_for(&self, key_hash: u32) -> Option<u64> {
        let i = self.points.partition_point(|(p, _)| *p < key_hash);
        self.points
            .get(i)
            .or_else(|| self.points.first())
            .map(|(_, id)| *id)
    }
}

/// The hash a message key is routed by (the empty key is a key like any other).
pub fn key_hash(key: &str) -> u32 {
    stable_hash(key.as_bytes())
}

/// How long a message negatively acknowledged for the `count`th time waits before it is
/// delivered again: `base` doubled for each earlier redelivery, at most `max`.
pub fn redelivery_delay(count: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32 << count.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(ring: &KeyRing, keys: u32) -> Vec<Option<u64>> {
        (0..keys)
            .map(|k| ring.consumer_for(key_hash(&format!("key-{k}"))))
            .collect()
    }

    /// Keys spread over every consumer, and each key always maps to the same one.
    #[test]
    fn keys_spread_over_consumers_stably() {
        let ring = KeyRing::new([(1, "a"), (2, "b"), (3, "c")]);
        let first = owners(&ring, 3000);
        assert_eq!(first, owners(&ring, 3000), "deterministic");
        for c in 1..=3 {
            let n = first.iter().filter(|o| **o == Some(c)).count();
            assert!(
                (500..=1500).contains(&n),
                "consumer {c} got {n} of 3000 keys"
            );
        }
        assert_eq!(KeyRing::default().consumer_for(7), None);
    }

    /// A consumer joining takes keys only for itself: no key moves between the others.
    #[test]
    fn a_join_moves_keys_only_to_the_new_consumer() {
        let before = owners(&KeyRing::new([(1, "a"), (2, "b")]), 2000);
        let after = owners(&KeyRing::new([(1, "a"), (2, "b"), (3, "c")]), 2000);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*a, Some(3), "a key moved between existing consumers");
                moved += 1;
            }
        }
        assert!(moved > 300, "the new consumer got only {moved} keys");
    }

    /// The delay doubles with each redelivery up to the maximum.
    #[test]
    fn redelivery_delay_backs_off_exponentially() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (1..=6).map(|c| redelivery_delay(c, base, max)).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis)
        );
        assert_eq!(redelivery_delay(u32::MAX, base, max), max, "no overflow");
    }
}
