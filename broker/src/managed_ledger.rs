//! A topic's log as a managed ledger: an ordered list of ledgers kept in the metastore, the
//! last one open for writing, rolled over by entry count or size.
//!
//! Writes are pipelined: [`ManagedLedger::append`] assigns the entry's position under a lock
//! and returns a future that resolves once the entry is durable, so one producer's entries
//! keep their order without waiting for each other's fsync.
//!
//! On open, a last ledger left OPEN by a previous owner (a crash) is recovered: fenced and
//! closed at its last durable entry, so nothing acknowledged is lost and a zombie writer
//! cannot add more. Then a fresh ledger is opened for writing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use strata_bookie::{LedgerClient, LedgerConfig, LedgerReader, LedgerWriter};
use strata_metastore::Expect;
use strata_metastore::tables::{
    LedgerInfo, ManagedLedgerRecord, RetentionPolicy, TableError, Tables, now_ms,
};
use strata_metastore::types::{Compare, Txn, TxnOp};
use strata_proto::{EntryId, LedgerId, Position, TopicName};
use tokio::sync::{Mutex, watch};
use tracing::{info, instrument, warn};

use crate::BrokerError;

/// Resolves to an appended entry's position once it is durable.
pub type PendingAppend =
    std::pin::Pin<Box<dyn Future<Output = Result<Position, BrokerError>> + Send + 'static>>;

/// When to roll over to a new ledger, and how ledgers are replicated.
#[derive(Debug, Clone)]
pub struct ManagedLedgerConfig {
    pub max_entries_per_ledger: u64,
    pub max_ledger_bytes: u64,
    /// Roll over a ledger this old on the next append; `None`: no age limit.
    pub max_ledger_age: Option<std::time::Duration>,
    pub ledger: LedgerConfig,
}

impl Default for ManagedLedgerConfig {
    fn default() -> Self {
        Self {
            max_entries_per_ledger: 50_000,
            max_ledger_bytes: 512 * 1024 * 1024,
            max_ledger_age: None,
            ledger: LedgerConfig {
                ensemble_size: 1,
                write_quorum: 1,
                ack_quorum: 1,
            },
        }
    }
}

/// What readers see: the ledger list and the ledger being written.
struct LogView {
    ledgers: Vec<LedgerInfo>,
    current: Option<Arc<LedgerWriter>>,
}

/// Writer-side state, serialised by an async lock (rollover awaits the metastore).
struct WriteState {
    record_version: u64,
    /// When the ledger being written was opened (for the age limit).
    ledger_opened: std::time::Instant,
}

/// The refusal of an append for a producer session that saw an append to `topic` fail
/// (retryable: the client resends on a new session).
pub(crate) fn session_ended(topic: &TopicName) -> BrokerError {
    BrokerError::Retry(format!(
        "an append to {topic} failed during this producer session: resend on a new session"
    ))
}

pub struct ManagedLedger {
    topic: TopicName,
    tables: Tables,
    client: LedgerClient,
    config: ManagedLedgerConfig,
    write: Mutex<WriteState>,
    view: RwLock<LogView>,
    readers: Mutex<HashMap<LedgerId, Arc<LedgerReader>>>,
    /// Bumped each time an entry becomes durable; dispatchers wait on it.
    appended: watch::Sender<u64>,
    /// One past the highest ledger id an add failed on (0: none). The ledger being written
    /// is replaced when it is the one: a late report from a ledger already replaced (its
    /// outstanding adds fail together, their reports one by one) changes nothing.
    failed_ledger: Arc<std::sync::atomic::AtomicU64>,
    /// Appends that failed so far. Bumped before `failed_ledger` is set, and only once the
    /// writer has stopped (so every later add to it fails too): see [`Self::append_at`].
    failures: Arc<std::sync::atomic::AtomicU64>,
    /// Set by `delete`: appends fail with `TopicDeleted`.
    deleted: std::sync::atomic::AtomicBool,
    /// The log did not exist before this open (a new or re-created topic).
    fresh: bool,
}

