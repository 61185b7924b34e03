//! Acknowledgements made in a transaction ("pending acks"): held apart from the cursor until
//! the transaction is decided. A message with a pending ack is not delivered again to anyone
//! (not even after its consumer leaves); a second transaction acknowledging it gets
//! `TransactionConflict`. On commit the acks go into the cursor, and the pending records are
//! deleted in the very write that makes the cursor durable with them (the flusher's: many
//! commits share it); on abort the messages are delivered again.
//!
//! Each ack write stores its messages in pending-ack records of up to 4,096 messages (one
//! for most writes), each keyed by its first. Only the topic's owner writes them (each write compares the managed-ledger
//! record, which every new owner rewrites before loading its subscriptions): so the owner
//! holds every pending ack in memory, the conflict rule holds there, and the next owner
//! finds them all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use strata_metastore::tables::{CursorKey, HeldAck, PendingAck, TableError, Tables, TxnState};
use strata_metastore::txn_coordinator::TxnCoordinator;
use strata_metastore::types::Txn;
use strata_metastore::{Expect, MetaError};
use strata_proto::{MessageId, TxnId};
use tokio::time::Instant;
use tracing::warn;

use strata_proto::pb::client::SubscriptionType;

use super::{Redelivery, SubState, Subscription};
use crate::BrokerError;
use crate::managed_ledger::ManagedLedger;
use crate::topic::TxnWrite;

