//! Re-replication over real bookies: after a bookie has been gone longer than the delay, the
//! elected auditor marks its ledgers and the workers copy its fragments to other bookies,
//! restoring Qw copies of every entry.

mod support;

use std::time::Duration;

use strata_bookie::LedgerConfig;
use strata_bookie::replication::{self, ReplicationOptions, ReplicationService};
use strata_metastore::Meta;
use strata_proto::EntryId;
use strata_proto::pb::bookie::LedgerMetadata;
use support::{TestCluster, payload, wait_until};

fn options(name: &str) -> ReplicationOptions {
    ReplicationOptions {
        lost_bookie_delay: Duration::from_secs(1),
        interval: Duration::from_millis(100),
        session_ttl: Duration::from_secs(2),
        ..ReplicationOptions::new(name)
    }
}

/// Asserts that every entry of `md` is stored on each of the Qw bookies of its write set.
fn assert_fully_replicated(cluster: &TestCluster, md: &LedgerMetadata) {
    let last = md.last_entry_id.expect("closed with entries");
    for e in 0..=last {
        let fragment = md
            .fragments
            .iter()
            .rev()
            .find(|f| f.first_entry_id <= e)
            .expect("fragment");
        let first = (e % u64::from(md.ensemble_size)) as usize;
        for k in 0..md.write_quorum as usize {
            let bookie = &fragment.bookies[(first + k) % md.ensemble_size as usize];
            let storage = cluster.server(cluster.index_of(bookie)).storage().clone();
            storage
                .read_entry(strata_proto::LedgerId(md.ledger_id), EntryId(e))
                .unwrap_or_else(|err| panic!("entry {e} missing on {bookie}: {err}"));
        }
    }
}

/// A bookie holding fragments of closed ledgers goes away for good: one of two replication
/// services is elected auditor, the ledgers are marked, and the workers restore Qw copies on
/// the remaining bookies, point the metadata at them and clear the marks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_bookies_fragments_are_copied_to_the_others() {
    let mut cluster = TestCluster::start(4).await;
    let client = cluster.client();
    let mut ids = Vec::new();
    for round in 0..3u64 {
        let writer = client
            .create_ledger(LedgerConfig::replicated())
            .await
            .expect("create");
        for i in 0..50 + round {
            writer.add(payload(i)).await.expect("add");
        }
        writer.close().await.expect("close");
        ids.push(writer.id());
    }
    // The bookie that holds the most of these ledgers.
    let (first_md, _) = client.metadata(ids[0]).await.expect("metadata");
    let victim_id = first_md.fragments[0].bookies[0].clone();
    let victim = cluster.index_of(&victim_id);
    cluster.stop(victim).await;

    let meta = Meta::from(cluster.meta().clone());
    let services = [
        ReplicationService::start(meta.clone(), cluster.client(), options("r1")),
        ReplicationService::start(meta.clone(), cluster.client(), options("r2")),
    ];
    let mut done = false;
    for _ in 0..600 {
        let mut names_victim = false;
        for id in &ids {
            let (md, _) = client.metadata(*id).await.expect("metadata");
            names_victim |= md.fragments.iter().any(|f| f.bookies.contains(&victim_id));
        }
        let pending = replication::status(&meta).await.expect("status").pending;
        if !names_victim && pending.is_empty() {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done, "re-replication did not finish");
    let status = replication::status(&meta).await.expect("status");
    assert!(status.auditor.is_some());
    assert_eq!(
        services.iter().filter(|s| s.is_auditor()).count(),
        1,
        "exactly one auditor"
    );
    for id in &ids {
        let (md, _) = client.metadata(*id).await.expect("metadata");
        assert_fully_replicated(&cluster, &md);
    }
    // The copies serve reads with the lost bookie still gone.
    let reader = cluster.client().open_ledger(ids[0]).await.expect("open");
    let entries = reader.read(EntryId(0), EntryId(49)).await.expect("read");
    assert_eq!(entries[7].1, payload(7));
    for s in services {
        s.stop().await;
    }
    cluster.shutdown().await;
}

/// The auditor's key is bound to its session: when the elected service stops, the other one
/// takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_role_moves_when_its_holder_stops() {
    let cluster = TestCluster::start(3).await;
    let meta = Meta::from(cluster.meta().clone());
    let a = ReplicationService::start(meta.clone(), cluster.client(), options("a"));
    wait_until("an auditor", || a.is_auditor()).await;
    let b = ReplicationService::start(meta.clone(), cluster.client(), options("b"));
    a.stop().await;
    wait_until("b takes over", || b.is_auditor()).await;
    assert_eq!(
        replication::status(&meta)
            .await
            .expect("status")
            .auditor
            .as_deref(),
        Some("b")
    );
    b.stop().await;
    cluster.shutdown().await;
}
