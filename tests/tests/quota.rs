//! Namespace policies on a running cluster (in process: a metastore, three bookies, two
//! brokers): the ledger rollover policy cuts a topic's log into ledgers of the size it says,
//! and the backlog quota either refuses producers or moves the slowest subscription forward.

mod support;

use strata_client::{Client, ErrorCode, InitialPosition};
use strata_metastore::tables::Tables;
use strata_proto::TopicName;
use strata_proto::pb::client::CreateNamespace;
use support::{TestBroker, client_of_all, start, stop_all};

const PAYLOAD: usize = 80 * 1024;

async fn produce(client: &Client, topic: &str, from: usize, to: usize) {
    let producer = client
        .producer(topic)
        .batch_max_messages(1)
        .create()
        .await
        .expect("producer");
    for i in from..to {
        let mut payload = format!("#{i}:").into_bytes();
        payload.resize(PAYLOAD, b'.');
        producer.send(payload).await.expect("stored");
    }
    producer.close().await.expect("close producer");
}

fn number(payload: &[u8]) -> usize {
    let text = std::str::from_utf8(&payload[1..]).expect("utf8");
    text.split(':').next().expect("n").parse().expect("number")
}

async fn ledger_count(tables: &Tables, topic: &str) -> usize {
    let name: TopicName = topic.parse().expect("topic");
    let row = tables.managed_ledgers.get(&name).await.expect("read");
    row.map_or(0, |r| r.record.ledgers.len())
}

/// The subscription "slow", from the earliest message.
async fn subscribe_slow(client: &Client, topic: &str) -> strata_client::Consumer {
    client
        .consumer(topic, "slow")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await
        .expect("subscribe")
}

/// Runs the periodic policy pass on every broker (only the owner has the topic loaded).
async fn enforce(brokers: &[TestBroker]) {
    for b in brokers {
        b.service.trim_topics().await;
    }
}

/// A namespace whose topics roll over every 5 entries, with a 1 MiB backlog quota.
async fn namespace(client: &Client, ns: &str, quota_policy: &str) {
    client
        .create_namespace(CreateNamespace {
            namespace: ns.into(),
            rollover_max_entries: Some(5),
            ..CreateNamespace::default()
        })
        .await
        .expect("namespace");
    // The quota is set by an update, as an operator would on a live namespace.
    client
        .update_namespace(CreateNamespace {
            namespace: ns.into(),
            backlog_quota_mb: Some(1),
            backlog_quota_policy: Some(quota_policy.into()),
            ..CreateNamespace::default()
        })
        .await
        .expect("quota");
}

/// Over a producer_exception quota, new producers are refused with a typed error; once the
/// subscription consumed its backlog, producing works again. The rollover policy made a
/// ledger of every 5 entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_quota_refuses_producers_until_consumers_catch_up() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let tables = Tables::new(cluster.meta.clone());
    namespace(&client, "public/limited", "producer_exception").await;
    let topic = "persistent://public/limited/t";
    let mut slow = subscribe_slow(&client, topic).await;
    produce(&client, topic, 0, 20).await;
    assert!(
        ledger_count(&tables, topic).await >= 4,
        "20 entries at 5 per ledger"
    );

    enforce(&brokers).await;
    let refused = client.producer(topic).create().await.err();
    assert_eq!(
        refused.and_then(|e| e.code()),
        Some(ErrorCode::BacklogQuotaExceeded)
    );

    for expected in 0..20 {
        let m = slow.receive().await.expect("receive");
        assert_eq!(number(&m.payload), expected);
        slow.ack(m.id).await.expect("ack");
    }
    slow.close().await.expect("close");
    enforce(&brokers).await;
    produce(&client, topic, 20, 21).await;
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// An update that clears the backlog quota lifts the refusal at the next policy pass, with
/// the backlog as it was; the other policies stay, and clearing an unknown policy is a typed
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_the_backlog_quota_lets_producers_in_again() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let ns = "public/cleared";
    namespace(&client, ns, "producer_exception").await;
    let topic = "persistent://public/cleared/t";
    let slow = subscribe_slow(&client, topic).await;
    produce(&client, topic, 0, 20).await;
    enforce(&brokers).await;
    let refused = client.producer(topic).create().await.err();
    assert_eq!(
        refused.and_then(|e| e.code()),
        Some(ErrorCode::BacklogQuotaExceeded)
    );

    let clear = |names: &[&str]| CreateNamespace {
        namespace: ns.into(),
        clear: names.iter().map(|n| n.to_string()).collect(),
        ..CreateNamespace::default()
    };
    let unknown = client.update_namespace(clear(&["bundles"])).await.err();
    assert_eq!(
        unknown.and_then(|e| e.code()),
        Some(ErrorCode::InvalidPolicy)
    );
    client
        .update_namespace(clear(&["backlog_quota"]))
        .await
        .expect("quota cleared");
    let policies = client.namespace_policies(ns).await.expect("policies");
    assert!(!policies.contains("backlog_quota"), "{policies}");
    assert!(policies.contains("ledger_rollover"), "kept: {policies}");
    enforce(&brokers).await;
    produce(&client, topic, 20, 21).await;
    slow.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// Over a consumer_backlog_eviction quota, the slow subscription skips its oldest ledgers:
/// it next receives the first message of the newest ledgers that fit in the quota, and
/// producers are never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_quota_evicts_the_slowest_subscription_oldest_ledgers() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    namespace(&client, "public/evicting", "consumer_backlog_eviction").await;
    let topic = "persistent://public/evicting/t";
    // The subscription exists before the data, and consumes nothing.
    subscribe_slow(&client, topic)
        .await
        .close()
        .await
        .expect("close");
    produce(&client, topic, 0, 30).await;

    enforce(&brokers).await;
    produce(&client, topic, 30, 31).await;
    let mut slow = client
        .consumer(topic, "slow")
        .subscribe()
        .await
        .expect("subscribe");
    // Six ledgers of five 80 KiB entries: the two newest fit in 1 MiB, three would not.
    let first = number(&slow.receive().await.expect("receive").payload);
    assert_eq!(first, 20, "evicted up to the newest ledgers that fit");
    for expected in 21..31 {
        assert_eq!(
            number(&slow.receive().await.expect("receive").payload),
            expected
        );
    }
    slow.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}
