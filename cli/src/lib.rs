//! The `strata` binary's library: every server role and every client verb, so the one
//! binary (and the integration tests) can run them.
//!
//! # Layout
//!
//! - [`bookie_node`]: `strata bookie` (one bookie server, registered in the metastore).
//! - [`config`]: the standalone's TOML config, `STRATA_*` overrides and validation.
//! - [`standalone`]: metastore + bookie + broker in one process.
//! - [`http`]: the HTTP side port (`/healthz`, `/readyz`, `/metrics`).
//! - [`metastore_node`]: `strata metastore` (one raft voter) and `strata meta` (its client).
//! - [`cluster`]: `strata cluster metastore status|add|promote|remove` (membership).
//! - [`commands`]: `produce`, `consume`.
//! - [`tenancy_admin`]: `tenants`, `namespaces`, `topics` (partitioned included).
//! - [`txn_admin`]: `txn list|show|abort`.
//! - [`subscriptions_admin`]: `subscriptions`, `topics stats`.
//! - [`perf`]: `perf produce` / `perf consume` load generators.

pub mod bookie_node;
pub mod bookies_admin;
pub mod broker_node;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod http;
pub mod metastore_node;
pub mod perf;
pub mod perf_ledger;
pub mod perf_txn;
pub mod standalone;
pub mod subscriptions_admin;
pub mod tenancy_admin;
pub mod txn_admin;
