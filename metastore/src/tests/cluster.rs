//! A real three-voter metastore over QUIC on loopback, in process.

use std::time::Duration;

use bytes::Bytes;

pub(super) use super::harness::{Cluster, free_ports, start_cluster};
use crate::MetaStore;
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

/// Every change each node has applied, in revision order, as (revision, kind, key).
async fn history_of(node: &MetaStore) -> Vec<(u64, i32, String)> {
    let until = node.current_revision();
    let mut watch = node.watch("", 1).await.expect("watch from the start");
    let mut out = Vec::new();
    while out.len() < until as usize {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("history in time")
            .expect("open")
            .expect("event");
        out.push((
            event.revision,
            event.kind,
            event.kv.map(|kv| kv.key).unwrap_or_default(),
        ));
    }
    out
}

/// A lease granted through a follower and left to expire is ended once, by the leader,
/// through the log: every replica deletes the same keys at the same revisions, and each key
/// is deleted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expires_once_identically_on_every_replica() {
    let cluster = start_cluster().await;
    let leader = cluster.nodes[&1]
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = cluster
        .nodes
        .iter()
        .find(|(id, _)| **id != leader)
        .map(|(_, n)| n.clone())
        .expect("a follower");
    let lease = follower
        .lease_grant(Duration::from_secs(1))
        .await
        .expect("grant through a follower");
    for key in ["/eph/a", "/eph/b", "/eph/c"] {
        follower
            .put_leased(key, Bytes::from("x"), Expect::Absent, lease.id)
            .await
            .expect("leased put");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for node in cluster.nodes.values() {
        while !node.scan("/eph/").await.expect("scan").is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "lease never expired"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Wait until every replica has applied as far as the leader.
    let target = cluster.nodes[&leader].current_revision();
    for node in cluster.nodes.values() {
        while node.current_revision() < target {
            assert!(tokio::time::Instant::now() < deadline, "replica behind");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let histories: Vec<_> = futures::future::join_all(cluster.nodes.values().map(history_of)).await;
    assert!(histories.windows(2).all(|w| w[0] == w[1]), "{histories:#?}");
    let deletes: Vec<_> = histories[0]
        .iter()
        .filter(|(_, kind, key)| {
            *kind == crate::EventKind::Delete as i32 && key.starts_with("/eph/")
        })
        .map(|(_, _, key)| key.as_str())
        .collect();
    assert_eq!(deletes, ["/eph/a", "/eph/b", "/eph/c"], "each deleted once");
    assert!(matches!(
        follower.lease_keep_alive(lease.id).await,
        Err(crate::MetaError::LeaseNotFound { .. })
    ));
}

/// A session kept alive through a follower survives the leader's crash: the new leader
/// gives every lease a full TTL plus grace, the session's renewals find it, and the leased
/// key is never deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_survives_a_leader_change() {
    let mut cluster = start_cluster().await;
    let leader = cluster.nodes[&1]
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = cluster
        .nodes
        .iter()
        .find(|(id, _)| **id != leader)
        .map(|(_, n)| n.clone())
        .expect("a follower");
    let session = crate::Session::start(follower.clone(), Duration::from_secs(2))
        .await
        .expect("session");
    let written = follower
        .put_leased(
            "/live/1",
            Bytes::from("x"),
            Expect::Absent,
            session.lease_id(),
        )
        .await
        .expect("leased put");
    // From the revision after the put: the follower may not have applied it yet.
    let mut watch = follower
        .watch("/live/", written.revision + 1)
        .await
        .expect("watch");
    let old = cluster.nodes.remove(&leader).expect("leader node");
    old.shutdown().await.expect("stop the leader");
    drop(old);
    follower
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != leader),
            "a new leader",
        )
        .await
        .expect("a new leader");
    // Well past the TTL under the new leader, nothing under /live/ changed.
    let quiet = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
    assert!(quiet.is_err(), "the leased key changed: {quiet:?}");
    assert!(session.is_alive());
    assert!(follower.get("/live/1").await.expect("get").is_some());
    session.close().await.expect("close");
    assert!(follower.get("/live/1").await.expect("get").is_none());
}

