//! Properties of a real three-voter cluster under injected faults: partitions, one-way cuts,
//! slow links (see [`crate::faults`]). Every wait has a deadline ([`DEADLINE`]); reaching it
//! fails the test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::time::timeout;

use super::harness::{
    Cluster, DEADLINE, TestResult, fast_config, start_cluster, start_cluster_with, wait_until,
};
use crate::rpc::{NodeRequest, PeerClient, RpcError};
use crate::{
    Expect, MetaClient, MetaError, MetaStore, MetaStoreConfig, NodeId, WatchEvent, Watcher,
};

/// The id test clients send as, so they can be cut off like nodes.
const CLIENT: NodeId = 100;

fn val(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Cuts `node` off from every other node and from test clients, as if it had crashed: its
/// connections stop answering and new ones cannot be made.
fn isolate(cluster: &Cluster, node: NodeId) {
    let mut rest = cluster.others(node);
    rest.push(CLIENT);
    cluster.faults.partition(&[node], &rest);
}

/// The value of `key` read (linearizably) through `node`.
async fn value_at(node: &MetaStore, key: &str) -> Result<Option<String>, MetaError> {
    let kv = timeout(DEADLINE, node.get(key))
        .await
        .map_err(|_| MetaError::Raft(format!("get {key} timed out")))??;
    Ok(kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// Every event of `node`'s local history under `prefix` from revision `from` up to `to`.
async fn history(
    node: &MetaStore,
    prefix: &str,
    from: u64,
    to: u64,
) -> Result<Vec<WatchEvent>, MetaError> {
    let mut watcher = node.watch(prefix, from).await?;
    let mut events = Vec::new();
    while events.last().is_none_or(|e: &WatchEvent| e.revision < to) {
        events.push(next_event(&mut watcher).await?);
    }
    Ok(events)
}

async fn next_event(watcher: &mut Watcher) -> Result<WatchEvent, MetaError> {
    match timeout(DEADLINE, watcher.next()).await {
        Err(_) => Err(MetaError::Raft("no watch event before the deadline".into())),
        Ok(None) => Err(MetaError::Raft("watch ended".into())),
        Ok(Some(event)) => event,
    }
}

/// Appends the next `n` events of `watcher` to `seen`.
async fn read(
    seen: &mut Vec<WatchEvent>,
    watcher: &mut Watcher,
    n: usize,
) -> Result<(), MetaError> {
    for _ in 0..n {
        seen.push(next_event(watcher).await?);
    }
    Ok(())
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms: Vec<u128> = v.iter().map(Duration::as_millis).collect();
    format!(
        "median {} ms, max {} ms, all {ms:?}",
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    )
}

fn key_of(e: &WatchEvent) -> &str {
    e.kv.as_ref().map_or("", |kv| kv.key.as_str())
}

/// A leader cut off from both followers commits nothing: a write submitted to it does not
/// succeed, a linearizable read on it fails rather than return the value it holds (which the
/// majority has meanwhile overwritten), the majority elects a new leader and commits; after
/// healing, the isolated leader's write is in no node's history and every node converges on
/// the majority's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_commits_nothing_and_serves_no_stale_read() -> TestResult {
    let config = MetaStoreConfig {
        request_timeout_ms: 2_000,
        ..fast_config()
    };
    let cluster = start_cluster_with(config).await;
    let old = cluster.leader().await?;
    let start_rev = cluster
        .node(old)
        .put("/p/k", val("old"), Expect::Any)
        .await?
        .revision;
    let majority = cluster.others(old);
    cluster.faults.partition(&[old], &majority);

    let isolated = cluster.node(old).clone();
    let lost =
        tokio::spawn(async move { isolated.put("/p/lost", val("lost"), Expect::Absent).await });
    let new = cluster.leader_among(&majority).await?;
    assert_ne!(new, old);
    for id in &majority {
        cluster
            .node(*id)
            .put("/p/k", val("new"), Expect::Any)
            .await?;
    }

    match timeout(DEADLINE, cluster.node(old).get("/p/k")).await? {
        Err(MetaError::NotLeader { .. }) => {}
        other => return Err(format!("the isolated node answered a read: {other:?}").into()),
    }
    assert!(
        !lost.is_finished(),
        "a write on the isolated leader ended: {lost:?}"
    );

    cluster.faults.heal();
    // Its deadline has passed, so once the entry is overwritten the write fails for good.
    match timeout(DEADLINE, lost).await?? {
        Err(MetaError::NotLeader { .. }) => {}
        other => return Err(format!("the isolated leader's write: {other:?}").into()),
    }
    let end_rev = cluster.converged().await?;
    for (id, node) in &cluster.nodes {
        let events = history(node, "/p/", start_rev, end_rev).await?;
        let keys: Vec<&str> = events.iter().map(key_of).collect();
        assert_eq!(keys, ["/p/k", "/p/k", "/p/k"], "history of node {id}");
        assert_eq!(value_at(node, "/p/k").await?.as_deref(), Some("new"));
        assert_eq!(value_at(node, "/p/lost").await?, None);
    }
    Ok(())
}

/// A follower cut off while the leader snapshots and purges its log past the follower's last
/// entry catches up after healing by installing a snapshot, and then holds every key: it
/// serves all of them as leader from its own state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_from_a_snapshot() -> TestResult {
    let config = MetaStoreConfig {
        snapshot_every_logs: 20,
        max_in_snapshot_log_to_keep: 0,
        ..fast_config()
    };
    let cluster = start_cluster_with(config).await;
    let leader = cluster.leader().await?;
    let lagging = cluster.others(leader)[0];
    cluster
        .faults
        .partition(&[lagging], &cluster.others(lagging));
    let lagging_last = cluster
        .node(lagging)
        .raft_metrics()
        .last_log_index
        .unwrap_or(0);
    let keys = 100;
    for i in 0..keys {
        let key = format!("/s/{i:03}");
        cluster
            .node(leader)
            .put(&key, val(&key), Expect::Absent)
            .await?;
    }
    let purged = wait_until("the leader purges past the lagging node", DEADLINE, || {
        let m = cluster.node(leader).raft_metrics();
        m.purged.map(|p| p.index).filter(|p| *p > lagging_last)
    })
    .await?;

    cluster.faults.heal();
    cluster.converged().await?;
    let m = cluster.node(lagging).raft_metrics();
    assert!(
        m.snapshot.is_some_and(|s| s.index >= purged),
        "snapshot {:?} does not cover the purged log up to {purged}",
        m.snapshot
    );
    // Installing a snapshot replaces the local history (building one does not).
    match cluster.node(lagging).watch("/s/", 1).await {
        Err(MetaError::Compacted { oldest, .. }) if oldest > 1 => {}
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("the lagging node kept its history: no snapshot installed".into()),
    }

    // Make the lagging node leader (the third node may not run) and read everything there.
    let current = cluster.leader().await?;
    if current != lagging {
        let third = *cluster
            .nodes
            .keys()
            .find(|id| **id != lagging && **id != current)
            .ok_or("no third node")?;
        cluster.node(third).raft().runtime_config().elect(false);
        cluster.faults.partition(&[current], &[lagging, third]);
        assert_eq!(cluster.leader_among(&[lagging, third]).await?, lagging);
    }
    let node = cluster.node(lagging);
    for i in 0..keys {
        let key = format!("/s/{i:03}");
        assert_eq!(value_at(node, &key).await?.as_deref(), Some(key.as_str()));
    }
    assert_eq!(node.scan("/s/").await?.len(), keys);
    Ok(())
}

/// A watcher sees every committed change exactly once and in revision order, across
/// reconnects (dropped and re-created from the last seen revision + 1, on another node) and
/// two leader changes, while writes continue through every node; what it sees is exactly the
/// committed history, and includes every acknowledged write at its revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_each_change_once_in_order_across_reconnects_and_leader_changes() -> TestResult {
    let config = MetaStoreConfig {
        request_timeout_ms: 3_000,
        ..fast_config()
    };
    let cluster = start_cluster_with(config).await;
    let first_leader = cluster.leader().await?;
    let follower = cluster.others(first_leader)[0];
    let from = cluster.node(follower).current_revision() + 1;
    let mut watcher = cluster.node(follower).watch("/w/", from).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let nodes: Vec<MetaStore> = cluster.nodes.values().cloned().collect();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let (mut i, mut via) = (0u64, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let key = format!("/w/{i:05}");
                i += 1;
                let node = &nodes[via % nodes.len()];
                match timeout(
                    Duration::from_secs(2),
                    node.put(&key, val(&key), Expect::Absent),
                )
                .await
                {
                    Ok(Ok(w)) => {
                        acked.insert(key, w.revision);
                    }
                    // Failed or unknown: the history decides; write through another node.
                    _ => via += 1,
                }
            }
            acked
        })
    };

    let mut seen = Vec::new();
    read(&mut seen, &mut watcher, 10).await?;
    // Leader change 1; then reconnect to the isolated old leader, which is behind.
    isolate(&cluster, first_leader);
    cluster.leader_among(&cluster.others(first_leader)).await?;
    read(&mut seen, &mut watcher, 10).await?;
    let last = seen.last().map_or(from, |e: &WatchEvent| e.revision);
    drop(watcher);
    let mut watcher = cluster.node(first_leader).watch("/w/", last + 1).await?;
    cluster.faults.heal();
    read(&mut seen, &mut watcher, 10).await?;
    // Leader change 2; then reconnect to another node.
    let second_leader = cluster.leader().await?;
    isolate(&cluster, second_leader);
    cluster.leader_among(&cluster.others(second_leader)).await?;
    cluster.faults.heal();
    read(&mut seen, &mut watcher, 10).await?;
    let last = seen.last().map_or(from, |e| e.revision);
    drop(watcher);
    let third = cluster.others(first_leader)[1];
    let mut watcher = cluster.node(third).watch("/w/", last + 1).await?;

    stop.store(true, Ordering::Relaxed);
    let acked = timeout(DEADLINE, writer).await??;
    let end = cluster.converged().await?;
    while seen.last().is_none_or(|e| e.revision < end) {
        seen.push(next_event(&mut watcher).await?);
    }

    let revisions: Vec<u64> = seen.iter().map(|e| e.revision).collect();
    assert_eq!(
        revisions,
        (from..=end).collect::<Vec<_>>(),
        "gap, duplicate or reordering"
    );
    let committed = history(cluster.node(follower), "/w/", from, end).await?;
    assert_eq!(
        seen, committed,
        "the watcher saw something other than the history"
    );
    let by_key: BTreeMap<&str, u64> = seen.iter().map(|e| (key_of(e), e.revision)).collect();
    assert!(
        acked.len() >= 20,
        "only {} writes acknowledged",
        acked.len()
    );
    for (key, revision) in &acked {
        assert_eq!(
            by_key.get(key.as_str()),
            Some(revision),
            "acknowledged {key}"
        );
    }
    Ok(())
}

