//! A consumer: messages are pushed by the broker up to the permits granted with `Flow`
//! frames (the receiver queue size), and more permits are granted as the application takes
//! messages, so a slow application slows the broker instead of growing a buffer.
//!
//! When the session breaks (the broker died or gave the topic up) the consumer subscribes
//! again at the topic's new owner. That broker redelivers from the durable cursor, so it may
//! resend messages this consumer already queued: an exclusive consumer receives in log order,
//! so it drops every redelivered message at or before the last one it queued, and re-sends
//! the ack of those the application had acknowledged (an ack not yet durable when the old
//! broker died would otherwise be lost).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use strata_proto::pb::client::{
    Ack, ClientFrame, ConsumerOpen, Flow, InitialPosition, SubscriptionType, client_frame,
    server_frame,
};
use strata_proto::{MessageId, TopicName};
use strata_transport::{FrameReader, FrameWriter};
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::connection::next_frame;
use crate::{Client, ClientError};

/// A message as received, with its id for acknowledging it.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The topic it came from: the partition's name on a partitioned topic.
    pub topic: TopicName,
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
    reconnect_timeout: Duration,
    sub_type: SubscriptionType,
    ack_timeout: Option<Duration>,
    redelivery_delay: Option<(Duration, Duration)>,
    dead_letter: Option<DeadLetterPolicy>,
    read_uncommitted: bool,
}

/// Where messages go that were redelivered too often (Pulsar's dead-letter topic).
#[derive(Debug, Clone)]
pub struct DeadLetterPolicy {
    /// A message delivered again more than this many times goes to the dead-letter topic.
    pub max_redeliveries: u32,
    /// Default: `<topic>-<subscription>-DLQ`.
    pub topic: Option<String>,
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
            reconnect_timeout: Duration::from_secs(30),
            sub_type: SubscriptionType::Exclusive,
            ack_timeout: None,
            redelivery_delay: None,
            dead_letter: None,
            read_uncommitted: false,
        }
    }

    /// How the subscription shares messages among its consumers (default exclusive).
    pub fn subscription_type(mut self, t: SubscriptionType) -> Self {
        self.sub_type = t;
        self
    }

    /// Messages not acknowledged within `d` of their delivery are delivered again.
    pub fn ack_timeout(mut self, d: Duration) -> Self {
        self.ack_timeout = Some(d);
        self
    }

    /// Delay before a negatively acknowledged or timed-out message comes again, doubled for
    /// each earlier redelivery of it up to `max` (broker default: 1 s, up to 60 s).
    pub fn redelivery_delay(mut self, base: Duration, max: Duration) -> Self {
        self.redelivery_delay = Some((base, max));
        self
    }

    /// Sends messages redelivered more than `policy.max_redeliveries` times to a dead-letter
    /// topic (and acknowledges them here) instead of to the application.
    pub fn dead_letter(mut self, policy: DeadLetterPolicy) -> Self {
        self.dead_letter = Some(policy);
        self
    }

    /// How long the consumer keeps trying to subscribe again after its session broke
    /// before `receive` fails.
    pub fn reconnect_timeout(mut self, d: Duration) -> Self {
        self.reconnect_timeout = d;
        self
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

    /// Receive messages of open and aborted transactions too (default: only committed
    /// ones, in log order). The subscription's first consumer decides.
    pub fn read_uncommitted(mut self, yes: bool) -> Self {
        self.read_uncommitted = yes;
        self
    }

    /// Subscribes: one session per partition of a partitioned topic (their messages merged
    /// into one stream), else one.
    pub async fn subscribe(self) -> Result<Consumer, ClientError> {
        let topic = TopicName::parse(&self.topic)?;
        let partitions = self.client.partition_names(&topic).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut parts = Vec::with_capacity(partitions.len());
        for (index, partition) in partitions.into_iter().enumerate() {
            parts.push(
                self.open_partition(&topic, partition, index, tx.clone())
                    .await?,
            );
        }
        Ok(Consumer {
            rx,
            parts,
            ledger_partition: HashMap::new(),
            topic,
            subscription: self.subscription,
            failed: None,
            deferred: None,
            client_id: self.client.client_id().to_owned(),
        })
    }

    async fn open_partition(
        &self,
        topic: &TopicName,
        partition: TopicName,
        index: usize,
        tx: Delivered,
    ) -> Result<PartitionConsumer, ClientError> {
        let open = ClientFrame {
            frame: Some(client_frame::Frame::ConsumerOpen(ConsumerOpen {
                topic: partition.to_string(),
                subscription: self.subscription.clone(),
                sub_type: self.sub_type as i32,
                initial_position: self.initial_position as i32,
                consumer_name: self.name.clone(),
                ack_timeout_ms: self.ack_timeout.map_or(0, |d| d.as_millis() as u64),
                redelivery_delay_ms: self.redelivery_delay.map_or(0, |d| d.0.as_millis() as u64),
                max_redelivery_delay_ms: self
                    .redelivery_delay
                    .map_or(0, |d| d.1.as_millis() as u64),
                read_uncommitted: self.read_uncommitted,
                client_id: self.client.client_id().to_owned(),
            })),
        };
        let (writer, reader) =
            subscribe(&self.client, &partition, &open, self.receiver_queue_size).await?;
        let receipts: Receipts = Arc::new(Mutex::new(Some(HashMap::new())));
        let writer = Arc::new(Mutex::new(writer));
        let acks = Arc::new(std::sync::Mutex::new(AckLog::default()));
        let closing = Arc::new(AtomicBool::new(false));
        let link = Link {
            closing: closing.clone(),
            client: self.client.clone(),
            topic: partition,
            partition: index,
            open,
            queue_size: self.receiver_queue_size,
            reconnect_timeout: self.reconnect_timeout,
            writer: writer.clone(),
            receipts: receipts.clone(),
            acks: acks.clone(),
            tx,
            // Exclusive and failover consumers receive in log order, so a redelivery at or
            // before what they queued is a repeat; shared ones receive out of order.
            in_log_order: matches!(
                self.sub_type,
                SubscriptionType::Exclusive | SubscriptionType::Failover
            ),
            // One dead-letter topic for all partitions, named after the partitioned topic.
            dead_letter: self.dead_letter.clone().map(|p| DeadLetter {
                topic: p
                    .topic
                    .unwrap_or_else(|| format!("{}-{}-DLQ", topic, self.subscription)),
                max_redeliveries: p.max_redeliveries,
                producer: None,
            }),
        };
        let reader_task = tokio::spawn(link.run(reader));
        Ok(PartitionConsumer {
            writer,
            receipts,
            acks,
            next_request: 1,
            taken_since_flow: 0,
            queue_size: self.receiver_queue_size,
            reader_task,
            closing,
        })
    }
}

