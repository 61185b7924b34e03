//! Transactions through brokers (in process: a metastore, three bookies, two brokers, the
//! coordinator's expiry running as on a metastore leader): begin, commit and abort from the
//! client, idempotent decisions, timeouts, and typed errors for unknown or decided ones.

mod support;

use std::time::Duration;

use strata_client::{ClientError, ErrorCode, TxnId};
use strata_metastore::txn_coordinator::{spawn_expiry, spawn_expiry_keeping};
use support::{client_of_all, start, stop_all};

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> Option<ErrorCode> {
    r.err().and_then(|e| e.code())
}

/// Commit twice answers committed twice; abort afterwards is refused. Abort twice answers
/// aborted twice; commit afterwards is refused. The states are what an operator sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_idempotent_and_final() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;

    let committed = client.new_transaction().begin().await.expect("begin");
    // Begin writes nothing: the first write creates the transaction.
    assert!(
        client
            .list_transactions(true)
            .await
            .expect("list")
            .is_empty(),
        "a transaction without writes is not recorded"
    );
    let producer = client.producer("decided").create().await.expect("producer");
    producer.send_in(&committed, "one").await.expect("stored");
    let open = client.list_transactions(true).await.expect("list");
    assert!(
        open.iter().any(|t| t.txn_id == committed.id().0),
        "{open:?}"
    );
    committed.commit().await.expect("commit");
    committed
        .commit()
        .await
        .expect("a retried commit answers committed");
    assert_eq!(
        code(committed.abort().await),
        Some(ErrorCode::TransactionNotOpen)
    );
    let info = client.transaction_info(committed.id()).await.expect("info");
    assert_eq!(info.state, "COMMITTED");
    assert_eq!(info.owner, client.client_id());
    assert!(info.decided_ms >= info.created_ms);

    // Nothing written: the abort records the transaction aborted, so nothing can create
    // it open later.
    let aborted = client.new_transaction().begin().await.expect("begin");
    assert_ne!(aborted.id(), committed.id(), "ids are never reused");
    aborted.abort().await.expect("abort");
    assert_eq!(
        code(producer.send_in(&aborted, "late").await),
        Some(ErrorCode::TransactionNotOpen),
        "a send after the abort"
    );
    aborted
        .abort()
        .await
        .expect("a retried abort answers aborted");
    assert_eq!(
        code(aborted.commit().await),
        Some(ErrorCode::TransactionNotOpen)
    );
    assert_eq!(
        client
            .transaction_info(aborted.id())
            .await
            .expect("info")
            .state,
        "ABORTED"
    );
    assert!(
        client
            .list_transactions(true)
            .await
            .expect("list")
            .is_empty(),
        "nothing left open"
    );
    assert_eq!(
        code(client.transaction_info(TxnId(u64::MAX)).await),
        Some(ErrorCode::TransactionNotFound)
    );
    // The metrics count each decision once (not the retries), with one commit latency.
    let metrics: String = brokers.iter().map(|b| b.service.metrics.render()).collect();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .sum()
    };
    assert_eq!(value("strata_broker_txn_committed_total "), 1, "{metrics}");
    assert_eq!(value("strata_broker_txn_aborted_total "), 1, "{metrics}");
    assert_eq!(
        value("strata_broker_txn_commit_latency_seconds_count "),
        1,
        "{metrics}"
    );
    producer.close().await.expect("close producer");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// A transaction left open past its timeout is aborted by the coordinator: it shows as
