//! End-to-end through a real standalone (QUIC, RocksDB metastore and bookie) in process.

use std::collections::HashMap;
use std::time::Duration;

use strata_client::InitialPosition;
use strata_tests::{TestStandalone, client, test_config};

const PER_PRODUCER: usize = 5_000;

/// Two producers' 10,000 messages all arrive, each producer's in order; after acking half of
/// them and restarting the standalone on the same data, exactly the unacknowledged half is
/// delivered again (acks of single messages inside batches included), and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_redelivers_exactly_the_unacknowledged_half() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Small ledgers so the run crosses several ledger rollovers.
    let config = strata_cli::config::StandaloneConfig {
        max_entries_per_ledger: 50,
        ..test_config(dir.path())
    };
    let server = TestStandalone::start(config).await?;
    let topic = "persistent://public/default/e2e";
    let c = client(&server).await?;

    let mut consumer = c
        .consumer(topic, "sub")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    let mut senders = Vec::new();
    for p in 0..2 {
        let producer = c
            .producer(topic)
            .name(&format!("p{p}"))
            .batch_max_messages(100)
            .create()
            .await?;
        senders.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            for i in 0..PER_PRODUCER {
                pending.push(producer.send_async(format!("p{p}-{i}")).await?);
            }
            for f in pending {
                f.await?;
            }
            producer.close().await?;
            Ok::<_, strata_client::ClientError>(())
        }));
    }

    let mut next_expected: HashMap<String, usize> = HashMap::new();
    let mut acked = std::collections::HashSet::new();
    for n in 0..2 * PER_PRODUCER {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.receive()).await??;
        let text = String::from_utf8(msg.payload.to_vec())?;
        let (producer, index) = text
            .split_once('-')
            .ok_or_else(|| anyhow::anyhow!("bad payload {text}"))?;
        let index: usize = index.parse()?;
        let expected = next_expected.entry(producer.to_owned()).or_default();
        assert_eq!(
            index, *expected,
            "producer {producer}'s messages out of order at message {n}"
        );
        *expected += 1;
        if index.is_multiple_of(2) {
            consumer.ack(msg.id).await?;
            acked.insert(text);
        }
    }
    for s in senders {
        s.await??;
    }
    consumer.close().await?;
    c.close().await;

    let server = server.restart().await?;
    let c = client(&server).await?;
    let mut consumer = c.consumer(topic, "sub").subscribe().await?;
    let mut redelivered = Vec::new();
    for _ in 0..PER_PRODUCER {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.receive()).await??;
        redelivered.push(String::from_utf8(msg.payload.to_vec())?);
    }
    let mut expected: Vec<String> = (0..2)
        .flat_map(|p| {
            (0..PER_PRODUCER)
                .filter(|i| i % 2 == 1)
                .map(move |i| format!("p{p}-{i}"))
        })
        .collect();
    let mut got = redelivered.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "exactly the unacknowledged half comes back");
    assert!(redelivered.iter().all(|m| !acked.contains(m)));
    // Nothing more is pending: a new message is the next thing delivered.
    let producer = c.producer(topic).create().await?;
    producer.send("after-restart").await?;
    let msg = tokio::time::timeout(Duration::from_secs(30), consumer.receive()).await??;
    assert_eq!(&msg.payload[..], b"after-restart");
    Ok(())
}

/// A cumulative ack persists: after a restart delivery resumes right after the acked message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cumulative_ack_survives_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let topic = "cumulative";
    let c = client(&server).await?;
    let producer = c.producer(topic).create().await?;
    let mut pending = Vec::new();
    for i in 0..100 {
        pending.push(producer.send_async(format!("m{i}")).await?);
    }
    for f in pending {
        f.await?;
    }
    let mut consumer = c
        .consumer(topic, "s")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    let mut last = None;
    for _ in 0..60 {
        last = Some(consumer.receive().await?.id);
    }
    consumer
        .ack_cumulative(last.ok_or_else(|| anyhow::anyhow!("no message"))?)
        .await?;
    consumer.close().await?;
    c.close().await;

    let server = server.restart().await?;
    let c = client(&server).await?;
    let mut consumer = c.consumer(topic, "s").subscribe().await?;
    let first = tokio::time::timeout(Duration::from_secs(30), consumer.receive()).await??;
    assert_eq!(&first.payload[..], b"m60");
    Ok(())
}

/// Message ids from receipts are strictly increasing for one producer and name real entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_carry_increasing_message_ids() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let producer = c.producer("ids").batch_max_messages(10).create().await?;
    let mut futures = Vec::new();
    for i in 0..95 {
        futures.push(producer.send_async(format!("{i}")).await?);
    }
    let mut ids = Vec::new();
    for f in futures {
        ids.push(f.await?);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let mut consumer = c
        .consumer("ids", "s")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    for expected in &ids {
        let m = consumer.receive().await?;
        assert_eq!(m.id, *expected);
    }
    Ok(())
}

/// Permits count messages, not entries, and deliveries stay within the frame limit: a
/// consumer with a small receive queue gets every message of large batches (here 64 entries
/// of 1,000 × 1 KiB messages, 64 MiB in all, far more than one frame can carry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_delivered_within_permits_and_frame_limits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let producer = c
        .producer("big")
        .batch_max_messages(1000)
        .batch_max_bytes(4 * 1024 * 1024)
        .create()
        .await?;
    let payload = bytes::Bytes::from(vec![7u8; 1024]);
    let mut pending = Vec::new();
    for _ in 0..64_000 {
        pending.push(producer.send_async(payload.clone()).await?);
    }
    let mut entries = std::collections::BTreeSet::new();
    for f in pending {
        entries.insert(f.await?.position());
    }
    assert!(
        entries.len() < 1000,
        "messages were batched ({} entries)",
        entries.len()
    );
    let mut consumer = c
        .consumer("big", "s")
        .initial_position(InitialPosition::Earliest)
        .receiver_queue_size(100)
        .subscribe()
        .await?;
    for _ in 0..64_000 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.receive()).await??;
        assert_eq!(m.payload.len(), 1024);
    }
    Ok(())
}

/// Deleting a topic removes its messages and subscriptions: it leaves the topic list, and a
/// topic re-created under the same name starts empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_topic_starts_empty_when_recreated() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let topic = "persistent://public/default/short-lived";
    c.create_topic(topic).await?;
    let producer = c.producer(topic).create().await?;
    for i in 0..10 {
        producer.send(format!("old-{i}")).await?;
    }
    producer.close().await?;
    let mut consumer = c
        .consumer(topic, "s")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    consumer.receive().await?;
    consumer.close().await?;

    c.delete_topic(topic).await?;
    assert!(
        !c.list_topics("public/default")
            .await?
            .contains(&topic.to_owned())
    );
    let err = c.topic_stats(topic).await.expect_err("gone");
    assert_eq!(err.code(), Some(strata_client::ErrorCode::TopicNotFound));

    c.create_topic(topic).await?;
    c.producer(topic).create().await?.send("new").await?;
    let mut consumer = c
        .consumer(topic, "s")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    let first = tokio::time::timeout(Duration::from_secs(30), consumer.receive()).await??;
    assert_eq!(
        &first.payload[..],
        b"new",
        "no old message and no old cursor survive the delete"
    );
    let stats = c.topic_stats(topic).await?;
    assert_eq!(stats.entries, 1);
    Ok(())
}