impl Subscription {
    /// Acknowledges `ids` in a write of a transaction, as one metastore write. With
    /// `cumulative` (exclusive and failover subscriptions, as in Pulsar), `ids` is one id and
    /// every message delivered and not acknowledged up to it is acknowledged.
    pub async fn apply_txn_acks(
        self: &Arc<Self>,
        consumer_id: u64,
        write: TxnWrite<'_>,
        ids: Vec<MessageId>,
        cumulative: bool,
        coordinator: &TxnCoordinator,
    ) -> Result<(), BrokerError> {
        // Run to the end even if the caller goes away (its connection closed): the count of
        // writes under way and the settlement of the transaction here must stay right.
        let (sub, coordinator) = (self.clone(), coordinator.clone());
        let (txn, client, start) = (write.id, write.client.to_owned(), write.start.cloned());
        tokio::spawn(async move {
            let write = TxnWrite {
                id: txn,
                client: &client,
                start: start.as_ref(),
            };
            sub.apply_txn_acks_to_end(consumer_id, write, ids, cumulative, &coordinator)
                .await
        })
        .await
        .unwrap_or_else(|e| match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(BrokerError::ShuttingDown),
        })
    }

    async fn apply_txn_acks_to_end(
        &self,
        consumer_id: u64,
        write: TxnWrite<'_>,
        ids: Vec<MessageId>,
        cumulative: bool,
        coordinator: &TxnCoordinator,
    ) -> Result<(), BrokerError> {
        let txn = write.id;
        let new = {
            let mut st = self.state.lock().await;
            if st.consumer_mut(consumer_id).is_none() {
                return Err(BrokerError::Protocol(
                    "ack from a consumer that is not attached".into(),
                ));
            }
            let ids = if cumulative {
                cumulative_ids(&st, &ids)?
            } else {
                ids
            };
            if ids.len() > strata_proto::MAX_TXN_ACKS_PER_REQUEST {
                return Err(BrokerError::Protocol(format!(
                    "{} messages in one transactional ack; at most {} (split the request, or ack cumulatively less at a time)",
                    ids.len(),
                    strata_proto::MAX_TXN_ACKS_PER_REQUEST
                )));
            }
            let mut new = BTreeMap::new();
            for id in ids {
                match st.txn_acks.get(&id) {
                    Some((t, _)) if *t == txn => continue,
                    Some((t, _)) => return Err(conflict(id, *t)),
                    None => {}
                }
                // Records are not keyed per message: the check against writes under way is
                // what keeps two transactions from holding one message.
                if let Some((t, _)) = st.txn_acks_writing.get(&id).filter(|(t, _)| *t != txn) {
                    return Err(conflict(id, *t));
                }
                let batch_size = st
                    .pending
                    .get(&id.position())
                    .filter(|e| e.held.contains_key(&id.batch_index))
                    .map(|e| e.batch_size)
                    .ok_or_else(|| BrokerError::InvalidMessageId(id.to_string()))?;
                new.insert(id, batch_size);
            }
            if !new.is_empty() {
                *st.txn_ack_writes.entry(txn).or_default() += 1;
                for id in new.keys() {
                    st.txn_acks_writing.entry(*id).or_insert((txn, 0)).1 += 1;
                }
            }
            new
        };
        if new.is_empty() {
            return Ok(());
        }
        let written = self.write_txn_acks(write, &new, coordinator).await;
        let decided_meanwhile = {
            let mut st = self.state.lock().await;
            match &written {
                // The write may have landed: its records would be held by nobody here, so the
                // transaction's mark stays (counted as a write under way) until the next load,
                // and no other transaction may acknowledge these messages before then.
                Err(AckWriteError {
                    maybe_written: true,
                    ..
                }) => {}
                outcome => {
                    for id in new.keys() {
                        if let Some((_, writes)) = st.txn_acks_writing.get_mut(id) {
                            *writes -= 1;
                            if *writes == 0 {
                                st.txn_acks_writing.remove(id);
                            }
                        }
                    }
                    if let Some(n) = st.txn_ack_writes.get_mut(&txn) {
                        *n -= 1;
                        if *n == 0 {
                            st.txn_ack_writes.remove(&txn);
                        }
                    }
                    if outcome.is_ok() {
                        st.txn_marked.insert(txn);
                        let keys = new.keys().step_by(MAX_ACKS_PER_RECORD).copied();
                        st.txn_records.entry(txn).or_default().extend(keys);
                        for (id, batch_size) in new {
                            hold_for_txn(&mut st, id, txn, batch_size);
                        }
                    }
                }
            }
            let decided = st.txn_decided_in_write.get(&txn).copied();
            if !st.txn_ack_writes.contains_key(&txn) {
                st.txn_decided_in_write.remove(&txn);
            }
            decided
        };
        // A decision that came during the write found these acks not held yet, or left the
        // mark to this write (it was recorded then: a written ack registered the subscription,
        // so the decision reaches it): settle now (settling again is harmless).
        if let Some(committed) = decided_meanwhile {
            self.txn_acks_decided(txn, committed).await;
        }
        written.map_err(|e| e.error)
    }

    /// Settles an ack write whose answer was lost by sending the same write again. With the
    /// same compares at most one of the two applies (the Raft log orders them, and the first
    /// to apply fails the other's compare on the record's key), so when the resend fails,
    /// the stored record says whether the first one landed.
    async fn resolve_lost_write(
        &self,
        write: Txn,
        key: &(CursorKey, MessageId),
        record: &PendingAck,
        error: BrokerError,
    ) -> Result<(), AckWriteError> {
        for attempt in 1..=READ_BACK_ATTEMPTS {
            tokio::time::sleep(READ_BACK_PAUSE * attempt).await;
            match self.tables.meta().txn(write.clone()).await {
                Ok(resent) if resent.succeeded => return Ok(()),
                Ok(_) => match self.tables.pending_acks.get(key).await {
                    Ok(Some(row)) if row.record == *record => return Ok(()),
                    Ok(_) => return Err(AckWriteError::not_written(error)),
                    Err(_) => {}
                },
                Err(_) => {}
            }
        }
        Err(AckWriteError {
            error,
            maybe_written: true,
        })
    }

    /// Writes the pending-ack records of `new` (registering the subscription in the
    /// transaction if it is new there) in one metastore write, guarded by the transaction's
    /// record and by this broker still owning the topic.
    async fn write_txn_acks(
        &self,
        write: TxnWrite<'_>,
        new: &BTreeMap<MessageId, u32>,
        coordinator: &TxnCoordinator,
    ) -> Result<(), AckWriteError> {
        let TxnWrite {
            id: txn, client, ..
        } = write;
        let cursor = CursorKey::new(self.topic.clone(), &self.name);
        let t = &self.tables;
        let records = pending_records(txn, new);
        let Some((first_key, first_record)) = records.first().cloned() else {
            return Ok(());
        };
        let key = (cursor.clone(), first_key);
        let mut puts = Vec::with_capacity(records.len());
        let mut absent = Vec::with_capacity(records.len());
        for (first, record) in &records {
            let key = (cursor.clone(), *first);
            absent.push(t.pending_acks.version_is(&key, Expect::Absent));
            puts.push(
                t.pending_acks
                    .put_op(&key, record)
                    .map_err(AckWriteError::not_written)?,
            );
        }
        // Our own rollovers move the log's record too: a few compares may fail on them.
        let mut log_moves_left = 3;
        loop {
            // Registers the subscription (if new) and holds the acks in one write, which
            // succeeds only while the record is as read: never into a decided transaction.
            let guard = coordinator
                .ack_guard(txn, client, &self.topic, &self.name, write.start)
                .await
                .map_err(AckWriteError::not_written)?;
            let log_version = self.ml.record_version().await;
            let mut compares = guard.compares.clone();
            compares.push(
                t.managed_ledgers
                    .version_is(&self.topic, Expect::Version(log_version)),
            );
            compares.extend(absent.iter().cloned());
            let mut success = guard.register.clone();
            success.extend(puts.iter().cloned());
            let txn_write = Txn {
                compares,
                success,
                failure: Vec::new(),
            };
            let written = match t.meta().txn(txn_write.clone()).await {
                Ok(written) => written,
                Err(e) => {
                    // Refused before it was proposed (too large, a bad key, no member): not
                    // written. Otherwise the answer may be all that was lost.
                    let maybe_applied = matches!(
                        e,
                        MetaError::OutcomeUnknown { .. }
                            | MetaError::Raft(_)
                            | MetaError::Storage(_)
                            | MetaError::Closed
                    );
                    let error = TableError::from(e).into();
                    if !maybe_applied {
                        return Err(AckWriteError::not_written(error));
                    }
                    drop(guard); // the record is unknown now: the next step reads it
                    return self
                        .resolve_lost_write(txn_write, &key, &first_record, error)
                        .await;
                }
            };
            if written.succeeded {
                guard.applied();
                return Ok(());
            }
            // The record's turn goes to other steps while this one looks into the failure.
            let guard_version = guard.version;
            drop(guard);
            let version = coordinator
                .version(txn)
                .await
                .map_err(AckWriteError::not_written)?;
            if version != guard_version {
                continue; // the record changed (another participant, or a decision): again
            }
            if guard_version == 0 {
                // It was to create the record: a new epoch of its producer fails that too.
                coordinator
                    .guard_failed(txn, write.start)
                    .await
                    .map_err(AckWriteError::not_written)?;
            }
            if self.ml.record_version().await != log_version && log_moves_left > 0 {
                log_moves_left -= 1;
                continue;
            }
            let stored_log = t
                .managed_ledgers
                .get(&self.topic)
                .await
                .map_err(AckWriteError::not_written)?
                .map(|row| row.version);
            if stored_log != Some(log_version) {
                return Err(AckWriteError::not_written(BrokerError::Retry(format!(
                    "the log of {} changed under this broker: another may own it",
                    self.topic
                ))));
            }
            // The record's key is taken: by a transaction whose record was left behind
            // (its settlement failed), or held here by another one.
            let held = self.state.lock().await;
            let other = new
                .keys()
                .find_map(|id| held.txn_acks.get(id).map(|(t, _)| (*id, *t)));
            return Err(AckWriteError::not_written(match other {
                Some((id, t)) => conflict(id, t),
                None => BrokerError::Txn(
                    strata_metastore::txn_coordinator::CoordinatorError::Conflict(
                        "a message is acknowledged in another transaction".into(),
                    ),
                ),
            }));
        }
    }

    /// `txn` was decided: its pending acks here go into the cursor (commit) or their
    /// messages are delivered again (abort); then their records are deleted. One settlement
    /// of a transaction at a time: a call while one runs makes it look again when done
    /// (two at once could delete the record of a redelivered message acknowledged anew).
    pub async fn txn_acks_decided(&self, txn: TxnId, committed: bool) {
        {
            let mut st = self.state.lock().await;
            if st.txn_ack_writes.contains_key(&txn) {
                // Those writes settle again when they end (their acks are not held yet).
                st.txn_decided_in_write.insert(txn, committed);
            }
            if let Some(again) = st.txn_settling.get_mut(&txn) {
                *again = true;
                return;
            }
            st.txn_settling.insert(txn, false);
        }
        loop {
            self.settle_txn_acks(txn, committed).await;
            let mut st = self.state.lock().await;
            if st.txn_settling.insert(txn, false) != Some(true) {
                st.txn_settling.remove(&txn);
                return;
            }
        }
    }

    /// One pass of [`Subscription::txn_acks_decided`].
    async fn settle_txn_acks(&self, txn: TxnId, committed: bool) {
        // The subscription's mark of the transaction goes with its last records, unless an
        // ack write is still under way (that write settles again and takes the mark then).
        // Every message held is in one of the records taken here: both are added together.
        let held = |st: &SubState| -> (Vec<(MessageId, u32)>, Vec<MessageId>, bool) {
            let ids = st
                .txn_acks
                .iter()
                .filter(|(_, (t, _))| *t == txn)
                .map(|(id, (_, size))| (*id, *size))
                .collect();
            let records = st
                .txn_records
                .get(&txn)
                .map(|keys| keys.iter().copied().collect())
                .unwrap_or_default();
            let last = !st.txn_ack_writes.contains_key(&txn) && st.txn_marked.contains(&txn);
            (ids, records, last)
        };
        let (mut ids, records, last) = held(&*self.state.lock().await);
        if ids.is_empty() {
            if last && committed {
                // Behind any records an earlier pass queued: the mark never goes first.
                let mut st = self.state.lock().await;
                self.queue_committed_deletions(&mut st, txn, &records, true);
                drop(st);
                self.wake_flusher.notify_one();
            } else if last {
                self.delete_txn_ack_records(txn, &[], true).await;
            }
            return;
        }
        if !committed {
            // The records go before the messages are handed out again: an ack of a
            // redelivered message in a new transaction must not find the aborted one's
            // record and be refused as a conflict. Only those: acks held meanwhile are for
            // the next pass.
            self.delete_txn_ack_records(txn, &records, last).await;
        }
        {
            let mut st = self.state.lock().await;
            let st = &mut *st;
            ids.retain(|(id, _)| st.txn_acks.get(id).is_some_and(|(t, _)| *t == txn));
            if ids.is_empty() {
                return;
            }
            for (id, batch_size) in &ids {
                st.txn_acks.remove(id);
                if committed {
                    st.cursor.ack_individual(*id, *batch_size);
                } else if st.cursor.is_acked(*id) {
                    // A plain cumulative ack covered it meanwhile: it stays acknowledged.
                } else {
                    // A redelivery like any other: counted, so consumers do not take it for
                    // a repeat, and dead-lettered after too many.
                    *st.redelivery_counts.entry(*id).or_insert(0) += 1;
                    st.redeliver.insert(
                        *id,
                        Redelivery {
                            due: Instant::now(),
                            key_hash: 0,
                        },
                    );
                }
            }
            let ml = &self.ml;
            st.cursor
                .compact(ml.first_position(), |p| ml.next_position(p));
            st.pending.retain(|p, _| !st.cursor.is_entry_acked(*p));
            st.change_seq += 1;
            if committed {
                // The records go in the write that makes these acks durable (a crash before
                // it finds them and applies them again: acks are idempotent).
                self.queue_committed_deletions(st, txn, &records, last);
            }
        }
        self.wake_flusher.notify_one();
        self.wake_dispatcher.notify_one();
    }

    /// Deletes the pending-ack records `records` (their keys) here, all of `txn`, and with
    /// `last` the mark saying this subscription has acks in `txn`.
    async fn delete_txn_ack_records(&self, txn: TxnId, records: &[MessageId], last: bool) {
        let cursor = CursorKey::new(self.topic.clone(), &self.name);
        {
            // Settled whatever the outcome: records left behind are found by the next load.
            let mut st = self.state.lock().await;
            if let Some(keys) = st.txn_records.get_mut(&txn) {
                for key in records {
                    keys.remove(key);
                }
                if keys.is_empty() {
                    st.txn_records.remove(&txn);
                }
            }
        }
        let mark = last.then_some(txn);
        let keys = records.iter().copied();
        match delete_records(&self.tables, &self.ml, &cursor, keys, mark).await {
            Ok(()) if last => {
                self.state.lock().await.txn_marked.remove(&txn);
            }
            Ok(()) => {}
            Err(e) => {
                warn!(topic = %self.topic, subscription = %self.name, %txn, error = %e, "pending ack records not deleted");
                // Records may be left: so is the mark, for the next load of the subscription.
                self.state.lock().await.txn_marked.remove(&txn);
            }
        }
    }

    /// The transactions holding pending acks here.
    pub async fn txns_with_acks(&self) -> Vec<TxnId> {
        let st = self.state.lock().await;
        // With those whose ack writes are under way: a decision found by a reconciliation
        // must reach them too.
        let mut txns: Vec<TxnId> = st.txn_acks.values().map(|(t, _)| *t).collect();
        txns.extend(st.txn_ack_writes.keys());
        txns.sort();
        txns.dedup();
        txns
    }
}

