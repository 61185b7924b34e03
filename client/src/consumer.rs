//! A consumer: messages are pushed by the broker up to the permits granted with `Flow`
//! frames (the receiver queue size), and more permits are granted as the application takes
//! messages, so a slow application slows the broker instead of growing a buffer.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use strata_proto::pb::client::{
    Ack, ClientFrame, ConsumerOpen, Flow, InitialPosition, SubscriptionType, client_frame,
    server_frame,
};
use strata_proto::{MessageId, TopicName};
use strata_transport::{FrameReader, FrameWriter};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::connection::next_frame;
use crate::{Client, ClientError};

/// A message as received, with its id for acknowledging it.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub id: MessageId,
    pub payload: Bytes,
    pub key: String,
    pub properties: HashMap<String, String>,
    pub producer_name: String,
    pub publish_time_ms: u64,
    pub event_time_ms: u64,
    pub redelivery_count: u32,
}

pub struct ConsumerBuilder {
    client: Client,
    topic: String,
    subscription: String,
    initial_position: InitialPosition,
    receiver_queue_size: u32,
    name: String,
}

impl ConsumerBuilder {
    pub(crate) fn new(client: Client, topic: &str, subscription: &str) -> Self {
        Self {
            client,
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
            initial_position: InitialPosition::Latest,
            receiver_queue_size: 1000,
            name: String::new(),
        }
    }

    /// Where a new subscription starts (an existing one resumes at its cursor).
    pub fn initial_position(mut self, p: InitialPosition) -> Self {
        self.initial_position = p;
        self
    }

    /// Messages the broker may push ahead of the application.
    pub fn receiver_queue_size(mut self, n: u32) -> Self {
        self.receiver_queue_size = n.max(1);
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Opens the consumer session (exclusive subscription).
    pub async fn subscribe(self) -> Result<Consumer, ClientError> {
        let topic = TopicName::parse(&self.topic)?;
        let open = ClientFrame {
            frame: Some(client_frame::Frame::ConsumerOpen(ConsumerOpen {
                topic: topic.to_string(),
                subscription: self.subscription.clone(),
                sub_type: SubscriptionType::Exclusive as i32,
                initial_position: self.initial_position as i32,
                consumer_name: self.name.clone(),
            })),
        };
        let (mut writer, reader, ready) = self.client.open_session(&self.topic, &open).await?;
        if !matches!(ready.frame, Some(server_frame::Frame::ConsumerReady(_))) {
            return Err(ClientError::Protocol(format!(
                "expected ConsumerReady, got {ready:?}"
            )));
        }
        writer.send(&flow(self.receiver_queue_size)).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let receipts: Receipts = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader_task = tokio::spawn(read_deliveries(reader, tx, receipts.clone()));
        Ok(Consumer {
            rx,
            writer: Arc::new(Mutex::new(writer)),
            receipts,
            next_request: 1,
            taken_since_flow: 0,
            queue_size: self.receiver_queue_size,
            topic,
            subscription: self.subscription,
            reader_task,
        })
    }
}

/// Waiters for ack receipts by request id; `None` once the stream has ended.
type Receipts = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<(), ClientError>>>>>>;

pub struct Consumer {
    rx: mpsc::UnboundedReceiver<Result<ReceivedMessage, ClientError>>,
    writer: Arc<Mutex<FrameWriter>>,
    receipts: Receipts,
    next_request: u64,
    taken_since_flow: u32,
    queue_size: u32,
    topic: TopicName,
    subscription: String,
    reader_task: tokio::task::JoinHandle<()>,
}

fn flow(permits: u32) -> ClientFrame {
    ClientFrame {
        frame: Some(client_frame::Frame::Flow(Flow { permits })),
    }
}

impl Consumer {
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The next message, waiting for one to arrive.
    pub async fn receive(&mut self) -> Result<ReceivedMessage, ClientError> {
        let msg = self
            .rx
            .recv()
            .await
            .unwrap_or(Err(ClientError::Closed("consumer")))?;
        self.taken_since_flow += 1;
        // Re-grant permits in halves of the queue, as Pulsar's client does.
        if self.taken_since_flow >= (self.queue_size / 2).max(1) {
            let permits = std::mem::take(&mut self.taken_since_flow);
            self.writer.lock().await.send(&flow(permits)).await?;
        }
        Ok(msg)
    }