/// What links put in the consumer's queue: the partition index, a message or an error,
/// and whether the error ended that partition's link for good.
type Item = (usize, Result<ReceivedMessage, ClientError>, bool);
type Delivered = mpsc::UnboundedSender<Item>;

/// Opens a consumer session at the topic's owner and grants it `permits`.
async fn subscribe(
    client: &Client,
    topic: &TopicName,
    open: &ClientFrame,
    permits: u32,
) -> Result<(FrameWriter, FrameReader), ClientError> {
    let (mut writer, reader, ready) = client.open_session(&topic.to_string(), open).await?;
    if !matches!(ready.frame, Some(server_frame::Frame::ConsumerReady(_))) {
        return Err(ClientError::Protocol(format!(
            "expected ConsumerReady, got {ready:?}"
        )));
    }
    writer.send(&flow(permits)).await?;
    Ok((writer, reader))
}

/// Acks the application made that a new session may need again: the broker that took the
/// topic over may not have them if they were not yet durable.
#[derive(Debug, Default)]
struct AckLog {
    cumulative: Option<MessageId>,
    individual: BTreeSet<MessageId>,
}

/// Individual acks remembered for a resend (the oldest are forgotten beyond it).
const MAX_REMEMBERED_ACKS: usize = 100_000;

/// How long `close` waits for the broker to end a session (it flushes queued frames first).
const CLOSE_WAIT: Duration = Duration::from_secs(10);

