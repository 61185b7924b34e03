//! A producer: messages are batched (by count, bytes and delay) into one `SendBatch` frame,
//! which the broker stores as one entry. Each send resolves to its `MessageId` once the
//! broker says the batch is durable. At most `max_pending_messages` can be unconfirmed:
//! beyond that, `send` waits (back-pressure) instead of buffering without bound.
//!
//! When the session breaks (the broker died, lost the topic, or failed a write) the producer
//! reconnects to whichever broker owns the topic now and resends every unconfirmed batch with
//! its sequence id, in order. The broker's dedup recognises batches it already stored, so a
//! resend is never stored twice. Sends fail only when the error is not one to retry or the
//! producer could not reconnect within `send_timeout`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use strata_proto::pb::client::{
    ClientFrame, Message, ProducerOpen, SendBatch, client_frame, server_frame,
};
use strata_proto::{ErrorCode, MessageId, TopicName, WireError};
use strata_transport::{FrameReader, FrameWriter};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{debug, info};

use crate::connection::next_frame;
use crate::router::MessageRouter;
use crate::{Client, ClientError};

/// A message to send: payload plus optional key and properties.
#[derive(Debug, Clone, Default)]
pub struct OutgoingMessage {
    pub payload: Bytes,
    pub key: Option<String>,
    pub properties: HashMap<String, String>,
    pub event_time_ms: u64,
}

impl<T: Into<Bytes>> From<T> for OutgoingMessage {
    fn from(payload: T) -> Self {
        Self {
            payload: payload.into(),
            ..Default::default()
        }
    }
}

pub struct ProducerBuilder {
    client: Client,
    topic: String,
    name: String,
    batch_max_messages: usize,
    batch_max_bytes: usize,
    batch_max_delay: Duration,
    max_pending_messages: usize,
    send_timeout: Duration,
}

impl ProducerBuilder {
    pub(crate) fn new(client: Client, topic: &str) -> Self {
        Self {
            client,
            topic: topic.to_owned(),
            name: String::new(),
            batch_max_messages: 1000,
            batch_max_bytes: 128 * 1024,
            batch_max_delay: Duration::from_millis(1),
            max_pending_messages: 10_000,
            send_timeout: Duration::from_secs(30),
        }
    }

    /// Producer name (the broker picks one when unset). A producer created again with the
    /// same name continues its sequence ids, so the broker drops what the previous instance
    /// already stored.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Most messages in one batch (1 disables batching).
    pub fn batch_max_messages(mut self, n: usize) -> Self {
        self.batch_max_messages = n.max(1);
        self
    }

    /// Most payload bytes in one batch.
    pub fn batch_max_bytes(mut self, n: usize) -> Self {
        self.batch_max_bytes = n.max(1);
        self
    }

    /// Longest a message waits for its batch to fill.
    pub fn batch_max_delay(mut self, d: Duration) -> Self {
        self.batch_max_delay = d;
        self
    }

    /// Most messages sent but not yet confirmed; `send` waits beyond it.
    pub fn max_pending_messages(mut self, n: usize) -> Self {
        self.max_pending_messages = n.max(1);
        self
    }

