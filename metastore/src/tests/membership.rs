//! Membership changes on a real three-voter cluster over QUIC (in process): a node joins,
//! catches up, is promoted; voters (the leader among them) are removed; removed nodes refuse.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::ServerState;

use super::cluster::{Cluster, free_ports, start_cluster};
use crate::membership::{ClusterStatus, MembershipError, Role};
use crate::{Expect, MetaError, MetaStore, MetaStoreConfig, NodeOptions};

/// The request timeout is 10 s; a refusal must come long before that.
const FAST: Duration = Duration::from_secs(2);

/// Starts node `id` with no initial members: it waits to be added.
async fn start_joining(config: MetaStoreConfig, id: u64) -> (tempfile::TempDir, MetaStore, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let (tls, _) =
        strata_transport::ServerTls::dev_in_dir(&dir.path().join("tls"), &[]).expect("tls");
    let options = NodeOptions {
        node_id: id,
        listen: addr.parse().expect("addr"),
        initial_members: BTreeMap::new(),
        tls,
        ca: None,
        faults: None,
    };
    let node = MetaStore::open_node(&dir.path().join("meta"), config, options)
        .await
        .expect("open joining node");
    (dir, node, addr)
}

async fn leader_of(cluster: &Cluster) -> u64 {
    cluster
        .nodes
        .values()
        .next()
        .expect("a node")
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader")
}

