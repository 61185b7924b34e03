//! A loaded topic: its managed ledger and its subscriptions.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use strata_metastore::tables::{Tables, now_ms};
use strata_proto::TopicName;
use strata_proto::pb::client::{InitialPosition, Message, StoredBatch};
use tokio::sync::Mutex;

use crate::BrokerError;
use crate::managed_ledger::{ManagedLedger, PendingAppend};
use crate::subscription::Subscription;

/// Format version written into every stored batch.
pub const STORED_BATCH_FORMAT: u32 = 1;

pub struct Topic {
    name: TopicName,
    ml: Arc<ManagedLedger>,
    tables: Tables,
    subscriptions: Mutex<HashMap<String, Arc<Subscription>>>,
}

impl Topic {
    pub fn new(name: TopicName, ml: Arc<ManagedLedger>, tables: Tables) -> Self {
        Self {
            name,
            ml,
            tables,
            subscriptions: Mutex::new(HashMap::new()),
        }
    }

    pub fn name(&self) -> &TopicName {
        &self.name
    }

    pub fn managed_ledger(&self) -> &Arc<ManagedLedger> {
        &self.ml
    }

    /// Stores one producer batch as one entry; the future resolves once it is durable.
    pub async fn publish(
        &self,
        producer_name: &str,
        sequence_id: u64,
        messages: Vec<Message>,
    ) -> Result<PendingAppend, BrokerError> {
        let batch = StoredBatch {
            format_version: STORED_BATCH_FORMAT,
            producer_name: producer_name.to_owned(),
            sequence_id,
            publish_time_ms: now_ms(),
            messages,
        };
        self.ml.append(Bytes::from(batch.encode_to_vec())).await
    }

    /// The named subscription, created at `initial` if new.
    pub async fn subscription(
        &self,
        name: &str,
        initial: InitialPosition,
    ) -> Result<Arc<Subscription>, BrokerError> {
        let mut subs = self.subscriptions.lock().await;
        if let Some(s) = subs.get(name) {
            return Ok(s.clone());
        }
        let sub = Subscription::open(self.ml.clone(), self.tables.clone(), name, initial).await?;
        subs.insert(name.to_owned(), sub.clone());
        Ok(sub)
    }

    /// Makes every loaded subscription's cursor durable (graceful shutdown).
    pub async fn flush_cursors(&self) {
        for sub in self.subscriptions.lock().await.values() {
            if let Err(e) = sub.flush().await {
                tracing::warn!(topic = %self.name, subscription = %sub.name(), error = %e, "cursor not flushed on shutdown");
            }
        }
    }

    /// Names of the subscriptions persisted for this topic.
    pub async fn subscription_names(&self) -> Result<Vec<String>, BrokerError> {
        let keys = self.tables.cursors.list_keys(&self.name).await?;
        Ok(keys.into_iter().map(|k| k.subscription).collect())
    }

    /// Deletes the log and every cursor.
    pub async fn delete(&self) -> Result<(), BrokerError> {
        self.ml.delete().await?;
        let gone = BrokerError::TopicDeleted(self.name.to_string());
        for sub in self.subscriptions.lock().await.values() {
            sub.terminate(&gone).await;
        }
        self.tables.cursors.delete_all(&self.name).await?;
        Ok(())
    }
}
