//! The Strata client library: producers, consumers and admin calls over QUIC.
//!
//! ```no_run
//! use strata_client::{Client, ClientOptions};
//!
//! # async fn run() -> Result<(), strata_client::ClientError> {
//! let client = Client::connect(ClientOptions::default()).await?;
//! let producer = client.producer("persistent://public/default/orders").create().await?;
//! let id = producer.send("hello").await?;
//! println!("stored as {id}");
//!
//! let mut consumer = client.consumer("orders", "billing").subscribe().await?;
//! let msg = consumer.receive().await?;
//! consumer.ack(msg.id).await?;
//! consumer.close().await?; // acks are durable once this returns
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`connection`]: URL, TLS trust and handshake.
//! - [`producer`]: batching producer with a bounded pending queue (back-pressure).
//! - [`consumer`]: consumer with flow-control permits, individual and cumulative acks.
//! - [`admin`]: topic administration; [`tenancy`]: tenants, partitioned topics, policy
//!   changes.
//! - [`transaction`]: begin, commit and abort transactions.
//! - [`router`]: which partition a message goes to.
//! - [`routing`]: lookups, and sessions opened on the broker that owns the topic.

pub mod admin;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod producer;
pub mod router;
pub mod routing;
pub mod tenancy;
pub mod transaction;
pub mod txn_checker;

use std::sync::Arc;

pub use connection::ClientOptions;
pub use consumer::{Consumer, ConsumerBuilder, DeadLetterPolicy, ReceivedMessage, TxnAckFuture};
pub use error::ClientError;
pub use producer::{OutgoingMessage, Producer, ProducerBuilder, SendFuture, UNKNOWN_MESSAGE_ID};
pub use routing::TopicOwner;
pub use strata_proto::pb::client::{InitialPosition, SubscriptionType};
pub use strata_proto::{ErrorCode, MessageId, TxnId};
pub use transaction::{Transaction, TransactionBuilder};
pub use txn_checker::{CheckOutcome, TxnChecker};

/// A connection to a broker. Cheap to clone; producers and consumers share its connection,
/// each on its own stream.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    options: ClientOptions,
    /// Unique per `Client`: owns the transactions it begins.
    client_id: String,
    /// The brokers of the service URL, tried in turn for lookups and admin requests.
    urls: Vec<String>,
    /// The connection lookups and admin requests go to, and the index of its URL.
    service: tokio::sync::Mutex<(connection::Connected, usize)>,
    /// Connections to the brokers lookups sent sessions to, by address.
    pool: tokio::sync::Mutex<std::collections::HashMap<String, connection::Connected>>,
    /// The transactional producer this client is an instance of, and its epoch
    /// ([`Client::init_transactions`]).
    txn_producer: std::sync::Mutex<Option<(String, u64)>>,
}

impl Client {
    /// Connects to the first broker of the service URL that answers, and performs the
    /// version handshake.
    pub async fn connect(options: ClientOptions) -> Result<Self, ClientError> {
        strata_transport::install_crypto_provider();
        let urls = connection::service_urls(&options.url)?;
        let (c, index) = connect_any(&options, &urls, 0).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                client_id: unique_client_id(&options.name),
                options,
                urls,
                service: tokio::sync::Mutex::new((c, index)),
                pool: tokio::sync::Mutex::new(std::collections::HashMap::new()),
                txn_producer: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The connection for lookups and admin requests, moving to the next broker of the
    /// service URL if the current one has gone away.
    pub(crate) async fn service_connection(&self) -> Result<quinn::Connection, ClientError> {
        let mut service = self.inner.service.lock().await;
        if service.0.connection.close_reason().is_none() {
            return Ok(service.0.connection.clone());
        }
        let next = (service.1 + 1) % self.inner.urls.len();
        let (c, index) = connect_any(&self.inner.options, &self.inner.urls, next).await?;
        tracing::info!(url = %self.inner.urls[index], "service connection moved");
        *service = (c, index);
        Ok(service.0.connection.clone())
    }

    /// Starts building a producer for `topic`.
    pub fn producer(&self, topic: &str) -> ProducerBuilder {
        ProducerBuilder::new(self.clone(), topic)
    }

    /// Starts building a consumer of `subscription` on `topic`.
    pub fn consumer(&self, topic: &str, subscription: &str) -> ConsumerBuilder {
        ConsumerBuilder::new(self.clone(), topic, subscription)
    }

    /// This client's unique id (the owner of its transactions).
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    pub(crate) fn max_frame_size(&self) -> usize {
        self.inner.options.max_frame_size
    }

    /// Closes the connections after the peers have received what was sent.
    pub async fn close(&self) {
        let pooled: Vec<_> = self
            .inner
            .pool
            .lock()
            .await
            .drain()
            .map(|(_, c)| c)
            .collect();
        for c in pooled {
            c.connection
                .close(quinn::VarInt::from_u32(0), b"client closed");
            c.endpoint.wait_idle().await;
        }
        let service = self.inner.service.lock().await;
        service
            .0
            .connection
            .close(quinn::VarInt::from_u32(0), b"client closed");
        service.0.endpoint.wait_idle().await;
    }
}

/// `<name>-<pid>-<nanos>-<n>`: distinct for every client of every process.
fn unique_client_id(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}-{}-{nanos}-{n}", std::process::id())
}

/// Connects to the first of `urls` that answers, starting at `start` and going round once.
async fn connect_any(
    options: &ClientOptions,
    urls: &[String],
    start: usize,
) -> Result<(connection::Connected, usize), ClientError> {
    let mut last = None;
    for i in 0..urls.len() {
        let index = (start + i) % urls.len();
        let mut attempt = options.clone();
        attempt.url = urls[index].clone();
        match connection::connect(&attempt).await {
            Ok(c) => return Ok((c, index)),
            Err(e) => {
                tracing::debug!(url = %urls[index], error = %e, "broker not reachable");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(ClientError::Closed("client")))
}