/// Polls `node.status()` until `done` holds (deadline 20 s).
async fn status_until(
    node: &MetaStore,
    what: &str,
    done: impl Fn(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = node.status().await;
        if let Ok(s) = &status
            && done(s)
        {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "{what}: last status {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(list: &[u64]) -> BTreeSet<u64> {
    list.iter().copied().collect()
}

/// A joining node is refused until added; once added as a learner it holds every key
/// written before and after; promoted, status shows four voters with lag 0; a removed
/// follower then refuses writes and reads at once with `NotMember` (no stale value), and
/// the rest keep serving. Bad ids and addresses get typed errors through a forwarding node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_catches_up_is_promoted_and_a_removed_voter_refuses() {
    let cluster = start_cluster().await;
    let leader = leader_of(&cluster).await;
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    let via = cluster.nodes[&follower].clone();
    for i in 0..30 {
        via.put(
            &format!("/m/{i:02}"),
            Bytes::from(format!("v{i}")),
            Expect::Any,
        )
        .await
        .expect("put");
    }

    let (_dir4, node4, addr4) = start_joining(via.config().clone(), 4).await;
    let refused = node4.put("/m/x", Bytes::from("x"), Expect::Any).await;
    assert!(
        matches!(refused, Err(MetaError::NotMember { node_id: 4 })),
        "{refused:?}"
    );

    // Typed refusals travel back through the forwarding follower.
    let conflict = via.add_learner(leader, &addr4).await;
    assert!(
        matches!(
            conflict,
            Err(MetaError::Membership(
                MembershipError::AddressConflict { .. }
            ))
        ),
        "{conflict:?}"
    );
    for result in [via.promote(99).await, via.remove(99).await] {
        assert!(
            matches!(
                result,
                Err(MetaError::Membership(MembershipError::UnknownNode {
                    node_id: 99
                }))
            ),
            "{result:?}"
        );
    }

    let added = via.add_learner(4, &addr4).await.expect("add learner");
    assert_eq!(added.voters(), ids(&[1, 2, 3]));
    assert_eq!(added.learners(), ids(&[4]));
    assert_eq!(added.nodes.get(&4), Some(&addr4));
    // It returned only once the learner held everything up to its own addition.
    let status = cluster.nodes[&leader].status().await.expect("status");
    let learner = status
        .members
        .iter()
        .find(|m| m.node_id == 4)
        .expect("4 listed");
    assert!(
        learner.match_index >= added.log_index(),
        "{learner:?} vs {added:?}"
    );
    for i in 30..40 {
        node4
            .put(
                &format!("/m/{i:02}"),
                Bytes::from(format!("v{i}")),
                Expect::Any,
            )
            .await
            .expect("a learner forwards writes");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut missing = Vec::new();
        for i in 0..40 {
            let key = format!("/m/{i:02}");
            if node4.local_get(&key).expect("local read").is_none() {
                missing.push(key);
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "learner lacks {missing:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = node4.status().await.expect("status via the learner");
    assert_eq!(status.leader, leader);
    assert_eq!(status.ids(Role::Learner), ids(&[4]));
    assert_eq!(status.ids(Role::Voter), ids(&[1, 2, 3]));

    let promoted = node4.promote(4).await.expect("promote");
    assert_eq!(promoted.voters(), ids(&[1, 2, 3, 4]));
    assert!(promoted.learners().is_empty());
    let status = status_until(&via, "four voters, all caught up", |s| {
        s.ids(Role::Voter) == ids(&[1, 2, 3, 4]) && s.members.iter().all(|m| m.lag == 0)
    })
    .await;
    assert!(!status.joint);
    assert_eq!(status.ids(Role::Leader), ids(&[status.leader]));
    assert!(
        status
            .members
            .iter()
            .all(|m| m.match_index == status.last_log_index)
    );

    let remaining: BTreeSet<u64> = ids(&[1, 2, 3, 4])
        .into_iter()
        .filter(|id| *id != follower)
        .collect();
    let after = cluster.nodes[&leader]
        .remove(follower)
        .await
        .expect("remove");
    assert_eq!(after.voters(), remaining);
    assert!(!after.contains(follower));

    node4
        .put("/m/00", Bytes::from("new"), Expect::Any)
        .await
        .expect("writes continue");
    let started = Instant::now();
    let write = via
        .put("/m/00", Bytes::from("from removed"), Expect::Any)
        .await;
    assert!(
        matches!(write, Err(MetaError::NotMember { node_id }) if node_id == follower),
        "{write:?}"
    );
    let read = via.get("/m/00").await;
    assert!(
        matches!(read, Err(MetaError::NotMember { .. })),
        "a removed node served a read: {read:?}"
    );
    assert!(
        started.elapsed() < FAST,
        "refusals took {:?}",
        started.elapsed()
    );
    assert_eq!(
        node4.get("/m/00").await.expect("get").map(|kv| kv.value),
        Some(Bytes::from("new"))
    );
    let status = node4.status().await.expect("status");
    assert_eq!(status.ids(Role::Voter), remaining);
    assert!(status.members.iter().all(|m| m.node_id != follower));
}

/// Removing the leader: the call succeeds, another voter takes over, writes continue through
/// the survivors, and the old leader refuses requests with `NotMember`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_moves_leadership_and_writes_continue() {
    let cluster = start_cluster().await;
    let leader = leader_of(&cluster).await;
    let survivors: Vec<MetaStore> = cluster
        .nodes
        .iter()
        .filter(|(id, _)| **id != leader)
        .map(|(_, n)| n.clone())
        .collect();
    survivors[0]
        .put("/before", Bytes::from("1"), Expect::Absent)
        .await
        .expect("put");
    let after = survivors[0]
        .remove(leader)
        .await
        .expect("remove the leader");
    assert!(!after.contains(leader));
    assert_eq!(after.voters().len(), 2);

    let old = &cluster.nodes[&leader];
    let started = Instant::now();
    let refused = old.put("/x", Bytes::from("x"), Expect::Any).await;
    assert!(
        matches!(refused, Err(MetaError::NotMember { node_id }) if node_id == leader),
        "{refused:?}"
    );
    assert!(started.elapsed() < FAST);

    let new_leader = survivors[1]
        .raft()
        .wait(Some(Duration::from_secs(20)))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != leader),
            "a new leader",
        )
        .await
        .expect("a new leader")
        .current_leader;
    assert!(new_leader.is_some_and(|l| l != leader));
    survivors[1]
        .put("/after", Bytes::from("2"), Expect::Absent)
        .await
        .expect("writes continue");
    for node in &survivors {
        assert_eq!(node.scan("/").await.expect("scan").len(), 2);
    }
    let status = survivors[0].status().await.expect("status");
    assert_ne!(status.leader, leader);
    assert_eq!(status.members.len(), 2);
    assert!(status.members.iter().all(|m| m.node_id != leader));
}

/// A removed node that was down when the leader told it (so it never heard) learns of its
/// removal from its peers once it has no leader, and then refuses a write at once instead of
/// waiting out the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_that_missed_the_notice_learns_it_from_its_peers() {
    let mut cluster = start_cluster().await;
    let leader = leader_of(&cluster).await;
    let victim = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    let config = cluster.nodes[&leader].config().clone();
    let members: BTreeMap<u64, String> = cluster.nodes[&leader]
        .raft_metrics()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    let down = cluster.nodes.remove(&victim).expect("victim");
    down.shutdown().await.expect("stop the victim");
    drop(down);

    cluster.nodes[&leader]
        .remove(victim)
        .await
        .expect("remove a stopped voter");

    let dir = cluster._dirs[victim as usize - 1].path();
    let (tls, _) = strata_transport::ServerTls::dev_in_dir(&dir.join("tls"), &[]).expect("tls");
    let options = NodeOptions {
        node_id: victim,
        listen: members[&victim].parse().expect("addr"),
        initial_members: members.clone(),
        tls,
        ca: None,
        faults: None,
    };
    // The stopped node's UDP socket is released once its connections have wound down.
    let deadline = Instant::now() + Duration::from_secs(10);
    let restarted = loop {
        match MetaStore::open_node(&dir.join("meta"), config.clone(), options.clone()).await {
            Ok(store) => break store,
            Err(e) if e.to_string().contains("in use") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("restart the removed node: {e}"),
        }
    };
    // Its log still names it a voter; it campaigns in vain and forgets the leader.
    let term = cluster.nodes[&leader].raft_metrics().current_term;
    restarted
        .raft()
        .wait(Some(Duration::from_secs(20)))
        .metrics(
            |m| {
                m.current_term > term
                    && m.current_leader.is_none()
                    && m.state != ServerState::Leader
            },
            "campaigning with no leader",
        )
        .await
        .expect("the removed node campaigns");
    let started = Instant::now();
    let refused = restarted.put("/x", Bytes::from("x"), Expect::Any).await;
    assert!(
        matches!(refused, Err(MetaError::NotMember { node_id }) if node_id == victim),
        "{refused:?}"
    );
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    restarted.shutdown().await.expect("shutdown");
}

