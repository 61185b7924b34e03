//! [`MetaClient`]: reads and writes against a metastore cluster from another process.
//!
//! It speaks the node RPC protocol ([`crate::rpc`]) to the addresses it was given and finds
//! the leader itself: a node that is not leader says so (and who is) instead of forwarding,
//! and the client moves on to the leader it names or the next address, until the request
//! timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_proto::pb::metastore::KeyValue;
use tokio::time::Instant;

use crate::MetaError;
use crate::faults::Faults;
use crate::remote_watch::RemoteWatcher;
use crate::rpc::{NodeRequest, NodeResponse, PeerClient, RemoteError, RpcError, WireKv};
use crate::store::{Lease, ScanPage};
use crate::types::{Command, CommandResult, Expect, LeaseId, NodeId, Txn, TxnResponse, Written};

/// How a client introduces itself in the connection handshake.
const CLIENT_NAME: &str = "strata-meta-client";
/// Pause after a round of attempts found no leader (an election is under way).
const ROUND_PAUSE: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    peers: PeerClient,
    addrs: Vec<String>,
    routing: std::sync::Mutex<Routing>,
    timeout: Duration,
}

impl ClientInner {
    fn routing(&self) -> std::sync::MutexGuard<'_, Routing> {
        // Plain data, valid after any panic elsewhere.
        self.routing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Which address a client tries next: the one that answered last; after a failure, the
/// leader a "not leader" answer named, else the next address. Addresses still being dialled
/// by the first contact are passed over. (A node that is down costs little: the peer client
/// fails calls to it at once while it redials in the background.) Plain logic, no I/O.
#[derive(Debug)]
struct Routing {
    /// No request has been sent yet (see `MetaClient::first_contact`).
    fresh: bool,
    /// A first-contact dial has reached its node, and `next` starts there.
    started: bool,
    next: usize,
    /// Per address: until when its first-contact dial may still be under way.
    dialling: Vec<Option<Instant>>,
}

impl Routing {
    fn new(n: usize) -> Self {
        Self {
            fresh: true,
            started: false,
            next: 0,
            dialling: vec![None; n],
        }
    }

    /// First contact: every address is being dialled, until `ends` at the latest.
    fn dialling(&mut self, ends: Instant) {
        self.dialling.fill(Some(ends));
    }

    /// A first-contact dial of address `i` ended; the first that reached its node is where
    /// the client starts.
    fn contacted(&mut self, i: usize, up: bool) {
        self.dialling[i] = None;
        if up && !self.started {
            self.started = true;
            self.next = i;
        }
    }

    /// The attempt at address `i` failed; `leader` is the address a node named as leader.
    /// Returns (and remembers) the address to try next.
    fn failed(&mut self, i: usize, leader: Option<usize>, now: Instant) -> usize {
        let n = self.dialling.len();
        let ready = |j: usize| self.dialling[j].is_none_or(|ends| ends <= now);
        self.next = leader
            .filter(|l| *l != i && ready(*l))
            .or_else(|| (1..=n).map(|k| (i + k) % n).find(|j| ready(*j)))
            .unwrap_or((i + 1) % n);
        self.next
    }
}

impl MetaClient {
    /// `addrs`: `host:port` of some or all nodes. `ca`: the CA of their certificates (none:
    /// loopback nodes only).
    pub fn new(
        addrs: Vec<String>,
        ca: Option<std::path::PathBuf>,
        timeout: Duration,
    ) -> Result<Self, MetaError> {
        Self::build(addrs, PeerClient::new(CLIENT_NAME.into(), ca), timeout)
    }

    /// Test hook: like [`MetaClient::new`], but the client's messages pass through `faults`
    /// as node `me` (an id of its own, so tests can cut it off from nodes).
    pub fn with_faults(
        addrs: Vec<String>,
        ca: Option<std::path::PathBuf>,
        timeout: Duration,
        me: NodeId,
        faults: Faults,
    ) -> Result<Self, MetaError> {
        let peers = PeerClient::with_faults(CLIENT_NAME.into(), ca, me, faults);
        Self::build(addrs, peers, timeout)
    }

