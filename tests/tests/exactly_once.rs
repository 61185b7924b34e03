//! Exactly-once consume → transform → produce under worker crashes.
//!
//! 100,000 numbered inputs; two transform workers, each a separate process (this test
//! binary re-run as `transform_worker`) that takes a batch, writes one output per input and
//! acknowledges the batch in one transaction. Six times (each worker three times), at points
//! spread over the run, the test kills a worker with SIGKILL and restarts it under the same
//! transactional name, so the new instance fences the old one's open transaction. Once it
//! freezes the worker with SIGSTOP instead and wakes it after its replacement has run for a
//! while: that zombie must find itself fenced and stop.
//! When the output has every number, the workers are killed for good, anything still open
//! is aborted, and a marker is written after it all; the committed output read up to the
//! marker must hold every number exactly once.

mod support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use strata_client::{Client, ClientOptions, InitialPosition, SubscriptionType};
use strata_metastore::txn_coordinator::spawn_expiry;
use support::{client_of_all, start, stop_all};
use tokio::process::{Child, Command};

const INPUT: &str = "eo-input";
const OUTPUT: &str = "eo-output";
const INPUTS: u64 = 100_000;
const END: &str = "end";

/// Starts worker `name` as a child process connected to `url`.
fn spawn_worker(url: &str, name: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["transform_worker", "--exact", "--ignored", "--nocapture"])
        .env("STRATA_EO_URL", url)
        .env("STRATA_EO_NAME", name)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn worker")
}

/// Sends SIGSTOP or SIGCONT.
fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -{name} {pid}");
}

async fn kill(child: &mut Child) {
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
}

/// Every committed output number must appear exactly once, and all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_is_transformed_exactly_once_while_workers_are_killed() {
    let (_dir, cluster, brokers) = start().await;
    let expiry = spawn_expiry(cluster.meta.clone(), Duration::from_millis(200));
    let client = client_of_all(&brokers).await;
    let hosts: Vec<&str> = brokers.iter().map(|b| b.address.as_str()).collect();
    let url = format!("quic://{}", hosts.join(","));

    // The reader's subscription exists before any output, so it sees all of it.
    let mut reader = client
        .consumer(OUTPUT, "check")
        .initial_position(InitialPosition::Earliest)
        .receiver_queue_size(5000)
        .subscribe()
        .await
        .expect("subscribe");
    let input = client
        .producer(INPUT)
        .batch_max_messages(500)
        .create()
        .await
        .expect("producer");
    let mut last = None;
    for n in 0..INPUTS {
        last = Some(input.send_async(n.to_string()).await.expect("queued"));
    }
    last.expect("sent").await.expect("all inputs stored");

    let names = ["worker-a", "worker-b"];
    let mut workers: Vec<Child> = names.iter().map(|n| spawn_worker(&url, n)).collect();

    // Kill a worker each time the output passes the next eighth of the inputs.
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut received = 0u64;
    let mut kills = 0usize;
    let mut zombie: Option<Child> = None;
    while (seen.len() as u64) < INPUTS {
        let m = tokio::time::timeout(Duration::from_secs(120), reader.receive())
            .await
            .unwrap_or_else(|_| panic!("stalled at {} of {INPUTS} numbers", seen.len()))
            .expect("receive");
        reader.ack(m.id).await.expect("ack");
        let n: u64 = std::str::from_utf8(&m.payload)
            .expect("utf8")
            .parse()
            .expect("a number");
        *seen.entry(n).or_default() += 1;
        received += 1;
        if kills < 6 && seen.len() as u64 >= (kills as u64 + 1) * INPUTS / 8 {
            let w = kills % 2;
            if let Some(mut z) = zombie.take() {
                // The frozen instance wakes up behind its replacement: fenced, it must stop
                // (its transaction was aborted, its next begin is refused).
                signal(&z, "CONT");
                let status = tokio::time::timeout(Duration::from_secs(60), z.wait())
                    .await
                    .expect("the zombie stops once fenced")
                    .expect("reaped");
                assert!(status.success(), "the zombie exits cleanly: {status}");
            }
            if kills == 2 {
                // Freeze instead of kill: a zombie that still holds its connection.
                signal(&workers[w], "STOP");
                zombie = Some(std::mem::replace(
                    &mut workers[w],
                    spawn_worker(&url, names[w]),
                ));
            } else {
                kill(&mut workers[w]).await;
                workers[w] = spawn_worker(&url, names[w]);
            }
            kills += 1;
        }
    }
    assert_eq!(kills, 6, "each worker was killed (or frozen) three times");
    assert!(zombie.is_none(), "the zombie was woken and stopped");
    for w in &mut workers {
        kill(w).await;
    }

    // Decide what the last instances left open, then mark the end of the output.
    for t in client.list_transactions(true).await.expect("list") {
        client
            .abort_transaction(strata_client::TxnId(t.txn_id))
            .await
            .expect("operator abort");
    }
    let marker = client.producer(OUTPUT).create().await.expect("producer");
    marker.send(END).await.expect("end marker stored");
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), reader.receive())
            .await
            .expect("the end marker arrives")
            .expect("receive");
        reader.ack(m.id).await.expect("ack");
        if &m.payload[..] == END.as_bytes() {
            break;
        }
        let n: u64 = std::str::from_utf8(&m.payload)
            .expect("utf8")
            .parse()
            .expect("a number");
        *seen.entry(n).or_default() += 1;
        received += 1;
    }

    let mut states: HashMap<String, usize> = HashMap::new();
    for t in client.list_transactions(false).await.expect("list") {
        *states.entry(t.state).or_default() += 1;
    }
    eprintln!("{received} outputs; transactions by state: {states:?}");

    let duplicated: Vec<(&u64, &u32)> = seen.iter().filter(|(_, c)| **c > 1).take(10).collect();
    assert!(duplicated.is_empty(), "delivered twice: {duplicated:?}");
    assert_eq!(received, INPUTS, "every number once, nothing else");
    assert!((0..INPUTS).all(|n| seen.contains_key(&n)));

    expiry.abort();
    for c in [input, marker] {
        c.close().await.expect("close");
    }
    reader.close().await.expect("close");
    client.close().await;
    stop_all(brokers, cluster).await;
}

