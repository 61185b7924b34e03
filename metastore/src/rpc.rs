//! Node-to-node RPC: raft traffic and requests forwarded to the leader, over QUIC (ALPN
//! `strata-meta-raft/1`).
//!
//! Every RPC is one short-lived bidirectional stream carrying one [`NodeRequest`] frame and
//! one [`NodeResponse`] frame, JSON-encoded (openraft's types are serde; raft traffic of a
//! metadata store is small). [`PeerClient`] keeps one connection per peer address and opens a
//! fresh one after a failure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use strata_transport::handshake::client_handshake;
use strata_transport::{ClientTrust, FrameReader, FrameWriter, TransportTuning, client_endpoint};
use tokio::sync::Mutex;

use crate::faults::Faults;
use crate::membership::{
    ClusterStatus, LocalView, MembershipChange, MembershipError, MembershipInfo,
};
use crate::types::{Command, CommandResult, NodeId, TypeConfig};

/// ALPN of metastore node-to-node traffic.
pub const ALPN_RAFT: &[u8] = b"strata-meta-raft/1";
/// How long establishing a connection to a peer may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a forwarded read or write may take before the caller gives up on that node.
pub const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// QUIC keep-alive interval of node-to-node connections.
pub const PEER_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(250);
/// Idle timeout of node-to-node connections. A peer that crashed, or restarted (its new
/// process cannot reset the old connection), otherwise leaves a connection that looks open
/// and swallows the next request until that call's own deadline: a vote lost for a whole
/// election round, a forwarded write reported as "outcome unknown". With keep-alives the
/// connection is closed this long after the peer went silent, and the next call dials anew.
pub const PEER_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long after a failed dial calls to that peer fail at once while it is redialled in the
/// background (see `PeerClient::connection`).
pub const DIAL_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);
/// Largest RPC frame (a snapshot chunk or a batch of log entries).
pub const MAX_RPC_FRAME: usize = 64 * 1024 * 1024;

/// A request from one metastore node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write. `forwarded`: run it here or fail with `NotLeader` (a node forwarding to the
    /// leader sets it, so nothing is forwarded twice; so does [`crate::MetaClient`], which
    /// finds the leader itself); otherwise the receiving node routes it to the leader.
    Write {
        cmd: Command,
        forwarded: bool,
    },
    /// A linearizable read of one key (`forwarded` as for `Write`).
    Get {
        key: String,
        forwarded: bool,
    },
    /// A linearizable read of every key under a prefix (`forwarded` as for `Write`).
    Scan {
        prefix: String,
        forwarded: bool,
    },
    /// A keep-alive of a lease; only the leader keeps lease time (`forwarded` as for `Write`).
    LeaseKeepAlive {
        id: u64,
        forwarded: bool,
    },
    /// A watch of `prefix` from `from_revision` (0: from now), served by the node that gets
    /// it from its own applied state. The answer is a stream: [`NodeResponse::WatchStarted`],
    /// then one [`NodeResponse::WatchEvent`] per change, until either side closes.
    Watch {
        prefix: String,
        from_revision: u64,
    },
    /// One page of a prefix scan: at most `limit` keys after `start_after` (`forwarded` as
    /// for `Write`).
    ScanPage {
        prefix: String,
        start_after: String,
        limit: u32,
        forwarded: bool,
    },
    /// A membership change, run by the leader (`forwarded` as for `Write`).
    ChangeMembership {
        change: MembershipChange,
        forwarded: bool,
    },
    /// The cluster's status as the leader sees it (`forwarded` as for `Write`).
    ClusterStatus {
        forwarded: bool,
    },
    /// The receiving node's own view (term, leader, committed membership); never forwarded.
    LocalView,
    /// From the leader to a node it has just removed: the committed membership without it.
    Removed {
        membership: MembershipInfo,
    },
}

impl NodeRequest {
    /// Whether a client request must run on the receiving node (see `Write::forwarded`);
    /// raft traffic always does.
    pub fn forwarded(&self) -> bool {
        match self {
            NodeRequest::Write { forwarded, .. }
            | NodeRequest::Get { forwarded, .. }
            | NodeRequest::Scan { forwarded, .. }
            | NodeRequest::ScanPage { forwarded, .. }
            | NodeRequest::LeaseKeepAlive { forwarded, .. }
            | NodeRequest::ChangeMembership { forwarded, .. }
            | NodeRequest::ClusterStatus { forwarded } => *forwarded,
            _ => true,
        }
    }

