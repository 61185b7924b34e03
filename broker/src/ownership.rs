//! Bundle ownership and broker registration. A broker keeps one metastore session; its
//! registration (`/brokers/available/<id>`) and every bundle it owns (`/ownership/...`) are
//! keys bound to that session's lease, so they all vanish when the broker dies or is cut off
//! for longer than the TTL, and another broker can take the bundles over.
//!
//! Ownership is taken with a compare-and-set on an absent key: of two brokers racing for a
//! bundle exactly one gets it. When the session is lost, the broker forgets every bundle at
//! once and tells its service (through [`Ownership::lost_epoch`]) to unload their topics; the
//! new owner fences their ledgers, so a write the old owner still attempts fails.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_metastore::tables::{
    BrokerId, JsonRecord, NamespaceBundle, OwnershipRecord, Record, TableError, Tables, now_ms,
};
use strata_metastore::{Expect, LeaseId, Meta, MetaError, Session};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::BrokerError;

/// Prefix of broker registrations.
pub const BROKERS_PREFIX: &str = "/brokers/available/";

/// What a broker announces about itself (JSON, lease-bound).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub broker_id: BrokerId,
    /// `host:port` of its QUIC endpoint for clients.
    pub address: String,
    /// Bundles it owns: the load the load manager balances.
    pub owned_bundles: u32,
    pub updated_ms: u64,
}

impl JsonRecord for BrokerRegistration {
    const FORMAT_VERSION: u32 = 1;
}

/// Settings of [`Ownership`].
#[derive(Debug, Clone)]
pub struct OwnershipConfig {
    pub broker_id: BrokerId,
    /// Where clients reach this broker.
    pub address: String,
    /// TTL of the session lease: how long a dead broker's bundles stay owned.
    pub session_ttl: Duration,
    /// How often the registration's load is rewritten.
    pub refresh_interval: Duration,
}

impl OwnershipConfig {
    pub fn new(broker_id: impl Into<String>, address: impl Into<String>) -> Self {
        OwnershipConfig {
            broker_id: BrokerId(broker_id.into()),
            address: address.into(),
            session_ttl: Duration::from_secs(10),
            refresh_interval: Duration::from_secs(5),
        }
    }
}

/// Outcome of [`Ownership::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This broker owns the bundle (now, or already).
    Mine,
    /// Another broker does.
    OwnedBy(OwnershipRecord),
}

struct State {
    /// The current session's lease; `None` between a loss and the next session.
    lease: Option<LeaseId>,
    owned: BTreeSet<NamespaceBundle>,
}