/// TIMED_OUT and its commit is refused. An operator can abort any client's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_times_out_and_operators_abort() {
    let (_dir, cluster, brokers) = start().await;
    let expiry = spawn_expiry(cluster.meta.clone(), Duration::from_millis(50));
    let client = client_of_all(&brokers).await;
    let operator = client_of_all(&brokers).await;

    let producer = client
        .producer("expiring")
        .create()
        .await
        .expect("producer");
    let txn = client
        .new_transaction()
        .timeout(Duration::from_millis(200))
        .begin()
        .await
        .expect("begin");
    producer.send_in(&txn, "one").await.expect("stored");
    tokio::time::timeout(Duration::from_secs(20), async {
        while client.transaction_info(txn.id()).await.expect("info").state != "TIMED_OUT" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("timed out by the coordinator");
    assert_eq!(
        code(txn.commit().await),
        Some(ErrorCode::TransactionNotOpen)
    );

    // One that wrote nothing before its timeout: nothing can create it afterwards, and its
    // commit finds nothing (its outcome is not known: it may be forgotten).
    let unwritten = client
        .new_transaction()
        .timeout(Duration::from_millis(100))
        .begin()
        .await
        .expect("begin");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
    tokio::time::sleep_until(deadline).await;
    assert_eq!(
        code(producer.send_in(&unwritten, "late").await),
        Some(ErrorCode::TransactionNotOpen),
        "a first write after the deadline"
    );
    assert_eq!(
        code(unwritten.commit().await),
        Some(ErrorCode::TransactionNotOpen),
        "the commit reports the failed send"
    );
    assert_eq!(
        code(unwritten.abort().await),
        Some(ErrorCode::TransactionNotFound),
        "nothing to abort: its outcome is not known here"
    );

    let other = client.new_transaction().begin().await.expect("begin");
    producer.send_in(&other, "two").await.expect("stored");
    let info = operator
        .abort_transaction(other.id())
        .await
        .expect("operator abort");
    assert_eq!(info.state, "ABORTED");
    assert_eq!(
        code(other.commit().await),
        Some(ErrorCode::TransactionNotOpen)
    );
    assert_eq!(
        code(
            client
                .new_transaction()
                .timeout(Duration::from_secs(100_000))
                .begin()
                .await
        ),
        Some(ErrorCode::InvalidPolicy),
        "a timeout beyond the maximum"
    );
    expiry.abort();
    producer.close().await.expect("close producer");
    client.close().await;
    operator.close().await;
    stop_all(brokers, cluster).await;
}

/// The limit on open transactions per client counts created transactions: begins are not
/// refused (they write nothing), the first send or ack beyond the limit is, with
/// `TooManyTransactions`, and a decision frees a place. A broker that begins eagerly
/// refuses the begin itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_open_transactions_are_refused_at_their_first_write() {
    let (dir, cluster) = support::start_cluster().await;
    let limited = |eager_begin| strata_broker::BrokerConfig {
        txn_limits: strata_metastore::txn_coordinator::TxnLimits {
            max_open_per_client: 2,
            ..Default::default()
        },
        eager_begin,
        ..Default::default()
    };
    let lazy = support::start_broker_with(&cluster, dir.path(), "lazy", limited(false)).await;
    let brokers = vec![lazy];
    let client = client_of_all(&brokers).await;
    support::produce(&client, "limited-in", 1).await;
    let mut consumer = subscribe_earliest(&client, "limited-in", "workers").await;
    let input = next(&mut consumer).await;
    let producer = client
        .producer("limited-out")
        .create()
        .await
        .expect("producer");

    let mut txns = Vec::new();
    for _ in 0..3 {
        txns.push(
            client
                .new_transaction()
                .begin()
                .await
                .expect("begin writes nothing"),
        );
    }
    producer.send_in(&txns[0], "a").await.expect("first open");
    producer.send_in(&txns[1], "b").await.expect("second open");
    assert_eq!(
        code(producer.send_in(&txns[2], "c").await),
        Some(ErrorCode::TooManyTransactions),
        "a third send"
    );
    assert_eq!(
        code(consumer.ack_in(&txns[2], input.id).await),
        Some(ErrorCode::TooManyTransactions),
        "a third ack"
    );
    txns[0].commit().await.expect("commit");
    let next_txn = client.new_transaction().begin().await.expect("begin");
    producer
        .send_in(&next_txn, "d")
        .await
        .expect("a decision frees a place");
    consumer.close().await.expect("close consumer");
    producer.close().await.expect("close producer");
    client.close().await;

    // Eager begin counts at begin.
    let eager = support::start_broker_with(&cluster, dir.path(), "eager", limited(true)).await;
    let brokers = {
        let mut all = brokers;
        all.push(eager);
        all
    };
    let eager_client = client_of_all(&brokers[1..]).await;
    let first = eager_client.new_transaction().begin().await.expect("begin");
    let second = eager_client.new_transaction().begin().await.expect("begin");
    assert_eq!(
        code(eager_client.new_transaction().begin().await),
        Some(ErrorCode::TooManyTransactions),
        "a third eager begin"
    );
    assert!(
        eager_client
            .list_transactions(true)
            .await
            .expect("list")
            .iter()
            .any(|t| t.txn_id == first.id().0),
        "an eager begin writes the record"
    );
    first.abort().await.expect("abort");
    second.abort().await.expect("abort");
    eager_client.close().await;
    stop_all(brokers, cluster).await;
}

/// The next message; waiting longer than 30 s fails the test.
async fn next(consumer: &mut strata_client::Consumer) -> strata_client::ReceivedMessage {
    tokio::time::timeout(Duration::from_secs(30), consumer.receive())
        .await
        .expect("a message within 30 s")
        .expect("receive")
}

/// A consumer of `subscription` that starts at the earliest message if it is new.
async fn subscribe_earliest(
    client: &strata_client::Client,
    topic: &str,
    subscription: &str,
) -> strata_client::Consumer {
    client
        .consumer(topic, subscription)
        .initial_position(strata_client::InitialPosition::Earliest)
        .subscribe()
        .await
        .expect("subscribe")
}

/// Reads `n` messages, as text with the partition they came from.
async fn receive_n(consumer: &mut strata_client::Consumer, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.receive())
            .await
            .expect("a message within 30 s")
            .expect("receive");
        consumer.ack(m.id).await.expect("ack");
        out.push((
            m.topic.to_string(),
            String::from_utf8(m.payload.to_vec()).expect("utf8"),
        ));
    }
    out
}