/// Fixed one-way delays of 20–50 ms, different per direction.
fn slow_links(cluster: &Cluster) {
    let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    for &a in &ids {
        for &b in &ids {
            if a != b {
                let ms = 20 + (a * 7 + b * 13) % 31;
                cluster.faults.delay(a, b, Duration::from_millis(ms));
            }
        }
    }
}

/// Over 20–50 ms one-way delays on every link, writes commit and reads are linearizable: a
/// value written through one node is what the next read through another returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_links_keep_writes_committing_and_reads_linearizable() -> TestResult {
    let cluster = start_cluster_with(slow_config()).await;
    slow_links(&cluster);
    let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    for round in 0..18 {
        let writer = ids[round % 3];
        let reader = ids[(round + 1 + round / 3 % 2) % 3];
        let value = format!("v{round}");
        let written = cluster
            .node(writer)
            .put("/d/k", val(&value), Expect::Any)
            .await?;
        let kv = timeout(DEADLINE, cluster.node(reader).get("/d/k")).await??;
        let kv = kv.ok_or("the key vanished")?;
        assert_eq!(
            (kv.value.as_ref(), kv.mod_revision),
            (value.as_bytes(), written.revision)
        );
    }
    Ok(())
}

/// Raft timing for links with up to 100 ms round trips (a heartbeat's RPC must fit in the
/// heartbeat interval).
fn slow_config() -> MetaStoreConfig {
    MetaStoreConfig {
        heartbeat_interval_ms: 250,
        election_timeout_min_ms: 800,
        election_timeout_max_ms: 1_600,
        ..Default::default()
    }
}

