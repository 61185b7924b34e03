//! The group-commit writer: one thread owns every mutation of the bookie's database.
//!
//! Callers send [`Op`]s over a bounded channel. The writer takes the first queued op, drains
//! whatever else is already queued (up to `group_commit_max_batch` ops or
//! `group_commit_max_bytes` of payload), applies them in arrival order to ONE `WriteBatch`
//! (entries plus the touched ledgers' records), writes it (fsynced when `sync` is set), and
//! only then answers every op of the batch. A fence and the adds around it go through the
//! same queue, so "fenced" is decided in one order for everyone.
//!
//! The writer runs on its own OS thread, not on the async runtime: the fsync blocks for
//! milliseconds and must not stall runtime workers (the same reason one would use
//! `spawn_blocking`, without needing a runtime to exist when the storage is opened).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rocksdb::{WriteBatch, WriteOptions};
use strata_proto::{EntryId, LedgerId};
use tokio::sync::{mpsc, oneshot};

use super::format::{self, LedgerRecord};
use super::lac::LedgerWatchers;
use super::{CF_ENTRIES, CF_LEDGERS, Counters, Db};
use crate::BookieError;

/// A mutation request sent to the writer.
pub(crate) enum Op {
    Add {
        ledger: LedgerId,
        entry: EntryId,
        last_add_confirmed: Option<EntryId>,
        payload: Bytes,
        recovery: bool,
        reply: oneshot::Sender<Result<(), BookieError>>,
    },
    Fence {
        ledger: LedgerId,
        reply: oneshot::Sender<Result<Option<EntryId>, BookieError>>,
    },
    Delete {
        ledger: LedgerId,
        reply: oneshot::Sender<Result<(), BookieError>>,
    },
    /// Test hook: store a raw entry value as is (used to inject corruption).
    #[cfg(test)]
    PutRaw {
        key: Vec<u8>,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), BookieError>>,
    },
}

impl Op {
    fn payload_len(&self) -> usize {
        match self {
            Op::Add { payload, .. } => payload.len(),
            _ => 0,
        }
    }
}

/// An accepted op waiting for its batch to be written.
enum Waiting {
    Add(oneshot::Sender<Result<(), BookieError>>),
    Fence(
        oneshot::Sender<Result<Option<EntryId>, BookieError>>,
        Option<EntryId>,
    ),
    Delete(oneshot::Sender<Result<(), BookieError>>),
}

impl Waiting {
    fn answer(self, result: &Result<(), String>, retryable: bool) {
        let err = |msg: &String| {
            if retryable {
                BookieError::Busy(msg.clone())
            } else {
                BookieError::Storage(msg.clone())
            }
        };
        // A caller that stopped waiting is not an error of the batch.
        match self {
            Waiting::Add(reply) | Waiting::Delete(reply) => {
                let _ = reply.send(result.as_ref().map(|_| ()).map_err(err));
            }
            Waiting::Fence(reply, last) => {
                let _ = reply.send(result.as_ref().map(|_| last).map_err(err));
            }
        }
    }
}

/// Limits and settings of the writer.
pub(crate) struct JournalConfig {
    pub max_batch: usize,
    pub max_bytes: usize,
    pub sync: bool,
}

/// Runs the writer until every sender is dropped; then returns, releasing its handle on the DB.
pub(crate) fn run(
    db: Arc<Db>,
    mut rx: mpsc::Receiver<Op>,
    config: JournalConfig,
    counters: Arc<Counters>,
    watchers: Arc<LedgerWatchers>,
    gate: Arc<Mutex<()>>,
) {
    let mut write_options = WriteOptions::default();
    write_options.set_sync(config.sync);
    while let Some(first) = rx.blocking_recv() {
        // Tests hold the gate to let a queue build up; otherwise it is never contended.
        let _gate = gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut bytes = first.payload_len();
        let mut ops = vec![first];
        while ops.len() < config.max_batch && bytes < config.max_bytes {
            match rx.try_recv() {
                Ok(op) => {
                    bytes += op.payload_len();
                    ops.push(op);
                }
                Err(_) => break,
            }
        }
        let received = ops.len() as u64;
        process_batch(&db, ops, &write_options, &counters, &watchers);
        counters.answered.fetch_add(received, Ordering::Relaxed);
    }
    tracing::debug!("bookie journal writer stopped");
}

/// Ledger records touched by one batch, loaded on first use. `None` = absent or deleted.
struct Records<'a> {
    db: &'a Db,
    records: HashMap<LedgerId, Option<LedgerRecord>>,
    dirty: HashSet<LedgerId>,
}

