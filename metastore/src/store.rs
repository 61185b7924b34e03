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
use crate::keys;
use crate::log_store::LogStore;
use crate::network::QuicNetworkFactory;
use crate::node_server::NodeServer;
use crate::rpc::{NodeRequest, NodeResponse, PeerClient, RemoteError, WireKv};
use crate::state_machine::StateMachine;
use crate::types::{
    Command, CommandResult, Compare, Expect, NodeId, STANDALONE_NODE_ID, Txn, TxnOp, TxnResponse,
    TypeConfig, Written,
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
}

/// How a clustered node identifies itself and finds its peers.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node_id: NodeId,
    /// Where the node RPC server listens (port 0 picks one).
    pub listen: std::net::SocketAddr,
    /// The voters of a new cluster, id → `host:port`, this node included. Used once, when
    /// this node's log is empty; restarting with the same list is a no-op.
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
        if !node.initial_members.contains_key(&node.node_id) {
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
        if !raft.is_initialized().await? {
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
        let log_store = LogStore::new(core.clone(), guard.clone());
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
        Ok(MetaStore {
            inner: Arc::new(Inner {
                node_id,
                raft,
                core,
                config,
                raft_released: Mutex::new(raft_released),
                peers,
                server: std::sync::Mutex::new(None),
            }),
        })
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

    /// Proposes on this node, which must be leader (forwarded requests land here).
    pub(crate) async fn propose_here(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        self.check_open()?;
        let resp = self.inner.raft.client_write(cmd).await?;
        Ok(resp.data)
    }

    /// Proposes here if this node leads, else on the leader; follows leader changes until
    /// `request_timeout_ms`.
    pub(crate) async fn propose(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        loop {
            let hint = match self.propose_here(cmd.clone()).await {
                Err(MetaError::NotLeader { leader }) => leader,
                other => return other,
            };
            match self
                .forward(
                    hint,
                    &NodeRequest::Write {
                        cmd: cmd.clone(),
                        forwarded: true,
                    },
                    deadline,
                )
                .await?
            {
                Some(NodeResponse::Write(Ok(result))) => return Ok(result),
                Some(NodeResponse::Write(Err(e))) => remote_error(e)?,
                Some(other) => return Err(mismatched("Write", &other)),
                None => {}
            }
        }
    }

    /// Sends `req` to the leader (waiting for one to be known). `Ok(None)`: leadership moved
    /// (or came here) meanwhile, so the caller should route again.
    async fn forward(
        &self,
        hint: Option<NodeId>,
        req: &NodeRequest,
        deadline: tokio::time::Instant,
    ) -> Result<Option<NodeResponse>, MetaError> {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(MetaError::NotLeader { leader: hint });
        }
        let leader = match hint {
            Some(id) => id,
            None => self.wait_for_leader(remaining).await?,
        };
        if leader == self.inner.node_id {
            // Elected here since the attempt: route again (after a moment to settle).
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Ok(None);
        }
        let addr = {
            let metrics = self.inner.raft.metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.addr.clone())
        };
        let Some(addr) = addr else {
            return Err(MetaError::Raft(format!(
                "leader {leader} has no address in the membership"
            )));
        };
        match self
            .inner
            .peers
            .call(&addr, req, crate::rpc::FORWARD_TIMEOUT)
            .await
        {
            Ok(resp) => Ok(Some(resp)),
            // Not sent: the leader we knew is gone; wait for the next one and route again.
            Err(crate::rpc::RpcError::NotSent { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(None)
            }
            // The request may or may not have been applied: say so instead of retrying blindly.
            Err(e) => Err(MetaError::Raft(format!(
                "forwarding to leader {leader} failed, outcome unknown: {e}"
            ))),
        }
    }

    fn request_timeout(&self) -> Duration {
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
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        loop {
            let hint = match self.get_here(key).await {
                Err(MetaError::NotLeader { leader }) => leader,
                other => return other,
            };
            match self
                .forward(
                    hint,
                    &NodeRequest::Get {
                        key: key.to_owned(),
                        forwarded: true,
                    },
                    deadline,
                )
                .await?
            {
                Some(NodeResponse::Get(Ok(kv))) => return Ok(kv.map(WireKv::into_key_value)),
                Some(NodeResponse::Get(Err(e))) => remote_error(e)?,
                Some(other) => return Err(mismatched("Get", &other)),
                None => {}
            }
        }
    }

    /// Sets `key` to `value` if `expect` holds.
    pub async fn put(&self, key: &str, value: Bytes, expect: Expect) -> Result<Written, MetaError> {
        validate_key(key)?;
        let max = self.inner.config.max_value_size;
        if value.len() > max {
            return Err(MetaError::ValueTooLarge {
                key: key.to_string(),
                len: value.len(),
                max,
            });
        }
        let cmd = Command::Put {
            key: key.to_string(),
            value,
            expect,
        };
        match self.propose(cmd).await? {
            CommandResult::Written(w) => Ok(w),
            CommandResult::Mismatch { actual } => Err(MetaError::VersionMismatch {
                key: key.to_string(),
                expected: expect,
                actual,
            }),
            other => Err(unexpected("put", &other)),
        }
    }

    /// Deletes `key` if `expect` holds. `Ok(true)` if a key was deleted, `Ok(false)` if it was
    /// absent and `expect` allowed that (`Any` or `Absent`).
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<bool, MetaError> {
        validate_key(key)?;
        let cmd = Command::Delete {
            key: key.to_string(),
            expect,
        };
        match self.propose(cmd).await? {
            CommandResult::Deleted { .. } => Ok(true),
            CommandResult::Absent => Ok(false),
            CommandResult::Mismatch { actual } => Err(MetaError::VersionMismatch {
                key: key.to_string(),
                expected: expect,
                actual,
            }),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// Runs a multi-key transaction atomically (see [`Txn`]): the comparisons and the chosen
    /// branch's operations are one raft entry.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        let keys = txn.compares.iter().map(|c| match c {
            Compare::Version { key, .. } | Compare::Value { key, .. } => key.as_str(),
        });
        for key in keys.chain(txn.success.iter().chain(&txn.failure).map(TxnOp::key)) {
            validate_key(key)?;
        }
        let max = self.inner.config.max_value_size;
        for op in txn.success.iter().chain(&txn.failure) {
            if let TxnOp::Put { key, value } = op
                && value.len() > max
            {
                return Err(MetaError::ValueTooLarge {
                    key: key.clone(),
                    len: value.len(),
                    max,
                });
            }
        }
        match self.propose(Command::Txn(txn)).await? {
            CommandResult::Txn(r) => Ok(r),
            other => Err(unexpected("txn", &other)),
        }
    }

    /// All keys starting with `prefix`, in key order (linearizable).
    pub async fn scan(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        loop {
            let hint = match self.scan_here(prefix).await {
                Err(MetaError::NotLeader { leader }) => leader,
                other => return other,
            };
            match self
                .forward(
                    hint,
                    &NodeRequest::Scan {
                        prefix: prefix.to_owned(),
                        forwarded: true,
                    },
                    deadline,
                )
                .await?
            {
                Some(NodeResponse::Scan(Ok(kvs))) => {
                    return Ok(kvs.into_iter().map(WireKv::into_key_value).collect());
                }
                Some(NodeResponse::Scan(Err(e))) => remote_error(e)?,
                Some(other) => return Err(mismatched("Scan", &other)),
                None => {}
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
        loop {
            let (next, expect) = match self.get(key).await? {
                None => (1, Expect::Absent),
                Some(kv) => {
                    let current = keys::decode_u64("counter", &kv.value).map_err(|_| {
                        MetaError::InvalidKey {
                            key: key.to_string(),
                            reason: "not a counter: value is not an 8-byte big-endian u64",
                        }
                    })?;
                    let next = current
                        .checked_add(1)
                        .ok_or_else(|| MetaError::InvalidKey {
                            key: key.to_string(),
                            reason: "counter is exhausted (u64::MAX)",
                        })?;
                    (next, Expect::Version(kv.version))
                }
            };
            let value = Bytes::copy_from_slice(&next.to_be_bytes());
            match self.put(key, value, expect).await {
                Ok(_) => return Ok(next),
                // Somebody else allocated in between: re-read and try again.
                Err(MetaError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
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

/// A forwarded request's failure: `NotLeader` means route again (returns Ok), anything else
/// is the answer.
fn remote_error(e: RemoteError) -> Result<(), MetaError> {
    match e {
        RemoteError::NotLeader { .. } => Ok(()),
        RemoteError::Failed(message) => Err(MetaError::Raft(message)),
    }
}

fn mismatched(what: &str, got: &NodeResponse) -> MetaError {
    MetaError::Raft(format!("leader answered {what} with {got:?}"))
}

fn unexpected(op: &str, result: &CommandResult) -> MetaError {
    MetaError::Raft(format!("{op} produced an unexpected result: {result:?}"))
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
