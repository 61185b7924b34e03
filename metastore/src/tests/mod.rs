//! Crate tests that need more than one module: openraft's storage conformance suite run
//! against the RocksDB stores, the key-space properties checked through [`crate::MetaStore`],
//! and a real three-voter cluster (`harness`) with and without injected faults.

mod cluster;
mod faults;
mod harness;
mod leases;
mod membership;
mod properties;
mod suite;
mod txn_coordinator;
mod txn_lazy_begin;
