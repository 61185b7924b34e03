//! Topic administration: request/response exchanges, each on its own short-lived stream.

use strata_proto::pb::client::{
    AdminRequest, BundleInfo, ClientFrame, CreateNamespace, CreateTopic, DeleteNamespace,
    DeleteTopic, GetNamespace, ListNamespaces, ListTopics, NamespaceBundles, SplitBundle,
    TopicStats, TopicStatsReply, UnloadBundle, admin_request, admin_response, client_frame,
    server_frame,
};

use crate::connection::{next_frame, open_stream};
use crate::{Client, ClientError};

impl Client {
    pub(crate) async fn admin(
        &self,
        request: admin_request::Request,
    ) -> Result<admin_response::Response, ClientError> {
        let conn = self.service_connection().await?;
        self.admin_on(&conn, request).await
    }

    /// An admin request about `topic`, sent to the broker that owns it.
    pub(crate) async fn topic_admin(
        &self,
        topic: &str,
        request: admin_request::Request,
    ) -> Result<admin_response::Response, ClientError> {
        let owner = self.lookup(topic).await?;
        let conn = self.connection_to(&owner.address).await?;
        self.admin_on(&conn, request).await
    }

    async fn admin_on(
        &self,
        conn: &quinn::Connection,
        request: admin_request::Request,
    ) -> Result<admin_response::Response, ClientError> {
        let frame = ClientFrame {
            frame: Some(client_frame::Frame::Admin(AdminRequest {
                request: Some(request),
            })),
        };
        let (mut writer, mut reader) = open_stream(conn, &frame, self.max_frame_size()).await?;
        writer.finish();
        match next_frame(&mut reader).await? {
            Some(f) => match f.frame {
                Some(server_frame::Frame::Admin(r)) => match r.response {
                    Some(admin_response::Response::Error(e)) => Err(ClientError::Server(e.into())),
                    Some(resp) => Ok(resp),
                    None => Err(ClientError::Protocol("empty admin response".into())),
                },
                other => Err(ClientError::Protocol(format!(
                    "expected an admin response, got {other:?}"
                ))),
            },
            None => Err(ClientError::Protocol(
                "stream ended without an admin response".into(),
            )),
        }
    }

    /// Creates a topic; fails with `TopicAlreadyExists` if it exists.
    pub async fn create_topic(&self, topic: &str) -> Result<(), ClientError> {
        self.admin(admin_request::Request::CreateTopic(CreateTopic {
            topic: topic.to_owned(),
        }))
        .await
        .map(drop)
    }

