//! A subscription: its cursor, its consumers and the dispatcher that pushes messages to them
//! under flow-control permits, as the subscription type says:
//!
//! - exclusive: one consumer;
//! - failover: the earliest attached consumer gets everything; when it leaves, the next one
//!   gets its unacknowledged messages and everything after;
//! - shared: each message to one consumer, round robin among those with permits;
//! - key_shared: each key to one consumer through a consistent-hash ring ([`KeyRing`]). A
//!   key goes to a consumer only while no other consumer holds unacknowledged messages of it
//!   (a join moves keys whose old consumer may still be working on them), and messages given
//!   back by a consumer that left go out before any later message of their key, so each
//!   key's order holds while consumers come and go.
//!
//! Messages negatively acknowledged, or not acknowledged within a consumer's ack timeout,
//! are delivered again after a delay that doubles with each redelivery.
//!
//! Acks change the in-memory cursor at once; a flusher task writes the cursor to the
//! metastore, coalescing bursts of acks into one write. An ack that asks for a receipt is
//! answered only once a cursor state that includes it is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use strata_metastore::Expect;
use strata_metastore::tables::{CursorKey, CursorRecord, TableError, Tables};
use strata_metastore::types::{Txn, TxnOpResult};
use strata_proto::pb::client::{
    DeliveredMessage, Delivery, InitialPosition, ServerFrame, StoredBatch, SubscriptionType,
    server_frame,
};
use strata_proto::{MessageId, Position, TopicName, TxnId};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, instrument, warn};

use crate::BrokerError;
use crate::cursor::CursorState;
use crate::dispatch::{KeyRing, key_hash, redelivery_delay};
use crate::managed_ledger::ManagedLedger;
use crate::topic::SharedTxns;
use crate::txn_buffer::Visibility;

mod txn_acks;

use txn_acks::CommittedDeletion;

/// Most entries read from storage in one go by a dispatcher.
const MAX_READ_ENTRIES: usize = 256;

/// Most bytes per `Delivery` frame (less when the configured frame limit is smaller).
const MAX_DELIVERY_FRAME_BYTES: usize = 1024 * 1024;

/// Redelivery delays when the consumer names none.
pub const DEFAULT_REDELIVERY_DELAY: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_REDELIVERY_DELAY: Duration = Duration::from_secs(60);

/// Frames to one consumer's stream writer.
pub type ConsumerTx = mpsc::Sender<ServerFrame>;

/// What a consumer asked for when it subscribed.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub sub_type: SubscriptionType,
    pub name: String,
    /// Largest frame the consumer's stream may carry.
    pub max_frame_size: usize,
    pub ack_timeout: Option<Duration>,
    pub redelivery_delay: Duration,
    pub max_redelivery_delay: Duration,
    /// Deliver messages of open and aborted transactions too.
    pub read_uncommitted: bool,
}

struct Attached {
    id: u64,
    tx: ConsumerTx,
    options: ConsumerOptions,
    /// Largest Delivery frame this consumer's stream may carry.
    max_frame_bytes: usize,
    /// Messages the consumer can still take.
    permits: i64,
}

/// A delivered message not yet acknowledged: who has it, until when.
#[derive(Debug, Clone, Copy)]
struct Held {
    consumer: u64,
    ack_deadline: Option<Instant>,
    key_hash: u32,
}

/// A delivered entry not fully acknowledged.
#[derive(Debug, Default)]
struct PendingEntry {
    batch_size: u32,
    held: BTreeMap<u32, Held>,
}

/// A message waiting to be delivered again.
#[derive(Debug, Clone, Copy)]
struct Redelivery {
    due: Instant,
    key_hash: u32,
}

struct SubState {
    cursor: CursorState,
    /// Next entry to read for delivery.
    read_position: Option<Position>,
    /// Delivered entries not yet fully acknowledged.
    pending: BTreeMap<Position, PendingEntry>,
    /// Messages to deliver again, oldest first; they go out before anything new.
    redeliver: BTreeMap<MessageId, Redelivery>,
    /// Negative acks and ack timeouts per message (in memory only, as in Pulsar).
    redelivery_counts: HashMap<MessageId, u32>,
    /// In the order they attached.
    consumers: Vec<Attached>,
    sub_type: SubscriptionType,
    ring: KeyRing,
    /// Where the shared round robin continues.
    next_shared: usize,
    /// A dispatcher task is running.
    dispatching: bool,
    /// Sequence number of the latest cursor change.
    change_seq: u64,
    /// Messages per entry seen last, to read about as many entries as the permits cover.
    messages_per_entry: u32,
    /// Transactional entries are delivered once committed, in log order (the first
    /// consumer's choice, as the subscription type).
    read_committed: bool,
    /// Messages acknowledged in open transactions, with their entry's batch size: out of
    /// delivery until the transaction is decided.
    txn_acks: BTreeMap<MessageId, (TxnId, u32)>,
    /// Per transaction, the keys (first messages) of its pending-ack records here.
    txn_records: HashMap<TxnId, BTreeSet<MessageId>>,
    /// Messages in ack writes under way: their transaction, and how many of its writes.
    txn_acks_writing: HashMap<MessageId, (TxnId, usize)>,
    /// Transactions decided while an ack write of theirs was under way (`true`: committed):
    /// the write settles them when it ends.
    txn_decided_in_write: HashMap<TxnId, bool>,
    /// Per transaction, ack writes under way (their records may land after a settlement).
    txn_ack_writes: HashMap<TxnId, usize>,
    /// Transactions whose acks are being settled here; `true`: look again when done.
    txn_settling: HashMap<TxnId, bool>,
    /// Transactions whose `/txn-subs/` mark of this subscription exists (as far as known
    /// here): deleted with their last pending ack.
    txn_marked: HashSet<TxnId>,
    /// What committed transactions leave to delete with the next cursor write.
    committed_deletions: VecDeque<CommittedDeletion>,
}

