//! A producer: messages are batched (by count, bytes and delay) into one `SendBatch` frame,
//! which the broker stores as one entry. Each send resolves to its `MessageId` once the
//! broker says the batch is durable. At most `max_pending_messages` can be unconfirmed:
//! beyond that, `send` waits (back-pressure) instead of buffering without bound.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use strata_proto::pb::client::{
    ClientFrame, Message, ProducerOpen, SendBatch, client_frame, server_frame,
};
use strata_proto::{MessageId, TopicName, WireError};
use strata_transport::{FrameReader, FrameWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::connection::next_frame;
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
        }
    }

    /// Producer name (the broker picks one when unset).
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

    /// Opens the producer session.
    pub async fn create(self) -> Result<Producer, ClientError> {
        let topic = TopicName::parse(&self.topic)?;
        let open = ClientFrame {
            frame: Some(client_frame::Frame::ProducerOpen(ProducerOpen {
                topic: topic.to_string(),
                producer_name: self.name.clone(),
            })),
        };
        let max = self.client.max_frame_size();
        let (writer, reader, ready) = self.client.open_session(&self.topic, &open).await?;
        let name = match ready.frame {
            Some(server_frame::Frame::ProducerReady(r)) => r.producer_name,
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected ProducerReady, got {other:?}"
                )));
            }
        };
        let (tx, rx) = mpsc::channel(self.max_pending_messages.min(65_536));
        let in_flight: InFlight = Arc::new(Mutex::new(VecDeque::new()));
        let batcher = Batcher {
            rx,
            writer,
            in_flight: in_flight.clone(),
            max_messages: self.batch_max_messages,
            max_bytes: self.batch_max_bytes,
            max_delay: self.batch_max_delay,
            max_frame_size: max,
        };
        let batch_task = tokio::spawn(batcher.run());
        let receipt_task = tokio::spawn(read_receipts(reader, in_flight));
        Ok(Producer {
            tx,
            permits: Arc::new(Semaphore::new(self.max_pending_messages)),
            name,
            topic,
            batch_task,
            receipt_task,
        })
    }
}

type Reply = oneshot::Sender<Result<MessageId, ClientError>>;

struct Queued {
    message: Message,
    reply: Reply,
    _permit: OwnedSemaphorePermit,
}

/// Batches written and awaiting their receipt, oldest first.
type InFlight = Arc<Mutex<VecDeque<(u64, Vec<Queued>)>>>;

pub struct Producer {
    tx: mpsc::Sender<Queued>,
    permits: Arc<Semaphore>,
    name: String,
    topic: TopicName,
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

    /// Queues a message, waiting only while the pending queue is full; the returned future
    /// resolves once the message is stored. Use it to keep many messages in flight.
    pub async fn send_async(
        &self,
        message: impl Into<OutgoingMessage>,
    ) -> Result<SendFuture, ClientError> {
        let m = message.into();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed("producer"))?;
        let (reply, rx) = oneshot::channel();
        let message = Message {
            payload: m.payload,
            key: m.key.unwrap_or_default(),
            properties: m.properties,
            event_time_ms: m.event_time_ms,
        };
        self.tx
            .send(Queued {
                message,
                reply,
                _permit: permit,
            })
            .await
            .map_err(|_| ClientError::Closed("producer"))?;
        Ok(SendFuture(rx))
    }

    /// Sends a message and waits until it is stored.
    pub async fn send(
        &self,
        message: impl Into<OutgoingMessage>,
    ) -> Result<MessageId, ClientError> {
        self.send_async(message).await?.await
    }

    /// Sends what is queued and waits until every message sent so far is confirmed.
    pub async fn close(self) -> Result<(), ClientError> {
        drop(self.tx);
        let _ = self.batch_task.await;
        let _ = self.receipt_task.await;
        Ok(())
    }
}

