//! Multi-process: the real `strata` binary as a newcomer would run it, killed with SIGKILL.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

struct Server {
    child: Child,
    quic: String,
    http: String,
}

/// Starts `strata standalone` on free ports and waits (with a deadline) for its ready line.
fn start(data_dir: &Path) -> Server {
    let mut child = Command::new(STRATA)
        .args([
            "standalone",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata standalone");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("strata standalone: QUIC on ") {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("standalone printed its addresses within the deadline");
    let (quic, http) = line.split_once(", HTTP on ").expect("address line shape");
    Server {
        child,
        quic: quic.to_owned(),
        http: http.to_owned(),
    }
}

fn strata(server: &Server, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(STRATA)
        .arg("--url")
        .arg(format!("quic://{}", server.quic))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata client");
    let mut input = child.stdin.take().expect("stdin piped");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("client exits");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect HTTP");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send request");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

fn lines(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("msg-{i}")).collect()
}

/// produce, consume half, SIGKILL, restart: the other half and nothing else comes back; a
/// produce acknowledged just before a SIGKILL survives it.
#[test]
fn nothing_acknowledged_is_lost_across_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path());
    assert!(
        http_get(&server.http, "/healthz").starts_with("HTTP/1.0 200")
            || http_get(&server.http, "/healthz").contains("200 OK")
    );
    assert!(http_get(&server.http, "/readyz").contains("ready"));

    let input = lines(0..100).join("\n") + "\n";
    let (ok, _, err) = strata(&server, &["produce", "walk"], Some(&input));
    assert!(ok, "produce failed: {err}");
    let (ok, out, err) = strata(&server, &["consume", "walk", "-s", "cli", "-n", "50"], None);
    assert!(ok, "consume failed: {err}");
    assert_eq!(
        out.lines().map(str::to_owned).collect::<Vec<_>>(),
        lines(0..50)
    );
    let metrics = http_get(&server.http, "/metrics");
    assert!(
        metrics.contains("strata_broker_messages_in_total 100"),
        "{metrics}"
    );

    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    let mut server = start(dir.path());
    let (ok, out, err) = strata(&server, &["consume", "walk", "-s", "cli", "-n", "50"], None);
    assert!(ok, "consume after restart failed: {err}");
    assert_eq!(
        out.lines().map(str::to_owned).collect::<Vec<_>>(),
        lines(50..100),
        "exactly the unacknowledged half"
    );

    let (ok, _, err) = strata(
        &server,
        &["produce", "walk", "-m", "last-words", "-n", "3"],
        None,
    );
    assert!(ok, "produce failed: {err}");
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    let mut server = start(dir.path());
    let (ok, out, err) = strata(&server, &["consume", "walk", "-s", "cli", "-n", "3"], None);
    assert!(ok, "consume failed: {err}");
    assert_eq!(out, "last-words\nlast-words\nlast-words\n");
    let (ok, out, _) = strata(&server, &["topics", "list"], None);
    assert!(
        ok && out.contains("persistent://public/default/walk"),
        "{out}"
    );
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
}

/// With no server listening, a client command fails with one clear line and a non-zero exit.
#[test]
fn unreachable_server_is_one_clear_line() {
    let out = Command::new(STRATA)
        .args([
            "--url",
            "quic://127.0.0.1:9",
            "--connect-timeout-secs",
            "2",
            "topics",
            "list",
        ])
        .output()
        .expect("run strata");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("no Strata server reachable") || err.contains("cannot connect"),
        "{err}"
    );
}

/// A bad topic name is one clear line naming the problem.
#[test]
fn bad_topic_name_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path());
    let (ok, _, err) = strata(&server, &["produce", "a/b", "-m", "x"], None);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("persistent://tenant/namespace/topic"), "{err}");
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
}

/// `namespaces set-policies --clear` removes a policy and keeps the others, as the stored
/// policies show; an unknown policy name is a usage error.
#[test]
fn set_policies_clear_removes_a_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path());
    let set = [
        "namespaces",
        "set-policies",
        "public/default",
        "--retention-minutes",
        "60",
        "--retention-size-mb",
        "10",
        "--backlog-quota-mb",
        "100",
    ];
    let (ok, _, err) = strata(&server, &set, None);
    assert!(ok, "{err}");
    let policies = |server: &Server| {
        let (ok, out, err) = strata(server, &["namespaces", "policies", "public/default"], None);
        assert!(ok, "{err}");
        out
    };
    let before = policies(&server);
    assert!(
        before.contains("retention") && before.contains("backlog_quota"),
        "{before}"
    );
    let clear = [
        "namespaces",
        "set-policies",
        "public/default",
        "--clear",
        "retention",
    ];
    let (ok, _, err) = strata(&server, &clear, None);
    assert!(ok, "{err}");
    let after = policies(&server);
    assert!(!after.contains("retention"), "cleared: {after}");
    assert!(after.contains("backlog_quota"), "kept: {after}");
    let bad = [
        "namespaces",
        "set-policies",
        "public/default",
        "--clear",
        "bundles",
    ];
    let (ok, _, err) = strata(&server, &bad, None);
    assert!(!ok && err.contains("invalid value"), "{err}");
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
}

/// `strata perf txn` runs both passes for every N, the plain one first with
/// `--baseline-first`, each over all its messages, and its transactional passes commit one
/// transaction per N input messages.
#[test]
fn perf_txn_runs_both_passes_in_the_asked_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path());
    let committed = |server: &Server| -> u64 {
        let metrics = http_get(&server.http, "/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("strata_broker_txn_committed_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no committed counter in {metrics}"))
    };
    for (order, expected) in [
        (None, ["txn", "plain"]),
        (Some("--baseline-first"), ["plain", "txn"]),
    ] {
        let before = committed(&server);
        let mut args = vec![
            "perf",
            "txn",
            "-n",
            "40",
            "--per-txn",
            "1,10",
            "--pipelines",
            "2",
        ];
        args.extend(order);
        let (ok, out, err) = strata(&server, &args, None);
        assert!(ok, "perf txn failed: {err}");
        let passes: Vec<(String, String, String)> = out
            .lines()
            .filter(|l| l.starts_with("mode="))
            .map(|l| {
                let field = |k: &str| {
                    l.split_whitespace()
                        .find_map(|f| f.strip_prefix(&format!("{k}=")))
                        .unwrap_or_else(|| panic!("no {k} in {l}"))
                        .to_owned()
                };
                (field("mode"), field("n"), field("messages"))
            })
            .collect();
        let want: Vec<(String, String, String)> = ["1", "10"]
            .iter()
            .flat_map(|n| {
                expected
                    .iter()
                    .map(|m| (m.to_string(), n.to_string(), "40".into()))
            })
            .collect();
        assert_eq!(passes, want, "{out}");
        // 40 transactions of one message, then 4 of ten.
        assert_eq!(committed(&server) - before, 44, "{out}");
    }
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
}