/// A transaction's messages on three partitions are invisible to a read-committed consumer
/// until the commit (a read-uncommitted one sees them at once), then all arrive; a message
/// written after the transaction's first one on a partition waits behind it, so nothing is
/// reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_makes_every_partition_visible_in_log_order() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let topic = "persistent://public/default/txn-out";
    client
        .create_partitioned_topic(topic, 3)
        .await
        .expect("create");
    let mut committed_reader = subscribe_earliest(&client, topic, "committed").await;
    let mut uncommitted_reader = client
        .consumer(topic, "uncommitted")
        .initial_position(strata_client::InitialPosition::Earliest)
        .read_uncommitted(true)
        .subscribe()
        .await
        .expect("subscribe");
    let producer = client.producer(topic).create().await.expect("producer");
    let txn = client.new_transaction().begin().await.expect("begin");
    for i in 0..30 {
        let message = strata_client::OutgoingMessage {
            payload: format!("txn-{i}").into(),
            key: Some(format!("k{i}")),
            ..Default::default()
        };
        producer.send_in(&txn, message).await.expect("stored");
    }
    // Outside the transaction, after it on every partition.
    for k in 0..6 {
        let message = strata_client::OutgoingMessage {
            payload: format!("plain-{k}").into(),
            key: Some(format!("k{k}")),
            ..Default::default()
        };
        producer.send(message).await.expect("stored");
    }
    let seen = receive_n(&mut uncommitted_reader, 36).await;
    let partitions: std::collections::BTreeSet<&String> = seen.iter().map(|(p, _)| p).collect();
    assert_eq!(
        partitions.len(),
        3,
        "the transaction wrote to all three partitions"
    );
    let early = tokio::time::timeout(Duration::from_millis(300), committed_reader.receive()).await;
    assert!(early.is_err(), "delivered before the commit: {early:?}");
    // Each partition shows the open transaction holding it back.
    let metrics: String = brokers.iter().map(|b| b.service.metrics.render()).collect();
    let open_rows = |metrics: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with(
                    "strata_broker_txn_open{topic=\"persistent://public/default/txn-out-partition-",
                )
            })
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(open_rows(&metrics), ["1", "1", "1"], "{metrics}");
    assert!(
        metrics.contains("strata_broker_txn_stable_lag_seconds{topic=\"persistent://public/default/txn-out-partition-0\"}"),
        "{metrics}"
    );

    txn.commit().await.expect("commit");
    let got = receive_n(&mut committed_reader, 36).await;
    // Delivered, so every partition has applied the decision.
    let metrics: String = brokers.iter().map(|b| b.service.metrics.render()).collect();
    assert_eq!(open_rows(&metrics), ["0", "0", "0"], "{metrics}");
    let mut texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
    texts.sort();
    let mut expected: Vec<String> = (0..30).map(|i| format!("txn-{i}")).collect();
    expected.extend((0..6).map(|k| format!("plain-{k}")));
    expected.sort();
    assert_eq!(
        texts,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    // Per partition, read-committed order is the log order the uncommitted reader saw.
    for p in partitions {
        let log: Vec<&String> = seen
            .iter()
            .filter(|(q, _)| q == p)
            .map(|(_, t)| t)
            .collect();
        let delivered: Vec<&String> = got.iter().filter(|(q, _)| q == p).map(|(_, t)| t).collect();
        assert_eq!(delivered, log, "{p} reordered");
    }
    let info = client.transaction_info(txn.id()).await.expect("info");
    assert_eq!(info.partitions.len(), 3);
    producer.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// An aborted transaction's messages are never delivered; what follows them is. A send after
/// the commit is refused or, if it raced the decision, never delivered. Another client
/// cannot send in the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_and_late_messages_are_never_delivered() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let intruder = client_of_all(&brokers).await;
    let topic = "persistent://public/default/txn-abort";
    let mut reader = subscribe_earliest(&client, topic, "committed").await;
    let producer = client.producer(topic).create().await.expect("producer");

    let aborted = client.new_transaction().begin().await.expect("begin");
    for i in 0..10 {
        producer
            .send_in(&aborted, format!("aborted-{i}"))
            .await
            .expect("stored");
    }
    aborted.abort().await.expect("abort");
    producer.send("marker-1").await.expect("stored");
    assert_eq!(receive_n(&mut reader, 1).await[0].1, "marker-1");

    let committed = client.new_transaction().begin().await.expect("begin");
    producer.send_in(&committed, "kept").await.expect("stored");
    let stranger = intruder.producer(topic).create().await.expect("producer");
    assert_eq!(
        code(stranger.send_in(&committed, "intruding").await),
        Some(ErrorCode::TransactionNotOwner),
        "refused by the client library"
    );
    // And by the broker, for a client that names the transaction anyway.
    let name = strata_proto::TopicName::parse(topic).expect("topic");
    let mut refused = None;
    for b in &brokers {
        if let Ok(t) = b.service.topic(&name, false).await {
            let message = strata_proto::pb::client::Message {
                payload: "intruding".into(),
                ..Default::default()
            };
            let outcome = t
                .publish(
                    t.producer_session(),
                    "raw",
                    1,
                    vec![message],
                    Some(strata_broker::topic::TxnWrite {
                        id: committed.id(),
                        client: "someone-else",
                        start: None,
                    }),
                )
                .await;
            refused = outcome.err().map(|e| e.code());
        }
    }
    assert_eq!(refused, Some(ErrorCode::TransactionNotOwner));
    committed.commit().await.expect("commit");
    match producer.send_in(&committed, "late").await {
        Ok(_) => {} // raced the broker's news of the commit: stored beyond the range
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::TransactionNotOpen), "{e}"),
    }
    producer
        .send("marker-2")
        .await
        .expect("the producer goes on");
    let got: Vec<String> = receive_n(&mut reader, 2)
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(got, ["kept", "marker-2"]);
    stranger.close().await.expect("close");
    producer.close().await.expect("close");
    client.close().await;
    intruder.close().await;
    stop_all(brokers, cluster).await;
}