/// This broker's session, registration and owned bundles. Cheap to share behind an `Arc`.
pub struct Ownership {
    meta: Meta,
    tables: Tables,
    config: OwnershipConfig,
    state: Mutex<State>,
    /// Bumped on every session loss: the service unloads every topic.
    lost: watch::Sender<u64>,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Ownership {
    /// Starts the session loop and waits for the first registration.
    pub async fn start(
        meta: impl Into<Meta>,
        config: OwnershipConfig,
    ) -> Result<Arc<Self>, BrokerError> {
        let meta: Meta = meta.into();
        let ownership = Arc::new(Ownership {
            tables: Tables::new(meta.clone()),
            meta,
            config,
            state: Mutex::new(State {
                lease: None,
                owned: BTreeSet::new(),
            }),
            lost: watch::channel(0).0,
            stop: CancellationToken::new(),
            task: Mutex::new(None),
        });
        let session = ownership.new_session().await?;
        let task = tokio::spawn(ownership.clone().keep_sessions(session));
        *ownership.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(ownership)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn broker_id(&self) -> &BrokerId {
        &self.config.broker_id
    }

    pub fn address(&self) -> &str {
        &self.config.address
    }

    /// Bumped every time the session was lost (every owned bundle with it).
    pub fn lost_epoch(&self) -> watch::Receiver<u64> {
        self.lost.subscribe()
    }

    /// Whether this broker owns `bundle` now (in memory; no metastore call).
    pub fn owns(&self, bundle: &NamespaceBundle) -> bool {
        self.lock().owned.contains(bundle)
    }

    pub fn owned(&self) -> Vec<NamespaceBundle> {
        self.lock().owned.iter().cloned().collect()
    }

    async fn new_session(&self) -> Result<Session, BrokerError> {
        let session = Session::start(self.meta.clone(), self.config.session_ttl)
            .await
            .map_err(|e| BrokerError::Meta(TableError::from(e)))?;
        self.lock().lease = Some(session.lease_id());
        self.register(session.lease_id()).await?;
        info!(broker = %self.config.broker_id, lease = session.lease_id(), "broker session started");
        Ok(session)
    }

    async fn register(&self, lease: LeaseId) -> Result<(), BrokerError> {
        let record = BrokerRegistration {
            broker_id: self.config.broker_id.clone(),
            address: self.config.address.clone(),
            owned_bundles: self.lock().owned.len() as u32,
            updated_ms: now_ms(),
        };
        let value = record.encode().map_err(BrokerError::Protocol)?;
        let key = format!("{BROKERS_PREFIX}{}", self.config.broker_id);
        self.meta
            .put_leased(&key, value, Expect::Any, lease)
            .await
            .map_err(|e| BrokerError::Meta(TableError::from(e)))?;
        Ok(())
    }

    /// Keeps a session: refreshes the registration; on loss forgets every bundle, signals
    /// it, and starts a new session.
    async fn keep_sessions(self: Arc<Self>, mut session: Session) {
        let mut tick = tokio::time::interval(self.config.refresh_interval);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    let _ = session.close().await;
                    return;
                }
                why = session.lost() => {
                    warn!(broker = %self.config.broker_id, reason = %why, "broker session lost: giving up every bundle");
                    {
                        let mut state = self.lock();
                        state.lease = None;
                        state.owned.clear();
                    }
                    self.lost.send_modify(|epoch| *epoch += 1);
                    session = loop {
                        match self.new_session().await {
                            Ok(s) => break s,
                            Err(e) => {
                                warn!(error = %e, "cannot start a broker session; retrying");
                                tokio::select! {
                                    _ = self.stop.cancelled() => return,
                                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                }
                            }
                        }
                    };
                }
                _ = tick.tick() => {
                    if let Err(e) = self.register(session.lease_id()).await {
                        warn!(error = %e, "broker registration refresh failed");
                    }
                }
            }
        }
    }

    /// Takes `bundle` if nobody owns it; says who does otherwise.
    pub async fn acquire(&self, bundle: &NamespaceBundle) -> Result<Acquired, BrokerError> {
        let lease = {
            let state = self.lock();
            if state.owned.contains(bundle) {
                return Ok(Acquired::Mine);
            }
            state.lease.ok_or(BrokerError::ShuttingDown)?
        };
        let record = OwnershipRecord {
            broker_id: self.config.broker_id.clone(),
            address: self.config.address.clone(),
            lease_id: lease,
            acquired_ms: now_ms(),
        };
        let owner = match self
            .tables
            .ownership
            .put_leased(bundle, &record, Expect::Absent, lease)
            .await
        {
            Ok(_) => None,
            Err(TableError::VersionMismatch { .. }) => {
                match self.tables.ownership.get(bundle).await? {
                    // A previous incarnation of this broker (same id, a lease that has not
                    // expired yet: it crashed and restarted). Broker ids are unique, so that
                    // process is gone; take the bundle over at once. Its topics' ledgers are
                    // fenced when they are opened here.
                    Some(row)
                        if row.record.broker_id == self.config.broker_id
                            && row.record.lease_id != lease =>
                    {
                        match self
                            .tables
                            .ownership
                            .put_leased(bundle, &record, Expect::Version(row.version), lease)
                            .await
                        {
                            Ok(_) => None,
                            Err(TableError::VersionMismatch { .. }) => {
                                self.tables.ownership.get(bundle).await?.map(|r| r.record)
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    other => other.map(|r| r.record),
                }
            }
            Err(e) => return Err(e.into()),
        };
        match owner {
            Some(other) if other.lease_id != lease => Ok(Acquired::OwnedBy(other)),
            // Ours (this call or an earlier one under the same lease), or released meanwhile
            // and free: take it by the next lookup.
            Some(_) | None => {
                let new = {
                    let mut state = self.lock();
                    if state.lease != Some(lease) {
                        // The session was lost while acquiring: the key goes with the lease.
                        return Err(BrokerError::ShuttingDown);
                    }
                    state.owned.insert(bundle.clone())
                };
                if new {
                    info!(bundle = %bundle, "bundle acquired");
                    // The load manager reads the count from the registration: keep it current.
                    if let Err(e) = self.register(lease).await {
                        warn!(error = %e, "broker registration refresh failed");
                    }
                }
                Ok(Acquired::Mine)
            }
        }
    }

    /// The owner of `bundle`, if any.
    pub async fn owner_of(
        &self,
        bundle: &NamespaceBundle,
    ) -> Result<Option<OwnershipRecord>, BrokerError> {
        Ok(self.tables.ownership.get(bundle).await?.map(|r| r.record))
    }

    /// Gives up `bundle` (unload): its key is deleted if it is still this session's.
    pub async fn release(&self, bundle: &NamespaceBundle) -> Result<(), BrokerError> {
        let removed = self.lock().owned.remove(bundle);
        if !removed {
            return Ok(());
        }
        if let Some(row) = self.tables.ownership.get(bundle).await?
            && row.record.broker_id == self.config.broker_id
        {
            self.tables
                .ownership
                .delete(bundle, Expect::Version(row.version))
                .await?;
        }
        info!(bundle = %bundle, "bundle released");
        Ok(())
    }

    /// Registered brokers, in id order.
    pub async fn brokers(&self) -> Result<Vec<BrokerRegistration>, BrokerError> {
        let kvs = self
            .meta
            .scan(BROKERS_PREFIX)
            .await
            .map_err(|e: MetaError| BrokerError::Meta(TableError::from(e)))?;
        Ok(kvs
            .iter()
            .filter_map(|kv| BrokerRegistration::decode(&kv.value).ok())
            .collect())
    }

    /// Stops the session: closing it revokes the lease, which releases the registration and
    /// every owned bundle at once.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let mut state = self.lock();
        state.lease = None;
        state.owned.clear();
    }
}

/// The broker a lookup should send an unowned bundle to: the one owning the fewest bundles,
/// ties broken by a hash of the bundle and broker ids so equal brokers share new bundles.
pub fn least_loaded<'a>(
    brokers: &'a [BrokerRegistration],
    bundle: &NamespaceBundle,
) -> Option<&'a BrokerRegistration> {
    brokers.iter().min_by_key(|b| {
        let mut tie: u32 = 0x811c_9dc5;
        for byte in bundle.to_string().bytes().chain(b.broker_id.0.bytes()) {
            tie = (tie ^ u32::from(byte)).wrapping_mul(0x0100_0193);
        }
        (b.owned_bundles, tie)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_metastore::tables::BundleRange;

    fn reg(id: &str, owned: u32) -> BrokerRegistration {
        BrokerRegistration {
            broker_id: BrokerId(id.into()),
            address: format!("{id}:1"),
            owned_bundles: owned,
            updated_ms: 0,
        }
    }

    /// The least-loaded broker wins; among equals, different bundles go to different
    /// brokers.
    #[test]
    fn least_loaded_prefers_fewer_bundles_and_spreads_ties() {
        let ns: strata_proto::NamespaceName = "a/b".parse().expect("ns");
        let bundle = |lower| NamespaceBundle {
            namespace: ns.clone(),
            range: BundleRange::new(lower, lower + 1).expect("range"),
        };
        let brokers = [reg("b1", 3), reg("b2", 1), reg("b3", 2)];
        assert_eq!(
            least_loaded(&brokers, &bundle(0)).map(|b| b.broker_id.0.as_str()),
            Some("b2")
        );
        let equal = [reg("b1", 0), reg("b2", 0), reg("b3", 0)];
        let chosen: BTreeSet<String> = (0..32)
            .filter_map(|i| least_loaded(&equal, &bundle(i * 100)).map(|b| b.broker_id.0.clone()))
            .collect();
        assert!(chosen.len() >= 2, "ties spread: {chosen:?}");
        assert!(least_loaded(&[], &bundle(0)).is_none());
    }
}