/// Over 20–50 ms one-way delays, writes in flight through both followers when the leader
/// crashes are never lost once acknowledged: every acknowledged key is readable afterwards,
/// and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_leader_crash_over_slow_links() -> TestResult {
    let mut cluster = start_cluster_with(slow_config()).await;
    slow_links(&cluster);
    let leader = cluster.leader().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for id in cluster.others(leader) {
        let (node, stop) = (cluster.node(id).clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("/c/{id}/{i:04}");
                i += 1;
                if let Ok(Ok(_)) =
                    timeout(DEADLINE, node.put(&key, val(&key), Expect::Absent)).await
                {
                    acked.push(key);
                }
            }
            acked
        }));
    }
    let survivor = cluster.others(leader)[0];
    wait_until("writes before the crash", DEADLINE, || {
        (cluster.node(survivor).current_revision() >= 20).then_some(())
    })
    .await?;
    isolate(&cluster, leader);
    let crashed = cluster.nodes.remove(&leader).ok_or("no leader node")?;
    crashed.shutdown().await?;
    drop(crashed);
    let before = cluster.node(survivor).current_revision();
    wait_until("writes after the crash", DEADLINE, || {
        (cluster.node(survivor).current_revision() >= before + 10).then_some(())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(timeout(DEADLINE, w).await??);
    }
    let stored: Vec<String> = cluster
        .node(survivor)
        .scan("/c/")
        .await?
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    for key in &acked {
        assert!(stored.contains(key), "acknowledged {key} was lost");
    }
    assert!(
        acked.len() >= 10,
        "only {} writes acknowledged",
        acked.len()
    );
    Ok(())
}

