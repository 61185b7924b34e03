//! The ledger client brokers write and read through: [`LedgerClient`], [`LedgerWriter`],
//! [`LedgerReader`], replicated over the bookies of a [`BookieCluster`] by BookKeeper's rules
//! (the [`quorum`] module states them and implements them without I/O; this module drives
//! them with bookie calls and metastore compare-and-sets).
//!
//! - Create: choose an ensemble of E bookies (rack-aware), store OPEN metadata (E, Qw, Qa,
//!   one fragment) in the metastore's ledgers table ([`metadata`] has its rules).
//! - Write ([`LedgerWriter`]): entries are striped over the ensemble and acknowledged in
//!   order once Qa bookies stored them; a failed bookie is replaced in a new fragment by
//!   compare-and-set, or, with no replacement available, left out while Qa remain.
//! - Read ([`LedgerReader`]): each entry from its write set, failing over on errors (a corrupt
//!   copy included) and reading another replica speculatively when one is slow; tailing
//!   readers long-poll the last-add-confirmed.
//! - Recover ([`LedgerClient::recover`]): fence, find the end, re-replicate, close by
//!   compare-and-set; of two racing recoveries exactly one closes the ledger.

pub mod cluster;
pub mod entry;
pub mod error;
pub mod metadata;
pub mod quorum;
mod read;
mod reader;
mod recovery;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_metastore::Meta;
use strata_metastore::tables::{Counters, Ledgers, Table};
use strata_proto::LedgerId;
use strata_proto::pb::bookie::{LedgerMetadata, LedgerState};

use crate::BookieStorage;
pub use cluster::{BookieCluster, LocalBookies, NetworkBookies};
pub use error::LedgerError;
use quorum::{PlacementError, WriteSchedule, choose_ensemble};
pub use reader::LedgerReader;
pub use recovery::Recovered;
pub use writer::LedgerWriter;

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

    /// `E = 3, Qw = 3, Qa = 2`: what a cluster of three or more bookies uses by default.
    pub const fn replicated() -> Self {
        LedgerConfig {
            ensemble_size: 3,
            write_quorum: 3,
            ack_quorum: 2,
        }
    }

    /// Checks `E >= Qw >= Qa >= 1` and the ensemble size limit.
    pub fn validate(&self) -> Result<(), LedgerError> {
        self.schedule().map(|_| ())
    }

    pub(crate) fn schedule(&self) -> Result<WriteSchedule, LedgerError> {
        WriteSchedule::new(
            self.ensemble_size as usize,
            self.write_quorum as usize,
            self.ack_quorum as usize,
        )
        .map_err(|e| LedgerError::InvalidConfig(e.to_string()))
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self::single()
    }
}

/// Settings of a [`LedgerClient`].
#[derive(Debug, Clone)]
pub struct LedgerClientOptions {
    /// Read the next replica too when one has not answered within this; `None`: never.
    pub speculative_read_delay: Option<Duration>,
    /// How long a writer that found no replacement for a failed bookie waits before looking
    /// again.
    pub ensemble_retry_delay: Duration,
    /// Largest payload [`LedgerWriter::add`] accepts.
    pub max_entry_bytes: usize,
    /// Entries a range read fetches at once.
    pub read_concurrency: usize,
}

impl Default for LedgerClientOptions {
    fn default() -> Self {
        LedgerClientOptions {
            speculative_read_delay: Some(Duration::from_millis(200)),
            ensemble_retry_delay: Duration::from_secs(1),
            // Under the bookie's 8 MiB frame, with room for the request around it.
            max_entry_bytes: 5 * 1024 * 1024,
            read_concurrency: 64,
        }
    }
}

/// What a ledger client has done, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerClientStats {
    /// Fragments added because a bookie failed.
    pub ensemble_changes: u64,
    /// Changes put off because no replacement bookie was available.
    pub postponed_changes: u64,
    /// Reads served by another replica after one failed.
    pub read_failovers: u64,
    /// Copies that failed their checksum on a bookie (the read went to another replica).
    pub corrupt_replicas: u64,
    /// Extra reads sent because a replica was slow.
    pub speculative_reads: u64,
    /// Recoveries that closed a ledger.
    pub recoveries: u64,
}