    /// How long the producer keeps trying to reconnect after its session broke before it
    /// fails the unconfirmed sends.
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.send_timeout = d;
        self
    }

    /// Opens the producer: one session per partition of a partitioned topic, else one.
    pub async fn create(self) -> Result<Producer, ClientError> {
        let topic = TopicName::parse(&self.topic)?;
        let partitions = self.client.partition_names(&topic).await?;
        let permits = Arc::new(Semaphore::new(self.max_pending_messages));
        let mut parts = Vec::with_capacity(partitions.len());
        let mut name = self.name.clone();
        for partition in partitions {
            // Every partition's session carries the same name: the first one's, which the
            // broker picks when none was asked for.
            let part = self.open_partition(partition, &name).await?;
            name = part.name.clone();
            parts.push(part);
        }
        Ok(Producer {
            router: MessageRouter::new(parts.len(), self.batch_max_messages, self.batch_max_delay),
            parts,
            permits,
            name,
            topic,
            client_id: self.client.client_id().to_owned(),
        })
    }

    async fn open_partition(
        &self,
        topic: TopicName,
        name: &str,
    ) -> Result<PartitionProducer, ClientError> {
        let session = Arc::new(Session {
            client: self.client.clone(),
            topic,
            name: Mutex::new(name.to_owned()),
            in_flight: Mutex::new(VecDeque::new()),
            slot: tokio::sync::Mutex::new(None),
            broken: Notify::new(),
            batcher_done: AtomicBool::new(false),
            failed: Mutex::new(None),
            send_timeout: self.send_timeout,
        });
        let (writer, reader, ready) = session.open().await?;
        *session.slot.lock().await = Some(writer);
        let (tx, rx) = mpsc::channel(self.max_pending_messages.min(65_536));
        let batcher = Batcher {
            rx,
            session: session.clone(),
            next_sequence_id: ready.last_sequence_id + 1,
            max_messages: self.batch_max_messages,
            max_bytes: self.batch_max_bytes,
            max_delay: self.batch_max_delay,
            max_frame_size: self.client.max_frame_size(),
        };
        let batch_task = tokio::spawn(batcher.run());
        let receipt_task = tokio::spawn(drive_session(session.clone(), reader));
        Ok(PartitionProducer {
            tx,
            name: lock(&session.name).clone(),
            batch_task,
            receipt_task,
        })
    }
}

/// The message id a send resolves to when its batch was resent after a reconnect, the broker
/// had already stored it, and it no longer knows where (it keeps the last 1024 per producer).
pub const UNKNOWN_MESSAGE_ID: MessageId = MessageId::new(u64::MAX, u64::MAX, u32::MAX);

type Reply = oneshot::Sender<Result<MessageId, ClientError>>;

struct Queued {
    message: Message,
    /// The transaction the message is sent in, told when the send settles.
    txn: Option<crate::Transaction>,
    reply: Reply,
    _permit: OwnedSemaphorePermit,
}

impl Queued {
    /// Answers the sender, telling the transaction first (so its commit sees the send).
    fn settle(self, topic: &TopicName, result: Result<MessageId, ClientError>) {
        if let Some(txn) = &self.txn {
            let stored = match &result {
                Ok(id) if *id == UNKNOWN_MESSAGE_ID => None,
                Ok(id) => Some(Ok(id.position())),
                Err(e) => Some(Err(e)),
            };
            txn.send_settled(&topic.to_string(), stored);
        }
        let _ = self.reply.send(result);
    }
}

/// A batch written and awaiting its receipt, kept encoded to be resent after a reconnect.
struct InFlightBatch {
    sequence_id: u64,
    frame: Bytes,
    messages: Vec<Queued>,
}

/// The producer's link to its broker, replaced when it breaks.
struct Session {
    client: Client,
    topic: TopicName,
    /// The name the broker confirmed (or the one asked for, before the first session).
    name: Mutex<String>,
    /// Batches written and awaiting their receipt, oldest first.
    in_flight: Mutex<VecDeque<InFlightBatch>>,
    /// The stream batches are written to; `None` while reconnecting. Held across a
    /// reconnect's resends, so new batches queue behind them.
    slot: tokio::sync::Mutex<Option<FrameWriter>>,
    /// A write failed: the receipt task reconnects.
    broken: Notify,
    /// Every batch was written: the stream is finished after the last one.
    batcher_done: AtomicBool,
    /// The producer gave up: why (later sends fail with it).
    failed: Mutex<Option<WireError>>,
    send_timeout: Duration,
}

