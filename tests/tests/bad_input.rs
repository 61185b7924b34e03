//! Bad input gets a typed error, and the server keeps serving everyone else.

use std::time::Duration;

use strata_broker::NamespacePolicies;
use strata_client::{ClientError, ClientOptions, ErrorCode, InitialPosition};
use strata_proto::pb::common::Hello;
use strata_tests::{TestStandalone, client, test_config};
use strata_transport::{
    ClientTrust, FrameReader, FrameWriter, TransportError, TransportTuning, client_endpoint,
};

/// An invalid topic name is refused with InvalidTopicName, by the client before sending and by
/// the broker when a raw request carries one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_names_are_typed_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let err = c
        .producer("persistent://bad name/x/y")
        .create()
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, ClientError::InvalidTopicName(_)), "{err:?}");
    // The admin path sends the raw name: the broker's answer is the typed error.
    let err = c
        .create_topic("persistent://a/b/c/d")
        .await
        .expect_err("refused by the broker");
    assert_eq!(err.code(), Some(ErrorCode::InvalidTopicName), "{err}");
    // The connection still works.
    c.create_topic("fine").await?;
    Ok(())
}

/// With auto-creation off, a producer on an unknown topic gets TopicNotFound; after the topic
/// is created explicitly the same producer call succeeds. An unknown namespace is its own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_without_auto_creation_is_topic_not_found() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let strict = NamespacePolicies {
        auto_create_topics: false,
        ..NamespacePolicies::default()
    };
    server
        .standalone
        .broker()
        .ensure_namespace(&"public/strict".parse()?, &strict)
        .await?;
    let c = client(&server).await?;
    let topic = "persistent://public/strict/orders";
    let err = c.producer(topic).create().await.err().expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::TopicNotFound), "{err}");
    let err = c
        .consumer(topic, "s")
        .subscribe()
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::TopicNotFound), "{err}");
    let err = c
        .producer("persistent://nobody/nothing/t")
        .create()
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::NamespaceNotFound), "{err}");
    c.create_topic(topic).await?;
    let err = c.create_topic(topic).await.expect_err("exists");
    assert_eq!(err.code(), Some(ErrorCode::TopicAlreadyExists));
    c.producer(topic)
        .create()
        .await?
        .send("now it exists")
        .await?;
    assert_eq!(
        c.list_topics("public/strict").await?,
        vec![topic.to_owned()]
    );
    Ok(())
}

/// A frame over the server's limit ends that producer session with FrameTooLarge; another
/// producer on the same connection keeps working, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_fails_only_its_session() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = strata_cli::config::StandaloneConfig {
        max_frame_size: 64 * 1024,
        ..test_config(dir.path())
    };
    let server = TestStandalone::start(config).await?;
    // The client allows bigger frames than the server, so the server's limit is what refuses.
    let options = ClientOptions {
        url: server.url(),
        tls_ca: server.standalone.ca_path.clone(),
        ..ClientOptions::default()
    };
    let c = strata_client::Client::connect(options).await?;
    let good = c.producer("limits").create().await?;
    let before = good.send("small").await?;
    let bad = c.producer("limits").batch_max_messages(1).create().await?;
    let err = bad
        .send(vec![0u8; 100 * 1024])
        .await
        .expect_err("too large for the server");
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "{err}");
    let after = good.send("still fine").await?;
    assert!(after > before);
    let mut consumer = c
        .consumer("limits", "s")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    let got: Vec<_> = [consumer.receive().await?, consumer.receive().await?]
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(
        got,
        vec![
            bytes::Bytes::from("small"),
            bytes::Bytes::from("still fine")
        ]
    );
    Ok(())
}