    /// Whether the request may change state (a write or a membership change): one whose
    /// answer was lost has an unknown outcome and must not be repeated blindly.
    pub fn changes_state(&self) -> bool {
        matches!(
            self,
            NodeRequest::Write { .. } | NodeRequest::ChangeMembership { .. }
        )
    }

    /// Sets `forwarded` on a client request; raft traffic is left as it is.
    pub fn set_forwarded(&mut self, value: bool) {
        match self {
            NodeRequest::Write { forwarded, .. }
            | NodeRequest::Get { forwarded, .. }
            | NodeRequest::Scan { forwarded, .. }
            | NodeRequest::ScanPage { forwarded, .. }
            | NodeRequest::LeaseKeepAlive { forwarded, .. }
            | NodeRequest::ChangeMembership { forwarded, .. }
            | NodeRequest::ClusterStatus { forwarded } => *forwarded = value,
            _ => {}
        }
    }
}

/// A key-value pair as it travels between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireKv {
    pub key: String,
    pub value: Vec<u8>,
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
    #[serde(default)]
    pub lease: u64,
}

impl WireKv {
    pub fn from_key_value(kv: strata_proto::pb::metastore::KeyValue) -> Self {
        Self {
            key: kv.key,
            value: kv.value.to_vec(),
            version: kv.version,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            lease: kv.lease,
        }
    }

    pub fn into_key_value(self) -> strata_proto::pb::metastore::KeyValue {
        strata_proto::pb::metastore::KeyValue {
            key: self.key,
            value: bytes::Bytes::from(self.value),
            version: self.version,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}

/// Why a forwarded request failed on the node that received it.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    /// That node is not the leader; `leader` is who it believes is, `addr` that node's
    /// address in the membership.
    #[error("not the leader (leader: {leader:?} at {addr:?})")]
    NotLeader {
        leader: Option<NodeId>,
        #[serde(default)]
        addr: Option<String>,
    },
    #[error("lease {id} not found")]
    LeaseNotFound { id: u64 },
    #[error("value of key {key:?} is {len} bytes, above the maximum of {max} bytes")]
    ValueTooLarge { key: String, len: usize, max: usize },
    #[error("lease TTL {ttl_ms} ms is outside the allowed {min_ms}..={max_ms} ms")]
    InvalidLeaseTtl {
        ttl_ms: u64,
        min_ms: u64,
        max_ms: u64,
    },
    /// The request is malformed (an invalid key, a bad page size).
    #[error("{0}")]
    Invalid(String),
    #[error("revision {requested} is compacted; the oldest kept revision is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    #[error("write outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error("{0}")]
    Failed(String),
    /// That node is not a member of the cluster.
    #[error("node {node_id} is not a member of the cluster")]
    NotMember { node_id: NodeId },
    /// A membership change was refused.
    #[error(transparent)]
    Membership(MembershipError),
}

impl From<crate::MetaError> for RemoteError {
    fn from(e: crate::MetaError) -> Self {
        match e {
            crate::MetaError::NotLeader { leader } => RemoteError::NotLeader { leader, addr: None },
            crate::MetaError::LeaseNotFound { id } => RemoteError::LeaseNotFound { id },
            crate::MetaError::ValueTooLarge { key, len, max } => {
                RemoteError::ValueTooLarge { key, len, max }
            }
            crate::MetaError::InvalidLeaseTtl {
                ttl_ms,
                min_ms,
                max_ms,
            } => RemoteError::InvalidLeaseTtl {
                ttl_ms,
                min_ms,
                max_ms,
            },
            crate::MetaError::Compacted { requested, oldest } => {
                RemoteError::Compacted { requested, oldest }
            }
            crate::MetaError::OutcomeUnknown { reason } => RemoteError::OutcomeUnknown(reason),
            crate::MetaError::NotMember { node_id } => RemoteError::NotMember { node_id },
            crate::MetaError::Membership(m) => RemoteError::Membership(m),
            e @ (crate::MetaError::InvalidKey { .. } | crate::MetaError::InvalidRequest(_)) => {
                RemoteError::Invalid(e.to_string())
            }
            other => RemoteError::Failed(other.to_string()),
        }
    }
}

impl From<RemoteError> for crate::MetaError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::NotLeader { leader, .. } => crate::MetaError::NotLeader { leader },
            RemoteError::LeaseNotFound { id } => crate::MetaError::LeaseNotFound { id },
            RemoteError::ValueTooLarge { key, len, max } => {
                crate::MetaError::ValueTooLarge { key, len, max }
            }
            RemoteError::InvalidLeaseTtl {
                ttl_ms,
                min_ms,
                max_ms,
            } => crate::MetaError::InvalidLeaseTtl {
                ttl_ms,
                min_ms,
                max_ms,
            },
            RemoteError::Invalid(message) => crate::MetaError::InvalidRequest(message),
            RemoteError::Compacted { requested, oldest } => {
                crate::MetaError::Compacted { requested, oldest }
            }
            RemoteError::OutcomeUnknown(reason) => crate::MetaError::OutcomeUnknown { reason },
            RemoteError::NotMember { node_id } => crate::MetaError::NotMember { node_id },
            RemoteError::Membership(m) => crate::MetaError::Membership(m),
            RemoteError::Failed(message) => crate::MetaError::Raft(message),
        }
    }
}

