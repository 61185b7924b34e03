//! The broker's topic registry: creating, loading, listing and deleting topics.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use strata_bookie::{LedgerClient, LedgerConfig};
use strata_metastore::tables::{
    BrokerId, NamespaceBundle, NamespacePolicies, TableError, TableEvent, Tables, TenantName,
    TenantRecord, TopicRecord, TxnRecord, now_ms,
};
use strata_metastore::txn_coordinator::{CoordinatorError, TxnCoordinator};
use strata_metastore::{Expect, Meta};
use strata_proto::{NamespaceName, TopicName};
use tokio::sync::{Mutex, OnceCell};
use tracing::{info, warn};

use crate::BrokerError;
use crate::bundles::{BundleLayout, DEFAULT_BUNDLES};
use crate::managed_ledger::{ManagedLedger, ManagedLedgerConfig};
use crate::metrics::BrokerMetrics;
use crate::ownership::{Acquired, Ownership, least_loaded};
use crate::topic::Topic;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub managed_ledger: ManagedLedgerConfig,
    /// Replication of ledgers in namespaces without a replication policy; `None`: what the
    /// ledger client picks from the bookies registered (E3/Qw3/Qa2 on three or more).
    pub default_replication: Option<LedgerConfig>,
    pub txn_limits: strata_metastore::txn_coordinator::TxnLimits,
    /// Writes a transaction's record at begin even when its client asks for a lazy begin
    /// (while some metastore node still sweeps without the late-write margin).
    pub eager_begin: bool,
    /// How long a producer may send nothing new before a topic's dedup forgets it (a resend
    /// after that is stored again); Pulsar's producer inactivity timeout.
    pub dedup_producer_expiry: Duration,
}

/// Pulsar's default producer inactivity timeout for deduplication.
pub const DEFAULT_DEDUP_PRODUCER_EXPIRY: Duration = Duration::from_secs(6 * 60 * 60);

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            managed_ledger: ManagedLedgerConfig::default(),
            default_replication: None,
            txn_limits: Default::default(),
            eager_begin: false,
            dedup_producer_expiry: DEFAULT_DEDUP_PRODUCER_EXPIRY,
        }
    }
}

pub struct BrokerService {
    pub(crate) tables: Tables,
    ledgers: LedgerClient,
    pub(crate) config: BrokerConfig,
    topics: Mutex<HashMap<TopicName, Arc<OnceCell<Arc<Topic>>>>>,
    /// Bundle ownership; unset, the service serves every topic as if it were the only
    /// broker (in-process tests of the layers below).
    ownership: OnceLock<Arc<Ownership>>,
    pub metrics: BrokerMetrics,
    /// Transactions: their records and decisions live in the metastore.
    pub txns: TxnCoordinator,
    /// Check-back sessions of producer groups connected here.
    pub checkers: crate::txn_checkers::TxnCheckers,
}

/// Who serves a topic, from [`BrokerService::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOwner {
    pub broker_id: BrokerId,
    pub address: String,
}

impl BrokerService {
    pub fn new(meta: impl Into<Meta>, ledgers: LedgerClient, config: BrokerConfig) -> Arc<Self> {
        let tables = Tables::new(meta);
        let service = Arc::new(Self {
            txns: TxnCoordinator::new(tables.clone(), config.txn_limits),
            tables,
            ledgers,
            config,
            topics: Mutex::new(HashMap::new()),
            ownership: OnceLock::new(),
            metrics: BrokerMetrics::default(),
            checkers: Default::default(),
        });
        service.start_txn_watch();
        service
    }

