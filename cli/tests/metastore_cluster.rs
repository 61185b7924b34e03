//! Multi-process: three `strata metastore` voters; the leader is killed with SIGKILL in the
//! middle of a stream of writes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{STRATA, free_udp_ports};

struct Node {
    child: Child,
    rpc: String,
    http: String,
}

fn start_node(id: u64, dir: &std::path::Path, rpc: &str, members: &str) -> Node {
    let mut child = Command::new(STRATA)
        .args([
            "metastore",
            "--node-id",
            &id.to_string(),
            "--listen",
            rpc,
            "--http",
            "127.0.0.1:0",
            "--initial-members",
            members,
            "--data-dir",
        ])
        .arg(dir.join(format!("n{id}")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata metastore");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some((_, http)) = line.split_once(", HTTP on ") {
                let _ = tx.send(http.to_owned());
            }
        }
    });
    let http = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("node printed its addresses");
    Node {
        child,
        rpc: rpc.to_owned(),
        http,
    }
}

fn metric(http: &str, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect(http).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// Waits (deadline 60 s) until exactly one of `nodes` reports itself leader; returns its index.
fn leader_of(nodes: &[&Node]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leaders: Vec<usize> = (0..nodes.len())
            .filter(|i| metric(&nodes[*i].http, "strata_metastore_is_leader ") == Some(1))
            .collect();
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(Instant::now() < deadline, "no single leader within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn meta(addrs: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(STRATA)
        .args(["--connect-timeout-secs", "20", "meta", "--metastore", addrs])
        .args(args)
        .output()
        .expect("run strata meta");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Every write acknowledged to a client, before or after the leader is SIGKILLed mid-stream,
/// is readable from the surviving nodes, and writes resume under a new leader.
#[test]
fn acknowledged_writes_survive_sigkill_of_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = free_udp_ports(3);
    let rpcs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let members = rpcs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| start_node(i as u64 + 1, dir.path(), &rpcs[i], &members))
        .collect();
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>());
    let all = rpcs.join(",");

    let mut acknowledged = Vec::new();
    let mut acked_after_kill = 0;
    for i in 0..40 {
        if i == 15 {
            nodes[leader].child.kill().expect("SIGKILL the leader");
            let _ = nodes[leader].child.wait();
        }
        let key = format!("/w/{i:03}");
        let (ok, _) = meta(&all, &["put", &key, &format!("v{i}")]);
        if ok {
            acknowledged.push(key);
            if i >= 15 {
                acked_after_kill += 1;
            }
        }
    }
    assert!(
        acknowledged.len() >= 15,
        "writes before the kill were acknowledged: {acknowledged:?}"
    );
    assert!(acked_after_kill > 0, "writes resume under a new leader");

    let survivors: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, n)| n)
        .collect();
    leader_of(&survivors);
    for node in &survivors {
        let (ok, out) = meta(&node.rpc, &["scan", "/w/"]);
        assert!(ok, "scan via {}: {out}", node.rpc);
        let keys: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for key in &acknowledged {
            assert!(
                keys.contains(&key.as_str()),
                "acknowledged {key} missing on {}: {keys:?}",
                node.rpc
            );
        }
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        if i != leader {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}