impl LedgerClientStats {
    /// The counters in Prometheus text format (`strata_ledger_*_total`).
    pub fn render_prometheus(&self) -> String {
        let rows = [
            (
                "ensemble_changes",
                "Fragments added because a bookie failed",
                self.ensemble_changes,
            ),
            (
                "postponed_ensemble_changes",
                "Ensemble changes put off for lack of a spare bookie",
                self.postponed_changes,
            ),
            (
                "read_failovers",
                "Entry reads served by another replica after one failed",
                self.read_failovers,
            ),
            (
                "corrupt_replicas",
                "Replica copies that failed their checksum on a bookie",
                self.corrupt_replicas,
            ),
            (
                "speculative_reads",
                "Extra reads sent because a replica was slow",
                self.speculative_reads,
            ),
            (
                "recoveries",
                "Ledgers closed by a recovery of this client",
                self.recoveries,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in rows {
            out.push_str(&format!(
                "# HELP strata_ledger_{name}_total {help}\n# TYPE strata_ledger_{name}_total counter\nstrata_ledger_{name}_total {value}\n"
            ));
        }
        out
    }
}

#[derive(Default)]
struct StatCounters {
    ensemble_changes: AtomicU64,
    postponed_changes: AtomicU64,
    read_failovers: AtomicU64,
    corrupt_replicas: AtomicU64,
    speculative_reads: AtomicU64,
    recoveries: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Creates, opens, recovers and deletes ledgers. Cheap to clone.
#[derive(Clone)]
pub struct LedgerClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    ledgers: Table<Ledgers>,
    counters: Counters,
    cluster: Arc<dyn BookieCluster>,
    options: LedgerClientOptions,
    stats: StatCounters,
}

impl std::fmt::Debug for LedgerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerClient").finish_non_exhaustive()
    }
}

impl LedgerClient {
    /// A client of `cluster`'s bookies, with metadata in `meta`.
    pub fn new(
        meta: impl Into<Meta>,
        cluster: Arc<dyn BookieCluster>,
        options: LedgerClientOptions,
    ) -> Self {
        let meta: Meta = meta.into();
        LedgerClient {
            inner: Arc::new(ClientInner {
                ledgers: Table::new(meta.clone()),
                counters: Counters::new(meta),
                cluster,
                options,
                stats: StatCounters::default(),
            }),
        }
    }

    /// A client of one bookie in this process (the standalone), named `bookie_id` in
    /// ledger metadata.
    pub fn local(meta: impl Into<Meta>, bookie: BookieStorage, bookie_id: String) -> Self {
        let cluster = Arc::new(LocalBookies::single(bookie_id, bookie));
        Self::new(meta, cluster, LedgerClientOptions::default())
    }

    pub fn options(&self) -> &LedgerClientOptions {
        &self.inner.options
    }

    pub fn stats(&self) -> LedgerClientStats {
        let s = &self.inner.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LedgerClientStats {
            ensemble_changes: get(&s.ensemble_changes),
            postponed_changes: get(&s.postponed_changes),
            read_failovers: get(&s.read_failovers),
            corrupt_replicas: get(&s.corrupt_replicas),
            speculative_reads: get(&s.speculative_reads),
            recoveries: get(&s.recoveries),
        }
    }

    pub(crate) fn ledgers(&self) -> &Table<Ledgers> {
        &self.inner.ledgers
    }

    pub(crate) fn cluster(&self) -> &Arc<dyn BookieCluster> {
        &self.inner.cluster
    }

