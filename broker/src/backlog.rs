//! Backlog size and the backlog quota's eviction point, as plain functions over a log's
//! ledgers (no I/O). Sizes are counted in whole ledgers, as Pulsar estimates them: a ledger
//! counts while any of its entries is unconsumed.

use strata_metastore::tables::LedgerInfo;
use strata_proto::{LedgerId, Position};

/// Bytes of the ledgers that still hold entries after `slowest` (the slowest subscription's
/// mark-delete position; `None`: it consumed nothing, so the whole log). `ledgers` is the
/// log in order, with the open ledger's current size.
pub fn backlog_bytes(ledgers: &[LedgerInfo], slowest: Option<Position>) -> u64 {
    ledgers
        .iter()
        .filter(|l| match slowest {
            None => true,
            Some(md) => {
                l.id > md.ledger || (l.id == md.ledger && l.entries != Some(md.entry.0 + 1))
            }
        })
        .map(|l| l.size_bytes)
        .sum()
}

/// The oldest ledger to keep for the newest ledgers to fit in `limit` bytes: subscriptions
/// behind it skip to its start. `None` when the whole log fits. The last (open) ledger is
/// always kept, however large.
pub fn eviction_start(ledgers: &[LedgerInfo], limit: u64) -> Option<LedgerId> {
    let mut kept = 0u64;
    let mut oldest = ledgers.len().checked_sub(1)?;
    for (i, l) in ledgers.iter().enumerate().rev() {
        kept = kept.saturating_add(l.size_bytes);
        if kept > limit && i + 1 < ledgers.len() {
            break;
        }
        oldest = i;
    }
    (oldest > 0).then(|| ledgers[oldest].id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::EntryId;

    fn ledger(id: u64, entries: Option<u64>, size_bytes: u64) -> LedgerInfo {
        LedgerInfo {
            id: LedgerId(id),
            entries,
            size_bytes,
            closed_ms: None,
        }
    }

    fn at(ledger: u64, entry: u64) -> Position {
        Position {
            ledger: LedgerId(ledger),
            entry: EntryId(entry),
        }
    }

    fn log() -> Vec<LedgerInfo> {
        vec![
            ledger(1, Some(10), 100),
            ledger(2, Some(10), 200),
            ledger(3, None, 50),
        ]
    }

    /// The backlog counts every ledger holding an unconsumed entry, and nothing else.
    #[test]
    fn backlog_counts_ledgers_with_unconsumed_entries() {
        assert_eq!(backlog_bytes(&log(), None), 350);
        // Partly consumed ledger 1 still counts whole.
        assert_eq!(backlog_bytes(&log(), Some(at(1, 4))), 350);
        // Ledger 1 fully consumed.
        assert_eq!(backlog_bytes(&log(), Some(at(1, 9))), 250);
        assert_eq!(backlog_bytes(&log(), Some(at(2, 9))), 50);
        assert_eq!(backlog_bytes(&[], None), 0);
    }

    /// A subscription caught up on the open ledger has no backlog, however large that
    /// ledger is (its durable entry count is known), so a quota cannot block a topic whose
    /// consumers are up to date.
    #[test]
    fn a_caught_up_subscription_has_no_backlog() {
        let log = [ledger(1, Some(10), 100), ledger(2, Some(4), 5_000)];
        assert_eq!(backlog_bytes(&log, Some(at(2, 3))), 0);
        assert_eq!(backlog_bytes(&log, Some(at(2, 2))), 5_000);
    }

    /// Eviction keeps the newest ledgers that fit, never the open one's predecessor beyond
    /// the limit, and always the open ledger.
    #[test]
    fn eviction_keeps_the_newest_ledgers_that_fit() {
        assert_eq!(eviction_start(&log(), 1000), None);
        assert_eq!(eviction_start(&log(), 350), None);
        assert_eq!(eviction_start(&log(), 300), Some(LedgerId(2)));
        assert_eq!(eviction_start(&log(), 250), Some(LedgerId(2)));
        assert_eq!(eviction_start(&log(), 100), Some(LedgerId(3)));
        // The open ledger alone is over the limit: it stays.
        assert_eq!(eviction_start(&log(), 10), Some(LedgerId(3)));
        assert_eq!(eviction_start(&[ledger(7, None, 999)], 1), None);
        assert_eq!(eviction_start(&[], 1), None);
    }
}