    fn build(addrs: Vec<String>, peers: PeerClient, timeout: Duration) -> Result<Self, MetaError> {
        if addrs.is_empty() {
            return Err(MetaError::Raft("no metastore address given".into()));
        }
        Ok(Self {
            inner: Arc::new(ClientInner {
                peers,
                routing: std::sync::Mutex::new(Routing::new(addrs.len())),
                addrs,
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
        self.inner.addrs[self.routing().next].clone()
    }

    /// The address tried now failed: move on.
    pub(crate) fn skip_addr(&self) {
        let mut routing = self.routing();
        let i = routing.next;
        routing.failed(i, None, Instant::now());
    }

    pub(crate) fn peers(&self) -> &PeerClient {
        &self.inner.peers
    }

    /// Sends `req` to the leader. Requests run only on the node that receives them
    /// (`forwarded: true`): a node that is not leader answers at once with who is, so no node
    /// holds a request while an election settles, and a failure is never "outcome unknown"
    /// merely because a middleman was still waiting. The client starts at the node that
    /// answered last, follows a "not leader" answer to the leader's address when it is one of
    /// ours (when it is not, it asks that node to relay the request instead), else tries the
    /// next node, and pauses after every round of fruitless attempts, until the timeout.
    async fn call(&self, req: NodeRequest) -> Result<NodeResponse, MetaError> {
        self.call_timed(req, crate::rpc::FORWARD_TIMEOUT).await
    }

    /// [`MetaClient::call`], allowing `rpc_timeout` for each node's answer.
    pub(crate) async fn call_timed(
        &self,
        req: NodeRequest,
        rpc_timeout: Duration,
    ) -> Result<NodeResponse, MetaError> {
        let deadline = Instant::now() + self.inner.timeout;
        let first = std::mem::replace(&mut self.routing().fresh, false);
        if first {
            self.first_contact(deadline).await;
        }
        let mut tried = vec![false; self.inner.addrs.len()];
        let mut why = String::from("no node tried");
        // Nodes that said they are not members: once all have, no node can serve `req`.
        let mut not_members = std::collections::BTreeSet::new();
        let mut req = req;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(MetaError::Raft(format!(
                    "no metastore leader reachable within {:?}: {why}",
                    self.inner.timeout
                )));
            }
            let i = self.routing().next;
            let addr = &self.inner.addrs[i];
            // A relaying node may wait for an election and the leader: give it all our time.
            let per_call = if req.forwarded() {
                rpc_timeout.min(remaining)
            } else {
                remaining
            };
            let hint = match self.inner.peers.call(addr, &req, per_call).await {
                Ok(resp) if leader_hint(&resp).is_some() => {
                    why = format!("{addr} is not the leader");
                    leader_hint(&resp).flatten()
                }
                // Refused without running it: another node may serve it.
                Ok(resp) if resp.not_member().is_some() => {
                    not_members.insert(i);
                    if not_members.len() == self.inner.addrs.len() {
                        let node_id = resp.not_member().unwrap_or_default();
                        return Err(MetaError::NotMember { node_id });
                    }
                    why = format!("{addr} is not a member of the cluster");
                    None
                }
                Ok(resp) => return Ok(resp),
                // Never sent: safe to try the next node, writes included.
                Err(e @ RpcError::NotSent { .. }) => {
                    why = e.to_string();
                    None
                }
                // Reads are safe to repeat.
                Err(e @ RpcError::Unreachable { .. }) if !req.changes_state() => {
                    why = e.to_string();
                    None
                }
                Err(e @ RpcError::Unreachable { .. }) => {
                    // A write may have been applied before the connection failed.
                    self.routing().failed(i, None, Instant::now());
                    return Err(MetaError::OutcomeUnknown {
                        reason: e.to_string(),
                    });
                }
                Err(e @ RpcError::Malformed { .. }) => return Err(MetaError::Raft(e.to_string())),
            };
            let listed = hint.map(|h| self.inner.addrs.iter().position(|a| *a == h));
            if matches!(listed, Some(None)) && req.forwarded() {
                // A leader we were not given the address of: ask this node to relay.
                req.set_forwarded(false);
                continue;
            }
            req.set_forwarded(true);
            let next = self.routing().failed(i, listed.flatten(), Instant::now());
            tried[i] = true;
            if tried[next] {
                // A round found no leader: an election is under way.
                let remaining = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(ROUND_PAUSE.min(remaining)).await;
                tried.fill(false);
            }
        }
    }

    /// Dials every node at once and starts with the first that answers: trying them one
    /// after the other would first wait out the connect timeout of any node that is down.
    /// The other dials go on in the background; until each ends, its address is passed over.
    async fn first_contact(&self, deadline: Instant) {
        let limit = Instant::now() + crate::rpc::CONNECT_TIMEOUT;
        self.routing().dialling(limit);
        let mut dials = tokio::task::JoinSet::new();
        for (i, addr) in self.inner.addrs.iter().enumerate() {
            let (peers, addr) = (self.inner.peers.clone(), addr.clone());
            dials.spawn(async move { (i, peers.connect(&addr).await.is_ok()) });
        }
        let first_up = async {
            while let Some(dialled) = dials.join_next().await {
                if let Ok((i, up)) = dialled {
                    self.routing().contacted(i, up);
                    if up {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline.min(limit), first_up).await;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            while let Some(dialled) = dials.join_next().await {
                if let Ok((i, up)) = dialled {
                    inner.routing().contacted(i, up);
                }
            }
        });
    }

    fn routing(&self) -> std::sync::MutexGuard<'_, Routing> {
        self.inner.routing()
    }

    pub async fn put(&self, key: &str, value: Bytes, expect: Expect) -> Result<Written, MetaError> {
        self.put_leased(key, value, expect, 0).await
    }

    /// Proposes `cmd` on the leader and returns what applying it produced.
    async fn write(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        match self
            .call(NodeRequest::Write {
                cmd,
                forwarded: true,
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
        self.write(cmd).await?.into_put(key, expect)
    }

    /// As [`crate::MetaStore::delete`].
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<bool, MetaError> {
        let cmd = Command::Delete {
            key: key.to_owned(),
            expect,
        };
        self.write(cmd).await?.into_delete(key, expect)
    }

    /// As [`crate::MetaStore::txn`].
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        self.write(Command::Txn(txn)).await?.into_txn()
    }

    /// As [`crate::MetaStore::lease_grant`] (the TTL range is checked by the cluster).
    pub async fn lease_grant(&self, ttl: Duration) -> Result<Lease, MetaError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.write(Command::LeaseGrant { ttl_ms })
            .await?
            .into_lease_grant()
    }

    /// As [`crate::MetaStore::lease_revoke`].
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<u64, MetaError> {
        self.write(Command::LeaseRevoke { id, expired: false })
            .await?
            .into_lease_revoke()
    }

    /// As [`crate::MetaStore::lease_keep_alive`].
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration, MetaError> {
        match self
            .call(NodeRequest::LeaseKeepAlive {
                id,
                forwarded: true,
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
                forwarded: true,
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
        self.write(Command::Compact { revision })
            .await?
            .into_compact()
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        match self
            .call(NodeRequest::Get {
                key: key.to_owned(),
                forwarded: true,
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
                forwarded: true,
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

/// `Some(addr)` when `resp` says "not the leader" (whatever the request), with the leader's
/// address if the node knew it.
fn leader_hint(resp: &NodeResponse) -> Option<Option<String>> {
    let err = match resp {
        NodeResponse::Write(Err(e)) => e,
        NodeResponse::Get(Err(e)) => e,
        NodeResponse::Scan(Err(e)) => e,
        NodeResponse::ScanPage(Err(e)) => e,
        NodeResponse::LeaseKeepAlive(Err(e)) => e,
        NodeResponse::ChangeMembership(Err(e)) => e,
        NodeResponse::ClusterStatus(Err(e)) => e,
        _ => return None,
    };
    match err {
        RemoteError::NotLeader { addr, .. } => Some(addr.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Without hints the client goes round the addresses in order.
    #[test]
    fn rotates_through_the_addresses() {
        let now = Instant::now();
        let mut r = Routing::new(3);
        assert_eq!(r.next, 0);
        assert_eq!(r.failed(0, None, now), 1);
        assert_eq!(r.failed(1, None, now), 2);
        assert_eq!(r.failed(2, None, now), 0);
    }

    /// A node's "the leader is at X" sends the client straight to X, unless X is the node
    /// that answered.
    #[test]
    fn follows_the_leader_hint() {
        let now = Instant::now();
        let mut r = Routing::new(3);
        assert_eq!(r.failed(0, Some(2), now), 2);
        assert_eq!(r.failed(2, Some(2), now), 0);
    }

    /// First contact starts at the first address whose dial reached its node; addresses
    /// still being dialled are passed over, even when named as leader, until their dial ends
    /// or its time is up; if every address is being dialled the client tries one anyway.
    #[test]
    fn first_contact_starts_at_the_first_to_answer() {
        let now = Instant::now();
        let mut r = Routing::new(3);
        r.dialling(now + S);
        r.contacted(0, false);
        r.contacted(2, true);
        assert_eq!(r.next, 2);
        r.contacted(0, true);
        assert_eq!(r.next, 2, "the first to answer stays the start");
        assert_eq!(r.failed(2, Some(1), now), 0, "1 is still being dialled");
        assert_eq!(r.failed(0, None, now), 2);
        assert_eq!(r.failed(2, None, now + S), 0);
        assert_eq!(r.failed(0, None, now + S), 1, "1's dial time is up");
        let mut all = Routing::new(2);
        all.dialling(now + S);
        assert_eq!(all.failed(0, None, now), 1);
    }
}
