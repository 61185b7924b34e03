//! Per-ledger change notifications, so a long-poll read of the last-add-confirmed can wait for
//! the next write instead of polling RocksDB.
//!
//! Only ledgers someone is waiting on have an entry; the writer thread wakes them after each
//! batch it wrote, and entries without receivers are dropped as they are found.

use std::collections::HashMap;
use std::sync::Mutex;

use strata_proto::LedgerId;
use tokio::sync::watch;

#[derive(Default)]
pub(crate) struct LedgerWatchers {
    senders: Mutex<HashMap<LedgerId, watch::Sender<()>>>,
}

impl LedgerWatchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LedgerId, watch::Sender<()>>> {
        // The map holds no invariant a panicking holder could break.
        self.senders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receiver woken by every later [`LedgerWatchers::notify`] of `ledger`.
    pub(crate) fn subscribe(&self, ledger: LedgerId) -> watch::Receiver<()> {
        let mut senders = self.lock();
        senders.retain(|_, s| s.receiver_count() > 0);
        senders
            .entry(ledger)
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// Wakes the waiters of each ledger in `ledgers` (called after a batch was written).
    pub(crate) fn notify(&self, ledgers: impl IntoIterator<Item = LedgerId>) {
        let mut senders = self.lock();
        if senders.is_empty() {
            return;
        }
        for ledger in ledgers {
            if let Some(sender) = senders.get(&ledger) {
                if sender.receiver_count() == 0 {
                    senders.remove(&ledger);
                } else {
                    sender.send_replace(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber sees a notification of its ledger, not of others; dropped subscribers'
    /// entries are removed.
    #[test]
    fn notify_wakes_only_the_ledger_and_cleans_up() {
        let watchers = LedgerWatchers::default();
        let mut rx = watchers.subscribe(LedgerId(1));
        watchers.notify([LedgerId(2)]);
        assert!(!rx.has_changed().expect("open"));
        watchers.notify([LedgerId(1)]);
        assert!(rx.has_changed().expect("open"));
        rx.mark_unchanged();
        drop(rx);
        watchers.notify([LedgerId(1)]);
        assert!(watchers.lock().is_empty());
    }
}
