//! Re-replication: when a bookie has been gone (no registration) for longer than a delay,
//! the copies it held are made again on other bookies, as BookKeeper's auditor and
//! replication workers do.
//!
//! - One **auditor**, elected by a lease-bound key ([`AUDITOR_KEY`]), lists the registered
//!   bookies and every ledger's metadata each audit interval. A bookie named in metadata but
//!   unregistered for longer than `lost_bookie_delay` is lost; every ledger with a fragment on
//!   it is marked under-replicated under [`PENDING_PREFIX`].
//! - **Workers** (one per bookie process) claim a marked ledger with a lease-bound key under
//!   [`CLAIMS_PREFIX`], copy each sealed fragment's entries that a lost bookie held from the
//!   surviving replicas to a replacement bookie (recovery adds), and compare-and-set the
//!   fragment to name the replacement. Progress (entries copied of entries to copy) is written
//!   to the mark; the mark is deleted when nothing is left. The last fragment of a ledger
//!   still being written is left to its writer (ensemble change) or to the recovery that
//!   closes it.
//!
//! The decisions are plain functions in [`plan`]; [`ReplicationService`] runs both roles.

pub mod plan;
mod service;

use serde::{Deserialize, Serialize};
use strata_metastore::tables::{JsonRecord, Record};
use strata_metastore::{Expect, Meta, MetaError};
use strata_proto::LedgerId;

pub use service::{ReplicationOptions, ReplicationService};

/// Held (lease-bound) by the elected auditor; the value is its name.
pub const AUDITOR_KEY: &str = "/replication/auditor";
/// `/replication/pending/<ledger id, 20 digits>` → [`UnderReplicated`].
pub const PENDING_PREFIX: &str = "/replication/pending/";
/// `/replication/claims/<ledger id, 20 digits>` → the worker's name, lease-bound.
pub const CLAIMS_PREFIX: &str = "/replication/claims/";

pub fn pending_key(ledger: LedgerId) -> String {
    format!("{PENDING_PREFIX}{:020}", ledger.0)
}

pub fn claim_key(ledger: LedgerId) -> String {
    format!("{CLAIMS_PREFIX}{:020}", ledger.0)
}

/// A ledger marked under-replicated, with the work's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderReplicated {
    /// Lost bookies that hold fragments of the ledger.
    pub lost_bookies: Vec<String>,
    /// When the auditor marked it (ms since the Unix epoch).
    pub marked_ms: u64,
    /// The worker copying it now, if any.
    pub worker: Option<String>,
    /// Entries copied so far of those to copy, in the worker's current pass.
    pub copied_entries: u64,
    pub entries_to_copy: u64,
    /// Why the last pass could not finish (no replacement bookie, ledger still open).
    pub waiting_for: Option<String>,
    pub updated_ms: u64,
}

impl JsonRecord for UnderReplicated {
    const FORMAT_VERSION: u32 = 1;
}

/// What `strata cluster bookies` and `strata ledgers show` display about re-replication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// The elected auditor's name.
    pub auditor: Option<String>,
    /// Marked ledgers, in id order.
    pub pending: Vec<(LedgerId, UnderReplicated)>,
}

/// Reads the auditor and the marked ledgers.
pub async fn status(meta: &Meta) -> Result<ReplicationStatus, MetaError> {
    let auditor = meta
        .get(AUDITOR_KEY)
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    let mut pending = Vec::new();
    for kv in meta.scan(PENDING_PREFIX).await? {
        let Some(id) = kv
            .key
            .strip_prefix(PENDING_PREFIX)
            .and_then(|s| s.parse().ok())
        else {
            continue;
        };
        match UnderReplicated::decode(&kv.value) {
            Ok(record) => pending.push((LedgerId(id), record)),
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "undecodable re-replication mark"),
        }
    }
    Ok(ReplicationStatus { auditor, pending })
}

/// The mark of one ledger, if any.
pub async fn pending_of(
    meta: &Meta,
    ledger: LedgerId,
) -> Result<Option<(UnderReplicated, u64)>, MetaError> {
    let Some(kv) = meta.get(&pending_key(ledger)).await? else {
        return Ok(None);
    };
    Ok(UnderReplicated::decode(&kv.value)
        .ok()
        .map(|record| (record, kv.version)))
}

/// Writes a mark if it is still at `expect`.
async fn put_pending(
    meta: &Meta,
    ledger: LedgerId,
    record: &UnderReplicated,
    expect: Expect,
) -> Result<u64, MetaError> {
    let value = record.encode().map_err(MetaError::InvalidRequest)?;
    Ok(meta.put(&pending_key(ledger), value, expect).await?.version)
}