/// One page of a prefix scan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WirePage {
    pub kvs: Vec<WireKv>,
    pub more: bool,
}

/// The answer to a [`NodeRequest`], variant for variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Write(Result<CommandResult, RemoteError>),
    Get(Result<Option<WireKv>, RemoteError>),
    Scan(Result<Vec<WireKv>, RemoteError>),
    /// The lease's TTL in ms.
    LeaseKeepAlive(Result<u64, RemoteError>),
    ScanPage(Result<WirePage, RemoteError>),
    /// The watch runs; its first event will be at or after `from_revision`.
    WatchStarted(Result<u64, RemoteError>),
    /// One change (or the error that ended the watch).
    WatchEvent(Result<WireEvent, RemoteError>),
    ChangeMembership(Result<MembershipInfo, RemoteError>),
    ClusterStatus(Result<ClusterStatus, RemoteError>),
    LocalView(Result<LocalView, RemoteError>),
    Removed,
}

/// A change as it travels to a remote watcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireEvent {
    pub revision: u64,
    /// `EventKind` as its protobuf number.
    pub kind: i32,
    pub kv: WireKv,
}

impl WireEvent {
    pub fn from_event(e: strata_proto::pb::metastore::WatchEvent) -> Self {
        Self {
            revision: e.revision,
            kind: e.kind,
            kv: WireKv::from_key_value(e.kv.unwrap_or_default()),
        }
    }

    pub fn into_event(self) -> strata_proto::pb::metastore::WatchEvent {
        strata_proto::pb::metastore::WatchEvent {
            revision: self.revision,
            kind: self.kind,
            kv: Some(self.kv.into_key_value()),
        }
    }
}

/// Why an RPC did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No connection could be made: the request was not sent.
    #[error("peer {addr} not reachable, request not sent: {reason}")]
    NotSent { addr: String, reason: String },
    /// The request may have been sent, but no answer came.
    #[error("peer {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("peer {addr} sent an undecodable answer: {reason}")]
    Malformed { addr: String, reason: String },
}

/// A peer whose last dial failed.
struct Down {
    failed_at: tokio::time::Instant,
    /// A background redial is under way.
    redialling: bool,
}

/// Client side of node-to-node RPC: one cached QUIC connection per peer address.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<PeerInner>,
}

struct PeerInner {
    name: String,
    ca: Option<PathBuf>,
    tuning: TransportTuning,
    connections: Mutex<HashMap<String, quinn::Connection>>,
    /// Addresses whose last dial failed.
    down: std::sync::Mutex<HashMap<String, Down>>,
    /// Injected faults and the node id this client sends as (tests only; see [`Faults`]).
    faults: Option<(NodeId, Faults)>,
}

impl PeerClient {
    /// `ca`: the CA that signed the peers' certificates; without one only loopback peers
    /// are reachable (development trust, see `strata_transport::tls`).
    pub fn new(name: String, ca: Option<PathBuf>) -> Self {
        Self::build(name, ca, None)
    }

    /// Test hook: like [`PeerClient::new`], but every message this client sends or receives
    /// passes through `faults` as node `me` (see [`crate::faults`]).
    pub fn with_faults(name: String, ca: Option<PathBuf>, me: NodeId, faults: Faults) -> Self {
        Self::build(name, ca, Some((me, faults)))
    }

    fn build(name: String, ca: Option<PathBuf>, faults: Option<(NodeId, Faults)>) -> Self {
        Self {
            inner: Arc::new(PeerInner {
                name,
                ca,
                tuning: TransportTuning {
                    keep_alive: PEER_KEEP_ALIVE,
                    idle_timeout: PEER_IDLE_TIMEOUT,
                    ..TransportTuning::default()
                },
                connections: Mutex::new(HashMap::new()),
                down: std::sync::Mutex::new(HashMap::new()),
                faults,
            }),
        }
    }

