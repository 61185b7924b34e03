//! Subscription types and redelivery through a real standalone (QUIC, RocksDB) in process:
//! shared spreads messages and gives a departed consumer's unacknowledged ones to the others,
//! failover hands over to the next consumer, key_shared keeps each key's order while a
//! consumer joins, negative acks and ack timeouts redeliver with a growing count, and a
//! message redelivered too often goes to the dead-letter topic.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strata_client::{
    Client, Consumer, DeadLetterPolicy, ErrorCode, InitialPosition, OutgoingMessage,
    SubscriptionType,
};
use strata_tests::{TestStandalone, client, test_config};

async fn produce(c: &Client, topic: &str, messages: Vec<OutgoingMessage>) -> anyhow::Result<()> {
    let producer = c.producer(topic).batch_max_messages(10).create().await?;
    let mut sends = Vec::new();
    for m in messages {
        sends.push(producer.send_async(m).await?);
    }
    for s in sends {
        s.await?;
    }
    producer.close().await?;
    Ok(())
}

fn numbered(n: usize) -> Vec<OutgoingMessage> {
    (0..n).map(|i| format!("#{i}").into()).collect()
}

async fn subscribe(
    c: &Client,
    topic: &str,
    sub_type: SubscriptionType,
    queue: u32,
) -> anyhow::Result<Consumer> {
    Ok(c.consumer(topic, "sub")
        .subscription_type(sub_type)
        .initial_position(InitialPosition::Earliest)
        .receiver_queue_size(queue)
        .subscribe()
        .await?)
}

/// Shared: both consumers get messages; when one leaves without acknowledging what it has,
/// the other receives those too, so between them every message is acknowledged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_spreads_messages_and_redelivers_a_departed_consumers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let topic = "persistent://public/default/shared";
    let mut first = subscribe(&c, topic, SubscriptionType::Shared, 10).await?;
    let mut second = subscribe(&c, topic, SubscriptionType::Shared, 10).await?;
    produce(&c, topic, numbered(100)).await?;
    let mut held_by_first = BTreeSet::new();
    for _ in 0..5 {
        held_by_first.insert(first.receive().await?.payload);
    }
    // The first leaves with five unacknowledged messages.
    first.close().await?;
    let mut seen = BTreeSet::new();
    while seen.len() < 100 {
        let m = second.receive().await?;
        assert!(seen.insert(m.payload.clone()), "{:?} twice", m.payload);
        second.ack(m.id).await?;
    }
    assert!(
        held_by_first.is_subset(&seen),
        "the departed consumer's messages were redelivered"
    );
    second.flush_acks().await?;
    let stats = c.topic_stats(topic).await?;
    let sub = stats.subscriptions.iter().find(|s| s.name == "sub");
    assert!(
        sub.is_some_and(|s| s.unacked == 0 && s.backlog_entries == 0),
        "{stats:?}"
    );
    second.close().await?;
    c.close().await;
    server.standalone.shutdown().await?;
    Ok(())
}

/// Failover: only the first consumer receives; when it leaves, the next one continues from
/// the first message it did not acknowledge, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_hands_over_to_the_next_consumer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let topic = "persistent://public/default/failover";
    let mut active = subscribe(&c, topic, SubscriptionType::Failover, 100).await?;
    let mut standby = subscribe(&c, topic, SubscriptionType::Failover, 100).await?;
    produce(&c, topic, numbered(20)).await?;
    for i in 0..20 {
        let m = active.receive().await?;
        assert_eq!(
            m.payload,
            format!("#{i}").as_bytes(),
            "the active one gets all"
        );
        if i < 10 {
            active.ack_cumulative(m.id).await?;
        }
    }
    active.close().await?;
    for i in 10..20 {
        let m = standby.receive().await?;
        assert_eq!(m.payload, format!("#{i}").as_bytes(), "continues in order");
        standby.ack_cumulative(m.id).await?;
    }
    standby.close().await?;
    c.close().await;
    server.standalone.shutdown().await?;
    Ok(())
}