/// A peer speaking only a future protocol version is refused with a clear reason, and the
/// server keeps accepting compatible clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_protocol_version_is_refused_clearly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let addr = server.standalone.quic_addr;
    let trust = ClientTrust::LoopbackDev;
    let endpoint = client_endpoint(
        addr,
        &trust,
        strata_proto::ALPN_CLIENT,
        &TransportTuning::default(),
    )?;
    let conn = endpoint.connect(addr, "localhost")?.await?;
    let (send, recv) = conn.open_bi().await?;
    let mut writer = FrameWriter::new(send, 1 << 20);
    let mut reader = FrameReader::new(recv, 1 << 20);
    writer
        .send(&Hello {
            protocol_version: 99,
            min_protocol_version: 99,
            peer_name: "from-the-future".into(),
        })
        .await?;
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        reader.recv::<strata_proto::pb::common::HelloAck>(),
    )
    .await?;
    let close = match outcome {
        Err(TransportError::Read(quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::ApplicationClosed(close),
        ))) => close,
        other => panic!("expected the connection closed with a reason, got {other:?}"),
    };
    assert_eq!(
        close.error_code,
        quinn::VarInt::from_u32(strata_transport::close_code::INCOMPATIBLE_VERSION)
    );
    let reason = String::from_utf8_lossy(&close.reason);
    assert!(
        reason.contains("incompatible protocol") && reason.contains("99"),
        "{reason}"
    );
    // Everyone else is still served.
    let c = client(&server).await?;
    c.producer("still-up").create().await?.send("ok").await?;
    Ok(())
}

/// Acking a message id that was never delivered is an InvalidMessageId error on that ack only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_of_unknown_message_is_invalid_message_id() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    c.producer("acks").create().await?.send("one").await?;
    let mut consumer = c
        .consumer("acks", "s")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    let msg = consumer.receive().await?;
    consumer
        .ack(strata_client::MessageId::new(999_999, 0, 0))
        .await?;
    let err = consumer.flush_acks().await;
    // The bogus ack is reported (either on the flush or as the next received item).
    let reported = match err {
        Err(e) => e,
        Ok(()) => consumer.receive().await.expect_err("reported"),
    };
    assert_eq!(
        reported.code(),
        Some(ErrorCode::InvalidMessageId),
        "{reported}"
    );
    consumer.ack(msg.id).await?;
    consumer.flush_acks().await?;
    Ok(())
}

/// Deliveries stay within the server's configured frame limit whatever the messages carry
/// (properties included): with a 64 KiB limit, batches of ~50 KiB with large properties are
/// all delivered, none of them stalls the subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_respect_a_small_frame_limit_with_large_properties() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = strata_cli::config::StandaloneConfig {
        max_frame_size: 64 * 1024,
        ..test_config(dir.path())
    };
    let server = TestStandalone::start(config).await?;
    let c = client(&server).await?;
    let producer = c
        .producer("props")
        .batch_max_messages(20)
        .batch_max_bytes(1 << 20)
        .create()
        .await?;
    let mut pending = Vec::new();
    for i in 0..400 {
        let mut m = strata_client::OutgoingMessage::from(vec![1u8; 1024]);
        m.properties.insert("blob".into(), "p".repeat(1024));
        m.properties.insert("i".into(), i.to_string());
        pending.push(producer.send_async(m).await?);
    }
    for f in pending {
        f.await?;
    }
    let mut consumer = c
        .consumer("props", "s")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    for i in 0..400 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.receive()).await??;
        assert_eq!(m.properties.get("i"), Some(&i.to_string()));
    }
    Ok(())
}

/// Deleting a topic ends its attached consumers with TopicNotFound instead of leaving them
/// waiting, and its producers' sends fail with TopicNotFound too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_ends_its_sessions_with_topic_not_found() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;
    let producer = c.producer("doomed").create().await?;
    producer.send("one").await?;
    let mut consumer = c
        .consumer("doomed", "s")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    consumer.receive().await?;
    c.delete_topic("doomed").await?;
    let err = tokio::time::timeout(Duration::from_secs(30), consumer.receive())
        .await?
        .expect_err("session ended");
    assert_eq!(err.code(), Some(ErrorCode::TopicNotFound), "{err}");
    let err = producer.send("two").await.expect_err("topic is gone");
    assert_eq!(err.code(), Some(ErrorCode::TopicNotFound), "{err}");
    Ok(())
}