impl Records<'_> {
    fn get(&mut self, ledger: LedgerId) -> Result<Option<LedgerRecord>, BookieError> {
        if let Some(record) = self.records.get(&ledger) {
            return Ok(*record);
        }
        let record = super::load_record(self.db, ledger)?;
        self.records.insert(ledger, record);
        Ok(record)
    }

    fn set(&mut self, ledger: LedgerId, record: Option<LedgerRecord>) {
        self.records.insert(ledger, record);
        self.dirty.insert(ledger);
    }
}

fn process_batch(
    db: &Db,
    ops: Vec<Op>,
    write_options: &WriteOptions,
    counters: &Counters,
    watchers: &LedgerWatchers,
) {
    let (Some(entries_cf), Some(ledgers_cf)) = (db.cf_handle(CF_ENTRIES), db.cf_handle(CF_LEDGERS))
    else {
        // Checked at open; unreachable unless the DB is torn down under us.
        for op in ops {
            reject(op, || BookieError::Storage("column family missing".into()));
        }
        return;
    };
    let mut batch = WriteBatch::default();
    let mut records = Records {
        db,
        records: HashMap::new(),
        dirty: HashSet::new(),
    };
    let mut waiting = Vec::with_capacity(ops.len());
    let mut deleted = Vec::new();
    let mut adds = 0u64;
    let mut add_bytes = 0u64;

    for op in ops {
        match op {
            Op::Add {
                ledger,
                entry,
                last_add_confirmed,
                payload,
                recovery,
                reply,
            } => {
                let mut record = match records.get(ledger) {
                    Ok(record) => record.unwrap_or_default(),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                };
                if record.fenced && !recovery {
                    counters.fenced_rejections.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(BookieError::Fenced(ledger)));
                    continue;
                }
                batch.put_cf(
                    &entries_cf,
                    format::entry_key(ledger, entry),
                    format::encode_entry(ledger, entry, &payload),
                );
                record.last_entry = record.last_entry.max(Some(entry));
                record.last_add_confirmed = record.last_add_confirmed.max(last_add_confirmed);
                records.set(ledger, Some(record));
                adds += 1;
                add_bytes += payload.len() as u64;
                waiting.push(Waiting::Add(reply));
            }
            Op::Fence { ledger, reply } => {
                let mut record = match records.get(ledger) {
                    Ok(record) => record.unwrap_or_default(),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                };
                record.fenced = true;
                records.set(ledger, Some(record));
                waiting.push(Waiting::Fence(reply, record.last_entry));
            }
            Op::Delete { ledger, reply } => {
                batch.delete_range_cf(
                    &entries_cf,
                    &format::entry_key(ledger, EntryId(0))[..],
                    &format::entry_key_after(ledger, EntryId(u64::MAX))[..],
                );
                records.set(ledger, None);
                deleted.push(ledger);
                waiting.push(Waiting::Delete(reply));
            }
            #[cfg(test)]
            Op::PutRaw { key, value, reply } => {
                batch.put_cf(&entries_cf, key, value);
                waiting.push(Waiting::Add(reply));
            }
        }
    }
    for ledger in &records.dirty {
        match records.records.get(ledger).copied().flatten() {
            Some(record) => batch.put_cf(&ledgers_cf, format::ledger_key(*ledger), record.encode()),
            None => batch.delete_cf(&ledgers_cf, format::ledger_key(*ledger)),
        }
    }
    if waiting.is_empty() {
        return;
    }

    let result = db.write_opt(batch, write_options);
    let (result, retryable) = match result {
        Ok(()) => {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters.adds.fetch_add(adds, Ordering::Relaxed);
            counters.add_bytes.fetch_add(add_bytes, Ordering::Relaxed);
            (Ok(()), false)
        }
        Err(e) => {
            tracing::error!(error = %e, ops = waiting.len(), "bookie journal batch write failed");
            counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            let retryable = BookieError::from(e.clone()).is_retryable();
            (Err(e.into_string()), retryable)
        }
    };
    for w in waiting {
        w.answer(&result, retryable);
    }
    if result.is_ok() {
        watchers.notify(records.dirty.iter().copied());
    }

    // Reclaim the space of deleted ledgers now rather than at the next natural compaction.
    if result.is_ok() {
        for ledger in deleted {
            db.compact_range_cf(
                &entries_cf,
                Some(&format::entry_key(ledger, EntryId(0))[..]),
                Some(&format::entry_key_after(ledger, EntryId(u64::MAX))[..]),
            );
            counters.deletes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn reject(op: Op, err: impl Fn() -> BookieError) {
    match op {
        Op::Add { reply, .. } | Op::Delete { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Op::Fence { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        #[cfg(test)]
        Op::PutRaw { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
    }
}
