//! The Strata broker: serves producers and consumers over QUIC, keeps each topic as a managed
//! ledger (a list of ledgers on bookies, recorded in the metastore) and each subscription as
//! a cursor in the metastore. It holds no durable state of its own.
//!
//! # Layout
//!
//! - [`server`]: QUIC accept loop, handshake and per-stream sessions (admin, producer, consumer).
//! - [`service`]: the topic registry: create, load (auto-create), list, delete.
//! - [`topic`]: a loaded topic: publish and subscriptions.
//! - [`managed_ledger`]: the topic's log over ledgers, with rollover and crash recovery.
//! - [`subscription`]: cursor, exclusive consumer, dispatcher with permits, ack persistence.
//! - [`cursor`]: the acknowledgement state as a plain struct (no I/O).
//! - [`keys`], [`records`]: the metastore key layout and the records stored there.
//! - [`metrics`]: counters exposed on `/metrics`.

pub mod cursor;
pub mod error;
pub mod keys;
pub mod managed_ledger;
pub mod metrics;
pub mod records;
pub mod server;
pub mod service;
pub mod subscription;
pub mod topic;

pub use error::BrokerError;
pub use server::{BrokerServer, ServerConfig};
pub use service::{BrokerConfig, BrokerService};
