//! Multi-process: one `strata metastore` and four `strata bookie` processes. A bookie of a
//! ledger's ensemble is killed with SIGKILL under a continuous write stream; the writer sees
//! no error, recovery fences it and keeps every acknowledged entry, and the bookies'
//! re-replication restores Qw copies (seen through `strata ledgers show` and
//! `strata cluster bookies`).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Proc, STRATA, free_udp_ports, strata};
use serde_json::Value;
use strata_bookie::{
    BookieClient, BookieClientOptions, LedgerClient, LedgerClientOptions, LedgerConfig,
    LedgerError, NetworkBookies,
};
use strata_metastore::MetaClient;
use strata_proto::EntryId;

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("entry {i:06} ").repeat(16))
}

fn start_metastore(dir: &std::path::Path, rpc: &str) -> Proc {
    let mut cmd = Command::new(STRATA);
    cmd.args([
        "metastore",
        "--node-id",
        "1",
        "--listen",
        rpc,
        "--http",
        "127.0.0.1:0",
    ])
    .args(["--initial-members", &format!("1={rpc}"), "--data-dir"])
    .arg(dir.join("meta"));
    Proc::spawn(cmd, ", HTTP on ", Duration::from_secs(60))
}

fn start_bookie(dir: &std::path::Path, i: usize, listen: &str, metastore: &str) -> Proc {
    let mut cmd = Command::new(STRATA);
    cmd.args(["bookie", "--listen", listen, "--http", "127.0.0.1:0"])
        .args(["--metastore", metastore, "--registration-ttl-secs", "2"])
        .args([
            "--lost-bookie-delay-secs",
            "2",
            "--audit-interval-secs",
            "1",
        ])
        .args(["--min-free-bytes", "0", "--min-free-percent", "0"])
        .arg("--data-dir")
        .arg(dir.join(format!("bookie-{i}")));
    Proc::spawn(cmd, ", HTTP on ", Duration::from_secs(60))
}

fn ledger_json(metastore: &str, id: u64) -> Value {
    let (ok, out, err) = strata(&[
        "ledgers",
        "show",
        &id.to_string(),
        "--metastore",
        metastore,
        "--output",
        "json",
    ]);
    assert!(ok, "strata ledgers show failed: {err}");
    serde_json::from_str(&out).expect("json")
}

fn names(md: &Value, bookie: &str) -> bool {
    md["fragments"]
        .as_array()
        .expect("fragments")
        .iter()
        .any(|f| {
            f["bookies"]
                .as_array()
                .expect("bookies")
                .iter()
                .any(|b| b == bookie)
        })
}

#[test]
fn sigkill_of_a_bookie_under_writes_loses_nothing_and_is_re_replicated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = free_udp_ports(5);
    let metastore = format!("127.0.0.1:{}", ports[0]);
    let _meta = start_metastore(dir.path(), &metastore);
    let addrs: Vec<String> = ports[1..]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut bookies: Vec<Proc> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| start_bookie(dir.path(), i, a, &metastore))
        .collect();

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let meta = MetaClient::new(vec![metastore.clone()], None, Duration::from_secs(10))
            .expect("meta client");
        let client = |timeout| {
            let bookie_client = BookieClient::new(BookieClientOptions {
                request_timeout: timeout,
                connect_timeout: Duration::from_secs(1),
                ..BookieClientOptions::default()
            });
            LedgerClient::new(
                meta.clone(),
                Arc::new(NetworkBookies::new(bookie_client, meta.clone())),
                LedgerClientOptions {
                    ensemble_retry_delay: Duration::from_millis(200),
                    ..LedgerClientOptions::default()
                },
            )
        };
        // Every bookie registered.
        let deadline = Instant::now() + Duration::from_secs(60);
        while strata_bookie::registration::list_bookies(&meta)
            .await
            .map_or(0, |b| b.len())
            < 4
        {
            assert!(Instant::now() < deadline, "bookies did not register");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let writer_client = client(Duration::from_secs(2));
        let writer = Arc::new(
            writer_client
                .create_ledger(LedgerConfig::replicated())
                .await
                .expect("create"),
        );
        let id = writer.id();
        let victim = writer.metadata().fragments[0].bookies[2].clone();
        // Adds with up to 64 in flight until told to stop.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stream = {
            let (writer, stop) = (writer.clone(), stop.clone());
            tokio::spawn(async move {
                let mut window = std::collections::VecDeque::new();
                let mut acked = Vec::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    window.push_back(writer.add(payload(i)));
                    i += 1;
                    if window.len() >= 64 {
                        let add = window.pop_front().expect("in window");
                        acked.push(add.await.expect("no add fails"));
                    }
                }
                for add in window {
                    acked.push(add.await.expect("no add fails"));
                }
                acked
            })
        };
        while writer.last_add_confirmed() < Some(EntryId(500)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let index = addrs.iter().position(|a| *a == victim).expect("victim");
        bookies[index].kill();
        // Keep writing until the writer has replaced the killed bookie.
        let deadline = Instant::now() + Duration::from_secs(60);
        while writer.metadata().fragments.len() < 2 {
            assert!(Instant::now() < deadline, "no ensemble change");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = writer.last_add_confirmed().expect("acked");
        while writer.last_add_confirmed() < Some(EntryId(before.0 + 500)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        let acked = stream.await.expect("stream");
        assert!(acked.windows(2).all(|w| w[1].0 == w[0].0 + 1));
        let last_acked = *acked.last().expect("acked");
        let last_fragment = writer
            .metadata()
            .fragments
            .last()
            .cloned()
            .expect("fragment");
        assert!(!last_fragment.bookies.contains(&victim));

        // Recovery from another client, with the writer still alive: it is fenced, and the
        // ledger closes at or after its last acknowledged entry.
        let recovered = client(Duration::from_secs(2))
            .recover(id)
            .await
            .expect("recover");
        assert!(recovered.last_entry >= Some(last_acked));
        assert!(matches!(
            writer.add(payload(0)).await,
            Err(LedgerError::Fenced(_))
        ));

        // Re-replication: the killed bookie disappears from the metadata and no mark is
        // left; `strata ledgers show` reports the progress on the way.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let md = ledger_json(&metastore, id.0);
            if !names(&md, &victim) && md["re_replication"].is_null() {
                break;
            }
            assert!(Instant::now() < deadline, "not re-replicated: {md}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (ok, out, err) = strata(&["cluster", "bookies", "--metastore", &metastore]);
        assert!(ok, "{err}");
        assert!(out.starts_with("3 bookie(s) registered"), "{out}");
        assert!(out.contains("under-replicated ledgers: none"), "{out}");

        // Every entry reads back from the copies, with the killed bookie still gone.
        let reader = client(Duration::from_secs(2))
            .open_ledger(id)
            .await
            .expect("open");
        let entries = reader.read(EntryId(0), last_acked).await.expect("read");
        assert_eq!(entries.len() as u64, last_acked.0 + 1);
        for (e, data) in entries {
            assert_eq!(data, payload(e.0), "entry {e}");
        }
    });
}