/// A deletion the flusher makes with the cursor write holding the committed acks it
/// settles: one write for the cursor and any number of commits' records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CommittedDeletion {
    /// A pending-ack record, by key.
    Record(MessageId),
    /// The subscription's `/txn-subs/` mark of a transaction; queued after its last records,
    /// so it never goes before them.
    Mark(TxnId),
}

impl Subscription {
    /// Queues the deletion of `records` (keys of `txn`'s pending-ack records here), and with
    /// `last` of the transaction's mark, for the flusher's next cursor write.
    fn queue_committed_deletions(
        &self,
        st: &mut SubState,
        txn: TxnId,
        records: &[MessageId],
        last: bool,
    ) {
        if let Some(keys) = st.txn_records.get_mut(&txn) {
            for key in records {
                keys.remove(key);
            }
            if keys.is_empty() {
                st.txn_records.remove(&txn);
            }
        }
        // Gone as far as this subscription is concerned: if the write fails for good, the
        // records and the mark stay for the next load, as after any failed deletion.
        if last {
            st.txn_marked.remove(&txn);
        }
        if self
            .flusher_stopped
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return; // nobody writes them now
        }
        let queue = &mut st.committed_deletions;
        queue.extend(records.iter().map(|k| CommittedDeletion::Record(*k)));
        if last {
            queue.push_back(CommittedDeletion::Mark(txn));
        }
    }
}