    async fn send_ack(
        &self,
        ids: Vec<MessageId>,
        cumulative: bool,
        request_id: u64,
    ) -> Result<(), ClientError> {
        let ack = Ack {
            message_ids: ids.into_iter().map(Into::into).collect(),
            cumulative,
            request_id,
        };
        self.writer
            .lock()
            .await
            .send(&ClientFrame {
                frame: Some(client_frame::Frame::Ack(ack)),
            })
            .await?;
        Ok(())
    }

    /// Acknowledges one message. Durable at the latest when [`Consumer::flush_acks`] or
    /// [`Consumer::close`] returns.
    pub async fn ack(&self, id: MessageId) -> Result<(), ClientError> {
        self.send_ack(vec![id], false, 0).await
    }

    /// Acknowledges every message up to and including `id`.
    pub async fn ack_cumulative(&self, id: MessageId) -> Result<(), ClientError> {
        self.send_ack(vec![id], true, 0).await
    }

    /// Waits until every ack sent so far is durable on the broker side.
    pub async fn flush_acks(&mut self) -> Result<(), ClientError> {
        let request_id = self.next_request;
        self.next_request += 1;
        let (tx, rx) = oneshot::channel();
        match self.receipts.lock().await.as_mut() {
            Some(waiters) => waiters.insert(request_id, tx),
            // The stream already ended: nobody would ever answer.
            None => return Err(ClientError::Closed("consumer")),
        };
        self.send_ack(Vec::new(), false, request_id).await?;
        rx.await.unwrap_or(Err(ClientError::Closed("consumer")))
    }

    /// Makes acks durable, then ends the session.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.flush_acks().await?;
        self.writer.lock().await.finish();
        self.reader_task.abort();
        Ok(())
    }
}

async fn read_deliveries(
    mut reader: FrameReader,
    tx: mpsc::UnboundedSender<Result<ReceivedMessage, ClientError>>,
    receipts: Receipts,
) {
    loop {
        let frame = match next_frame(&mut reader).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Err(e));
                break;
            }
        };
        match frame.frame {
            Some(server_frame::Frame::Delivery(d)) => {
                for m in d.messages {
                    let (Some(id), Some(msg)) = (m.id, m.message) else {
                        continue;
                    };
                    let received = ReceivedMessage {
                        id: id.into(),
                        payload: msg.payload,
                        key: msg.key,
                        properties: msg.properties,
                        producer_name: m.producer_name,
                        publish_time_ms: m.publish_time_ms,
                        event_time_ms: msg.event_time_ms,
                        redelivery_count: m.redelivery_count,
                    };
                    if tx.send(Ok(received)).is_err() {
                        return;
                    }
                }
            }
            Some(server_frame::Frame::AckReceipt(r)) => {
                let waiter = receipts
                    .lock()
                    .await
                    .as_mut()
                    .and_then(|w| w.remove(&r.request_id));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(match r.error {
                        Some(e) => Err(ClientError::Server(e.into())),
                        None => Ok(()),
                    });
                } else if let Some(e) = r.error {
                    // An ack without a waiter failed (e.g. an unknown message id): surface it.
                    let _ = tx.send(Err(ClientError::Server(e.into())));
                }
            }
            other => {
                let _ = tx.send(Err(ClientError::Protocol(format!(
                    "unexpected frame on consumer stream: {other:?}"
                ))));
                break;
            }
        }
    }
    let waiters = receipts.lock().await.take().unwrap_or_default();
    for (_, waiter) in waiters {
        let _ = waiter.send(Err(ClientError::Closed("consumer")));
    }
}
