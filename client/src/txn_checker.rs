//! Check-back (RocketMQ's local-transaction pattern): a producer group registers a checker,
//! and for a prepared transaction of the group left open (its producer went away between
//! `prepare` and `commit`, say), the coordinator asks the checker whether to commit or abort.
//!
//! ```no_run
//! # async fn run(client: strata_client::Client) -> Result<(), strata_client::ClientError> {
//! use strata_client::CheckOutcome;
//! let _checker = client.register_transaction_checker("orders", |txn| async move {
//!     // Look the transaction up in the local database the order was written to.
//!     # let order_exists_for = |_| true;
//!     if order_exists_for(txn) { CheckOutcome::Commit } else { CheckOutcome::Unknown }
//! });
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use strata_proto::TxnId;
use strata_proto::pb::client::{
    ClientFrame, EndTxn, TxnCheckerOpen, admin_request, client_frame, server_frame,
};

use crate::connection::{next_frame, open_stream};
use crate::{Client, ClientError};

/// A checker's answer about one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    Commit,
    Abort,
    /// Not known yet (the local transaction may still be running): ask again later. The
    /// coordinator's timeout aborts it if no answer ever comes.
    Unknown,
}

/// A registered checker; dropping it unregisters it.
pub struct TxnChecker {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TxnChecker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type CheckFuture = std::pin::Pin<Box<dyn Future<Output = CheckOutcome> + Send>>;
type Check = Arc<dyn Fn(TxnId) -> CheckFuture + Send + Sync>;

impl Client {
    /// Registers `checker` for the producer group `group`: the coordinator's questions about
    /// the group's prepared, undecided transactions are passed to it, and its answer ends
    /// the transaction. The session reconnects (to the next broker, if need be) until the
    /// returned handle is dropped.
    pub fn register_transaction_checker<F, Fut>(&self, group: &str, checker: F) -> TxnChecker
    where
        F: Fn(TxnId) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CheckOutcome> + Send + 'static,
    {
        let check: Check = Arc::new(move |id| Box::pin(checker(id)));
        let (client, group) = (self.clone(), group.to_owned());
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match serve_checks(&client, &group, &check).await {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => tracing::warn!(group, error = %e, "checker session failed"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        TxnChecker { task }
    }
}

/// One checker session: answers each question until the stream ends.
async fn serve_checks(client: &Client, group: &str, check: &Check) -> Result<(), ClientError> {
    let conn = client.service_connection().await?;
    let open = ClientFrame {
        frame: Some(client_frame::Frame::CheckerOpen(TxnCheckerOpen {
            group: group.to_owned(),
            client_id: client.client_id().to_owned(),
        })),
    };
    // The writer stays open: finishing it would end the session.
    let (_writer, mut reader) = open_stream(&conn, &open, client.max_frame_size()).await?;
    while let Some(frame) = next_frame(&mut reader).await? {
        let Some(server_frame::Frame::TxnCheck(q)) = frame.frame else {
            return Err(ClientError::Protocol(format!(
                "expected a transaction check, got {:?}",
                frame.frame
            )));
        };
        let (client, group, check) = (client.clone(), group.to_owned(), check.clone());
        tokio::spawn(async move {
            let id = TxnId(q.txn_id);
            let commit = match check(id).await {
                CheckOutcome::Commit => true,
                CheckOutcome::Abort => false,
                CheckOutcome::Unknown => return,
            };
            let request = admin_request::Request::EndTxn(EndTxn {
                txn_id: id.0,
                client_id: client.client_id().to_owned(),
                commit,
                group,
                ..EndTxn::default()
            });
            if let Err(e) = client.admin(request).await {
                tracing::warn!(txn = %id, error = %e, "checker's answer refused");
            }
        });
    }
    Ok(())
}
