//! The RocksDB database shared by the log store, the state machine and the read path.
//!
//! [`Core`] owns the one `DB` (behind an `Arc`), the applied-revision counter and the channel
//! on which the state machine publishes committed changes to watchers. Reads (`get`, `scan`,
//! history) go straight to RocksDB; only the state machine writes `kv`, `history` and
//! `sm_meta`, and only the log store writes `log` and `raft_meta`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rocksdb::{
    BoundColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions,
};
use strata_proto::pb::metastore::{KeyValue, Lease, WatchEvent};

use crate::hot_keys::{HOT_PREFIXES, HotKeys, is_hot};
use tokio::sync::{broadcast, mpsc, watch};

use crate::apply::Counters;
use crate::keys::{self, CodecError};
use crate::types::LeaseId;

/// A failure of the storage layer, before it is mapped to [`crate::MetaError`] (read path)
/// or `openraft::StorageError` (raft path).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("column family {0:?} is missing")]
    MissingCf(&'static str),
}

impl From<DbError> for crate::MetaError {
    fn from(e: DbError) -> Self {
        crate::MetaError::Storage(e.to_string())
    }
}

/// A batch of changes applied together, in revision order.
pub(crate) type EventBatch = Arc<[WatchEvent]>;

/// The shared database plus the state every reader needs.
pub(crate) struct Core {
    pub(crate) db: DB,
    /// Revision of the last applied change; updated after the batch that created it is
    /// written and before it is published.
    revision: AtomicU64,
    /// Oldest revision still present in `history`.
    oldest_revision: AtomicU64,
    /// The id the next granted lease gets.
    next_lease_id: AtomicU64,
    /// Every live lease's TTL, mirrored from the `leases` CF for the leader's expiry clock.
    lease_ttls: RwLock<BTreeMap<LeaseId, u64>>,
    /// The live keys under the hot prefixes, which scans of them read instead of RocksDB.
    hot: RwLock<HotKeys>,
    events: broadcast::Sender<EventBatch>,
    closed: watch::Sender<bool>,
}

