//! The bookie: ledger storage in RocksDB, its QUIC server and client, registration in the
//! metastore, and the ledger client brokers write through.
//!
//! A ledger is an append-only sequence of entries with dense ids from 0, written by one
//! writer to an ensemble of bookies (E, Qw, Qa), then sealed (CLOSED) at its last entry, as in
//! Apache BookKeeper.
//!
//! # Layout
//!
//! - [`storage`]: [`BookieStorage`], entries and per-ledger records in RocksDB, group-committed
//!   by one writer thread, CRC32C-verified on read; [`storage::format`] documents the
//!   on-disk layout.
//! - [`error`]: the storage errors, [`BookieError`].
//! - [`server`]: [`BookieServer`], the storage over QUIC (ALPN `strata-bookie/1`, pipelined
//!   requests answered out of order, long-poll LAC, read-only on low disk), and
//!   [`BookieClient`], its client with typed [`BookieRpcError`]s; the module docs describe
//!   the wire protocol.
//! - [`registration`]: [`Registration`], the bookie's lease-bound record under
//!   `/bookies/available/<id>` in the metastore.
//! - [`ledger`]: [`LedgerClient`], [`LedgerWriter`], [`LedgerReader`], replicated over a
//!   [`ledger::BookieCluster`] (bookies over QUIC, or in process for the standalone);
//!   ledger metadata in the metastore; recovery (fence, find the end, re-replicate, close).
//! - [`gc`]: deletes stored ledgers whose metadata is gone (deleted while the bookie was away).
//! - [`replication`]: re-replication of lost bookies' copies: an auditor elected by lease and
//!   workers that copy fragments and update metadata by compare-and-set.
//! - [`local_cluster`]: [`local_cluster::LocalCluster`], a metastore and bookies in one
//!   process on loopback, for tests and `strata perf ledger`.
//! - [`ledger::quorum`]: the replication protocol without I/O: write sets and coverage, the
//!   writer's ack quorum and ensemble changes, recovery, rack-aware placement, read failover.

pub mod error;
pub mod gc;
pub mod ledger;
pub mod local_cluster;
pub mod registration;
pub mod replication;
pub mod server;
pub mod storage;

pub use error::BookieError;
pub use ledger::{
    BookieCluster, LedgerClient, LedgerClientOptions, LedgerClientStats, LedgerConfig, LedgerError,
    LedgerReader, LedgerWriter, LocalBookies, NetworkBookies, Recovered,
};
pub use registration::{BookieRegistration, Registration, RegistrationConfig};
pub use server::{
    BookieClient, BookieClientOptions, BookieRpcError, BookieServer, ServerConfig, ServerStats,
};
pub use storage::{BookieStorage, StorageOptions, StorageStats};
