//! Partitioned topics and tenants (in process: a metastore, three bookies, two brokers):
//! a partitioned topic's partitions are served by whichever broker owns each, the producer
//! routes keyed messages by key and the rest round-robin, the consumer merges every
//! partition, and the admin verbs refuse what would shadow or orphan a partition.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use strata_client::{ClientError, ErrorCode, InitialPosition, OutgoingMessage};
use strata_proto::pb::client::CreateNamespace;
use support::{client_of_all, start, stop_all};

fn code(e: ClientError) -> Option<ErrorCode> {
    e.code()
}

/// Every message reaches the merged consumer once; all of a key's messages come from one
/// partition in the order sent; keys and unkeyed batches spread over every partition; and
/// acks route to the right partition (nothing is redelivered after a resubscribe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_topic_routes_by_key_and_consumer_merges_partitions() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let topic = "persistent://public/default/orders";
    client
        .create_partitioned_topic(topic, 4)
        .await
        .expect("create");
    assert_eq!(client.partitions(topic).await.expect("metadata"), 4);
    let listed = client.list_topics("public/default").await.expect("list");
    for i in 0..4 {
        let p = format!("{topic}-partition-{i}");
        assert!(listed.contains(&p), "{p} missing from {listed:?}");
    }
    assert_eq!(
        client
            .list_partitioned_topics("public/default")
            .await
            .expect("list"),
        vec![topic.to_owned()]
    );
    let owners: BTreeSet<String> = {
        let mut owners = BTreeSet::new();
        for i in 0..4 {
            let p = format!("{topic}-partition-{i}");
            owners.insert(client.lookup(&p).await.expect("lookup").broker_id);
        }
        owners
    };

    let mut consumer = client
        .consumer(topic, "billing")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await
        .expect("subscribe");
    assert_eq!(consumer.partitions(), 4);
    let producer = client
        .producer(topic)
        .batch_max_messages(10)
        .create()
        .await
        .expect("producer");
    assert_eq!(producer.partitions(), 4);
    let mut sends = Vec::new();
    for i in 0..400u32 {
        let key = format!("key-{}", i % 20);
        let message = OutgoingMessage {
            payload: format!("{key}:{i}").into(),
            key: Some(key),
            ..OutgoingMessage::default()
        };
        sends.push(producer.send_async(message).await.expect("queued"));
    }
    for i in 0..100u32 {
        sends.push(
            producer
                .send_async(format!("unkeyed:{i}"))
                .await
                .expect("queued"),
        );
    }
    for s in sends {
        s.await.expect("stored");
    }
    producer.close().await.expect("close producer");

    let mut partition_of_key: BTreeMap<String, String> = BTreeMap::new();
    let mut last_of_key: BTreeMap<String, u32> = BTreeMap::new();
    let mut unkeyed_partitions = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for _ in 0..500 {
        let m = consumer.receive().await.expect("receive");
        let text = String::from_utf8(m.payload.to_vec()).expect("utf8");
        assert!(seen.insert(text.clone()), "{text} delivered twice");
        let (key, n) = text.split_once(':').expect("key:n");
        let n: u32 = n.parse().expect("number");
        if key == "unkeyed" {
            unkeyed_partitions.insert(m.topic.to_string());
        } else {
            let partition = partition_of_key
                .entry(key.to_owned())
                .or_insert_with(|| m.topic.to_string());
            assert_eq!(*partition, m.topic.to_string(), "{key} moved partition");
            if let Some(last) = last_of_key.insert(key.to_owned(), n) {
                assert!(last < n, "{key}: {n} after {last}");
            }
        }
        consumer.ack(m.id).await.expect("ack");
    }
    let keyed_partitions: BTreeSet<&String> = partition_of_key.values().collect();
    assert_eq!(keyed_partitions.len(), 4, "20 keys over 4 partitions");
    assert_eq!(unkeyed_partitions.len(), 4, "batches round-robin over all");
    consumer.close().await.expect("close");

    // Acks reached each partition: a new consumer of the subscription gets only new messages.
    let mut again = client
        .consumer(topic, "billing")
        .subscribe()
        .await
        .expect("resubscribe");
    let producer = client.producer(topic).create().await.expect("producer");
    producer.send("after").await.expect("stored");
    let m = again.receive().await.expect("receive");
    assert_eq!(&m.payload[..], b"after", "acked messages came back");
    assert!(
        again
            .ack(strata_client::MessageId::new(u64::MAX - 1, 0, 0))
            .await
            .is_err(),
        "an id from no partition this consumer read is refused"
    );
    again.close().await.expect("close");
    producer.close().await.expect("close producer");
    eprintln!("partitions served by {owners:?}");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// A partitioned topic cannot be created twice, over a plain topic, with zero partitions or
