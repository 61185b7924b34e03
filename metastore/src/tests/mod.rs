//! Crate tests that need more than one module: openraft's storage conformance suite run
//! against the RocksDB stores, and the key-space properties checked through [`crate::MetaStore`].

mod cluster;
mod leases;
mod membership;
mod properties;
mod suite;