/// Consume → transform → produce in transactions. An abort shows none of its output and
/// its acknowledged inputs come back; a commit shows all of its output and its acks hold
/// (the subscription has nothing left). A message acknowledged in one open transaction
/// cannot be acknowledged in another, and the failed one aborts on commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_commit_with_the_output_and_come_back_on_abort() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let input = "persistent://public/default/txn-in";
    let output = "persistent://public/default/txn-out-acks";
    let mut worker = subscribe_earliest(&client, input, "workers").await;
    let mut reader = subscribe_earliest(&client, output, "reader").await;
    let producer = client.producer(input).create().await.expect("producer");
    for i in 0..10 {
        producer.send(format!("in-{i}")).await.expect("stored");
    }
    let out = client.producer(output).create().await.expect("producer");

    // An aborted step: its inputs are delivered again, its output never.
    let aborted = client.new_transaction().begin().await.expect("begin");
    for _ in 0..5 {
        let m = next(&mut worker).await;
        let text = String::from_utf8(m.payload.to_vec()).expect("utf8");
        out.send_in(&aborted, format!("out-of-{text}"))
            .await
            .expect("stored");
        worker.ack_in(&aborted, m.id).await.expect("ack in txn");
    }
    aborted.abort().await.expect("abort");

    // The committed steps take every input, the five released ones first again.
    let committed = client.new_transaction().begin().await.expect("begin");
    let mut inputs = Vec::new();
    for _ in 0..10 {
        let m = next(&mut worker).await;
        let text = String::from_utf8(m.payload.to_vec()).expect("utf8");
        out.send_in(&committed, format!("out-of-{text}"))
            .await
            .expect("stored");
        worker.ack_in(&committed, m.id).await.expect("ack in txn");
        inputs.push((text, m.id));
    }
    let mut texts: Vec<&str> = inputs.iter().map(|(t, _)| t.as_str()).collect();
    texts.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("in-{i}")).collect();
    expected.sort();
    assert_eq!(texts, expected, "every input once, the aborted ones again");

    // Another transaction cannot acknowledge what the open one did.
    let rival = client.new_transaction().begin().await.expect("begin");
    let (_, held) = inputs[0];
    assert_eq!(
        code(worker.ack_in(&rival, held).await),
        Some(ErrorCode::TransactionConflict)
    );
    assert_eq!(
        code(rival.commit().await),
        Some(ErrorCode::TransactionConflict),
        "a transaction with a failed ack does not commit"
    );
    assert_eq!(
        client
            .transaction_info(rival.id())
            .await
            .expect("info")
            .state,
        "ABORTED"
    );

    committed.commit().await.expect("commit");
    let got = receive_n(&mut reader, 10).await;
    let mut outs: Vec<String> = got.into_iter().map(|(_, t)| t).collect();
    outs.sort();
    let mut expected_out: Vec<String> = (0..10).map(|i| format!("out-of-in-{i}")).collect();
    expected_out.sort();
    assert_eq!(
        outs, expected_out,
        "the committed output, and nothing of the aborted one"
    );

    // The acks held: the next message the subscription gets is a new one.
    worker.close().await.expect("close");
    let mut again = client
        .consumer(input, "workers")
        .subscribe()
        .await
        .expect("resubscribe");
    producer.send("after").await.expect("stored");
    let m = next(&mut again).await;
    assert_eq!(&m.payload[..], b"after", "committed acks were applied");
    again.close().await.expect("close");
    producer.close().await.expect("close");
    out.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// An ack sent without waiting (`ack_all_in_async`) is part of its transaction all the
/// same: a conflicting one fails the rival's commit, and the commit waits for one nobody
/// awaited, so it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_sent_without_waiting_are_part_of_the_commit() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let input = "persistent://public/default/txn-in-async";
    let producer = client.producer(input).create().await.expect("producer");
    for i in 0..6 {
        producer.send(format!("in-{i}")).await.expect("stored");
    }
    let mut worker = subscribe_earliest(&client, input, "workers").await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(next(&mut worker).await.id);
    }
    let kept = client.new_transaction().begin().await.expect("begin");
    let held = worker
        .ack_all_in_async(&kept, &ids[0..3])
        .await
        .expect("sent");
    held.await.expect("held");

    let rival = client.new_transaction().begin().await.expect("begin");
    let refused = worker
        .ack_all_in_async(&rival, &ids[1..2])
        .await
        .expect("sent");
    assert_eq!(code(refused.await), Some(ErrorCode::TransactionConflict));
    assert_eq!(
        code(rival.commit().await),
        Some(ErrorCode::TransactionConflict),
        "a failed ack, even one sent without waiting, fails the commit"
    );

    // Not awaited by anyone: the commit waits for it.
    drop(
        worker
            .ack_all_in_async(&kept, &ids[3..4])
            .await
            .expect("sent"),
    );
    kept.commit().await.expect("commit");
    worker.close().await.expect("close");
    let mut worker = subscribe_earliest(&client, input, "workers").await;
    let m = next(&mut worker).await;
    assert_eq!(
        &m.payload[..],
        b"in-4",
        "all four committed acks were applied"
    );
    worker.close().await.expect("close");
    producer.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// One metastore write per ack request has a bound: a transactional ack of more messages
