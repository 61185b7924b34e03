//! A subscription: its cursor, its (exclusive) consumer and the dispatcher that pushes
//! messages to that consumer under flow-control permits.
//!
//! Acks change the in-memory cursor at once; a flusher task writes the cursor to the
//! metastore, coalescing bursts of acks into one write. An ack that asks for a receipt is
//! answered only once a cursor state that includes it is durable.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message as _;
use strata_metastore::tables::{CursorKey, TableError, Tables};
use strata_proto::pb::client::{
    DeliveredMessage, Delivery, InitialPosition, ServerFrame, StoredBatch, server_frame,
};
use strata_proto::{MessageId, Position, TopicName};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tracing::{debug, instrument, warn};

use crate::BrokerError;
use crate::cursor::CursorState;
use crate::managed_ledger::ManagedLedger;

/// Most entries read from storage in one go by a dispatcher.
const MAX_READ_ENTRIES: usize = 256;

/// Most bytes per `Delivery` frame (less when the configured frame limit is smaller).
const MAX_DELIVERY_FRAME_BYTES: usize = 1024 * 1024;

/// Frames to one consumer's stream writer.
pub type ConsumerTx = mpsc::Sender<ServerFrame>;

struct Attached {
    id: u64,
    tx: ConsumerTx,
    /// Largest Delivery frame this consumer's stream may carry.
    max_frame_bytes: usize,
    /// Messages the consumer can still take.
    permits: i64,
}

struct SubState {
    cursor: CursorState,
    /// Next entry to read for delivery.
    read_position: Option<Position>,
    /// Delivered entries not yet fully acknowledged, with their batch sizes.
    pending: BTreeMap<Position, u32>,
    consumer: Option<Attached>,
    /// Sequence number of the latest cursor change.
    change_seq: u64,
    /// Messages per entry seen last, to read about as many entries as the permits cover.
    messages_per_entry: u32,
}

pub struct Subscription {
    topic: TopicName,
    name: String,
    ml: Arc<ManagedLedger>,
    tables: Tables,
    state: Mutex<SubState>,
    wake_dispatcher: Notify,
    /// Shared with the flusher task, which holds only a weak reference to the subscription.
    wake_flusher: Arc<Notify>,
    /// Highest change sequence known durable.
    persisted: watch::Sender<u64>,
    /// The cursor record was changed by someone else (the topic was deleted or re-created):
    /// this subscription object no longer owns it and persists nothing more.
    flusher_stopped: std::sync::atomic::AtomicBool,
}