/// A write whose answer is lost (the leader applied it, the reply never came back over a
/// connection that was up) is never reported as retryable: retrying could apply it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_never_reported_as_retryable() -> TestResult {
    let cluster = start_cluster().await;
    let leader = cluster.leader().await?;
    let follower = cluster.node(cluster.others(leader)[0]);
    let addrs: Vec<String> = cluster.members.values().cloned().collect();
    let client = MetaClient::with_faults(addrs, None, DEADLINE, CLIENT, cluster.faults.clone())?;
    // Both reach the leader once, so they hold a connection to it when the answers get lost.
    follower.put("/l/warm", val("x"), Expect::Any).await?;
    client.put("/l/warm", val("x"), Expect::Any).await?;

    cluster.faults.cut(leader, follower.node_id());
    let result = timeout(DEADLINE, follower.put("/l/k", val("x"), Expect::Absent)).await?;
    assert!(
        result.as_ref().is_err_and(|e| !e.is_retryable()),
        "through a follower: {result:?}"
    );
    cluster.faults.cut(leader, CLIENT);
    let result = client.put("/l/c", val("x"), Expect::Absent).await;
    assert!(
        result.as_ref().is_err_and(|e| !e.is_retryable()),
        "through a client: {result:?}"
    );
    cluster.faults.heal();
    for key in ["/l/k", "/l/c"] {
        let value = value_at(cluster.node(leader), key).await?;
        assert_eq!(value.as_deref(), Some("x"), "{key} was applied");
    }
    Ok(())
}

