//! The ledger client brokers write and read through: [`LedgerClient`], [`LedgerWriter`],
//! [`LedgerReader`].
//!
//! Metadata lives in the metastore's ledgers table ([`metadata`] has its rules); entries on
//! bookies. This first cut has a
//! single in-process bookie, so only `E = Qw = Qa = 1` is possible; the API is the one the
//! replicated (quorum) client will keep.
//!
//! Recovery (BookKeeper's): compare-and-set the metadata OPEN → IN_RECOVERY, fence the ledger
//! on its bookies (from then on the old writer's adds fail with `Fenced`), read forward from
//! the bookies' last-add-confirmed to find the last entry that exists, and compare-and-set the
//! metadata to CLOSED at that entry.

pub mod error;
pub mod metadata;
pub mod pending;
pub mod quorum;
mod reader;
mod writer;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use strata_metastore::tables::{Counters, Ledgers, Table, TableError};
use strata_metastore::{Expect, MetaStore};
use strata_proto::pb::bookie::{LedgerMetadata, LedgerState};
use strata_proto::{EntryId, LedgerId};

use crate::{BookieError, BookieStorage};
pub use error::LedgerError;
pub use pending::{AddRefused, PendingAddQueue, Settled};
pub use reader::LedgerReader;
pub use writer::LedgerWriter;

/// How many times a recovery re-reads metadata that changed under it before giving up.
const RECOVERY_ATTEMPTS: usize = 8;

/// Replication settings of a ledger: ensemble size E, write quorum Qw, ack quorum Qa.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Bookies the ledger's entries are striped over.
    pub ensemble_size: u32,
    /// Bookies each entry is written to.
    pub write_quorum: u32,
    /// Bookies that must acknowledge an entry before it counts as durable.
    pub ack_quorum: u32,
}

impl LedgerConfig {
    /// One bookie: `E = Qw = Qa = 1` (the standalone).
    pub const fn single() -> Self {
        LedgerConfig {
            ensemble_size: 1,
            write_quorum: 1,
            ack_quorum: 1,
        }
    }

    /// Checks `E >= Qw >= Qa >= 1`.
    pub fn validate(&self) -> Result<(), LedgerError> {
        let LedgerConfig {
            ensemble_size: e,
            write_quorum: qw,
            ack_quorum: qa,
        } = *self;
        if qa == 0 || qw < qa || e < qw {
            return Err(LedgerError::InvalidConfig(format!(
                "need ensemble_size >= write_quorum >= ack_quorum >= 1, got E={e} Qw={qw} Qa={qa}"
            )));
        }
        Ok(())
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self::single()
    }
}

/// Creates, opens, recovers and deletes ledgers. Cheap to clone.
#[derive(Clone)]
pub struct LedgerClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    ledgers: Table<Ledgers>,
    counters: Counters,
    bookie: BookieStorage,
    bookie_id: String,
}

impl std::fmt::Debug for LedgerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerClient")
            .field("bookie_id", &self.inner.bookie_id)
            .finish()
    }
}

impl LedgerClient {
    /// A client writing to the one bookie `bookie` (named `bookie_id` in ledger metadata).
    pub fn new(meta: MetaStore, bookie: BookieStorage, bookie_id: String) -> Self {
        LedgerClient {
            inner: Arc::new(ClientInner {
                ledgers: Table::new(meta.clone()),
                counters: Counters::new(meta),
                bookie,
                bookie_id,
            }),
        }
    }

    /// The ledgers table (metadata records).
    pub(crate) fn ledgers(&self) -> &Table<Ledgers> {
        &self.inner.ledgers
    }

    pub(crate) fn bookie(&self) -> &BookieStorage {
        &self.inner.bookie
    }

    /// Creates an OPEN ledger and returns its writer.
    #[tracing::instrument(skip_all, fields(ensemble = config.ensemble_size))]
    pub async fn create_ledger(&self, config: LedgerConfig) -> Result<LedgerWriter, LedgerError> {
        config.validate()?;
        let available = 1;
        if config.ensemble_size > available {
            return Err(LedgerError::NotEnoughBookies {
                needed: config.ensemble_size,
                available,
            });
        }
        let id = self.inner.counters.next_ledger_id().await?;
        let md = metadata::new_metadata(id, config, vec![self.inner.bookie_id.clone()], now_ms());
        let written = self.ledgers().create(&id, &md).await?;
        tracing::debug!(ledger = %id, "created ledger");
        Ok(LedgerWriter::new(self.clone(), id, md, written.version))
    }

    /// Reads a ledger's metadata and its metastore version.
    pub async fn metadata(&self, id: LedgerId) -> Result<(LedgerMetadata, u64), LedgerError> {
        let row = self
            .ledgers()
            .get(&id)
            .await?
            .ok_or(LedgerError::NoSuchLedger(id))?;
        metadata::validate(id, &row.record)?;
        Ok((row.record, row.version))
    }

    /// Opens a ledger for reading without fencing it (a tailing reader): reads are bounded by
    /// the ledger's last entry if it is CLOSED, else by the bookie's last-add-confirmed.
    #[tracing::instrument(skip_all, fields(ledger = %id))]
    pub async fn open_ledger(&self, id: LedgerId) -> Result<LedgerReader, LedgerError> {
        let (md, _) = self.metadata(id).await?;
        if metadata::state(id, &md)? == LedgerState::Closed {
            return Ok(LedgerReader::new(
                self.clone(),
                id,
                true,
                metadata::last_entry(&md),
            ));
        }
        let lac = self.bookie_lac(id)?;
        Ok(LedgerReader::new(self.clone(), id, false, lac))
    }

