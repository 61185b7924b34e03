//! An in-process three-voter metastore over QUIC on loopback, whose node-to-node messages
//! pass through a shared [`Faults`] table (partitions, one-way cuts, delays).

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::ServerState;

use crate::{Faults, MetaStore, MetaStoreConfig, NodeId, NodeOptions};

/// Upper bound on any single wait in cluster tests; reaching it is a failure, not a pacing.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Free UDP ports on loopback for the nodes' RPC servers (known before any node starts,
/// because each node needs the whole member list).
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<_> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("addr").port())
        .collect()
}

/// Raft timing fast enough for tests: heartbeat 100 ms, elections after 400–800 ms.
pub(crate) fn fast_config() -> MetaStoreConfig {
    MetaStoreConfig {
        heartbeat_interval_ms: 100,
        election_timeout_min_ms: 400,
        election_timeout_max_ms: 800,
        ..Default::default()
    }
}

pub(crate) struct Cluster {
    pub _dirs: Vec<tempfile::TempDir>,
    pub nodes: BTreeMap<NodeId, MetaStore>,
    pub members: BTreeMap<NodeId, String>,
    pub faults: Faults,
}

/// Three voters with [`fast_config`], a leader elected.
pub(crate) async fn start_cluster() -> Cluster {
    start_cluster_with(fast_config()).await
}

/// Three voters (ids 1..=3) with `config`; returns once every node knows a leader.
pub(crate) async fn start_cluster_with(config: MetaStoreConfig) -> Cluster {
    strata_transport::install_crypto_provider();
    let ports = free_ports(3);
    let members: BTreeMap<NodeId, String> = (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize - 1])))
        .collect();
    let faults = Faults::new();
    for (id, addr) in &members {
        faults.register(*id, addr);
    }
    let mut dirs = Vec::new();
    let mut nodes = BTreeMap::new();
    for (id, addr) in &members {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tls, _) =
            strata_transport::ServerTls::dev_in_dir(&dir.path().join("tls"), &[]).expect("tls");
        let options = NodeOptions {
            node_id: *id,
            listen: addr.parse().expect("addr"),
            initial_members: members.clone(),
            tls,
            ca: None,
            faults: Some(faults.clone()),
        };
        let node = MetaStore::open_node(&dir.path().join("meta"), config.clone(), options)
            .await
            .expect("open node");
        dirs.push(dir);
        nodes.insert(*id, node);
    }
    for node in nodes.values() {
        node.wait_for_leader(Duration::from_secs(30))
            .await
            .expect("a leader is elected");
    }
    Cluster {
        _dirs: dirs,
        nodes,
        members,
        faults,
    }
}

impl Cluster {
    pub fn node(&self, id: NodeId) -> &MetaStore {
        &self.nodes[&id]
    }

    /// Every node id but `id`.
    pub fn others(&self, id: NodeId) -> Vec<NodeId> {
        self.nodes.keys().copied().filter(|n| *n != id).collect()
    }

    /// Waits until one of `among` is leader and every other node of `among` follows it;
    /// returns its id.
    pub async fn leader_among(&self, among: &[NodeId]) -> Result<NodeId, String> {
        wait_until("a leader followed by the group", DEADLINE, || {
            let leader = among.iter().copied().find(|id| {
                self.nodes
                    .get(id)
                    .is_some_and(|n| n.raft_metrics().state == ServerState::Leader)
            })?;
            let term = self.nodes[&leader].raft_metrics().current_term;
            among
                .iter()
                .all(|id| {
                    let m = self.nodes[id].raft_metrics();
                    m.current_leader == Some(leader) && m.current_term == term
                })
                .then_some(leader)
        })
        .await
    }

    /// The leader all nodes agree on.
    pub async fn leader(&self) -> Result<NodeId, String> {
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.leader_among(&all).await
    }

    /// Waits until every node has applied the same log index and key-space revision.
    pub async fn converged(&self) -> Result<u64, String> {
        wait_until("every node applied the same log", DEADLINE, || {
            let applied: Vec<_> = self
                .nodes
                .values()
                .map(|n| (n.raft_metrics().last_applied, n.current_revision()))
                .collect();
            applied
                .windows(2)
                .all(|w| w[0] == w[1])
                .then(|| applied[0].1)
        })
        .await
    }
}

/// Polls `check` every 10 ms until it yields a value; an error names `what` after `within`.
pub(crate) async fn wait_until<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("not reached within {within:?}: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
