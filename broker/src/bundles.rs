//! Namespace bundles, as in Pulsar: a namespace's topics are spread over slices ("bundles") of
//! the 32-bit hash space of their names, and a bundle is the unit a broker owns. Plain
//! functions, no I/O.

use strata_metastore::tables::{BundleRange, NamespaceBundle};
use strata_proto::{NamespaceName, TopicName};

/// Bundles a namespace gets when its policies name none (Pulsar's default).
pub const DEFAULT_BUNDLES: u32 = 4;

/// The 32-bit hash of a topic's full name that places it in a bundle: FNV-1a, then
/// MurmurHash3's finalizer so names that differ only at the end still spread over the high
/// bits the bundle boundaries cut. Stable across versions and platforms, which the placement
/// of existing topics depends on.
pub fn topic_hash(topic: &TopicName) -> u32 {
    stable_hash(topic.to_string().as_bytes())
}

pub use strata_proto::stable_hash;

/// The bundles of a namespace: sorted boundaries from 0 to `u32::MAX`; bundle i is
/// `[boundaries[i], boundaries[i + 1])`, the last one including `u32::MAX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleLayout {
    boundaries: Vec<u32>,
}

impl BundleLayout {
    /// `n` bundles of (nearly) equal size; at least one.
    pub fn equal(n: u32) -> Self {
        let n = u64::from(n.max(1));
        let span = 1u64 << 32;
        let mut boundaries: Vec<u32> = (0..n).map(|i| (i * span / n) as u32).collect();
        boundaries.push(u32::MAX);
        boundaries.dedup();
        BundleLayout { boundaries }
    }

    /// A layout from stored boundaries; `None` unless they start at 0, end at `u32::MAX` and
    /// strictly increase.
    pub fn from_boundaries(boundaries: Vec<u32>) -> Option<Self> {
        let valid = boundaries.len() >= 2
            && boundaries.first() == Some(&0)
            && boundaries.last() == Some(&u32::MAX)
            && boundaries.windows(2).all(|w| w[0] < w[1]);
        valid.then_some(BundleLayout { boundaries })
    }

    pub fn boundaries(&self) -> &[u32] {
        &self.boundaries
    }

    /// Every bundle, in hash order.
    pub fn ranges(&self) -> Vec<BundleRange> {
        self.boundaries
            .windows(2)
            .filter_map(|w| BundleRange::new(w[0], w[1]))
            .collect()
    }

    /// The bundle holding `hash`.
    pub fn range_of(&self, hash: u32) -> BundleRange {
        // The last boundary is u32::MAX and belongs to the last bundle.
        let i = match self.boundaries.binary_search(&hash) {
            Ok(i) => i.min(self.boundaries.len() - 2),
            Err(i) => i - 1,
        };
        BundleRange::new(self.boundaries[i], self.boundaries[i + 1]).unwrap_or(BundleRange::FULL)
    }

    /// The bundle a topic belongs to.
    pub fn bundle_of(&self, topic: &TopicName) -> NamespaceBundle {
        NamespaceBundle {
            namespace: topic.namespace().clone(),
            range: self.range_of(topic_hash(topic)),
        }
    }

    /// The layout with `range` split in two at its midpoint; `None` if `range` is not one of
    /// the bundles or is too small to split.
    pub fn split(&self, range: BundleRange) -> Option<BundleLayout> {
        let i = self
            .boundaries
            .windows(2)
            .position(|w| w[0] == range.lower() && w[1] == range.upper())?;
        let mid = range.lower() + (range.upper() - range.lower()) / 2;
        if mid == range.lower() {
            return None;
        }
        let mut boundaries = self.boundaries.clone();
        boundaries.insert(i + 1, mid);
        Some(BundleLayout { boundaries })
    }
}

/// All bundles of a namespace under `layout`.
pub fn bundles_of(namespace: &NamespaceName, layout: &BundleLayout) -> Vec<NamespaceBundle> {
    layout
        .ranges()
        .into_iter()
        .map(|range| NamespaceBundle {
            namespace: namespace.clone(),
            range,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_ORDERS_HASH: u32 = 2_303_745_963;

    /// Equal layouts cover the hash space without gaps; every hash, the edges included,
    /// lands in exactly the bundle whose range holds it.
    #[test]
    fn every_hash_lands_in_the_bundle_that_holds_it() {
        for n in [1, 2, 4, 7, 16] {
            let layout = BundleLayout::equal(n);
            let ranges = layout.ranges();
            assert_eq!(ranges.len(), n as usize);
            assert_eq!(ranges[0].lower(), 0);
            assert_eq!(ranges.last().map(|r| r.upper()), Some(u32::MAX));
            for w in ranges.windows(2) {
                assert_eq!(w[0].upper(), w[1].lower(), "no gap");
            }
            for hash in [0, 1, u32::MAX / 3, u32::MAX / 2, u32::MAX - 1, u32::MAX] {
                let r = layout.range_of(hash);
                assert!(
                    r.lower() <= hash && (hash < r.upper() || r.upper() == u32::MAX),
                    "{hash:#x} in {r} (n = {n})"
                );
            }
            for r in &ranges {
                assert_eq!(layout.range_of(r.lower()), *r, "a lower bound is inside");
            }
        }
    }

    /// Splitting halves one bundle and keeps the rest; bad boundaries are refused.
    #[test]
    fn split_and_stored_boundaries() {
        let layout = BundleLayout::equal(2);
        let first = layout.ranges()[0];
        let split = layout.split(first).expect("split");
        assert_eq!(split.ranges().len(), 3);
        assert_eq!(split.ranges()[0].upper(), 0x4000_0000);
        assert_eq!(split.ranges()[2], layout.ranges()[1]);
        assert!(layout.split(BundleRange::FULL).is_none(), "not a bundle");
        assert!(BundleLayout::from_boundaries(vec![0, 10, u32::MAX]).is_some());
        assert!(BundleLayout::from_boundaries(vec![1, u32::MAX]).is_none());
        assert!(BundleLayout::from_boundaries(vec![0, 10, 10, u32::MAX]).is_none());
        assert!(BundleLayout::from_boundaries(vec![0]).is_none());
    }

    /// Topic hashes are stable (placement of existing topics depends on them) and spread
    /// topics over the bundles.
    #[test]
    fn topic_hashes_are_stable_and_spread() {
        let t: TopicName = "persistent://public/default/orders".parse().expect("topic");
        assert_eq!(topic_hash(&t), topic_hash(&t.clone()));
        // Pinned: changing the hash would move existing topics to other bundles.
        assert_eq!(topic_hash(&t), PINNED_ORDERS_HASH);
        let layout = BundleLayout::equal(4);
        let mut counts = [0u32; 4];
        for i in 0..400 {
            let t: TopicName = format!("persistent://public/default/t-{i}")
                .parse()
                .expect("topic");
            let r = layout.bundle_of(&t).range;
            let idx = layout
                .ranges()
                .iter()
                .position(|x| *x == r)
                .expect("a bundle");
            counts[idx] += 1;
        }
        assert!(counts.iter().all(|c| *c > 50), "{counts:?}");
    }
}
