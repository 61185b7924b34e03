//! [`MetaStore`]: the public handle — open, read, write, watch, shut down.
//!
//! Writes go through `Raft::client_write` and return what the state machine's apply produced.
//! Reads call `Raft::ensure_linearizable` (this node is still leader and has applied everything
//! committed before the read began) and then read RocksDB directly.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::{BasicNode, Raft};
use strata_proto::pb::metastore::KeyValue;
use tokio::sync::Mutex;
use tracing::{debug, info, instrument};

use crate::MetaError;
use crate::config::MetaStoreConfig;
use crate::db::{self, Core, GuardWaiter};
use crate::group_commit::GroupCommit;
use crate::lease::{KeepAlive, LeaseClock};
use crate::log_store::LogStore;
use crate::membership::Eviction;
use crate::network::QuicNetworkFactory;
use crate::node_server::NodeServer;
use crate::rpc::{NodeRequest, NodeResponse, PeerClient, RemoteError, WireKv};
use crate::state_machine::StateMachine;
use crate::types::{
    Command, CommandResult, Compare, Expect, LeaseId, NodeId, STANDALONE_NODE_ID, Txn, TxnOp,
    TxnResponse, TypeConfig, Written,
};
use crate::watch::Watcher;

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 4096;

/// A handle to the metastore. Cheap to clone, `Send + Sync`.
///
/// The database stays open while any clone (or [`Watcher`]) lives; to reopen the same
/// directory, call [`MetaStore::shutdown`] and drop every clone and watcher first.
#[derive(Clone)]
pub struct MetaStore {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    core: Arc<Core>,
    config: MetaStoreConfig,
    raft_released: Mutex<GuardWaiter>,
    /// Connections to the other nodes (raft traffic and forwarding).
    peers: PeerClient,
    /// This node's RPC server, when clustered.
    server: std::sync::Mutex<Option<NodeServer>>,
    /// Lease deadlines, kept while this node leads.
    lease_clock: std::sync::Mutex<LeaseClock>,
    /// Set when this node learns it was removed from the cluster.
    eviction: Eviction,
    /// The queue that packs concurrent writes into shared raft entries.
    group_commit: GroupCommit,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl: Duration,
}

/// One page of a prefix scan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanPage {
    /// Keys in key order.
    pub kvs: Vec<KeyValue>,
    /// More keys follow the last one: ask again with `start_after` = its key.
    pub more: bool,
}

/// Most keys one scan page returns.
pub const MAX_SCAN_PAGE: u32 = 10_000;

/// How a clustered node identifies itself and finds its peers.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node_id: NodeId,
    /// Where the node RPC server listens (port 0 picks one).
    pub listen: std::net::SocketAddr,
    /// The voters of a new cluster, id → `host:port`, this node included. Used once, when
    /// this node's log is empty; restarting with the same list is a no-op.
    ///
    /// Empty: join an existing cluster. The node starts without initialising raft and waits
    /// to be added ([`MetaStore::add_learner`] on any member); until then it is not a member.
    pub initial_members: BTreeMap<NodeId, String>,
    pub tls: strata_transport::ServerTls,
    /// CA of the peers' certificates (none: loopback peers only, development trust).
    pub ca: Option<std::path::PathBuf>,
    /// Test hook: drop and delay this node's RPCs as the shared table says (see
    /// [`crate::faults`]). `None` in production.
    pub faults: Option<crate::Faults>,
}

fn validate_key(key: &str) -> Result<(), MetaError> {
    let reason = if key.is_empty() {
        "key is empty"
    } else if key.len() > MAX_KEY_LEN {
        "key is longer than 4096 bytes"
    } else {
        return Ok(());
    };
    Err(MetaError::InvalidKey {
        key: key.to_string(),
        reason,
    })
}