impl AckLog {
    fn individual(&mut self, id: MessageId) {
        if self.cumulative.is_some_and(|c| id <= c) {
            return;
        }
        self.individual.insert(id);
        if self.individual.len() > MAX_REMEMBERED_ACKS {
            self.individual.pop_first();
        }
    }

    fn cumulative(&mut self, id: MessageId) {
        if self.cumulative.is_some_and(|c| c >= id) {
            return;
        }
        self.cumulative = Some(id);
        self.individual = self.individual.split_off(&MessageId {
            batch_index: id.batch_index.saturating_add(1),
            ..id
        });
    }

    fn covers(&self, id: MessageId) -> bool {
        self.cumulative.is_some_and(|c| id <= c) || self.individual.contains(&id)
    }
}

/// Where an AckReceipt's outcome arrives.
type Receipt = oneshot::Receiver<Result<(), ClientError>>;

/// Waiters for ack receipts by request id; `None` once the stream has ended.
type Receipts = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<(), ClientError>>>>>>;

/// A consumer of one subscription; on a partitioned topic, of that subscription on every
/// partition, with their messages merged into one stream (each partition in its own order).
pub struct Consumer {
    rx: mpsc::UnboundedReceiver<Item>,
    parts: Vec<PartitionConsumer>,
    /// The partition of every ledger a message came from: ledger ids are unique in the
    /// cluster, so a message id names its partition once its ledger has been seen.
    ledger_partition: HashMap<strata_proto::LedgerId, usize>,
    topic: TopicName,
    subscription: String,
    /// A partition's session failed for good: every later receive fails with it, so a
    /// partitioned consumer never goes on silently without one of its partitions.
    failed: Option<strata_proto::WireError>,
    /// An error met while filling a batch, reported by the next receive (the batch before
    /// it is handed over first, so no message is dropped with it).
    deferred: Option<ClientError>,
    /// The client's id: transactions of other clients are refused.
    client_id: String,
}

/// The session of one partition (or of the topic, when not partitioned).
struct PartitionConsumer {
    writer: Arc<Mutex<FrameWriter>>,
    receipts: Receipts,
    acks: Arc<std::sync::Mutex<AckLog>>,
    next_request: u64,
    taken_since_flow: u32,
    queue_size: u32,
    reader_task: tokio::task::JoinHandle<()>,
    /// Set by `close`: the link reads the session to its end and does not subscribe again.
    closing: Arc<AtomicBool>,
}

fn flow(permits: u32) -> ClientFrame {
    ClientFrame {
        frame: Some(client_frame::Frame::Flow(Flow { permits })),
    }
}

/// Resolves when the broker holds the acks of [`Consumer::ack_all_in_async`]: `Ok`, or the
/// first error. Dropping it cancels nothing; the transaction's commit still waits for them.
pub struct TxnAckFuture(oneshot::Receiver<Result<(), ClientError>>);

impl std::future::Future for TxnAckFuture {
    type Output = Result<(), ClientError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed("consumer"))))
    }
}

/// A transactional ack counted as outstanding in its transaction: if the call sending it
/// is dropped before it is handed over, it settles as failed, so the commit aborts rather
/// than waiting forever.
struct StartedAck {
    txn: crate::Transaction,
    armed: bool,
}

impl StartedAck {
    fn new(txn: &crate::Transaction) -> Self {
        txn.send_started();
        Self {
            txn: txn.clone(),
            armed: true,
        }
    }

    /// The transaction, for whoever settles the ack from now on.
    fn hand_over(mut self) -> crate::Transaction {
        self.armed = false;
        self.txn.clone()
    }
}

impl Drop for StartedAck {
    fn drop(&mut self) {
        if self.armed {
            let cancelled = ClientError::Closed("transactional ack cancelled");
            self.txn.send_settled("", Some(Err(&cancelled)));
        }
    }
}

