//! Bookie registration: a bookie announces itself under
//! `/bookies/available/<bookie-id>`, a key bound to a metastore lease, so it disappears when
//! the bookie stops renewing it (crash, partition) or closes its session (shutdown). Writers
//! list this prefix to choose ensembles; `writable` and the free bytes let them avoid full
//! bookies.
//!
//! The record is JSON with a `format_version` ([`BookieRegistration`], via the metastore's
//! [`JsonRecord`] codec). [`Registration`] keeps it there: it starts a [`Session`], writes the
//! record bound to the session's lease, rewrites it (compare-and-set on the version it last
//! wrote) every refresh interval and at once when the bookie turns read-only or writable
//! again, and when the session is lost starts a new session and registers again. The first
//! write of a session overwrites whatever is there, so a bookie restarted before its old
//! lease expired does not wait for it; a failed compare-and-set means another process wrote
//! the key (two bookies with one id): that is logged and the key written again.
//!
//! It works over the metastore in process (`MetaStore`: tests, the standalone) or remote
//! (`MetaClient`: a bookie process), through [`Meta`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_metastore::tables::{JsonRecord, Record, now_ms};
use strata_metastore::{Expect, KeyValue, LeaseId, Meta, MetaError, Session};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::server::DiskStatus;

/// Prefix of every registration key.
pub const BOOKIES_AVAILABLE_PREFIX: &str = "/bookies/available/";

/// The key a bookie registers under.
pub fn registration_key(bookie_id: &str) -> String {
    format!("{BOOKIES_AVAILABLE_PREFIX}{bookie_id}")
}

/// What a bookie announces about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookieRegistration {
    /// The bookie's identity in ledger metadata; by default its address.
    pub bookie_id: String,
    /// `host:port` of its QUIC endpoint (ALPN `strata-bookie/1`).
    pub address: String,
    /// Rack (or zone) for rack-aware placement; `None` when not configured.
    pub rack: Option<String>,
    /// False while the bookie refuses adds for lack of disk space.
    pub writable: bool,
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// When this process first registered (ms since the Unix epoch).
    pub registered_ms: u64,
    /// When this record was written.
    pub updated_ms: u64,
}

impl JsonRecord for BookieRegistration {
    const FORMAT_VERSION: u32 = 1;
}

/// Why registrations could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("registration {key}: {reason}")]
    Decode { key: String, reason: String },
}

/// A registration read back, with the lease it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredBookie {
    pub record: BookieRegistration,
    pub lease: LeaseId,
    /// The key's version (1 at registration, +1 per refresh).
    pub version: u64,
}

fn decode(kv: KeyValue) -> Result<RegisteredBookie, RegistryError> {
    let record = BookieRegistration::decode(&kv.value).map_err(|e| RegistryError::Decode {
        key: kv.key.clone(),
        reason: e.to_string(),
    })?;
    Ok(RegisteredBookie {
        record,
        lease: kv.lease,
        version: kv.version,
    })
}

/// The registration of `bookie_id`, if it is registered.
pub async fn get_bookie(
    meta: &(impl Clone + Into<Meta>),
    bookie_id: &str,
) -> Result<Option<RegisteredBookie>, RegistryError> {
    let meta: Meta = meta.clone().into();
    match meta.get(&registration_key(bookie_id)).await? {
        Some(kv) => decode(kv).map(Some),
        None => Ok(None),
    }
}

/// Every registered bookie, in id order. A record that does not decode is an error naming
/// its key.
pub async fn list_bookies(
    meta: &(impl Clone + Into<Meta>),
) -> Result<Vec<RegisteredBookie>, RegistryError> {
    let meta: Meta = meta.clone().into();
    meta.scan(BOOKIES_AVAILABLE_PREFIX)
        .await?
        .into_iter()
        .map(decode)
        .collect()
}

/// Settings of a [`Registration`].
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    pub bookie_id: String,
    /// `host:port` clients reach the bookie at.
    pub address: String,
    pub rack: Option<String>,
    /// TTL of the session's lease: how long a dead bookie stays listed.
    pub ttl: Duration,
    /// How often the record is rewritten with fresh disk figures.
    pub refresh_interval: Duration,
    /// Wait between attempts when the metastore cannot be reached.
    pub retry_interval: Duration,
}

