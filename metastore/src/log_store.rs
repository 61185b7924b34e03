//! The raft log on RocksDB: [`LogStore`] implements openraft's `RaftLogStorage`.
//!
//! Entries live in CF `log` under their big-endian index; the vote, the committed log id and
//! the last purged log id live in CF `raft_meta`. Truncations, purges and votes are written
//! with `sync = true`. An append is written without it and reports itself flushed only once
//! the WAL holding it is fsynced, which a thread of its own (`wal-sync`) does: the fsync then
//! blocks that thread instead of one of tokio's few workers (the broker, the bookie and the
//! client share them in the standalone). openraft 0.9 waits for each append's flush before its
//! next command, so appends are not grouped here; the group commit of proposals is what packs
//! many writes into one fsync.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, mpsc};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::db::{Core, DbError, RaftGuard};
use crate::keys;
use crate::recent_entries::RecentEntries;
use crate::types::{NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn read_err(e: DbError) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: DbError) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// The RocksDB-backed raft log. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    core: Arc<Core>,
    /// Appends waiting for the WAL fsync that makes them durable.
    wal_sync: Arc<WalSync>,
    /// The newest entries, served to reads without RocksDB.
    recent: Arc<Mutex<RecentEntries>>,
    _guard: RaftGuard,
}

impl LogStore {
    pub(crate) fn new(core: Arc<Core>, guard: RaftGuard) -> io::Result<Self> {
        let (queue, waiting) = mpsc::channel();
        let (thread_core, thread_guard) = (core.clone(), guard.clone());
        let thread = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || sync_wal_loop(thread_core, waiting, thread_guard))?;
        Ok(LogStore {
            core,
            wal_sync: Arc::new(WalSync {
                queue: Some(queue),
                thread: Some(thread),
            }),
            recent: Arc::default(),
            _guard: guard,
        })
    }

    fn get_raft_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static [u8],
        what: &'static str,
    ) -> Result<Option<T>, DbError> {
        let cf = self.core.cf(keys::CF_RAFT_META)?;
        match self.core.db.get_pinned_cf(&cf, key)? {
            None => Ok(None),
            Some(raw) => Ok(Some(keys::unseal_json(what, &raw)?)),
        }
    }

    fn put_raft_meta<T: serde::Serialize>(
        &self,
        key: &'static [u8],
        what: &'static str,
        value: &T,
        sync: bool,
    ) -> Result<(), DbError> {
        let cf = self.core.cf(keys::CF_RAFT_META)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(&cf, key, keys::seal_json(what, value)?);
        self.core.write(batch, sync)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, DbError> {
        let cf = self.core.cf(keys::CF_LOG)?;
        let mut iter = self.core.db.iterator_cf(&cf, IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item?;
                let entry: Entry<TypeConfig> = keys::unseal_json("log entry", &v)?;
                Ok(Some(entry.log_id))
            }
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_range(&self, start: u64, end: Bound<u64>) -> Result<Vec<Entry<TypeConfig>>, DbError> {
        let cached_end = match end {
            Bound::Included(e) => e.checked_add(1),
            Bound::Excluded(e) => Some(e),
            Bound::Unbounded => Some(u64::MAX),
        };
        if let Some(entries) = cached_end.and_then(|e| self.recent().get(start, e)) {
            return Ok(entries);
        }
        let cf = self.core.cf(keys::CF_LOG)?;
        let from = keys::u64_key(start);
        let iter = self
            .core
            .db
            .iterator_cf(&cf, IteratorMode::From(&from, Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            let index = keys::decode_u64("log key", &k)?;
            let in_range = match end {
                Bound::Included(e) => index <= e,
                Bound::Excluded(e) => index < e,
                Bound::Unbounded => true,
            };
            if !in_range {
                break;
            }
            out.push(keys::unseal_json("log entry", &v)?);
        }
        Ok(out)
    }

    /// Writes entries without waiting for the disk (see [`sync_wal_loop`]).
    fn append_batch(&self, entries: Vec<Entry<TypeConfig>>) -> Result<(), DbError> {
        let cf = self.core.cf(keys::CF_LOG)?;
        let mut batch = WriteBatch::default();
        for entry in &entries {
            batch.put_cf(
                &cf,
                keys::u64_key(entry.log_id.index),
                keys::seal_json("log entry", entry)?,
            );
        }
        self.core.write(batch, false)?;
        self.recent().appended(&entries);
        Ok(())
    }

    /// Deletes every entry with index >= `from`.
    fn delete_from(&self, from: u64) -> Result<(), DbError> {
        // The cache first: a read meanwhile finds the entries in RocksDB, as before.
        self.recent().truncate(from);
        let cf = self.core.cf(keys::CF_LOG)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&cf, keys::u64_key(from), keys::u64_key(u64::MAX));
        batch.delete_cf(&cf, keys::u64_key(u64::MAX));
        self.core.write(batch, true)
    }

    /// Records `log_id` as purged and deletes every entry up to and including it.
    fn purge_upto(&self, log_id: &LogId<NodeId>) -> Result<(), DbError> {
        self.recent().purge(log_id.index);
        let log = self.core.cf(keys::CF_LOG)?;
        let meta = self.core.cf(keys::CF_RAFT_META)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            &meta,
            keys::META_PURGED,
            keys::seal_json("raft_meta.purged", log_id)?,
        );
        match log_id.index.checked_add(1) {
            Some(end) => batch.delete_range_cf(&log, keys::u64_key(0), keys::u64_key(end)),
            None => {
                batch.delete_range_cf(&log, keys::u64_key(0), keys::u64_key(u64::MAX));
                batch.delete_cf(&log, keys::u64_key(u64::MAX));
            }
        }
        self.core.write(batch, true)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => match s.checked_add(1) {
                Some(s) => s,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        self.read_range(start, range.end_bound().cloned())
            .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self
            .get_raft_meta(keys::META_PURGED, "raft_meta.purged")
            .map_err(read_err)?;
        let last_log_id = self
            .last_entry_log_id()
            .map_err(read_err)?
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_raft_meta(keys::META_VOTE, "raft_meta.vote", vote, true)
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_raft_meta(keys::META_VOTE, "raft_meta.vote")
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Losing the latest committed id in a crash is allowed (it is re-learned), so no fsync.
        self.put_raft_meta(
            keys::META_COMMITTED,
            "raft_meta.committed",
            &committed,
            false,
        )
        .map_err(write_err)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let committed: Option<Option<LogId<NodeId>>> = self
            .get_raft_meta(keys::META_COMMITTED, "raft_meta.committed")
            .map_err(read_err)?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        match self.append_batch(entries) {
            Ok(()) => {
                if let Err(unsent) = self.wal_sync.send(callback) {
                    // The sync thread is gone (it only stops when every log handle is).
                    let closed = io::Error::other("the WAL sync thread has stopped");
                    unsent.0.log_io_completed(Err(closed));
                }
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.delete_from(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.purge_upto(&log_id).map_err(write_err)
    }
}

/// The queue to the WAL-sync thread, and the thread. The last [`LogStore`] handle to go
/// closes the queue and waits for the thread to end: the thread may hold the last handle to
/// the database, and RocksDB must be closed before the process exits (closing it from a
/// thread still running at exit aborts in RocksDB's static state: "pthread lock: Invalid
/// argument").
struct WalSync {
    queue: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WalSync {
    fn send(
        &self,
        flushed: LogFlushed<TypeConfig>,
    ) -> Result<(), mpsc::SendError<LogFlushed<TypeConfig>>> {
        match &self.queue {
            Some(queue) => queue.send(flushed),
            None => Err(mpsc::SendError(flushed)),
        }
    }
}

impl Drop for WalSync {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            // It ends as soon as it sees the queue closed (after the fsync under way, if any).
            let _ = thread.join();
        }
    }
}

/// Takes appends waiting for durability; for each group queued at that moment (one, with
/// openraft 0.9, which waits for each flush), fsyncs the WAL once (covering every write made
/// before) and then reports them flushed, in order.
/// Ends when every [`LogStore`] handle is gone; holds the raft guard until then, so the
/// database is not reopened while this thread still uses it.
fn sync_wal_loop(
    core: Arc<Core>,
    waiting: mpsc::Receiver<LogFlushed<TypeConfig>>,
    guard: RaftGuard,
) {
    while let Ok(first) = waiting.recv() {
        let group: Vec<_> = std::iter::once(first).chain(waiting.try_iter()).collect();
        let synced = core.db.flush_wal(true).map_err(|e| e.to_string());
        for callback in group {
            callback.log_io_completed(synced.clone().map_err(io::Error::other));
        }
    }
    // The database handle goes before the guard: whoever waits for the guard reopens it.
    drop(core);
    drop(guard);
}
