//! [`BookieStorage`]: ledger entries in RocksDB, group-committed and checksummed.
//!
//! Reads go straight to RocksDB from the caller's thread; every mutation (adds, fences,
//! deletes) goes through the single writer in `journal`, which group-commits them. See
//! [`format`](mod@format) for the on-disk layout.

pub mod format;
mod journal;
mod lac;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options, ReadOptions,
};
use strata_proto::{EntryId, LedgerId};
use tokio::sync::{mpsc, oneshot};

use crate::BookieError;
use format::LedgerRecord;
use journal::{JournalConfig, Op};
use lac::LedgerWatchers;

/// Column family of entries.
pub const CF_ENTRIES: &str = "entries";
/// Column family of per-ledger records (fenced flag, last-add-confirmed, last entry).
pub const CF_LEDGERS: &str = "ledgers";

/// Values at least this large go to blob files when [`StorageOptions::blob_files`] is set.
pub const MIN_BLOB_SIZE: u64 = 4 * 1024;

pub(crate) type Db = rocksdb::DB;

/// Settings of a [`BookieStorage`].
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Most ops written in one group commit.
    pub group_commit_max_batch: usize,
    /// A group commit stops draining the queue once its payloads reach this many bytes.
    pub group_commit_max_bytes: usize,
    /// Fsync every group commit (the WAL). `false` gives up durability: tests that say so only.
    pub sync: bool,
    /// Size of the RocksDB block cache shared by both column families.
    pub block_cache_bytes: usize,
    /// Store entry values of at least [`MIN_BLOB_SIZE`] bytes in RocksDB blob files (key-value
    /// separation), so compactions do not rewrite large payloads.
    pub blob_files: bool,
    /// Capacity of the writer's queue; adds wait (backpressure) when it is full.
    pub queue_depth: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            group_commit_max_batch: 1024,
            group_commit_max_bytes: 4 * 1024 * 1024,
            sync: true,
            block_cache_bytes: 64 * 1024 * 1024,
            blob_files: true,
            queue_depth: 8192,
        }
    }
}

impl StorageOptions {
    /// Checks every field, naming the bad one.
    pub fn validate(&self) -> Result<(), BookieError> {
        let positive = |field: &'static str, value: usize| {
            if value == 0 {
                Err(BookieError::InvalidOptions {
                    field,
                    reason: "must be at least 1".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("group_commit_max_batch", self.group_commit_max_batch)?;
        positive("group_commit_max_bytes", self.group_commit_max_bytes)?;
        positive("queue_depth", self.queue_depth)?;
        Ok(())
    }
}

/// Counters of a [`BookieStorage`] since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Entries written.
    pub adds: u64,
    /// Payload bytes written.
    pub add_bytes: u64,
    /// Group commits written (each one `WriteBatch`, one fsync).
    pub batches: u64,
    /// Group commits that failed to write.
    pub failed_batches: u64,
    /// Non-recovery adds refused because the ledger is fenced.
    pub fenced_rejections: u64,
    /// Reads that found an entry failing its checksum.
    pub corrupt_reads: u64,
    /// Ledgers deleted.
    pub deletes: u64,
    /// Ops sent to the writer and not yet answered.
    pub queued: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    adds: AtomicU64,
    add_bytes: AtomicU64,
    batches: AtomicU64,
    failed_batches: AtomicU64,
    fenced_rejections: AtomicU64,
    corrupt_reads: AtomicU64,
    deletes: AtomicU64,
    /// Ops handed to the writer (counted once the send completed).
    submitted: AtomicU64,
    /// Ops the writer has answered.
    answered: AtomicU64,
}

/// A bookie's ledger storage. Cheap to clone; all clones share one database and writer.
///
/// Dropping the last clone stops the writer (after it answers what is queued) and closes the
/// database, so the directory can be opened again right away.
#[derive(Clone)]
pub struct BookieStorage {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Db>,
    tx: Option<mpsc::Sender<Op>>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    /// Wakes waiters on a ledger after each write touching it (long-poll LAC reads).
    watchers: Arc<LedgerWatchers>,
    /// Shared with the writer, which takes it before each batch; only tests ever hold it.
    #[cfg_attr(not(test), allow(dead_code))]
    gate: Arc<Mutex<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish its queue and exit; joining it makes
        // sure the database is closed when the storage is gone.
        self.tx = None;
        if let Some(Err(_)) = self.writer.take().map(JoinHandle::join) {
            tracing::error!("bookie journal writer panicked");
        }
    }
}

impl std::fmt::Debug for BookieStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BookieStorage")
            .field("path", &self.inner.db.path())
            .finish()
    }
}

