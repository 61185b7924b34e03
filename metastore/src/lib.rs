//! Strata's metadata store: a versioned key space with compare-and-set and watches,
//! replicated by an [`openraft`] group whose log and state machine live in RocksDB.
//!
//! Semantics are etcd's: a global `revision` grows by one per successful change; each key has
//! a `version` (1 on creation, +1 per put; a deleted key is gone and re-creating it starts at 1
//! again), a `create_revision` and a `mod_revision`. A failed compare-and-set changes nothing.
//! Reads (`get`, `scan`) are linearizable. Watches replay history from a revision and then
//! stream live changes, with no gap and no duplicate.
//!
//! It runs as one voter in `strata standalone` ([`MetaStore::open_standalone`]) or as one of
//! 3 or 5 voters talking QUIC ([`MetaStore::open_node`], `strata metastore`). A node that is
//! not leader forwards reads and writes to the leader; [`MetaClient`] reaches a cluster from
//! another process. Leases, multi-key transactions, history compaction, membership changes
//! and the typed tables come next.
//!
//! # Layout
//!
//! - [`store`]: [`MetaStore`], the public handle — open, get/put/delete/scan, watch, next_id.
//! - [`watch`]: [`Watcher`], history replay then live changes, gap- and duplicate-free.
//! - `apply`: the key-space rules as plain logic over a read view (unit-tested without I/O).
//! - [`state_machine`]: openraft `RaftStateMachine` on RocksDB: atomic apply, snapshots.
//! - [`log_store`]: openraft `RaftLogStorage` on RocksDB: fsynced appends, truncate, purge.
//! - `db`: the shared RocksDB handle, applied revision and change broadcast.
//! - `keys`: column families, key encodings and the versioned, CRC32C-checked record
//!   envelope.
//! - [`types`]: the openraft [`TypeConfig`], the replicated [`Command`], [`Expect`], [`Written`].
//! - [`network`]: openraft's `RaftNetwork` over QUIC.
//! - [`rpc`]: node-to-node RPC messages and the peer connection cache.
//! - [`faults`]: [`Faults`], a test hook that drops and delays node-to-node messages per
//!   direction (partitions, one-way cuts, slow links); off unless a test passes one.
//! - [`node_server`]: the RPC server of a clustered node (raft traffic, forwarded requests).
//! - [`client`]: [`MetaClient`], reads and writes from another process.
//! - [`config`]: [`MetaStoreConfig`] and its validation.
//! - [`error`]: [`MetaError`], every error a call can return.
//!
//! # On disk
//!
//! One RocksDB database in the data directory, one column family per concern: `log` and
//! `raft_meta` (the raft log, vote, committed and purged ids), `kv` (current values), `history`
//! (every change by revision), `sm_meta` (applied log id, membership, revision, oldest kept
//! revision, current snapshot). See `src/keys.rs` for the encodings.

mod apply;
pub mod client;
pub mod config;
mod db;
pub mod error;
pub mod faults;
mod keys;
pub mod log_store;
pub mod network;
pub mod node_server;
pub mod rpc;
pub mod state_machine;
pub mod store;
pub mod types;
pub mod watch;

#[cfg(test)]
mod tests;

pub use client::MetaClient;
pub use config::{ConfigError, MetaStoreConfig};
pub use error::MetaError;
pub use faults::Faults;
pub use log_store::LogStore;
pub use state_machine::{SnapshotBuilder, StateMachine};
pub use store::{MAX_KEY_LEN, MetaStore, NodeOptions};
pub use strata_proto::pb::metastore::{EventKind, KeyValue, WatchEvent};
pub use types::{
    Command, CommandResult, Compare, Expect, NodeId, Txn, TxnOp, TxnOpResult, TxnResponse,
    TypeConfig, Written,
};
pub use watch::Watcher;