impl Session {
    /// Opens a producer session at the topic's owner.
    async fn open(
        &self,
    ) -> Result<
        (
            FrameWriter,
            FrameReader,
            strata_proto::pb::client::ProducerReady,
        ),
        ClientError,
    > {
        let open = ClientFrame {
            frame: Some(client_frame::Frame::ProducerOpen(ProducerOpen {
                topic: self.topic.to_string(),
                producer_name: lock(&self.name).clone(),
                client_id: self.client.client_id().to_owned(),
            })),
        };
        let (writer, reader, ready) = self
            .client
            .open_session(&self.topic.to_string(), &open)
            .await?;
        match ready.frame {
            Some(server_frame::Frame::ProducerReady(r)) => {
                *lock(&self.name) = r.producer_name.clone();
                Ok((writer, reader, r))
            }
            other => Err(ClientError::Protocol(format!(
                "expected ProducerReady, got {other:?}"
            ))),
        }
    }

    /// Opens a new session and resends every unconfirmed batch on it, retrying with backoff
    /// for up to `send_timeout`. Returns the new session's receipt stream.
    async fn reconnect(&self, cause: &ClientError) -> Result<FrameReader, ClientError> {
        let mut slot = self.slot.lock().await;
        *slot = None;
        info!(topic = %self.topic, error = %cause, "producer session broke; reconnecting");
        let deadline = tokio::time::Instant::now() + self.send_timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = async {
                let (mut writer, reader, _) = self.open().await?;
                let frames: Vec<Bytes> = lock(&self.in_flight)
                    .iter()
                    .map(|b| b.frame.clone())
                    .collect();
                for frame in &frames {
                    writer.send_encoded(frame.clone()).await?;
                }
                if self.batcher_done.load(Ordering::Acquire) {
                    writer.finish();
                }
                debug!(resent = frames.len(), "producer session reopened");
                Ok::<_, ClientError>((writer, reader))
            };
            match attempt.await {
                Ok((writer, reader)) => {
                    *slot = Some(writer);
                    return Ok(reader);
                }
                Err(e) if !should_reconnect(&e) => return Err(e),
                Err(e) if over_quota(&e) => {
                    self.fail_in_flight(&as_wire(&e));
                    debug!(error = %e, "topic over its backlog quota; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    if tokio::time::Instant::now() + backoff > deadline {
                        return Err(e);
                    }
                    debug!(error = %e, ?backoff, "producer reconnect failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Fails every unconfirmed send, and any later one, with `e`.
    fn give_up(&self, e: WireError) {
        *lock(&self.failed) = Some(e.clone());
        self.fail_in_flight(&e);
    }

    /// Fails the oldest unconfirmed batch (the one the broker refused) with `e`.
    fn fail_oldest(&self, e: &WireError) {
        let oldest = lock(&self.in_flight).pop_front();
        for q in oldest.into_iter().flat_map(|b| b.messages) {
            q.settle(&self.topic, Err(ClientError::Server(e.clone())));
        }
    }

    /// Fails every unconfirmed batch with `e`.
    fn fail_in_flight(&self, e: &WireError) {
        let batches: Vec<InFlightBatch> = lock(&self.in_flight).drain(..).collect();
        for batch in batches {
            for q in batch.messages {
                q.settle(&self.topic, Err(ClientError::Server(e.clone())));
            }
        }
    }
}

/// Whether a broken session is worth reopening: the broker or the network failed, not the
/// request; or the broker refused one batch (it fails alone, the rest is resent).
fn should_reconnect(e: &ClientError) -> bool {
    matches!(e, ClientError::Closed(_)) || e.is_retryable() || batch_refused(e)
}

/// The broker refused the oldest batch for a reason of its own: its transaction is over
/// (or not this client's), could not be created by it (lazy begin: its producer was fenced,
/// too many are open, its start is bad), or the topic is over its backlog quota.
fn batch_refused(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(
            ErrorCode::BacklogQuotaExceeded
                | ErrorCode::TransactionNotOpen
                | ErrorCode::TransactionNotOwner
                | ErrorCode::TransactionNotFound
                | ErrorCode::ProducerFenced
                | ErrorCode::TooManyTransactions
                | ErrorCode::TransactionConflict
                | ErrorCode::InvalidPolicy
        )
    )
}

/// The topic refuses messages until its consumers catch up: the unconfirmed sends fail
/// with it, and the producer keeps reconnecting (later sends wait) until the quota allows
/// it again, as Pulsar's `producer_exception` policy does.
fn over_quota(e: &ClientError) -> bool {
    e.code() == Some(ErrorCode::BacklogQuotaExceeded)
}

fn as_wire(e: &ClientError) -> WireError {
    match e {
        ClientError::Server(w) => w.clone(),
        other => WireError::new(ErrorCode::Unknown, other.to_string()),
    }
}

/// A producer of one topic; for a partitioned topic, one session per partition and a
/// router choosing the partition of each message.
pub struct Producer {
    parts: Vec<PartitionProducer>,
    router: MessageRouter,
    /// Unconfirmed messages over every partition.
    permits: Arc<Semaphore>,
    name: String,
    topic: TopicName,
    /// The client's id: transactions of other clients are refused.
    client_id: String,
}

/// The session of one partition (or of the topic, when not partitioned).
struct PartitionProducer {
    tx: mpsc::Sender<Queued>,
    name: String,
    batch_task: tokio::task::JoinHandle<()>,
    receipt_task: tokio::task::JoinHandle<()>,
}

/// Resolves to the message's id once the broker has stored it durably.
pub struct SendFuture(oneshot::Receiver<Result<MessageId, ClientError>>);

impl Future for SendFuture {
    type Output = Result<MessageId, ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed("producer"))))
    }
}

