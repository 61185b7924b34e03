//! Multi-process: `strata cluster metastore add | promote | status | remove` against three
//! `strata metastore` voters and a fourth started with `--join`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{STRATA, free_udp_ports, strata};

/// A `strata metastore` process, killed when dropped (also when a test fails).
struct Node {
    child: Child,
    rpc: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts node `id`; `members` is its `--initial-members`, or `None` for `--join`.
fn start_node(id: u64, dir: &std::path::Path, rpc: &str, members: Option<&str>) -> Node {
    let mut cmd = Command::new(STRATA);
    cmd.args([
        "metastore",
        "--node-id",
        &id.to_string(),
        "--listen",
        rpc,
        "--http",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir.join(format!("n{id}")));
    match members {
        Some(m) => cmd.args(["--initial-members", m]),
        None => cmd.arg("--join"),
    };
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata metastore");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(", HTTP on ") {
                let _ = tx.send(());
            }
        }
    });
    let node = Node {
        child,
        rpc: rpc.to_owned(),
    };
    rx.recv_timeout(Duration::from_secs(60))
        .expect("node printed its addresses");
    node
}

fn status_json(addrs: &str) -> Option<Value> {
    let (ok, out, _) = strata(&[
        "cluster",
        "metastore",
        "status",
        "--output",
        "json",
        "--metastore",
        addrs,
    ]);
    if !ok {
        return None;
    }
    serde_json::from_str(&out).ok()
}

/// Ids of the members whose role is one of `roles`, sorted.
fn ids_with_role(status: &Value, roles: &[&str]) -> Vec<u64> {
    let mut ids: Vec<u64> = status["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter(|m| m["role"].as_str().is_some_and(|r| roles.contains(&r)))
                .filter_map(|m| m["node_id"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// Polls `status --output json` (deadline 20 s) until `done` holds; returns that status.
fn status_until(addrs: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(s) = status_json(addrs) {
            if done(&s) {
                return s;
            }
            last = Some(s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} within 20 s; last status: {last:?}");
}

/// A node started with `--join` is added, catches up and is promoted with the CLI, after
/// which status (JSON) shows four voters with lag 0; removing a voter leaves three, and the
/// removed node then refuses a write with "not a member".
#[test]
fn cli_adds_promotes_and_removes_a_metastore_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rpcs: Vec<String> = free_udp_ports(4)
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let members = (0..3)
        .map(|i| format!("{}={}", i + 1, rpcs[i]))
        .collect::<Vec<_>>()
        .join(",");
    let _voters: Vec<Node> = (0..3)
        .map(|i| start_node(i as u64 + 1, dir.path(), &rpcs[i], Some(&members)))
        .collect();
    let first3 = rpcs[..3].join(",");
    let all4 = rpcs.join(",");
    for i in 0..20 {
        let (ok, out, err) = strata(&[
            "meta",
            "--metastore",
            &first3,
            "put",
            &format!("/k/{i:02}"),
            "v",
        ]);
        assert!(ok, "put: {out}{err}");
    }

    let node4 = start_node(4, dir.path(), &rpcs[3], None);
    let (ok, out, err) = strata(&[
        "cluster",
        "metastore",
        "add",
        "--node-id",
        "4",
        "--addr",
        &node4.rpc,
        "--metastore",
        &first3,
    ]);
    assert!(ok, "add: {out}{err}");
    assert!(out.contains("learners 4"), "{out}");
    // `add` returned once it caught up; status lists it as a learner.
    let status = status_json(&first3).expect("status");
    assert_eq!(ids_with_role(&status, &["learner"]), vec![4]);

    let (ok, out, err) = strata(&[
        "cluster",
        "metastore",
        "promote",
        "--node-id",
        "4",
        "--metastore",
        &node4.rpc,
    ]);
    assert!(ok, "promote: {out}{err}");
    let status = status_until(&all4, "four voters, lag 0", |s| {
        ids_with_role(s, &["leader", "voter"]) == vec![1, 2, 3, 4]
            && s["members"]
                .as_array()
                .is_some_and(|ms| ms.iter().all(|m| m["lag"].as_u64() == Some(0)))
    });
    let leader = status["leader"].as_u64().expect("leader id");

    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    let victim_rpc = &rpcs[victim as usize - 1];
    let (ok, out, err) = strata(&[
        "cluster",
        "metastore",
        "remove",
        "--node-id",
        &victim.to_string(),
        "--metastore",
        &all4,
    ]);
    assert!(ok, "remove: {out}{err}");
    let rest: Vec<u64> = (1..=4).filter(|id| *id != victim).collect();
    let status = status_json(&node4.rpc).expect("status after remove");
    assert_eq!(ids_with_role(&status, &["leader", "voter"]), rest);

    let started = Instant::now();
    let (ok, out, err) = strata(&["meta", "--metastore", victim_rpc, "put", "/k/00", "x"]);
    assert!(!ok, "the removed node accepted a write: {out}");
    assert!(err.contains("not a member"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let (ok, out, err) = strata(&["meta", "--metastore", &node4.rpc, "get", "/k/19"]);
    assert!(ok && out.trim() == "v", "read via node 4: {out}{err}");
}
