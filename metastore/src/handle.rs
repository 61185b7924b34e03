//! [`Meta`]: one handle for the metastore whether it runs in this process ([`MetaStore`]) or
//! elsewhere ([`MetaClient`]), so the typed tables, the ledger client and the brokers are
//! written once and run in the standalone (in process) and in a cluster (remote) alike.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;

use crate::{
    Expect, KeyValue, Lease, LeaseApi, LeaseId, MetaClient, MetaError, MetaStore, RemoteWatcher,
    ScanPage, Txn, TxnResponse, WatchEvent, Watcher, Written, keys,
};

/// The metastore, in process or remote. Cheap to clone.
#[derive(Clone)]
pub enum Meta {
    Local(MetaStore),
    Remote(MetaClient),
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Meta::Local(_) => "Meta::Local",
            Meta::Remote(_) => "Meta::Remote",
        })
    }
}

impl From<MetaStore> for Meta {
    fn from(store: MetaStore) -> Self {
        Meta::Local(store)
    }
}

impl From<MetaClient> for Meta {
    fn from(client: MetaClient) -> Self {
        Meta::Remote(client)
    }
}

/// Calls the same method on whichever handle this is.
macro_rules! both {
    ($self:ident, $m:ident => $call:expr) => {
        match $self {
            Meta::Local($m) => $call,
            Meta::Remote($m) => $call,
        }
    };
}

impl Meta {
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        both!(self, m => m.get(key).await)
    }

    pub async fn put(&self, key: &str, value: Bytes, expect: Expect) -> Result<Written, MetaError> {
        both!(self, m => m.put(key, value, expect).await)
    }

    /// A put bound to `lease` (0: none).
    pub async fn put_leased(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        lease: LeaseId,
    ) -> Result<Written, MetaError> {
        both!(self, m => m.put_leased(key, value, expect, lease).await)
    }

    pub async fn delete(&self, key: &str, expect: Expect) -> Result<bool, MetaError> {
        both!(self, m => m.delete(key, expect).await)
    }

    pub async fn scan(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
        both!(self, m => m.scan(prefix).await)
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        both!(self, m => m.txn(txn).await)
    }

    /// At most `limit` keys under `prefix` after `start_after`; see [`MetaStore::scan_page`].
    pub async fn scan_page(
        &self,
        prefix: &str,
        start_after: &str,
        limit: u32,
    ) -> Result<ScanPage, MetaError> {
        both!(self, m => m.scan_page(prefix, start_after, limit).await)
    }

    /// Changes under `prefix` from `from_revision` (0: from now on); see [`MetaStore::watch`].
    pub async fn watch(&self, prefix: &str, from_revision: u64) -> Result<MetaWatcher, MetaError> {
        Ok(match self {
            Meta::Local(m) => MetaWatcher::Local(m.watch(prefix, from_revision).await?),
            Meta::Remote(m) => MetaWatcher::Remote(m.watch(prefix, from_revision).await?),
        })
    }

    pub async fn lease_grant(&self, ttl: Duration) -> Result<Lease, MetaError> {
        both!(self, m => m.lease_grant(ttl).await)
    }

    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration, MetaError> {
        both!(self, m => m.lease_keep_alive(id).await)
    }

    pub async fn lease_revoke(&self, id: LeaseId) -> Result<u64, MetaError> {
        both!(self, m => m.lease_revoke(id).await)
    }

    /// The next value of the counter at `key` (8-byte big-endian): 1 first, then distinct
    /// across callers, by compare-and-set retry. A put whose outcome is unknown fails the
    /// call (the value may be used up: a gap, never a duplicate).
    pub async fn next_id(&self, key: &str) -> Result<u64, MetaError> {
        Ok(self.reserve_ids(key, 1).await?.start)
    }

    /// Reserves the next `count` values (at least 1) of the counter at `key` in one write:
    /// no other caller gets any of them, now or after a restart.
    pub async fn reserve_ids(&self, key: &str, count: u64) -> Result<Range<u64>, MetaError> {
        let count = count.max(1);
        loop {
            let (last, expect) = match self.get(key).await? {
                None => (count, Expect::Absent),
                Some(kv) => (
                    keys::advanced_counter_value(key, &kv.value, count)?,
                    Expect::Version(kv.version),
                ),
            };
            let value = Bytes::copy_from_slice(&last.to_be_bytes());
            match self.put(key, value, expect).await {
                Ok(_) => return Ok(last + 1 - count..last + 1),
                Err(MetaError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl LeaseApi for Meta {
    async fn grant(&self, ttl: Duration) -> Result<Lease, MetaError> {
        self.lease_grant(ttl).await
    }
    async fn keep_alive(&self, id: LeaseId) -> Result<Duration, MetaError> {
        self.lease_keep_alive(id).await
    }
    async fn revoke(&self, id: LeaseId) -> Result<u64, MetaError> {
        self.lease_revoke(id).await
    }
}

/// A watch from [`Meta::watch`].
pub enum MetaWatcher {
    Local(Watcher),
    Remote(RemoteWatcher),
}

impl MetaWatcher {
    /// The next change; `None` once the watch ended (after reporting why).
    pub async fn next(&mut self) -> Option<Result<WatchEvent, MetaError>> {
        match self {
            MetaWatcher::Local(w) => w.next().await,
            MetaWatcher::Remote(w) => w.next().await,
        }
    }
}