/// Key_shared: each key is received by one consumer at a time and in order, also while a
/// third consumer joins halfway and takes some keys over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_shared_keeps_each_keys_order_while_a_consumer_joins() -> anyhow::Result<()> {
    const KEYS: usize = 12;
    const PER_KEY: usize = 40;
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let topic = "persistent://public/default/key-shared";
    let messages = |from: usize, to: usize| -> Vec<OutgoingMessage> {
        (from..to)
            .flat_map(|seq| {
                (0..KEYS).map(move |k| OutgoingMessage {
                    payload: format!("{seq}").into(),
                    key: Some(format!("key-{k}")),
                    ..OutgoingMessage::default()
                })
            })
            .collect()
    };
    // Receipts in one global order: (tick, consumer, key, seq).
    let tick = Arc::new(AtomicU64::new(0));
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (done_tx, done) = tokio::sync::watch::channel(0usize);
    let spawn_consumer = |consumer: Consumer, name: usize| {
        let (tick, log, done_tx) = (tick.clone(), log.clone(), done_tx.clone());
        tokio::spawn(async move {
            let mut consumer = consumer;
            loop {
                let m = match consumer.receive().await {
                    Ok(m) => m,
                    Err(_) => return,
                };
                let seq: usize = std::str::from_utf8(&m.payload)
                    .expect("utf8")
                    .parse()
                    .expect("seq");
                let t = tick.fetch_add(1, Ordering::SeqCst);
                log.lock().expect("log").push((t, name, m.key.clone(), seq));
                consumer.ack(m.id).await.expect("ack");
                done_tx.send_modify(|n| *n += 1);
            }
        })
    };
    let a = spawn_consumer(
        subscribe(&c, topic, SubscriptionType::KeyShared, 20).await?,
        0,
    );
    let b = spawn_consumer(
        subscribe(&c, topic, SubscriptionType::KeyShared, 20).await?,
        1,
    );
    produce(&c, topic, messages(0, PER_KEY / 2)).await?;
    let mut done_rx = done.clone();
    done_rx.wait_for(|n| *n >= KEYS * PER_KEY / 4).await?;
    let joined = spawn_consumer(
        subscribe(&c, topic, SubscriptionType::KeyShared, 20).await?,
        2,
    );
    produce(&c, topic, messages(PER_KEY / 2, PER_KEY)).await?;
    done_rx.wait_for(|n| *n >= KEYS * PER_KEY).await?;
    let mut log = log.lock().expect("log").clone();
    log.sort();
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut consumers_used = BTreeSet::new();
    for (_, consumer, key, seq) in &log {
        consumers_used.insert(*consumer);
        let expected = last.get(key).map_or(0, |s| s + 1);
        assert_eq!(*seq, expected, "{key} out of order at consumer {consumer}");
        last.insert(key.clone(), *seq);
    }
    assert_eq!(log.len(), KEYS * PER_KEY, "each message once");
    assert!(
        consumers_used.contains(&2),
        "the consumer that joined got keys"
    );
    for t in [a, b, joined] {
        t.abort();
    }
    c.close().await;
    server.standalone.shutdown().await?;
    Ok(())
}

/// A negatively acknowledged message comes back with its redelivery count raised; one left
/// unacknowledged past the ack timeout comes back too; after the maximum number of
/// redeliveries it goes to the dead-letter topic instead of the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_and_ack_timeouts_redeliver_then_dead_letter() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let topic = "persistent://public/default/redeliver";
    let mut consumer = c
        .consumer(topic, "sub")
        .subscription_type(SubscriptionType::Shared)
        .initial_position(InitialPosition::Earliest)
        .ack_timeout(Duration::from_millis(300))
        .redelivery_delay(Duration::from_millis(20), Duration::from_millis(100))
        .dead_letter(DeadLetterPolicy {
            max_redeliveries: 2,
            topic: None,
        })
        .subscribe()
        .await?;
    produce(&c, topic, vec!["poison".into(), "slow".into()]).await?;
    let mut counts: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
    // "poison" is nacked each time; "slow" is never acknowledged and times out. Each comes
    // back with counts 1 and 2, then goes to the dead-letter topic.
    while counts.values().map(Vec::len).sum::<usize>() < 6 {
        let m = consumer.receive().await?;
        counts
            .entry(m.payload.to_vec())
            .or_default()
            .push(m.redelivery_count);
        if m.payload == "poison".as_bytes() {
            consumer.nack(m.id).await?;
        }
    }
    assert_eq!(counts[b"poison".as_slice()], [0, 1, 2]);
    assert_eq!(counts[b"slow".as_slice()], [0, 1, 2]);
    let mut dead = c
        .consumer(&format!("{topic}-sub-DLQ"), "inspect")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    let mut letters = BTreeSet::new();
    for _ in 0..2 {
        letters.insert(dead.receive().await?.payload.to_vec());
    }
    assert_eq!(
        letters,
        BTreeSet::from([b"poison".to_vec(), b"slow".to_vec()])
    );
    dead.close().await?;
    consumer.close().await?;
    c.close().await;
    server.standalone.shutdown().await?;
    Ok(())
}

