use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn bookie(id: &str, rack: Option<&str>, writable: bool) -> BookieInfo {
    BookieInfo {
        id: id.to_string(),
        rack: rack.map(str::to_string),
        writable,
    }
}

fn rack_of<'a>(available: &'a [BookieInfo], id: &str) -> Option<&'a str> {
    available
        .iter()
        .find(|b| b.id == id)
        .and_then(|b| b.rack.as_deref())
}

/// A random cluster: up to 12 bookies on up to 5 racks (or none), some read-only.
fn random_cluster(rng: &mut SplitMix64) -> Vec<BookieInfo> {
    let n = 1 + rng.below(12);
    let racks = rng.below(6);
    (0..n)
        .map(|i| BookieInfo {
            id: format!("b{i}"),
            rack: (racks > 0).then(|| format!("r{}", rng.below(racks))),
            writable: rng.below(5) != 0,
        })
        .collect()
}

/// The smallest possible number of members on the busiest rack, given how many candidates
/// each rack has.
fn best_max_per_rack(capacity: &[usize], e: usize) -> usize {
    (1..=e)
        .find(|m| capacity.iter().map(|c| (*c).min(*m)).sum::<usize>() >= e)
        .unwrap_or(e)
}

/// Over many random clusters: an ensemble has distinct, writable, non-excluded members; it
/// uses min(E, racks with candidates) racks and its busiest rack is as light as possible;
/// it fails with `NotEnoughBookies` exactly when there are fewer candidates than E.
#[test]
fn ensembles_are_valid_and_spread_over_racks() {
    let mut rng = SplitMix64::new(0x5eed);
    for round in 0..5000u64 {
        let cluster = random_cluster(&mut rng);
        let e = 1 + rng.below(5);
        let exclude: Vec<String> = cluster
            .iter()
            .filter(|_| rng.below(6) == 0)
            .map(|b| b.id.clone())
            .collect();
        let candidates: Vec<&BookieInfo> = cluster
            .iter()
            .filter(|b| b.writable && !exclude.contains(&b.id))
            .collect();
        let ctx = format!("round {round} E={e} {cluster:?} exclude {exclude:?}");
        match choose_ensemble(&cluster, e, &exclude, round) {
            Err(err) => {
                assert!(candidates.len() < e, "{ctx}: {err}");
                assert_eq!(
                    err,
                    PlacementError::NotEnoughBookies {
                        needed: e,
                        available: candidates.len()
                    }
                );
            }
            Ok(ensemble) => {
                assert_eq!(ensemble.len(), e, "{ctx}");
                let distinct: BTreeSet<&String> = ensemble.iter().collect();
                assert_eq!(distinct.len(), e, "{ctx}: duplicate member");
                for id in &ensemble {
                    assert!(candidates.iter().any(|c| &c.id == id), "{ctx}: {id}");
                }
                let mut capacity: BTreeMap<Option<&str>, usize> = BTreeMap::new();
                for c in &candidates {
                    *capacity.entry(c.rack.as_deref()).or_default() += 1;
                }
                let mut used: BTreeMap<Option<&str>, usize> = BTreeMap::new();
                for id in &ensemble {
                    *used.entry(rack_of(&cluster, id)).or_default() += 1;
                }
                assert_eq!(used.len(), e.min(capacity.len()), "{ctx}: racks {used:?}");
                let caps: Vec<usize> = capacity.values().copied().collect();
                let busiest = used.values().copied().max().unwrap_or(0);
                assert_eq!(busiest, best_max_per_rack(&caps, e), "{ctx}: {used:?}");
            }
        }
    }
}

/// The same candidates and seed give the same ensemble whatever the input order; different
/// seeds do not always give the same one.
#[test]
fn placement_is_deterministic_per_seed() {
    let cluster: Vec<BookieInfo> = (0..8)
        .map(|i| bookie(&format!("b{i}"), Some(&format!("r{}", i % 3)), true))
        .collect();
    let mut reversed = cluster.clone();
    reversed.reverse();
    let mut seen = BTreeSet::new();
    for seed in 0..50 {
        let a = choose_ensemble(&cluster, 3, &[], seed).expect("enough");
        let b = choose_ensemble(&reversed, 3, &[], seed).expect("enough");
        assert_eq!(a, b, "seed {seed}");
        seen.insert(a);
    }
    assert!(seen.len() > 5, "seeds should vary the choice: {seen:?}");
}

/// Read-only and excluded bookies are never chosen, even when that leaves too few.
#[test]
fn read_only_and_excluded_bookies_are_never_chosen() {
    let cluster = vec![
        bookie("a", None, true),
        bookie("b", None, false),
        bookie("c", None, true),
        bookie("d", None, true),
    ];
    let excl = vec!["c".to_string()];
    for seed in 0..20 {
        let mut got = choose_ensemble(&cluster, 2, &excl, seed).expect("a and d");
        got.sort();
        assert_eq!(got, vec!["a", "d"]);
    }
    assert_eq!(
        choose_ensemble(&cluster, 3, &excl, 0),
        Err(PlacementError::NotEnoughBookies {
            needed: 3,
            available: 2
        })
    );
}

/// A replacement is a writable bookie outside the ensemble and the exclusions, on a rack no
/// remaining member uses when one exists, else on any rack; none left is a typed error.
#[test]
fn replacement_prefers_an_unused_rack() {
    let cluster = vec![
        bookie("a", Some("r1"), true),
        bookie("b", Some("r2"), true),
        bookie("c", Some("r3"), true),
        bookie("d", Some("r1"), true),
        bookie("e", Some("r2"), true),
        bookie("f", Some("r4"), false),
        bookie("g", Some("r5"), true),
        bookie("h", Some("r3"), true),
    ];
    let ensemble: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    for seed in 0..30 {
        // Replacing c (r3): r1 and r2 are taken, f is read-only, so g (r5) or h (r3).
        let got = choose_replacement(&ensemble, 2, &cluster, &[], seed).expect("some");
        assert!(got == "g" || got == "h", "seed {seed}: {got}");
        let excl = vec!["h".to_string()];
        assert_eq!(
            choose_replacement(&ensemble, 2, &cluster, &excl, seed).as_deref(),
            Ok("g")
        );
        // Without g or h only used racks remain: d or e.
        let excl = vec!["g".to_string(), "h".to_string()];
        let got = choose_replacement(&ensemble, 2, &cluster, &excl, seed).expect("some");
        assert!(got == "d" || got == "e", "seed {seed}: {got}");
    }
    let excl: Vec<String> = ["d", "e", "g", "h"].iter().map(|s| s.to_string()).collect();
    assert_eq!(
        choose_replacement(&ensemble, 0, &cluster, &excl, 1),
        Err(PlacementError::NotEnoughBookies {
            needed: 1,
            available: 0
        })
    );
    assert_eq!(
        choose_replacement(&ensemble, 3, &cluster, &[], 1),
        Err(PlacementError::IndexOutOfRange {
            index: 3,
            ensemble_size: 3
        })
    );
}

/// When the failed bookie's rack is the only unused one, the replacement goes there.
#[test]
fn replacement_can_reuse_the_failed_bookies_rack() {
    let cluster = vec![
        bookie("a", Some("r1"), true),
        bookie("b", Some("r2"), true),
        bookie("c", Some("r1"), true),
        bookie("d", Some("r2"), true),
    ];
    let ensemble = vec!["a".to_string(), "b".to_string()];
    for seed in 0..20 {
        assert_eq!(
            choose_replacement(&ensemble, 1, &cluster, &[], seed).as_deref(),
            Ok("d"),
            "r2 is free once b is gone"
        );
    }
}