impl ManagedLedger {
    /// Opens the topic's log, recovering a ledger a previous owner left open.
    #[instrument(skip_all, fields(topic = %topic))]
    pub async fn open(
        topic: TopicName,
        tables: Tables,
        client: LedgerClient,
        config: ManagedLedgerConfig,
    ) -> Result<Arc<Self>, BrokerError> {
        let (mut record, mut version) = match tables.managed_ledgers.get(&topic).await? {
            Some(row) => (row.record, row.version),
            None => (ManagedLedgerRecord::default(), 0),
        };
        let fresh = version == 0;
        let mut empty_tail = None;
        if let Some(last) = record
            .ledgers
            .last()
            .cloned()
            .filter(|l| l.entries.is_none())
        {
            // A tail ledger whose metadata is gone was deleted empty by an earlier open that
            // failed before rewriting this record: it held nothing.
            let entries = match client.open_ledger_with_recovery(last.id).await {
                Ok(reader) => reader.last_entry().map(|e| e.0 + 1).unwrap_or(0),
                Err(strata_bookie::LedgerError::NoSuchLedger(_)) => 0,
                Err(e) => return Err(e.into()),
            };
            info!(ledger = %last.id, entries, "recovered ledger left open by the previous owner");
            if entries == 0 {
                record.ledgers.pop();
                empty_tail = Some(last.id);
            } else if let Some(info) = record.ledgers.last_mut() {
                info.entries = Some(entries);
                info.closed_ms = Some(now_ms());
            }
        }
        let writer = Arc::new(client.create_ledger(config.ledger).await?);
        record.ledgers.push(LedgerInfo {
            id: writer.id(),
            entries: None,
            size_bytes: 0,
            closed_ms: None,
        });
        let expect = if version == 0 {
            Expect::Absent
        } else {
            Expect::Version(version)
        };
        version = tables
            .managed_ledgers
            .put(&topic, &record, expect)
            .await?
            .version;
        // Only now that the record no longer names it may the empty tail ledger go.
        if let Some(id) = empty_tail
            && let Err(e) = client.delete_ledger(id).await
        {
            warn!(ledger = %id, error = %e, "could not delete empty recovered ledger");
        }
        info!(ledger = %writer.id(), ledgers = record.ledgers.len(), "managed ledger open");
        let (appended, _) = watch::channel(0);
        Ok(Arc::new(Self {
            topic,
            tables,
            client,
            config,
            write: Mutex::new(WriteState {
                record_version: version,
                ledger_opened: std::time::Instant::now(),
            }),
            view: RwLock::new(LogView {
                ledgers: record.ledgers,
                current: Some(writer),
            }),
            readers: Mutex::new(HashMap::new()),
            appended,
            failed_ledger: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            failures: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            deleted: std::sync::atomic::AtomicBool::new(false),
            fresh,
        }))
    }

    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// Whether the log was created by this open (nothing of an earlier topic of the same name
    /// belongs to it).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Whether the log was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Starts appending one entry; the returned future resolves once it is durable.
    pub async fn append(&self, data: Bytes) -> Result<PendingAppend, BrokerError> {
        Ok(self.append_at(data, None).await?.1)
    }

