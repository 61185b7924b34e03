//! Broker failover seen from producers and consumers (in process: a metastore, three bookies
//! and two brokers, over real QUIC and RocksDB): producer dedup rebuilt by the new owner from
//! its snapshot and the log, and clients that reconnect on their own with nothing lost,
//! nothing stored twice and nothing delivered twice to an exclusive consumer.

mod support;

use std::time::Duration;

use strata_broker::BrokerError;
use strata_broker::topic::Published;
use strata_client::{ErrorCode, InitialPosition, MessageId};
use strata_proto::TopicName;
use strata_proto::pb::client::Message;
use support::{client_of, client_of_all, crash, start, stop_all, topic_owned_by};
use tokio::sync::watch;

fn message(payload: &str) -> Vec<Message> {
    vec![Message {
        payload: payload.to_owned().into_bytes().into(),
        ..Message::default()
    }]
}

/// Reads `n` messages from the start of a new subscription and checks they are
/// `<prefix>#0..n` in order; then a sentinel produced now must be the very next one, so the
/// log holds nothing else (no batch stored twice).
async fn assert_log_holds_exactly(client: &strata_client::Client, topic: &str, n: usize) {
    let mut consumer = client
        .consumer(topic, "audit-log")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await
        .expect("subscribe");
    for i in 0..n {
        let msg = consumer.receive().await.expect("receive");
        assert_eq!(
            std::str::from_utf8(&msg.payload).expect("utf8"),
            format!("#{i}"),
            "message {i} of the log"
        );
    }
    let producer = client.producer(topic).create().await.expect("producer");
    producer.send("sentinel").await.expect("sentinel");
    producer.close().await.expect("close");
    let next = consumer.receive().await.expect("receive sentinel");
    assert_eq!(
        next.payload,
        "sentinel".as_bytes(),
        "nothing after #{}",
        n - 1
    );
    consumer.close().await.expect("close");
}

