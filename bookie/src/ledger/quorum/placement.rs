//! Ensemble placement: which bookies a new ledger is written to ([`choose_ensemble`]) and
//! which one replaces a failed member ([`choose_replacement`]).
//!
//! Rules: only writable bookies, never an excluded one, never one twice; spread over racks
//! (round-robin over racks in a random order, so no rack holds two members while an unused
//! rack has a candidate, and the busiest rack holds as few as possible); bookies without a
//! rack count as one "unknown" rack, as in BookKeeper's default rack. Random choices come
//! from the caller's seed, so a placement can be replayed.

use std::collections::BTreeMap;

/// A bookie as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookieInfo {
    pub id: String,
    pub rack: Option<String>,
    /// False for a read-only bookie (disk full, draining).
    pub writable: bool,
}

/// Why no placement was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("need {needed} writable bookies outside the exclusions, {available} available")]
    NotEnoughBookies { needed: usize, available: usize },
    #[error("ensemble index {index} is out of range for an ensemble of {ensemble_size}")]
    IndexOutOfRange { index: usize, ensemble_size: usize },
}

/// Picks `ensemble_size` distinct writable bookies of `available`, none in `exclude`, spread
/// over racks. The result depends only on the candidates (not their order) and `seed`.
pub fn choose_ensemble(
    available: &[BookieInfo],
    ensemble_size: usize,
    exclude: &[String],
    seed: u64,
) -> Result<Vec<String>, PlacementError> {
    let candidates = candidates(available, |b| !exclude.contains(&b.id));
    if candidates.len() < ensemble_size {
        return Err(PlacementError::NotEnoughBookies {
            needed: ensemble_size,
            available: candidates.len(),
        });
    }
    let mut rng = SplitMix64::new(seed);
    let mut racks: Vec<Vec<&BookieInfo>> = by_rack(&candidates).into_values().collect();
    rng.shuffle(&mut racks);
    for rack in &mut racks {
        rng.shuffle(rack);
    }
    let mut chosen = Vec::with_capacity(ensemble_size);
    let mut round = 0;
    while chosen.len() < ensemble_size {
        for rack in &racks {
            if chosen.len() == ensemble_size {
                break;
            }
            if let Some(bookie) = rack.get(round) {
                chosen.push(bookie.id.clone());
            }
        }
        round += 1;
    }
    Ok(chosen)
}

/// Picks a bookie to replace `ensemble[failed_index]`: writable, not in the ensemble (the
/// failed one included) nor in `exclude`, on a rack no other member uses if there is one.
pub fn choose_replacement(
    ensemble: &[String],
    failed_index: usize,
    available: &[BookieInfo],
    exclude: &[String],
    seed: u64,
) -> Result<String, PlacementError> {
    if failed_index >= ensemble.len() {
        return Err(PlacementError::IndexOutOfRange {
            index: failed_index,
            ensemble_size: ensemble.len(),
        });
    }
    let candidates = candidates(available, |b| {
        !exclude.contains(&b.id) && !ensemble.contains(&b.id)
    });
    let used_racks: Vec<Option<&str>> = ensemble
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != failed_index)
        .filter_map(|(_, id)| available.iter().find(|b| &b.id == id))
        .map(|b| b.rack.as_deref())
        .collect();
    let fresh: Vec<&BookieInfo> = candidates
        .iter()
        .copied()
        .filter(|b| !used_racks.contains(&b.rack.as_deref()))
        .collect();
    let pool = if fresh.is_empty() { candidates } else { fresh };
    let mut rng = SplitMix64::new(seed);
    rng.pick(&pool)
        .map(|b| b.id.clone())
        .ok_or(PlacementError::NotEnoughBookies {
            needed: 1,
            available: 0,
        })
}

/// Writable bookies passing `keep`, each id once, sorted by id (so input order is moot).
fn candidates(available: &[BookieInfo], keep: impl Fn(&BookieInfo) -> bool) -> Vec<&BookieInfo> {
    let mut out: Vec<&BookieInfo> = available.iter().filter(|b| b.writable && keep(b)).collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    out
}

fn by_rack<'a>(bookies: &[&'a BookieInfo]) -> BTreeMap<Option<&'a str>, Vec<&'a BookieInfo>> {
    let mut racks: BTreeMap<Option<&str>, Vec<&BookieInfo>> = BTreeMap::new();
    for b in bookies {
        racks.entry(b.rack.as_deref()).or_default().push(b);
    }
    racks
}

/// SplitMix64: a small seeded generator, so placement needs no RNG dependency and tests can
/// replay a seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n` (`n > 0`; 0 for `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        let i = self.below(items.len());
        items.get(i)
    }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
