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
//! another process. Multi-key transactions are etcd's Txn (compares, then one of two
//! branches, in one log entry). Leases bind ephemeral keys to a TTL: only the leader keeps
//! lease time, and expiry is a log entry, so every replica deletes the same keys at the same
//! revision; a [`Session`] keeps one alive. History is compacted (on request and
//! automatically); [`tables`] gives the metadata model typed keys and versioned records.
//! Nodes join, are promoted and leave at run time ([`membership`]).
//!
//! # Layout
//!
//! - [`store`]: [`MetaStore`], the public handle — open, get/put/delete/scan, watch, next_id.
//! - [`watch`]: [`Watcher`], history replay then live changes, gap- and duplicate-free.
//! - `lease`: the leader's lease clock (deadlines, grace, expiry), plain logic.
//! - `outcome`: what each kind of write answers, read out of its `CommandResult` (shared by
//!   `MetaStore` and `MetaClient`).
//! - [`session`]: [`Session`], a lease kept alive in the background.
//! - [`remote_watch`]: [`RemoteWatcher`], a watch from another process that resumes on
//!   another node.
//! - `apply`: the key-space rules as plain logic over a read view (unit-tested without I/O).
//! - [`state_machine`]: openraft `RaftStateMachine` on RocksDB: atomic apply, snapshots.
//! - [`log_store`]: openraft `RaftLogStorage` on RocksDB: fsynced appends, truncate, purge.
//! - `db`: the shared RocksDB handle, applied revision and change broadcast.
//! - `keys`: column families, key encodings and the versioned, CRC32C-checked record
//!   envelope.
//! - [`tables`]: typed tables (tenants, namespaces, topics, ownership, managed ledgers, ledgers,
//!   cursors, dedup snapshots, transactions, counters) over the key space: key layouts and versioned records.
//! - [`txn_coordinator`]: begins, registers participants in, decides and times out
//!   transactions over the `txns` tables (the expiry runs on the leader).
//! - [`types`]: the openraft [`TypeConfig`], the replicated [`Command`], [`Expect`], [`Written`].
//! - [`network`]: openraft's `RaftNetwork` over QUIC.
//! - [`rpc`]: node-to-node RPC messages and the peer connection cache.
//! - [`faults`]: [`Faults`], a test hook that drops and delays node-to-node messages per
//!   direction (partitions, one-way cuts, slow links); off unless a test passes one.
//! - [`node_server`]: the RPC server of a clustered node (raft traffic, forwarded requests).
//! - [`membership`]: add a learner, promote, remove, cluster status (routed to the leader);
//!   how a removed node finds out and refuses requests.
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
mod group_commit;
pub mod handle;
mod hot_keys;
mod keys;
mod lease;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod node_server;
mod outcome;
mod recent_entries;
pub mod remote_watch;
pub mod rpc;
pub mod session;
pub mod state_machine;
pub mod store;
pub mod tables;
pub mod txn_coordinator;
mod txn_open_view;
pub mod txn_record_cache;
pub mod txn_start;
pub mod txn_sweep;
pub mod types;
pub mod watch;

#[cfg(test)]
mod tests;

pub use client::MetaClient;
pub use config::{ConfigError, MetaStoreConfig};
pub use error::MetaError;
pub use faults::Faults;
pub use handle::{Meta, MetaWatcher};
pub use log_store::LogStore;
pub use membership::{ClusterStatus, MemberStatus, MembershipError, MembershipInfo, Role};
pub use remote_watch::RemoteWatcher;
pub use session::{LeaseApi, Session, SessionState};
pub use state_machine::{SnapshotBuilder, StateMachine};
pub use store::{Lease, MAX_KEY_LEN, MAX_SCAN_PAGE, MetaStore, NodeOptions, ScanPage};
pub use strata_proto::pb::metastore::{EventKind, KeyValue, WatchEvent};
pub use types::{
    Command, CommandResult, Compare, Expect, LeaseId, NodeId, Txn, TxnOp, TxnOpResult, TxnResponse,
    TypeConfig, Written,
};
pub use watch::Watcher;