    /// Recovers a ledger (BookKeeper's recovery open) and returns a reader of the CLOSED
    /// ledger: CAS the metadata OPEN → IN_RECOVERY, fence the bookie, find the last entry,
    /// CAS the metadata to CLOSED at it. Afterwards the old writer's adds fail with `Fenced`.
    /// Idempotent: an already CLOSED ledger is just opened; a ledger left IN_RECOVERY by a
    /// recovery that died is recovered again.
    #[tracing::instrument(skip_all, fields(ledger = %id))]
    pub async fn open_ledger_with_recovery(
        &self,
        id: LedgerId,
    ) -> Result<LedgerReader, LedgerError> {
        for _ in 0..RECOVERY_ATTEMPTS {
            let (md, mut version) = self.metadata(id).await?;
            match metadata::state(id, &md)? {
                LedgerState::Closed => {
                    return Ok(LedgerReader::new(
                        self.clone(),
                        id,
                        true,
                        metadata::last_entry(&md),
                    ));
                }
                LedgerState::Open => {
                    let mut in_recovery = md.clone();
                    in_recovery.state = LedgerState::InRecovery as i32;
                    match self.ledgers().update(&id, &in_recovery, version).await {
                        Ok(written) => version = written.version,
                        Err(TableError::VersionMismatch { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                // Another recovery is running or died: recovering again is safe, the final
                // CAS decides.
                LedgerState::InRecovery => {}
            }

            let (last, length) = self.recover_last_entry(id).await?;
            let closed = metadata::closed(md, last, length);
            match self.ledgers().update(&id, &closed, version).await {
                Ok(_) => {
                    tracing::info!(ledger = %id, last_entry = ?last, length, "recovered ledger");
                    return Ok(LedgerReader::new(self.clone(), id, true, last));
                }
                Err(TableError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LedgerError::ConcurrentRecovery(id))
    }

    /// Fences the ledger on its bookie and finds its last entry: read forward from the
    /// bookie's last-add-confirmed until an entry is missing. Returns it and the ledger's
    /// length in bytes up to it.
    async fn recover_last_entry(
        &self,
        id: LedgerId,
    ) -> Result<(Option<EntryId>, u64), LedgerError> {
        let bookie = self.bookie().clone();
        let fenced_last = bookie.fence(id).await?;
        tokio::task::spawn_blocking(move || {
            let mut last = bookie.last_add_confirmed(id)?;
            // Entries past the LAC were durable on the bookie but maybe never acknowledged to
            // the writer; BookKeeper keeps every one up to the first hole. (The replicated
            // client will re-write them to the write quorum with `recovery` set.)
            loop {
                let next = EntryId(last.map_or(0, |l| l.0 + 1));
                if fenced_last.is_none_or(|f| next > f) {
                    break;
                }
                match bookie.read_entry(id, next) {
                    Ok(_) => last = Some(next),
                    Err(BookieError::NoSuchEntry { .. }) => break,
                    Err(e) => return Err(LedgerError::from(e)),
                }
            }
            let length = match last {
                Some(last) => bookie.payload_bytes(id, last)?,
                None => 0,
            };
            Ok((last, length))
        })
        .await
        .map_err(|_| LedgerError::Shutdown(id))?
    }

    /// Deletes a ledger: its data on the bookie, then its metadata.
    #[tracing::instrument(skip_all, fields(ledger = %id))]
    pub async fn delete_ledger(&self, id: LedgerId) -> Result<(), LedgerError> {
        self.metadata(id).await?;
        self.bookie().delete_ledger(id).await?;
        self.ledgers().delete(&id, Expect::Any).await?;
        tracing::debug!(ledger = %id, "deleted ledger");
        Ok(())
    }

    /// The bookie's last-add-confirmed; `None` when the bookie has no data for the ledger yet.
    pub(crate) fn bookie_lac(&self, id: LedgerId) -> Result<Option<EntryId>, LedgerError> {
        match self.bookie().last_add_confirmed(id) {
            Ok(lac) => Ok(lac),
            Err(BookieError::NoSuchLedger(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads `first..=last` from the bookie off the async runtime.
    pub(crate) async fn read_entries(
        &self,
        id: LedgerId,
        first: EntryId,
        last: EntryId,
    ) -> Result<Vec<(EntryId, bytes::Bytes)>, LedgerError> {
        let bookie = self.bookie().clone();
        tokio::task::spawn_blocking(move || bookie.read_range(id, first, last))
            .await
            .map_err(|_| LedgerError::Shutdown(id))?
            .map_err(LedgerError::from)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only configs with `E >= Qw >= Qa >= 1` are valid.
    #[test]
    fn config_validation_follows_quorum_rules() {
        let cfg = |e, qw, qa| LedgerConfig {
            ensemble_size: e,
            write_quorum: qw,
            ack_quorum: qa,
        };
        for ok in [cfg(1, 1, 1), cfg(3, 3, 2), cfg(5, 3, 2), cfg(3, 2, 2)] {
            assert!(ok.validate().is_ok(), "{ok:?}");
        }
        for bad in [cfg(1, 1, 0), cfg(0, 0, 0), cfg(2, 3, 2), cfg(3, 2, 3)] {
            assert!(
                matches!(bad.validate(), Err(LedgerError::InvalidConfig(_))),
                "{bad:?}"
            );
        }
    }
}