/// The messages a cumulative ack up to `ids[0]` covers: every one delivered and not yet
/// acknowledged at or before it (those held by this transaction already are skipped later).
fn cumulative_ids(st: &SubState, ids: &[MessageId]) -> Result<Vec<MessageId>, BrokerError> {
    let [upto] = ids else {
        return Err(BrokerError::Protocol(
            "a cumulative ack names exactly one message".into(),
        ));
    };
    if !matches!(
        st.sub_type,
        SubscriptionType::Exclusive | SubscriptionType::Failover
    ) {
        return Err(BrokerError::Protocol(
            "cumulative acks need an exclusive or failover subscription".into(),
        ));
    }
    let mut covered: Vec<MessageId> = st
        .pending
        .range(..=upto.position())
        .flat_map(|(position, e)| {
            e.held
                .keys()
                .map(move |&index| MessageId::at(*position, index))
        })
        .filter(|id| *id <= *upto)
        .collect();
    // Those held by a transaction already are not delivered any more, but still covered.
    covered.extend(st.txn_acks.keys().filter(|id| **id <= *upto));
    if !covered.contains(upto) {
        return Err(BrokerError::InvalidMessageId(upto.to_string()));
    }
    Ok(covered)
}

/// Takes a message acknowledged in `txn` out of delivery: not held by its consumer any more,
/// never redelivered while the transaction is open.
fn hold_for_txn(st: &mut SubState, id: MessageId, txn: TxnId, batch_size: u32) {
    if let Some(e) = st.pending.get_mut(&id.position()) {
        e.held.remove(&id.batch_index);
    }
    st.redeliver.remove(&id);
    st.txn_acks.insert(id, (txn, batch_size));
}

