//! Keys under a few "hot" prefixes, mirrored in memory.
//!
//! The transaction indexes (`/txn-deadlines/`, `/txn-checks/`) get a key written and deleted
//! per transaction and are scanned on every begin (the open-transaction limits) and by the
//! leader's expiry loop. In RocksDB a scan from the prefix walks every deleted key's tombstone
//! still in the memtable, so with thousands of transactions a second the scans cost more than
//! everything else. Those prefixes hold only live transactions (bounded by the open limit), so
//! the state machine keeps their keys in memory as well and serves scans of them from here.

use std::collections::BTreeMap;
use std::ops::Bound;

use strata_proto::pb::metastore::KeyValue;

/// The prefixes mirrored in memory: only the live keys under them are held, and their number
/// is bounded (by the cluster's open-transaction limit).
pub(crate) const HOT_PREFIXES: [&str; 2] = ["/txn-deadlines/", "/txn-checks/"];

/// Whether `key` (or a scan of the prefix `key`) lies under a hot prefix.
pub(crate) fn is_hot(key: &str) -> bool {
    HOT_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The in-memory copy of every live key under [`HOT_PREFIXES`].
#[derive(Debug, Default)]
pub(crate) struct HotKeys {
    keys: BTreeMap<String, KeyValue>,
}

impl HotKeys {
    /// Applies one key's new state (`None`: deleted); keys that are not hot are ignored.
    pub(crate) fn apply(&mut self, key: &str, state: Option<&KeyValue>) {
        if !is_hot(key) {
            return;
        }
        match state {
            Some(kv) => {
                self.keys.insert(key.to_owned(), kv.clone());
            }
            None => {
                self.keys.remove(key);
            }
        }
    }

    /// Every live key starting with `prefix`, in key order.
    pub(crate) fn scan(&self, prefix: &str) -> Vec<KeyValue> {
        self.keys
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    /// Replaces the whole copy (after opening the database or installing a snapshot).
    pub(crate) fn replace(&mut self, kvs: impl IntoIterator<Item = KeyValue>) {
        self.keys = kvs
            .into_iter()
            .filter(|kv| is_hot(&kv.key))
            .map(|kv| (kv.key.clone(), kv))
            .collect();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            version: 1,
            ..Default::default()
        }
    }

    #[test]
    fn holds_only_live_hot_keys_and_scans_by_prefix_in_order() {
        let mut hot = HotKeys::default();
        hot.apply("/txn-deadlines/2/b", Some(&kv("/txn-deadlines/2/b")));
        hot.apply("/txn-deadlines/1/a", Some(&kv("/txn-deadlines/1/a")));
        hot.apply("/txn-checks/5/c", Some(&kv("/txn-checks/5/c")));
        hot.apply("/txns/a", Some(&kv("/txns/a")));
        assert_eq!(
            hot.len(),
            3,
            "a key outside the hot prefixes is not mirrored"
        );

        let keys = |v: Vec<KeyValue>| v.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
        assert_eq!(
            keys(hot.scan("/txn-deadlines/")),
            ["/txn-deadlines/1/a", "/txn-deadlines/2/b"]
        );
        assert_eq!(keys(hot.scan("/txn-deadlines/2")), ["/txn-deadlines/2/b"]);

        hot.apply("/txn-deadlines/1/a", None);
        assert_eq!(keys(hot.scan("/txn-deadlines/")), ["/txn-deadlines/2/b"]);
        assert!(
            hot.scan("/txn-deadlines/1").is_empty(),
            "a deleted key is gone"
        );
    }

    #[test]
    fn replace_keeps_only_hot_keys() {
        let mut hot = HotKeys::default();
        hot.apply("/txn-checks/1/x", Some(&kv("/txn-checks/1/x")));
        hot.replace([kv("/txn-deadlines/9/z"), kv("/topics/t")]);
        assert_eq!(hot.len(), 1);
        assert_eq!(hot.scan("/txn-checks/").len(), 0);
        assert_eq!(hot.scan("/txn-deadlines/").len(), 1);
    }

    #[test]
    fn hot_prefix_test_matches_sub_prefixes_only() {
        assert!(is_hot("/txn-deadlines/"));
        assert!(is_hot("/txn-deadlines/17"));
        assert!(!is_hot("/txn-"), "a wider scan is served by RocksDB");
        assert!(!is_hot("/"));
    }
}
