//! Multi-process, the failover test: three `strata metastore` voters, three
//! `strata bookie` and three `strata broker` processes. A named producer sends numbered
//! messages without pause and an exclusive consumer acknowledges cumulatively; the broker
//! owning the topic is killed with SIGKILL in the middle. Checked:
//!
//! - the topic is served again (a send after the kill is acknowledged) within the session
//!   TTL plus a margin for fencing, recovery and the client's backoff;
//! - every acknowledged message reaches the consumer, and it receives none twice;
//! - the log holds every number once: the resends after the failover were deduplicated.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Proc, STRATA, free_udp_ports, start_bookies};
use strata_client::{Client, ClientOptions, InitialPosition, SubscriptionType};

const SESSION_TTL_SECS: u64 = 2;
/// Fencing and recovering the topic's last ledger, the client's reconnect backoff, and a
/// slow CI machine.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(20);

fn start(dir: &std::path::Path, args: &[&str], data: &str) -> Proc {
    let mut cmd = Command::new(STRATA);
    cmd.args(args).arg("--data-dir").arg(dir.join(data));
    Proc::spawn(cmd, ", HTTP on ", Duration::from_secs(120))
}

struct Cluster {
    _dir: tempfile::TempDir,
    _metastores: Vec<Proc>,
    _bookies: Vec<Proc>,
    brokers: Vec<(String, Proc)>,
}

fn start_cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = free_udp_ports(9);
    let meta: Vec<String> = ports[0..3]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let members = meta
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let metastore = meta.join(",");
    // The voters start together: each waits for a quorum before it prints its addresses.
    let metastores: Vec<Proc> = std::thread::scope(|s| {
        let handles: Vec<_> = meta
            .iter()
            .enumerate()
            .map(|(i, listen)| {
                let (dir, members) = (dir.path(), &members);
                s.spawn(move || {
                    let id = (i + 1).to_string();
                    start(
                        dir,
                        &[
                            "metastore",
                            "--node-id",
                            &id,
                            "--listen",
                            listen,
                            "--http",
                            "127.0.0.1:0",
                            "--initial-members",
                            members,
                        ],
                        &format!("meta-{id}"),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("metastore"))
            .collect()
    });
    let bookies = start_bookies(dir.path(), &ports[3..6], &metastore);
    let ttl = SESSION_TTL_SECS.to_string();
    let brokers = (0..3)
        .map(|i| {
            let listen = format!("127.0.0.1:{}", ports[6 + i]);
            let proc = start(
                dir.path(),
                &[
                    "broker",
                    "--listen",
                    &listen,
                    "--http",
                    "127.0.0.1:0",
                    "--metastore",
                    &metastore,
                    "--session-ttl-secs",
                    &ttl,
                ],
                &format!("broker-{i}"),
            );
            (listen, proc)
        })
        .collect();
    Cluster {
        _dir: dir,
        _metastores: metastores,
        _bookies: bookies,
        brokers,
    }
}

fn number(payload: &[u8]) -> u64 {
    std::str::from_utf8(payload)
        .expect("utf8")
        .parse()
        .expect("number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_sigkill_under_load_loses_and_duplicates_nothing() {
    let mut cluster = tokio::task::spawn_blocking(start_cluster)
        .await
        .expect("cluster");
    let hosts: Vec<&str> = cluster.brokers.iter().map(|(a, _)| a.as_str()).collect();
    let client = Client::connect(ClientOptions {
        url: format!("quic://{}", hosts.join(",")),
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    })
    .await
    .expect("connect");
    let topic = "persistent://public/default/kill-under-load";

    let mut consumer = client
        .consumer(topic, "exclusive")
        .subscription_type(SubscriptionType::Exclusive)
        .initial_position(InitialPosition::Earliest)
        .reconnect_timeout(Duration::from_secs(90))
        .subscribe()
        .await
        .expect("subscribe");
    let producer = client
        .producer(topic)
        .name("load")
        .batch_max_messages(20)
        .send_timeout(Duration::from_secs(90))
        .create()
        .await
        .expect("producer");

    // The producer: numbered sends, one after the other, until told to stop; `acked` is the
    // count of numbers acknowledged (0..acked all are).
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producing = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                producer
                    .send(n.to_string())
                    .await
                    .expect("send acknowledged");
                n += 1;
                acked.store(n, Ordering::Release);
            }
            producer.close().await.expect("close producer");
            n
        })
    };
    // The consumer: every message received, in order, acknowledged cumulatively.
    let (received_tx, mut received_rx) = tokio::sync::mpsc::unbounded_channel();
    let consuming = tokio::spawn(async move {
        loop {
            let m = consumer.receive().await.expect("receive");
            consumer.ack_cumulative(m.id).await.expect("ack");
            if received_tx.send(number(&m.payload)).is_err() {
                break;
            }
        }
    });
    let wait_acked = |at_least: u64| {
        let acked = acked.clone();
        async move {
            while acked.load(Ordering::Acquire) < at_least {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    wait_acked(300).await;
    let owner = client.lookup(topic).await.expect("lookup").address;
    let victim = cluster
        .brokers
        .iter()
        .position(|(a, _)| *a == owner)
        .expect("the owner is one of ours");
    let killed = Instant::now();
    cluster.brokers[victim].1.kill(); // returns once the process is reaped
    let at_kill = acked.load(Ordering::Acquire);
    // Served again: a message sent after the kill is acknowledged.
    tokio::time::timeout(
        Duration::from_secs(SESSION_TTL_SECS) + TAKEOVER_MARGIN,
        wait_acked(at_kill + 2),
    )
    .await
    .expect("the topic was not served again within the session TTL plus the margin");
    let takeover = killed.elapsed();
    let resumed = acked.load(Ordering::Acquire);
    wait_acked(resumed + 300).await;
    stop.store(true, Ordering::Release);
    let sent = producing.await.expect("producer task");

    // Every acknowledged number arrives, none twice, in order.
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while received.len() < sent as usize {
            received.push(received_rx.recv().await.expect("consumer running"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {sent} messages arrived", received.len()));
    assert_eq!(
        received,
        (0..sent).collect::<Vec<_>>(),
        "the exclusive consumer must see every number once, in order"
    );
    drop(received_rx);
    consuming.abort();

    // The log itself holds each number once: read it all on a new subscription.
    let mut audit = client
        .consumer(topic, "audit")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await
        .expect("audit");
    // Resends happen right after the failover, mid-stream, so any duplicate would come
    // before the last number, which nothing was sent after.
    let mut stored = BTreeSet::new();
    loop {
        let n = number(&audit.receive().await.expect("receive").payload);
        assert!(
            stored.insert(n),
            "{n} is stored twice: a resend was not deduplicated"
        );
        if n == sent - 1 {
            break;
        }
    }
    assert_eq!(stored.len() as u64, sent, "numbers missing from the log");
    eprintln!(
        "{sent} messages; served again {takeover:?} after the kill (session TTL {SESSION_TTL_SECS} s)"
    );
    client.close().await;
}