impl SubState {
    fn consumer_mut(&mut self, id: u64) -> Option<&mut Attached> {
        self.consumers.iter_mut().find(|c| c.id == id)
    }

    fn rebuild_ring(&mut self) {
        self.ring = KeyRing::new(
            self.consumers
                .iter()
                .map(|c| (c.id, c.options.name.as_str())),
        );
    }

    /// Takes every message `consumer` holds back for redelivery (due now, count unchanged).
    fn release_held_by(&mut self, consumer: u64) {
        let now = Instant::now();
        for (pos, entry) in self.pending.iter_mut() {
            entry.held.retain(|&index, held| {
                if held.consumer != consumer {
                    return true;
                }
                let id = MessageId::at(*pos, index);
                self.redeliver.insert(
                    id,
                    Redelivery {
                        due: now,
                        key_hash: held.key_hash,
                    },
                );
                false
            });
        }
    }

    /// Puts deletions a failed cursor write carried back at the front, in their order.
    fn requeue(&mut self, deletions: Vec<CommittedDeletion>) {
        for d in deletions.into_iter().rev() {
            self.committed_deletions.push_front(d);
        }
    }

    /// Forgets what was delivered: the next consumer starts again at the cursor.
    fn reset_delivery(&mut self, ml: &ManagedLedger) {
        self.pending.clear();
        self.redeliver.clear();
        self.read_position = next_unacked(ml, &self.cursor);
    }

    /// Whether `id` is out with a consumer or waiting for redelivery.
    fn is_out(&self, id: MessageId) -> bool {
        self.redeliver.contains_key(&id)
            || self.txn_acks.contains_key(&id)
            || self
                .pending
                .get(&id.position())
                .is_some_and(|e| e.held.contains_key(&id.batch_index))
    }
}

pub struct Subscription {
    topic: TopicName,
    name: String,
    ml: Arc<ManagedLedger>,
    /// The partition's transactions, for read-committed delivery.
    txns: SharedTxns,
    /// Messages delivered, for the dispatch rate in stats.
    pub dispatched: crate::rates::RateMeter,
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

/// A subscription's figures for stats.
#[derive(Debug, Clone)]
pub struct SubscriptionStats {
    pub sub_type: SubscriptionType,
    pub mark_delete: Option<Position>,
    pub backlog_entries: u64,
    pub consumers: u32,
    /// Messages delivered and not yet acknowledged.
    pub unacked: u64,
    /// Messages waiting to be delivered again.
    pub redelivering: u64,
}

impl Subscription {
    /// Loads the subscription's cursor, creating it at `initial` if it does not exist.
    #[instrument(skip_all, fields(topic = %ml.topic(), subscription = %name))]
    pub async fn open(
        ml: Arc<ManagedLedger>,
        tables: Tables,
        name: &str,
        initial: InitialPosition,
        txns: SharedTxns,
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
                redeliver: BTreeMap::new(),
                redelivery_counts: HashMap::new(),
                consumers: Vec::new(),
                sub_type: SubscriptionType::Exclusive,
                ring: KeyRing::default(),
                next_shared: 0,
                dispatching: false,
                change_seq: 0,
                messages_per_entry: 1,
                read_committed: true,
                txn_acks: BTreeMap::new(),
                txn_records: HashMap::new(),
                txn_acks_writing: HashMap::new(),
                txn_decided_in_write: HashMap::new(),
                txn_ack_writes: HashMap::new(),
                txn_settling: HashMap::new(),
                txn_marked: HashSet::new(),
                committed_deletions: VecDeque::new(),
            }),
            txns,
            dispatched: Default::default(),
            wake_dispatcher: Notify::new(),
            wake_flusher: Arc::new(Notify::new()),
            persisted,
            flusher_stopped: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(flusher(
            Arc::downgrade(&sub),
            sub.wake_flusher.clone(),
            key.clone(),
            version,
        ));
        sub.restore_txn_acks(&key).await?;
        Ok(sub)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attaches a consumer and makes sure a dispatcher runs.
    pub async fn attach(
        self: &Arc<Self>,
        consumer_id: u64,
        tx: ConsumerTx,
        options: ConsumerOptions,
    ) -> Result<(), BrokerError> {
        let mut st = self.state.lock().await;
        if let Some(first) = st.consumers.first() {
            if st.sub_type != options.sub_type {
                return Err(BrokerError::IncompatibleSubscription {
                    subscription: self.name.clone(),
                    existing: st.sub_type.as_str_name().to_lowercase(),
                    requested: options.sub_type.as_str_name().to_lowercase(),
                });
            }
            if st.sub_type == SubscriptionType::Exclusive {
                debug!(existing = first.id, "exclusive subscription busy");
                return Err(BrokerError::SubscriptionBusy {
                    topic: self.topic.to_string(),
                    subscription: self.name.clone(),
                });
            }
        } else {
            st.sub_type = options.sub_type;
            st.read_committed = !options.read_uncommitted;
        }
        // Headroom for the frame's own fields; a lone message always fits (checked at publish).
        let max_frame_bytes = options
            .max_frame_size
            .saturating_sub(1024)
            .min(MAX_DELIVERY_FRAME_BYTES);
        st.consumers.push(Attached {
            id: consumer_id,
            tx,
            options,
            max_frame_bytes,
            permits: 0,
        });
        st.rebuild_ring();
        let start = !st.dispatching;
        st.dispatching = true;
        drop(st);
        if start {
            tokio::spawn(dispatcher(self.clone()));
        }
        self.wake_dispatcher.notify_one();
        Ok(())
    }