impl Producer {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// How many partitions the producer writes to (1 for a topic that is not partitioned).
    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// Queues a message, waiting only while the pending queue is full; the returned future
    /// resolves once the message is stored. Use it to keep many messages in flight. A keyed
    /// message goes to the partition of its key's hash, so one key's messages stay in order.
    pub async fn send_async(
        &self,
        message: impl Into<OutgoingMessage>,
    ) -> Result<SendFuture, ClientError> {
        self.queue(message.into(), None).await
    }

    /// As [`Producer::send_async`], in a transaction: the message is delivered only if the
    /// transaction commits, and the commit waits for it to be stored.
    pub async fn send_async_in(
        &self,
        txn: &crate::Transaction,
        message: impl Into<OutgoingMessage>,
    ) -> Result<SendFuture, ClientError> {
        self.queue(message.into(), Some(txn.clone())).await
    }

    /// Sends a message in a transaction and waits until it is stored.
    pub async fn send_in(
        &self,
        txn: &crate::Transaction,
        message: impl Into<OutgoingMessage>,
    ) -> Result<MessageId, ClientError> {
        self.send_async_in(txn, message).await?.await
    }

    async fn queue(
        &self,
        m: OutgoingMessage,
        txn: Option<crate::Transaction>,
    ) -> Result<SendFuture, ClientError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed("producer"))?;
        let part = &self.parts[self.router.partition(m.key.as_deref())];
        let (reply, rx) = oneshot::channel();
        let message = Message {
            payload: m.payload,
            key: m.key.unwrap_or_default(),
            properties: m.properties,
            event_time_ms: m.event_time_ms,
        };
        if let Some(t) = &txn {
            if t.client_id() != self.client_id {
                // Not counted as a send of the transaction: it never reaches the broker.
                return Err(ClientError::Server(WireError::new(
                    ErrorCode::TransactionNotOwner,
                    format!("{} belongs to another client", t.id()),
                )));
            }
            if t.is_prepared() {
                // After prepare a checker may commit it with the ends recorded then.
                return Err(ClientError::Server(WireError::new(
                    ErrorCode::TransactionNotOpen,
                    format!("{} is prepared: no more sends", t.id()),
                )));
            }
            t.send_started();
        }
        let queued = Queued {
            message,
            txn,
            reply,
            _permit: permit,
        };
        if let Err(mpsc::error::SendError(q)) = part.tx.send(queued).await {
            q.settle(&self.topic, Err(ClientError::Closed("producer")));
            return Err(ClientError::Closed("producer"));
        }
        Ok(SendFuture(rx))
    }

    /// Sends a message and waits until it is stored.
    pub async fn send(
        &self,
        message: impl Into<OutgoingMessage>,
    ) -> Result<MessageId, ClientError> {
        self.send_async(message).await?.await
    }

    /// Sends what is queued and waits until every message sent so far is confirmed (or
    /// failed).
    pub async fn close(self) -> Result<(), ClientError> {
        for part in self.parts {
            debug!(producer = %part.name, "closing");
            drop(part.tx);
            let _ = part.batch_task.await;
            let _ = part.receipt_task.await;
        }
        Ok(())
    }
}