impl BookieStorage {
    /// Opens (creating if needed) the storage in `dir` and starts its writer.
    pub fn open(dir: &Path, options: StorageOptions) -> Result<Self, BookieError> {
        options.validate()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| BookieError::Storage(format!("creating {}: {e}", dir.display())))?;

        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);

        let mut entries = Options::default();
        entries.set_block_based_table_factory(&table);
        entries.set_compression_type(DBCompressionType::Lz4);
        if options.blob_files {
            entries.set_enable_blob_files(true);
            entries.set_min_blob_size(MIN_BLOB_SIZE);
            entries.set_blob_compression_type(DBCompressionType::Lz4);
            entries.set_enable_blob_gc(true);
            // Blob reads share the block cache: a tailing reader finds recent payloads in
            // memory after their memtable was flushed.
            entries.set_blob_cache(&cache);
        }
        let mut ledgers = Options::default();
        ledgers.set_block_based_table_factory(&table);

        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        let db = Db::open_cf_descriptors(
            &db_options,
            dir,
            [
                ColumnFamilyDescriptor::new(CF_ENTRIES, entries),
                ColumnFamilyDescriptor::new(CF_LEDGERS, ledgers),
            ],
        )?;
        let db = Arc::new(db);

        let (tx, rx) = mpsc::channel(options.queue_depth);
        let counters = Arc::new(Counters::default());
        let gate = Arc::new(Mutex::new(()));
        let watchers = Arc::new(LedgerWatchers::default());
        let config = JournalConfig {
            max_batch: options.group_commit_max_batch,
            max_bytes: options.group_commit_max_bytes,
            sync: options.sync,
        };
        let writer = {
            let (db, counters, gate) = (db.clone(), counters.clone(), gate.clone());
            let watchers = watchers.clone();
            std::thread::Builder::new()
                .name("bookie-journal".into())
                .spawn(move || journal::run(db, rx, config, counters, watchers, gate))
                .map_err(|e| BookieError::Storage(format!("spawning the journal writer: {e}")))?
        };
        Ok(BookieStorage {
            inner: Arc::new(Inner {
                db,
                tx: Some(tx),
                writer: Some(writer),
                counters,
                watchers,
                gate,
            }),
        })
    }

    async fn submit<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, BookieError>>) -> Op,
    ) -> Result<T, BookieError> {
        self.enqueue(op).await?.wait().await
    }

    /// Hands `op` to the writer, waiting only for room in its queue.
    async fn enqueue<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, BookieError>>) -> Op,
    ) -> Result<Queued<T>, BookieError> {
        let tx = self.inner.tx.as_ref().ok_or(BookieError::Closed)?;
        let (reply, answer) = oneshot::channel();
        tx.send(op(reply)).await.map_err(|_| BookieError::Closed)?;
        self.inner
            .counters
            .submitted
            .fetch_add(1, Ordering::Relaxed);
        Ok(Queued { answer })
    }

    /// Stores an entry. Durable when it returns `Ok`: it was written in a group commit that
    /// was fsynced (unless [`StorageOptions::sync`] is off). `last_add_confirmed` is the
    /// writer's LAC piggybacked on the add; the bookie keeps the highest seen. Fails with
    /// [`BookieError::Fenced`] on a fenced ledger unless `recovery` is set. Re-adding an
    /// entry overwrites it (a recovery writer re-replicates entries).
    pub async fn add_entry(
        &self,
        ledger: LedgerId,
        entry: EntryId,
        last_add_confirmed: Option<EntryId>,
        payload: Bytes,
        recovery: bool,
    ) -> Result<(), BookieError> {
        self.submit(|reply| Op::Add {
            ledger,
            entry,
            last_add_confirmed,
            payload,
            recovery,
            reply,
        })
        .await
    }

    /// As [`BookieStorage::add_entry`], in two steps: this call returns once the add is in the
    /// writer's queue (waiting while the queue is full), and the returned [`Queued`] resolves
    /// when it is durable. Adds queued one after another are written in that order, so a
    /// server can keep a connection's adds in arrival order while many are in flight.
    pub async fn queue_add(
        &self,
        ledger: LedgerId,
        entry: EntryId,
        last_add_confirmed: Option<EntryId>,
        payload: Bytes,
        recovery: bool,
    ) -> Result<Queued<()>, BookieError> {
        self.enqueue(|reply| Op::Add {
            ledger,
            entry,
            last_add_confirmed,
            payload,
            recovery,
            reply,
        })
        .await
    }

    /// Reads one entry, verifying its CRC32C.
    pub fn read_entry(&self, ledger: LedgerId, entry: EntryId) -> Result<Bytes, BookieError> {
        let cf = self.cf(CF_ENTRIES)?;
        match self
            .inner
            .db
            .get_pinned_cf(&cf, format::entry_key(ledger, entry))?
        {
            Some(value) => self.verify(ledger, entry, &value),
            None => Err(self.missing(ledger, entry)),
        }
    }

    /// Reads entries `first..=last`, verifying each; fails if any of them is missing.
    pub fn read_range(
        &self,
        ledger: LedgerId,
        first: EntryId,
        last: EntryId,
    ) -> Result<Vec<(EntryId, Bytes)>, BookieError> {
        if first > last {
            return Err(BookieError::InvalidRange { first, last });
        }
        let cf = self.cf(CF_ENTRIES)?;
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(format::entry_key_after(ledger, last).to_vec());
        let mut iter = self.inner.db.raw_iterator_cf_opt(&cf, read_options);
        iter.seek(format::entry_key(ledger, first));
        let capacity =
            usize::try_from(last.0 - first.0).map_or(1024, |n| n.saturating_add(1).min(1024));
        let mut out = Vec::with_capacity(capacity);
        let mut expected = first;
        while iter.valid() {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            let entry = match format::decode_entry_key(key) {
                Some((l, e)) if l == ledger => e,
                _ => {
                    return Err(BookieError::Malformed {
                        what: "entry key",
                        ledger,
                        detail: format!("unexpected key {key:02x?} in range"),
                    });
                }
            };
            if entry != expected {
                return Err(self.missing(ledger, expected));
            }
            out.push((entry, self.verify(ledger, entry, value)?));
            if entry == last {
                return Ok(out);
            }
            expected = EntryId(entry.0 + 1);
            iter.next();
        }
        iter.status()?;
        Err(self.missing(ledger, expected))
    }

    /// The highest last-add-confirmed piggybacked on any add of this ledger.
    pub fn last_add_confirmed(&self, ledger: LedgerId) -> Result<Option<EntryId>, BookieError> {
        Ok(self.record(ledger)?.last_add_confirmed)
    }

    /// The highest entry id stored for this ledger.
    pub fn last_entry(&self, ledger: LedgerId) -> Result<Option<EntryId>, BookieError> {
        Ok(self.record(ledger)?.last_entry)
    }

    /// The ledger's fence flag, last-add-confirmed and last entry, read together.
    pub fn ledger_state(&self, ledger: LedgerId) -> Result<LedgerRecord, BookieError> {
        self.record(ledger)
    }

    /// A receiver marked changed after every write that touches `ledger` (an add, a fence, a
    /// delete), from now on. It carries no value: re-read the state (e.g.
    /// [`BookieStorage::last_add_confirmed`]) after it fires. For long-poll reads of the LAC.
    pub fn watch_ledger(&self, ledger: LedgerId) -> tokio::sync::watch::Receiver<()> {
        self.inner.watchers.subscribe(ledger)
    }

    /// Whether the ledger is fenced on this bookie.
    pub fn is_fenced(&self, ledger: LedgerId) -> Result<bool, BookieError> {
        Ok(self.record(ledger)?.fenced)
    }

    /// Fences the ledger (persisted): afterwards non-recovery adds fail with
    /// [`BookieError::Fenced`]. Adds queued before the fence are applied first. Fencing a
    /// ledger this bookie has never seen creates it, fenced, so a late add cannot create it.
    /// Returns the last entry stored when the fence took effect.
    pub async fn fence(&self, ledger: LedgerId) -> Result<Option<EntryId>, BookieError> {
        self.submit(|reply| Op::Fence { ledger, reply }).await
    }

    /// Deletes every entry of the ledger and its record, then compacts that key range.
    pub async fn delete_ledger(&self, ledger: LedgerId) -> Result<(), BookieError> {
        self.submit(|reply| Op::Delete { ledger, reply }).await
    }

    /// Ledgers this bookie holds data or a fence record for, in id order.
    pub fn ledgers(&self) -> Result<Vec<LedgerId>, BookieError> {
        let cf = self.cf(CF_LEDGERS)?;
        let mut iter = self.inner.db.raw_iterator_cf(&cf);
        iter.seek_to_first();
        let mut out = Vec::new();
        while iter.valid() {
            if let Some(key) = iter.key() {
                let ledger =
                    format::decode_ledger_key(key).ok_or_else(|| BookieError::Malformed {
                        what: "ledger key",
                        ledger: LedgerId(0),
                        detail: format!("key {key:02x?} is not 8 bytes"),
                    })?;
                out.push(ledger);
            }
            iter.next();
        }
        iter.status()?;
        Ok(out)
    }

    /// Sum of the payload sizes of entries `0..=last` (entries present; unverified). Reads
    /// every value: meant for recovery, which needs a closed ledger's length.
    pub fn payload_bytes(&self, ledger: LedgerId, last: EntryId) -> Result<u64, BookieError> {
        let cf = self.cf(CF_ENTRIES)?;
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(format::entry_key_after(ledger, last).to_vec());
        read_options.fill_cache(false);
        let mut iter = self.inner.db.raw_iterator_cf_opt(&cf, read_options);
        iter.seek(format::entry_key(ledger, EntryId(0)));
        let mut total = 0u64;
        while iter.valid() {
            if let Some(value) = iter.value() {
                total += value.len().saturating_sub(format::ENTRY_HEADER_LEN) as u64;
            }
            iter.next();
        }
        iter.status()?;
        Ok(total)
    }

    /// Counters since open.
    pub fn stats(&self) -> StorageStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StorageStats {
            adds: get(&c.adds),
            add_bytes: get(&c.add_bytes),
            batches: get(&c.batches),
            failed_batches: get(&c.failed_batches),
            fenced_rejections: get(&c.fenced_rejections),
            corrupt_reads: get(&c.corrupt_reads),
            deletes: get(&c.deletes),
            // The writer may answer before the sender counts its send: saturate.
            queued: get(&c.submitted).saturating_sub(get(&c.answered)),
        }
    }

    fn cf(&self, name: &str) -> Result<Arc<rocksdb::BoundColumnFamily<'_>>, BookieError> {
        self.inner
            .db
            .cf_handle(name)
            .ok_or_else(|| BookieError::Storage(format!("column family {name} missing")))
    }

    fn record(&self, ledger: LedgerId) -> Result<LedgerRecord, BookieError> {
        load_record(&self.inner.db, ledger)?.ok_or(BookieError::NoSuchLedger(ledger))
    }

    fn verify(&self, ledger: LedgerId, entry: EntryId, value: &[u8]) -> Result<Bytes, BookieError> {
        format::decode_entry_bytes(ledger, entry, value).inspect_err(|e| {
            if matches!(
                e,
                BookieError::Corrupt { .. } | BookieError::Malformed { .. }
            ) {
                self.inner
                    .counters
                    .corrupt_reads
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(ledger = %ledger, entry = %entry, error = %e, "corrupt entry");
            }
        })
    }

    /// The error for an absent entry: `NoSuchLedger` when the ledger itself is unknown.
    fn missing(&self, ledger: LedgerId, entry: EntryId) -> BookieError {
        match load_record(&self.inner.db, ledger) {
            Ok(Some(_)) => BookieError::NoSuchEntry { ledger, entry },
            Ok(None) => BookieError::NoSuchLedger(ledger),
            Err(e) => e,
        }
    }

    /// Test hook: holds the writer before its next batch until the guard is dropped.
    #[cfg(test)]
    pub(crate) fn pause_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Test hook: stores a raw value under an entry key (to inject corruption).
    #[cfg(test)]
    pub(crate) async fn put_raw_entry(
        &self,
        ledger: LedgerId,
        entry: EntryId,
        value: Vec<u8>,
    ) -> Result<(), BookieError> {
        let key = format::entry_key(ledger, entry).to_vec();
        self.submit(|reply| Op::PutRaw { key, value, reply }).await
    }
}

/// An op in the writer's queue; [`Queued::wait`] gives its outcome once it is written.
#[derive(Debug)]
pub struct Queued<T> {
    answer: oneshot::Receiver<Result<T, BookieError>>,
}

impl<T> Queued<T> {
    /// Waits until the op's batch is written (fsynced) and returns its outcome.
    pub async fn wait(self) -> Result<T, BookieError> {
        self.answer.await.map_err(|_| BookieError::Closed)?
    }
}

/// Reads a ledger record; `None` if the ledger is unknown.
pub(crate) fn load_record(db: &Db, ledger: LedgerId) -> Result<Option<LedgerRecord>, BookieError> {
    let cf = db
        .cf_handle(CF_LEDGERS)
        .ok_or_else(|| BookieError::Storage(format!("column family {CF_LEDGERS} missing")))?;
    match db.get_pinned_cf(&cf, format::ledger_key(ledger))? {
        Some(value) => LedgerRecord::decode(ledger, &value).map(Some),
        None => Ok(None),
    }
}
