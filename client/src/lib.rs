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
//! - [`admin`]: topic administration.
//! - [`routing`]: lookups, and sessions opened on the broker that owns the topic.

pub mod admin;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod producer;
pub mod routing;

use std::sync::Arc;

pub use connection::ClientOptions;
pub use consumer::{Consumer, ConsumerBuilder, ReceivedMessage};
pub use error::ClientError;
pub use producer::{OutgoingMessage, Producer, ProducerBuilder, SendFuture};
pub use routing::TopicOwner;
pub use strata_proto::pb::client::InitialPosition;
pub use strata_proto::{ErrorCode, MessageId};

/// A connection to a broker. Cheap to clone; producers and consumers share its connection,
/// each on its own stream.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    options: ClientOptions,
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    /// Connections to the brokers lookups sent sessions to, by address.
    pool: tokio::sync::Mutex<std::collections::HashMap<String, connection::Connected>>,
}

impl Client {
    /// Connects and performs the version handshake.
    pub async fn connect(options: ClientOptions) -> Result<Self, ClientError> {
        strata_transport::install_crypto_provider();
        let c = connection::connect(&options).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                endpoint: c.endpoint,
                connection: c.connection,
                pool: tokio::sync::Mutex::new(std::collections::HashMap::new()),
            }),
        })
    }

    /// Starts building a producer for `topic`.
    pub fn producer(&self, topic: &str) -> ProducerBuilder {
        ProducerBuilder::new(self.clone(), topic)
    }

    /// Starts building a consumer of `subscription` on `topic`.
    pub fn consumer(&self, topic: &str, subscription: &str) -> ConsumerBuilder {
        ConsumerBuilder::new(self.clone(), topic, subscription)
    }

    pub(crate) fn connection(&self) -> &quinn::Connection {
        &self.inner.connection
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
        self.inner
            .connection
            .close(quinn::VarInt::from_u32(0), b"client closed");
        self.inner.endpoint.wait_idle().await;
    }
}
