//! Tenants and partitioned topics: the admin operations above namespaces and topics.
//!
//! A partitioned topic is a record naming its partition count plus one ordinary topic per
//! partition (`<topic>-partition-<i>`), all written in one metastore transaction, so a reader
//! never sees the record without its partitions. Clients route to the partitions; brokers
//! serve each partition as the topic it is.

use strata_metastore::Expect;
use strata_metastore::tables::{
    PartitionedTopicRecord, TableError, TenantName, TenantRecord, TopicRecord, now_ms, partition_of,
};
use strata_metastore::types::Txn;
use strata_proto::TopicName;
use tracing::info;

use crate::{BrokerError, BrokerService};

/// Most partitions a topic may be created with.
pub const MAX_PARTITIONS: u32 = 1024;

impl BrokerService {
    /// Creates a tenant; fails with `TenantAlreadyExists`.
    pub async fn create_tenant(
        &self,
        tenant: &str,
        admin_roles: impl IntoIterator<Item = String>,
    ) -> Result<(), BrokerError> {
        let name = TenantName::new(tenant)?;
        let record = TenantRecord {
            admin_roles: admin_roles.into_iter().collect(),
            created_ms: now_ms(),
        };
        match self.tables.tenants.create(&name, &record).await {
            Ok(_) => {
                info!(tenant, "tenant created");
                Ok(())
            }
            Err(TableError::VersionMismatch { .. }) => {
                Err(BrokerError::TenantAlreadyExists(tenant.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every tenant, sorted.
    pub async fn list_tenants(&self) -> Result<Vec<String>, BrokerError> {
        let names = self.tables.tenants.list_keys(&()).await?;
        Ok(names.iter().map(|t| t.to_string()).collect())
    }

    /// Deletes a tenant that has no namespaces left.
    pub async fn delete_tenant(&self, tenant: &str) -> Result<(), BrokerError> {
        let name = TenantName::new(tenant)?;
        if self.tables.tenants.get(&name).await?.is_none() {
            return Err(BrokerError::TenantNotFound(tenant.to_owned()));
        }
        let namespaces = self.tables.namespaces.list_keys(&name).await?;
        if !namespaces.is_empty() {
            return Err(BrokerError::TenantNotEmpty {
                tenant: tenant.to_owned(),
                namespaces: namespaces.len(),
            });
        }
        self.tables.tenants.delete(&name, Expect::Any).await?;
        info!(tenant, "tenant deleted");
        Ok(())
    }

    /// Creates `topic` with `partitions` partitions. Fails with `TopicAlreadyExists` if a
    /// topic or partitioned topic of that name exists.
    pub async fn create_partitioned_topic(
        &self,
        topic: &TopicName,
        partitions: u32,
    ) -> Result<(), BrokerError> {
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(BrokerError::InvalidPolicy(format!(
                "{topic}: partitions must be 1 to {MAX_PARTITIONS}, got {partitions}"
            )));
        }
        if partition_of(topic).is_some() {
            return Err(BrokerError::InvalidPartitions {
                topic: topic.to_string(),
                reason: "a partition's name cannot be partitioned".into(),
            });
        }
        self.namespace_policies(topic.namespace()).await?;
        let now = now_ms();
        let record = PartitionedTopicRecord {
            partitions,
            created_ms: now,
        };
        let names = record.partition_names(topic)?;
        let tables = &self.tables;
        let mut compares = vec![
            tables.partitioned_topics.version_is(topic, Expect::Absent),
            tables.topics.version_is(topic, Expect::Absent),
        ];
        let mut success = vec![tables.partitioned_topics.put_op(topic, &record)?];
        for name in &names {
            compares.push(tables.topics.version_is(name, Expect::Absent));
            success.push(
                tables
                    .topics
                    .put_op(name, &TopicRecord { created_ms: now })?,
            );
        }
        let response = tables
            .meta()
            .txn(Txn {
                compares,
                success,
                failure: Vec::new(),
            })
            .await
            .map_err(TableError::from)?;
        if !response.succeeded {
            return Err(BrokerError::TopicAlreadyExists(topic.to_string()));
        }
        info!(topic = %topic, partitions, "partitioned topic created");
        Ok(())
    }

    /// How many partitions `topic` has; 0 when it is not a partitioned topic.
    pub async fn partitions_of(&self, topic: &TopicName) -> Result<u32, BrokerError> {
        Ok(self
            .tables
            .partitioned_topics
            .get(topic)
            .await?
            .map_or(0, |row| row.record.partitions))
    }

    /// The partitioned topics of a namespace, sorted.
    pub async fn list_partitioned_topics(
        &self,
        ns: &strata_proto::NamespaceName,
    ) -> Result<Vec<String>, BrokerError> {
        let names = self.tables.partitioned_topics.list_keys(ns).await?;
        Ok(names.iter().map(TopicName::to_string).collect())
    }

    /// Removes a partitioned topic's record. Its partitions must be deleted first (each at
    /// the broker that owns it), so no partition's data outlives the record that names it.
    pub async fn delete_partitioned_topic(&self, topic: &TopicName) -> Result<(), BrokerError> {
        let Some(row) = self.tables.partitioned_topics.get(topic).await? else {
            return Err(BrokerError::TopicNotFound(topic.to_string()));
        };
        for name in row.record.partition_names(topic)? {
            if self.tables.topics.get(&name).await?.is_some() {
                return Err(BrokerError::PartitionConflict {
                    topic: topic.to_string(),
                    reason: format!("partition {name} still exists; delete the partitions first"),
                });
            }
        }
        self.tables
            .partitioned_topics
            .delete(topic, Expect::Version(row.version))
            .await?;
        info!(topic = %topic, "partitioned topic deleted");
        Ok(())
    }

    /// Refuses to delete one partition of a partitioned topic on its own (the partitioned
    /// topic would name a partition that is gone).
    pub(crate) async fn check_not_a_partition(&self, topic: &TopicName) -> Result<(), BrokerError> {
        if let Some((base, index)) = partition_of(topic)
            && index < self.partitions_of(&base).await?
        {
            return Err(BrokerError::PartitionConflict {
                topic: topic.to_string(),
                reason: format!("a partition of {base}; delete the partitioned topic instead"),
            });
        }
        Ok(())
    }

    /// Refuses to create a plain topic where a partitioned topic (or a partition of one that
    /// is out of range) would be shadowed: `x` when `x` is partitioned, `x-partition-7` when
    /// `x` has fewer than 8 partitions.
    pub(crate) async fn check_not_partitioned(&self, topic: &TopicName) -> Result<(), BrokerError> {
        if self.partitions_of(topic).await? > 0 {
            return Err(BrokerError::PartitionedTopic(topic.to_string()));
        }
        if let Some((base, index)) = partition_of(topic) {
            let partitions = self.partitions_of(&base).await?;
            if partitions > 0 && index >= partitions {
                return Err(BrokerError::PartitionConflict {
                    topic: topic.to_string(),
                    reason: format!("{base} has only {partitions} partitions"),
                });
            }
        }
        Ok(())
    }
}
