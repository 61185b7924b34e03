//! The RocksDB database shared by the log store, the state machine and the read path.
//!
//! [`Core`] owns the one `DB` (behind an `Arc`), the applied-revision counter and the channel
//! on which the state machine publishes committed changes to watchers. Reads (`get`, `scan`,
//! history) go straight to RocksDB; only the state machine writes `kv`, `history` and
//! `sm_meta`, and only the log store writes `log` and `raft_meta`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{
    BoundColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions,
};
use strata_proto::pb::metastore::{KeyValue, WatchEvent};
use tokio::sync::{broadcast, mpsc, watch};

use crate::keys::{self, CodecError};

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
        core.revision.store(revision, Ordering::Release);
        core.oldest_revision.store(oldest, Ordering::Release);
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
        let cf = self.cf(keys::CF_KV)?;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            &cf,
            IteratorMode::From(prefix.as_bytes(), Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push(keys::unseal_prost("kv", &v)?);
        }
        Ok(out)
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
