//! Transactions: messages produced and acks made in one commit or abort together.
//!
//! ```no_run
//! # async fn run(client: strata_client::Client) -> Result<(), strata_client::ClientError> {
//! let txn = client.new_transaction().timeout(std::time::Duration::from_secs(30)).begin().await?;
//! // ... sends and acks in `txn` ...
//! txn.commit().await?; // all of it, or (after an error) none of it
//! # Ok(()) }
//! ```
//!
//! Begin is lazy where the broker allows it (as Kafka's): it only takes an id, and the
//! transaction's first send or ack creates it at the coordinator; every write carries what
//! it needs for that.
//!
//! The client remembers, per partition, the last entry a send of the transaction was stored
//! at; `commit` waits until every send is acknowledged and passes those positions to the
//! coordinator, which treats anything the transaction wrote after them as aborted. A failed
//! send makes `commit` abort the transaction and fail.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_proto::pb::client::{
    BeginTxn, EndTxn, InitTxnProducer, PartitionEnd, PrepareTxn, TxnInfo, TxnStart, admin_request,
    admin_response,
};
use strata_proto::{ErrorCode, Position, TxnId, WireError};
use tokio::sync::Notify;

use crate::{Client, ClientError};

pub struct TransactionBuilder {
    client: Client,
    timeout: Option<Duration>,
    check_back: Option<(String, Option<Duration>)>,
}

impl TransactionBuilder {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            timeout: None,
            check_back: None,
        }
    }

    /// How long the transaction may stay open before the coordinator aborts it (default:
    /// the coordinator's, 60 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Check-back: once [`Transaction::prepare`]d, a checker of producer `group` (see
    /// [`Client::register_transaction_checker`]) is asked every `interval` (`None`: the
    /// coordinator's default, 5 s) whether to commit or abort it, until it is decided.
    pub fn check_back(mut self, group: &str, interval: Option<Duration>) -> Self {
        self.check_back = Some((group.to_owned(), interval));
        self
    }

    pub async fn begin(self) -> Result<Transaction, ClientError> {
        let (producer_name, producer_epoch) = self.client.txn_producer().unwrap_or_default();
        let request = admin_request::Request::BeginTxn(BeginTxn {
            client_id: self.client.client_id().to_owned(),
            timeout_ms: self.timeout.map_or(0, |d| d.as_millis().max(1) as u64),
            producer_name,
            producer_epoch,
            group: self
                .check_back
                .as_ref()
                .map(|(g, _)| g.clone())
                .unwrap_or_default(),
            check_interval_ms: self
                .check_back
                .and_then(|(_, i)| i)
                .map_or(0, |d| d.as_millis().max(1) as u64),
            lazy: true,
        });
        let info = txn_info(self.client.admin(request).await?)?;
        Ok(Transaction {
            inner: Arc::new(Inner {
                client: self.client,
                id: TxnId(info.txn_id),
                start: info.start,
                local: Mutex::new(Local::default()),
                settled: Notify::new(),
            }),
        })
    }
}

/// An open transaction. Cheap to clone; every clone is the same transaction.
#[derive(Clone)]
pub struct Transaction {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    id: TxnId,
    /// Lazy begin: what the transaction's writes carry to create it (`None`: the broker
    /// wrote it at begin).
    start: Option<TxnStart>,
    local: Mutex<Local>,
    /// Signalled whenever a send of the transaction settles.
    settled: Notify,
}