/// A connection attempt to a node that never answers does not hold up calls to other nodes
/// (the connection cache is not locked while dialling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_does_not_stall_calls_to_live_ones() -> TestResult {
    let cluster = start_cluster().await;
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let dead = silent.local_addr()?.to_string();
    let peers = PeerClient::new("test".into(), None);
    let get = |key: &str| NodeRequest::Get {
        key: key.into(),
        forwarded: false,
    };
    let stalled = {
        let (peers, req) = (peers.clone(), get("/x"));
        tokio::spawn(async move { peers.call(&dead, &req, DEADLINE).await })
    };
    let live = cluster.members.values().next().ok_or("no node")?;
    peers.call(live, &get("/x"), DEADLINE).await?;
    assert!(
        !stalled.is_finished(),
        "the dead peer answered: {stalled:?}"
    );
    assert!(matches!(stalled.await?, Err(RpcError::NotSent { .. })));
    Ok(())
}

/// Measures leader failover: the leader is cut off (as by `kill -9`), then writes are retried
/// (a) on a surviving node's `MetaStore`, (b) through a fresh `MetaClient` per attempt over
/// all three addresses with a 2 s timeout, as `bench/metastore.sh` runs `strata meta put`;
/// with the default raft timing and with a faster one. Prints, per path, the time to the
/// first acknowledged write and how much of it came after the new leader was elected. Run
/// with `cargo test --release -p strata-metastore failover_time -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a property; prints failover times"]
async fn failover_time() -> TestResult {
    let faster = MetaStoreConfig {
        heartbeat_interval_ms: 150,
        election_timeout_min_ms: 600,
        election_timeout_max_ms: 1_200,
        ..Default::default()
    };
    let timings = [
        ("default timing", MetaStoreConfig::default()),
        ("heartbeat 150 ms, elections 600-1200 ms", faster),
    ];
    for (name, config) in timings {
        for via_client in [false, true] {
            let path = if via_client {
                "MetaClient (2 s timeout)"
            } else {
                "a surviving node"
            };
            let (total, after_election) = measure_failover(config.clone(), via_client, 6).await?;
            eprintln!("{name}, through {path}: write after {}", summary(total));
            eprintln!(
                "{name}, through {path}: of which after the election {}",
                summary(after_election)
            );
        }
    }
    Ok(())
}

/// `rounds` leader cut-offs: the times to the first acknowledged write, and the part of each
/// after a new leader was known.
async fn measure_failover(
    config: MetaStoreConfig,
    via_client: bool,
    rounds: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), Box<dyn std::error::Error + Send + Sync>> {
    let cluster = start_cluster_with(config).await;
    let addrs: Vec<String> = cluster.members.values().cloned().collect();
    let (mut total, mut after_election) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let leader = cluster.leader().await?;
        cluster
            .node(leader)
            .put("/fo/warm", val("x"), Expect::Any)
            .await?;
        let survivors = cluster.others(leader);
        let survivor = survivors[round % 2];
        isolate(&cluster, leader);
        let start = Instant::now();
        let key = format!("/fo/{round}");
        let write = async {
            loop {
                let result = if via_client {
                    let faults = cluster.faults.clone();
                    let client = MetaClient::with_faults(
                        addrs.clone(),
                        None,
                        Duration::from_secs(2),
                        CLIENT,
                        faults,
                    )?;
                    client.put(&key, val("x"), Expect::Any).await
                } else {
                    cluster
                        .node(survivor)
                        .put(&key, val("x"), Expect::Any)
                        .await
                };
                match result {
                    Ok(_) => return Ok::<_, MetaError>(start.elapsed()),
                    Err(e) if start.elapsed() < Duration::from_secs(60) => {
                        eprintln!("round {round} at {:?}: {e}", start.elapsed());
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let elected = async {
            cluster.leader_among(&survivors).await?;
            Ok::<_, String>(start.elapsed())
        };
        let (written, elected) = tokio::join!(write, elected);
        let (written, elected) = (written?, elected?);
        eprintln!(
            "round {round}: leader {leader} cut off, new leader after {elected:?}, written after {written:?}"
        );
        total.push(written);
        after_election.push(written.saturating_sub(elected));
        cluster.faults.heal();
        cluster.converged().await?;
    }
    Ok((total, after_election))
}