/// than one request may hold is split by the client into several requests, all in the
/// transaction, and the commit applies every ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_ack_beyond_one_request_is_split() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let input = "persistent://public/default/txn-in-large";
    let total = strata_proto::MAX_TXN_ACKS_PER_REQUEST + 100;
    let producer = client.producer(input).create().await.expect("producer");
    let mut last = None;
    for i in 0..total {
        last = Some(producer.send_async(format!("{i}")).await.expect("queued"));
    }
    last.expect("sent").await.expect("stored");
    let mut worker = subscribe_earliest(&client, input, "workers").await;
    let mut ids = Vec::with_capacity(total);
    for _ in 0..total {
        ids.push(next(&mut worker).await.id);
    }
    let txn = client.new_transaction().begin().await.expect("begin");
    worker.ack_all_in(&txn, &ids).await.expect("every ack held");
    txn.commit().await.expect("commit");
    worker.close().await.expect("close");

    let mut worker = subscribe_earliest(&client, input, "workers").await;
    producer.send("after").await.expect("stored");
    let m = next(&mut worker).await;
    assert_eq!(
        &m.payload[..],
        b"after",
        "every one of the acks was applied"
    );
    worker.close().await.expect("close");
    producer.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// A plain cumulative ack that covers a message held by an open transaction acknowledges
/// it for good: when that transaction aborts, the message is not delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_cumulative_ack_over_a_held_message_outlives_its_abort() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let input = "persistent://public/default/txn-in-cumulative-plain";
    let producer = client.producer(input).create().await.expect("producer");
    for i in 0..3 {
        producer.send(format!("in-{i}")).await.expect("stored");
    }
    let mut worker = subscribe_earliest(&client, input, "workers").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(next(&mut worker).await.id);
    }
    let txn = client.new_transaction().begin().await.expect("begin");
    worker.ack_in(&txn, ids[1]).await.expect("held");
    worker.ack_cumulative(ids[2]).await.expect("cumulative ack");
    // The ack reaches the broker before the abort does.
    worker.flush_acks().await.expect("acks flushed");
    txn.abort().await.expect("abort");
    producer.send("after").await.expect("stored");
    let m = next(&mut worker).await;
    assert_eq!(
        (&m.payload[..], m.redelivery_count),
        (&b"after"[..], 0),
        "the cumulatively acknowledged message is not delivered again"
    );
    worker.close().await.expect("close");
    producer.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// Pending acks are stored one record per ack write. After a failover (the namespace
/// unloaded) every message of every record is held again, not only the one naming the
/// record: none is delivered while its transaction is open, a rival transaction is refused
/// any of them, an abort delivers its own again, a commit applies them all, and no record is
/// left once both are settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_acks_of_many_messages_are_held_across_a_failover() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let input = "persistent://public/default/txn-in-many";
    let producer = client.producer(input).create().await.expect("producer");
    for i in 0..40 {
        producer.send(format!("in-{i:02}")).await.expect("stored");
    }
    let mut worker = subscribe_earliest(&client, input, "workers").await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(next(&mut worker).await.id);
    }
    let kept = client.new_transaction().begin().await.expect("begin");
    worker.ack_all_in(&kept, &ids[0..20]).await.expect("ack");
    worker.ack_all_in(&kept, &ids[20..25]).await.expect("ack");
    let dropped = client.new_transaction().begin().await.expect("begin");
    worker
        .ack_all_in(&dropped, &ids[25..30])
        .await
        .expect("ack");
    worker.close().await.expect("close");
    client
        .unload_namespace("public/default")
        .await
        .expect("unload");

    // Loaded afresh: only the ten messages no transaction holds are delivered.
    let mut worker = subscribe_earliest(&client, input, "workers").await;
    let texts = |ms: &[strata_client::ReceivedMessage]| -> Vec<String> {
        let mut t: Vec<String> = ms
            .iter()
            .map(|m| String::from_utf8(m.payload.to_vec()).expect("utf8"))
            .collect();
        t.sort();
        t
    };
    let mut free = Vec::new();
    for _ in 0..10 {
        free.push(next(&mut worker).await);
    }
    let expected: Vec<String> = (30..40).map(|i| format!("in-{i:02}")).collect();
    assert_eq!(texts(&free), expected, "held messages are not delivered");

    // A message inside a record (not the one naming it) is held as well.
    let rival = client.new_transaction().begin().await.expect("begin");
    assert_eq!(
        code(worker.ack_in(&rival, ids[22]).await),
        Some(ErrorCode::TransactionConflict)
    );

    dropped.abort().await.expect("abort");
    let mut again = Vec::new();
    for _ in 0..5 {
        again.push(next(&mut worker).await);
    }
    let expected: Vec<String> = (25..30).map(|i| format!("in-{i:02}")).collect();
    assert_eq!(
        texts(&again),
        expected,
        "the aborted acks' messages come back"
    );
    kept.commit().await.expect("commit");
    for m in free.iter().chain(&again) {
        worker.ack(m.id).await.expect("ack");
    }
    worker.close().await.expect("close");

    let mut worker = subscribe_earliest(&client, input, "workers").await;
    producer.send("after").await.expect("stored");
    let m = next(&mut worker).await;
    assert_eq!(&m.payload[..], b"after", "every committed ack was applied");

    let meta = cluster.meta.clone();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !meta.scan("/txn-acks/").await.expect("scan").is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every pending-ack record deleted once settled");
    worker.close().await.expect("close");
    producer.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// Transactions decided while their partition is being loaded are not missed: the load