/// in a missing namespace; no plain topic may shadow it or a partition beyond its count;
/// deleting it removes every partition with its data, and then its name is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_topic_admin_refuses_shadowing_and_deletes_partitions() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let topic = "persistent://public/default/events";
    let create = |t: &'static str, n: u32| {
        let client = client.clone();
        async move {
            client
                .create_partitioned_topic(t, n)
                .await
                .err()
                .and_then(code)
        }
    };
    assert_eq!(create(topic, 0).await, Some(ErrorCode::InvalidPolicy));
    assert_eq!(
        create("persistent://nowhere/ns/x", 2).await,
        Some(ErrorCode::NamespaceNotFound)
    );
    assert_eq!(create(topic, 3).await, None);
    assert_eq!(create(topic, 3).await, Some(ErrorCode::TopicAlreadyExists));
    assert_eq!(
        create("persistent://public/default/events-partition-1", 2).await,
        Some(ErrorCode::InvalidTopicName),
        "a partition cannot be partitioned"
    );
    let plain = |t: &'static str| {
        let client = client.clone();
        async move { client.create_topic(t).await.err().and_then(code) }
    };
    assert_eq!(plain(topic).await, Some(ErrorCode::TopicAlreadyExists));
    assert_eq!(
        plain("persistent://public/default/events-partition-2").await,
        Some(ErrorCode::TopicAlreadyExists)
    );
    assert_eq!(
        plain("persistent://public/default/events-partition-3").await,
        Some(ErrorCode::PreconditionFailed),
        "beyond the partition count"
    );
    // A plain topic's name cannot be taken by a partitioned one.
    assert_eq!(plain("persistent://public/default/plain").await, None);
    assert_eq!(
        create("persistent://public/default/plain", 2).await,
        Some(ErrorCode::TopicAlreadyExists)
    );

    // One partition cannot be deleted on its own.
    assert_eq!(
        client
            .delete_topic("persistent://public/default/events-partition-0")
            .await
            .err()
            .and_then(code),
        Some(ErrorCode::PreconditionFailed)
    );

    // Data on every partition, then delete.
    let producer = client.producer(topic).create().await.expect("producer");
    for i in 0..30 {
        producer.send(format!("m{i}")).await.expect("stored");
    }
    producer.close().await.expect("close");
    client
        .delete_partitioned_topic(topic)
        .await
        .expect("delete");
    assert_eq!(client.partitions(topic).await.expect("metadata"), 0);
    let left = client.list_topics("public/default").await.expect("list");
    assert!(
        left.iter().all(|t| !t.starts_with(topic)),
        "partitions left: {left:?}"
    );
    // The name is free: re-created, it starts empty.
    client
        .create_partitioned_topic(topic, 2)
        .await
        .expect("re-create");
    let mut consumer = client
        .consumer(topic, "s")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await
        .expect("subscribe");
    let producer = client.producer(topic).create().await.expect("producer");
    producer.send("fresh").await.expect("stored");
    assert_eq!(
        &consumer.receive().await.expect("receive").payload[..],
        b"fresh"
    );
    producer.close().await.expect("close");
    consumer.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// Tenants: created once, listed, not deleted while they have namespaces, then deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_created_listed_and_deleted_when_empty() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    client
        .create_tenant("acme", vec!["ops".into()])
        .await
        .expect("create");
    assert_eq!(
        client
            .create_tenant("acme", vec![])
            .await
            .err()
            .and_then(code),
        Some(ErrorCode::TenantAlreadyExists)
    );
    assert_eq!(
        client
            .create_tenant("bad/name", vec![])
            .await
            .err()
            .and_then(code),
        Some(ErrorCode::InvalidTopicName)
    );
    let tenants = client.list_tenants().await.expect("list");
    assert!(tenants.contains(&"acme".to_owned()), "{tenants:?}");
    client
        .create_namespace(CreateNamespace {
            namespace: "acme/orders".into(),
            ..CreateNamespace::default()
        })
        .await
        .expect("namespace");
    assert_eq!(
        client.delete_tenant("acme").await.err().and_then(code),
        Some(ErrorCode::TenantNotEmpty)
    );
    client
        .delete_namespace("acme/orders")
        .await
        .expect("delete ns");
    client.delete_tenant("acme").await.expect("delete tenant");
    assert_eq!(
        client.delete_tenant("acme").await.err().and_then(code),
        Some(ErrorCode::TenantNotFound)
    );
    assert!(
        !client
            .list_tenants()
            .await
            .expect("list")
            .contains(&"acme".to_owned())
    );
    client.close().await;
    stop_all(brokers, cluster).await;
}
