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
use crate::remote_watch::RemoteWatcher;
use crate::rpc::{NodeRequest, NodeResponse, PeerClient, RemoteError, RpcError, WireKv};
use crate::store::{Lease, ScanPage};
use crate::types::{Command, CommandResult, Expect, LeaseId, Txn, TxnResponse, Written};

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

    /// Watches `prefix` from `from_revision` (0: from now), resuming on another node when the
    /// serving one fails (see [`RemoteWatcher`]).
    pub async fn watch(
        &self,
        prefix: &str,
        from_revision: u64,
    ) -> Result<RemoteWatcher, MetaError> {
        RemoteWatcher::start(self.clone(), prefix, from_revision).await
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.timeout
    }

    pub(crate) fn addrs(&self) -> &[String] {
        &self.inner.addrs
    }

    /// The address to try now.
    pub(crate) fn next_addr(&self) -> String {
        let i = self.inner.next.load(Ordering::Relaxed) % self.inner.addrs.len();
        self.inner.addrs[i].clone()
    }

    /// Moves on to the next address.
    pub(crate) fn skip_addr(&self) {
        self.inner.next.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn peers(&self) -> &PeerClient {
        &self.inner.peers
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
                | Ok(NodeResponse::Scan(Err(RemoteError::NotLeader { .. })))
                | Ok(NodeResponse::ScanPage(Err(RemoteError::NotLeader { .. })))
                | Ok(NodeResponse::LeaseKeepAlive(Err(RemoteError::NotLeader { .. }))) => {
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
                    return Err(MetaError::OutcomeUnknown {
                        reason: e.to_string(),
                    });
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
                    lease: 0,
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
            NodeResponse::Write(Err(e)) => Err(e.into()),
            other => Err(MetaError::Raft(format!(
                "unexpected answer to a put: {other:?}"
            ))),
        }
    }

    /// Proposes `cmd` on the leader and returns what applying it produced.
    async fn write(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        match self
            .call(NodeRequest::Write {
                cmd,
                forwarded: false,
            })
            .await?
        {
            NodeResponse::Write(result) => result.map_err(MetaError::from),
            other => Err(MetaError::Raft(format!(
                "unexpected answer to a write: {other:?}"
            ))),
        }
    }

    /// As [`crate::MetaStore::put_leased`].
    pub async fn put_leased(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        lease: LeaseId,
    ) -> Result<Written, MetaError> {
        let cmd = Command::Put {
            key: key.to_owned(),
            value,
            expect,
            lease,
        };
        match self.write(cmd).await? {
            CommandResult::Written(w) => Ok(w),
            CommandResult::Mismatch { actual } => Err(MetaError::VersionMismatch {
                key: key.to_owned(),
                expected: expect,
                actual,
            }),
            CommandResult::LeaseNotFound { id } => Err(MetaError::LeaseNotFound { id }),
            other => Err(unexpected("put", &other)),
        }
    }

    /// As [`crate::MetaStore::delete`].
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<bool, MetaError> {
        let cmd = Command::Delete {
            key: key.to_owned(),
            expect,
        };
        match self.write(cmd).await? {
            CommandResult::Deleted { .. } => Ok(true),
            CommandResult::Absent => Ok(false),
            CommandResult::Mismatch { actual } => Err(MetaError::VersionMismatch {
                key: key.to_owned(),
                expected: expect,
                actual,
            }),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// As [`crate::MetaStore::txn`].
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        match self.write(Command::Txn(txn)).await? {
            CommandResult::Txn(r) => Ok(r),
            CommandResult::LeaseNotFound { id } => Err(MetaError::LeaseNotFound { id }),
            other => Err(unexpected("txn", &other)),
        }
    }

    /// As [`crate::MetaStore::lease_grant`] (the TTL range is checked by the cluster).
    pub async fn lease_grant(&self, ttl: Duration) -> Result<Lease, MetaError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        match self.write(Command::LeaseGrant { ttl_ms }).await? {
            CommandResult::LeaseGranted { id, ttl_ms } => Ok(Lease {
                id,
                ttl: Duration::from_millis(ttl_ms),
            }),
            other => Err(unexpected("lease grant", &other)),
        }
    }

    /// As [`crate::MetaStore::lease_revoke`].
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<u64, MetaError> {
        match self
            .write(Command::LeaseRevoke { id, expired: false })
            .await?
        {
            CommandResult::LeaseRevoked { deleted_keys, .. } => Ok(deleted_keys),
            CommandResult::LeaseNotFound { id } => Err(MetaError::LeaseNotFound { id }),
            other => Err(unexpected("lease revoke", &other)),
        }
    }

    /// As [`crate::MetaStore::lease_keep_alive`].
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration, MetaError> {
        match self
            .call(NodeRequest::LeaseKeepAlive {
                id,
                forwarded: false,
            })
            .await?
        {
            NodeResponse::LeaseKeepAlive(r) => {
                r.map(Duration::from_millis).map_err(MetaError::from)
            }
            other => Err(MetaError::Raft(format!(
                "unexpected answer to a keep-alive: {other:?}"
            ))),
        }
    }

    /// As [`crate::MetaStore::scan_page`].
    pub async fn scan_page(
        &self,
        prefix: &str,
        start_after: &str,
        limit: u32,
    ) -> Result<ScanPage, MetaError> {
        match self
            .call(NodeRequest::ScanPage {
                prefix: prefix.to_owned(),
                start_after: start_after.to_owned(),
                limit,
                forwarded: false,
            })
            .await?
        {
            NodeResponse::ScanPage(r) => r
                .map(|page| ScanPage {
                    kvs: page.kvs.into_iter().map(WireKv::into_key_value).collect(),
                    more: page.more,
                })
                .map_err(MetaError::from),
            other => Err(MetaError::Raft(format!(
                "unexpected answer to a scan page: {other:?}"
            ))),
        }
    }

    /// As [`crate::MetaStore::compact`].
    pub async fn compact(&self, revision: u64) -> Result<u64, MetaError> {
        match self.write(Command::Compact { revision }).await? {
            CommandResult::Compacted { oldest } => Ok(oldest),
            CommandResult::CompactBeyondRevision { requested, current } => {
                Err(MetaError::FutureRevision { requested, current })
            }
            other => Err(unexpected("compact", &other)),
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
            NodeResponse::Get(Err(e)) => Err(e.into()),
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
            NodeResponse::Scan(Err(e)) => Err(e.into()),
            other => Err(MetaError::Raft(format!(
                "unexpected answer to a scan: {other:?}"
            ))),
        }
    }
}

fn unexpected(op: &str, result: &CommandResult) -> MetaError {
    MetaError::Raft(format!("{op} produced an unexpected result: {result:?}"))
}