    /// Deletes a topic with its messages and subscriptions.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), ClientError> {
        self.delete_at_owner(topic, false).await
    }

    /// Deletes a topic at its owner; `partition`: one partition of a partitioned topic
    /// being deleted.
    pub(crate) async fn delete_at_owner(
        &self,
        topic: &str,
        partition: bool,
    ) -> Result<(), ClientError> {
        self.topic_admin(
            topic,
            admin_request::Request::DeleteTopic(DeleteTopic {
                topic: topic.to_owned(),
                partition,
            }),
        )
        .await
        .map(drop)
    }

    /// Topics of `namespace` (`tenant/namespace`; empty means `public/default`).
    pub async fn list_topics(&self, namespace: &str) -> Result<Vec<String>, ClientError> {
        match self
            .admin(admin_request::Request::ListTopics(ListTopics {
                namespace: namespace.to_owned(),
            }))
            .await?
        {
            admin_response::Response::Topics(t) => Ok(t.topics),
            other => Err(ClientError::Protocol(format!(
                "expected a topic list, got {other:?}"
            ))),
        }
    }

    /// Entries, size and subscription backlogs of a topic.
    pub async fn topic_stats(&self, topic: &str) -> Result<TopicStatsReply, ClientError> {
        match self
            .topic_admin(
                topic,
                admin_request::Request::TopicStats(TopicStats {
                    topic: topic.to_owned(),
                }),
            )
            .await?
        {
            admin_response::Response::Stats(s) => Ok(s),
            other => Err(ClientError::Protocol(format!(
                "expected topic stats, got {other:?}"
            ))),
        }
    }

    /// Creates a namespace (`tenant/namespace`); unset fields of `request` take the
    /// defaults. Fails with `NamespaceAlreadyExists` or `InvalidPolicy`.
    pub async fn create_namespace(&self, request: CreateNamespace) -> Result<(), ClientError> {
        self.admin(admin_request::Request::CreateNamespace(request))
            .await
            .map(drop)
    }

    /// The namespaces of a tenant.
    pub async fn list_namespaces(&self, tenant: &str) -> Result<Vec<String>, ClientError> {
        match self
            .admin(admin_request::Request::ListNamespaces(ListNamespaces {
                tenant: tenant.to_owned(),
            }))
            .await?
        {
            admin_response::Response::Namespaces(n) => Ok(n.namespaces),
            other => Err(ClientError::Protocol(format!(
                "expected a namespace list, got {other:?}"
            ))),
        }
    }

    /// Deletes an empty namespace; `NamespaceNotEmpty` while it has topics.
    pub async fn delete_namespace(&self, namespace: &str) -> Result<(), ClientError> {
        self.admin(admin_request::Request::DeleteNamespace(DeleteNamespace {
            namespace: namespace.to_owned(),
        }))
        .await
        .map(drop)
    }

    /// A namespace's policies, as the stored JSON.
    pub async fn namespace_policies(&self, namespace: &str) -> Result<String, ClientError> {
        match self
            .admin(admin_request::Request::GetNamespace(GetNamespace {
                namespace: namespace.to_owned(),
            }))
            .await?
        {
            admin_response::Response::Namespace(n) => Ok(n.policies_json),
            other => Err(ClientError::Protocol(format!(
                "expected namespace policies, got {other:?}"
            ))),
        }
    }

    /// A namespace's bundles and their owners.
    pub async fn namespace_bundles(&self, namespace: &str) -> Result<Vec<BundleInfo>, ClientError> {
        match self
            .admin(admin_request::Request::NamespaceBundles(NamespaceBundles {
                namespace: namespace.to_owned(),
            }))
            .await?
        {
            admin_response::Response::Bundles(b) => Ok(b.bundles),
            other => Err(ClientError::Protocol(format!(
                "expected a bundle list, got {other:?}"
            ))),
        }
    }

    /// Unloads every owned bundle of a namespace, each at its owner: its topics close and
    /// the next lookups assign the bundles again. Returns how many bundles were unloaded.
    pub async fn unload_namespace(&self, namespace: &str) -> Result<usize, ClientError> {
        let mut unloaded = 0;
        for bundle in self.namespace_bundles(namespace).await? {
            if bundle.owner_address.is_empty() {
                continue;
            }
            let conn = self.connection_to(&bundle.owner_address).await?;
            self.admin_on(
                &conn,
                admin_request::Request::UnloadBundle(UnloadBundle {
                    namespace: namespace.to_owned(),
                    range: bundle.range.clone(),
                }),
            )
            .await?;
            unloaded += 1;
        }
        Ok(unloaded)
    }

    /// Splits the bundle `range` (as `namespace_bundles` lists it) in two at its owner.
    pub async fn split_bundle(&self, namespace: &str, range: &str) -> Result<(), ClientError> {
        let owner = self
            .namespace_bundles(namespace)
            .await?
            .into_iter()
            .find(|b| b.range == range)
            .map(|b| b.owner_address)
            .unwrap_or_default();
        let request = admin_request::Request::SplitBundle(SplitBundle {
            namespace: namespace.to_owned(),
            range: range.to_owned(),
        });
        if owner.is_empty() {
            return self.admin(request).await.map(drop);
        }
        let conn = self.connection_to(&owner).await?;
        self.admin_on(&conn, request).await.map(drop)
    }

    /// The subscriptions of a topic.
    pub async fn list_subscriptions(&self, topic: &str) -> Result<Vec<String>, ClientError> {
        let request = admin_request::Request::ListSubscriptions(
            strata_proto::pb::client::ListSubscriptions {
                topic: topic.to_owned(),
            },
        );
        match self.topic_admin(topic, request).await? {
            admin_response::Response::Subscriptions(l) => Ok(l.subscriptions),
            other => Err(ClientError::Protocol(format!(
                "expected a subscription list, got {other:?}"
            ))),
        }
    }

    /// Moves a subscription's cursor to `target`; its consumers resubscribe from there.
    pub async fn reset_cursor(
        &self,
        topic: &str,
        subscription: &str,
        target: strata_proto::pb::client::reset_cursor::Target,
    ) -> Result<(), ClientError> {
        let request = admin_request::Request::ResetCursor(strata_proto::pb::client::ResetCursor {
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
            target: Some(target),
        });
        self.topic_admin(topic, request).await.map(drop)
    }

    /// The next `count` unacknowledged messages of a subscription, left unacknowledged.
    pub async fn peek_messages(
        &self,
        topic: &str,
        subscription: &str,
        count: u32,
    ) -> Result<Vec<crate::ReceivedMessage>, ClientError> {
        let name = strata_proto::TopicName::parse(topic)?;
        let request =
            admin_request::Request::PeekMessages(strata_proto::pb::client::PeekMessages {
                topic: topic.to_owned(),
                subscription: subscription.to_owned(),
                count,
            });
        match self.topic_admin(topic, request).await? {
            admin_response::Response::Messages(d) => Ok(d
                .messages
                .into_iter()
                .filter_map(|m| crate::consumer::received(&name, m))
                .collect()),
            other => Err(ClientError::Protocol(format!(
                "expected messages, got {other:?}"
            ))),
        }
    }

    /// Acknowledges the next `count` unacknowledged messages of a subscription.
    pub async fn skip_messages(
        &self,
        topic: &str,
        subscription: &str,
        count: u32,
    ) -> Result<(), ClientError> {
        let request =
            admin_request::Request::SkipMessages(strata_proto::pb::client::SkipMessages {
                topic: topic.to_owned(),
                subscription: subscription.to_owned(),
                count,
            });
        self.topic_admin(topic, request).await.map(drop)
    }
}