#[derive(Default)]
struct Local {
    /// Per partition, the last entry a send was stored at.
    last: BTreeMap<String, Position>,
    /// Sends not yet acknowledged.
    pending: usize,
    /// The first send that failed.
    failed: Option<ClientError>,
    /// `prepare` was called: no more sends.
    prepared: bool,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl Transaction {
    pub fn id(&self) -> TxnId {
        self.inner.id
    }

    /// The id of the client that began it (only its producers and consumers may use it).
    pub fn client_id(&self) -> &str {
        self.inner.client.client_id()
    }

    /// What a write of the transaction carries (lazy begin).
    pub(crate) fn wire_start(&self) -> Option<TxnStart> {
        self.inner.start.clone()
    }

    /// Whether [`Transaction::prepare`] was called (sends are refused from then on).
    pub fn is_prepared(&self) -> bool {
        self.local().prepared
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.inner.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A send of the transaction was handed to a producer.
    pub(crate) fn send_started(&self) {
        self.local().pending += 1;
    }

    /// A send (or an ack) of the transaction settled: stored on `topic` at a position
    /// (`None`: no position to record: an ack, or a send stored before), or failed.
    pub(crate) fn send_settled(
        &self,
        topic: &str,
        outcome: Option<Result<Position, &ClientError>>,
    ) {
        let mut local = self.local();
        local.pending = local.pending.saturating_sub(1);
        match outcome {
            Some(Ok(p)) => {
                let last = local.last.entry(topic.to_owned()).or_insert(p);
                *last = (*last).max(p);
            }
            Some(Err(e)) if local.failed.is_none() => local.failed = Some(copy_error(e)),
            Some(Err(_)) => {}
            None => {}
        }
        drop(local);
        self.inner.settled.notify_waiters();
    }

    /// Waits for every send, then commits. If a send failed, the transaction is aborted
    /// instead and the send's error returned. Retrying a commit that went through answers
    /// `Ok` again.
    pub async fn commit(&self) -> Result<(), ClientError> {
        let partitions = self.settled_ends().await?;
        self.end(true, partitions).await
    }

    /// Check-back: waits for every send and records where they end, so that from now on a
    /// checker of the transaction's group can commit it without this client (run the local
    /// transaction after this, then commit). No more sends to new partitions are accepted.
    /// If a send failed, the transaction is aborted and the send's error returned.
    pub async fn prepare(&self) -> Result<(), ClientError> {
        self.local().prepared = true;
        let partitions = self.settled_ends().await?;
        let request = admin_request::Request::PrepareTxn(PrepareTxn {
            txn_id: self.inner.id.0,
            client_id: self.inner.client.client_id().to_owned(),
            partitions,
            txn_start: self.wire_start(),
        });
        txn_info(self.inner.client.admin(request).await?).map(drop)
    }

    /// Waits until every send has settled; then the last position stored per partition,
    /// or (after a failed send) the abort and that send's error.
    async fn settled_ends(&self) -> Result<Vec<PartitionEnd>, ClientError> {
        loop {
            let notified = self.inner.settled.notified();
            if self.local().pending == 0 {
                break;
            }
            notified.await;
        }
        let (last, failed) = {
            let local = self.local();
            (local.last.clone(), local.failed.as_ref().map(copy_error))
        };
        if let Some(e) = failed {
            // The send's error is the one to report: the abort may find nothing to abort (a
            // first write refused after the deadline) or fail, and the timeout ends it then.
            if let Err(abort) = self.abort().await {
                tracing::debug!(txn = %self.inner.id, error = %abort, "abort after a failed send");
            }
            return Err(e);
        }
        Ok(last
            .into_iter()
            .map(|(topic, p)| PartitionEnd {
                topic,
                last: Some(strata_proto::MessageId::at(p, 0).into()),
            })
            .collect())
    }

    /// Aborts: nothing sent in the transaction is delivered, and its acks are released.
    pub async fn abort(&self) -> Result<(), ClientError> {
        self.end(false, Vec::new()).await
    }

    async fn end(&self, commit: bool, partitions: Vec<PartitionEnd>) -> Result<(), ClientError> {
        let request = admin_request::Request::EndTxn(EndTxn {
            txn_id: self.inner.id.0,
            client_id: self.inner.client.client_id().to_owned(),
            commit,
            partitions,
            txn_start: self.wire_start(),
            ..EndTxn::default()
        });
        txn_info(self.inner.client.admin(request).await?).map(drop)
    }
}

fn txn_info(response: admin_response::Response) -> Result<TxnInfo, ClientError> {
    match response {
        admin_response::Response::Txn(t) => Ok(t),
        other => Err(ClientError::Protocol(format!(
            "expected a transaction, got {other:?}"
        ))),
    }
}

/// The error to report again later (client errors are not `Clone`).
fn copy_error(e: &ClientError) -> ClientError {
    match e {
        ClientError::Server(w) => ClientError::Server(w.clone()),
        other => ClientError::Server(WireError::new(ErrorCode::Unknown, other.to_string())),
    }
}

impl Client {
    /// Makes this client the current instance of the transactional producer `name` (Kafka's
    /// `transactional.id`): it takes the next epoch, and the coordinator aborts every open
    /// transaction of the older instances. From then on, an older instance that still runs
    /// (a zombie) gets `ProducerFenced` when it begins, and its transactions are aborted, so
    /// the two never both commit the same work. Returns the epoch.
    pub async fn init_transactions(&self, name: &str) -> Result<u64, ClientError> {
        let request = admin_request::Request::InitTxnProducer(InitTxnProducer {
            name: name.to_owned(),
            client_id: self.client_id().to_owned(),
        });
        match self.admin(request).await? {
            admin_response::Response::TxnProducer(p) => {
                let mut current = self
                    .inner
                    .txn_producer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                *current = Some((p.name, p.epoch));
                Ok(p.epoch)
            }
            other => Err(ClientError::Protocol(format!(
                "expected a producer epoch, got {other:?}"
            ))),
        }
    }

    /// The transactional producer this client is the current instance of, with its epoch.
    pub fn txn_producer(&self) -> Option<(String, u64)> {
        self.inner
            .txn_producer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts building a transaction.
    pub fn new_transaction(&self) -> TransactionBuilder {
        TransactionBuilder::new(self.clone())
    }

    /// An operator's view of a transaction.
    pub async fn transaction_info(&self, id: TxnId) -> Result<TxnInfo, ClientError> {
        txn_info(
            self.admin(admin_request::Request::GetTxn(
                strata_proto::pb::client::GetTxn { txn_id: id.0 },
            ))
            .await?,
        )
    }

    /// Every transaction (only open ones with `open_only`).
    pub async fn list_transactions(&self, open_only: bool) -> Result<Vec<TxnInfo>, ClientError> {
        match self
            .admin(admin_request::Request::ListTxns(
                strata_proto::pb::client::ListTxns { open_only },
            ))
            .await?
        {
            admin_response::Response::Txns(l) => Ok(l.txns),
            other => Err(ClientError::Protocol(format!(
                "expected transactions, got {other:?}"
            ))),
        }
    }

    /// Aborts any client's transaction (operators).
    pub async fn abort_transaction(&self, id: TxnId) -> Result<TxnInfo, ClientError> {
        txn_info(
            self.admin(admin_request::Request::EndTxn(EndTxn {
                txn_id: id.0,
                operator: true,
                ..EndTxn::default()
            }))
            .await?,
        )
    }
}