/// A consumer asking for another type than the subscription's consumers use is refused with
/// a typed error; the existing consumer goes on; a cumulative ack on a shared subscription
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_subscription_types_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let topic = "persistent://public/default/incompatible";
    let mut shared = subscribe(&c, topic, SubscriptionType::Shared, 10).await?;
    for t in [SubscriptionType::Exclusive, SubscriptionType::KeyShared] {
        let err = subscribe(&c, topic, t, 10).await.err().expect("refused");
        let code = err
            .downcast_ref::<strata_client::ClientError>()
            .and_then(|e| e.code());
        assert_eq!(code, Some(ErrorCode::IncompatibleSubscription), "{err}");
    }
    produce(&c, topic, numbered(1)).await?;
    let m = shared.receive().await?;
    shared.ack_cumulative(m.id).await?;
    // A failed ack without a receipt surfaces on the next receive.
    let err = shared.receive().await.expect_err("cumulative ack refused");
    assert_eq!(err.code(), Some(ErrorCode::ProtocolViolation), "{err}");
    shared.ack(m.id).await?;
    shared.flush_acks().await?;
    shared.close().await?;
    c.close().await;
    server.standalone.shutdown().await?;
    Ok(())
}

/// Close returns only once the broker has let go: right after it, no partition lists the
/// consumer, and the exclusive subscription can be taken again at once, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_exclusive_consumer_frees_its_subscription_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let topic = "persistent://public/default/reclaimed";
    c.create_partitioned_topic(topic, 4).await?;
    produce(&c, topic, numbered(4_000)).await?;
    let mut acked = BTreeSet::new();
    for round in 0..40 {
        // A full queue on every partition: the broker has deliveries to take back on detach.
        let mut consumer = subscribe(&c, topic, SubscriptionType::Exclusive, 1_000)
            .await
            .map_err(|e| anyhow::anyhow!("round {round}: subscribe: {e}"))?;
        let m = consumer.receive().await?;
        assert!(acked.insert(m.id), "round {round}: {:?} acked before", m.id);
        consumer.ack(m.id).await?;
        consumer.close().await?;
        for p in 0..4 {
            let stats = c.topic_stats(&format!("{topic}-partition-{p}")).await?;
            let sub = stats.subscriptions.iter().find(|s| s.name == "sub");
            let consumers = sub.map_or(0, |s| s.consumers);
            assert_eq!(
                consumers, 0,
                "round {round}: partition {p} still lists the consumer"
            );
        }
    }
    c.close().await;
    server.standalone.shutdown().await?;
    Ok(())
}