    /// Detaches a consumer; its unacknowledged messages go to the others (or, when it was
    /// the last, to whoever subscribes next).
    pub async fn detach(&self, consumer_id: u64) {
        let mut st = self.state.lock().await;
        let Some(i) = st.consumers.iter().position(|c| c.id == consumer_id) else {
            return;
        };
        st.consumers.remove(i);
        if st.consumers.is_empty() {
            st.reset_delivery(&self.ml);
        } else {
            st.release_held_by(consumer_id);
            st.rebuild_ring();
        }
        drop(st);
        self.wake_dispatcher.notify_one();
    }

    /// Ends every attached consumer's session with `error` (e.g. the topic was deleted).
    pub async fn terminate(&self, error: &BrokerError) {
        let consumers: Vec<Attached> = {
            let mut st = self.state.lock().await;
            let gone = std::mem::take(&mut st.consumers);
            st.reset_delivery(&self.ml);
            gone
        };
        send_error(consumers.iter().map(|c| c.tx.clone()), error).await;
        self.wake_dispatcher.notify_one();
    }

    pub async fn add_permits(&self, consumer_id: u64, permits: u32) {
        let mut st = self.state.lock().await;
        if let Some(c) = st.consumer_mut(consumer_id) {
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
            if st.consumer_mut(consumer_id).is_none() {
                return Err(BrokerError::Protocol(
                    "ack from a consumer that is not attached".into(),
                ));
            }
            if cumulative
                && matches!(
                    st.sub_type,
                    SubscriptionType::Shared | SubscriptionType::KeyShared
                )
            {
                return Err(BrokerError::Protocol(
                    "cumulative acks are for exclusive and failover subscriptions".into(),
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
        // An ack may unblock a key_shared consumer that joined late.
        self.wake_dispatcher.notify_one();
        Ok(seq)
    }

    /// Asks for messages to be delivered again after the redelivery delay.
    pub async fn negative_ack(
        &self,
        consumer_id: u64,
        ids: Vec<MessageId>,
    ) -> Result<(), BrokerError> {
        let mut st = self.state.lock().await;
        let st = &mut *st;
        let Some(c) = st.consumer_mut(consumer_id) else {
            return Err(BrokerError::Protocol(
                "nack from a consumer that is not attached".into(),
            ));
        };
        let (base, max) = (c.options.redelivery_delay, c.options.max_redelivery_delay);
        let mut first_error = None;
        for id in ids {
            let held = st
                .pending
                .get_mut(&id.position())
                .and_then(|e| e.held.remove(&id.batch_index));
            match held {
                Some(held) => {
                    let count = st.redelivery_counts.entry(id).or_insert(0);
                    *count = count.saturating_add(1);
                    let due = Instant::now() + redelivery_delay(*count, base, max);
                    st.redeliver.insert(
                        id,
                        Redelivery {
                            due,
                            key_hash: held.key_hash,
                        },
                    );
                }
                None if st.cursor.is_acked(id) || st.redeliver.contains_key(&id) => {}
                None => {
                    first_error =
                        first_error.or(Some(BrokerError::InvalidMessageId(id.to_string())));
                }
            }
        }
        self.wake_dispatcher.notify_one();
        first_error.map_or(Ok(()), Err)
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
        let held = st.txn_acks.get(&id).map(|(txn, _)| txn);
        if let Some(txn) = held.or(st.txn_acks_writing.get(&id).map(|(txn, _)| txn)) {
            return Err(BrokerError::Txn(
                strata_metastore::txn_coordinator::CoordinatorError::Conflict(format!(
                    "{id} is acknowledged in {txn}, still open"
                )),
            ));
        }
        let pos = id.position();
        let Some(batch_size) = st.pending.get(&pos).map(|e| e.batch_size) else {
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
            st.pending.retain(|p, e| {
                if *p < pos {
                    return false;
                }
                if *p == pos {
                    e.held.retain(|index, _| *index > id.batch_index);
                }
                true
            });
            st.redeliver.retain(|r, _| *r > id);
            st.redelivery_counts.retain(|r, _| *r > id);
            changed
        } else {
            if let Some(e) = st.pending.get_mut(&pos) {
                e.held.remove(&id.batch_index);
            }
            st.redeliver.remove(&id);
            st.redelivery_counts.remove(&id);
            st.cursor.ack_individual(id, batch_size)
        };
        if st.cursor.is_entry_acked(pos) {
            st.pending.remove(&pos);
        }
        Ok(changed)
    }

    /// The next `count` unacknowledged messages, read from the log; nothing changes.
    pub async fn peek(&self, count: usize) -> Result<Vec<DeliveredMessage>, BrokerError> {
        let (cursor, mut next) = {
            let st = self.state.lock().await;
            (st.cursor.clone(), next_unacked(&self.ml, &st.cursor))
        };
        let mut out = Vec::new();
        while let Some(from) = next {
            if out.len() >= count {
                break;
            }
            let entries = self.ml.read(from, MAX_READ_ENTRIES.min(count)).await?;
            let Some(&(last, _)) = entries.last() else {
                break;
            };
            for (pos, data) in &entries {
                let batch = decode_entry(&self.topic, *pos, data)?;
                for (index, message) in batch.messages.into_iter().enumerate() {
                    let id = MessageId::at(*pos, index as u32);
                    if out.len() < count && !cursor.is_acked(id) {
                        out.push(DeliveredMessage {
                            id: Some(id.into()),
                            message: Some(message),
                            producer_name: batch.producer_name.clone(),
                            publish_time_ms: batch.publish_time_ms,
                            redelivery_count: 0,
                        });
                    }
                }
            }
            next = self.ml.next_position(last);
        }
        Ok(out)
    }

    /// Acknowledges the next `count` unacknowledged messages; returns how many it skipped
    /// once that is durable.
    pub async fn skip(&self, count: usize) -> Result<usize, BrokerError> {
        let peeked = self.peek(count).await?;
        let seq = {
            let mut st = self.state.lock().await;
            let st = &mut *st;
            for m in &peeked {
                let Some(id) = m.id.map(MessageId::from) else {
                    continue;
                };
                let batch_size = self.batch_size_of(st, id).await?;
                st.cursor.ack_individual(id, batch_size);
                st.redeliver.remove(&id);
                if let Some(e) = st.pending.get_mut(&id.position()) {
                    e.held.remove(&id.batch_index);
                }
            }
            let ml = &self.ml;
            st.cursor
                .compact(ml.first_position(), |p| ml.next_position(p));
            st.pending.retain(|p, _| !st.cursor.is_entry_acked(*p));
            st.change_seq += 1;
            st.change_seq
        };
        self.wake_flusher.notify_one();
        self.wait_durable(seq).await?;
        Ok(peeked.len())
    }

    async fn batch_size_of(&self, st: &SubState, id: MessageId) -> Result<u32, BrokerError> {
        if let Some(e) = st.pending.get(&id.position()) {
            return Ok(e.batch_size);
        }
        let entries = self.ml.read(id.position(), 1).await?;
        let (pos, data) = entries
            .first()
            .ok_or_else(|| BrokerError::InvalidMessageId(id.to_string()))?;
        Ok(decode_entry(&self.topic, *pos, data)?.messages.len() as u32)
    }

    /// Makes the dispatcher look again (a transaction was decided).
    pub fn wake(&self) {
        self.wake_dispatcher.notify_one();
    }

    /// Moves the cursor forward so every entry up to and including `to` counts as
    /// acknowledged (the backlog quota's eviction). Unlike [`Subscription::reset`] it never
    /// moves back, keeps the acknowledgements after `to` and leaves consumers connected.
    /// Returns whether the cursor moved; durable with the next flush.
    pub async fn skip_to(&self, to: Position) -> bool {
        {
            let mut st = self.state.lock().await;
            let st = &mut *st;
            if st.cursor.mark_delete.is_some_and(|md| md >= to) {
                return false;
            }
            // A whole entry (a batch of one, acknowledged at its only index) moves the
            // mark-delete there and drops the individual acks it covers.
            st.cursor.ack_cumulative(MessageId::at(to, 0), 1, None);
            st.pending.retain(|p, _| *p > to);
            st.redeliver.retain(|id, _| id.position() > to);
            st.redelivery_counts.retain(|id, _| id.position() > to);
            if st.read_position.is_some_and(|r| r <= to) {
                st.read_position = next_unacked(&self.ml, &st.cursor);
            }
            st.change_seq += 1;
        }
        self.wake_flusher.notify_one();
        self.wake_dispatcher.notify_one();
        true
    }

    /// Moves the cursor so the next message delivered is the one at `target` (None: the end
    /// of the log). Connected consumers are told to subscribe again; returns once durable.
    pub async fn reset(&self, target: Option<Position>) -> Result<(), BrokerError> {
        let (seq, consumers) = {
            let mut st = self.state.lock().await;
            let mark_delete = match target {
                Some(t) => self.ml.prev_position(t),
                None => self.ml.last_confirmed(),
            };
            st.cursor = CursorState::at(mark_delete);
            st.redelivery_counts.clear();
            let gone = std::mem::take(&mut st.consumers);
            st.reset_delivery(&self.ml);
            st.change_seq += 1;
            (st.change_seq, gone)
        };
        let reset = BrokerError::SubscriptionReset(self.name.clone());
        send_error(consumers.iter().map(|c| c.tx.clone()), &reset).await;
        self.wake_flusher.notify_one();
        self.wake_dispatcher.notify_one();
        self.wait_durable(seq).await
    }

    /// The subscription's figures for stats.
    pub async fn stats(&self) -> SubscriptionStats {
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
        SubscriptionStats {
            sub_type: st.sub_type,
            mark_delete: md,
            backlog_entries: backlog,
            consumers: st.consumers.len() as u32,
            unacked: st.pending.values().map(|e| e.held.len() as u64).sum(),
            redelivering: st.redeliver.len() as u64,
        }
    }
}

fn next_unacked(ml: &ManagedLedger, cursor: &CursorState) -> Option<Position> {
    match cursor.mark_delete {
        Some(md) => ml.next_position(md),
        None => ml.first_position(),
    }
}

async fn send_error(txs: impl Iterator<Item = ConsumerTx>, error: &BrokerError) {
    for tx in txs {
        let frame = ServerFrame {
            frame: Some(server_frame::Frame::Error(error.to_wire().into())),
        };
        let _ = tx.send(frame).await;
    }
}

/// Deletions carried by one cursor write at most, so the write stays small.
const FLUSH_DELETIONS: usize = 256;

/// Writes the cursor whenever it changed, one write for any number of acks in between, with
/// the deletions committed transactions queued (see [`CommittedDeletion`]). Ends when the
/// subscription is dropped (its `Drop` wakes this task one last time).
async fn flusher(
    sub: std::sync::Weak<Subscription>,
    wake: Arc<Notify>,
    key: CursorKey,
    mut version: u64,
) {
    // The last write carrying deletions failed its owner check.
    let mut owner_missed = false;
    loop {
        let notified = wake.notified();
        let Some(s) = sub.upgrade() else { return };
        let (record, seq, deletions) = {
            let mut st = s.state.lock().await;
            let n = st.committed_deletions.len().min(FLUSH_DELETIONS);
            let deletions: Vec<_> = st.committed_deletions.drain(..n).collect();
            (st.cursor.to_record(), st.change_seq, deletions)
        };
        if seq > *s.persisted.borrow() || !deletions.is_empty() {
            match write_cursor(&s, &key, &record, version, &deletions).await {
                Ok(Some(written)) => {
                    version = written;
                    owner_missed = false;
                    s.persisted.send_if_modified(|p| {
                        let moved = seq > *p;
                        *p = (*p).max(seq);
                        moved
                    });
                }
                Ok(None) if !owner_missed => {
                    // The log's record moved: a rollover of ours, or a new owner. Once more
                    // against the record as it is now.
                    owner_missed = true;
                    s.state.lock().await.requeue(deletions);
                }
                Ok(None) => {
                    // Twice: no longer the owner. The next one finds the records, sees the
                    // transactions committed, and deletes them.
                    owner_missed = false;
                    warn!(topic = %key.topic, subscription = %key.subscription, records = deletions.len(), "not the log's owner any more: committed pending acks left to the next one");
                }
                Err(TableError::VersionMismatch { actual, .. }) => {
                    // Never adopt the other writer's version: that would overwrite a cursor
                    // this object does not own (e.g. of a re-created topic). The deletions
                    // are left to whoever loads the subscription next.
                    warn!(topic = %key.topic, subscription = %key.subscription, ?actual, "cursor changed by someone else; no longer persisting it");
                    s.flusher_stopped
                        .store(true, std::sync::atomic::Ordering::Release);
                    s.state.lock().await.committed_deletions.clear();
                    s.persisted.send_modify(|_| {});
                    return;
                }
                Err(e) => {
                    warn!(topic = %key.topic, subscription = %key.subscription, error = %e, "persisting cursor failed; retrying");
                    s.state.lock().await.requeue(deletions);
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

/// Writes the cursor record over `version`, with `deletions` in the same write. Returns the
/// new version, or `None` if the deletions' owner check failed while the cursor was still at
/// `version` (nothing written).
async fn write_cursor(
    s: &Subscription,
    key: &CursorKey,
    record: &CursorRecord,
    version: u64,
    deletions: &[CommittedDeletion],
) -> Result<Option<u64>, TableError> {
    let t = &s.tables;
    if deletions.is_empty() {
        return Ok(Some(t.cursors.update(key, record, version).await?.version));
    }
    let mut success = vec![t.cursors.put_op(key, record)?];
    success.extend(deletions.iter().map(|d| match d {
        CommittedDeletion::Record(first) => t.pending_acks.delete_op(&(key.clone(), *first)),
        CommittedDeletion::Mark(txn) => t.txn_subs.delete_op(&(key.clone(), *txn)),
    }));
    // Deletions only as the log's owner (as every pending-ack write): a former owner must
    // not delete what a new one wrote.
    let txn = Txn {
        compares: vec![
            t.cursors.version_is(key, Expect::Version(version)),
            s.ml.owner_compare().await,
        ],
        success,
        failure: Vec::new(),
    };
    let response = t.meta().txn(txn).await.map_err(TableError::from)?;
    if response.succeeded {
        if let Some(TxnOpResult::Written(w)) = response.results.first() {
            return Ok(Some(w.version));
        }
        // A put answers Written; were it ever not to, the version is read back.
        return Ok(t.cursors.get(key).await?.map(|row| row.version));
    }
    let actual = t.cursors.get(key).await?.map(|row| row.version);
    if actual == Some(version) {
        return Ok(None);
    }
    Err(TableError::VersionMismatch {
        key: format!("{}/{}", key.topic, key.subscription),
        expected: Expect::Version(version),
        actual,
    })
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.wake_flusher.notify_one();
    }
}

/// Pushes messages to the subscription's consumers while they have permits; ends when the
/// last consumer leaves.
async fn dispatcher(sub: Arc<Subscription>) {
    let mut appends = sub.ml.subscribe_appends();
    let mut txns_released = sub
        .txns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .released
        .subscribe();
    loop {
        let wake = sub.wake_dispatcher.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        txns_released.borrow_and_update();
        let next_due = match dispatch_once(&sub).await {
            Ok(DispatchOutcome::Progress) => continue,
            Ok(DispatchOutcome::Stopped) => return,
            Ok(DispatchOutcome::Idle(next_due)) => next_due,
            Err(e) => {
                warn!(topic = %sub.topic, subscription = %sub.name, error = %e, "dispatch failed");
                let consumers: Vec<ConsumerTx> = {
                    let mut st = sub.state.lock().await;
                    let gone = std::mem::take(&mut st.consumers);
                    st.reset_delivery(&sub.ml);
                    st.dispatching = false;
                    gone.into_iter().map(|c| c.tx).collect()
                };
                send_error(consumers.into_iter(), &e).await;
                return;
            }
        };
        let timer = async {
            match next_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut wake => {}
            _ = timer => {}
            changed = appends.changed() => if changed.is_err() { return },
            // The sender lives as long as the topic's transactions, as `sub` does.
            _ = txns_released.changed() => {}
        }
    }
}

enum DispatchOutcome {
    /// Something was delivered or skipped: go again.
    Progress,
    /// Nothing to do until woken, or until this time (a redelivery or ack timeout falls due).
    Idle(Option<Instant>),
    /// No consumer left; the dispatcher ended.
    Stopped,
}

/// One message being handed out.
struct Outgoing {
    id: MessageId,
    batch_size: u32,
    message: strata_proto::pb::client::Message,
    producer_name: String,
    publish_time_ms: u64,
}

impl Outgoing {
    fn new(
        id: MessageId,
        batch_size: u32,
        message: strata_proto::pb::client::Message,
        batch: &StoredBatch,
    ) -> Self {
        Self {
            id,
            batch_size,
            message,
            producer_name: batch.producer_name.clone(),
            publish_time_ms: batch.publish_time_ms,
        }
    }
}

/// What a dispatch round plans to read, decided under the lock.
struct ReadPlan {
    redeliveries: HashSet<MessageId>,
    from: Option<Position>,
    want: usize,
}

async fn dispatch_once(sub: &Subscription) -> Result<DispatchOutcome, BrokerError> {
    let plan = {
        let mut st = sub.state.lock().await;
        if st.consumers.is_empty() {
            st.dispatching = false;
            return Ok(DispatchOutcome::Stopped);
        }
        expire_ack_timeouts(&mut st);
        let permits: i64 = st.consumers.iter().map(|c| c.permits.max(0)).sum();
        if permits <= 0 {
            return Ok(DispatchOutcome::Idle(next_due(&st)));
        }
        let now = Instant::now();
        let redeliveries: HashSet<MessageId> = st
            .redeliver
            .iter()
            .filter(|(_, r)| r.due <= now)
            .map(|(id, _)| *id)
            .take(permits as usize)
            .collect();
        if st.read_position.is_none() {
            st.read_position = next_unacked(&sub.ml, &st.cursor);
        }
        let want = (permits as usize)
            .div_ceil(st.messages_per_entry.max(1) as usize)
            .clamp(1, MAX_READ_ENTRIES);
        ReadPlan {
            redeliveries,
            from: st.read_position,
            want,
        }
    };
    // Read without the lock: acks and flow go on meanwhile.
    let mut again: Vec<(Position, Bytes)> = Vec::new();
    for pos in plan
        .redeliveries
        .iter()
        .map(MessageId::position)
        .collect::<std::collections::BTreeSet<_>>()
    {
        again.extend(sub.ml.read(pos, 1).await?);
    }
    let fresh = match plan.from {
        Some(from) => sub.ml.read(from, plan.want).await?,
        None => Vec::new(),
    };
    let mut st = sub.state.lock().await;
    let st = &mut *st;
    if st.consumers.is_empty() {
        st.dispatching = false;
        return Ok(DispatchOutcome::Stopped);
    }
    let held_by_key = if st.sub_type == SubscriptionType::KeyShared {
        st.pending
            .values()
            .flat_map(|e| e.held.values().map(|h| (h.key_hash, h.consumer)))
            .collect()
    } else {
        HashMap::new()
    };
    let mut round = Round {
        // Keys with an older message still waiting: their later messages wait too (key_shared).
        blocked: st.redeliver.values().map(|r| r.key_hash).collect(),
        held_by_key,
        ..Round::default()
    };
    let mut progress = false;
    for (pos, data) in &again {
        let mut batch = decode(sub, *pos, data)?;
        let batch_size = batch.messages.len() as u32;
        for (index, message) in std::mem::take(&mut batch.messages).into_iter().enumerate() {
            let id = MessageId::at(*pos, index as u32);
            if !plan.redeliveries.contains(&id) || !st.redeliver.contains_key(&id) {
                continue; // acked, or not due, since the plan was made
            }
            let hash = key_hash(&message.key);
            // Its own wait no longer blocks its key; an older one of the same key still does.
            if st.sub_type == SubscriptionType::KeyShared
                && st.redeliver.range(..id).any(|(_, r)| r.key_hash == hash)
            {
                continue;
            }
            let out = Outgoing::new(id, batch_size, message, &batch);
            if round.assign(st, out, hash, true, false) {
                st.redeliver.remove(&id);
                progress = true;
            }
        }
    }
    if plan.from.is_some() && st.read_position == plan.from {
        for (pos, data) in &fresh {
            let mut batch = decode(sub, *pos, data)?;
            let batch_size = batch.messages.len() as u32;
            if st.read_committed {
                let txn = (batch.txn_id != 0).then_some(TxnId(batch.txn_id));
                let visibility = sub
                    .txns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .buffer
                    .visibility(txn, *pos);
                match visibility {
                    Visibility::Deliver => {}
                    // Nothing passes an open transaction: wait for its decision (the
                    // topic wakes this dispatcher then).
                    Visibility::Wait => break,
                    // Never delivered: acknowledged, so the cursor moves past it.
                    Visibility::Skip => {
                        for index in 0..batch_size {
                            st.cursor
                                .ack_individual(MessageId::at(*pos, index), batch_size);
                        }
                        let ml = &sub.ml;
                        st.cursor
                            .compact(ml.first_position(), |p| ml.next_position(p));
                        st.change_seq += 1;
                        sub.wake_flusher.notify_one();
                        st.read_position = sub.ml.next_position(*pos);
                        progress = true;
                        continue;
                    }
                }
            }
            st.messages_per_entry = batch_size.max(1);
            if st.cursor.is_entry_acked(*pos) || batch_size == 0 {
                st.read_position = sub.ml.next_position(*pos);
                progress = true;
                continue;
            }
            // Stop before an entry no consumer can start on (permits count messages, as in
            // Pulsar; an entry started is handed out whole, so the last one may overshoot).
            if !round.any_permits(st) {
                break;
            }
            let mut started = false;
            for (index, message) in std::mem::take(&mut batch.messages).into_iter().enumerate() {
                let id = MessageId::at(*pos, index as u32);
                if st.cursor.is_acked(id) || st.is_out(id) {
                    continue;
                }
                let hash = key_hash(&message.key);
                let out = Outgoing::new(id, batch_size, message, &batch);
                if round.assign(st, out, hash, false, started) {
                    started = true;
                } else {
                    // Nobody may take it now: it waits, first in line for its key.
                    st.pending.entry(*pos).or_default().batch_size = batch_size;
                    st.redeliver.insert(
                        id,
                        Redelivery {
                            due: Instant::now(),
                            key_hash: hash,
                        },
                    );
                    round.blocked.insert(hash);
                }
            }
            st.read_position = sub.ml.next_position(*pos);
            progress = true;
        }
    }
    let frames = round.into_frames(st);
    for (tx, delivery) in frames {
        let count = delivery.messages.len();
        sub.dispatched.add(count as u64);
        debug!(topic = %sub.topic, count, "delivering");
        let frame = ServerFrame {
            frame: Some(server_frame::Frame::Delivery(delivery)),
        };
        // A consumer gone meanwhile is detached by its session; its messages come back then.
        let _ = tx.send(frame).await;
    }
    Ok(if progress {
        DispatchOutcome::Progress
    } else {
        DispatchOutcome::Idle(next_due(st))
    })
}

fn decode(sub: &Subscription, pos: Position, data: &Bytes) -> Result<StoredBatch, BrokerError> {
    decode_entry(&sub.topic, pos, data)
}

fn decode_entry(
    topic: &TopicName,
    pos: Position,
    data: &Bytes,
) -> Result<StoredBatch, BrokerError> {
    StoredBatch::decode(data.clone())
        .map_err(|e| BrokerError::Corrupt(format!("entry {pos} of {topic}: {e}")))
}

/// Moves messages whose consumer did not ack them in time back for redelivery.
fn expire_ack_timeouts(st: &mut SubState) {
    let now = Instant::now();
    let mut expired = Vec::new();
    for (pos, entry) in st.pending.iter_mut() {
        entry.held.retain(|&index, held| {
            if held.ack_deadline.is_some_and(|d| d <= now) {
                expired.push((MessageId::at(*pos, index), *held));
                return false;
            }
            true
        });
    }
    for (id, held) in expired {
        let count = st.redelivery_counts.entry(id).or_insert(0);
        *count = count.saturating_add(1);
        let delay = st
            .consumers
            .iter()
            .find(|c| c.id == held.consumer)
            .map(|c| {
                redelivery_delay(
                    *count,
                    c.options.redelivery_delay,
                    c.options.max_redelivery_delay,
                )
            })
            .unwrap_or_default();
        st.redeliver.insert(
            id,
            Redelivery {
                due: now + delay,
                key_hash: held.key_hash,
            },
        );
    }
}

/// The earliest future time a redelivery or an ack timeout falls due.
fn next_due(st: &SubState) -> Option<Instant> {
    let now = Instant::now();
    let redelivery = st.redeliver.values().map(|r| r.due).filter(|d| *d > now);
    let timeouts = st
        .pending
        .values()
        .flat_map(|e| e.held.values().filter_map(|h| h.ack_deadline));
    redelivery.chain(timeouts).min()
}

/// The messages one dispatch round hands out, per consumer.
#[derive(Default)]
struct Round {
    /// Consumer id → its frames.
    frames: HashMap<u64, Vec<Delivery>>,
    frame_bytes: HashMap<u64, usize>,
    /// Key hashes that must not be handed out this round (an older message waits).
    blocked: HashSet<u32>,
    /// key_shared: which consumer holds unacknowledged messages of a key hash.
    held_by_key: HashMap<u32, u64>,
}

impl Round {
    fn any_permits(&self, st: &SubState) -> bool {
        st.consumers.iter().any(|c| c.permits > 0)
    }

    /// Hands one message to the consumer the subscription type picks; false if none may
    /// take it now.
    /// `overshoot`: the message continues an entry already started this round, which is
    /// handed out whole even past the permits (as Pulsar does), so an entry is read once.
    fn assign(
        &mut self,
        st: &mut SubState,
        out: Outgoing,
        hash: u32,
        redelivered: bool,
        overshoot: bool,
    ) -> bool {
        if !redelivered
            && st.sub_type == SubscriptionType::KeyShared
            && self.blocked.contains(&hash)
        {
            return false;
        }
        let Some(index) = pick(st, hash, &self.held_by_key, overshoot) else {
            return false;
        };
        let count = st.redelivery_counts.get(&out.id).copied().unwrap_or(0);
        let c = &mut st.consumers[index];
        c.permits -= 1;
        let consumer = c.id;
        self.held_by_key.insert(hash, consumer);
        let max_frame_bytes = c.max_frame_bytes;
        let ack_deadline = c.options.ack_timeout.map(|t| Instant::now() + t);
        let entry = st.pending.entry(out.id.position()).or_default();
        entry.batch_size = out.batch_size;
        entry.held.insert(
            out.id.batch_index,
            Held {
                consumer,
                ack_deadline,
                key_hash: hash,
            },
        );
        let delivered = DeliveredMessage {
            id: Some(out.id.into()),
            message: Some(out.message),
            producer_name: out.producer_name,
            publish_time_ms: out.publish_time_ms,
            redelivery_count: count,
        };
        // Start a new frame before this message would take the current one past the limit
        // (a message alone always fits: the broker refuses larger ones at publish).
        let size = delivered.encoded_len() + 8;
        let frames = self.frames.entry(consumer).or_default();
        let bytes = self.frame_bytes.entry(consumer).or_default();
        if frames.is_empty() || (*bytes > 0 && *bytes + size > max_frame_bytes) {
            frames.push(Delivery {
                messages: Vec::new(),
            });
            *bytes = 0;
        }
        *bytes += size;
        if let Some(frame) = frames.last_mut() {
            frame.messages.push(delivered);
        }
        true
    }

    fn into_frames(self, st: &SubState) -> Vec<(ConsumerTx, Delivery)> {
        let mut out = Vec::new();
        for (consumer, frames) in self.frames {
            if let Some(c) = st.consumers.iter().find(|c| c.id == consumer) {
                out.extend(frames.into_iter().map(|f| (c.tx.clone(), f)));
            }
        }
        out
    }
}

/// The consumer (index) that gets a message at `pos` with key hash `hash`, if any may now.
fn pick(
    st: &mut SubState,
    hash: u32,
    held_by_key: &HashMap<u32, u64>,
    overshoot: bool,
) -> Option<usize> {
    let may_take = |c: &Attached| overshoot || c.permits > 0;
    match st.sub_type {
        SubscriptionType::Exclusive | SubscriptionType::Failover => {
            st.consumers.first().filter(|c| may_take(c)).map(|_| 0)
        }
        SubscriptionType::Shared => {
            let n = st.consumers.len();
            let found = (0..n)
                .map(|k| (st.next_shared + k) % n)
                .find(|&i| st.consumers[i].permits > 0)
                .or_else(|| overshoot.then_some(st.next_shared % n))?;
            st.next_shared = (found + 1) % n;
            Some(found)
        }
        SubscriptionType::KeyShared => {
            let id = st.ring.consumer_for(hash)?;
            // One consumer at a time per key: while another still holds unacknowledged
            // messages of this key (it had the key before a join moved it), later ones wait.
            if held_by_key.get(&hash).is_some_and(|holder| *holder != id) {
                return None;
            }
            let index = st.consumers.iter().position(|c| c.id == id)?;
            may_take(&st.consumers[index]).then_some(index)
        }
    }
}
