//! Producer dedup over time (in process: a metastore, three bookies, a broker): producers
//! that go quiet are forgotten after the broker's expiry, so short-lived producers (each with
//! its own generated name) do not pile up in memory or in every dedup snapshot; one that
//! comes back after it was forgotten continues above every forgotten id; and batches in
//! flight when a producer's connection is cut are settled, so their resends are answered.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use strata_broker::service::BrokerConfig;
use strata_broker::topic::Published;
use strata_metastore::tables::Tables;
use strata_proto::TopicName;
use strata_proto::pb::client::{
    ClientFrame, ProducerOpen, SendBatch, ServerFrame, client_frame, server_frame,
};
use strata_tests::{TestStandalone, test_config};
use strata_transport::handshake::client_handshake;
use strata_transport::{ClientTrust, FrameReader, FrameWriter, TransportTuning, client_endpoint};
use support::{client_of, start_broker_with, stop_all};

/// Fifty producers send one batch each and go away; once they have been quiet for the expiry,
/// the next snapshot (due after 1,000 new batches) lists only the producer still sending, and
/// the broker no longer knows the quiet ones' sequence ids. With no expiry it would list 51.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_producers_are_forgotten_at_the_next_snapshot() {
    let expiry = Duration::from_millis(300);
    let (dir, cluster) = support::start_cluster().await;
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
        for i in 0..3 {
            producer.send(format!("#{i}")).await.expect("stored");
        }
        producer.close().await.expect("close");
    }
    let name: TopicName = topic.parse().expect("topic");
    let loaded = broker.service.topic(&name, false).await.expect("loaded");
    assert_eq!(
        loaded.last_sequence_id("quiet-0").await.expect("read"),
        3,
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
    for i in 0..1000 - 3 * quiet.len() {
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
    assert_eq!(
        snapshot.forgotten_floor, 3,
        "the forgotten producers' highest id"
    );
    for name in &quiet {
        assert_eq!(
            loaded.last_sequence_id(name).await.expect("read"),
            3,
            "{name} forgotten: told the floor, as any producer the topic does not know"
        );
    }
    assert_eq!(
        loaded.last_sequence_id("steady").await.expect("read"),
        (1000 - 3 * quiet.len()) as u64
    );
    steady.close().await.expect("close");

    // A forgotten producer comes back and continues above the floor, at 4. A snapshot from
    // before it was forgotten, still holding its old mark 3, then lands late (snapshot writes
    // are not ordered) and the topic is rebuilt from it: 4 it stays, and 5 is new.
    let reborn = client
        .producer(topic)
        .name("quiet-0")
        .create()
        .await
        .expect("producer");
    reborn.send("reborn").await.expect("stored");
    reborn.close().await.expect("close");
    let tables = Tables::new(cluster.meta.clone());
    let mut stale = snapshot.clone();
    stale.producers.insert("quiet-0".to_owned(), 3);
    tables
        .dedup
        .put(&name, &stale, strata_metastore::Expect::Any)
        .await
        .expect("late snapshot");
    drop(loaded);
    broker.service.unload_all().await;
    let rebuilt = broker.service.topic(&name, false).await.expect("reloaded");
    assert_eq!(
        rebuilt.last_sequence_id("quiet-0").await.expect("read"),
        4,
        "rebuilt at its new life's id"
    );
    match rebuilt
        .publish(
            rebuilt.producer_session(),
            "quiet-0",
            5,
            vec![strata_proto::pb::client::Message {
                payload: "next".as_bytes().to_vec().into(),
                ..Default::default()
            }],
            None,
        )
        .await
    {
        Ok(Published::Stored(pending)) => {
            pending.await.expect("durable");
        }
        Ok(Published::Duplicate(_)) => panic!("batch 5 of the new life taken for a duplicate"),
        Err(e) => panic!("publish: {e}"),
    }
    client.close().await;
    stop_all(vec![broker], cluster).await;
}

/// A raw producer session on its own connection: the endpoint (kept alive with it), the
/// connection, the stream's two halves and the broker's last stored sequence id.
struct RawProducer {
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    writer: FrameWriter,
    reader: FrameReader,
}

async fn raw_producer(addr: SocketAddr, topic: &str, name: &str) -> anyhow::Result<RawProducer> {
    let endpoint = client_endpoint(
        addr,
        &ClientTrust::LoopbackDev,
        strata_proto::ALPN_CLIENT,
        &TransportTuning::default(),
    )?;
    let connection = endpoint.connect(addr, "localhost")?.await?;
    client_handshake(&connection, "raw", MAX_FRAME).await?;
    let (send, recv) = connection.open_bi().await?;
    let mut writer = FrameWriter::new(send, MAX_FRAME);
    let mut reader = FrameReader::new(recv, MAX_FRAME);
    let open = ProducerOpen {
        topic: topic.to_owned(),
        producer_name: name.to_owned(),
        client_id: "raw".to_owned(),
    };
    writer
        .send(&ClientFrame {
            frame: Some(client_frame::Frame::ProducerOpen(open)),
        })
        .await?;
    match reader.recv::<ServerFrame>().await? {
        Some(ServerFrame {
            frame: Some(server_frame::Frame::ProducerReady(_)),
        }) => Ok(RawProducer {
            _endpoint: endpoint,
            connection,
            writer,
            reader,
        }),
        other => anyhow::bail!("expected ProducerReady, got {other:?}"),
    }
}

const MAX_FRAME: usize = 1 << 20;

fn batch(sequence_id: u64) -> ClientFrame {
    ClientFrame {
        frame: Some(client_frame::Frame::Send(SendBatch {
            sequence_id,
            messages: vec![strata_proto::pb::client::Message {
                payload: format!("#{sequence_id}").into_bytes().into(),
                ..Default::default()
            }],
            ..Default::default()
        })),
    }
}

/// A producer's connection is cut while the broker is still storing its batches. The
/// broker follows every batch it took in to its end all the same, so that the resends on
/// a new connection are answered (as duplicates, or stored now) rather than "still being
/// stored" for as long as the topic stays loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_when_a_connection_is_cut_are_settled() -> anyhow::Result<()> {
    const N: u64 = 300;
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let addr = server.standalone.quic_addr;
    let topic = "persistent://public/default/cut-producer";

    let mut first = raw_producer(addr, topic, "cut").await?;
    for seq in 1..=N {
        first.writer.send(&batch(seq)).await?;
    }
    // Once the first receipt is back the broker has batches in hand; cut while it stores.
    first.reader.recv::<ServerFrame>().await?;
    first.connection.close(0u32.into(), b"cut");
    drop(first);

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut next = 1;
    let mut last_refusal = String::new();
    while next <= N {
        assert!(
            Instant::now() < deadline,
            "batch {next} still refused after 20 s: {last_refusal}"
        );
        let mut p = raw_producer(addr, topic, "cut").await?;
        for seq in next..=N {
            // The broker stops reading at a refusal: the receipts below say which.
            if p.writer.send(&batch(seq)).await.is_err() {
                break;
            }
        }
        while next <= N {
            let receipt = match p.reader.recv::<ServerFrame>().await {
                Ok(Some(ServerFrame {
                    frame: Some(server_frame::Frame::Receipt(r)),
                })) => r,
                other => anyhow::bail!("expected a receipt, got {other:?}"),
            };
            if let Some(e) = receipt.error {
                // The session ends at a refusal: resend from there on a new one, shortly.
                last_refusal = format!("{e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                break;
            }
            assert_eq!(receipt.sequence_id, next, "receipts in order");
            next += 1;
        }
    }
    Ok(())
}