impl Subscription {
    /// Loads the subscription's cursor, creating it at `initial` if it does not exist.
    #[instrument(skip_all, fields(topic = %ml.topic(), subscription = %name))]
    pub async fn open(
        ml: Arc<ManagedLedger>,
        tables: Tables,
        name: &str,
        initial: InitialPosition,
    ) -> Result<Arc<Self>, BrokerError> {
        let topic = ml.topic().clone();
        let key = CursorKey::new(topic.clone(), name);
        let (cursor, version) = match tables.cursors.get(&key).await? {
            Some(row) => (CursorState::from(row.record), row.version),
            None => {
                let mark_delete = match initial {
                    InitialPosition::Earliest => None,
                    InitialPosition::Latest => ml.last_confirmed(),
                };
                let cursor = CursorState::at(mark_delete);
                let written = tables.cursors.create(&key, &cursor.to_record()).await?;
                (cursor, written.version)
            }
        };
        let read_position = next_unacked(&ml, &cursor);
        let (persisted, _) = watch::channel(0);
        let sub = Arc::new(Self {
            topic,
            name: name.to_owned(),
            ml,
            tables,
            state: Mutex::new(SubState {
                cursor,
                read_position,
                pending: BTreeMap::new(),
                consumer: None,
                change_seq: 0,
                messages_per_entry: 1,
            }),
            wake_dispatcher: Notify::new(),
            wake_flusher: Arc::new(Notify::new()),
            persisted,
            flusher_stopped: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(flusher(
            Arc::downgrade(&sub),
            sub.wake_flusher.clone(),
            key,
            version,
        ));
        Ok(sub)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attaches the exclusive consumer and starts dispatching to it.
    pub async fn attach(
        self: &Arc<Self>,
        consumer_id: u64,
        tx: ConsumerTx,
        max_frame_size: usize,
    ) -> Result<(), BrokerError> {
        let mut st = self.state.lock().await;
        if st.consumer.is_some() {
            return Err(BrokerError::SubscriptionBusy {
                topic: self.topic.to_string(),
                subscription: self.name.clone(),
            });
        }
        // Headroom for the frame's own fields; a lone message always fits (checked at publish).
        let max_frame_bytes = max_frame_size
            .saturating_sub(1024)
            .min(MAX_DELIVERY_FRAME_BYTES);
        st.consumer = Some(Attached {
            id: consumer_id,
            tx,
            max_frame_bytes,
            permits: 0,
        });
        drop(st);
        tokio::spawn(dispatcher(self.clone(), consumer_id));
        Ok(())
    }

    /// Detaches the consumer; its unacknowledged messages go to the next consumer.
    pub async fn detach(&self, consumer_id: u64) {
        let mut st = self.state.lock().await;
        if st.consumer.as_ref().is_some_and(|c| c.id == consumer_id) {
            st.consumer = None;
            st.pending.clear();
            st.read_position = next_unacked(&self.ml, &st.cursor);
            drop(st);
            self.wake_dispatcher.notify_waiters();
        }
    }

    /// Ends the attached consumer's session with `error` (e.g. the topic was deleted).
    pub async fn terminate(&self, error: &BrokerError) {
        let consumer = self.state.lock().await.consumer.take();
        if let Some(c) = consumer {
            let frame = ServerFrame {
                frame: Some(server_frame::Frame::Error(error.to_wire().into())),
            };
            let _ = c.tx.send(frame).await;
        }
        self.wake_dispatcher.notify_waiters();
    }

    pub async fn add_permits(&self, consumer_id: u64, permits: u32) {
        let mut st = self.state.lock().await;
        if let Some(c) = st.consumer.as_mut().filter(|c| c.id == consumer_id) {
            c.permits = c.permits.saturating_add(i64::from(permits));
            drop(st);
            self.wake_dispatcher.notify_one();
        }
    }

    /// Applies acks to the in-memory cursor, in the order given, and returns the change
    /// sequence to wait on with [`Subscription::wait_durable`].
    pub async fn apply_acks(
        &self,
        consumer_id: u64,
        ids: Vec<MessageId>,
        cumulative: bool,
    ) -> Result<u64, BrokerError> {
        let seq = {
            let mut st = self.state.lock().await;
            let st = &mut *st;
            if st.consumer.as_ref().is_none_or(|c| c.id != consumer_id) {
                return Err(BrokerError::Protocol(
                    "ack from a consumer that is not attached".into(),
                ));
            }
            let mut changed = false;
            let mut first_error = None;
            for id in ids {
                // One bad id must not undo or skip the good ones in the same frame.
                match self.apply_ack(st, id, cumulative) {
                    Ok(c) => changed |= c,
                    Err(e) => first_error = first_error.or(Some(e)),
                }
            }
            if changed {
                let ml = &self.ml;
                st.cursor
                    .compact(ml.first_position(), |p| ml.next_position(p));
                st.change_seq += 1;
            }
            match first_error {
                Some(e) => {
                    self.wake_flusher.notify_one();
                    return Err(e);
                }
                None => st.change_seq,
            }
        };
        self.wake_flusher.notify_one();
        Ok(seq)
    }

    /// Waits until the cursor state with change sequence `seq` is durable in the metastore.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), BrokerError> {
        let mut persisted = self.persisted.subscribe();
        let stopped = &self.flusher_stopped;
        persisted
            .wait_for(|p| *p >= seq || stopped.load(std::sync::atomic::Ordering::Acquire))
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        if *persisted.borrow() >= seq {
            Ok(())
        } else {
            Err(BrokerError::CursorFenced {
                subscription: self.name.clone(),
            })
        }
    }

    /// Makes the current cursor state durable (graceful shutdown).
    pub async fn flush(&self) -> Result<(), BrokerError> {
        let seq = self.state.lock().await.change_seq;
        self.wake_flusher.notify_one();
        self.wait_durable(seq).await
    }

    fn apply_ack(
        &self,
        st: &mut SubState,
        id: MessageId,
        cumulative: bool,
    ) -> Result<bool, BrokerError> {
        let pos = id.position();
        let Some(&batch_size) = st.pending.get(&pos) else {
            if st.cursor.is_acked(id) {
                return Ok(false);
            }
            return Err(BrokerError::InvalidMessageId(id.to_string()));
        };
        if id.batch_index >= batch_size {
            return Err(BrokerError::InvalidMessageId(id.to_string()));
        }
        let changed = if cumulative {
            let before = self.ml.prev_position(pos);
            let changed = st.cursor.ack_cumulative(id, batch_size, before);
            let whole = id.batch_index + 1 >= batch_size;
            st.pending.retain(|p, _| *p > pos || (*p == pos && !whole));
            changed
        } else {
            st.cursor.ack_individual(id, batch_size)
        };
        if st.cursor.is_entry_acked(pos) {
            st.pending.remove(&pos);
        }
        Ok(changed)
    }

    /// Cursor summary for stats: mark-delete and unacknowledged entries behind the log end.
    pub async fn stats(&self) -> (Option<Position>, u64) {
        let st = self.state.lock().await;
        let md = st.cursor.mark_delete;
        let backlog = match (md, self.ml.last_confirmed()) {
            (Some(m), Some(l)) if m.ledger == l.ledger => l.entry.0.saturating_sub(m.entry.0),
            (_, Some(_)) => self
                .ml
                .stats()
                .0
                .saturating_sub(md.map(|m| m.entry.0 + 1).unwrap_or(0)),
            _ => 0,
        };
        (md, backlog)
    }
}

fn next_unacked(ml: &ManagedLedger, cursor: &CursorState) -> Option<Position> {
    match cursor.mark_delete {
        Some(md) => ml.next_position(md),
        None => ml.first_position(),
    }
}

/// Writes the cursor whenever it changed, one write for any number of acks in between.
/// Ends when the subscription is dropped (its `Drop` wakes this task one last time).
async fn flusher(
    sub: std::sync::Weak<Subscription>,
    wake: Arc<Notify>,
    key: CursorKey,
    mut version: u64,
) {
    loop {
        let notified = wake.notified();
        let Some(s) = sub.upgrade() else { return };
        let (record, seq) = {
            let st = s.state.lock().await;
            (st.cursor.to_record(), st.change_seq)
        };
        if seq > *s.persisted.borrow() {
            match s.tables.cursors.update(&key, &record, version).await {
                Ok(w) => {
                    version = w.version;
                    s.persisted.send_replace(seq);
                }
                Err(TableError::VersionMismatch { actual, .. }) => {
                    // Never adopt the other writer's version: that would overwrite a cursor
                    // this object does not own (e.g. of a re-created topic).
                    warn!(topic = %key.topic, subscription = %key.subscription, ?actual, "cursor changed by someone else; no longer persisting it");
                    s.flusher_stopped
                        .store(true, std::sync::atomic::Ordering::Release);
                    s.persisted.send_modify(|_| {});
                    return;
                }
                Err(e) => {
                    warn!(topic = %key.topic, subscription = %key.subscription, error = %e, "persisting cursor failed; retrying");
                    drop(s);
                    // Retry backoff, so a metastore outage is not a busy loop.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
            continue;
        }
        drop(s);
        notified.await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.wake_flusher.notify_one();
    }
}

/// Pushes messages to the attached consumer while it has permits.
async fn dispatcher(sub: Arc<Subscription>, consumer_id: u64) {
    let mut appends = sub.ml.subscribe_appends();
    loop {
        let wake = sub.wake_dispatcher.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        match dispatch_once(&sub, consumer_id).await {
            Ok(DispatchOutcome::Delivered) => continue,
            Ok(DispatchOutcome::Detached) => return,
            Ok(DispatchOutcome::Idle) => {}
            Err(e) => {
                warn!(topic = %sub.topic, subscription = %sub.name, error = %e, "dispatch failed");
                let frame = ServerFrame {
                    frame: Some(server_frame::Frame::Error(e.to_wire().into())),
                };
                let tx = sub
                    .state
                    .lock()
                    .await
                    .consumer
                    .as_ref()
                    .filter(|c| c.id == consumer_id)
                    .map(|c| c.tx.clone());
                if let Some(tx) = tx {
                    let _ = tx.send(frame).await;
                }
                sub.detach(consumer_id).await;
                return;
            }
        }
        tokio::select! {
            _ = &mut wake => {}
            changed = appends.changed() => if changed.is_err() { return },
        }
    }
}

enum DispatchOutcome {
    Delivered,
    Idle,
    Detached,
}

async fn dispatch_once(
    sub: &Subscription,
    consumer_id: u64,
) -> Result<DispatchOutcome, BrokerError> {
    let (from, permits, messages_per_entry, max_frame_bytes) = {
        let mut st = sub.state.lock().await;
        let Some(c) = st.consumer.as_ref().filter(|c| c.id == consumer_id) else {
            return Ok(DispatchOutcome::Detached);
        };
        let permits = c.permits;
        let c_max_frame = c.max_frame_bytes;
        if st.read_position.is_none() {
            st.read_position = next_unacked(&sub.ml, &st.cursor);
        }
        match st.read_position {
            Some(p) if permits > 0 => (p, permits, st.messages_per_entry.max(1), c_max_frame),
            _ => return Ok(DispatchOutcome::Idle),
        }
    };
    // Enough entries to cover the permits, judging by the last batch size seen.
    let want = (permits as usize)
        .div_ceil(messages_per_entry as usize)
        .clamp(1, MAX_READ_ENTRIES);
    let entries = sub.ml.read(from, want).await?;
    if entries.is_empty() {
        return Ok(DispatchOutcome::Idle);
    }
    let mut st = sub.state.lock().await;
    // The consumer may have left, or been replaced, while we read.
    if st.read_position != Some(from) || st.consumer.as_ref().is_none_or(|c| c.id != consumer_id) {
        return Ok(DispatchOutcome::Delivered);
    }
    // Permits count messages, as in Pulsar: stop before an entry that would start past them
    // (an entry is delivered whole, so the last one may overshoot a little).
    let mut frames = vec![Delivery {
        messages: Vec::new(),
    }];
    let mut frame_bytes = 0usize;
    let mut count = 0i64;
    let mut last_included = None;
    for (pos, data) in entries {
        if count >= permits {
            break;
        }
        last_included = Some(pos);
        let batch = StoredBatch::decode(data)
            .map_err(|e| BrokerError::Corrupt(format!("entry {pos} of {}: {e}", sub.topic)))?;
        let batch_size = batch.messages.len() as u32;
        st.messages_per_entry = batch_size.max(1);
        if st.cursor.is_entry_acked(pos) || batch_size == 0 {
            continue;
        }
        for (index, message) in batch.messages.into_iter().enumerate() {
            let id = MessageId {
                ledger: pos.ledger,
                entry: pos.entry,
                batch_index: index as u32,
            };
            if st.cursor.is_acked(id) {
                continue;
            }
            let delivered = DeliveredMessage {
                id: Some(id.into()),
                message: Some(message),
                producer_name: batch.producer_name.clone(),
                publish_time_ms: batch.publish_time_ms,
                redelivery_count: 0,
            };
            // Start a new frame before this message would take the current one past the
            // limit (a message alone always fits: the broker refuses larger ones at publish).
            let size = delivered.encoded_len() + 8;
            if frame_bytes > 0 && frame_bytes + size > max_frame_bytes {
                frames.push(Delivery {
                    messages: Vec::new(),
                });
                frame_bytes = 0;
            }
            frame_bytes += size;
            count += 1;
            if let Some(frame) = frames.last_mut() {
                frame.messages.push(delivered);
            }
        }
        st.pending.insert(pos, batch_size);
    }
    let Some(last_pos) = last_included else {
        return Ok(DispatchOutcome::Idle);
    };
    st.read_position = sub.ml.next_position(last_pos);
    let Some(c) = st.consumer.as_mut() else {
        return Ok(DispatchOutcome::Detached);
    };
    c.permits -= count;
    let tx = c.tx.clone();
    drop(st);
    if count > 0 {
        debug!(topic = %sub.topic, count, "delivering");
        for delivery in frames.into_iter().filter(|d| !d.messages.is_empty()) {
            let frame = ServerFrame {
                frame: Some(server_frame::Frame::Delivery(delivery)),
            };
            if tx.send(frame).await.is_err() {
                return Ok(DispatchOutcome::Detached);
            }
        }
    }
    Ok(DispatchOutcome::Delivered)
}
