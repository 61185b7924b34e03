//! Check-back (RocketMQ's local-transaction pattern) through brokers: a producer prepares
//! its transactions and goes away before committing; the coordinator asks a checker of the
//! producer's group, and the checker's answer (from what the "local database" holds)
//! commits or aborts each one. Unprepared transactions are never asked about.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_client::{CheckOutcome, Client, TxnId};
use strata_metastore::txn_coordinator::spawn_expiry;
use support::{client_of_all, start, stop_all};

/// Polls the transaction's state until it is `state` (the checker acts asynchronously).
async fn wait_for_state(client: &Client, id: TxnId, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = client.transaction_info(id).await.expect("info");
        if info.state == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} still {} after 30 s (checks {})",
            info.state,
            info.checks
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_decides_the_prepared_transactions_a_producer_left_open() {
    let (_dir, cluster, brokers) = start().await;
    let expiry = spawn_expiry(cluster.meta.clone(), Duration::from_millis(50));
    let topic = "orders-out";

    // The "local database": transactions whose order row was committed, or rolled back.
    let committed_rows: Arc<Mutex<HashSet<TxnId>>> = Arc::default();
    let rolled_back: Arc<Mutex<HashSet<TxnId>>> = Arc::default();
    let checker_client = client_of_all(&brokers).await;
    let asked: Arc<Mutex<HashSet<TxnId>>> = Arc::default();
    let (rows, gone, asked_by) = (committed_rows.clone(), rolled_back.clone(), asked.clone());
    let _checker = checker_client.register_transaction_checker("orders", move |id| {
        asked_by.lock().expect("lock").insert(id);
        let outcome = if rows.lock().expect("lock").contains(&id) {
            CheckOutcome::Commit
        } else if gone.lock().expect("lock").contains(&id) {
            CheckOutcome::Abort
        } else {
            CheckOutcome::Unknown
        };
        async move { outcome }
    });
    let reader_client = client_of_all(&brokers).await;
    let mut reader = reader_client
        .consumer(topic, "reader")
        .initial_position(strata_client::InitialPosition::Earliest)
        .subscribe()
        .await
        .expect("subscribe");

    // The producer prepares three transactions and goes away without deciding any.
    let producer_client = client_of_all(&brokers).await;
    let producer = producer_client
        .producer(topic)
        .create()
        .await
        .expect("producer");
    let mut ids = Vec::new();
    for (i, prepare) in [(1, true), (2, true), (3, false)] {
        let txn = producer_client
            .new_transaction()
            .timeout(Duration::from_secs(120))
            .check_back("orders", Some(Duration::from_millis(100)))
            .begin()
            .await
            .expect("begin");
        producer
            .send_in(&txn, format!("order-{i}"))
            .await
            .expect("stored");
        if prepare {
            txn.prepare().await.expect("prepare");
            let late = producer.send_in(&txn, "after prepare").await;
            assert_eq!(
                late.err().and_then(|e| e.code()),
                Some(strata_client::ErrorCode::TransactionNotOpen),
                "no sends after prepare: a checker commits the prepared ends"
            );
        }
        ids.push(txn.id());
    }
    committed_rows.lock().expect("lock").insert(ids[0]);
    rolled_back.lock().expect("lock").insert(ids[1]);
    producer.close().await.expect("close");
    producer_client.close().await;

    wait_for_state(&reader_client, ids[0], "COMMITTED").await;
    wait_for_state(&reader_client, ids[1], "ABORTED").await;
    let m = tokio::time::timeout(Duration::from_secs(30), reader.receive())
        .await
        .expect("the committed order arrives")
        .expect("receive");
    assert_eq!(&m.payload[..], b"order-1");
    reader.ack(m.id).await.expect("ack");

    let unprepared = reader_client.transaction_info(ids[2]).await.expect("info");
    assert_eq!(unprepared.state, "OPEN", "an unprepared one is not decided");
    assert_eq!(unprepared.checks, 0, "nor asked about");
    assert!(!asked.lock().expect("lock").contains(&ids[2]));
    assert!(!unprepared.prepared);
    let info = reader_client.transaction_info(ids[0]).await.expect("info");
    assert!(info.prepared && info.checks >= 1 && info.group == "orders");

    // Nothing of the aborted or the still-open transaction is delivered: the next message
    // after they are decided is a plain one written after them.
    reader_client
        .abort_transaction(ids[2])
        .await
        .expect("operator abort");
    let plain = reader_client
        .producer(topic)
        .create()
        .await
        .expect("producer");
    plain.send("after").await.expect("stored");
    let m = tokio::time::timeout(Duration::from_secs(30), reader.receive())
        .await
        .expect("the plain message arrives")
        .expect("receive");
    assert_eq!(&m.payload[..], b"after");

    expiry.abort();
    plain.close().await.expect("close");
    reader.close().await.expect("close");
    for c in [reader_client, checker_client] {
        c.close().await;
    }
    stop_all(brokers, cluster).await;
}
