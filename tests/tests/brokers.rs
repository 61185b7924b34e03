//! Several brokers over one metastore and three bookies (in process, real QUIC and RocksDB):
//! bundle ownership, lookups and redirects, and takeover of a stopped broker's topics with
//! their ledgers fenced.

mod support;

use std::sync::Arc;

use strata_broker::BrokerError;
use strata_client::InitialPosition;
use strata_proto::TopicName;
use support::{client_of, crash, produce, start, stop_all, topic_owned_by};

/// Every lookup, at either broker, names the same owner; topics spread over both brokers;
/// a client connected to one broker produces and consumes topics owned by the other
/// (redirected); and the broker that does not own a topic refuses it with `NotOwner`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_served_by_their_bundle_owner_and_clients_are_redirected() {
    let (_dir, cluster, brokers) = start().await;
    let (client_a, client_b) = (client_of(&brokers[0]).await, client_of(&brokers[1]).await);
    let mut owners = Vec::new();
    for i in 0..8 {
        let topic = format!("persistent://public/default/spread-{i}");
        let owner = client_a.lookup(&topic).await.expect("lookup");
        produce(&client_a, &topic, 5).await;
        let again = client_b.lookup(&topic).await.expect("lookup at b");
        assert_eq!(again.broker_id, owner.broker_id, "one owner for {topic}");
        owners.push((topic, owner.broker_id));
    }
    for b in &brokers {
        assert!(
            owners.iter().any(|(_, o)| *o == b.id),
            "{} owns nothing: {owners:?}",
            b.id
        );
    }
    // Consume through the other broker's connection: redirected to the owner.
    for (topic, _) in &owners {
        let mut consumer = client_b
            .consumer(topic, "audit")
            .initial_position(InitialPosition::Earliest)
            .subscribe()
            .await
            .expect("subscribe");
        for i in 0..5 {
            let msg = consumer.receive().await.expect("receive");
            assert_eq!(msg.payload, format!("{topic} #{i}").as_bytes());
            consumer.ack(msg.id).await.expect("ack");
        }
        consumer.close().await.expect("close");
        // Stats come from the owner, whichever broker the client asked first.
        let stats = client_a.topic_stats(topic).await.expect("stats via a");
        assert!(stats.entries >= 1, "{stats:?}");
        assert!(
            stats.subscriptions.iter().any(|s| s.name == "audit"),
            "{stats:?}"
        );
    }
    let (topic, owner) = &owners[0];
    let other = brokers.iter().find(|b| b.id != *owner).expect("other");
    let name: TopicName = topic.parse().expect("topic");
    match other.service.topic(&name, true).await {
        Err(BrokerError::NotOwner { broker_id, .. }) => assert_eq!(broker_id, *owner),
        Err(e) => panic!("expected NotOwner, got {e}"),
        Ok(_) => panic!("expected NotOwner, got the topic"),
    }
    client_a.close().await;
    client_b.close().await;
    stop_all(brokers, cluster).await;
}

/// The owner of a topic stops without closing its ledgers (as a crash would leave them):
/// once its session is gone the other broker takes the bundle, recovers the open ledger and
/// serves every acknowledged message; the old owner's writer is fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_brokers_topics_are_taken_over_with_nothing_lost() {
    let (_dir, cluster, mut brokers) = start().await;
    let client_a = client_of(&brokers[0]).await;
    let topic = topic_owned_by(&client_a, "broker-b", "takeover").await;
    produce(&client_a, &topic, 100).await;
    let b = brokers.pop().expect("b");
    let name: TopicName = topic.parse().expect("topic");
    let zombie = b.service.topic(&name, false).await.expect("loaded at b");
    let _b = crash(b).await;

    let owner = client_a.lookup(&topic).await.expect("lookup");
    assert_eq!(owner.broker_id, "broker-a");
    let mut consumer = client_a
        .consumer(&topic, "after-failover")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await
        .expect("subscribe at the new owner");
    for i in 0..100 {
        let msg = consumer.receive().await.expect("receive");
        assert_eq!(msg.payload, format!("{topic} #{i}").as_bytes());
        consumer.ack(msg.id).await.expect("ack");
    }
    consumer.close().await.expect("close");
    // The old owner cannot write any more: its ledger was fenced by the takeover.
    let appended = zombie
        .managed_ledger()
        .append(bytes::Bytes::from_static(b"zombie"))
        .await;
    let outcome = match appended {
        Ok(pending) => pending.await.map(drop),
        Err(e) => Err(e),
    };
    assert!(outcome.is_err(), "a write by the old owner must fail");
    produce(&client_a, &topic, 3).await;
    client_a.close().await;
    stop_all(brokers, cluster).await;
}