impl MetaStore {
    /// Opens or creates a single-voter metastore in `dir` (creating the directory).
    ///
    /// Bootstrapping (initialising raft with this node as the only voter) is idempotent across
    /// restarts. Returns once this node is leader and has applied everything in its log, so
    /// reads after it see every durable write.
    #[instrument(skip_all, fields(dir = %dir.display()))]
    pub async fn open_standalone(
        dir: &Path,
        config: MetaStoreConfig,
    ) -> Result<MetaStore, MetaError> {
        let store = Self::build(dir, config, STANDALONE_NODE_ID, None, None).await?;
        match store.bootstrap().await {
            Ok(()) => {
                info!(revision = store.current_revision(), "metastore ready");
                Ok(store)
            }
            Err(e) => {
                // Stop raft so it releases the database before we report the failure.
                if let Err(shutdown_err) = store.shutdown().await {
                    debug!(error = %shutdown_err, "shutdown after a failed open");
                }
                Err(e)
            }
        }
    }

    /// Opens or creates one voter of a replicated metastore and starts its RPC server.
    ///
    /// On first start (empty log) the cluster is initialised with `initial_members`; every
    /// member may do so, with the same list, and restarts skip it, so bootstrapping is
    /// idempotent. Returns without waiting for a leader: see [`MetaStore::wait_for_leader`].
    #[instrument(skip_all, fields(dir = %dir.display(), node = node.node_id))]
    pub async fn open_node(
        dir: &Path,
        config: MetaStoreConfig,
        node: NodeOptions,
    ) -> Result<MetaStore, MetaError> {
        let joining = node.initial_members.is_empty();
        if !joining && !node.initial_members.contains_key(&node.node_id) {
            return Err(MetaError::Raft(format!(
                "node {} is not among the initial members {:?}",
                node.node_id,
                node.initial_members.keys().collect::<Vec<_>>()
            )));
        }
        let store = Self::build(
            dir,
            config,
            node.node_id,
            node.ca.clone(),
            node.faults.clone(),
        )
        .await?;
        let server = match NodeServer::start(node.listen, &node.tls, store.clone()) {
            Ok(s) => s,
            Err(e) => {
                let _ = store.shutdown().await;
                return Err(e);
            }
        };
        info!(listen = ?server.local_addr().ok(), "metastore node RPC server up");
        *store.inner.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
        let raft = &store.inner.raft;
        if !joining && !raft.is_initialized().await? {
            let members: BTreeMap<NodeId, BasicNode> = node
                .initial_members
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => info!("initialised a new metastore cluster"),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => {
                    let _ = store.shutdown().await;
                    return Err(e.into());
                }
            }
        }
        Ok(store)
    }

    async fn build(
        dir: &Path,
        config: MetaStoreConfig,
        node_id: NodeId,
        ca: Option<std::path::PathBuf>,
        faults: Option<crate::Faults>,
    ) -> Result<MetaStore, MetaError> {
        let raft_config = config.raft_config()?;
        let path = dir.to_path_buf();
        let capacity = config.watch_channel_capacity;
        let core = tokio::task::spawn_blocking(move || -> Result<Arc<Core>, MetaError> {
            std::fs::create_dir_all(&path)
                .map_err(|e| MetaError::Storage(format!("creating {}: {e}", path.display())))?;
            Ok(Core::open(&path, capacity)?)
        })
        .await
        .map_err(|e| MetaError::Storage(format!("opening the database: {e}")))??;

        let (guard, raft_released) = db::raft_guard();
        let log_store = LogStore::new(core.clone(), guard.clone())
            .map_err(|e| MetaError::Storage(format!("cannot start the WAL sync thread: {e}")))?;
        let state_machine = StateMachine::open(core.clone(), guard)?;
        let name = format!("strata-metastore-{node_id}");
        let peers = match faults {
            Some(faults) => PeerClient::with_faults(name, ca, node_id, faults),
            None => PeerClient::new(name, ca),
        };
        let raft = Raft::new(
            node_id,
            raft_config,
            QuicNetworkFactory::new(peers.clone()),
            log_store,
            state_machine,
        )
        .await?;
        let grace = Duration::from_millis(config.lease_grace_ms);
        let interval = Duration::from_millis(config.housekeeping_interval_ms);
        let store = MetaStore {
            inner: Arc::new(Inner {
                node_id,
                core,
                config,
                raft_released: Mutex::new(raft_released),
                peers,
                server: std::sync::Mutex::new(None),
                lease_clock: std::sync::Mutex::new(LeaseClock::new(grace)),
                eviction: Eviction::default(),
                group_commit: GroupCommit::start(raft.clone()),
                raft,
            }),
        };
        tokio::spawn(housekeeping(Arc::downgrade(&store.inner), interval));
        Ok(store)
    }

    /// Waits until some node is known as leader; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, MetaError> {
        let metrics = self
            .inner
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a known leader")
            .await
            .map_err(|e| match e {
                WaitError::ShuttingDown => MetaError::Closed,
                WaitError::Timeout(after, _) => {
                    MetaError::NotLeader { leader: None }.with_context(after)
                }
            })?;
        metrics
            .current_leader
            .ok_or(MetaError::NotLeader { leader: None })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Raft's view from this node: leader, term, log indexes, membership, replication.
    pub fn raft_metrics(&self) -> openraft::RaftMetrics<NodeId, BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    /// Initialises the one-voter group if needed, then waits for leadership and for every
    /// log entry to be applied.
    async fn bootstrap(&self) -> Result<(), MetaError> {
        let raft = &self.inner.raft;
        if !raft.is_initialized().await? {
            let members = BTreeMap::from([(STANDALONE_NODE_ID, BasicNode::default())]);
            match raft.initialize(members).await {
                Ok(()) => info!("initialised a new one-voter metastore"),
                // Raced with an earlier initialisation: already done.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let timeout = Duration::from_millis(self.inner.config.startup_timeout_ms);
        raft.wait(Some(timeout))
            .metrics(
                |m| m.current_leader == Some(STANDALONE_NODE_ID),
                "metastore leadership",
            )
            .await
            .map_err(|e| match e {
                WaitError::ShuttingDown => MetaError::Closed,
                WaitError::Timeout(after, _) => {
                    MetaError::Raft(format!("this node did not become leader within {after:?}"))
                }
            })?;
        // Waits until everything committed (all of our log, as the only voter) is applied.
        raft.ensure_linearizable().await?;
        Ok(())
    }

    /// The raft handle, for tests that wait on raft metrics.
    #[cfg(test)]
    pub(crate) fn inner_raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    pub(crate) fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    pub(crate) fn peers(&self) -> &PeerClient {
        &self.inner.peers
    }

    #[cfg(test)]
    pub(crate) fn config(&self) -> &MetaStoreConfig {
        &self.inner.config
    }

    pub(crate) fn eviction(&self) -> &Eviction {
        &self.inner.eviction
    }

    /// This node's own copy of `key`, not linearized (tests of replication).
    #[cfg(test)]
    pub(crate) fn local_get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        Ok(self.inner.core.get_kv(key)?)
    }

    fn check_open(&self) -> Result<(), MetaError> {
        if self.inner.core.is_closed() {
            Err(MetaError::Closed)
        } else {
            Ok(())
        }
    }

    async fn linearize(&self) -> Result<(), MetaError> {
        self.check_open()?;
        self.inner.raft.ensure_linearizable().await?;
        Ok(())
    }

    /// Refuses a malformed command before it reaches the log: bad keys, oversized values,
    /// lease TTLs out of range. Runs on every node a command passes, clients' and forwarded.
    fn check_command(&self, cmd: &Command) -> Result<(), MetaError> {
        let config = &self.inner.config;
        let check_value = |key: &str, value: &Bytes| {
            if value.len() > config.max_value_size {
                return Err(MetaError::ValueTooLarge {
                    key: key.to_string(),
                    len: value.len(),
                    max: config.max_value_size,
                });
            }
            Ok(())
        };
        match cmd {
            Command::Put { key, value, .. } => {
                validate_key(key)?;
                check_value(key, value)
            }
            Command::Delete { key, .. } => validate_key(key),
            Command::Txn(txn) => {
                for key in txn.compares.iter().filter_map(Compare::key) {
                    validate_key(key)?;
                }
                for op in txn.success.iter().chain(&txn.failure) {
                    validate_key(op.key())?;
                    if let TxnOp::Put { key, value, .. } = op {
                        check_value(key, value)?;
                    }
                }
                Ok(())
            }
            Command::LeaseGrant { ttl_ms } => {
                let (min_ms, max_ms) = (config.lease_min_ttl_ms, config.lease_max_ttl_ms);
                if (min_ms..=max_ms).contains(ttl_ms) {
                    Ok(())
                } else {
                    Err(MetaError::InvalidLeaseTtl {
                        ttl_ms: *ttl_ms,
                        min_ms,
                        max_ms,
                    })
                }
            }
            Command::LeaseRevoke { .. } | Command::Compact { .. } => Ok(()),
            // Only the group commit builds batches, from commands checked one by one.
            Command::Batch { .. } => Err(MetaError::InvalidRequest(
                "a batch command is built by the leader, not proposed".into(),
            )),
        }
    }

    /// Proposes on this node, which must be leader (forwarded requests land here).
    pub(crate) async fn propose_here(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        self.check_open()?;
        self.check_command(&cmd)?;
        match self.inner.group_commit.propose(cmd).await {
            Some(result) => Ok(result?),
            None => Err(MetaError::OutcomeUnknown {
                reason: "the metastore shut down while the write was proposed".into(),
            }),
        }
    }

    /// Proposes here if this node leads, else on the leader; follows leader changes until
    /// `request_timeout_ms`.
    pub(crate) async fn propose(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        self.check_command(&cmd)?;
        let request = NodeRequest::Write {
            cmd: cmd.clone(),
            forwarded: true,
        };
        self.routed(
            || self.propose_here(cmd.clone()),
            &request,
            |resp| match resp {
                NodeResponse::Write(r) => Some(r),
                _ => None,
            },
        )
        .await
    }

    /// Sends `req` to the leader (waiting for one to be known), allowing `rpc_timeout` for its
    /// answer. `Ok(None)`: leadership moved (or came here) meanwhile, so the caller should
    /// route again.
    pub(crate) async fn forward_timed(
        &self,
        hint: Option<NodeId>,
        req: &NodeRequest,
        deadline: tokio::time::Instant,
        rpc_timeout: Duration,
    ) -> Result<Option<NodeResponse>, MetaError> {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(MetaError::NotLeader { leader: hint });
        }
        let leader = match hint {
            Some(id) => id,
            // Also finds out, by asking the peers, whether this node was removed.
            None => self.find_leader(remaining).await?,
        };
        if leader == self.inner.node_id {
            // Elected here since the attempt: route again (after a moment to settle).
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Ok(None);
        }
        let Some(addr) = self.member_addr(leader).await? else {
            return Err(MetaError::Raft(format!(
                "leader {leader} has no address in the membership"
            )));
        };
        match self.inner.peers.call(&addr, req, rpc_timeout).await {
            Ok(resp) => Ok(Some(resp)),
            // Not sent: the leader we knew is gone; wait for the next one and route again.
            Err(crate::rpc::RpcError::NotSent { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(None)
            }
            // A write may or may not have been applied: say so instead of retrying blindly.
            Err(e)
                if matches!(
                    req,
                    NodeRequest::Write { .. } | NodeRequest::ChangeMembership { .. }
                ) =>
            {
                Err(MetaError::OutcomeUnknown {
                    reason: format!("forwarding to leader {leader} failed: {e}"),
                })
            }
            // Reads and keep-alives are safe to repeat: route again.
            Err(e) => {
                debug!(leader, error = %e, "forwarding failed; routing again");
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(None)
            }
        }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.request_timeout_ms)
    }

    /// Linearizable read of one key on this node, which must be leader.
    pub(crate) async fn get_here(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        self.linearize().await?;
        Ok(self.inner.core.get_kv(key)?)
    }

    /// Linearizable scan on this node, which must be leader.
    pub(crate) async fn scan_here(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
        self.linearize().await?;
        Ok(self.inner.core.scan(prefix)?)
    }

    /// The current value of `key` (linearizable; read on the leader).
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        validate_key(key)?;
        let request = NodeRequest::Get {
            key: key.to_owned(),
            forwarded: true,
        };
        self.routed(
            || self.get_here(key),
            &request,
            |resp| match resp {
                NodeResponse::Get(r) => Some(r.map(|kv| kv.map(WireKv::into_key_value))),
                _ => None,
            },
        )
        .await
    }

    /// Runs `here` on this node if it leads, else sends `request` to the leader and reads its
    /// answer with `answer`; follows leader changes until `request_timeout_ms`.
    async fn routed<T, F, Fut>(
        &self,
        here: F,
        request: &NodeRequest,
        answer: fn(NodeResponse) -> Option<Result<T, RemoteError>>,
    ) -> Result<T, MetaError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, MetaError>>,
    {
        self.routed_timed(here, request, crate::rpc::FORWARD_TIMEOUT, answer)
            .await
    }

    /// [`MetaStore::routed`] with its own limit on each answer from the leader.
    pub(crate) async fn routed_timed<T, F, Fut>(
        &self,
        mut here: F,
        request: &NodeRequest,
        rpc_timeout: Duration,
        answer: fn(NodeResponse) -> Option<Result<T, RemoteError>>,
    ) -> Result<T, MetaError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, MetaError>>,
    {
        // A node removed from the cluster says so at once instead of waiting for a leader.
        self.check_member().await?;
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        loop {
            let hint = match here().await {
                Err(MetaError::NotLeader { leader }) => leader,
                other => return other,
            };
            let Some(response) = self
                .forward_timed(hint, request, deadline, rpc_timeout)
                .await?
            else {
                continue;
            };
            match answer(response) {
                Some(Ok(value)) => return Ok(value),
                // Leadership moved on between our look and its answer: route again.
                Some(Err(RemoteError::NotLeader { .. })) => {}
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(MetaError::Raft(format!(
                        "the leader answered {request:?} with a response of another kind"
                    )));
                }
            }
        }
    }

    /// Sets `key` to `value` if `expect` holds. A key bound to a lease stays bound to it.
    pub async fn put(&self, key: &str, value: Bytes, expect: Expect) -> Result<Written, MetaError> {
        self.put_inner(key, value, expect, 0).await
    }

    async fn put_inner(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        lease: LeaseId,
    ) -> Result<Written, MetaError> {
        let cmd = Command::Put {
            key: key.to_string(),
            value,
            expect,
            lease,
        };
        self.propose(cmd).await?.into_put(key, expect)
    }

    /// Deletes `key` if `expect` holds. `Ok(true)` if a key was deleted, `Ok(false)` if it was
    /// absent and `expect` allowed that (`Any` or `Absent`).
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<bool, MetaError> {
        let cmd = Command::Delete {
            key: key.to_string(),
            expect,
        };
        self.propose(cmd).await?.into_delete(key, expect)
    }

    /// Runs a multi-key transaction atomically (see [`Txn`]): the comparisons and the chosen
    /// branch's operations are one raft entry.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        self.propose(Command::Txn(txn)).await?.into_txn()
    }

    /// All keys starting with `prefix`, in key order (linearizable). For prefixes that may
    /// hold many keys, use [`MetaStore::scan_page`].
    pub async fn scan(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
        let request = NodeRequest::Scan {
            prefix: prefix.to_owned(),
            forwarded: true,
        };
        self.routed(
            || self.scan_here(prefix),
            &request,
            |resp| match resp {
                NodeResponse::Scan(r) => {
                    Some(r.map(|kvs| kvs.into_iter().map(WireKv::into_key_value).collect()))
                }
                _ => None,
            },
        )
        .await
    }

    /// At most `limit` keys under `prefix` that sort after `start_after` ("" = from the first),
    /// in key order. Each page is a linearizable read of its own; pages of a prefix that is
    /// changing meanwhile are not one snapshot.
    pub async fn scan_page(
        &self,
        prefix: &str,
        start_after: &str,
        limit: u32,
    ) -> Result<ScanPage, MetaError> {
        let request = NodeRequest::ScanPage {
            prefix: prefix.to_owned(),
            start_after: start_after.to_owned(),
            limit,
            forwarded: true,
        };
        self.routed(
            || self.scan_page_here(prefix, start_after, limit),
            &request,
            |resp| match resp {
                NodeResponse::ScanPage(r) => Some(r.map(|page| ScanPage {
                    kvs: page.kvs.into_iter().map(WireKv::into_key_value).collect(),
                    more: page.more,
                })),
                _ => None,
            },
        )
        .await
    }

    /// One scan page on this node, which must be leader.
    pub(crate) async fn scan_page_here(
        &self,
        prefix: &str,
        start_after: &str,
        limit: u32,
    ) -> Result<ScanPage, MetaError> {
        if limit == 0 || limit > MAX_SCAN_PAGE {
            return Err(MetaError::InvalidRequest(format!(
                "scan page limit {limit} is outside 1..={MAX_SCAN_PAGE}"
            )));
        }
        self.linearize().await?;
        let (kvs, more) = self
            .inner
            .core
            .scan_page(prefix, start_after, limit as usize)?;
        Ok(ScanPage { kvs, more })
    }

    /// Creates a lease that lives `ttl` unless kept alive (see [`MetaStore::lease_keep_alive`]);
    /// keys put with it are deleted when it ends.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<Lease, MetaError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.propose(Command::LeaseGrant { ttl_ms })
            .await?
            .into_lease_grant()
    }

    /// Ends a lease now and deletes its keys; returns how many keys were deleted.
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<u64, MetaError> {
        self.propose(Command::LeaseRevoke { id, expired: false })
            .await?
            .into_lease_revoke()
    }

    /// Restarts the lease's TTL on the leader; returns the TTL. Fails with
    /// [`MetaError::LeaseNotFound`] once the lease has expired or was revoked.
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration, MetaError> {
        let request = NodeRequest::LeaseKeepAlive {
            id,
            forwarded: true,
        };
        self.routed(
            || self.lease_keep_alive_here(id),
            &request,
            |resp| match resp {
                NodeResponse::LeaseKeepAlive(r) => Some(r.map(Duration::from_millis)),
                _ => None,
            },
        )
        .await
    }

    /// A keep-alive on this node, which must be leader.
    pub(crate) async fn lease_keep_alive_here(&self, id: LeaseId) -> Result<Duration, MetaError> {
        // Leader, and every committed grant and revoke applied here.
        self.linearize().await?;
        let Some(lease) = self.inner.core.get_lease(id)? else {
            return Err(MetaError::LeaseNotFound { id });
        };
        self.tick_lease_clock();
        let outcome = self
            .lock_clock()
            .keep_alive(id, lease.ttl_ms, tokio::time::Instant::now());
        match outcome {
            KeepAlive::Renewed => Ok(Duration::from_millis(lease.ttl_ms)),
            KeepAlive::Expired => Err(MetaError::LeaseNotFound { id }),
            KeepAlive::NotLeader => Err(MetaError::NotLeader {
                leader: self.inner.raft.metrics().borrow().current_leader,
            }),
        }
    }

    /// Sets `key` to `value` if `expect` holds, bound to `lease`: the key is deleted when the
    /// lease ends. Fails with [`MetaError::LeaseNotFound`] if the lease is gone.
    pub async fn put_leased(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        lease: LeaseId,
    ) -> Result<Written, MetaError> {
        self.put_inner(key, value, expect, lease).await
    }

    /// Drops the change history below `revision`; watches from older revisions then fail with
    /// [`MetaError::Compacted`]. Returns the oldest revision kept. The leader also compacts
    /// on its own (`history_keep_revisions`).
    pub async fn compact(&self, revision: u64) -> Result<u64, MetaError> {
        self.propose(Command::Compact { revision })
            .await?
            .into_compact()
    }

    /// Number of live leases (as applied on this node).
    pub fn lease_count(&self) -> u64 {
        self.inner.core.lease_ttls().len() as u64
    }

    /// Oldest revision a watch can start from.
    pub fn oldest_revision(&self) -> u64 {
        self.inner.core.oldest_revision()
    }

    fn lock_clock(&self) -> std::sync::MutexGuard<'_, LeaseClock> {
        // The clock's state stays consistent across a panic in a caller: each method is a
        // single update.
        self.inner
            .lease_clock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this node is the raft leader now (by its server state).
    pub fn is_leader(&self) -> bool {
        self.leading_term().is_some()
    }

    /// The term this node leads in, if it does.
    fn leading_term(&self) -> Option<u64> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        (m.state == openraft::ServerState::Leader && m.current_leader == Some(self.inner.node_id))
            .then_some(m.current_term)
    }

    /// Updates the lease clock and proposes a revoke for every lease that expired.
    fn tick_lease_clock(&self) {
        let expired = self.lock_clock().tick(
            tokio::time::Instant::now(),
            self.leading_term(),
            &self.inner.core.lease_ttls(),
        );
        for id in expired {
            let store = self.clone();
            tokio::spawn(async move {
                let result = store
                    .propose_here(Command::LeaseRevoke { id, expired: true })
                    .await;
                match result {
                    Ok(CommandResult::LeaseRevoked { deleted_keys, .. }) => {
                        info!(lease = id, deleted_keys, "lease expired");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(lease = id, error = %e, "expiring a lease did not commit");
                        store.lock_clock().revoke_failed(id);
                    }
                }
            });
        }
    }

    /// One round of the leader's periodic work: lease expiry and history compaction.
    async fn housekeep(&self) {
        self.tick_lease_clock();
        let keep = self.inner.config.history_keep_revisions;
        if keep == 0 || self.leading_term().is_none() {
            return;
        }
        let core = &self.inner.core;
        let target = core.revision().saturating_sub(keep);
        // Compact in steps of a tenth of what is kept, not on every new revision.
        if target > core.oldest_revision().saturating_add(keep / 10) {
            match self
                .propose_here(Command::Compact { revision: target })
                .await
            {
                Ok(_) => debug!(oldest = target, "history compacted"),
                Err(e) => debug!(error = %e, "history compaction did not commit"),
            }
        }
    }

    /// Streams every change under `prefix` with revision >= `from_revision`, history first,
    /// then live, in revision order, with no gaps and no duplicates.
    ///
    /// As in etcd, `from_revision == 0` means "from now on" (`current_revision() + 1`).
    /// A `from_revision` older than the kept history fails with [`MetaError::Compacted`].
    pub async fn watch(&self, prefix: &str, from_revision: u64) -> Result<Watcher, MetaError> {
        self.check_open()?;
        Watcher::start(self.inner.core.clone(), prefix, from_revision)
    }

    /// Allocates the next value of the counter at `key` (an 8-byte big-endian u64), by
    /// compare-and-set retry. The first call returns 1; concurrent callers get distinct,
    /// gapless values.
    pub async fn next_id(&self, key: &str) -> Result<u64, MetaError> {
        crate::Meta::Local(self.clone()).next_id(key).await
    }

    /// Revision of the last applied change (0 before the first).
    pub fn current_revision(&self) -> u64 {
        self.inner.core.revision()
    }

    /// Stops raft and waits until it no longer uses the database. Idempotent. Calls made
    /// afterwards fail with [`MetaError::Closed`]; watchers end with `Err(Closed)`.
    pub async fn shutdown(&self) -> Result<(), MetaError> {
        if let Some(server) = self
            .inner
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            server.stop();
        }
        self.inner.core.close();
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| MetaError::Raft(format!("raft task failed: {e}")))?;
        self.inner.raft_released.lock().await.released().await;
        Ok(())
    }
}