    /// Carries one message between this client and the node at `addr` through the injected
    /// faults (`outbound`: from here to there): waits its delay. A lost message is noticed as
    /// QUIC would notice it: keep-alives are lost too, so the connection idles out one idle
    /// timeout after the link went down. A no-op without faults or for an address the fault
    /// table does not know.
    async fn cross(&self, addr: &str, outbound: bool) -> Result<(), String> {
        let Some((me, faults)) = &self.inner.faults else {
            return Ok(());
        };
        let Some(peer) = faults.node_at(addr) else {
            return Ok(());
        };
        let (from, to) = if outbound { (*me, peer) } else { (peer, *me) };
        let since = match faults.pass(from, to).await {
            Ok(()) => return Ok(()),
            Err(since) => since,
        };
        tokio::time::sleep_until(since + self.inner.tuning.idle_timeout).await;
        Err("connection lost (idle timeout)".into())
    }

    /// Under injected faults, whether a connection to `addr` would have idled out by now:
    /// either way has been cut for an idle timeout, so keep-alives went unanswered.
    fn idled_out(&self, addr: &str) -> bool {
        let Some((me, faults)) = &self.inner.faults else {
            return false;
        };
        let Some(peer) = faults.node_at(addr) else {
            return false;
        };
        let idle = self.inner.tuning.idle_timeout;
        [(*me, peer), (peer, *me)].into_iter().any(|(from, to)| {
            faults
                .link(from, to)
                .cut_since
                .is_some_and(|since| since.elapsed() >= idle)
        })
    }

