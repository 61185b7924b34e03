//! [`MetaClient`]: reads and writes against a metastore cluster from another process.
//!
//! It speaks the node RPC protocol ([`crate::rpc`]) to the addresses it was given and moves
//! on to the next address when a node is unreachable or is not the leader, until the request
//! timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use strata_proto::pb::metastore::KeyValue;

use crate::MetaError;
use crate::rpc::{NodeRequest, NodeResponse, PeerClient, RemoteError, RpcError, WireKv};
use crate::types::{Command, CommandResult, Expect, Written};

#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    peers: PeerClient,
    addrs: Vec<String>,
    next: AtomicUsize,
    timeout: Duration,
}

impl MetaClient {
    /// `addrs`: `host:port` of some or all nodes. `ca`: the CA of their certificates (none:
    /// loopback nodes only).
    pub fn new(
        addrs: Vec<String>,
        ca: Option<std::path::PathBuf>,
        timeout: Duration,
    ) -> Result<Self, MetaError> {
        if addrs.is_empty() {
            return Err(MetaError::Raft("no metastore address given".into()));
        }
        Ok(Self {
            inner: Arc::new(ClientInner {
                peers: PeerClient::new("strata-meta-client".into(), ca),
                addrs,
                next: AtomicUsize::new(0),
                timeout,
            }),
        })
    }

    /// Sends `req` to the leader, trying the nodes in turn.
    async fn call(&self, req: NodeRequest) -> Result<NodeResponse, MetaError> {
        self.call_timed(req, crate::rpc::FORWARD_TIMEOUT).await
    }

    /// [`MetaClient::call`], waiting at most `rpc_timeout` for each node's answer.
    pub(crate) async fn call_timed(
        &self,
        req: NodeRequest,
        rpc_timeout: Duration,
    ) -> Result<NodeResponse, MetaError> {
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        // Nodes that said they are not members: once all have, no node can serve `req`.
        let mut not_members = std::collections::BTreeSet::new();
        loop {
            let i = self.inner.next.load(Ordering::Relaxed) % self.inner.addrs.len();
            let addr = &self.inner.addrs[i];
            let why = match self.inner.peers.call(addr, &req, rpc_timeout).await {
                Ok(NodeResponse::Write(Err(RemoteError::NotLeader { .. })))
                | Ok(NodeResponse::Get(Err(RemoteError::NotLeader { .. })))
                | Ok(NodeResponse::Scan(Err(RemoteError::NotLeader { .. }))) => {
                    format!("{addr} is not the leader")
                }
                Ok(NodeResponse::ChangeMembership(Err(RemoteError::NotLeader { .. })))
                | Ok(NodeResponse::ClusterStatus(Err(RemoteError::NotLeader { .. }))) => {
                    format!("{addr} is not the leader")
                }
                // Refused without running it: another node may serve it.
                Ok(resp) if resp.not_member().is_some() => {
                    not_members.insert(i);
                    if not_members.len() == self.inner.addrs.len() {
                        let node_id = resp.not_member().unwrap_or_default();
                        return Err(MetaError::NotMember { node_id });
                    }
                    format!("{addr} is not a member of the cluster")
                }
                Ok(resp) => return Ok(resp),
                // Never sent: safe to try the next node, writes included.
                Err(e @ RpcError::NotSent { .. }) => e.to_string(),
                Err(e @ RpcError::Unreachable { .. })
                    if !matches!(req, NodeRequest::Write { .. }) =>
                {
                    e.to_string()
                }
                Err(e) => {
                    // A write may have been applied before the connection failed: outcome unknown.
                    self.inner.next.fetch_add(1, Ordering::Relaxed);
                    return Err(MetaError::Raft(format!("outcome unknown: {e}")));
                }
            };
            self.inner.next.fetch_add(1, Ordering::Relaxed);
            if tokio::time::Instant::now() >= deadline {
                return Err(MetaError::Raft(format!(
                    "no metastore leader reachable within {:?}: {why}",
                    self.inner.timeout
                )));
            }
            // Backoff between rounds while an election settles.
            if (i + 1).is_multiple_of(self.inner.addrs.len()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub async fn put(&self, key: &str, value: Bytes, expect: Expect) -> Result<Written, MetaError> {
        match self
            .call(NodeRequest::Write {
                cmd: Command::Put {
                    key: key.to_owned(),
                    value,
                    expect,
                },
                forwarded: false,
            })
            .await?
        {
            NodeResponse::Write(Ok(CommandResult::Written(w))) => Ok(w),
            NodeResponse::Write(Ok(CommandResult::Mismatch { actual })) => {
                Err(MetaError::VersionMismatch {
                    key: key.to_owned(),
                    expected: expect,
                    actual,
                })
            }
            NodeResponse::Write(Err(e)) => Err(MetaError::Raft(e.to_string())),
            other => Err(MetaError::Raft(format!(
                "unexpected answer to a put: {other:?}"
            ))),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        match self
            .call(NodeRequest::Get {
                key: key.to_owned(),
                forwarded: false,
            })
            .await?
        {
            NodeResponse::Get(Ok(kv)) => Ok(kv.map(WireKv::into_key_value)),
            NodeResponse::Get(Err(e)) => Err(MetaError::Raft(e.to_string())),
            other => Err(MetaError::Raft(format!(
                "unexpected answer to a get: {other:?}"
            ))),
        }
    }

    pub async fn scan(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
        match self
            .call(NodeRequest::Scan {
                prefix: prefix.to_owned(),
                forwarded: false,
            })
            .await?
        {
            NodeResponse::Scan(Ok(kvs)) => {
                Ok(kvs.into_iter().map(WireKv::into_key_value).collect())
            }
            NodeResponse::Scan(Err(e)) => Err(MetaError::Raft(e.to_string())),
            other => Err(MetaError::Raft(format!(
                "unexpected answer to a scan: {other:?}"
            ))),
        }
    }
}
