//! Retention (in process: a metastore, three bookies, a broker): ledgers every subscription
//! has consumed are deleted, metadata and bookie data, unless the namespace's retention keeps
//! them; what is not consumed stays.

mod support;

use strata_broker::managed_ledger::ManagedLedgerConfig;
use strata_broker::service::BrokerConfig;
use strata_client::{Client, InitialPosition};
use strata_metastore::tables::{NamespacePolicies, RetentionPolicy, Tables};
use strata_proto::{LedgerId, TopicName};
use support::{client_of, start_broker_with, stop_all};

/// Produces `n` one-message batches numbered `#0..n`.
async fn produce(client: &Client, topic: &str, n: usize) {
    let producer = client
        .producer(topic)
        .batch_max_messages(1)
        .create()
        .await
        .expect("producer");
    for i in 0..n {
        producer.send(format!("#{i}")).await.expect("stored");
    }
    producer.close().await.expect("close");
}

/// Receives and acknowledges `n` messages on `subscription`, durably.
async fn consume(client: &Client, topic: &str, subscription: &str, n: usize) {
    let mut consumer = client
        .consumer(topic, subscription)
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await
        .expect("subscribe");
    for _ in 0..n {
        let m = consumer.receive().await.expect("receive");
        consumer.ack(m.id).await.expect("ack");
    }
    consumer.close().await.expect("close");
}

async fn ledgers_of(tables: &Tables, topic: &str) -> Vec<LedgerId> {
    let name: TopicName = topic.parse().expect("topic");
    let row = tables.managed_ledgers.get(&name).await.expect("read");
    row.map(|r| r.record.ledgers.iter().map(|l| l.id).collect())
        .unwrap_or_default()
}

/// Two subscriptions: nothing goes while one still needs the data; once both consumed it,
/// every closed ledger is deleted from the metastore and from every bookie, the ledger being
/// written stays, and a namespace whose retention keeps consumed data loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumed_ledgers_are_deleted_unless_retention_keeps_them() {
    let (dir, cluster) = support::start_cluster().await;
    let config = BrokerConfig {
        managed_ledger: ManagedLedgerConfig {
            max_entries_per_ledger: 10,
            ..ManagedLedgerConfig::default()
        },
        default_replication: None,
        ..BrokerConfig::default()
    };
    let broker = start_broker_with(&cluster, dir.path(), "broker-a", config).await;
    let client = client_of(&broker).await;
    let tables = Tables::new(cluster.meta.clone());
    let kept_ns = "public/kept".parse().expect("ns");
    broker
        .service
        .create_namespace(
            &kept_ns,
            &NamespacePolicies {
                retention: Some(RetentionPolicy {
                    minutes: 60,
                    size_mb: 1024,
                }),
                ..NamespacePolicies::default()
            },
        )
        .await
        .expect("namespace with retention");
    let topic = "persistent://public/default/trimmed";
    let kept = "persistent://public/kept/retained";
    for t in [topic, kept] {
        // Subscriptions exist before the data, so both must consume it.
        for s in ["first", "second"] {
            consume(&client, t, s, 0).await;
        }
        produce(&client, t, 100).await;
        consume(&client, t, "first", 100).await;
    }
    let before = ledgers_of(&tables, topic).await;
    assert!(before.len() >= 10, "rolled over: {before:?}");
    assert_eq!(
        broker.service.trim_topics().await,
        0,
        "'second' has consumed nothing"
    );

    for t in [topic, kept] {
        consume(&client, t, "second", 100).await;
    }
    let kept_before = ledgers_of(&tables, kept).await;
    let deleted = broker.service.trim_topics().await;
    let after = ledgers_of(&tables, topic).await;
    assert_eq!(
        deleted,
        before.len() - after.len(),
        "only the consumed topic's"
    );
    assert_eq!(
        after.len(),
        1,
        "only the ledger being written stays: {after:?}"
    );
    assert_eq!(
        ledgers_of(&tables, kept).await,
        kept_before,
        "retention keeps them"
    );
    for id in &before[..before.len() - 1] {
        assert!(
            tables.ledgers.get(id).await.expect("read").is_none(),
            "metadata of {id} deleted"
        );
        for b in &cluster.bookies {
            let stored = b
                .server()
                .expect("running")
                .storage()
                .ledgers()
                .expect("list");
            assert!(!stored.contains(id), "{id} still on bookie {}", b.id);
        }
    }
    // The topic goes on: a new subscription from the earliest position starts at the ledger
    // that stayed (#90..#99), then gets what is produced after the trim.
    produce(&client, topic, 3).await;
    let mut late = client
        .consumer(topic, "late")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await
        .expect("subscribe");
    for expected in (90..100).chain(0..3) {
        let m = late.receive().await.expect("receive");
        assert_eq!(m.payload, format!("#{expected}").as_bytes());
    }
    late.close().await.expect("close");
    client.close().await;
    stop_all(vec![broker], cluster).await;
}