/// On a one-voter store: the last voter cannot be removed, unknown ids and bad addresses are
/// refused with typed errors, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_refuse_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MetaStore::open_standalone(dir.path(), MetaStoreConfig::default())
        .await
        .expect("open");
    let last = store.remove(1).await;
    assert!(
        matches!(
            last,
            Err(MetaError::Membership(MembershipError::LastVoter {
                node_id: 1
            }))
        ),
        "{last:?}"
    );
    for result in [store.promote(7).await, store.remove(7).await] {
        assert!(
            matches!(
                result,
                Err(MetaError::Membership(MembershipError::UnknownNode {
                    node_id: 7
                }))
            ),
            "{result:?}"
        );
    }
    let conflict = store.add_learner(1, "127.0.0.1:9").await;
    assert!(
        matches!(
            conflict,
            Err(MetaError::Membership(MembershipError::AddressConflict {
                node_id: 1,
                ..
            }))
        ),
        "{conflict:?}"
    );
    let bad = store.add_learner(5, "no-port").await;
    assert!(
        matches!(
            bad,
            Err(MetaError::Membership(MembershipError::InvalidAddress {
                node_id: 5,
                ..
            }))
        ),
        "{bad:?}"
    );
    let status = store.status().await.expect("status");
    assert_eq!(status.leader, 1);
    assert_eq!(status.ids(Role::Voter), ids(&[1]));
    assert_eq!(status.members.len(), 1);
    assert_eq!(status.members[0].lag, 0);
    store
        .put("/still", Bytes::from("works"), Expect::Absent)
        .await
        .expect("the store still serves");
    store.shutdown().await.expect("shutdown");
}