/// reads their records as open, and the decision reaches the broker before the loaded topic
/// is visible to its watch of decisions. Commits run one after another through the load,
/// so some land in that window; every committed message must still be delivered to a
/// read-committed reader (a missed decision holds the partition's stable position for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_made_while_a_partition_loads_are_not_missed() {
    const TXNS: usize = 200;
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let topic = support::topic_owned_by(&client, &brokers[0].id, "load-race").await;
    let name: strata_proto::TopicName = topic.parse().expect("topic name");
    let producer = client.producer(&topic).create().await.expect("producer");
    let mut txns = Vec::with_capacity(TXNS);
    for i in 0..TXNS {
        let txn = client.new_transaction().begin().await.expect("begin");
        producer
            .send_in(&txn, format!("m-{i:03}"))
            .await
            .expect("stored");
        txns.push(txn);
    }
    producer.close().await.expect("close");
    let owner = &brokers[0].service;
    owner.unload_all().await;

    // The load starts once a quarter of the transactions are committed; the rest are
    // committed while it runs (and after).
    let (quarter_tx, quarter_rx) = tokio::sync::oneshot::channel();
    let committing = tokio::spawn(async move {
        let mut quarter = Some(quarter_tx);
        for (i, txn) in txns.into_iter().enumerate() {
            txn.commit().await.expect("commit");
            if i + 1 == TXNS / 4 {
                let _ = quarter.take().map(|q| q.send(()));
            }
        }
    });
    quarter_rx.await.expect("a quarter committed");
    owner.topic(&name, false).await.expect("loaded");
    committing.await.expect("every transaction committed");

    let mut reader = subscribe_earliest(&client, &topic, "after-load").await;
    for i in 0..TXNS {
        let m = tokio::time::timeout(Duration::from_secs(20), reader.receive())
            .await
            .unwrap_or_else(|_| {
                panic!("only {i} of {TXNS} committed messages delivered: a decision was missed")
            })
            .expect("receive");
        assert_eq!(&m.payload[..], format!("m-{i:03}").as_bytes(), "log order");
    }
    reader.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// Decided transactions are forgotten once every participant has settled them: no record,
/// partition mark, subscription mark, pending ack or decided mark is left, only the aborted
/// one's skipped range. A partition loaded afresh (the namespace unloaded) still skips the
/// aborted messages and delivers the committed ones, from that range alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decided_transactions_are_forgotten_and_their_skipped_ranges_kept() {
    let (_dir, cluster, brokers) = start().await;
    // Records are kept until their deadline (a late write must find the decision): the
    // transactions below time out soon, so that the sweep forgets them within the test.
    let expiry = spawn_expiry_keeping(
        cluster.meta.clone(),
        Duration::from_millis(50),
        Duration::ZERO,
        Duration::ZERO,
    );
    let client = client_of_all(&brokers).await;
    let (input, output) = ("forget-in", "forget-out");
    let feeder = client.producer(input).create().await.expect("producer");
    feeder.send("job").await.expect("stored");
    let mut worker = subscribe_earliest(&client, input, "workers").await;
    let producer = client.producer(output).create().await.expect("producer");

    let short = || client.new_transaction().timeout(Duration::from_secs(3));
    let aborted = short().begin().await.expect("begin");
    for i in 0..5 {
        producer
            .send_in(&aborted, format!("aborted-{i}"))
            .await
            .expect("stored");
    }
    aborted.abort().await.expect("abort");
    let committed = short().begin().await.expect("begin");
    let job = next(&mut worker).await;
    worker.ack_in(&committed, job.id).await.expect("ack in txn");
    for i in 0..2 {
        producer
            .send_in(&committed, format!("committed-{i}"))
            .await
            .expect("stored");
    }
    committed.commit().await.expect("commit");
    producer.send("plain").await.expect("stored");

    let meta = cluster.meta.clone();
    let left = |prefix: &'static str| {
        let meta = meta.clone();
        async move { meta.scan(prefix).await.expect("scan").len() }
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut counts = Vec::new();
            for prefix in [
                "/txns/",
                "/txn-partitions/",
                "/txn-subs/",
                "/txn-acks/",
                "/txn-decided/",
            ] {
                counts.push(left(prefix).await);
            }
            if counts.iter().all(|n| *n == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("both transactions settled and forgotten within 30 s");
    assert_eq!(left("/txn-aborts/").await, 1, "the aborted one's range");
    assert_eq!(
        code(client.transaction_info(committed.id()).await),
        Some(ErrorCode::TransactionNotFound)
    );

    client
        .unload_namespace("public/default")
        .await
        .expect("unload");
    let mut reader = subscribe_earliest(&client, output, "after-reload").await;
    producer.send("end").await.expect("stored");
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("end") {
        let m = next(&mut reader).await;
        got.push(String::from_utf8(m.payload.to_vec()).expect("utf8"));
    }
    assert_eq!(got, ["committed-0", "committed-1", "plain", "end"]);
    // The committed ack held too: the worker's subscription has nothing to give.
    worker.close().await.expect("close");
    let mut again = subscribe_earliest(&client, input, "workers").await;
    feeder.send("next-job").await.expect("stored");
    assert_eq!(&next(&mut again).await.payload[..], b"next-job");

    expiry.abort();
    for closing in [again.close().await, reader.close().await] {
        closing.expect("close");
    }
    producer.close().await.expect("close");
    feeder.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// A committed ack's pending record is deleted only once the durable cursor holds that ack
/// (a crash in between finds the record and applies it again, so the ack is never lost),
/// and in the same metastore write as that cursor: the cursor put's revision is the one
/// right before the deletion's (a write's changes take consecutive revisions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_pending_acks_go_in_the_cursor_write_that_holds_them() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let input = "persistent://public/default/acks-with-cursor";
    let feeder = client.producer(input).create().await.expect("producer");
    feeder.send("job").await.expect("stored");
    let mut worker = subscribe_earliest(&client, input, "workers").await;
    let mut acks = cluster.meta.watch("/txn-acks/", 0).await.expect("watch");

    let txn = client.new_transaction().begin().await.expect("begin");
    let job = next(&mut worker).await;
    worker.ack_in(&txn, job.id).await.expect("ack in txn");
    txn.commit().await.expect("commit");

    let deleted_at = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let event = acks.next().await.expect("watching").expect("event");
            if event.kind == strata_metastore::EventKind::Delete as i32 {
                return event.revision;
            }
        }
    })
    .await
    .expect("the pending ack record is deleted after the commit");
    // Nothing is acknowledged after the commit, so the cursor's last write is the one that
    // holds the committed ack.
    let tables = strata_metastore::tables::Tables::new(cluster.meta.clone());
    let key = strata_metastore::tables::CursorKey::new(input.parse().expect("topic"), "workers");
    let cursor = tables
        .cursors
        .get(&key)
        .await
        .expect("read the cursor")
        .expect("the cursor exists");
    let position = strata_proto::Position {
        ledger: job.id.ledger,
        entry: job.id.entry,
    };
    let record = &cursor.record;
    assert!(
        record.mark_delete.is_some_and(|m| m >= position) || record.acked.contains_key(&position),
        "the durable cursor does not hold the committed ack: {record:?}"
    );
    assert_eq!(
        cursor.mod_revision + 1,
        deleted_at,
        "the record was not deleted in the write that made the cursor hold its ack"
    );

    worker.close().await.expect("close");
    feeder.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// A restarted instance of a named transactional producer fences its zombie at once: the