/// Unloading a namespace closes its topics at their owners and gives the bundles up; the next
/// lookups assign them again and every message is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_a_namespace_reassigns_its_bundles_and_keeps_the_data() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of(&brokers[0]).await;
    let topics: Vec<String> = (0..6)
        .map(|i| format!("persistent://public/default/unload-{i}"))
        .collect();
    for t in &topics {
        produce(&client, t, 10).await;
    }
    let owned_before: usize = brokers.iter().map(|b| b.ownership.owned().len()).sum();
    assert!(owned_before >= 1);
    let bundles = client
        .namespace_bundles("public/default")
        .await
        .expect("bundles");
    assert_eq!(bundles.len(), 4);
    let unloaded = client
        .unload_namespace("public/default")
        .await
        .expect("unload");
    assert_eq!(unloaded, owned_before);
    for b in &brokers {
        assert!(
            b.ownership.owned().is_empty(),
            "{} still owns bundles",
            b.id
        );
    }
    assert!(
        client
            .namespace_bundles("public/default")
            .await
            .expect("bundles")
            .iter()
            .all(|b| b.owner_id.is_empty()),
        "every bundle unowned after the unload"
    );
    for t in &topics {
        let mut consumer = client
            .consumer(t, "after-unload")
            .initial_position(InitialPosition::Earliest)
            .subscribe()
            .await
            .expect("subscribe");
        for i in 0..10 {
            let msg = consumer.receive().await.expect("receive");
            assert_eq!(msg.payload, format!("{t} #{i}").as_bytes());
        }
        consumer.close().await.expect("close");
    }
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// Splitting an owned bundle leaves its owner holding both halves, with its topics still
/// served and no bundle left without an owner in the new layout; a bad range is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splitting_a_bundle_keeps_both_halves_at_the_owner() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of(&brokers[0]).await;
    let topic = "persistent://public/default/split-me";
    produce(&client, topic, 5).await;
    let owner = client.lookup(topic).await.expect("lookup");
    let before = client
        .namespace_bundles("public/default")
        .await
        .expect("bundles");
    let target = before
        .iter()
        .find(|b| b.owner_id == owner.broker_id && !b.owner_id.is_empty())
        .expect("an owned bundle")
        .range
        .clone();
    let owned_bundles = before
        .iter()
        .filter(|b| b.owner_id == owner.broker_id)
        .count();
    client
        .split_bundle("public/default", &target)
        .await
        .expect("split");
    let after = client
        .namespace_bundles("public/default")
        .await
        .expect("bundles");
    assert_eq!(after.len(), 5, "one bundle more");
    assert!(
        !after.iter().any(|b| b.range == target),
        "the old range is gone"
    );
    assert_eq!(
        after
            .iter()
            .filter(|b| b.owner_id == owner.broker_id)
            .count(),
        owned_bundles + 1,
        "the owner holds both halves: {after:?}"
    );
    assert_eq!(
        client.lookup(topic).await.expect("lookup").broker_id,
        owner.broker_id
    );
    produce(&client, topic, 5).await;
    let stats = client.topic_stats(topic).await.expect("stats");
    assert!(stats.entries >= 2);
    let err = client
        .split_bundle("public/default", "0x00000000_0x00000001")
        .await
        .expect_err("not a bundle");
    assert_eq!(
        err.code(),
        Some(strata_client::ErrorCode::InvalidPolicy),
        "{err}"
    );
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// A topic unloaded while it loads is not handed out as if it were served: the caller gets
/// the topic the broker maps, or an error to retry, never a copy that no later request or
/// transaction decision reaches, with its ledger still open for writes. (`join!` polls the
/// load first: it takes its place in the map and waits on the metastore, then the unload
/// empties the map, so the load finishes after it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_unloaded_while_it_loads_is_not_handed_out() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of(&brokers[0]).await;
    let service = &brokers[0].service;
    let mut refused = 0;
    for i in 0..5 {
        let topic = topic_owned_by(&client, &brokers[0].id, &format!("unload-race-{i}")).await;
        produce(&client, &topic, 1).await;
        service.unload_all().await;
        let name = TopicName::parse(&topic).expect("topic name");
        let (loaded, ()) = tokio::join!(service.topic(&name, false), service.unload_all());
        match loaded {
            Ok(t) => {
                let mapped = service.loaded_topic(&name).await;
                assert!(
                    mapped.is_some_and(|m| Arc::ptr_eq(&m, &t))
                        || t.managed_ledger().next_position_hint().is_err(),
                    "{topic}: handed out a copy the broker does not map, its ledger open"
                );
            }
            Err(BrokerError::Retry(_)) => refused += 1,
            Err(e) => panic!("{topic}: {e}"),
        }
        // Served again afterwards, by one copy.
        let served = service.topic(&name, false).await.expect("loaded again");
        let mapped = service.loaded_topic(&name).await.expect("mapped");
        assert!(Arc::ptr_eq(&served, &mapped));
    }
    assert!(refused > 0, "the unload never came while a load ran");
    client.close().await;
    stop_all(brokers, cluster).await;
}
