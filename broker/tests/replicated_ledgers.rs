//! Brokers write managed ledgers through the replicated ledger client: on three bookies a
//! namespace without a policy gets E3/Qw3/Qa2, a namespace policy overrides it, and a bookie
//! stopping under appends costs the producer nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_bookie::local_cluster::{LocalCluster, LocalClusterOptions};
use strata_bookie::{BookieClientOptions, LedgerClient, LedgerClientOptions};
use strata_broker::service::{BrokerConfig, BrokerService};
use strata_metastore::tables::{NamespacePolicies, ReplicationPolicy};
use strata_proto::TopicName;

async fn start(n: usize) -> (tempfile::TempDir, LocalCluster, LedgerClient) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LocalClusterOptions {
        bookies: n,
        ..LocalClusterOptions::default()
    };
    let cluster = LocalCluster::start(dir.path(), options)
        .await
        .expect("cluster");
    let client = cluster.ledger_client(
        BookieClientOptions {
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            ..BookieClientOptions::default()
        },
        LedgerClientOptions {
            ensemble_retry_delay: Duration::from_millis(200),
            ..LedgerClientOptions::default()
        },
    );
    (dir, cluster, client)
}

/// The (E, Qw, Qa) of the ledger a topic is writing now.
async fn current_replication(
    client: &LedgerClient,
    service: &BrokerService,
    topic: &TopicName,
) -> (u32, u32, u32) {
    let t = service.topic(topic, true).await.expect("topic");
    let position = t
        .managed_ledger()
        .append(Bytes::from_static(b"probe"))
        .await
        .expect("append")
        .await
        .expect("durable");
    let (md, _) = client.metadata(position.ledger).await.expect("metadata");
    (md.ensemble_size, md.write_quorum, md.ack_quorum)
}

/// Without a policy, three bookies give E3/Qw3/Qa2; a namespace's replication policy wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_defaults_to_e3_qw3_qa2_and_follows_the_namespace_policy() {
    let (_dir, cluster, client) = start(3).await;
    let service = BrokerService::new(
        cluster.meta.clone(),
        client.clone(),
        BrokerConfig::default(),
    );
    let default_ns = "public/default".parse().expect("ns");
    service
        .ensure_namespace(&default_ns, &NamespacePolicies::default())
        .await
        .expect("namespace");
    let two_copies = NamespacePolicies {
        replication: Some(ReplicationPolicy {
            ensemble_size: 2,
            write_quorum: 2,
            ack_quorum: 1,
        }),
        ..NamespacePolicies::default()
    };
    service
        .ensure_namespace(&"public/two".parse().expect("ns"), &two_copies)
        .await
        .expect("namespace");

    let a: TopicName = "persistent://public/default/a".parse().expect("topic");
    let b: TopicName = "persistent://public/two/b".parse().expect("topic");
    assert_eq!(current_replication(&client, &service, &a).await, (3, 3, 2));
    assert_eq!(current_replication(&client, &service, &b).await, (2, 2, 1));
    service.close_all().await;
    cluster.shutdown().await;
}

/// A bookie of the topic's ensemble stops while a producer appends: every append succeeds
/// and every message reads back in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_survive_a_bookie_stopping() {
    let (_dir, mut cluster, client) = start(4).await;
    let service = BrokerService::new(
        cluster.meta.clone(),
        client.clone(),
        BrokerConfig::default(),
    );
    service
        .ensure_namespace(
            &"public/default".parse().expect("ns"),
            &NamespacePolicies::default(),
        )
        .await
        .expect("namespace");
    let name: TopicName = "persistent://public/default/survivor"
        .parse()
        .expect("topic");
    let topic = service.topic(&name, true).await.expect("topic");
    let ml = Arc::clone(topic.managed_ledger());

    let mut pending = Vec::new();
    let mut stopped = false;
    for i in 0..2000u32 {
        pending.push(
            ml.append(Bytes::from(format!("message {i}")))
                .await
                .expect("append"),
        );
        if i == 500 {
            let first = pending.remove(0).await.expect("first durable");
            pending.insert(0, Box::pin(async move { Ok(first) }));
            let (md, _) = client.metadata(first.ledger).await.expect("metadata");
            let victim = cluster
                .index_of(&md.fragments[0].bookies[0])
                .expect("ensemble member");
            cluster.stop(victim).await;
            stopped = true;
        }
    }
    assert!(stopped);
    let mut positions = Vec::new();
    for p in pending {
        positions.push(p.await.expect("durable"));
    }
    let mut read = Vec::new();
    let mut from = positions[0];
    while read.len() < positions.len() {
        let batch = ml.read(from, 500).await.expect("read");
        assert!(!batch.is_empty(), "read stalled at {from:?}");
        let last = batch.last().expect("entry").0;
        read.extend(batch);
        match ml.next_position(last) {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(read.len(), positions.len());
    for (i, (position, data)) in read.iter().enumerate() {
        assert_eq!(*position, positions[i]);
        assert_eq!(data, &Bytes::from(format!("message {i}")));
    }
    service.close_all().await;
    cluster.shutdown().await;
}
