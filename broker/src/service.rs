//! The broker's topic registry: creating, loading, listing and deleting topics.

use std::collections::HashMap;
use std::sync::Arc;

use strata_bookie::{LedgerClient, LedgerConfig};
use strata_metastore::tables::{NamespacePolicies, TableError, Tables, TopicRecord, now_ms};
use strata_metastore::{Expect, Meta};
use strata_proto::{NamespaceName, TopicName};
use tokio::sync::{Mutex, OnceCell};
use tracing::{info, warn};

use crate::BrokerError;
use crate::managed_ledger::{ManagedLedger, ManagedLedgerConfig};
use crate::metrics::BrokerMetrics;
use crate::topic::Topic;

#[derive(Debug, Clone, Default)]
pub struct BrokerConfig {
    pub managed_ledger: ManagedLedgerConfig,
    /// Replication of ledgers in namespaces without a replication policy; `None`: what the
    /// ledger client picks from the bookies registered (E3/Qw3/Qa2 on three or more).
    pub default_replication: Option<LedgerConfig>,
}

pub struct BrokerService {
    tables: Tables,
    ledgers: LedgerClient,
    config: BrokerConfig,
    topics: Mutex<HashMap<TopicName, Arc<OnceCell<Arc<Topic>>>>>,
    pub metrics: BrokerMetrics,
}

impl BrokerService {
    pub fn new(meta: impl Into<Meta>, ledgers: LedgerClient, config: BrokerConfig) -> Arc<Self> {
        Arc::new(Self {
            tables: Tables::new(meta),
            ledgers,
            config,
            topics: Mutex::new(HashMap::new()),
            metrics: BrokerMetrics::default(),
        })
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

    async fn namespace_policies(
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
        match self.put_topic_record(name).await {
            Err(BrokerError::Meta(TableError::VersionMismatch { .. })) => {
                Err(BrokerError::TopicAlreadyExists(name.to_string()))
            }
            other => other,
        }
    }

    async fn put_topic_record(&self, name: &TopicName) -> Result<(), BrokerError> {
        let record = TopicRecord {
            created_ms: now_ms(),
        };
        self.tables.topics.create(name, &record).await?;
        info!(topic = %name, "topic created");
        Ok(())
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
        let loaded = cell
            .get_or_try_init(|| async {
                let policies = self.namespace_policies(name.namespace()).await?;
                if self.tables.topics.get(name).await?.is_none() {
                    if !(create_if_missing && policies.auto_create_topics) {
                        return Err(BrokerError::TopicNotFound(name.to_string()));
                    }
                    match self.put_topic_record(name).await {
                        Ok(()) | Err(BrokerError::Meta(TableError::VersionMismatch { .. })) => {}
                        Err(e) => return Err(e),
                    }
                }
                let mut config = self.config.managed_ledger.clone();
                config.ledger = self.replication(&policies).await?;
                let ml = ManagedLedger::open(
                    name.clone(),
                    self.tables.clone(),
                    self.ledgers.clone(),
                    config,
                )
                .await?;
                Ok(Arc::new(Topic::new(name.clone(), ml, self.tables.clone())))
            })
            .await;
        match loaded {
            Ok(t) => Ok(t.clone()),
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