    /// Sends `req` to the node at `addr` (`host:port`) and waits at most `timeout` for its
    /// answer. A dead peer is noticed by the connection's idle timeout at the latest, which
    /// can still be too late for raft, so every call has its own deadline, and a call that
    /// fails after sending drops the connection. `NotSent` means the request never left (no
    /// connection in time); after that a failure is `Unreachable`: outcome unknown.
    pub async fn call(
        &self,
        addr: &str,
        req: &NodeRequest,
        timeout: std::time::Duration,
    ) -> Result<NodeResponse, RpcError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let not_sent = |reason: String| RpcError::NotSent {
            addr: addr.to_owned(),
            reason,
        };
        let body = serde_json::to_vec(req).map_err(|e| not_sent(format!("encoding: {e}")))?;
        // Until a connection is up nothing has been sent, whatever stops the call.
        let conn = match tokio::time::timeout_at(deadline, self.connection(addr)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(RpcError::Unreachable { reason, .. })) => return Err(not_sent(reason)),
            Ok(Err(other)) => return Err(other),
            Err(_) => return Err(not_sent(format!("no connection within {timeout:?}"))),
        };
        let reason =
            match tokio::time::timeout_at(deadline, self.exchange(addr, &conn, &body)).await {
                Ok(Ok(answer)) => {
                    return serde_json::from_slice(&answer).map_err(|e| RpcError::Malformed {
                        addr: addr.to_owned(),
                        reason: e.to_string(),
                    });
                }
                Ok(Err(reason)) => reason,
                Err(_) => format!("no answer within {timeout:?}"),
            };
        // Forget this connection (not one another call has made since) so the next call
        // dials afresh.
        let mut connections = self.inner.connections.lock().await;
        if connections
            .get(addr)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            connections.remove(addr);
        }
        Err(RpcError::Unreachable {
            addr: addr.to_owned(),
            reason,
        })
    }

    /// Makes sure a connection to `addr` is up, dialling if needed.
    pub async fn connect(&self, addr: &str) -> Result<(), RpcError> {
        self.connection(addr).await.map(drop)
    }

    /// One request and its answer on a fresh stream of `conn`.
    async fn exchange(
        &self,
        addr: &str,
        conn: &quinn::Connection,
        body: &[u8],
    ) -> Result<bytes::Bytes, String> {
        let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut writer = FrameWriter::new(send, MAX_RPC_FRAME);
        let mut reader = FrameReader::new(recv, MAX_RPC_FRAME);
        self.cross(addr, true).await?;
        writer.send_raw(body).await.map_err(|e| e.to_string())?;
        writer.finish();
        let answer = reader
            .recv_raw()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "stream ended without an answer".to_owned())?;
        self.cross(addr, false).await?;
        Ok(answer)
    }

    /// Sends `req` to `addr` on a stream of its own and returns the reader of the answers, for
    /// requests answered by a stream of frames (watches). Connecting and sending are bounded
    /// by `timeout`; reading is not.
    pub async fn open_stream(
        &self,
        addr: &str,
        req: &NodeRequest,
        timeout: std::time::Duration,
    ) -> Result<FrameReader, RpcError> {
        let unreachable = |reason: String| RpcError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let body =
            serde_json::to_vec(req).map_err(|e| unreachable(format!("encoding request: {e}")))?;
        let open = async {
            let conn = self.connection(addr).await?;
            let (send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let mut writer = FrameWriter::new(send, MAX_RPC_FRAME);
            writer
                .send_raw(&body)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            writer.finish();
            Ok(FrameReader::new(recv, MAX_RPC_FRAME))
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(Ok(reader)) => Ok(reader),
            Ok(Err(e)) => {
                self.inner.connections.lock().await.remove(addr);
                Err(e)
            }
            Err(_) => {
                self.inner.connections.lock().await.remove(addr);
                Err(unreachable(format!("no stream within {timeout:?}")))
            }
        }
    }

    /// The cached connection to `addr`, or a new one. Within [`DIAL_BACKOFF`] of a failed
    /// dial, calls fail at once (not sent) and the peer is redialled in the background, so
    /// raft retrying a dead peer, or a request polling for a new leader, does not sit out a
    /// connect timeout on every call; a redial that fails renews the period.
    async fn connection(&self, addr: &str) -> Result<quinn::Connection, RpcError> {
        if let Some(c) = self.inner.connections.lock().await.get(addr)
            && c.close_reason().is_none()
            && !self.idled_out(addr)
        {
            return Ok(c.clone());
        }
        let start_redial = match self.down().get_mut(addr) {
            Some(down) if down.redialling || down.failed_at.elapsed() < DIAL_BACKOFF => {
                Some(!std::mem::replace(&mut down.redialling, true))
            }
            _ => None,
        };
        let Some(start_redial) = start_redial else {
            return self.dial_and_cache(addr).await;
        };
        if start_redial {
            let (peers, addr) = (self.clone(), addr.to_owned());
            tokio::spawn(async move { peers.dial_and_cache(&addr).await.map(drop) });
        }
        Err(RpcError::Unreachable {
            addr: addr.to_owned(),
            reason: "down (a dial just failed); redialling".into(),
        })
    }

    async fn dial_and_cache(&self, addr: &str) -> Result<quinn::Connection, RpcError> {
        match self.dial(addr).await {
            Ok(conn) => {
                self.down().remove(addr);
                let mut connections = self.inner.connections.lock().await;
                connections.insert(addr.to_owned(), conn.clone());
                Ok(conn)
            }
            Err(e) => {
                let down = Down {
                    failed_at: tokio::time::Instant::now(),
                    redialling: false,
                };
                self.down().insert(addr.to_owned(), down);
                Err(e)
            }
        }
    }

    fn down(&self) -> std::sync::MutexGuard<'_, HashMap<String, Down>> {
        // Plain data, valid after any panic elsewhere.
        self.inner.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn dial(&self, addr: &str) -> Result<quinn::Connection, RpcError> {
        let unreachable = |reason: String| RpcError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| unreachable("address has no :port".into()))?;
        let sock: SocketAddr = tokio::net::lookup_host((
            host.trim_matches(['[', ']']),
            port.parse::<u16>()
                .map_err(|e| unreachable(e.to_string()))?,
        ))
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .next()
        .ok_or_else(|| unreachable("resolves to no address".into()))?;
        let trust = ClientTrust::resolve(self.inner.ca.as_deref(), host)
            .map_err(|e| unreachable(e.to_string()))?;
        let endpoint = client_endpoint(sock, &trust, ALPN_RAFT, &self.inner.tuning)
            .map_err(|e| unreachable(e.to_string()))?;
        let server_name = if host.parse::<std::net::IpAddr>().is_ok() {
            host.to_owned()
        } else {
            "localhost".to_owned()
        };
        let connecting = endpoint
            .connect(sock, &server_name)
            .map_err(|e| unreachable(e.to_string()))?;
        let handshake = async {
            // Under injected faults a handshake is a round trip that never completes if either
            // way is cut.
            if self.cross(addr, true).await.is_err() || self.cross(addr, false).await.is_err() {
                std::future::pending::<()>().await;
            }
            connecting.await
        };
        // A live peer answers a handshake in about a millisecond here; a dead one never does.
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| unreachable(format!("no handshake within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        client_handshake(&conn, &self.inner.name, MAX_RPC_FRAME)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(conn)
    }
}

/// The address a raft member is reached at.
pub fn node_addr(node: &BasicNode) -> &str {
    &node.addr
}