/// Subscription admin: list names the subscription; peek shows the next unacknowledged
/// messages and changes nothing; skip acknowledges them; a reset (to a message id, to a
/// publish time) makes the connected consumer receive from there again; bad targets are
/// typed errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_listed_peeked_skipped_and_reset() -> anyhow::Result<()> {
    use strata_proto::pb::client::reset_cursor::Target;
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let topic = "persistent://public/default/admin-subs";
    let mut consumer = subscribe(&c, topic, SubscriptionType::Exclusive, 100).await?;
    let producer = c.producer(topic).batch_max_messages(1).create().await?;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(producer.send(format!("#{i}")).await?);
    }
    producer.close().await?;
    let mut received = Vec::new();
    for _ in 0..10 {
        received.push(consumer.receive().await?);
    }
    consumer.ack_cumulative(received[4].id).await?;
    consumer.flush_acks().await?;
    assert_eq!(c.list_subscriptions(topic).await?, ["sub"]);

    let payloads = |ms: Vec<strata_client::ReceivedMessage>| -> Vec<String> {
        ms.iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    };
    assert_eq!(
        payloads(c.peek_messages(topic, "sub", 3).await?),
        ["#5", "#6", "#7"]
    );
    assert_eq!(
        payloads(c.peek_messages(topic, "sub", 3).await?),
        ["#5", "#6", "#7"],
        "peeking acknowledges nothing"
    );
    c.skip_messages(topic, "sub", 2).await?;
    assert_eq!(payloads(c.peek_messages(topic, "sub", 1).await?), ["#7"]);

    // Reset to #3 while the consumer is connected: it is told, resubscribes, and gets #3 on.
    c.reset_cursor(topic, "sub", Target::MessageId(ids[3].into()))
        .await?;
    for i in 3..10 {
        let m = consumer.receive().await?;
        assert_eq!(m.payload, format!("#{i}").as_bytes(), "after the reset");
    }
    // Reset by time: the next message is the first published at or after #6's time.
    let t = received[6].publish_time_ms;
    c.reset_cursor(topic, "sub", Target::PublishTimeMs(t))
        .await?;
    let m = consumer.receive().await?;
    let index: usize = std::str::from_utf8(&m.payload)?
        .trim_start_matches('#')
        .parse()?;
    assert!(
        m.publish_time_ms >= t && index <= 6,
        "{index} at {}",
        m.publish_time_ms
    );
    assert!(
        index == 0 || received[index - 1].publish_time_ms < t,
        "nothing earlier was published at or after {t}"
    );

    let missing = c
        .reset_cursor(topic, "nobody", Target::Earliest(true))
        .await
        .expect_err("no such subscription");
    assert_eq!(missing.code(), Some(ErrorCode::TopicNotFound), "{missing}");
    let bad = c
        .reset_cursor(
            topic,
            "sub",
            Target::MessageId(strata_client::MessageId::new(999_999, 0, 0).into()),
        )
        .await
        .expect_err("no such message");
    assert_eq!(bad.code(), Some(ErrorCode::InvalidMessageId), "{bad}");
    consumer.close().await?;
    c.close().await;
    server.standalone.shutdown().await?;
    Ok(())
}

/// Topic stats carry the publish rate (messages and bytes) and each subscription's dispatch
/// rate: after 200 messages of 100 bytes went in and out, the rates over the last 10 s
/// show them (the second they happened in counts once it is over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_publish_and_dispatch_rates() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let topic = "persistent://public/default/rates";
    let mut consumer = subscribe(&c, topic, SubscriptionType::Shared, 1000).await?;
    produce(
        &c,
        topic,
        (0..200).map(|_| vec![b'x'; 100].into()).collect(),
    )
    .await?;
    for _ in 0..200 {
        let m = consumer.receive().await?;
        consumer.ack(m.id).await?;
    }
    // Once the seconds they happened in are over, all 200 are in the 10 s window (for
    // about 8 s): 20 msg/s and 2000 B/s in, 20 msg/s out.
    let dispatch_rate = |stats: &strata_proto::pb::client::TopicStatsReply| {
        stats
            .subscriptions
            .iter()
            .find(|s| s.name == "sub")
            .map_or(0.0, |s| s.dispatch_rate_msgs)
    };
    let mut last = None;
    let reached = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            let stats = c.topic_stats(topic).await?;
            if stats.publish_rate_msgs == 20.0
                && stats.publish_rate_bytes == 2000.0
                && dispatch_rate(&stats) == 20.0
            {
                return anyhow::Ok(());
            }
            last = Some(stats);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        matches!(reached, Ok(Ok(()))),
        "rates never showed the 200 messages: {last:?}"
    );
    consumer.close().await?;
    c.close().await;
    server.standalone.shutdown().await?;
    Ok(())
}