struct Batcher {
    rx: mpsc::Receiver<Queued>,
    session: Arc<Session>,
    next_sequence_id: u64,
    max_messages: usize,
    max_bytes: usize,
    max_delay: Duration,
    max_frame_size: usize,
}

impl Batcher {
    async fn run(mut self) {
        // A message of another transaction than the batch's starts the next batch.
        let mut carried: Option<Queued> = None;
        loop {
            let first = match carried.take() {
                Some(q) => q,
                None => match self.rx.recv().await {
                    Some(q) => q,
                    None => break,
                },
            };
            let mut bytes = first.message.payload.len();
            let batch_txn = txn_id_of(&first);
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.max_delay;
            while batch.len() < self.max_messages && bytes < self.max_bytes {
                // Take what is already queued without waiting; wait for more only until the deadline.
                let next = match self.rx.try_recv() {
                    Ok(q) => Some(q),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        tokio::time::timeout_at(deadline, self.rx.recv())
                            .await
                            .unwrap_or_default()
                    }
                };
                match next {
                    Some(q) if txn_id_of(&q) != batch_txn => {
                        carried = Some(q);
                        break;
                    }
                    Some(q) => {
                        bytes += q.message.payload.len();
                        batch.push(q);
                    }
                    None => break,
                }
            }
            if let Some(e) = lock(&self.session.failed).clone() {
                for q in batch {
                    q.settle(&self.session.topic, Err(ClientError::Server(e.clone())));
                }
                self.rx.close();
                continue;
            }
            self.write(batch).await;
        }
        self.session.batcher_done.store(true, Ordering::Release);
        if let Some(w) = self.session.slot.lock().await.as_mut() {
            w.finish();
        }
    }

    /// Writes one batch. A write that fails leaves the batch in flight and asks for a
    /// reconnect, which resends it.
    async fn write(&mut self, batch: Vec<Queued>) {
        let messages: Vec<Message> = batch.iter().map(|q| q.message.clone()).collect();
        let sequence_id = self.next_sequence_id;
        let frame = ClientFrame {
            frame: Some(client_frame::Frame::Send(SendBatch {
                sequence_id,
                messages,
                txn_id: batch.first().map_or(0, txn_id_of),
                txn_start: batch
                    .first()
                    .and_then(|q| q.txn.as_ref())
                    .and_then(crate::Transaction::wire_start),
            })),
        };
        let encoded = match strata_proto::encode_frame(&frame, self.max_frame_size) {
            Ok(e) => e,
            Err(e) => {
                // Only this batch is too large: fail it, keep the producer.
                let err = WireError::new(ErrorCode::FrameTooLarge, e.to_string());
                for q in batch {
                    q.settle(&self.session.topic, Err(ClientError::Server(err.clone())));
                }
                return;
            }
        };
        self.next_sequence_id += 1;
        let mut slot = self.session.slot.lock().await;
        lock(&self.session.in_flight).push_back(InFlightBatch {
            sequence_id,
            frame: encoded.clone(),
            messages: batch,
        });
        if let Some(writer) = slot.as_mut()
            && let Err(e) = writer.send_encoded(encoded).await
        {
            debug!(error = %e, "producer stream write failed");
            *slot = None;
            self.session.broken.notify_one();
        }
    }
}