/// The transform worker: not a test of its own; the test above runs this binary with
/// `transform_worker --exact --ignored` to start one as a process it can kill.
#[test]
#[ignore = "the worker process of every_input_is_transformed_exactly_once_while_workers_are_killed"]
fn transform_worker() {
    let (Ok(url), Ok(name)) = (
        std::env::var("STRATA_EO_URL"),
        std::env::var("STRATA_EO_NAME"),
    ) else {
        panic!("started without STRATA_EO_URL and STRATA_EO_NAME");
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(transform(url, name));
}

/// Runs until killed: one transaction per batch of inputs, the outputs and the input acks
/// together. A failed step is aborted and its inputs handed back.
async fn transform(url: String, name: String) {
    let client = Client::connect(ClientOptions {
        url,
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    })
    .await
    .expect("connect");
    // A new epoch: the previous instance's open transaction is aborted, its inputs freed.
    client.init_transactions(&name).await.expect("init");
    let mut input = client
        .consumer(INPUT, "transform")
        .subscription_type(SubscriptionType::Shared)
        .initial_position(InitialPosition::Earliest)
        .receiver_queue_size(1000)
        .subscribe()
        .await
        .expect("subscribe");
    let output = client
        .producer(OUTPUT)
        .batch_max_messages(500)
        .create()
        .await
        .expect("producer");
    loop {
        let batch = match input.receive_up_to(200).await {
            Ok(b) => b,
            Err(e) => {
                // The session is being replaced (a broker failover): wait, then go on.
                eprintln!("{name}: receive: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ids: Vec<_> = batch.iter().map(|m| m.id).collect();
        let begun = client
            .new_transaction()
            .timeout(Duration::from_secs(30))
            .begin()
            .await;
        if let Err(e) = &begun
            && e.code() == Some(strata_client::ErrorCode::ProducerFenced)
        {
            // A newer instance took over: this one is a zombie and stops (as a Kafka
            // producer must on ProducerFenced).
            eprintln!("{name}: fenced, stopping");
            return;
        }
        let step = match begun {
            Ok(txn) => {
                let outcome = async {
                    for m in &batch {
                        // The transform: the number itself, in another topic.
                        drop(output.send_async_in(&txn, m.payload.clone()).await?);
                    }
                    input.ack_all_in(&txn, &ids).await?;
                    txn.commit().await
                }
                .await;
                if outcome.is_err() {
                    let _ = txn.abort().await;
                }
                outcome
            }
            Err(e) => Err(e),
        };
        if let Err(e) = step {
            eprintln!("{name}: step failed, inputs handed back: {e}");
            for id in &ids {
                let _ = input.nack(*id).await;
            }
        }
    }
}