    /// Appends that failed so far (see [`Self::append_at`]).
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// As [`ManagedLedger::append`], also saying where the entry goes (if it becomes durable,
    /// it is there).
    ///
    /// With `unless_failed_since: Some(n)`, the append is refused (retryable) if
    /// [`Self::failures`] is no longer `n`. A producer session passes the count it began
    /// with, so it never stores an entry after one of its own that failed: what it stored
    /// stays an in-order prefix of what it sent, which the sequence-id dedup relies on.
    pub async fn append_at(
        &self,
        data: Bytes,
        unless_failed_since: Option<u64>,
    ) -> Result<(Position, PendingAppend), BrokerError> {
        let mut write = self.write.lock().await;
        if self.current_ledger_failed() {
            self.replace_failed_ledger(&mut write).await?;
        }
        // Checked after the failed ledger: a failure counted after this check is of a writer
        // already stopped, so this add fails with it rather than landing after it.
        if let Some(seen) = unless_failed_since
            && self.failures() != seen
        {
            return Err(session_ended(&self.topic));
        }
        let writer = self.current_writer()?;
        // Refused here, before any position is handed out: the writer would refuse it only
        // in the returned future, while taking later adds (which the session rule forbids).
        self.check_entry_size(data.len())?;
        let too_old = self
            .config
            .max_ledger_age
            .is_some_and(|age| write.ledger_opened.elapsed() >= age);
        let writer = if writer.entries_added() >= self.config.max_entries_per_ledger
            || writer.length_bytes() >= self.config.max_ledger_bytes
            || (too_old && writer.entries_added() > 0)
        {
            self.rollover(&mut write).await?
        } else {
            writer
        };
        let ledger = writer.id();
        // Entry ids are handed out in order under the write lock, so this is the one `add`
        // assigns.
        let at = Position {
            ledger,
            entry: EntryId(writer.entries_added()),
        };
        let add = writer.add(data);
        drop(write);
        // The completion runs as its own task, so the wake-up of dispatchers and the failure
        // flag never depend on somebody polling the returned future (a producer that went
        // away drops it, but its entry still becomes durable).
        let appended = self.appended.clone();
        let (failed, failures) = (self.failed_ledger.clone(), self.failures.clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let outcome = match add.await {
                Ok(entry) => {
                    appended.send_modify(|n| *n += 1);
                    Ok(Position { ledger, entry })
                }
                Err(e) => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    failed.fetch_max(ledger.0 + 1, std::sync::atomic::Ordering::SeqCst);
                    Err(BrokerError::from(e))
                }
            };
            let _ = done_tx.send(outcome);
        });
        let pending: PendingAppend =
            Box::pin(async move { done_rx.await.unwrap_or(Err(BrokerError::ShuttingDown)) });
        Ok((at, pending))
    }

    /// After a failed append: recovers the failed ledger and opens a new one now, so the
    /// log's tail is settled before anyone reads it back.
    pub async fn repair(&self) -> Result<(), BrokerError> {
        let mut write = self.write.lock().await;
        if self.current_ledger_failed() {
            self.replace_failed_ledger(&mut write).await?;
        }
        Ok(())
    }

    /// Whether an add failed on the ledger being written.
    fn current_ledger_failed(&self) -> bool {
        let failed = self.failed_ledger.load(std::sync::atomic::Ordering::SeqCst);
        failed != 0
            && self
                .view_read()
                .current
                .as_ref()
                .is_some_and(|w| failed > w.id().0)
    }

    /// Refuses an entry of `len` bytes if it is over the ledgers' entry limit.
    pub fn check_entry_size(&self, len: usize) -> Result<(), BrokerError> {
        let max = self.client.options().max_entry_bytes;
        if len <= max {
            return Ok(());
        }
        let ledger = self.current_writer()?.id();
        Err(strata_bookie::LedgerError::EntryTooLarge { ledger, len, max }.into())
    }

    fn current_writer(&self) -> Result<Arc<LedgerWriter>, BrokerError> {
        if self.deleted.load(std::sync::atomic::Ordering::Acquire) {
            return Err(BrokerError::TopicDeleted(self.topic.to_string()));
        }
        self.view_read()
            .current
            .clone()
            .ok_or(BrokerError::ShuttingDown)
    }

    fn view_read(&self) -> std::sync::RwLockReadGuard<'_, LogView> {
        // A panic while holding the lock cannot leave LogView half-updated (assignments only).
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn view_write(&self) -> std::sync::RwLockWriteGuard<'_, LogView> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the current ledger and opens a new one.
    #[instrument(skip_all, fields(topic = %self.topic))]
    async fn rollover(&self, write: &mut WriteState) -> Result<Arc<LedgerWriter>, BrokerError> {
        let old = self.current_writer()?;
        let last = old.close().await?;
        let durable = last.map_or(0, |e| e.0 + 1);
        if durable < old.entries_added() {
            // Closed at its last durable entry, short of adds it took: those failed (the
            // writer stopped). Counted now, before any add goes to a new ledger, since their
            // own failure reports may come later; the next append replaces this ledger.
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.failed_ledger
                .fetch_max(old.id().0 + 1, std::sync::atomic::Ordering::SeqCst);
            return Err(BrokerError::Retry(format!(
                "adds to ledger {} failed as it was closed",
                old.id()
            )));
        }
        let closed = LedgerInfo {
            id: old.id(),
            entries: Some(last.map(|e| e.0 + 1).unwrap_or(0)),
            size_bytes: old.length_bytes(),
            closed_ms: Some(now_ms()),
        };
        self.install_new_ledger(write, closed).await
    }

    /// After a failed add: recover the current ledger (fence, close at its last durable entry)
    /// and continue on a new one.
    async fn replace_failed_ledger(&self, write: &mut WriteState) -> Result<(), BrokerError> {
        let old = self.current_writer()?;
        let reader = self.client.open_ledger_with_recovery(old.id()).await?;
        let entries = reader.last_entry().map(|e| e.0 + 1).unwrap_or(0);
        warn!(topic = %self.topic, ledger = %old.id(), entries, "replacing ledger after a failed add");
        self.install_new_ledger(
            write,
            LedgerInfo {
                id: old.id(),
                entries: Some(entries),
                size_bytes: old.length_bytes(),
                closed_ms: Some(now_ms()),
            },
        )
        .await?;
        Ok(())
    }

    async fn install_new_ledger(
        &self,
        write: &mut WriteState,
        closed: LedgerInfo,
    ) -> Result<Arc<LedgerWriter>, BrokerError> {
        let writer = Arc::new(self.client.create_ledger(self.config.ledger).await?);
        let mut ledgers = self.view_read().ledgers.clone();
        if let Some(last) = ledgers.last_mut() {
            *last = closed;
        }
        ledgers.push(LedgerInfo {
            id: writer.id(),
            entries: None,
            size_bytes: 0,
            closed_ms: None,
        });
        self.persist_ledgers(write, &ledgers).await?;
        write.ledger_opened = std::time::Instant::now();
        let mut view = self.view_write();
        view.ledgers = ledgers;
        view.current = Some(writer.clone());
        Ok(writer)
    }

    /// Writes the ledger list by compare-and-set on the record version this writer holds.
    async fn persist_ledgers(
        &self,
        write: &mut WriteState,
        ledgers: &[LedgerInfo],
    ) -> Result<(), BrokerError> {
        let record = ManagedLedgerRecord {
            ledgers: ledgers.to_vec(),
        };
        let written = self
            .tables
            .managed_ledgers
            .update(&self.topic, &record, write.record_version)
            .await?;
        write.record_version = written.version;
        Ok(())
    }

    /// A receiver that changes whenever an entry becomes durable.
    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// The last durable entry, if any.
    pub fn last_confirmed(&self) -> Option<Position> {
        let view = self.view_read();
        if let Some(w) = &view.current
            && let Some(lac) = w.last_add_confirmed()
        {
            return Some(Position {
                ledger: w.id(),
                entry: lac,
            });
        }
        view.ledgers.iter().rev().find_map(|l| match l.entries {
            Some(n) if n > 0 => Some(Position {
                ledger: l.id,
                entry: EntryId(n - 1),
            }),
            _ => None,
        })
    }

    /// The first position of the log (it may not be written yet).
    pub fn first_position(&self) -> Option<Position> {
        let view = self.view_read();
        view.ledgers
            .iter()
            .find(|l| l.entries != Some(0))
            .map(|l| Position {
                ledger: l.id,
                entry: EntryId(0),
            })
    }

    /// The version of the log's record this writer holds: a write conditional on it fails
    /// once another broker has taken the log over.
    pub async fn record_version(&self) -> u64 {
        self.write.lock().await.record_version
    }

    /// A comparison that holds while the log's record is as this broker last wrote it: every
    /// new owner rewrites it on open, so a write carrying it lands only while this broker
    /// holds the log (or fails when a rollover or trim of its own moved the version).
    pub async fn owner_compare(&self) -> Compare {
        let version = self.record_version().await;
        self.tables
            .managed_ledgers
            .version_is(&self.topic, Expect::Version(version))
    }

    /// Writes `ops` in one metastore transaction, only while this broker still holds the
    /// log: compared against the log's record, which every new owner rewrites on open.
    pub async fn write_as_owner(&self, ops: Vec<TxnOp>) -> Result<(), BrokerError> {
        let t = &self.tables;
        // A rollover or trim of our own may move the version between the read and the write.
        for _ in 0..3 {
            let txn = Txn {
                compares: vec![self.owner_compare().await],
                success: ops.clone(),
                failure: Vec::new(),
            };
            if t.meta().txn(txn).await.map_err(TableError::from)?.succeeded {
                return Ok(());
            }
        }
        Err(BrokerError::Retry(format!(
            "the log of {} changed under this broker: another may own it",
            self.topic
        )))
    }

    /// The start of the log's first ledger: every entry before it is deleted.
    pub fn start(&self) -> Option<Position> {
        self.view_read().ledgers.first().map(|l| Position {
            ledger: l.id,
            entry: EntryId(0),
        })
    }

    /// The position after `p` in the log (it may not be written yet).
    pub fn next_position(&self, p: Position) -> Option<Position> {
        let view = self.view_read();
        let idx = view.ledgers.iter().position(|l| l.id == p.ledger)?;
        match view.ledgers[idx].entries {
            Some(n) if p.entry.0 + 1 >= n => view.ledgers[idx + 1..]
                .iter()
                .find(|l| l.entries != Some(0))
                .map(|l| Position {
                    ledger: l.id,
                    entry: EntryId(0),
                }),
            _ => Some(Position {
                ledger: p.ledger,
                entry: EntryId(p.entry.0 + 1),
            }),
        }
    }

    /// The position before `p`, or None if `p` is the first.
    pub fn prev_position(&self, p: Position) -> Option<Position> {
        if p.entry.0 > 0 {
            return Some(Position {
                ledger: p.ledger,
                entry: EntryId(p.entry.0 - 1),
            });
        }
        let view = self.view_read();
        let idx = view.ledgers.iter().position(|l| l.id == p.ledger)?;
        view.ledgers[..idx]
            .iter()
            .rev()
            .find_map(|l| match l.entries {
                Some(n) if n > 0 => Some(Position {
                    ledger: l.id,
                    entry: EntryId(n - 1),
                }),
                _ => None,
            })
    }

    /// Whether `p` names an entry that exists and is durable.
    pub fn contains(&self, p: Position) -> bool {
        let Some(last) = self.last_confirmed() else {
            return false;
        };
        if p > last {
            return false;
        }
        let view = self.view_read();
        view.ledgers.iter().any(|l| {
            l.id == p.ledger
                && match l.entries {
                    Some(n) => p.entry.0 < n,
                    None => true,
                }
        })
    }

    /// Reads up to `max` durable entries starting at `from`, within one ledger. Returns an
    /// empty list when nothing at or after `from` is durable yet.
    pub async fn read(
        &self,
        from: Position,
        max: usize,
    ) -> Result<Vec<(Position, Bytes)>, BrokerError> {
        let Some(from) = self.normalise(from) else {
            return Ok(Vec::new());
        };
        let Some(last_confirmed) = self.last_confirmed() else {
            return Ok(Vec::new());
        };
        if from > last_confirmed {
            return Ok(Vec::new());
        }
        let (writer, ledger_last) = {
            let view = self.view_read();
            let current = view.current.clone().filter(|w| w.id() == from.ledger);
            let info = view.ledgers.iter().find(|l| l.id == from.ledger).cloned();
            let last = match (&current, info.and_then(|i| i.entries)) {
                (Some(w), _) => w.last_add_confirmed(),
                (None, Some(n)) if n > 0 => Some(EntryId(n - 1)),
                _ => None,
            };
            (current, last)
        };
        let Some(ledger_last) = ledger_last else {
            return Ok(Vec::new());
        };
        let last = EntryId(ledger_last.0.min(from.entry.0 + max.max(1) as u64 - 1));
        let entries = match writer {
            Some(w) => w.read(from.entry, last).await?,
            None => {
                self.reader(from.ledger)
                    .await?
                    .read(from.entry, last)
                    .await?
            }
        };
        Ok(entries
            .into_iter()
            .map(|(e, data)| {
                (
                    Position {
                        ledger: from.ledger,
                        entry: e,
                    },
                    data,
                )
            })
            .collect())
    }

    /// Moves a position past the end of a closed ledger to the start of the next one.
    fn normalise(&self, p: Position) -> Option<Position> {
        let view = self.view_read();
        let idx = view.ledgers.iter().position(|l| l.id == p.ledger)?;
        match view.ledgers[idx].entries {
            Some(n) if p.entry.0 >= n => view.ledgers[idx + 1..]
                .iter()
                .find(|l| l.entries != Some(0))
                .map(|l| Position {
                    ledger: l.id,
                    entry: EntryId(0),
                }),
            _ => Some(p),
        }
    }

    async fn reader(&self, id: LedgerId) -> Result<Arc<LedgerReader>, BrokerError> {
        let mut readers = self.readers.lock().await;
        if let Some(r) = readers.get(&id) {
            return Ok(r.clone());
        }
        let r = Arc::new(self.client.open_ledger(id).await?);
        readers.insert(id, r.clone());
        Ok(r)
    }

    /// The log's durable entries as an index (for searches over the whole log).
    pub fn entry_index(&self) -> EntryIndex {
        let view = self.view_read();
        let mut ledgers = Vec::new();
        let mut total = 0;
        for l in &view.ledgers {
            let count = match (l.entries, &view.current) {
                (Some(n), _) => n,
                (None, Some(w)) if w.id() == l.id => {
                    w.last_add_confirmed().map(|e| e.0 + 1).unwrap_or(0)
                }
                (None, _) => 0,
            };
            if count > 0 {
                ledgers.push((total, l.id));
                total += count;
            }
        }
        EntryIndex { ledgers, total }
    }

    /// Where the next entry appended goes, unless the ledger rolls over first (then it goes
    /// later in the log): the first position of a transaction about to write.
    pub fn next_position_hint(&self) -> Result<Position, BrokerError> {
        let writer = self.current_writer()?;
        Ok(Position {
            ledger: writer.id(),
            entry: EntryId(writer.entries_added()),
        })
    }

    /// The log's ledgers in order, the open one with its current size and durable entries
    /// (so a subscription caught up on it has no backlog there).
    pub fn ledgers_with_sizes(&self) -> Vec<LedgerInfo> {
        let view = self.view_read();
        let mut ledgers = view.ledgers.clone();
        if let (Some(w), Some(last)) = (&view.current, ledgers.last_mut())
            && last.id == w.id()
        {
            last.size_bytes = w.length_bytes();
            last.entries = Some(w.last_add_confirmed().map_or(0, |e| e.0 + 1));
        }
        ledgers
    }

    /// Entries and bytes in the log, and its ledger count.
    pub fn stats(&self) -> (u64, u64, u64) {
        let view = self.view_read();
        let mut entries = 0;
        let mut bytes = 0;
        for l in &view.ledgers {
            entries += l.entries.unwrap_or(0);
            bytes += l.size_bytes;
        }
        if let Some(w) = &view.current {
            entries += w.last_add_confirmed().map(|e| e.0 + 1).unwrap_or(0);
            bytes += w.length_bytes();
        }
        (entries, bytes, view.ledgers.len() as u64)
    }

    /// Closes the ledger being written (on broker shutdown), so a restart need not recover it.
    pub async fn close(&self) -> Result<(), BrokerError> {
        let mut write = self.write.lock().await;
        let Some(writer) = self.view_write().current.take() else {
            return Ok(());
        };
        let last = writer.close().await?;
        let mut ledgers = self.view_read().ledgers.clone();
        if let Some(l) = ledgers.last_mut() {
            l.entries = Some(last.map(|e| e.0 + 1).unwrap_or(0));
            l.size_bytes = writer.length_bytes();
            l.closed_ms = Some(now_ms());
        }
        self.persist_ledgers(&mut write, &ledgers).await?;
        self.view_write().ledgers = ledgers;
        Ok(())
    }

    /// Deletes the closed ledgers entirely at or before `consumed` (every subscription has
    /// acknowledged them, and the dedup snapshot covers them) that retention does not keep.
    /// The ledger being written is never deleted. Returns the ledgers deleted.
    pub async fn trim(
        &self,
        consumed: Position,
        retention: Option<RetentionPolicy>,
    ) -> Result<Vec<LedgerId>, BrokerError> {
        let mut write = self.write.lock().await;
        let ledgers = self.view_read().ledgers.clone();
        let deletable = trimmable(&ledgers, consumed, retention, now_ms());
        if deletable == 0 {
            return Ok(Vec::new());
        }
        let (gone, kept) = ledgers.split_at(deletable);
        // The record first: a crash after it leaves orphan ledgers (a leak), never a record
        // naming ledgers that are gone.
        self.persist_ledgers(&mut write, kept).await?;
        self.view_write().ledgers = kept.to_vec();
        let mut readers = self.readers.lock().await;
        let mut deleted = Vec::new();
        for l in gone {
            readers.remove(&l.id);
            match self.client.delete_ledger(l.id).await {
                Ok(()) | Err(strata_bookie::LedgerError::NoSuchLedger(_)) => deleted.push(l.id),
                Err(e) => {
                    warn!(topic = %self.topic, ledger = %l.id, error = %e, "trimmed ledger not deleted; it is orphaned")
                }
            }
        }
        info!(topic = %self.topic, ledgers = deleted.len(), "consumed ledgers deleted");
        Ok(deleted)
    }

    /// Deletes every ledger of the log and its record.
    pub async fn delete(&self) -> Result<(), BrokerError> {
        let _write = self.write.lock().await;
        self.deleted
            .store(true, std::sync::atomic::Ordering::Release);
        let current = self.view_write().current.take();
        if let Some(w) = current
            && let Err(e) = w.close().await
        {
            warn!(topic = %self.topic, error = %e, "closing the ledger of a deleted topic");
        }
        // Idempotent: a ledger already gone counts as deleted, and the list is cleared only
        // once every ledger is, so a retry after a failure deletes the rest.
        let ledgers = self.view_read().ledgers.clone();
        for l in &ledgers {
            match self.client.delete_ledger(l.id).await {
                Ok(()) | Err(strata_bookie::LedgerError::NoSuchLedger(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.view_write().ledgers.clear();
        self.tables
            .managed_ledgers
            .delete(&self.topic, Expect::Any)
            .await?;
        Ok(())
    }
}

/// The entries of a log numbered 0.. in log order, without listing them.
#[derive(Debug, Clone)]
pub struct EntryIndex {
    /// (number of the ledger's first entry, ledger), ascending.
    ledgers: Vec<(u64, LedgerId)>,
    total: u64,
}

impl EntryIndex {
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The position of entry number `i`.
    pub fn get(&self, i: u64) -> Option<Position> {
        if i >= self.total {
            return None;
        }
        let k = self.ledgers.partition_point(|(start, _)| *start <= i) - 1;
        let (start, ledger) = self.ledgers[k];
        Some(Position {
            ledger,
            entry: EntryId(i - start),
        })
    }
}

/// How many ledgers from the front of `ledgers` may be deleted: closed, every entry at or
/// before `consumed`, and past retention (older than its minutes, or behind `size_mb` of
/// newer consumed data). Never the last ledger (the one being written).
pub fn trimmable(
    ledgers: &[LedgerInfo],
    consumed: Position,
    retention: Option<RetentionPolicy>,
    now_ms: u64,
) -> usize {
    let fully_consumed = |l: &LedgerInfo| match l.entries {
        Some(0) => l.id <= consumed.ledger,
        Some(n) => l.id < consumed.ledger || (l.id == consumed.ledger && n <= consumed.entry.0 + 1),
        None => false,
    };
    let candidates = ledgers
        .iter()
        .take(ledgers.len().saturating_sub(1))
        .take_while(|l| fully_consumed(l))
        .count();
    let Some(policy) = retention else {
        return candidates;
    };
    // Walk from the newest consumed ledger back: keep while both limits allow.
    let mut kept_bytes = 0u64;
    let mut keep_from = candidates;
    for i in (0..candidates).rev() {
        let l = &ledgers[i];
        let age_ms = now_ms.saturating_sub(l.closed_ms.unwrap_or(now_ms));
        kept_bytes += l.size_bytes;
        let young = age_ms < policy.minutes.saturating_mul(60_000);
        let small = kept_bytes <= policy.size_mb.saturating_mul(1024 * 1024);
        if young && small {
            keep_from = i;
        } else {
            break;
        }
    }
    keep_from
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(id: u64, entries: Option<u64>, size_bytes: u64, closed_ms: u64) -> LedgerInfo {
        LedgerInfo {
            id: LedgerId(id),
            entries,
            size_bytes,
            closed_ms: entries.map(|_| closed_ms),
        }
    }

    /// Only closed ledgers wholly at or before the consumed position go, never the open one.
    #[test]
    fn only_fully_consumed_closed_ledgers_are_trimmed() {
        let ledgers = [
            ledger(1, Some(10), 100, 0),
            ledger(2, Some(10), 100, 0),
            ledger(3, None, 0, 0),
        ];
        assert_eq!(trimmable(&ledgers, Position::new(1, 8), None, 0), 0);
        assert_eq!(trimmable(&ledgers, Position::new(1, 9), None, 0), 1);
        assert_eq!(trimmable(&ledgers, Position::new(2, 9), None, 0), 2);
        assert_eq!(
            trimmable(&ledgers, Position::new(3, 5), None, 0),
            2,
            "the ledger being written stays"
        );
    }

    /// Entry numbers map across ledgers, skipping empty ones; past the end is None.
    #[test]
    fn entry_index_numbers_entries_across_ledgers() {
        let index = EntryIndex {
            ledgers: vec![(0, LedgerId(4)), (3, LedgerId(9))],
            total: 5,
        };
        assert_eq!(index.get(0), Some(Position::new(4, 0)));
        assert_eq!(index.get(2), Some(Position::new(4, 2)));
        assert_eq!(index.get(3), Some(Position::new(9, 0)));
        assert_eq!(index.get(4), Some(Position::new(9, 1)));
        assert_eq!(index.get(5), None);
    }

    /// Retention keeps the newest consumed ledgers while they are young and small enough.
    #[test]
    fn retention_keeps_recent_consumed_ledgers_within_its_limits() {
        let mb = 1024 * 1024;
        let minute = 60_000;
        let ledgers = [
            ledger(1, Some(1), mb, 0),
            ledger(2, Some(1), mb, 50 * minute),
            ledger(3, Some(1), mb, 55 * minute),
            ledger(4, None, 0, 0),
        ];
        let all = Position::new(3, 0);
        let now = 60 * minute;
        let policy = |minutes, size_mb| Some(RetentionPolicy { minutes, size_mb });
        assert_eq!(
            trimmable(&ledgers, all, policy(30, 100), now),
            1,
            "ledger 1 too old"
        );
        assert_eq!(
            trimmable(&ledgers, all, policy(120, 2), now),
            1,
            "only 2 MB kept"
        );
        assert_eq!(trimmable(&ledgers, all, policy(120, 100), now), 0);
        assert_eq!(
            trimmable(&ledgers, all, policy(0, 100), now),
            3,
            "zero minutes keeps none"
        );
    }
}