/// zombie's open transaction is aborted (its held input comes back to the new instance
/// without waiting for the timeout), its commit is refused, it cannot begin again, and only
/// the new instance's output is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_transactional_producer_fences_its_zombie() {
    let (_dir, cluster, brokers) = start().await;
    let (input, output) = ("fence-in", "fence-out");
    let setup = client_of_all(&brokers).await;
    let mut reader = subscribe_earliest(&setup, output, "reader").await;
    let producer = setup.producer(input).create().await.expect("producer");
    producer.send("job").await.expect("stored");

    // The first instance takes the input in a long transaction, then stalls (a zombie).
    let zombie = client_of_all(&brokers).await;
    assert_eq!(zombie.init_transactions("worker-1").await.expect("init"), 1);
    let mut zombie_in = zombie
        .consumer(input, "workers")
        .initial_position(strata_client::InitialPosition::Earliest)
        .subscription_type(strata_client::SubscriptionType::Shared)
        .subscribe()
        .await
        .expect("subscribe");
    let zombie_out = zombie.producer(output).create().await.expect("producer");
    let stalled = zombie
        .new_transaction()
        .timeout(Duration::from_secs(600))
        .begin()
        .await
        .expect("begin");
    let m = next(&mut zombie_in).await;
    zombie_out
        .send_in(&stalled, "zombie-output")
        .await
        .expect("stored");
    zombie_in.ack_in(&stalled, m.id).await.expect("ack in txn");

    // The restarted instance takes the next epoch; the held input comes back to it.
    let restarted = client_of_all(&brokers).await;
    assert_eq!(
        restarted.init_transactions("worker-1").await.expect("init"),
        2
    );
    assert_eq!(
        restarted
            .transaction_info(stalled.id())
            .await
            .expect("info")
            .state,
        "ABORTED"
    );
    let mut fresh_in = restarted
        .consumer(input, "workers")
        .subscription_type(strata_client::SubscriptionType::Shared)
        .subscribe()
        .await
        .expect("subscribe");
    zombie_in.close().await.expect("close");
    let out = restarted.producer(output).create().await.expect("producer");
    let txn = restarted.new_transaction().begin().await.expect("begin");
    let again = next(&mut fresh_in).await;
    assert_eq!(&again.payload[..], b"job", "the zombie's input came back");
    out.send_in(&txn, "restarted-output").await.expect("stored");
    fresh_in.ack_in(&txn, again.id).await.expect("ack in txn");
    txn.commit().await.expect("commit");

    assert_eq!(
        code(stalled.commit().await),
        Some(ErrorCode::TransactionNotOpen)
    );
    assert_eq!(
        code(zombie.new_transaction().begin().await),
        Some(ErrorCode::ProducerFenced)
    );
    let got = receive_n(&mut reader, 1).await;
    // The zombie's output is earlier in the log: had it been delivered, it would be first.
    assert_eq!(
        got[0].1, "restarted-output",
        "nothing of the zombie is delivered"
    );

    for c in [zombie, restarted, setup] {
        c.close().await;
    }
    stop_all(brokers, cluster).await;
}