impl Consumer {
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// How many partitions the consumer reads (1 for a topic that is not partitioned).
    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// The next message, waiting for one to arrive. Cancel-safe: dropping the future (a
    /// timeout, a `select!`) loses no message.
    pub async fn receive(&mut self) -> Result<ReceivedMessage, ClientError> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if let Some(e) = &self.failed {
            return Err(ClientError::Server(e.clone()));
        }
        let item = self.rx.recv().await;
        self.take(item)
    }

    /// Waits for the next message, then takes the ones that have already arrived behind it,
    /// up to `max` in all (batch processing: one transaction per batch, say).
    pub async fn receive_up_to(&mut self, max: usize) -> Result<Vec<ReceivedMessage>, ClientError> {
        let mut batch = vec![self.receive().await?];
        while batch.len() < max {
            let Ok(item) = self.rx.try_recv() else {
                break;
            };
            match self.take(Some(item)) {
                Ok(m) => batch.push(m),
                Err(e) => {
                    self.deferred = Some(e);
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Hands over a message from the queue (or the error that ended the stream).
    fn take(&mut self, item: Option<Item>) -> Result<ReceivedMessage, ClientError> {
        let (index, msg, fatal) = item.unwrap_or((0, Err(ClientError::Closed("consumer")), true));
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                if fatal {
                    self.failed = Some(match &e {
                        ClientError::Server(w) => w.clone(),
                        other => strata_proto::WireError::new(
                            strata_proto::ErrorCode::Unknown,
                            other.to_string(),
                        ),
                    });
                }
                return Err(e);
            }
        };
        if self.parts.len() > 1 {
            self.ledger_partition.insert(msg.id.ledger, index);
        }
        self.parts[index].taken();
        Ok(msg)
    }

    /// The partition session a message id belongs to.
    fn part(&self, id: MessageId) -> Result<&PartitionConsumer, ClientError> {
        if self.parts.len() == 1 {
            return Ok(&self.parts[0]);
        }
        self.ledger_partition
            .get(&id.ledger)
            .map(|&i| &self.parts[i])
            .ok_or_else(|| {
                ClientError::Server(strata_proto::WireError::new(
                    strata_proto::ErrorCode::InvalidMessageId,
                    format!("{id} was not received by this consumer"),
                ))
            })
    }

    /// Acknowledges one message. Durable at the latest when [`Consumer::flush_acks`] or
    /// [`Consumer::close`] returns.
    pub async fn ack(&self, id: MessageId) -> Result<(), ClientError> {
        let part = self.part(id)?;
        lock_acks(&part.acks).individual(id);
        part.send_ack(vec![id], false, 0).await
    }

    /// Acknowledges one message in a transaction: applied if the transaction commits; until
    /// it is decided nobody receives the message again. Returns once the broker holds the
    /// ack durably; `TransactionConflict` if another open transaction acknowledged it. A
    /// failure here makes the transaction's commit abort it.
    pub async fn ack_in(
        &mut self,
        txn: &crate::Transaction,
        id: MessageId,
    ) -> Result<(), ClientError> {
        self.ack_all_in(txn, &[id]).await
    }

    /// Acknowledges several messages in a transaction, as [`Consumer::ack_in`] does one: one
    /// request (and one metastore write) per partition rather than per message.
    pub async fn ack_all_in(
        &mut self,
        txn: &crate::Transaction,
        ids: &[MessageId],
    ) -> Result<(), ClientError> {
        self.ack_all_in_async(txn, ids).await?.await
    }

    /// As [`Consumer::ack_all_in`], without waiting for the broker (Pulsar's
    /// `acknowledgeAsync(ids, txn)`): returns once the requests are sent, with a future that
    /// resolves when the broker holds the acks. The transaction's commit waits for them
    /// whether or not the future is awaited, and if one fails the commit aborts it; so a
    /// consume → produce step can overlap its acks with its sends.
    pub async fn ack_all_in_async(
        &mut self,
        txn: &crate::Transaction,
        ids: &[MessageId],
    ) -> Result<TxnAckFuture, ClientError> {
        self.check_owner(txn)?;
        let mut by_part: BTreeMap<usize, Vec<MessageId>> = BTreeMap::new();
        for &id in ids {
            by_part.entry(self.part_index(id)?).or_default().push(id);
        }
        // Each request's outcome is settled by a task of its own as soon as it is sent, so
        // the commit's count of outstanding acks is right even if the caller drops this
        // call or the future it returns.
        let mut outcomes = Vec::new();
        let requests = by_part.into_iter().flat_map(|(index, ids)| {
            let chunks: Vec<Vec<MessageId>> = ids
                .chunks(strata_proto::MAX_TXN_ACKS_PER_REQUEST)
                .map(<[MessageId]>::to_vec)
                .collect();
            chunks.into_iter().map(move |chunk| (index, chunk))
        });
        for (index, chunk) in requests.collect::<Vec<_>>() {
            let started = StartedAck::new(txn);
            let receipt = self.parts[index].send_txn_ack(txn, chunk, false).await;
            let settling = started.hand_over();
            match receipt {
                Ok(receipt) => {
                    let (done, outcome) = oneshot::channel();
                    tokio::spawn(async move {
                        let result = receipt
                            .await
                            .unwrap_or(Err(ClientError::Closed("consumer")));
                        settling.send_settled("", result.as_ref().err().map(Err));
                        let _ = done.send(result);
                    });
                    outcomes.push(outcome);
                }
                Err(e) => {
                    settling.send_settled("", Some(Err(&e)));
                    return Err(e);
                }
            }
        }
        let (done, outcome) = oneshot::channel();
        tokio::spawn(async move {
            let mut first_error = None;
            for o in outcomes {
                if let Err(e) = o.await.unwrap_or(Err(ClientError::Closed("consumer"))) {
                    first_error.get_or_insert(e);
                }
            }
            let _ = done.send(first_error.map_or(Ok(()), Err));
        });
        Ok(TxnAckFuture(outcome))
    }

    /// Acknowledges in a transaction every message up to and including `id` (of `id`'s
    /// partition) that was delivered and not yet acknowledged; exclusive and failover
    /// subscriptions only, as in Pulsar.
    pub async fn ack_cumulative_in(
        &mut self,
        txn: &crate::Transaction,
        id: MessageId,
    ) -> Result<(), ClientError> {
        self.check_owner(txn)?;
        let index = self.part_index(id)?;
        txn.send_started();
        let outcome = self.parts[index].txn_ack(txn, vec![id], true).await;
        txn.send_settled("", outcome.as_ref().err().map(Err));
        outcome
    }

    /// Only the client that began a transaction may acknowledge in it.
    fn check_owner(&self, txn: &crate::Transaction) -> Result<(), ClientError> {
        if txn.client_id() == self.client_id {
            return Ok(());
        }
        Err(ClientError::Server(strata_proto::WireError::new(
            strata_proto::ErrorCode::TransactionNotOwner,
            format!("{} belongs to another client", txn.id()),
        )))
    }

    /// Which partition session `id` came through.
    fn part_index(&self, id: MessageId) -> Result<usize, ClientError> {
        self.part(id)?;
        Ok(if self.parts.len() == 1 {
            0
        } else {
            self.ledger_partition[&id.ledger]
        })
    }

    /// Asks for the message to be delivered again, after the redelivery delay.
    pub async fn nack(&self, id: MessageId) -> Result<(), ClientError> {
        let frame = ClientFrame {
            frame: Some(client_frame::Frame::Nack(strata_proto::pb::client::Nack {
                message_ids: vec![id.into()],
            })),
        };
        let sent = self.part(id)?.writer.lock().await.send(&frame).await;
        match sent.map_err(ClientError::from) {
            // The new session redelivers everything unacknowledged anyway.
            Err(e) if e.is_retryable() => Ok(()),
            other => other,
        }
    }

    /// Acknowledges every message up to and including `id` (of `id`'s partition, on a
    /// partitioned topic).
    pub async fn ack_cumulative(&self, id: MessageId) -> Result<(), ClientError> {
        let part = self.part(id)?;
        lock_acks(&part.acks).cumulative(id);
        part.send_ack(vec![id], true, 0).await
    }

    /// Waits until every ack sent so far is durable on the broker side.
    pub async fn flush_acks(&mut self) -> Result<(), ClientError> {
        for part in &mut self.parts {
            part.flush_acks().await?;
        }
        Ok(())
    }

    /// Makes acks durable, then ends the sessions (every one of them, even if a flush
    /// failed; the first error is returned).
    ///
    /// Returns once the broker has let go of the consumer (it ends its side of the session
    /// after detaching), so a new exclusive consumer of the subscription may attach at once.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let mut first_error = None;
        for part in &mut self.parts {
            if let Err(e) = part.flush_acks().await {
                first_error.get_or_insert(e);
            }
            part.closing.store(true, Ordering::SeqCst);
            part.writer.lock().await.finish();
        }
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        for part in &mut self.parts {
            if tokio::time::timeout_at(deadline, &mut part.reader_task)
                .await
                .is_err()
            {
                warn!(topic = %self.topic, "the broker did not end the consumer session in time");
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for PartitionConsumer {
    fn drop(&mut self) {
        // The link would otherwise keep the session (and an exclusive subscription) open.
        self.reader_task.abort();
    }
}

impl PartitionConsumer {
    /// The application took a message: grant permits back, in halves of the queue as
    /// Pulsar's client does.
    fn taken(&mut self) {
        self.taken_since_flow += 1;
        if self.taken_since_flow >= (self.queue_size / 2).max(1) {
            let permits = std::mem::take(&mut self.taken_since_flow);
            // Sent by a task of its own, so that a caller dropping `receive` (a timeout, a
            // select) can neither lose the message nor cut a frame in half.
            let writer = self.writer.clone();
            tokio::spawn(async move {
                let sent = writer.lock().await.send(&flow(permits)).await;
                // A broken session is being replaced, and the new one starts with a full
                // queue of permits; the session's reader reports anything worse.
                if let Err(e) = sent {
                    debug!(error = %e, "flow not sent");
                }
            });
        }
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
            txn_id: 0,
            txn_start: None,
        };
        let sent = self
            .writer
            .lock()
            .await
            .send(&ClientFrame {
                frame: Some(client_frame::Frame::Ack(ack)),
            })
            .await;
        match sent.map_err(ClientError::from) {
            // The session broke and is being replaced: the ack is remembered and sent again
            // when the new session redelivers the message.
            Err(e) if e.is_retryable() => {
                debug!(error = %e, "ack not sent: session broken");
                Ok(())
            }
            other => other,
        }
    }

    /// Sends an ack in a transaction and waits for its receipt.
    async fn txn_ack(
        &mut self,
        txn: &crate::Transaction,
        ids: Vec<MessageId>,
        cumulative: bool,
    ) -> Result<(), ClientError> {
        let receipt = self.send_txn_ack(txn, ids, cumulative).await?;
        receipt
            .await
            .unwrap_or(Err(ClientError::Closed("consumer")))
    }

    /// Sends an ack in a transaction; the receipt resolves with the broker's answer.
    async fn send_txn_ack(
        &mut self,
        txn: &crate::Transaction,
        ids: Vec<MessageId>,
        cumulative: bool,
    ) -> Result<Receipt, ClientError> {
        let (request_id, rx) = self.await_receipt().await?;
        let ack = Ack {
            message_ids: ids.into_iter().map(Into::into).collect(),
            cumulative,
            request_id,
            txn_id: txn.id().0,
            txn_start: txn.wire_start(),
        };
        let frame = ClientFrame {
            frame: Some(client_frame::Frame::Ack(ack)),
        };
        self.writer.lock().await.send(&frame).await?;
        Ok(rx)
    }

    /// A new request id and the receiver of its AckReceipt.
    async fn await_receipt(&mut self) -> Result<(u64, Receipt), ClientError> {
        let request_id = self.next_request;
        self.next_request += 1;
        let (tx, rx) = oneshot::channel();
        match self.receipts.lock().await.as_mut() {
            Some(waiters) => waiters.insert(request_id, tx),
            // The stream already ended: nobody would ever answer.
            None => return Err(ClientError::Closed("consumer")),
        };
        Ok((request_id, rx))
    }

    async fn flush_acks(&mut self) -> Result<(), ClientError> {
        // While the session is being replaced the request would go to the broken stream and
        // nobody would answer it: ask again on the new one.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (request_id, rx) = self.await_receipt().await?;
            let frame = ClientFrame {
                frame: Some(client_frame::Frame::Ack(Ack {
                    request_id,
                    ..Ack::default()
                })),
            };
            let sent = self.writer.lock().await.send(&frame).await;
            match sent.map_err(ClientError::from) {
                Ok(()) => return rx.await.unwrap_or(Err(ClientError::Closed("consumer"))),
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    if let Some(waiters) = self.receipts.lock().await.as_mut() {
                        waiters.remove(&request_id);
                    }
                    debug!(error = %e, "flush not sent: session being replaced");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn lock_acks(acks: &std::sync::Mutex<AckLog>) -> std::sync::MutexGuard<'_, AckLog> {
    acks.lock().unwrap_or_else(|p| p.into_inner())
}

/// The consumer's link to its broker: reads deliveries and receipts, and subscribes again
/// when the session breaks.
struct Link {
    /// Set when the application closes the consumer.
    closing: Arc<AtomicBool>,
    client: Client,
    topic: TopicName,
    /// The partition index this link reads (0 when not partitioned).
    partition: usize,
    open: ClientFrame,
    queue_size: u32,
    reconnect_timeout: Duration,
    writer: Arc<Mutex<FrameWriter>>,
    receipts: Receipts,
    acks: Arc<std::sync::Mutex<AckLog>>,
    tx: Delivered,
    in_log_order: bool,
    dead_letter: Option<DeadLetter>,
}

struct DeadLetter {
    topic: String,
    max_redeliveries: u32,
    /// Created on the first dead letter.
    producer: Option<crate::Producer>,
}

impl Link {
    async fn run(mut self, mut reader: FrameReader) {
        // The last message queued for the application: a redelivery at or before it after a
        // reconnect was queued already (an exclusive subscription delivers in log order).
        let mut last_queued: Option<MessageId> = None;
        loop {
            let cause = match self.read(&mut reader, &mut last_queued).await {
                Ok(()) => return,
                Err(e) => e,
            };
            self.fail_receipts().await;
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            if !(matches!(cause, ClientError::Closed(_)) || cause.is_retryable()) {
                let _ = self.tx.send((self.partition, Err(cause), true));
                return;
            }
            if cause.code() == Some(strata_proto::ErrorCode::SubscriptionReset) {
                // The cursor moved: what comes next is wanted again, even if seen before.
                last_queued = None;
            }
            match self.resubscribe(&cause).await {
                Ok(r) => reader = r,
                Err(e) => {
                    let _ = self.tx.send((self.partition, Err(e), true));
                    return;
                }
            }
        }
    }

    /// Reads one session until it ends. `Ok` when the application is gone.
    async fn read(
        &mut self,
        reader: &mut FrameReader,
        last_queued: &mut Option<MessageId>,
    ) -> Result<(), ClientError> {
        loop {
            let frame = next_frame(reader)
                .await?
                .ok_or(ClientError::Closed("consumer stream"))?;
            match frame.frame {
                Some(server_frame::Frame::Delivery(d)) => {
                    let mut re_ack = Vec::new();
                    let mut dropped = 0u32;
                    for m in d.messages {
                        let Some(received) = received(&self.topic, m) else {
                            continue;
                        };
                        let (id, count) = (received.id, received.redelivery_count);
                        if let Some(dl) = self.dead_letter.as_mut()
                            && count > dl.max_redeliveries
                        {
                            dl.store(&self.client, &received).await?;
                            re_ack.push(id);
                            dropped += 1;
                            continue;
                        }
                        if self.in_log_order
                            && count == 0
                            && last_queued.is_some_and(|last| id <= last)
                        {
                            dropped += 1;
                            if lock_acks(&self.acks).covers(id) {
                                re_ack.push(id);
                            }
                            continue;
                        }
                        if count == 0 {
                            *last_queued = Some(id);
                        }
                        if self.tx.send((self.partition, Ok(received), false)).is_err() {
                            return Ok(());
                        }
                    }
                    if dropped > 0 {
                        // The dropped messages used permits the application never takes back.
                        let mut writer = self.writer.lock().await;
                        writer.send(&flow(dropped)).await?;
                        if !re_ack.is_empty() {
                            debug!(
                                count = re_ack.len(),
                                "acknowledging repeats and dead letters"
                            );
                            let ack = Ack {
                                message_ids: re_ack.into_iter().map(Into::into).collect(),
                                cumulative: false,
                                request_id: 0,
                                txn_id: 0,
                                txn_start: None,
                            };
                            writer
                                .send(&ClientFrame {
                                    frame: Some(client_frame::Frame::Ack(ack)),
                                })
                                .await?;
                        }
                    }
                }
                Some(server_frame::Frame::AckReceipt(r)) => {
                    let waiter = self
                        .receipts
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
                        let _ = self.tx.send((
                            self.partition,
                            Err(ClientError::Server(e.into())),
                            false,
                        ));
                    }
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected frame on consumer stream: {other:?}"
                    )));
                }
            }
        }
    }

    /// Nobody will answer the receipts asked of a session that ended.
    async fn fail_receipts(&self) {
        let waiters = self
            .receipts
            .lock()
            .await
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(ClientError::Closed("consumer session")));
        }
    }

    /// Subscribes again at the topic's owner, retrying with backoff up to the timeout.
    async fn resubscribe(&self, cause: &ClientError) -> Result<FrameReader, ClientError> {
        info!(topic = %self.topic, error = %cause, "consumer session broke; subscribing again");
        let deadline = tokio::time::Instant::now() + self.reconnect_timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.closing.load(Ordering::SeqCst) {
                return Err(ClientError::Closed("consumer"));
            }
            match subscribe(&self.client, &self.topic, &self.open, self.queue_size).await {
                Ok((writer, reader)) => {
                    let mut current = self.writer.lock().await;
                    // Requests sent on the old session while it was being replaced are never
                    // answered there: fail them before anything goes on the new one.
                    self.fail_receipts().await;
                    *current = writer;
                    if self.closing.load(Ordering::SeqCst) {
                        // Closed while this session was opening: end it as close ended the old one.
                        current.finish();
                    }
                    return Ok(reader);
                }
                // The old session may still hold the subscription on that broker for a moment.
                Err(e)
                    if e.is_retryable()
                        || e.code() == Some(strata_proto::ErrorCode::SubscriptionBusy) =>
                {
                    if tokio::time::Instant::now() + backoff > deadline {
                        return Err(e);
                    }
                    debug!(error = %e, ?backoff, "resubscribe failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl DeadLetter {
    /// Stores a message in the dead-letter topic, waiting until it is durable.
    async fn store(&mut self, client: &Client, msg: &ReceivedMessage) -> Result<(), ClientError> {
        if self.producer.is_none() {
            self.producer = Some(client.producer(&self.topic).create().await?);
        }
        let Some(producer) = self.producer.as_ref() else {
            return Err(ClientError::Closed("dead-letter producer"));
        };
        let outgoing = crate::OutgoingMessage {
            payload: msg.payload.clone(),
            key: (!msg.key.is_empty()).then(|| msg.key.clone()),
            properties: msg.properties.clone(),
            event_time_ms: msg.event_time_ms,
        };
        producer.send(outgoing).await?;
        Ok(())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Receipts can never be answered once the link is gone.
        if let Ok(mut r) = self.receipts.try_lock() {
            for (_, waiter) in r.take().unwrap_or_default() {
                let _ = waiter.send(Err(ClientError::Closed("consumer")));
            }
        }
    }
}

/// A delivered message as the application sees it (None if the broker left out its id or
/// body).
pub(crate) fn received(
    topic: &TopicName,
    m: strata_proto::pb::client::DeliveredMessage,
) -> Option<ReceivedMessage> {
    let (id, msg) = (m.id?, m.message?);
    Some(ReceivedMessage {
        topic: topic.clone(),
        id: id.into(),
        payload: msg.payload,
        key: msg.key,
        properties: msg.properties,
        producer_name: m.producer_name,
        publish_time_ms: m.publish_time_ms,
        event_time_ms: msg.event_time_ms,
        redelivery_count: m.redelivery_count,
    })
}