/// The leader's periodic work, every `interval` while the store lives and is open.
async fn housekeeping(inner: std::sync::Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let store = MetaStore { inner };
        if store.inner.core.is_closed() {
            return;
        }
        store.housekeep().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handle and watchers can move across tasks: `MetaStore` is `Clone + Send + Sync`,
    /// and `Watcher` and the futures of its `next()` and of the store's calls are `Send`.
    #[test]
    fn handles_and_futures_are_send() {
        fn send_sync_clone<T: Send + Sync + Clone>() {}
        fn send<T: Send>(_: &T) {}
        send_sync_clone::<MetaStore>();
        #[allow(dead_code)]
        fn futures_are_send(store: &MetaStore, watcher: &mut Watcher) {
            send(&store.get("k"));
            send(&store.put("k", Bytes::new(), Expect::Any));
            send(&store.next_id("k"));
            send(&store.watch("", 0));
            send(&watcher.next());
        }
    }

    /// Keys must be non-empty and at most 4 KiB.
    #[test]
    fn key_validation_bounds() {
        assert!(matches!(
            validate_key(""),
            Err(MetaError::InvalidKey { .. })
        ));
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(matches!(
            validate_key(&"k".repeat(MAX_KEY_LEN + 1)),
            Err(MetaError::InvalidKey { .. })
        ));
    }
}
