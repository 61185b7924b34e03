//! Producer dedup over time (in process: a metastore, three bookies, a broker): producers
//! that go quiet are forgotten after the broker's expiry, so short-lived producers (each with
//! its own generated name) do not pile up in memory or in every dedup snapshot.

mod support;

use std::time::Duration;

use strata_broker::service::BrokerConfig;
use strata_metastore::tables::Tables;
use strata_proto::TopicName;
use support::{client_of, start_broker_with, stop_all};

/// Fifty producers send one batch each and go away; once they have been quiet for the expiry,
/// the next snapshot (due after 1,000 new batches) lists only the producer still sending, and
/// the broker no longer knows the quiet ones' sequence ids. With no expiry it would list 51.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_producers_are_forgotten_at_the_next_snapshot() {
    let expiry = Duration::from_millis(300);
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = strata_bookie::local_cluster::LocalCluster::start(
        &dir.path().join("cluster"),
        strata_bookie::local_cluster::LocalClusterOptions::default(),
    )
    .await
    .expect("cluster");
    let config = BrokerConfig {
        dedup_producer_expiry: expiry,
        ..BrokerConfig::default()
    };
    let broker = start_broker_with(&cluster, dir.path(), "broker-a", config).await;
    let client = client_of(&broker).await;
    let topic = "persistent://public/default/dedup-expiry";

    let quiet: Vec<String> = (0..50).map(|i| format!("quiet-{i}")).collect();
    for name in &quiet {
        let producer = client
            .producer(topic)
            .name(name)
            .create()
            .await
            .expect("producer");
        producer.send("once").await.expect("stored");
        producer.close().await.expect("close");
    }
    let name: TopicName = topic.parse().expect("topic");
    let loaded = broker.service.topic(&name, false).await.expect("loaded");
    assert_eq!(
        loaded.last_sequence_id("quiet-0").await.expect("read"),
        1,
        "remembered while recent"
    );
    // The property is about elapsed time: nothing else to wait for.
    tokio::time::sleep(expiry).await;

    let steady = client
        .producer(topic)
        .name("steady")
        .batch_max_messages(1)
        .create()
        .await
        .expect("producer");
    let mut sends = Vec::new();
    for i in 0..1000 - quiet.len() {
        sends.push(steady.send_async(format!("#{i}")).await.expect("queued"));
    }
    for s in sends {
        s.await.expect("stored");
    }
    // The snapshot is written before the batch that made it due is acknowledged.
    let snapshot = Tables::new(cluster.meta.clone())
        .dedup
        .get(&name)
        .await
        .expect("read snapshot")
        .expect("a snapshot was written")
        .record;
    assert_eq!(
        snapshot.producers.keys().collect::<Vec<_>>(),
        vec!["steady"],
        "only the producer still sending"
    );
    for name in &quiet {
        assert_eq!(
            loaded.last_sequence_id(name).await.expect("read"),
            0,
            "{name} forgotten"
        );
    }
    assert_eq!(
        loaded.last_sequence_id("steady").await.expect("read"),
        (1000 - quiet.len()) as u64
    );
    steady.close().await.expect("close");
    client.close().await;
    stop_all(vec![broker], cluster).await;
}
