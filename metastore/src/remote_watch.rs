//! [`RemoteWatcher`]: a watch on a metastore cluster from another process, which survives the
//! loss of the node serving it.
//!
//! Any node serves a watch from its own applied state. The watcher remembers the revision it
//! needs next; when its stream breaks it asks another node to continue from there, and drops
//! anything older that a lagging node replays. So the caller sees every change once, in
//! revision order, across reconnects and leader changes — or a typed error (`Compacted` when
//! the history it needs is gone, or no node reachable within the request timeout).

use std::time::Duration;

use strata_proto::pb::metastore::WatchEvent;
use strata_transport::FrameReader;
use tokio::time::Instant;
use tracing::debug;

use crate::MetaError;
use crate::client::MetaClient;
use crate::rpc::{NodeRequest, NodeResponse, RemoteError};

/// Pause between rounds over every address while no node serves the watch.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A resuming stream of changes under a prefix. Created by [`MetaClient::watch`].
pub struct RemoteWatcher {
    client: MetaClient,
    prefix: String,
    /// The next revision to deliver (0 until the first node said where "now" is).
    next_rev: u64,
    stream: Option<FrameReader>,
    finished: bool,
}

impl std::fmt::Debug for RemoteWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWatcher")
            .field("prefix", &self.prefix)
            .field("next_rev", &self.next_rev)
            .field("connected", &self.stream.is_some())
            .finish()
    }
}

impl RemoteWatcher {
    /// Starts watching; returns once a node serves the watch (so "from now" is fixed).
    pub(crate) async fn start(
        client: MetaClient,
        prefix: &str,
        from_revision: u64,
    ) -> Result<RemoteWatcher, MetaError> {
        let mut watcher = RemoteWatcher {
            client,
            prefix: prefix.to_owned(),
            next_rev: from_revision,
            stream: None,
            finished: false,
        };
        watcher.reconnect().await?;
        Ok(watcher)
    }

    /// The next change; `None` after an error was returned.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, MetaError>> {
        if self.finished {
            return None;
        }
        loop {
            let Some(stream) = self.stream.as_mut() else {
                if let Err(e) = self.reconnect().await {
                    self.finished = true;
                    return Some(Err(e));
                }
                continue;
            };
            let response = match stream.recv_raw().await {
                Ok(Some(body)) => serde_json::from_slice::<NodeResponse>(&body)
                    .map_err(|e| format!("undecodable watch frame: {e}")),
                Ok(None) => Err("the node ended the watch".to_owned()),
                Err(e) => Err(e.to_string()),
            };
            match response {
                Ok(NodeResponse::WatchEvent(Ok(event))) => {
                    if event.revision < self.next_rev {
                        continue; // replayed by a node that was behind: seen already
                    }
                    self.next_rev = event.revision + 1;
                    return Some(Ok(event.into_event()));
                }
                Ok(NodeResponse::WatchEvent(Err(RemoteError::Compacted { requested, oldest }))) => {
                    self.finished = true;
                    return Some(Err(MetaError::Compacted { requested, oldest }));
                }
                Ok(other) => {
                    debug!(?other, "watch stream broke; resuming elsewhere");
                    self.stream = None;
                }
                Err(reason) => {
                    debug!(%reason, "watch stream broke; resuming elsewhere");
                    self.stream = None;
                }
            }
        }
    }

    /// Opens the watch on the next node that serves it, from `next_rev`.
    async fn reconnect(&mut self) -> Result<(), MetaError> {
        let timeout = self.client.request_timeout();
        let deadline = Instant::now() + timeout;
        let addrs = self.client.addrs().len();
        let mut tried = 0;
        loop {
            let addr = self.client.next_addr();
            let request = NodeRequest::Watch {
                prefix: self.prefix.clone(),
                from_revision: self.next_rev,
            };
            let why = match self
                .client
                .peers()
                .open_stream(&addr, &request, crate::rpc::FORWARD_TIMEOUT)
                .await
            {
                Ok(mut stream) => match stream.recv_raw().await {
                    Ok(Some(body)) => match serde_json::from_slice::<NodeResponse>(&body) {
                        Ok(NodeResponse::WatchStarted(Ok(from))) => {
                            // A node behind us starts lower; events below next_rev are skipped.
                            if self.next_rev == 0 {
                                self.next_rev = from;
                            }
                            self.stream = Some(stream);
                            return Ok(());
                        }
                        Ok(NodeResponse::WatchStarted(Err(e))) => {
                            let e = MetaError::from(e);
                            if matches!(e, MetaError::Compacted { .. }) {
                                return Err(e);
                            }
                            e.to_string()
                        }
                        Ok(other) => format!("unexpected answer {other:?}"),
                        Err(e) => format!("undecodable answer: {e}"),
                    },
                    Ok(None) => "stream ended".to_owned(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            self.client.skip_addr();
            tried += 1;
            if Instant::now() >= deadline {
                return Err(MetaError::Raft(format!(
                    "no metastore node served the watch within {timeout:?}: {why}"
                )));
            }
            if tried % addrs == 0 {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