impl Core {
    /// Opens (or creates) the database in `dir` with every column family, and loads the
    /// applied revision.
    pub(crate) fn open(dir: &Path, watch_capacity: usize) -> Result<Arc<Core>, DbError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = keys::ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let (events, _) = broadcast::channel(watch_capacity.max(1));
        let (closed, _) = watch::channel(false);
        let core = Core {
            db,
            revision: AtomicU64::new(0),
            oldest_revision: AtomicU64::new(1),
            next_lease_id: AtomicU64::new(1),
            lease_ttls: RwLock::new(BTreeMap::new()),
            hot: RwLock::new(HotKeys::default()),
            events,
            closed,
        };
        let revision = core
            .get_meta(keys::SM_REVISION)?
            .map(|raw| keys::unseal_u64("sm_meta.revision", &raw))
            .transpose()?
            .unwrap_or(0);
        let oldest = core
            .get_meta(keys::SM_OLDEST_REVISION)?
            .map(|raw| keys::unseal_u64("sm_meta.oldest_revision", &raw))
            .transpose()?
            .unwrap_or(1);
        let next_lease_id = core
            .get_meta(keys::SM_NEXT_LEASE_ID)?
            .map(|raw| keys::unseal_u64("sm_meta.next_lease_id", &raw))
            .transpose()?
            .unwrap_or(1);
        core.revision.store(revision, Ordering::Release);
        core.oldest_revision.store(oldest, Ordering::Release);
        core.next_lease_id.store(next_lease_id, Ordering::Release);
        let ttls = core
            .all_leases()?
            .into_iter()
            .map(|l| (l.id, l.ttl_ms))
            .collect();
        core.replace_lease_ttls(ttls);
        core.reload_hot_keys()?;
        Ok(Arc::new(core))
    }

    /// A handle to column family `name`.
    pub(crate) fn cf(&self, name: &'static str) -> Result<Arc<BoundColumnFamily<'_>>, DbError> {
        self.db.cf_handle(name).ok_or(DbError::MissingCf(name))
    }

    /// Writes a batch, fsyncing the WAL first when `sync`.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), DbError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Raw value of an `sm_meta` key.
    pub(crate) fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self.db.get_cf(&self.cf(keys::CF_SM_META)?, key)?)
    }

    /// Current value of `key`.
    pub(crate) fn get_kv(&self, key: &str) -> Result<Option<KeyValue>, DbError> {
        let cf = self.cf(keys::CF_KV)?;
        match self.db.get_pinned_cf(&cf, key.as_bytes())? {
            None => Ok(None),
            Some(raw) => Ok(Some(keys::unseal_prost("kv", &raw)?)),
        }
    }

    /// Every key starting with `prefix`, in key order, from one consistent view.
    pub(crate) fn scan(&self, prefix: &str) -> Result<Vec<KeyValue>, DbError> {
        if is_hot(prefix) {
            return Ok(self
                .hot
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .scan(prefix));
        }
        self.scan_rocksdb(prefix)
    }

    fn scan_rocksdb(&self, prefix: &str) -> Result<Vec<KeyValue>, DbError> {
        let cf = self.cf(keys::CF_KV)?;
        let mut out = Vec::new();
        let iter = self.prefix_iterator(&cf, prefix, prefix.as_bytes());
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push(keys::unseal_prost("kv", &v)?);
        }
        Ok(out)
    }

    /// An iterator from `start` over the keys under `prefix` only. The upper bound matters:
    /// without it, when the prefix holds nothing more, RocksDB walks every deleted key after
    /// it (the tombstones of other topics' transaction marks, say) looking for the next live
    /// one before the caller can stop.
    fn prefix_iterator<'a>(
        &'a self,
        cf: &Arc<BoundColumnFamily<'a>>,
        prefix: &str,
        start: &[u8],
    ) -> rocksdb::DBIteratorWithThreadMode<'a, DB> {
        let mut options = rocksdb::ReadOptions::default();
        if let Some(end) = keys::prefix_end(prefix.as_bytes()) {
            options.set_iterate_upper_bound(end);
        }
        self.db
            .iterator_cf_opt(cf, options, IteratorMode::From(start, Direction::Forward))
    }

    /// Records applied changes in the in-memory copy of the hot keys; called after the batch
    /// holding them is written, before the apply is reported.
    pub(crate) fn update_hot_keys<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a String, &'a Option<KeyValue>)>,
    ) {
        let mut hot = self.hot.write().unwrap_or_else(|e| e.into_inner());
        for (key, state) in changes {
            hot.apply(key, state.as_ref());
        }
    }

    /// Rebuilds the in-memory copy of the hot keys from RocksDB (on open, after a snapshot).
    pub(crate) fn reload_hot_keys(&self) -> Result<(), DbError> {
        let mut kvs = Vec::new();
        for prefix in HOT_PREFIXES {
            kvs.extend(self.scan_rocksdb(prefix)?);
        }
        self.hot
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(kvs);
        Ok(())
    }

    /// At most `limit` keys starting with `prefix` and sorting after `start_after`, in key
    /// order, and whether more follow.
    pub(crate) fn scan_page(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, bool), DbError> {
        let cf = self.cf(keys::CF_KV)?;
        let start = if start_after.is_empty() || start_after < prefix {
            prefix.as_bytes().to_vec()
        } else {
            // The smallest key after `start_after`.
            let mut k = start_after.as_bytes().to_vec();
            k.push(0);
            k
        };
        let mut out = Vec::new();
        let iter = self.prefix_iterator(&cf, prefix, &start);
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                return Ok((out, false));
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(keys::unseal_prost("kv", &v)?);
        }
        Ok((out, false))
    }

    /// Up to `max_rows` history events with revision >= `from`, in revision order.
    pub(crate) fn read_history(
        &self,
        from: u64,
        max_rows: usize,
    ) -> Result<Vec<WatchEvent>, DbError> {
        let cf = self.cf(keys::CF_HISTORY)?;
        let start = keys::u64_key(from);
        let iter = self
            .db
            .iterator_cf(&cf, IteratorMode::From(&start, Direction::Forward));
        let mut out = Vec::new();
        for item in iter.take(max_rows) {
            let (_, v) = item?;
            out.push(keys::unseal_prost("history", &v)?);
        }
        Ok(out)
    }

    /// One lease, if it is live.
    pub(crate) fn get_lease(&self, id: LeaseId) -> Result<Option<Lease>, DbError> {
        let cf = self.cf(keys::CF_LEASES)?;
        match self.db.get_pinned_cf(&cf, keys::u64_key(id))? {
            None => Ok(None),
            Some(raw) => Ok(Some(keys::unseal_prost("lease", &raw)?)),
        }
    }

    /// Every live lease, by id.
    pub(crate) fn all_leases(&self) -> Result<Vec<Lease>, DbError> {
        let cf = self.cf(keys::CF_LEASES)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(&cf, IteratorMode::Start) {
            let (_, v) = item?;
            out.push(keys::unseal_prost("lease", &v)?);
        }
        Ok(out)
    }

    /// Every live lease's TTL in ms, by id (from memory).
    pub(crate) fn lease_ttls(&self) -> BTreeMap<LeaseId, u64> {
        self.lease_ttls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies granted (`Some`) and ended (`None`) leases to the in-memory mirror.
    pub(crate) fn update_lease_ttls(&self, changes: &BTreeMap<LeaseId, Option<Lease>>) {
        let mut ttls = self.lease_ttls.write().unwrap_or_else(|p| p.into_inner());
        for (id, lease) in changes {
            match lease {
                Some(l) => ttls.insert(*id, l.ttl_ms),
                None => ttls.remove(id),
            };
        }
    }

    /// Replaces the in-memory lease mirror (open, snapshot install).
    pub(crate) fn replace_lease_ttls(&self, ttls: BTreeMap<LeaseId, u64>) {
        *self.lease_ttls.write().unwrap_or_else(|p| p.into_inner()) = ttls;
    }

    /// The state machine's counters as last applied.
    pub(crate) fn counters(&self) -> Counters {
        Counters {
            revision: self.revision(),
            oldest_revision: self.oldest_revision(),
            next_lease_id: self.next_lease_id.load(Ordering::Acquire),
        }
    }

    /// Records counters made durable by the state machine (call after the write, before
    /// publishing its events).
    pub(crate) fn set_counters(&self, c: Counters) {
        self.next_lease_id.store(c.next_lease_id, Ordering::Release);
        self.set_revisions(c.revision, c.oldest_revision);
    }

    /// Revision of the last applied change.
    pub(crate) fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Oldest revision still kept in `history`.
    pub(crate) fn oldest_revision(&self) -> u64 {
        self.oldest_revision.load(Ordering::Acquire)
    }

    /// Records revisions made durable by the state machine (call after the write).
    pub(crate) fn set_revisions(&self, revision: u64, oldest: u64) {
        self.oldest_revision.store(oldest, Ordering::Release);
        self.revision.store(revision, Ordering::Release);
    }

    /// Publishes an applied batch to live watchers (call after [`Core::set_revisions`]).
    pub(crate) fn publish(&self, events: Vec<WatchEvent>) {
        if !events.is_empty() {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(events.into());
        }
    }

    /// A receiver of applied batches from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<EventBatch> {
        self.events.subscribe()
    }

    /// A receiver that turns `true` when the store shuts down.
    pub(crate) fn closed_signal(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Whether the store has been shut down.
    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Marks the store shut down and wakes every watcher.
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// Held by every raft-side user of the database (log store, log readers, state machine,
/// snapshot builders). openraft does not join its state-machine task on shutdown, so
/// [`GuardWaiter::released`] is how shutdown knows the database is no longer used by raft.
#[derive(Clone)]
pub(crate) struct RaftGuard {
    _alive: mpsc::Sender<()>,
}

/// Resolves once every [`RaftGuard`] is dropped.
pub(crate) struct GuardWaiter {
    rx: mpsc::Receiver<()>,
}

/// A fresh guard and its waiter.
pub(crate) fn raft_guard() -> (RaftGuard, GuardWaiter) {
    let (tx, rx) = mpsc::channel(1);
    (RaftGuard { _alive: tx }, GuardWaiter { rx })
}

impl GuardWaiter {
    /// Waits until every guard is dropped (no guard ever sends).
    pub(crate) async fn released(&mut self) {
        while self.rx.recv().await.is_some() {}
    }
}
