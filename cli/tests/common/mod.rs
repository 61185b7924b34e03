//! Helpers shared by the multi-process tests: the `strata` binary, free ports, child
//! processes killed when dropped, and waiting for a process's ready line.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// `n` distinct UDP ports free right now on 127.0.0.1 (QUIC listens on UDP), taken below
/// the kernel's ephemeral range. A port from that range, once released, can be handed to
/// any socket bound to port 0 (a started node's outbound QUIC endpoint, say) before the node
/// it was meant for binds it; nothing is handed ports below the range unasked.
pub fn free_udp_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Tests of one binary run in parallel: each call goes on where the last one stopped.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(FIRST).max(1);
    // Test binaries run one after another, but spread them anyway.
    let base = std::process::id().wrapping_mul(7_919);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        if ports.len() == n {
            break;
        }
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + base.wrapping_add(i) % span) as u16;
        if !ports.contains(&port) && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    assert_eq!(
        ports.len(),
        n,
        "no {n} free UDP ports below {ephemeral_low}"
    );
    ports
}

/// A child process, killed (SIGKILL) when dropped, also when a test fails.
pub struct Proc {
    pub child: Child,
    /// The first stderr line containing the marker the process was started with.
    pub ready_line: String,
}

impl Proc {
    /// Spawns `cmd` with stderr piped and waits up to `within` for a stderr line containing
    /// `marker` (stderr is drained afterwards so the child never blocks on it).
    pub fn spawn(mut cmd: Command, marker: &'static str, within: Duration) -> Proc {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(marker) {
                    let _ = tx.send(line);
                }
            }
        });
        let ready_line = match rx.recv_timeout(within) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("process did not print {marker:?} within {within:?}");
            }
        };
        Proc { child, ready_line }
    }

    /// The text after `prefix` in the ready line, up to the next comma.
    pub fn field_after(&self, prefix: &str) -> String {
        let (_, rest) = self
            .ready_line
            .split_once(prefix)
            .unwrap_or_else(|| panic!("{prefix:?} not in {:?}", self.ready_line));
        rest.split(',').next().unwrap_or(rest).trim().to_owned()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `strata <args>`; returns success, stdout and stderr.
pub fn strata(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(STRATA)
        .args(["--connect-timeout-secs", "15"])
        .args(args)
        .output()
        .expect("run strata");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `strata <args> --data-dir <dir>/<data>` and waits for its ready line.
pub fn start_node(dir: &std::path::Path, args: &[&str], data: &str) -> Proc {
    let mut cmd = Command::new(STRATA);
    cmd.args(args).arg("--data-dir").arg(dir.join(data));
    Proc::spawn(cmd, ", HTTP on ", Duration::from_secs(120))
}

/// Starts one `strata bookie` per port, registered with `metastore` (any free space will
/// do: the tests write little).
pub fn start_bookies(dir: &std::path::Path, ports: &[u16], metastore: &str) -> Vec<Proc> {
    ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let listen = format!("127.0.0.1:{port}");
            start_node(
                dir,
                &[
                    "bookie",
                    "--listen",
                    &listen,
                    "--http",
                    "127.0.0.1:0",
                    "--metastore",
                    metastore,
                    "--min-free-bytes",
                    "0",
                    "--min-free-percent",
                    "0",
                ],
                &format!("bookie-{i}"),
            )
        })
        .collect()
}