fn conflict(id: MessageId, holder: TxnId) -> BrokerError {
    BrokerError::Txn(
        strata_metastore::txn_coordinator::CoordinatorError::Conflict(format!(
            "{id} is acknowledged in {holder}, still open"
        )),
    )
}

/// Why an ack write failed, and whether its records may have been written all the same (the
/// metastore's answer was lost).
struct AckWriteError {
    error: BrokerError,
    maybe_written: bool,
}

impl AckWriteError {
    fn not_written(error: impl Into<BrokerError>) -> Self {
        Self {
            error: error.into(),
            maybe_written: false,
        }
    }
}

/// Messages per pending-ack record: a large ack request is written as several records (in
/// the same metastore write), each well under the metastore's largest value.
const MAX_ACKS_PER_RECORD: usize = 4096;

/// The pending-ack records of one ack write: `new` in chunks, each keyed by its first message.
fn pending_records(txn: TxnId, new: &BTreeMap<MessageId, u32>) -> Vec<(MessageId, PendingAck)> {
    let acks: Vec<HeldAck> = new
        .iter()
        .map(|(id, batch_size)| HeldAck {
            id: *id,
            batch_size: *batch_size,
        })
        .collect();
    acks.chunks(MAX_ACKS_PER_RECORD)
        .filter_map(|chunk| {
            let (first, more) = chunk.split_first()?;
            let record = PendingAck {
                txn,
                batch_size: first.batch_size,
                more: more.to_vec(),
            };
            Some((first.id, record))
        })
        .collect()
}

