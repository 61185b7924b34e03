//! Multi-process: a `strata metastore`, three `strata bookie` and two `strata broker`
//! processes. Messages produced through one broker are consumed through the other
//! (lookups redirect to the owner); after the owner is killed with SIGKILL, the survivor
//! takes its bundles over once the session expires and serves every acknowledged message.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proc, STRATA, free_udp_ports, start_bookies, strata};

fn start(dir: &std::path::Path, args: &[&str], data: &str) -> Proc {
    let mut cmd = Command::new(STRATA);
    cmd.args(args).arg("--data-dir").arg(dir.join(data));
    Proc::spawn(cmd, ", HTTP on ", Duration::from_secs(60))
}

fn strata_at(url: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--url", url];
    all.extend_from_slice(args);
    strata(&all)
}

#[test]
fn messages_survive_sigkill_of_the_owning_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = free_udp_ports(6);
    let metastore = format!("127.0.0.1:{}", ports[0]);
    let _meta = start(
        dir.path(),
        &[
            "metastore",
            "--node-id",
            "1",
            "--listen",
            &metastore,
            "--http",
            "127.0.0.1:0",
            "--initial-members",
            &format!("1={metastore}"),
        ],
        "meta",
    );
    let _bookies: Vec<Proc> = start_bookies(dir.path(), &ports[1..4], &metastore);
    let brokers: Vec<String> = ports[4..6]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut procs: Vec<Proc> = brokers
        .iter()
        .enumerate()
        .map(|(i, listen)| {
            start(
                dir.path(),
                &[
                    "broker",
                    "--listen",
                    listen,
                    "--http",
                    "127.0.0.1:0",
                    "--metastore",
                    &metastore,
                    "--session-ttl-secs",
                    "2",
                ],
                &format!("broker-{i}"),
            )
        })
        .collect();
    let url = |i: usize| format!("quic://{}", brokers[i]);

    // Produce through broker 0 and consume through broker 1, whoever owns the topics.
    let topics: Vec<String> = (0..4).map(|i| format!("failover-{i}")).collect();
    for t in &topics {
        let (ok, _, err) = strata_at(&url(0), &["produce", t, "-m", "before", "-n", "20"]);
        assert!(ok, "produce {t}: {err}");
    }
    for t in &topics {
        let (ok, out, err) = strata_at(&url(1), &["consume", t, "-s", "check", "-n", "20"]);
        assert!(ok, "consume {t}: {err}");
        assert_eq!(
            out.lines().filter(|l| *l == "before").count(),
            20,
            "{t}: {out}"
        );
    }

    // Kill the broker that owns the first topic; the other one serves it after the
    // session TTL, with every message.
    let owner_addr = {
        // Any broker answers a lookup ("<id> <address>"); ask through broker 1.
        let (ok, out, err) = strata_at(&url(1), &["topics", "lookup", &topics[0]]);
        assert!(ok, "lookup: {err}");
        out.split_whitespace().last().unwrap_or_default().to_owned()
    };
    let victim = brokers
        .iter()
        .position(|b| *b == owner_addr)
        .expect("owner is a broker");
    let survivor = 1 - victim;
    procs[victim].kill();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, _) = strata_at(
            &url(survivor),
            &["consume", &topics[0], "-s", "after-kill", "-n", "20"],
        );
        if ok {
            assert_eq!(out.lines().filter(|l| *l == "before").count(), 20, "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor never served the topic"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (ok, _, err) = strata_at(&url(survivor), &["produce", &topics[0], "-m", "after"]);
    assert!(ok, "produce after failover: {err}");
}