    /// The replication a new ledger gets by default: `E3/Qw3/Qa2` when at least three
    /// writable bookies are registered, else one copy per writable bookie up to that.
    pub async fn default_config(&self) -> Result<LedgerConfig, LedgerError> {
        let writable = self
            .cluster()
            .bookies()
            .await?
            .iter()
            .filter(|b| b.writable)
            .count() as u32;
        Ok(match writable {
            0 | 1 => LedgerConfig::single(),
            2 => LedgerConfig {
                ensemble_size: 2,
                write_quorum: 2,
                ack_quorum: 2,
            },
            _ => LedgerConfig::replicated(),
        })
    }

    /// Creates an OPEN ledger on an ensemble of `config.ensemble_size` writable bookies
    /// (spread over racks) and returns its writer.
    #[tracing::instrument(skip_all, fields(ensemble = config.ensemble_size))]
    pub async fn create_ledger(&self, config: LedgerConfig) -> Result<LedgerWriter, LedgerError> {
        let schedule = config.schedule()?;
        let bookies = self.cluster().bookies().await?;
        let seed = now_nanos();
        let ensemble = choose_ensemble(&bookies, schedule.ensemble_size(), &[], seed).map_err(
            |e| match e {
                PlacementError::NotEnoughBookies { needed, available } => {
                    LedgerError::NotEnoughBookies {
                        needed: needed as u32,
                        available: available as u32,
                    }
                }
                other => LedgerError::InvalidConfig(other.to_string()),
            },
        )?;
        let id = self.inner.counters.next_ledger_id().await?;
        let md = metadata::new_metadata(id, config, ensemble, now_ms());
        let written = self.ledgers().create(&id, &md).await?;
        tracing::debug!(ledger = %id, ensemble = ?md.fragments[0].bookies, "created ledger");
        LedgerWriter::new(self.clone(), id, md, written.version)
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
    /// the ledger's last entry if it is CLOSED, else by the bookies' last-add-confirmed.
    #[tracing::instrument(skip_all, fields(ledger = %id))]
    pub async fn open_ledger(&self, id: LedgerId) -> Result<LedgerReader, LedgerError> {
        let (md, _) = self.metadata(id).await?;
        let reader = LedgerReader::new(self.clone(), id, md)?;
        if !reader.is_closed() {
            reader.refresh_last_add_confirmed().await?;
        }
        Ok(reader)
    }

    /// Recovers the ledger if it is not CLOSED (see [`LedgerClient::recover`]) and returns a
    /// reader of the CLOSED ledger. Afterwards the old writer's adds fail with `Fenced`.
    #[tracing::instrument(skip_all, fields(ledger = %id))]
    pub async fn open_ledger_with_recovery(
        &self,
        id: LedgerId,
    ) -> Result<LedgerReader, LedgerError> {
        self.recover(id).await?;
        let (md, _) = self.metadata(id).await?;
        LedgerReader::new(self.clone(), id, md)
    }

    /// Deletes a ledger: its data on every bookie that holds a fragment of it, then its
    /// metadata. A bookie that cannot be reached keeps its copy until its garbage collector
    /// finds the ledger's metadata gone.
    #[tracing::instrument(skip_all, fields(ledger = %id))]
    pub async fn delete_ledger(&self, id: LedgerId) -> Result<(), LedgerError> {
        let (md, _) = self.metadata(id).await?;
        let mut bookies: Vec<&String> = md.fragments.iter().flat_map(|f| &f.bookies).collect();
        bookies.sort();
        bookies.dedup();
        for bookie in bookies {
            if let Err(e) = self.cluster().delete(bookie, id).await {
                tracing::warn!(ledger = %id, bookie, error = %e, "could not delete ledger data on a bookie");
            }
        }
        self.ledgers()
            .delete(&id, strata_metastore::Expect::Any)
            .await?;
        tracing::debug!(ledger = %id, "deleted ledger");
        Ok(())
    }
}

/// The ledger's state, for code that only has the metadata.
pub(crate) fn is_closed(id: LedgerId, md: &LedgerMetadata) -> Result<bool, LedgerError> {
    Ok(metadata::state(id, md)? == LedgerState::Closed)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
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
