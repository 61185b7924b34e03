//! Counters: `/counters/<name>` → the 8-byte big-endian `u64` that [`MetaStore::next_id`]
//! keeps. That encoding is the metastore's, so counters carry no `format_version`.

use std::ops::Range;

use strata_proto::{LedgerId, TxnId};

use super::{DecodeError, TableError};
use crate::Meta;

/// A named id allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter(&'static str);

/// Allocates ledger ids.
pub const LEDGER_ID: Counter = Counter("/counters/ledger-id");
/// Allocates transaction ids.
pub const TXN_ID: Counter = Counter("/counters/txn-id");

impl Counter {
    /// The counter's metastore key.
    pub fn key(&self) -> &'static str {
        self.0
    }
}

/// Allocation from the counters. Cheap to clone.
#[derive(Clone)]
pub struct Counters {
    meta: Meta,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

impl Counters {
    pub fn new(meta: impl Into<Meta>) -> Self {
        Counters { meta: meta.into() }
    }

    /// The next value of `counter`: 1 first, then gapless and distinct across callers.
    pub async fn next(&self, counter: Counter) -> Result<u64, TableError> {
        Ok(self.meta.next_id(counter.key()).await?)
    }

    /// Reserves the next `count` values of `counter` in one write, for the caller to hand out
    /// itself; values it never hands out are skipped, never reused.
    pub async fn reserve(&self, counter: Counter, count: u64) -> Result<Range<u64>, TableError> {
        Ok(self.meta.reserve_ids(counter.key(), count).await?)
    }

    /// The last value handed out (`None`: none yet).
    pub async fn current(&self, counter: Counter) -> Result<Option<u64>, TableError> {
        let Some(kv) = self.meta.get(counter.key()).await? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = kv
            .value
            .as_ref()
            .try_into()
            .map_err(|_| TableError::Decode {
                table: "counter",
                key: kv.key.clone(),
                source: DecodeError::Malformed(format!(
                    "{} bytes, expected an 8-byte big-endian u64",
                    kv.value.len()
                )),
            })?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    /// A new ledger id, from [`LEDGER_ID`].
    pub async fn next_ledger_id(&self) -> Result<LedgerId, TableError> {
        self.next(LEDGER_ID).await.map(LedgerId)
    }

    /// A new transaction id, from [`TXN_ID`]: never reused, across restarts too.
    pub async fn next_txn_id(&self) -> Result<TxnId, TableError> {
        self.next(TXN_ID).await.map(TxnId)
    }
}
