//! A real three-voter metastore over QUIC on loopback, in process.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use crate::{Expect, MetaStore, MetaStoreConfig, NodeOptions};

/// Free UDP ports on loopback for the nodes' RPC servers (known before any node starts,
/// because each node needs the whole member list).
pub(super) fn free_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<_> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("addr").port())
        .collect()
}

pub(super) struct Cluster {
    pub(super) _dirs: Vec<tempfile::TempDir>,
    pub(super) nodes: BTreeMap<u64, MetaStore>,
}

pub(super) async fn start_cluster() -> Cluster {
    strata_transport::install_crypto_provider();
    let ports = free_ports(3);
    let members: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize - 1])))
        .collect();
    let config = MetaStoreConfig {
        heartbeat_interval_ms: 100,
        election_timeout_min_ms: 400,
        election_timeout_max_ms: 800,
        ..Default::default()
    };
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
    Cluster { _dirs: dirs, nodes }
}

/// Writes sent to any node (followers forward to the leader) are readable, linearizably, from
/// every node; a watch on a follower sees them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_read_from_every_node() {
    let cluster = start_cluster().await;
    let leader = cluster.nodes[&1]
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    let mut watch = cluster.nodes[&follower]
        .watch("/k/", 0)
        .await
        .expect("watch");
    for (i, node) in cluster.nodes.values().enumerate() {
        node.put(
            &format!("/k/{i}"),
            Bytes::from(format!("v{i}")),
            Expect::Absent,
        )
        .await
        .expect("put via any node");
    }
    for node in cluster.nodes.values() {
        let kvs = node.scan("/k/").await.expect("scan");
        assert_eq!(
            kvs.iter().map(|kv| kv.value.clone()).collect::<Vec<_>>(),
            vec!["v0", "v1", "v2"]
        );
        assert_eq!(
            node.get("/k/1").await.expect("get").map(|kv| kv.version),
            Some(1)
        );
    }
    let stale = cluster.nodes[&follower]
        .put("/k/0", Bytes::from("x"), Expect::Version(7))
        .await;
    assert!(
        matches!(
            stale,
            Err(crate::MetaError::VersionMismatch {
                actual: Some(1),
                ..
            })
        ),
        "{stale:?}"
    );
    for i in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("event");
        assert_eq!(event.kv.map(|kv| kv.key), Some(format!("/k/{i}")));
    }
}

/// Every write acknowledged before the leader stops is readable after a new leader takes
/// over, and the survivors keep accepting writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_the_leader() {
    let mut cluster = start_cluster().await;
    let any = cluster.nodes.values().next().expect("node").clone();
    for i in 0..50 {
        any.put(
            &format!("/ack/{i:02}"),
            Bytes::from(vec![i as u8]),
            Expect::Any,
        )
        .await
        .expect("put");
    }
    let leader = any
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let old = cluster.nodes.remove(&leader).expect("leader node");
    old.shutdown().await.expect("stop the leader");
    drop(old);
    let survivor = cluster.nodes.values().next().expect("survivor").clone();
    let metrics = survivor
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != leader),
            "a new leader",
        )
        .await
        .expect("a new leader within the deadline");
    let new_leader = metrics.current_leader.expect("leader");
    assert_ne!(new_leader, leader);
    let kvs = survivor.scan("/ack/").await.expect("scan after failover");
    assert_eq!(kvs.len(), 50, "every acknowledged write survives");
    survivor
        .put("/after", Bytes::from("x"), Expect::Absent)
        .await
        .expect("writes continue");
}