/// The new owner of a topic rebuilds its producers' sequence ids from the last dedup snapshot
/// plus the entries after it: a batch the old owner stored is answered as a duplicate (with
/// its position while it is recent), and a producer reopened under the same name continues
/// after its last stored batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_owner_recognises_batches_the_old_owner_stored() {
    let (_dir, cluster, mut brokers) = start().await;
    let client = client_of(&brokers[0]).await;
    let topic = topic_owned_by(&client, "broker-b", "dedup").await;
    // 2,500 one-message batches: snapshots at 1,000 and 2,000, then 500 to replay.
    let producer = client
        .producer(&topic)
        .name("orders-1")
        .batch_max_messages(1)
        .create()
        .await
        .expect("producer");
    let mut sends = Vec::new();
    for i in 0..2500 {
        sends.push(producer.send_async(format!("#{i}")).await.expect("queued"));
    }
    let mut ids: Vec<MessageId> = Vec::new();
    for s in sends {
        ids.push(s.await.expect("stored"));
    }
    producer.close().await.expect("close");
    let _zombie = crash(brokers.pop().expect("broker-b")).await;

    let a = &brokers[0];
    let name: TopicName = topic.parse().expect("topic");
    let snapshot = strata_metastore::tables::Tables::new(cluster.meta.clone())
        .dedup
        .get(&name)
        .await
        .expect("read snapshot")
        .expect("a snapshot was written")
        .record;
    assert!(
        snapshot
            .producers
            .get("orders-1")
            .is_some_and(|s| *s >= 1000),
        "{snapshot:?}"
    );
    let taken = a.service.topic(&name, true).await.expect("taken over by a");
    assert_eq!(
        taken.last_sequence_id("orders-1").await.expect("read"),
        2500
    );
    match taken
        .publish(
            taken.producer_session(),
            "orders-1",
            2400,
            message("again"),
            None,
        )
        .await
    {
        Ok(Published::Duplicate(Some(p))) => assert_eq!(p, ids[2399].position()),
        Ok(Published::Duplicate(None)) => panic!("a replayed batch's position is known"),
        Ok(Published::Stored(_)) => panic!("batch 2400 stored twice"),
        Err(e) => panic!("publish: {e}"),
    }
    assert!(
        matches!(
            taken
                .publish(
                    taken.producer_session(),
                    "orders-1",
                    10,
                    message("again"),
                    None
                )
                .await,
            Ok(Published::Duplicate(_))
        ),
        "a batch covered by the snapshot is a duplicate"
    );
    let reopened = client
        .producer(&topic)
        .name("orders-1")
        .create()
        .await
        .expect("reopen");
    reopened.send("#2500").await.expect("continues");
    reopened.close().await.expect("close");
    assert_log_holds_exactly(&client, &topic, 2501).await;
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// A producer and an exclusive consumer (cumulative acks) run against a topic while its owner
/// crashes: both move to the new owner on their own. Every send succeeds, the consumer gets
/// every message once and in order, and the log holds each message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_a_crashed_owner_with_nothing_lost_or_repeated() {
    const N: usize = 3000;
    strata_tests::init_test_logging();
    let (_dir, cluster, mut brokers) = start().await;
    // broker-b first: the client's own service connection goes down with it too.
    brokers.reverse();
    let client = client_of_all(&brokers).await;
    let topic = topic_owned_by(&client, "broker-b", "follow").await;
    let mut consumer = client
        .consumer(&topic, "exclusive")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await
        .expect("subscribe");
    let (received_tx, mut received) = watch::channel(0usize);
    let consuming = tokio::spawn(async move {
        for i in 0..N {
            let msg = consumer.receive().await.expect("receive");
            assert_eq!(
                std::str::from_utf8(&msg.payload).expect("utf8"),
                format!("#{i}"),
                "in order, none twice"
            );
            consumer.ack_cumulative(msg.id).await.expect("ack");
            received_tx.send_replace(i + 1);
        }
        consumer.close().await.expect("close consumer");
    });
    let producer = client
        .producer(&topic)
        .batch_max_messages(10)
        .create()
        .await
        .expect("producer");
    let mut window = received.clone();
    let producing = tokio::spawn(async move {
        let mut sends = Vec::new();
        for i in 0..N {
            // At most 1,000 ahead of the consumer, so sends are still going on when the
            // owner crashes (at 500 received).
            window
                .wait_for(|n| *n + 1000 >= i)
                .await
                .expect("consumer running");
            sends.push(producer.send_async(format!("#{i}")).await.expect("queued"));
        }
        for (i, s) in sends.into_iter().enumerate() {
            s.await.unwrap_or_else(|e| panic!("send #{i} failed: {e}"));
        }
        producer.close().await.expect("close producer");
    });
    received
        .wait_for(|n| *n >= 500)
        .await
        .expect("consumer running");
    let b = brokers.remove(0);
    assert_eq!(b.id, "broker-b");
    let _zombie = crash(b).await;
    tokio::time::timeout(Duration::from_secs(120), producing)
        .await
        .expect("producer finished")
        .expect("producer task");
    tokio::time::timeout(Duration::from_secs(120), consuming)
        .await
        .expect("consumer finished")
        .expect("consumer task");
    assert_eq!(
        client.lookup(&topic).await.expect("lookup").broker_id,
        "broker-a"
    );
    assert_log_holds_exactly(&client, &topic, N).await;
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// Once an append to the log fails, the producer session it belongs to stores nothing more:
/// the client resends from the failed batch on a new session, and the dedup (which keeps only
/// the highest stored sequence id) would take that resend for a duplicate of a later batch
/// stored meanwhile, and drop it. A new session stores again, the resend included. A batch
/// too large for a ledger entry is refused at once, as not retryable, and fails nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_session_stores_nothing_after_one_of_its_appends_failed() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of(&brokers[0]).await;
    let topic = topic_owned_by(&client, "broker-a", "after-failure").await;
    let name: TopicName = topic.parse().expect("topic");
    let owned = brokers[0].service.topic(&name, true).await.expect("owned");
    let session = owned.producer_session();
    let stored = |p: Result<Published, BrokerError>| async move {
        match p {
            Ok(Published::Stored(pending)) => pending.await.map(|_| ()),
            Ok(Published::Duplicate(_)) => panic!("a new batch taken for a duplicate"),
            Err(e) => Err(e),
        }
    };
    stored(owned.publish(session, "p", 1, message("#0"), None).await)
        .await
        .expect("batch 1 stored");

    let huge = vec![Message {
        payload: vec![0u8; 6 << 20].into(),
        ..Message::default()
    }];
    let too_large = owned.publish(session, "p", 2, huge, None).await;
    assert_eq!(
        too_large.err().map(|e| e.to_wire().code),
        Some(ErrorCode::FrameTooLarge),
        "an entry over the ledger's limit is refused before it is appended"
    );

    // Another writer recovers (fences) the ledger being written, as a new owner would: the
    // next add fails in the writer, after the log handed it a position.
    let ledger = owned
        .managed_ledger()
        .last_confirmed()
        .expect("batch 1 is durable")
        .ledger;
    let fencer = cluster.ledger_client(
        strata_bookie::BookieClientOptions::default(),
        strata_bookie::LedgerClientOptions::default(),
    );
    fencer
        .open_ledger_with_recovery(ledger)
        .await
        .expect("recover the ledger");
    assert!(
        stored(owned.publish(session, "p", 2, message("#1"), None).await)
            .await
            .is_err(),
        "batch 2 fails in the fenced ledger"
    );
    let after = owned.publish(session, "p", 3, message("#2"), None).await;
    assert!(
        after.is_err(),
        "the session that saw batch 2 fail stored batch 3 after it"
    );
    assert_eq!(
        owned
            .last_sequence_id("p")
            .await
            .expect("read back from the log"),
        1,
        "what the log holds, after settling the failed ledger"
    );
    let resend = owned.producer_session();
    stored(owned.publish(resend, "p", 2, message("#1"), None).await)
        .await
        .expect("the resend of batch 2, on a new session, is new and stored");
    stored(owned.publish(resend, "p", 3, message("#2"), None).await)
        .await
        .expect("batch 3 stored after it");
    assert_log_holds_exactly(&client, &topic, 3).await;
    stop_all(brokers, cluster).await;
}