/// Acks of single messages of a batch (one stored entry) in a transaction: an abort
/// redelivers exactly those messages, a commit applies exactly them, and together with the
/// plain acks of the rest the whole entry is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_index_acks_in_a_transaction() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let topic = "txn-batch-acks";
    let mut consumer = subscribe_earliest(&client, topic, "workers").await;
    let producer = client
        .producer(topic)
        .batch_max_messages(5)
        .batch_max_delay(Duration::from_secs(5))
        .create()
        .await
        .expect("producer");
    let mut sends = Vec::new();
    for i in 0..5 {
        sends.push(producer.send_async(format!("m{i}")).await.expect("queued"));
    }
    for s in sends {
        s.await.expect("stored");
    }
    let mut batch = Vec::new();
    for _ in 0..5 {
        batch.push(next(&mut consumer).await);
    }
    let entry = (batch[0].id.ledger, batch[0].id.entry);
    assert!(
        batch.iter().all(|m| (m.id.ledger, m.id.entry) == entry),
        "one entry: {:?}",
        batch.iter().map(|m| m.id).collect::<Vec<_>>()
    );
    for i in [0, 2, 4] {
        consumer.ack(batch[i].id).await.expect("plain ack");
    }
    let aborted = client.new_transaction().begin().await.expect("begin");
    consumer
        .ack_all_in(&aborted, &[batch[1].id, batch[3].id])
        .await
        .expect("ack in txn");
    aborted.abort().await.expect("abort");
    let mut again = [next(&mut consumer).await, next(&mut consumer).await];
    again.sort_by_key(|m| m.id);
    let texts: Vec<&[u8]> = again.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(texts, [b"m1", b"m3"], "exactly the aborted acks come back");

    let committed = client.new_transaction().begin().await.expect("begin");
    let ids: Vec<_> = again.iter().map(|m| m.id).collect();
    consumer
        .ack_all_in(&committed, &ids)
        .await
        .expect("ack in txn");
    committed.commit().await.expect("commit");
    consumer.close().await.expect("close");

    // The whole entry is acknowledged: a new consumer gets only what comes next.
    let mut fresh = client
        .consumer(topic, "workers")
        .subscribe()
        .await
        .expect("resubscribe");
    let unbatched = client.producer(topic).create().await.expect("producer");
    unbatched.send("after").await.expect("stored");
    assert_eq!(&next(&mut fresh).await.payload[..], b"after");
    fresh.close().await.expect("close");
    for p in [producer, unbatched] {
        p.close().await.expect("close");
    }
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// A cumulative ack in a transaction covers every delivered message up to it: an abort
/// brings them all back, a commit acknowledges them all. A shared subscription refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cumulative_acks_in_a_transaction() {
    let (_dir, cluster, brokers) = start().await;
    let client = client_of_all(&brokers).await;
    let topic = "txn-cumulative";
    let mut consumer = subscribe_earliest(&client, topic, "workers").await;
    let producer = client.producer(topic).create().await.expect("producer");
    for i in 0..5 {
        producer.send(format!("m{i}")).await.expect("stored");
    }
    let first: Vec<_> = receive_texts(&mut consumer, 5).await;
    let aborted = client.new_transaction().begin().await.expect("begin");
    consumer
        .ack_cumulative_in(&aborted, first[3].0)
        .await
        .expect("cumulative ack in txn");
    aborted.abort().await.expect("abort");
    consumer
        .ack(first[4].0)
        .await
        .expect("plain ack of the last");
    let again: Vec<String> = receive_texts(&mut consumer, 4)
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(
        again,
        ["m0", "m1", "m2", "m3"],
        "all four come back, in order"
    );

    let committed = client.new_transaction().begin().await.expect("begin");
    // Redelivered messages keep their ids.
    consumer
        .ack_cumulative_in(&committed, first[3].0)
        .await
        .expect("cumulative ack in txn");
    committed.commit().await.expect("commit");
    consumer.close().await.expect("close");
    let mut fresh = client
        .consumer(topic, "workers")
        .subscribe()
        .await
        .expect("resubscribe");
    producer.send("after").await.expect("stored");
    assert_eq!(
        &next(&mut fresh).await.payload[..],
        b"after",
        "all acknowledged"
    );
    fresh.close().await.expect("close");

    let mut shared = client
        .consumer(topic, "shared")
        .initial_position(strata_client::InitialPosition::Earliest)
        .subscription_type(strata_client::SubscriptionType::Shared)
        .subscribe()
        .await
        .expect("subscribe");
    let m = next(&mut shared).await;
    let txn = client.new_transaction().begin().await.expect("begin");
    assert_eq!(
        code(shared.ack_cumulative_in(&txn, m.id).await),
        Some(ErrorCode::ProtocolViolation)
    );
    shared.close().await.expect("close");
    producer.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// Receives `n` messages without acknowledging them: (id, text).
async fn receive_texts(
    consumer: &mut strata_client::Consumer,
    n: usize,
) -> Vec<(strata_client::MessageId, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = next(consumer).await;
        out.push((m.id, String::from_utf8(m.payload.to_vec()).expect("utf8")));
    }
    out
}