/// Reads after an ack write, and the pause before the n-th retry (times n).
const READ_BACK_ATTEMPTS: u32 = 4;
const READ_BACK_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Pending-ack records per metastore write.
const DELETE_CHUNK: usize = 128;

/// Deletes the pending-ack records keyed `keys` of `cursor`, then the marks of `settled`
/// (their last records among them), in a few metastore writes: the marks go in the last
/// one, so a failure part way leaves them for the next owner to find.
async fn delete_records(
    tables: &Tables,
    ml: &ManagedLedger,
    cursor: &CursorKey,
    keys: impl Iterator<Item = MessageId>,
    settled: impl IntoIterator<Item = TxnId>,
) -> Result<(), BrokerError> {
    let mut ops: Vec<_> = keys
        .map(|key| tables.pending_acks.delete_op(&(cursor.clone(), key)))
        .collect();
    ops.extend(
        settled
            .into_iter()
            .map(|txn| tables.txn_subs.delete_op(&(cursor.clone(), txn))),
    );
    // Only while this broker holds the topic: a former owner settling late must not delete
    // a record the new one wrote under the same key.
    for chunk in ops.chunks(DELETE_CHUNK) {
        ml.write_as_owner(chunk.to_vec()).await?;
    }
    Ok(())
}

impl Subscription {
    /// Loads the subscription's pending acks (a failover, a restart): those of open
    /// transactions are held again, committed ones go into the cursor, aborted ones are
    /// dropped (their messages are delivered again). Settled records are deleted once the
    /// cursor is durable.
    pub(super) async fn restore_txn_acks(&self, cursor: &CursorKey) -> Result<(), BrokerError> {
        let (settled, seq) = {
            let mut st = self.state.lock().await;
            let settled = restore(&self.tables, cursor, &mut st).await?;
            if settled.records.is_empty() {
                if !settled.txns.is_empty() {
                    self.delete_settled(cursor, settled).await;
                }
                return Ok(());
            }
            let ml = &self.ml;
            st.cursor
                .compact(ml.first_position(), |p| ml.next_position(p));
            st.read_position = super::next_unacked(ml, &st.cursor);
            st.change_seq += 1;
            (settled, st.change_seq)
        };
        self.wake_flusher.notify_one();
        if self.wait_durable(seq).await.is_ok() {
            self.delete_settled(cursor, settled).await;
        }
        Ok(())
    }