fn txn_id_of(q: &Queued) -> u64 {
    q.txn.as_ref().map_or(0, |t| t.id().0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads receipts, completing sends in order; reconnects when the session breaks.
async fn drive_session(session: Arc<Session>, mut reader: FrameReader) {
    // Sessions that end without confirming anything (every resend refused again, say) are
    // retried with a growing pause, and given up once that has lasted `send_timeout`.
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut pause = Duration::from_millis(50);
    loop {
        let mut progressed = false;
        let cause = loop {
            let frame = tokio::select! {
                f = next_frame(&mut reader) => f,
                _ = session.broken.notified() => {
                    if session.slot.lock().await.is_some() {
                        continue; // a stale signal: a reconnect already happened
                    }
                    break ClientError::Closed("producer stream");
                }
            };
            match frame {
                Ok(Some(frame)) => {
                    if let Err(e) = complete(&session, frame) {
                        break e;
                    }
                    progressed = true;
                }
                Ok(None) => {
                    if session.batcher_done.load(Ordering::Acquire)
                        && lock(&session.in_flight).is_empty()
                    {
                        return; // closed: every batch confirmed
                    }
                    break ClientError::Closed("producer stream");
                }
                Err(e) => break e,
            }
        };
        if !should_reconnect(&cause) {
            session.give_up(as_wire(&cause));
            return;
        }
        if batch_refused(&cause) {
            session.fail_oldest(&as_wire(&cause));
        }
        let idle = lock(&session.in_flight).is_empty();
        if progressed || idle {
            (failing_since, pause) = (None, Duration::from_millis(50));
        } else {
            let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= session.send_timeout {
                session.give_up(as_wire(&cause));
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        match session.reconnect(&cause).await {
            Ok(r) => reader = r,
            Err(e) => {
                session.give_up(as_wire(&e));
                return;
            }
        }
    }
}

/// Completes the oldest in-flight batch with a receipt. A failed batch stays in flight: the
/// error decides between a resend on a new session and giving up.
fn complete(
    session: &Session,
    frame: strata_proto::pb::client::ServerFrame,
) -> Result<(), ClientError> {
    let Some(server_frame::Frame::Receipt(receipt)) = frame.frame else {
        return Err(ClientError::Protocol("expected a SendReceipt".into()));
    };
    let mut in_flight = lock(&session.in_flight);
    let Some(oldest) = in_flight.front() else {
        return Err(ClientError::Protocol("receipt for no pending batch".into()));
    };
    if oldest.sequence_id != receipt.sequence_id {
        return Err(ClientError::Protocol(format!(
            "receipt for batch {} while {} is oldest",
            receipt.sequence_id, oldest.sequence_id
        )));
    }
    if let Some(e) = receipt.error {
        return Err(ClientError::Server(e.into()));
    }
    let first = match (receipt.message_id, receipt.duplicate) {
        (Some(id), _) => MessageId::from(id),
        (None, true) => UNKNOWN_MESSAGE_ID,
        (None, false) => return Err(ClientError::Protocol("receipt without id".into())),
    };
    let Some(batch) = in_flight.pop_front() else {
        return Ok(());
    };
    drop(in_flight);
    for (i, q) in batch.messages.into_iter().enumerate() {
        let id = if first == UNKNOWN_MESSAGE_ID {
            first
        } else {
            MessageId {
                batch_index: i as u32,
                ..first
            }
        };
        q.settle(&session.topic, Ok(id));
    }
    Ok(())
}
