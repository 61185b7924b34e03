//! The newest raft log entries, kept in memory as they are appended.
//!
//! Right after an append, openraft reads the same entries back: the state machine worker to
//! apply them, the replication tasks to send them. From RocksDB that is a read and a JSON
//! decode per entry, about a tenth of a loaded leader's CPU. The log store keeps the newest
//! entries here, up to [`MAX_BYTES`], and serves reads of them without touching RocksDB.

use std::collections::VecDeque;

use openraft::{Entry, EntryPayload};

use crate::types::TypeConfig;

/// The cache holds entries with at most this many key and value bytes.
pub(crate) const MAX_BYTES: usize = 16 << 20;

/// Contiguous entries `[first index, first index + len)`, the newest of the log.
#[derive(Default)]
pub(crate) struct RecentEntries {
    entries: VecDeque<Entry<TypeConfig>>,
    bytes: usize,
}

fn size(entry: &Entry<TypeConfig>) -> usize {
    match &entry.payload {
        // A fixed cost per entry bounds the count of empty ones too.
        EntryPayload::Normal(cmd) => 64 + cmd.payload_bytes(),
        EntryPayload::Blank | EntryPayload::Membership(_) => 64,
    }
}

impl RecentEntries {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn end_index(&self) -> Option<u64> {
        self.entries.back().map(|e| e.log_id.index + 1)
    }

    /// Records appended entries (in index order). An append that does not continue the
    /// cached ones (after a truncation, or the first one) starts the cache over.
    pub(crate) fn appended(&mut self, appended: &[Entry<TypeConfig>]) {
        let Some(first) = appended.first() else {
            return;
        };
        if self.end_index() != Some(first.log_id.index) {
            self.clear();
        }
        for entry in appended {
            self.bytes += size(entry);
            self.entries.push_back(entry.clone());
        }
        while self.bytes > MAX_BYTES {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= size(&old);
        }
    }

    /// Forgets entries at index `from` and after (a truncation).
    pub(crate) fn truncate(&mut self, from: u64) {
        while self.end_index().is_some_and(|end| end > from) {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= size(&e);
            }
        }
    }

    /// Forgets entries up to and including index `upto` (a purge).
    pub(crate) fn purge(&mut self, upto: u64) {
        while self.first_index().is_some_and(|first| first <= upto) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= size(&e);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entries `[start, end)`, if the cache holds every one of them (an `end` past the newest
    /// entry is cut there, as a read of the log would be).
    pub(crate) fn get(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let (first, cached_end) = (self.first_index()?, self.end_index()?);
        if start < first {
            return None;
        }
        let end = end.min(cached_end);
        if start >= end {
            return Some(Vec::new());
        }
        let skip = (start - first) as usize;
        Some(
            self.entries
                .iter()
                .skip(skip)
                .take((end - start) as usize)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(v: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        v.map(|es| es.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_in_full() {
        let mut c = RecentEntries::default();
        c.appended(&[blank(5), blank(6)]);
        c.appended(&[blank(7)]);
        assert_eq!(indexes(c.get(5, 8)), Some(vec![5, 6, 7]));
        assert_eq!(
            indexes(c.get(6, 100)),
            Some(vec![6, 7]),
            "cut at the newest"
        );
        assert_eq!(indexes(c.get(8, 9)), Some(vec![]), "nothing past the log");
        assert_eq!(c.get(4, 6).map(|v| v.len()), None, "index 4 is not cached");
    }

    #[test]
    fn truncate_purge_and_a_gap_keep_it_consistent() {
        let mut c = RecentEntries::default();
        c.appended(&[blank(1), blank(2), blank(3), blank(4)]);
        c.truncate(3);
        assert_eq!(indexes(c.get(1, 10)), Some(vec![1, 2]));
        c.appended(&[blank(3)]);
        c.purge(1);
        assert_eq!(indexes(c.get(2, 10)), Some(vec![2, 3]));
        assert_eq!(c.get(1, 2).map(|v| v.len()), None);
        c.appended(&[blank(9)]);
        assert_eq!(
            indexes(c.get(9, 10)),
            Some(vec![9]),
            "an append after a gap starts over"
        );
        assert_eq!(c.get(3, 4).map(|v| v.len()), None);
    }

    #[test]
    fn stays_within_its_byte_budget() {
        let mut c = RecentEntries::default();
        let count = (MAX_BYTES / 64) as u64 + 10;
        let entries: Vec<_> = (1..=count).map(blank).collect();
        c.appended(&entries);
        assert!(c.bytes <= MAX_BYTES);
        assert_eq!(c.get(1, 2).map(|v| v.len()), None, "the oldest went first");
        assert_eq!(indexes(c.get(count, count + 1)), Some(vec![count]));
    }
}