/// A remote watch (MetaClient, another process's view) sees every change exactly once and in
/// revision order while the node serving it is shut down mid-stream: it resumes on another
/// node from the revision it needs next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_watch_resumes_across_node_loss_without_gaps_or_duplicates() {
    let mut cluster = start_cluster().await;
    let leader = cluster.nodes[&1]
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    // Serve the watch from the leader first, so losing it also changes leadership.
    let mut addrs = vec![cluster.members[&leader].clone()];
    addrs.extend(
        cluster
            .members
            .iter()
            .filter(|(id, _)| **id != leader)
            .map(|(_, a)| a.clone()),
    );
    let client = crate::MetaClient::new(addrs, None, Duration::from_secs(20)).expect("client");
    let mut watch = client.watch("/w/", 0).await.expect("remote watch");
    let writer = client.clone();
    let write_all = tokio::spawn(async move {
        for i in 0..60 {
            let key = format!("/w/{i:02}");
            // A put cut off by the node loss has an unknown outcome: retry it; "already
            // exists" then means the first attempt was applied.
            loop {
                match writer.put(&key, Bytes::from("v"), Expect::Absent).await {
                    Ok(_) => break,
                    Err(crate::MetaError::VersionMismatch {
                        actual: Some(1), ..
                    }) => break,
                    Err(crate::MetaError::OutcomeUnknown { .. }) => continue,
                    Err(e) => panic!("put {key}: {e}"),
                }
            }
        }
    });
    let mut seen = Vec::new();
    let mut stopped = false;
    while seen.len() < 60 {
        let event = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("an event in time")
            .expect("watch open")
            .expect("event");
        seen.push((
            event.revision,
            event.kv.map(|kv| kv.key).unwrap_or_default(),
        ));
        if seen.len() == 20 && !stopped {
            stopped = true;
            let old = cluster.nodes.remove(&leader).expect("leader node");
            old.shutdown().await.expect("stop the serving node");
        }
    }
    write_all.await.expect("writer");
    let keys: Vec<_> = seen.iter().map(|(_, k)| k.clone()).collect();
    let expected: Vec<_> = (0..60).map(|i| format!("/w/{i:02}")).collect();
    assert_eq!(keys, expected, "every change once, in order");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "revisions increase"
    );
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

/// Concurrent writes share raft entries (group commit), yet each keeps its own condition and
/// result: of many racing creates of one key exactly one wins, every write to a key of its
/// own succeeds, and the revisions handed out are distinct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_keep_their_own_conditions_and_results() {
    let cluster = start_cluster().await;
    let leader = cluster.leader().await.expect("leader");
    let node = cluster.node(leader).clone();
    let before = node.raft_metrics().last_log_index.unwrap_or(0);
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let node = node.clone();
        writes.spawn(async move {
            let own = node
                .put(&format!("/gc/own/{i}"), Bytes::from("x"), Expect::Absent)
                .await;
            let shared = node
                .put("/gc/shared", Bytes::from(format!("{i}")), Expect::Absent)
                .await;
            (own, shared)
        });
    }
    let (mut revisions, mut winners) = (Vec::new(), 0);
    while let Some(done) = writes.join_next().await {
        let (own, shared) = done.expect("task");
        revisions.push(own.expect("a write to a key of its own succeeds").revision);
        match shared {
            Ok(w) => {
                winners += 1;
                revisions.push(w.revision);
            }
            Err(crate::MetaError::VersionMismatch {
                actual: Some(1), ..
            }) => {}
            Err(e) => panic!("a losing create must see the winner's version: {e}"),
        }
    }
    assert_eq!(winners, 1, "exactly one create of the shared key wins");
    let count = revisions.len();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        count,
        "every write has a revision of its own"
    );
    assert_eq!(node.scan("/gc/own/").await.expect("scan").len(), 200);
    let entries = node.raft_metrics().last_log_index.unwrap_or(0) - before;
    assert!(
        entries < 400,
        "400 concurrent writes took {entries} raft entries: they were not grouped"
    );
}