struct Batcher {
    rx: mpsc::Receiver<Queued>,
    writer: FrameWriter,
    in_flight: InFlight,
    max_messages: usize,
    max_bytes: usize,
    max_delay: Duration,
    max_frame_size: usize,
}

impl Batcher {
    async fn run(mut self) {
        let mut sequence_id = 0u64;
        while let Some(first) = self.rx.recv().await {
            let mut bytes = first.message.payload.len();
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
                    Some(q) => {
                        bytes += q.message.payload.len();
                        batch.push(q);
                    }
                    None => break,
                }
            }
            sequence_id += 1;
            if let Err(e) = self.write(sequence_id, batch).await {
                fail_all(&self.in_flight, &e);
                self.rx.close();
                while let Some(q) = self.rx.recv().await {
                    let _ = q.reply.send(Err(ClientError::Closed("producer")));
                }
                return;
            }
        }
        self.writer.finish();
    }

    async fn write(&mut self, sequence_id: u64, batch: Vec<Queued>) -> Result<(), WireError> {
        let messages: Vec<Message> = batch.iter().map(|q| q.message.clone()).collect();
        let frame = ClientFrame {
            frame: Some(client_frame::Frame::Send(SendBatch {
                sequence_id,
                messages,
            })),
        };
        let encoded = match strata_proto::encode_frame(&frame, self.max_frame_size) {
            Ok(e) => e,
            Err(e) => {
                // Only this batch is too large: fail it, keep the producer.
                let err = WireError::new(strata_proto::ErrorCode::FrameTooLarge, e.to_string());
                for q in batch {
                    let _ = q.reply.send(Err(ClientError::Server(err.clone())));
                }
                return Ok(());
            }
        };
        lock(&self.in_flight).push_back((sequence_id, batch));
        self.writer.send_encoded(encoded).await.map_err(|e| {
            WireError::new(
                strata_proto::ErrorCode::Unknown,
                format!("producer stream: {e}"),
            )
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fail_all(in_flight: &InFlight, e: &WireError) {
    for (_, batch) in lock(in_flight).drain(..) {
        for q in batch {
            let _ = q.reply.send(Err(ClientError::Server(e.clone())));
        }
    }
}

async fn read_receipts(mut reader: FrameReader, in_flight: InFlight) {
    let end = loop {
        let frame = match next_frame(&mut reader).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                break WireError::new(
                    strata_proto::ErrorCode::Unknown,
                    "producer stream closed by the broker",
                );
            }
            Err(ClientError::Server(e)) => break e,
            Err(e) => break WireError::new(strata_proto::ErrorCode::Unknown, e.to_string()),
        };
        let Some(server_frame::Frame::Receipt(receipt)) = frame.frame else {
            break WireError::new(
                strata_proto::ErrorCode::ProtocolViolation,
                "expected a SendReceipt",
            );
        };
        let Some((seq, batch)) = lock(&in_flight).pop_front() else {
            break WireError::new(
                strata_proto::ErrorCode::ProtocolViolation,
                "receipt for no pending batch",
            );
        };
        if seq != receipt.sequence_id {
            break WireError::new(
                strata_proto::ErrorCode::ProtocolViolation,
                format!(
                    "receipt for batch {} while {seq} is oldest",
                    receipt.sequence_id
                ),
            );
        }
        match (receipt.message_id, receipt.error) {
            (Some(first), None) => {
                let first = MessageId::from(first);
                for (i, q) in batch.into_iter().enumerate() {
                    let _ = q.reply.send(Ok(MessageId {
                        batch_index: i as u32,
                        ..first
                    }));
                }
            }
            (_, error) => {
                let e: WireError = error.map(Into::into).unwrap_or_else(|| {
                    WireError::new(strata_proto::ErrorCode::Unknown, "receipt without id")
                });
                for q in batch {
                    let _ = q.reply.send(Err(ClientError::Server(e.clone())));
                }
            }
        }
    };
    if lock(&in_flight).is_empty() {
        return;
    }
    fail_all(&in_flight, &end);
}