    /// Serves only the bundles `ownership` holds from now on, and unloads every topic when
    /// its session is lost (the bundles are gone; another broker takes them over and fences
    /// their ledgers).
    pub fn enable_ownership(self: &Arc<Self>, ownership: Arc<Ownership>) {
        let mut lost = ownership.lost_epoch();
        if self.ownership.set(ownership).is_err() {
            return;
        }
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            while lost.changed().await.is_ok() {
                let Some(service) = service.upgrade() else {
                    return;
                };
                warn!("ownership lost: unloading every topic");
                service.unload_all().await;
            }
        });
    }

    /// Runs [`BrokerService::trim_topics`] every `interval` while the service lives.
    pub fn start_retention(self: &Arc<Self>, interval: std::time::Duration) {
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(service) = service.upgrade() else {
                    return;
                };
                service.trim_topics().await;
            }
        });
    }

    /// Applies the namespace's backlog quota to every loaded topic, then deletes the ledgers
    /// all its subscriptions consumed that the retention policy does not keep. Returns how
    /// many ledgers went.
    pub async fn trim_topics(&self) -> usize {
        let cells: Vec<_> = self.topics.lock().await.values().cloned().collect();
        let mut deleted = 0;
        for cell in cells {
            let Some(topic) = cell.get() else { continue };
            let policies = match self.namespace_policies(topic.name().namespace()).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(topic = %topic.name(), error = %e, "retention skipped: no policies");
                    continue;
                }
            };
            if let Err(e) = topic.enforce_backlog_quota(policies.backlog_quota).await {
                warn!(topic = %topic.name(), error = %e, "backlog quota check failed");
            }
            match topic.trim(policies.retention).await {
                Ok(gone) => deleted += gone.len(),
                Err(e) => warn!(topic = %topic.name(), error = %e, "retention failed"),
            }
        }
        deleted
    }

    /// Follows the coordinator's decisions, so loaded topics release what their open
    /// transactions held back. After the watch (re)starts, the open transactions of every
    /// loaded topic are checked against their records, so a decision made while the watch was
    /// down is not missed.
    fn start_txn_watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(service) = weak.upgrade() else {
                    return;
                };
                let watcher = service.tables.txns.watch(&(), 0).await;
                let mut watcher = match watcher {
                    Ok(w) => w,
                    Err(e) => {
                        drop(service);
                        warn!(error = %e, "transaction watch failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                service.checkers.forget_asked();
                service.reconcile_txns().await;
                drop(service);
                while let Some(event) = watcher.next().await {
                    let Some(service) = weak.upgrade() else {
                        return;
                    };
                    let Ok(TableEvent::Put { key, value }) = event else {
                        continue;
                    };
                    service.checkers.record_changed(key, &value.record);
                    // Begins and registrations need nothing more here; a decision only
                    // concerns the topics the transaction wrote to or acknowledged on.
                    if value.record.state.is_open() {
                        continue;
                    }
                    for topic in service.loaded_participants(&value.record).await {
                        topic.txn_decided(key, &value.record);
                    }
                }
            }
        });
    }

    /// The topic if it is loaded here, without loading it.
    pub async fn loaded_topic(&self, name: &TopicName) -> Option<Arc<Topic>> {
        self.topics.lock().await.get(name)?.get().cloned()
    }

    async fn loaded_topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .lock()
            .await
            .values()
            .filter_map(|c| c.get().cloned())
            .collect()
    }

    /// The loaded topics a transaction wrote to or acknowledged on.
    async fn loaded_participants(&self, record: &TxnRecord) -> Vec<Arc<Topic>> {
        let names: std::collections::BTreeSet<&str> = record
            .partitions
            .keys()
            .map(String::as_str)
            .chain(record.subscriptions.iter().map(|(t, _)| t.as_str()))
            .collect();
        let topics = self.topics.lock().await;
        names
            .into_iter()
            .filter_map(|n| TopicName::parse(n).ok())
            .filter_map(|n| topics.get(&n).and_then(|c| c.get().cloned()))
            .collect()
    }

    /// Applies the current record of every transaction open in a loaded topic; a topic
    /// whose records cannot be read now is checked again in the background.
    async fn reconcile_txns(&self) {
        for topic in self.loaded_topics().await {
            if let Err(e) = reconcile_topic_txns(&self.txns, &topic).await {
                warn!(topic = %topic.name(), error = %e, "transactions of a topic not checked; retrying");
                tokio::spawn(reconcile_until_done(
                    self.txns.clone(),
                    Arc::downgrade(&topic),
                ));
            }
        }
    }

    /// The ledger client's counters (failovers, corrupt replicas, ensemble changes...).
    pub fn ledger_stats(&self) -> strata_bookie::LedgerClientStats {
        self.ledgers.stats()
    }

    pub fn ownership(&self) -> Option<&Arc<Ownership>> {
        self.ownership.get()
    }

    /// The bundle layout of a namespace (its policy, else four equal bundles).
    fn layout(policies: &NamespacePolicies) -> BundleLayout {
        policies
            .bundles
            .clone()
            .and_then(BundleLayout::from_boundaries)
            .unwrap_or_else(|| BundleLayout::equal(DEFAULT_BUNDLES))
    }

    /// The bundle `topic` belongs to.
    pub async fn bundle_of(&self, topic: &TopicName) -> Result<NamespaceBundle, BrokerError> {
        let policies = self.namespace_policies(topic.namespace()).await?;
        Ok(Self::layout(&policies).bundle_of(topic))
    }

    /// Who serves `topic`: its bundle's owner; an unowned bundle goes to the least-loaded
    /// registered broker (taken here if that is this one, else by that broker when the
    /// client arrives).
    pub async fn lookup(&self, topic: &TopicName) -> Result<TopicOwner, BrokerError> {
        let ownership = self.ownership.get().ok_or(BrokerError::ShuttingDown)?;
        let bundle = self.bundle_of(topic).await?;
        let owner = ownership.owner_of(&bundle).await?;
        let brokers = ownership.brokers().await?;
        let target = match &owner {
            // A record of this broker's previous incarnation (same id, older lease) is
            // taken over by `acquire` below rather than sent to a dead address.
            Some(o) if o.broker_id == *ownership.broker_id() => None,
            Some(o) => {
                return Ok(TopicOwner {
                    broker_id: o.broker_id.clone(),
                    address: o.address.clone(),
                });
            }
            None => least_loaded(&brokers, &bundle),
        };
        match target {
            Some(b) if b.broker_id != *ownership.broker_id() => Ok(TopicOwner {
                broker_id: b.broker_id.clone(),
                address: b.address.clone(),
            }),
            _ => match ownership.acquire(&bundle).await? {
                Acquired::Mine => Ok(TopicOwner {
                    broker_id: ownership.broker_id().clone(),
                    address: ownership.address().to_owned(),
                }),
                Acquired::OwnedBy(r) => Ok(TopicOwner {
                    broker_id: r.broker_id,
                    address: r.address,
                }),
            },
        }
    }

    /// Takes the topic's bundle if it is free; fails with `NotOwner` if another broker has it.
    async fn ensure_owner(
        &self,
        topic: &TopicName,
        policies: &NamespacePolicies,
    ) -> Result<(), BrokerError> {
        let Some(ownership) = self.ownership.get() else {
            return Ok(());
        };
        let bundle = Self::layout(policies).bundle_of(topic);
        match ownership.acquire(&bundle).await? {
            Acquired::Mine => Ok(()),
            Acquired::OwnedBy(r) => Err(BrokerError::NotOwner {
                topic: topic.to_string(),
                broker_id: r.broker_id.0,
                address: r.address,
            }),
        }
    }

    /// The bundles of a namespace with their owners (`None`: unowned).
    pub async fn namespace_bundles(
        &self,
        ns: &NamespaceName,
    ) -> Result<Vec<(NamespaceBundle, Option<TopicOwner>)>, BrokerError> {
        let policies = self.namespace_policies(ns).await?;
        let mut out = Vec::new();
        for bundle in crate::bundles::bundles_of(ns, &Self::layout(&policies)) {
            let owner = self
                .tables
                .ownership
                .get(&bundle)
                .await?
                .map(|row| TopicOwner {
                    broker_id: row.record.broker_id,
                    address: row.record.address,
                });
            out.push((bundle, owner));
        }
        Ok(out)
    }

    /// Unloads a bundle this broker owns: closes its topics (ledgers closed, cursors flushed)
    /// and gives the bundle up, so the next lookup assigns it afresh. `NotOwner` if another
    /// broker owns it; nothing to do if nobody does.
    pub async fn unload_bundle(&self, bundle: &NamespaceBundle) -> Result<(), BrokerError> {
        let Some(ownership) = self.ownership.get() else {
            return Ok(());
        };
        if !ownership.owns(bundle) {
            return match ownership.owner_of(bundle).await? {
                Some(r) if r.broker_id != *ownership.broker_id() => Err(BrokerError::NotOwner {
                    topic: bundle.to_string(),
                    broker_id: r.broker_id.0,
                    address: r.address,
                }),
                _ => Ok(()),
            };
        }
        let layout = Self::layout(&self.namespace_policies(&bundle.namespace).await?);
        let cells: Vec<_> = {
            let mut topics = self.topics.lock().await;
            let names: Vec<TopicName> = topics
                .keys()
                .filter(|t| layout.bundle_of(t) == *bundle)
                .cloned()
                .collect();
            names
                .into_iter()
                .filter_map(|t| topics.remove(&t))
                .collect()
        };
        for cell in cells {
            let Some(topic) = cell.get() else { continue };
            topic.flush_cursors().await;
            if let Err(e) = topic.managed_ledger().close().await {
                warn!(topic = %topic.name(), error = %e, "closing a topic on unload failed; the next owner recovers it");
            }
        }
        ownership.release(bundle).await?;
        info!(bundle = %bundle, "bundle unloaded");
        Ok(())
    }

    /// Splits a bundle at its midpoint. Its owner (or, if nobody owns it, the broker asked)
    /// takes both halves before the namespace's layout names them, then writes the new layout
    /// by compare-and-set, then gives up the old bundle: no lookup can place a topic in a
    /// half another broker holds. Loaded topics stay where they are.
    pub async fn split_bundle(&self, bundle: &NamespaceBundle) -> Result<(), BrokerError> {
        let ownership = self.ownership.get().ok_or(BrokerError::ShuttingDown)?;
        let row = self
            .tables
            .namespaces
            .get(&bundle.namespace)
            .await?
            .ok_or_else(|| BrokerError::NamespaceNotFound(bundle.namespace.to_string()))?;
        let layout = Self::layout(&row.record);
        let split = layout.split(bundle.range).ok_or_else(|| {
            BrokerError::InvalidPolicy(format!(
                "{} is not a bundle of {} that can be split",
                bundle.range, bundle.namespace
            ))
        })?;
        if let Acquired::OwnedBy(r) = ownership.acquire(bundle).await? {
            return Err(BrokerError::NotOwner {
                topic: bundle.to_string(),
                broker_id: r.broker_id.0,
                address: r.address,
            });
        }
        let halves: Vec<NamespaceBundle> = split
            .ranges()
            .into_iter()
            .filter(|r| r.lower() >= bundle.range.lower() && r.upper() <= bundle.range.upper())
            .map(|range| NamespaceBundle {
                namespace: bundle.namespace.clone(),
                range,
            })
            .collect();
        for half in &halves {
            if let Acquired::OwnedBy(r) = ownership.acquire(half).await? {
                return Err(BrokerError::InvalidPolicy(format!(
                    "bundle {half} is already owned by {}",
                    r.broker_id
                )));
            }
        }
        let mut policies = row.record.clone();
        policies.bundles = Some(split.boundaries().to_vec());
        if let Err(e) = self
            .tables
            .namespaces
            .update(&bundle.namespace, &policies, row.version)
            .await
        {
            for half in &halves {
                let _ = ownership.release(half).await;
            }
            return Err(e.into());
        }
        ownership.release(bundle).await?;
        info!(bundle = %bundle, halves = ?halves.iter().map(|h| h.range.to_string()).collect::<Vec<_>>(), "bundle split");
        Ok(())
    }

    /// Drops every loaded topic: its ledger is closed if this broker still can, else left to
    /// the new owner's recovery.
    pub async fn unload_all(&self) {
        let cells: Vec<_> = self.topics.lock().await.drain().map(|(_, c)| c).collect();
        for cell in cells {
            let Some(topic) = cell.get() else { continue };
            topic.flush_cursors().await;
            if let Err(e) = topic.managed_ledger().close().await {
                warn!(topic = %topic.name(), error = %e, "closing an unloaded topic failed; the next owner recovers it");
            }
        }
    }

    /// Creates the namespace if it does not exist (the standalone's `public/default`).
    pub async fn ensure_namespace(
        &self,
        ns: &NamespaceName,
        policies: &NamespacePolicies,
    ) -> Result<(), BrokerError> {
        match self.tables.namespaces.create(ns, policies).await {
            Ok(_) | Err(TableError::VersionMismatch { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn namespace_policies(
        &self,
        ns: &NamespaceName,
    ) -> Result<NamespacePolicies, BrokerError> {
        let row = self
            .tables
            .namespaces
            .get(ns)
            .await?
            .ok_or_else(|| BrokerError::NamespaceNotFound(ns.to_string()))?;
        Ok(row.record)
    }

    /// Creates a namespace with `policies` (and its tenant if it has none yet).
    pub async fn create_namespace(
        &self,
        ns: &NamespaceName,
        policies: &NamespacePolicies,
    ) -> Result<(), BrokerError> {
        validate_policies(policies)?;
        let tenant = TenantName::new(ns.tenant())?;
        let record = TenantRecord {
            created_ms: now_ms(),
            ..TenantRecord::default()
        };
        match self.tables.tenants.create(&tenant, &record).await {
            Ok(_) | Err(TableError::VersionMismatch { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        match self.tables.namespaces.create(ns, policies).await {
            Ok(_) => {
                info!(namespace = %ns, "namespace created");
                Ok(())
            }
            Err(TableError::VersionMismatch { .. }) => {
                Err(BrokerError::NamespaceAlreadyExists(ns.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Changes an existing namespace's policies; `change` edits them (compare-and-set, so
    /// two concurrent updates do not lose each other's changes).
    pub async fn update_namespace(
        &self,
        ns: &NamespaceName,
        change: impl Fn(&mut NamespacePolicies) -> Result<(), BrokerError>,
    ) -> Result<(), BrokerError> {
        loop {
            let row = self
                .tables
                .namespaces
                .get(ns)
                .await?
                .ok_or_else(|| BrokerError::NamespaceNotFound(ns.to_string()))?;
            let mut policies = row.record;
            change(&mut policies)?;
            validate_policies(&policies)?;
            match self
                .tables
                .namespaces
                .update(ns, &policies, row.version)
                .await
            {
                Ok(_) => {
                    info!(namespace = %ns, "namespace policies updated");
                    return Ok(());
                }
                Err(TableError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The namespaces of a tenant, sorted.
    pub async fn list_namespaces(&self, tenant: &str) -> Result<Vec<String>, BrokerError> {
        let tenant = TenantName::new(tenant)?;
        let names = self.tables.namespaces.list_keys(&tenant).await?;
        Ok(names.iter().map(NamespaceName::to_string).collect())
    }

    /// A namespace's policies.
    pub async fn namespace(&self, ns: &NamespaceName) -> Result<NamespacePolicies, BrokerError> {
        self.namespace_policies(ns).await
    }

    /// Deletes an empty namespace.
    pub async fn delete_namespace(&self, ns: &NamespaceName) -> Result<(), BrokerError> {
        self.namespace_policies(ns).await?;
        let topics = self.tables.topics.list_keys(ns).await?.len()
            + self.tables.partitioned_topics.list_keys(ns).await?.len();
        if topics > 0 {
            return Err(BrokerError::NamespaceNotEmpty {
                namespace: ns.to_string(),
                topics,
            });
        }
        self.tables.namespaces.delete(ns, Expect::Any).await?;
        info!(namespace = %ns, "namespace deleted");
        Ok(())
    }

    /// The replication of a namespace's new ledgers: its policy, else the broker's default,
    /// else the ledger client's choice for the bookies registered.
    async fn replication(&self, policies: &NamespacePolicies) -> Result<LedgerConfig, BrokerError> {
        if let Some(r) = policies.replication {
            return Ok(LedgerConfig {
                ensemble_size: r.ensemble_size,
                write_quorum: r.write_quorum,
                ack_quorum: r.ack_quorum,
            });
        }
        match self.config.default_replication {
            Some(config) => Ok(config),
            None => Ok(self.ledgers.default_config().await?),
        }
    }

    /// Creates a topic explicitly.
    pub async fn create_topic(&self, name: &TopicName) -> Result<(), BrokerError> {
        self.namespace_policies(name.namespace()).await?;
        match self.check_not_partitioned(name).await {
            Err(BrokerError::PartitionedTopic(_)) => {
                return Err(BrokerError::TopicAlreadyExists(name.to_string()));
            }
            other => other?,
        }
        match self.put_topic_record(name).await {
            Ok(true) => Ok(()),
            Ok(false) | Err(BrokerError::PartitionedTopic(_)) => {
                Err(BrokerError::TopicAlreadyExists(name.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes a topic's record if neither it nor a partitioned topic of that name exists
    /// (one transaction, so a concurrent partitioned-topic creation cannot slip between the
    /// check and the write). `Ok(false)` if the topic exists.
    async fn put_topic_record(&self, name: &TopicName) -> Result<bool, BrokerError> {
        let record = TopicRecord {
            created_ms: now_ms(),
        };
        let t = &self.tables;
        let txn = strata_metastore::types::Txn {
            compares: vec![
                t.topics.version_is(name, Expect::Absent),
                t.partitioned_topics.version_is(name, Expect::Absent),
            ],
            success: vec![t.topics.put_op(name, &record)?],
            failure: Vec::new(),
        };
        if !t.meta().txn(txn).await.map_err(TableError::from)?.succeeded {
            if self.partitions_of(name).await? > 0 {
                return Err(BrokerError::PartitionedTopic(name.to_string()));
            }
            return Ok(false);
        }
        info!(topic = %name, "topic created");
        Ok(true)
    }

    /// Topics of a namespace, full names, sorted.
    pub async fn list_topics(&self, ns: &NamespaceName) -> Result<Vec<String>, BrokerError> {
        self.namespace_policies(ns).await?;
        let topics = self.tables.topics.list_keys(ns).await?;
        Ok(topics.iter().map(TopicName::to_string).collect())
    }

    /// The loaded topic, loading it (and creating it when the namespace allows) if needed.
    pub async fn topic(
        &self,
        name: &TopicName,
        create_if_missing: bool,
    ) -> Result<Arc<Topic>, BrokerError> {
        let cell = self
            .topics
            .lock()
            .await
            .entry(name.clone())
            .or_default()
            .clone();
        let mut loaded_here = false;
        let loaded = cell
            .get_or_try_init(|| async {
                let policies = self.namespace_policies(name.namespace()).await?;
                self.ensure_owner(name, &policies).await?;
                if self.tables.topics.get(name).await?.is_none() {
                    if !(create_if_missing && policies.auto_create_topics) {
                        return Err(BrokerError::TopicNotFound(name.to_string()));
                    }
                    self.check_not_partitioned(name).await?;
                    // Ok(false): created meanwhile by someone else, as good.
                    self.put_topic_record(name).await?;
                }
                let mut config = crate::admin::with_rollover(
                    self.config.managed_ledger.clone(),
                    policies.ledger_rollover,
                );
                config.ledger = self.replication(&policies).await?;
                let ml = ManagedLedger::open(
                    name.clone(),
                    self.tables.clone(),
                    self.ledgers.clone(),
                    config,
                )
                .await?;
                let topic = Topic::load(
                    name.clone(),
                    ml,
                    self.tables.clone(),
                    self.txns.clone(),
                    self.config.dedup_producer_expiry,
                )
                .await?;
                self.metrics.txns.track(&topic);
                loaded_here = true;
                Ok(topic)
            })
            .await;
        match loaded {
            Ok(t) => {
                let still_mapped = self
                    .topics
                    .lock()
                    .await
                    .get(name)
                    .is_some_and(|c| Arc::ptr_eq(c, &cell));
                if !still_mapped {
                    // Unloaded while it loaded (its bundle released): no watch or later
                    // request would find this copy, so it is not served.
                    if loaded_here && let Err(e) = t.managed_ledger().close().await {
                        warn!(topic = %name, error = %e, "closing a topic unloaded while it loaded failed; the next owner recovers it");
                    }
                    return Err(BrokerError::Retry(format!(
                        "topic {name} was unloaded while it loaded"
                    )));
                }
                if loaded_here {
                    // The load read its transactions' records before the watch could find
                    // the topic: a decision made in between reached no topic. Now the watch
                    // finds it, so they are read again (in a task of its own: the caller
                    // may be dropped).
                    tokio::spawn(reconcile_until_done(self.txns.clone(), Arc::downgrade(t)));
                }
                Ok(t.clone())
            }
            Err(e) => {
                // The empty cell makes the next request try again. Drop it from the map only
                // if nobody else holds it (map + us): a caller still initialising it must not
                // end up with a topic the map no longer knows (two live copies of one topic).
                let mut topics = self.topics.lock().await;
                if topics
                    .get(name)
                    .is_some_and(|c| Arc::ptr_eq(c, &cell) && Arc::strong_count(&cell) == 2)
                {
                    topics.remove(name);
                }
                Err(e)
            }
        }
    }

    /// Deletes a topic: its ledgers, cursors and record.
    pub async fn delete_topic(&self, name: &TopicName) -> Result<(), BrokerError> {
        self.check_not_a_partition(name).await?;
        self.delete_topic_or_partition(name).await
    }

    /// Deletes a topic, also one partition of a partitioned topic (its deletion does that
    /// for each partition).
    pub async fn delete_topic_or_partition(&self, name: &TopicName) -> Result<(), BrokerError> {
        let topic = self.topic(name, false).await?;
        topic.delete().await?;
        self.tables.topics.delete(name, Expect::Any).await?;
        self.topics.lock().await.remove(name);
        info!(topic = %name, "topic deleted");
        Ok(())
    }

    /// Closes every loaded topic's open ledger (graceful shutdown).
    pub async fn close_all(&self) {
        let cells: Vec<_> = self.topics.lock().await.drain().map(|(_, c)| c).collect();
        for cell in cells {
            let Some(topic) = cell.get() else { continue };
            // Acks already applied in memory become durable before the broker goes.
            topic.flush_cursors().await;
            if let Err(e) = topic.managed_ledger().close().await {
                warn!(topic = %topic.name(), error = %e, "closing topic on shutdown failed; it will be recovered on restart");
            }
        }
    }
}

/// Applies the current record of every transaction open in `topic`, retrying after a
/// failure, until that succeeds or the topic is dropped.
async fn reconcile_until_done(txns: TxnCoordinator, topic: std::sync::Weak<Topic>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(topic) = topic.upgrade() else {
            return;
        };
        if reconcile_topic_txns(&txns, &topic).await.is_ok() {
            return;
        }
        drop(topic);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Applies the current record of every transaction open in `topic`.
async fn reconcile_topic_txns(
    txns: &TxnCoordinator,
    topic: &Arc<Topic>,
) -> Result<(), CoordinatorError> {
    let mut failed = Ok(());
    for id in topic.open_txns().await {
        match txns.get(id).await {
            Ok(row) => topic.txn_decided(id, &row.record),
            // Not created yet (a lazy begin's registration under way): its decision comes
            // later, through the watch.
            Err(CoordinatorError::NotFound(_)) => {}
            Err(e) => failed = Err(e),
        }
    }
    failed
}

/// Checks policy values a broker could not act on.
pub fn validate_policies(policies: &NamespacePolicies) -> Result<(), BrokerError> {
    if let Some(r) = policies.replication {
        LedgerConfig {
            ensemble_size: r.ensemble_size,
            write_quorum: r.write_quorum,
            ack_quorum: r.ack_quorum,
        }
        .validate()
        .map_err(|e| BrokerError::InvalidPolicy(e.to_string()))?;
    }
    if let Some(b) = &policies.bundles
        && BundleLayout::from_boundaries(b.clone()).is_none()
    {
        return Err(BrokerError::InvalidPolicy(
            "bundle boundaries must rise strictly from 0 to 4294967295".into(),
        ));
    }
    Ok(())
}