impl RegistrationConfig {
    /// Defaults: a 10 s lease, refreshed every 10 s, retried every second.
    pub fn new(bookie_id: String, address: String) -> Self {
        RegistrationConfig {
            bookie_id,
            address,
            rack: None,
            ttl: Duration::from_secs(10),
            refresh_interval: Duration::from_secs(10),
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// Keeps a bookie registered until [`Registration::close`]; see the module docs.
pub struct Registration {
    key: String,
    lease: watch::Receiver<Option<LeaseId>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("lease", &*self.lease.borrow())
            .finish()
    }
}

impl Registration {
    /// Starts registering in the background; `disk` supplies the free-space figures and the
    /// writable flag ([`crate::server::BookieServer::disk_status`]).
    pub fn start(
        meta: impl Into<Meta>,
        config: RegistrationConfig,
        disk: watch::Receiver<DiskStatus>,
    ) -> Registration {
        let (lease_tx, lease) = watch::channel(None);
        let stop = CancellationToken::new();
        let key = registration_key(&config.bookie_id);
        let task = tokio::spawn(run(meta.into(), config, disk, lease_tx, stop.clone()));
        Registration {
            key,
            lease,
            stop,
            task,
        }
    }

    /// The registration key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the record is written under a live session (readiness).
    pub fn is_registered(&self) -> bool {
        self.lease.borrow().is_some()
    }

    /// The lease the record is bound to now; `None` while not registered.
    pub fn lease_id(&self) -> Option<LeaseId> {
        *self.lease.borrow()
    }

    /// A receiver of the current lease (`None` while not registered), for readiness probes.
    pub fn watch(&self) -> watch::Receiver<Option<LeaseId>> {
        self.lease.clone()
    }

    /// Stops refreshing and closes the session, revoking the lease: the key goes at once.
    pub async fn close(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            error!(error = %e, "registration task failed");
        }
    }
}

/// How one session's registration ended.
enum SessionEnd {
    Stop,
    Lost(String),
}

async fn run(
    meta: Meta,
    config: RegistrationConfig,
    mut disk: watch::Receiver<DiskStatus>,
    lease_tx: watch::Sender<Option<LeaseId>>,
    stop: CancellationToken,
) {
    let registered_ms = now_ms();
    loop {
        let session = tokio::select! {
            s = Session::start(meta.clone(), config.ttl) => s,
            _ = stop.cancelled() => return,
        };
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot start a metastore session; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(config.retry_interval) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        let end = keep_registered(
            &meta,
            &config,
            &session,
            registered_ms,
            &mut disk,
            &lease_tx,
            &stop,
        )
        .await;
        lease_tx.send_replace(None);
        match end {
            SessionEnd::Stop => {
                match session.close().await {
                    Ok(()) => info!(bookie = %config.bookie_id, "bookie unregistered"),
                    // The lease expires after its TTL anyway.
                    Err(e) => warn!(error = %e, "could not revoke the registration lease"),
                }
                return;
            }
            SessionEnd::Lost(why) => {
                warn!(bookie = %config.bookie_id, reason = %why, "registration session lost; registering again with a new session");
            }
        }
    }
}

async fn keep_registered(
    meta: &Meta,
    config: &RegistrationConfig,
    session: &Session,
    registered_ms: u64,
    disk: &mut watch::Receiver<DiskStatus>,
    lease_tx: &watch::Sender<Option<LeaseId>>,
    stop: &CancellationToken,
) -> SessionEnd {
    let key = registration_key(&config.bookie_id);
    let lease = session.lease_id();
    // The version this session last wrote: later writes compare-and-set on it.
    let mut written: Option<u64> = None;
    let mut disk_open = true;
    loop {
        let status = disk.borrow_and_update().clone();
        let record = BookieRegistration {
            bookie_id: config.bookie_id.clone(),
            address: config.address.clone(),
            rack: config.rack.clone(),
            writable: !status.read_only,
            free_bytes: status.free_bytes,
            total_bytes: status.total_bytes,
            registered_ms,
            updated_ms: now_ms(),
        };
        let mut retry_soon = false;
        match record.encode() {
            Err(e) => error!(error = %e, "cannot encode the bookie registration"),
            Ok(value) => {
                let expect = written.map_or(Expect::Any, Expect::Version);
                match meta.put_leased(&key, value, expect, lease).await {
                    Ok(w) => {
                        if written.is_none() {
                            info!(%key, lease, writable = record.writable, "bookie registered");
                        } else {
                            debug!(%key, version = w.version, "registration refreshed");
                        }
                        written = Some(w.version);
                        lease_tx.send_if_modified(|current| {
                            let changed = *current != Some(lease);
                            *current = Some(lease);
                            changed
                        });
                    }
                    Err(MetaError::VersionMismatch { actual, .. }) => {
                        error!(%key, ?actual, "registration key was changed by another process (two bookies with one id?); writing it again");
                        written = None;
                        retry_soon = true;
                    }
                    Err(MetaError::LeaseNotFound { id }) => {
                        return SessionEnd::Lost(format!("lease {id} is gone"));
                    }
                    Err(e) => {
                        warn!(%key, error = %e, "cannot write the registration; retrying");
                        retry_soon = true;
                    }
                }
            }
        }
        let wait = if retry_soon {
            config.retry_interval
        } else {
            config.refresh_interval
        };
        tokio::select! {
            why = session.lost() => return SessionEnd::Lost(why),
            _ = tokio::time::sleep(wait) => {}
            changed = disk.changed(), if disk_open => {
                // The disk monitor is gone (server stopped): keep the periodic refresh only.
                disk_open = changed.is_ok();
            }
            _ = stop.cancelled() => return SessionEnd::Stop,
        }
    }
}
