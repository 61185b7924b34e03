//! Admin calls for tenants, partitioned topics and namespace policy changes.

use strata_proto::pb::client::{
    CreateNamespace, CreatePartitionedTopic, CreateTenant, DeletePartitionedTopic, DeleteTenant,
    ListTenants, ListTopics, PartitionedTopicMetadata, admin_request, admin_response,
};
use strata_proto::{ErrorCode, TopicName};

use crate::{Client, ClientError};

impl Client {
    /// Creates a tenant; `TenantAlreadyExists` if it exists.
    pub async fn create_tenant(
        &self,
        tenant: &str,
        admin_roles: Vec<String>,
    ) -> Result<(), ClientError> {
        self.admin(admin_request::Request::CreateTenant(CreateTenant {
            tenant: tenant.to_owned(),
            admin_roles,
        }))
        .await
        .map(drop)
    }

    /// Every tenant.
    pub async fn list_tenants(&self) -> Result<Vec<String>, ClientError> {
        match self
            .admin(admin_request::Request::ListTenants(ListTenants {}))
            .await?
        {
            admin_response::Response::Tenants(t) => Ok(t.tenants),
            other => Err(unexpected("a tenant list", other)),
        }
    }

    /// Deletes a tenant without namespaces; `TenantNotEmpty` otherwise.
    pub async fn delete_tenant(&self, tenant: &str) -> Result<(), ClientError> {
        self.admin(admin_request::Request::DeleteTenant(DeleteTenant {
            tenant: tenant.to_owned(),
        }))
        .await
        .map(drop)
    }

    /// Changes an existing namespace's policies: the fields set in `request` replace the
    /// stored ones, the others stay.
    pub async fn update_namespace(&self, request: CreateNamespace) -> Result<(), ClientError> {
        self.admin(admin_request::Request::UpdateNamespace(request))
            .await
            .map(drop)
    }

    /// Creates a topic of `partitions` partitions (`<topic>-partition-<i>`).
    pub async fn create_partitioned_topic(
        &self,
        topic: &str,
        partitions: u32,
    ) -> Result<(), ClientError> {
        self.admin(admin_request::Request::CreatePartitionedTopic(
            CreatePartitionedTopic {
                topic: topic.to_owned(),
                partitions,
            },
        ))
        .await
        .map(drop)
    }

    /// How many partitions `topic` has; 0 when it is not partitioned.
    pub async fn partitions(&self, topic: &str) -> Result<u32, ClientError> {
        match self
            .admin(admin_request::Request::PartitionedTopicMetadata(
                PartitionedTopicMetadata {
                    topic: topic.to_owned(),
                },
            ))
            .await?
        {
            admin_response::Response::Partitioned(p) => Ok(p.partitions),
            other => Err(unexpected("partitioned topic metadata", other)),
        }
    }

    /// The names a producer or consumer of `topic` works on: its partitions in index order,
    /// or the topic itself when it is not partitioned.
    pub(crate) async fn partition_names(
        &self,
        topic: &TopicName,
    ) -> Result<Vec<TopicName>, ClientError> {
        let n = self.partitions(&topic.to_string()).await?;
        if n == 0 {
            return Ok(vec![topic.clone()]);
        }
        (0..n)
            .map(|i| {
                TopicName::parse(&format!("{}-partition-{i}", topic.path())).map_err(Into::into)
            })
            .collect()
    }

    /// Deletes a partitioned topic: every partition at its owner (messages and
    /// subscriptions), then the record. Safe to retry after a failure part-way.
    pub async fn delete_partitioned_topic(&self, topic: &str) -> Result<(), ClientError> {
        let name = TopicName::parse(topic)?;
        let n = self.partitions(topic).await?;
        if n == 0 {
            return Err(ClientError::Server(strata_proto::WireError::new(
                ErrorCode::TopicNotFound,
                format!("{name} is not a partitioned topic"),
            )));
        }
        for partition in self.partition_names(&name).await? {
            match self.delete_at_owner(&partition.to_string(), true).await {
                Ok(()) => {}
                Err(ClientError::Server(e)) if e.code == ErrorCode::TopicNotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.admin(admin_request::Request::DeletePartitionedTopic(
            DeletePartitionedTopic {
                topic: topic.to_owned(),
            },
        ))
        .await
        .map(drop)
    }

    /// The partitioned topics of `namespace` (empty: `public/default`).
    pub async fn list_partitioned_topics(
        &self,
        namespace: &str,
    ) -> Result<Vec<String>, ClientError> {
        match self
            .admin(admin_request::Request::ListTopics(ListTopics {
                namespace: namespace.to_owned(),
            }))
            .await?
        {
            admin_response::Response::Topics(t) => Ok(t.partitioned),
            other => Err(unexpected("a topic list", other)),
        }
    }
}

fn unexpected(what: &str, got: admin_response::Response) -> ClientError {
    ClientError::Protocol(format!("expected {what}, got {got:?}"))
}
