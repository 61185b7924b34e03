//! The Strata broker: serves producers and consumers over QUIC, keeps each topic as a managed
//! ledger (a list of ledgers on bookies, recorded in the metastore) and each subscription as
//! a cursor in the metastore. It holds no durable state of its own.
//!
//! # Layout
//!
//! - [`server`]: QUIC accept loop, handshake and per-stream sessions (admin, producer, consumer).
//! - [`service`]: the topic registry: create, load (auto-create), list, delete.
//! - [`topic`]: a loaded topic: publish (deduplicated) and subscriptions.
//! - [`dedup`]: which producer batches a topic stored, as a plain struct (no I/O).
//! - [`managed_ledger`]: the topic's log over ledgers, with rollover and crash recovery.
//! - [`subscription`]: cursor, consumers by subscription type, dispatcher with permits,
//!   redelivery, ack persistence.
//! - [`subscription_admin`]: list, reset, peek and skip a topic's subscriptions.
//! - [`tenancy`]: tenants and partitioned topics.
//! - [`backlog`]: backlog size and the backlog quota's eviction point (no I/O).
//! - [`dispatch`]: key_shared's key ring and the redelivery backoff, as plain functions.
//! - [`txn_admin`]: begin, end, show and list transactions (the coordinator is in the
//!   metastore crate).
//! - [`txn_buffer`]: a partition's open and decided transactions, its stable position and
//!   what read-committed subscriptions may deliver (no I/O).
//! - [`cursor`]: the acknowledgement state as a plain struct (no I/O).
//! - [`rates`]: per-second rates for topic and subscription stats (no I/O).
//! - [`metrics`]: counters exposed on `/metrics`.
//!
//! Everything it keeps in the metastore goes through the typed tables of
//! [`strata_metastore::tables`] (namespaces, topics, managed ledgers, cursors, dedup snapshots).

pub mod admin;
pub mod backlog;
pub mod bundles;
pub mod cursor;
pub mod dedup;
pub mod dispatch;
pub mod error;
pub mod managed_ledger;
pub mod metrics;
pub mod ownership;
pub mod rates;
pub mod server;
pub mod service;
pub mod subscription;
pub mod subscription_admin;
pub mod tenancy;
pub mod topic;
pub mod txn_admin;
pub mod txn_buffer;
pub mod txn_checkers;
pub mod txn_metrics;

pub use error::BrokerError;
pub use server::{BrokerServer, ServerConfig};
pub use service::{BrokerConfig, BrokerService, DEFAULT_DEDUP_PRODUCER_EXPIRY};
pub use strata_metastore::tables::NamespacePolicies;
