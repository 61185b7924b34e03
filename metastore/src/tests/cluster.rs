//! A real three-voter metastore over QUIC on loopback, in process.

use std::time::Duration;

use bytes::Bytes;

use super::harness::start_cluster;
use crate::{Expect, MetaClient};

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

/// A client reaches the leader whatever subset of the addresses it was given: a follower it
/// knows relays for it when the leader's address is not among its own, and with every
/// address it goes to the leader directly. Reads return what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_the_leader_from_any_subset_of_addresses() {
    let cluster = start_cluster().await;
    let leader = cluster.leader().await.expect("leader");
    let mut subsets: Vec<Vec<String>> = cluster
        .others(leader)
        .into_iter()
        .map(|id| vec![cluster.members[&id].clone()])
        .collect();
    subsets.push(cluster.members.values().cloned().collect());
    for (i, addrs) in subsets.into_iter().enumerate() {
        let client = MetaClient::new(addrs.clone(), None, Duration::from_secs(10)).expect("client");
        let key = format!("/sub/{i}");
        let written = client
            .put(&key, Bytes::from(key.clone()), Expect::Absent)
            .await
            .unwrap_or_else(|e| panic!("put via {addrs:?}: {e}"));
        let read = client.get(&key).await.expect("get").expect("present");
        assert_eq!(read.mod_revision, written.revision);
        assert_eq!(client.scan("/sub/").await.expect("scan").len(), i + 1);
    }
}