    /// Deletes what loading found settled; a failure leaves it for the next load.
    async fn delete_settled(&self, cursor: &CursorKey, settled: Settled) {
        let records = settled.records.into_iter();
        if let Err(e) = delete_records(&self.tables, &self.ml, cursor, records, settled.txns).await
        {
            warn!(topic = %self.topic, subscription = %self.name, error = %e, "settled pending acks not deleted");
        }
    }
}

/// What loading a subscription found already decided: pending-ack records (their keys) to
/// delete, and the transactions whose marks go with them.
struct Settled {
    records: Vec<MessageId>,
    txns: BTreeSet<TxnId>,
}

async fn restore(
    tables: &Tables,
    cursor: &CursorKey,
    st: &mut SubState,
) -> Result<Settled, BrokerError> {
    let mut states = BTreeMap::new();
    let mut state_of = async |txn: TxnId| -> Result<Option<TxnState>, BrokerError> {
        if let Some(state) = states.get(&txn) {
            return Ok(*state);
        }
        let state = tables.txns.get(&txn).await?.map(|r| r.record.state);
        states.insert(txn, state);
        Ok(state)
    };
    let mut settled = Settled {
        records: Vec::new(),
        txns: BTreeSet::new(),
    };
    for ((_, key), row) in tables.pending_acks.list(cursor).await? {
        let record = row.record;
        let txn = record.txn;
        match state_of(txn).await? {
            Some(TxnState::Open) => {
                for ack in record.acks(key) {
                    st.txn_acks.insert(ack.id, (txn, ack.batch_size));
                }
                st.txn_records.entry(txn).or_default().insert(key);
                st.txn_marked.insert(txn);
            }
            Some(TxnState::Committed) => {
                for ack in record.acks(key) {
                    st.cursor.ack_individual(ack.id, ack.batch_size);
                }
                settled.records.push(key);
            }
            // Aborted or timed out. (Never forgotten: a transaction's record is kept while
            // a subscription mark of it is, and the mark goes with its last pending ack.)
            _ => settled.records.push(key),
        }
    }
    // Marks of decided transactions: their records are deleted with them (or were, before
    // a failure left the mark).
    for (_, txn) in tables.txn_subs.list_keys(cursor).await? {
        if state_of(txn).await? != Some(TxnState::Open) {
            settled.txns.insert(txn);
        }
    }
    Ok(settled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large ack request is split into records of at most `MAX_ACKS_PER_RECORD` messages,
    /// each keyed by its first; together they hold every message once, in order, and the
    /// keys are the ones the write's caller records (every `MAX_ACKS_PER_RECORD`-th).
    #[test]
    fn a_large_ack_write_is_split_into_bounded_records() {
        let txn = TxnId(9);
        let new: BTreeMap<MessageId, u32> = (0..10_000u64)
            .map(|e| (MessageId::new(1, e, 0), 1 + (e % 3) as u32))
            .collect();
        let records = pending_records(txn, &new);
        let sizes: Vec<usize> = records
            .iter()
            .map(|(first, r)| r.acks(*first).count())
            .collect();
        assert_eq!(sizes, vec![4096, 4096, 1808]);
        let keys: Vec<MessageId> = records.iter().map(|(first, _)| *first).collect();
        let expected: Vec<MessageId> = new.keys().step_by(MAX_ACKS_PER_RECORD).copied().collect();
        assert_eq!(keys, expected);
        let held: Vec<(MessageId, u32)> = records
            .iter()
            .flat_map(|(first, r)| r.acks(*first).map(|a| (a.id, a.batch_size)))
            .collect();
        let all: Vec<(MessageId, u32)> = new.into_iter().collect();
        assert_eq!(held, all);
        assert!(records.iter().all(|(_, r)| r.txn == txn));
        assert!(pending_records(txn, &BTreeMap::new()).is_empty());
    }
}
