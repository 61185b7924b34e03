//! Multi-process, the transaction crash matrix: three `strata metastore` voters, three
//! `strata bookie` (E3/Qw3/Qa2) and three `strata broker` processes. Each cell of the matrix
//! runs one consume → produce transaction on fresh topics (K numbered inputs received, acked
//! in the transaction, one output sent per input in it, commit) and SIGKILLs one node at one
//! point of it:
//!
//! - targets: the broker owning the cell's topics (input and output are placed in one
//!   bundle, so it holds both the pending acks and the produced entries; the client's admin
//!   requests, commit included, go to it too), a bookie (each is in every ensemble), the
//!   metastore leader (the coordinator's state and its expiry);
//! - phases: before registration (begun and inputs acked, nothing sent yet), mid-produce
//!   (half the outputs stored, the rest in flight), during commit (the kill races the commit
//!   request), after commit (the commit answered, then the kill, before anything is checked);
//! - and, per target, mid-produce with the client aborting right after the kill, through
//!   another broker, while its sends are still being retried: they arrive after the decision.
//!
//! Every cell gets a cluster of its own, so each kill hits a healthy cluster. (One cluster for
//! the whole matrix does not work: a bookie restarted on its address stays unreachable for
//! the brokers' old connections until they time out, 10 s, and a writer takes it for failed;
//! a second bookie killed then leaves a ledger below its ack quorum and no new ledger can be
//! made with E = 3 of 3 bookies.)
//!
//! After the kill the client finishes as an application would: sends retry on their own, a
//! commit whose outcome it could not learn is sent again (a retried commit of a committed
//! transaction answers committed). Then, with the node still down, checked:
//!
//! - all or nothing: if the transaction committed, a new read-committed subscription of the
//!   output gets every output exactly once and the inputs never come back; otherwise (it is
//!   aborted as an operator if still open) no output is delivered and every input comes back
//!   once. "Never" is made checkable with markers written after the decision: the output is
//!   read up to its marker, and the input subscription's cursor must reach its marker;
//! - the client's answer agrees with the decision: "committed" means COMMITTED, "aborted"
//!   ABORTED, a refused commit not committed (else the caller would redo the work and
//!   duplicate it);
//! - a kill before the commit was asked for, or after it was answered, costs nothing: the
//!   transaction commits (or, in the abort cells, aborts).
//!
//! Then the node is restarted on its ports and data directory; once the cluster is whole the
//! output is read again on another new subscription and the input cursor checked again: the
//! decision and the acks survive the node's return too.
//!
//! Each node's log goes to `<data dir>.log` in the cluster's directory; set
//! `STRATA_MATRIX_KEEP=1` to keep that directory (its path is printed), and
//! `STRATA_MATRIX_CELLS=bookie,during-commit` to run only the cells whose names contain one
//! of the words.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, STRATA, free_udp_ports};
use strata_broker::bundles::{BundleLayout, DEFAULT_BUNDLES};
use strata_client::{
    Client, ClientError, ClientOptions, Consumer, ErrorCode, InitialPosition, MessageId,
    SubscriptionType, Transaction, TxnId,
};
use strata_proto::TopicName;
use strata_transport::TransportTuning;

/// Inputs (and outputs) per transaction.
const K: u64 = 20;
/// Broker session TTL: how long a killed owner's bundles stay owned.
const SESSION_TTL_SECS: u64 = 3;
/// Longer than any cell: the coordinator's timeout must not decide for the client.
const TXN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the system may take to serve again after a kill (session TTL, fencing and
/// recovering a ledger, a metastore election, clients' backoff) on a slow CI machine.
const RECOVERY: Duration = Duration::from_secs(90);
/// Pause between attempts of a request that failed for want of a live node.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The marker written after a transaction's decision, on its input and output topics.
const END: &str = "end";

/// What a cell kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    OwnerBroker,
    Bookie,
    MetastoreLeader,
}

/// When a cell kills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    BeforeRegistration,
    MidProduce,
    DuringCommit,
    AfterCommit,
}

/// The decision a cell requires, beyond all or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    Committed,
    /// The client aborts right after the kill (before registration or mid-produce), while
    /// its sends are still being retried: the abort holds, late sends included.
    Aborted,
    /// The kill races the decision: either is right, as long as it is all or nothing and
    /// the client's answer agrees.
    Either,
}

#[derive(Debug, Clone, Copy)]
struct Cell {
    target: Target,
    phase: Phase,
    expected: Expected,
}

const fn cell(target: Target, phase: Phase, expected: Expected) -> Cell {
    Cell {
        target,
        phase,
        expected,
    }
}

use Expected::{Aborted, Committed, Either};
use Phase::{AfterCommit, BeforeRegistration, DuringCommit, MidProduce};
use Target::{Bookie, MetastoreLeader, OwnerBroker};

/// The matrix. Before registration and mid-produce the client has not asked to commit yet,
/// so it goes on once the system recovers and commits (or, in the abort cells, aborts);
/// after commit the decision is made.
const CELLS: [Cell; 15] = [
    cell(OwnerBroker, BeforeRegistration, Committed),
    cell(OwnerBroker, MidProduce, Committed),
    cell(OwnerBroker, MidProduce, Aborted),
    cell(OwnerBroker, DuringCommit, Either),
    cell(OwnerBroker, AfterCommit, Committed),
    cell(MetastoreLeader, BeforeRegistration, Committed),
    cell(MetastoreLeader, MidProduce, Committed),
    cell(MetastoreLeader, MidProduce, Aborted),
    cell(MetastoreLeader, DuringCommit, Either),
    cell(MetastoreLeader, AfterCommit, Committed),
    cell(Bookie, BeforeRegistration, Committed),
    cell(Bookie, MidProduce, Committed),
    cell(Bookie, MidProduce, Aborted),
    cell(Bookie, DuringCommit, Either),
    cell(Bookie, AfterCommit, Committed),
];

impl Cell {
    /// `owner-broker-mid-produce`, `…-then-abort`: in topic names and messages.
    fn name(&self) -> String {
        let target = match self.target {
            OwnerBroker => "owner-broker",
            Bookie => "bookie",
            MetastoreLeader => "metastore-leader",
        };
        let phase = match self.phase {
            BeforeRegistration => "before-registration",
            MidProduce => "mid-produce",
            DuringCommit => "during-commit",
            AfterCommit => "after-commit",
        };
        let ending = if self.expected == Aborted {
            "-then-abort"
        } else {
            ""
        };
        format!("{target}-{phase}{ending}")
    }
}

// ---- the cluster ----

/// One server process, restartable on the same ports and data directory.
struct Node {
    args: Vec<String>,
    data: String,
    proc: Option<Proc>,
    /// The running process's HTTP address (port 0: it changes at each start).
    http: String,
}

impl Node {
    fn new(args: &[&str], data: String) -> Node {
        Node {
            args: args.iter().map(|a| a.to_string()).collect(),
            data,
            proc: None,
            http: String::new(),
        }
    }

    /// Starts the process and waits for its ready line (blocking). Its stderr goes on to
    /// `<data>.log`, across restarts.
    fn start(&mut self, dir: &Path) {
        let mut child = Command::new(STRATA)
            .args(&self.args)
            .arg("--data-dir")
            .arg(dir.join(&self.data))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata");
        let stderr = child.stderr.take().expect("stderr");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", self.data)))
            .expect("node log");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if line.contains(", HTTP on ") {
                    let _ = tx.send(line);
                }
            }
        });
        let log_path = dir.join(format!("{}.log", self.data));
        let ready_line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{} did not start within 120 s; the end of its log:\n{}",
                    self.data,
                    tail.join("\n")
                )
            });
        let proc = Proc { child, ready_line };
        self.http = proc.field_after(", HTTP on ");
        self.proc = Some(proc);
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// A gauge from the running process's `/metrics`.
    fn gauge(&self, name: &str) -> Option<u64> {
        self.proc.as_ref()?;
        let mut s = TcpStream::connect(&self.http).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let prefix = format!("{name} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Metastore,
    Bookie,
    Broker,
}

/// A node a cell killed.
#[derive(Debug, Clone, Copy)]
struct Victim {
    role: Role,
    index: usize,
}

struct Cluster {
    /// Removes the directory at the end, unless it is to be kept.
    _cleanup: Option<tempfile::TempDir>,
    dir: PathBuf,
    metastores: Vec<Node>,
    bookies: Vec<Node>,
    brokers: Vec<Node>,
    /// The brokers' QUIC addresses, as lookups answer them.
    broker_addrs: Vec<String>,
}

/// A failed cell shows the end of every node's log (the directory goes with the cluster).
impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            eprintln!(
                "---- the end of {} ----\n{}",
                log.display(),
                tail.join("\n")
            );
        }
    }
}

/// Lines of each node's log shown when a cell fails.
const LOG_TAIL: usize = 40;

impl Cluster {
    /// Starts every node (blocking).
    fn start() -> Cluster {
        let temp = tempfile::Builder::new()
            .prefix("txn-matrix-")
            .tempdir()
            .expect("tempdir");
        let (cleanup, dir) = if std::env::var_os("STRATA_MATRIX_KEEP").is_some() {
            let dir = temp.keep();
            eprintln!("cluster directory (kept): {}", dir.display());
            (None, dir)
        } else {
            let dir = temp.path().to_path_buf();
            (Some(temp), dir)
        };
        let ports = free_udp_ports(9);
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let members = addrs[0..3]
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let metastore = addrs[0..3].join(",");
        let mut metastores: Vec<Node> = (0..3)
            .map(|i| {
                let id = (i + 1).to_string();
                Node::new(
                    &[
                        "metastore",
                        "--node-id",
                        &id,
                        "--listen",
                        &addrs[i],
                        "--http",
                        "127.0.0.1:0",
                        "--initial-members",
                        &members,
                    ],
                    format!("meta-{id}"),
                )
            })
            .collect();
        // The voters start together: each waits for a quorum before it prints its addresses.
        std::thread::scope(|s| {
            for node in &mut metastores {
                let dir = dir.as_path();
                s.spawn(move || node.start(dir));
            }
        });
        let mut bookies: Vec<Node> = (0..3)
            .map(|i| {
                Node::new(
                    &[
                        "bookie",
                        "--listen",
                        &addrs[3 + i],
                        "--http",
                        "127.0.0.1:0",
                        "--metastore",
                        &metastore,
                        "--min-free-bytes",
                        "0",
                        "--min-free-percent",
                        "0",
                    ],
                    format!("bookie-{i}"),
                )
            })
            .collect();
        for b in &mut bookies {
            b.start(&dir);
        }
        let ttl = SESSION_TTL_SECS.to_string();
        let mut brokers: Vec<Node> = (0..3)
            .map(|i| {
                Node::new(
                    &[
                        "broker",
                        "--listen",
                        &addrs[6 + i],
                        "--http",
                        "127.0.0.1:0",
                        "--metastore",
                        &metastore,
                        "--session-ttl-secs",
                        &ttl,
                    ],
                    format!("broker-{i}"),
                )
            })
            .collect();
        for b in &mut brokers {
            b.start(&dir);
        }
        let cluster = Cluster {
            _cleanup: cleanup,
            dir,
            metastores,
            bookies,
            brokers,
            broker_addrs: addrs[6..9].to_vec(),
        };
        cluster.wait_whole();
        cluster
    }

    fn nodes(&mut self, role: Role) -> &mut Vec<Node> {
        match role {
            Role::Metastore => &mut self.metastores,
            Role::Bookie => &mut self.bookies,
            Role::Broker => &mut self.brokers,
        }
    }

    /// The service URL naming every broker; with `owner` (an address), that broker comes
    /// first (`owner_first`) or last.
    fn url(&self, owner: Option<&str>, owner_first: bool) -> String {
        let mut hosts: Vec<&str> = self.broker_addrs.iter().map(String::as_str).collect();
        if let Some(i) = owner.and_then(|o| hosts.iter().position(|h| *h == o)) {
            let o = hosts.remove(i);
            if owner_first {
                hosts.insert(0, o);
            } else {
                hosts.push(o);
            }
        }
        format!("quic://{}", hosts.join(","))
    }

    /// The index of the metastore leader: the one running node that says it leads
    /// (blocking; waits through an election).
    fn metastore_leader(&self) -> usize {
        let deadline = Instant::now() + RECOVERY;
        loop {
            let leaders: Vec<usize> = (0..self.metastores.len())
                .filter(|&i| self.metastores[i].gauge("strata_metastore_is_leader") == Some(1))
                .collect();
            if let [leader] = leaders[..] {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no single metastore leader within {RECOVERY:?}: {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node `target` names now; `owner` is the address of the broker owning the cell's
    /// topics. Any bookie will do: each is in every ensemble (E = 3 of 3 bookies).
    fn victim(&self, target: Target, owner: &str) -> Victim {
        match target {
            OwnerBroker => Victim {
                role: Role::Broker,
                index: self
                    .broker_addrs
                    .iter()
                    .position(|a| a == owner)
                    .unwrap_or_else(|| panic!("the owner {owner} is not one of our brokers")),
            },
            Bookie => Victim {
                role: Role::Bookie,
                index: 0,
            },
            MetastoreLeader => Victim {
                role: Role::Metastore,
                index: self.metastore_leader(),
            },
        }
    }

    /// SIGKILLs the node `target` names now (blocking: finding the leader polls).
    fn kill(&mut self, target: Target, owner: &str) -> Victim {
        let v = self.victim(target, owner);
        self.nodes(v.role)[v.index].kill();
        v
    }

    /// Restarts a killed node on its ports and data, and waits until the cluster is whole.
    fn restart(&mut self, v: Victim) {
        let dir = self.dir.clone();
        self.nodes(v.role)[v.index].start(&dir);
        self.wait_whole();
    }

    /// Waits until every node runs, one metastore node leads and every bookie is registered
    /// (a ledger's ensemble needs all three), blocking.
    fn wait_whole(&self) {
        let deadline = Instant::now() + RECOVERY;
        let all_up = self
            .metastores
            .iter()
            .chain(&self.bookies)
            .chain(&self.brokers)
            .all(|n| n.proc.is_some());
        assert!(all_up, "a killed node was not restarted");
        self.metastore_leader();
        while !self
            .bookies
            .iter()
            .all(|b| b.gauge("strata_bookie_registered") == Some(1))
        {
            assert!(
                Instant::now() < deadline,
                "the bookies did not all register within {RECOVERY:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---- clients ----

/// A client of `url` that notices a killed broker within seconds (keep-alives every second,
/// idle timeout 4 s) rather than after the default 10 s.
async fn connect(url: String) -> Client {
    let options = ClientOptions {
        url,
        connect_timeout: Duration::from_secs(3),
        tuning: TransportTuning {
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(4),
            ..TransportTuning::default()
        },
        ..ClientOptions::default()
    };
    retrying("connect", || Client::connect(options.clone())).await
}

/// An error that says the request found no live node (or lost it), not that it was
/// refused: the outcome is unknown and the request may be sent again.
fn transient(e: &ClientError) -> bool {
    e.is_retryable()
        || e.code() == Some(ErrorCode::SubscriptionBusy)
        || matches!(
            e,
            ClientError::Transport(_) | ClientError::ConnectTimeout { .. } | ClientError::Closed(_)
        )
}

/// Runs `op` until it succeeds or fails for a reason other than a dead node, for up to
/// [`RECOVERY`]; panics then.
async fn retrying<T, Fut>(what: &str, mut op: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + RECOVERY;
    loop {
        let error = match tokio::time::timeout(RECOVERY, op()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) if transient(&e) => e.to_string(),
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => "no answer".to_owned(),
        };
        assert!(
            Instant::now() < deadline,
            "{what}: still failing after {RECOVERY:?}: {error}"
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// `fut`, or a panic naming `what` if it takes longer than [`RECOVERY`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(RECOVERY, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {RECOVERY:?}"))
}

fn number(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

/// A topic of `public/default` in the same bundle as `beside`, so one broker owns both.
fn topic_beside(beside: &str, base: &str) -> String {
    let layout = BundleLayout::equal(DEFAULT_BUNDLES);
    let bundle = |t: &str| layout.bundle_of(&TopicName::parse(t).expect("topic name"));
    (0..1000)
        .map(|i| format!("{base}-{i}"))
        .find(|t| bundle(t) == bundle(beside))
        .expect("a name in the same bundle among 1000")
}

/// Sends `payload` to `topic` outside any transaction, waiting until it is stored.
async fn send_one(client: &Client, topic: &str, payload: String) -> MessageId {
    let producer = retrying("marker producer", || {
        client.producer(topic).send_timeout(RECOVERY).create()
    })
    .await;
    let id = producer.send(payload).await.expect("marker stored");
    producer.close().await.expect("close marker producer");
    id
}

/// A consumer of `subscription` (from the earliest message if it is new), subscribing again
/// while the topic has no owner or the previous consumer is still attached.
async fn subscribe(client: &Client, topic: &str, subscription: &str) -> Consumer {
    retrying(&format!("subscribe {subscription} on {topic}"), || {
        client
            .consumer(topic, subscription)
            .subscription_type(SubscriptionType::Exclusive)
            .initial_position(InitialPosition::Earliest)
            .reconnect_timeout(RECOVERY)
            .subscribe()
    })
    .await
}

// ---- one cell ----

/// What the client was told at the end.
#[derive(Debug)]
enum Answer {
    /// After `retries` commits sent again because no live node answered the one before;
    /// `first` says why the first one had no answer.
    Committed { retries: u32, first: String },
    /// The same, for an abort.
    Aborted { retries: u32, first: String },
    /// Refused for a reason that is not a lost node (the transaction is not committed).
    Refused(String),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Committed { retries: 0, .. } => write!(f, "committed"),
            Answer::Aborted { retries: 0, .. } => write!(f, "aborted"),
            Answer::Committed { retries, first } | Answer::Aborted { retries, first } => {
                let what = match self {
                    Answer::Committed { .. } => "committed",
                    _ => "aborted",
                };
                write!(f, "{what} (sent {} times; the first: {first})", retries + 1)
            }
            Answer::Refused(e) => write!(f, "refused: {e}"),
        }
    }
}

/// Takes the outcome of a commit (or abort) attempt and, while it is unknown (no live node
/// answered), sends it again, as an application would.
async fn end_until_answered(
    txn: &Transaction,
    commit: bool,
    first: Result<(), ClientError>,
) -> Answer {
    let deadline = Instant::now() + RECOVERY;
    let mut attempt = first;
    let mut retries = 0;
    let mut first = String::new();
    loop {
        match attempt {
            Ok(()) if commit => return Answer::Committed { retries, first },
            Ok(()) => return Answer::Aborted { retries, first },
            Err(e) if transient(&e) => {
                if retries == 0 {
                    first = e.to_string();
                }
                assert!(
                    Instant::now() < deadline,
                    "commit or abort still without an answer after {retries} retries: {e}"
                );
                tokio::time::sleep(RETRY_PAUSE).await;
                retries += 1;
                attempt = if commit {
                    within("commit", txn.commit()).await
                } else {
                    within("abort", txn.abort()).await
                };
            }
            Err(e) => return Answer::Refused(e.to_string()),
        }
    }
}

/// The transaction's decision; one still open is aborted as an operator first.
async fn decision(checker: &Client, id: TxnId) -> String {
    let info = retrying("transaction info", || checker.transaction_info(id)).await;
    if matches!(info.state.as_str(), "COMMITTED" | "ABORTED" | "TIMED_OUT") {
        return info.state;
    }
    retrying("operator abort", || checker.abort_transaction(id))
        .await
        .state
}

/// The cell's topics and where their markers are.
struct Topics {
    input: String,
    output: String,
    /// The input's marker, written after the decision: the cursor must reach it.
    input_marker: Option<MessageId>,
}

/// The numbers a new read-committed `subscription` of the output gets before its marker.
async fn outputs_up_to_marker(
    checker: &Client,
    topics: &Topics,
    subscription: &str,
) -> BTreeMap<u64, usize> {
    let mut audit = subscribe(checker, &topics.output, subscription).await;
    let mut seen = BTreeMap::new();
    loop {
        let m = within("output up to the marker", audit.receive())
            .await
            .expect("receive output");
        if &m.payload[..] == END.as_bytes() {
            break;
        }
        let n = number(&m.payload).expect("outputs are numbers");
        *seen.entry(n).or_default() += 1;
    }
    let _ = audit.close().await;
    seen
}

/// All or nothing, on the output: every output once if committed, none otherwise.
fn check_outputs(cell: &str, state: &str, outputs: &BTreeMap<u64, usize>) {
    let twice: Vec<_> = outputs.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.is_empty(),
        "{cell} ({state}): outputs delivered more than once (number, times): {twice:?}"
    );
    if state == "COMMITTED" {
        let missing: Vec<u64> = (0..K).filter(|n| !outputs.contains_key(n)).collect();
        assert!(
            missing.is_empty(),
            "{cell}: committed, yet outputs {missing:?} are not delivered"
        );
        assert_eq!(
            outputs.len() as u64,
            K,
            "{cell}: outputs other than the inputs' numbers: {outputs:?}"
        );
    } else {
        assert!(
            outputs.is_empty(),
            "{cell}: {state}, yet outputs {:?} are delivered",
            outputs.keys().collect::<Vec<_>>()
        );
    }
}

/// All or nothing, on the input subscription: if committed nothing comes back before the
/// marker; otherwise every input comes back once (and is acknowledged now). Then the cursor
/// reaches the marker: every input before it is acknowledged.
async fn check_inputs(checker: &Client, topics: &Topics, committed: bool, cell: &str) {
    let mut consumer = subscribe(checker, &topics.input, "worker").await;
    let mut back = BTreeMap::new();
    let mut marker_seen = false;
    // Inputs released by an abort may come after the marker (they are redelivered).
    while !(marker_seen && (committed || back.len() as u64 == K)) {
        let waiting = format!(
            "{cell}: inputs up to the marker ({} came back, marker seen: {marker_seen})",
            back.len()
        );
        let m = within(&waiting, consumer.receive())
            .await
            .expect("receive input");
        if &m.payload[..] == END.as_bytes() {
            consumer.ack(m.id).await.expect("ack marker");
            marker_seen = true;
            continue;
        }
        let n = number(&m.payload).expect("inputs are numbers");
        assert!(
            !committed,
            "{cell}: input {n} came back although its ack was committed"
        );
        assert!(
            back.insert(n, m.id).is_none(),
            "{cell}: input {n} came back twice to one consumer"
        );
        consumer.ack(m.id).await.expect("ack input");
    }
    consumer.flush_acks().await.expect("acks durable");
    let _ = consumer.close().await;
    input_cursor_reaches_marker(checker, topics, cell).await;
}

/// Waits until the input subscription's cursor is at the marker: the inputs before it are
/// all acknowledged (by the committed transaction, or by the check after an abort).
async fn input_cursor_reaches_marker(checker: &Client, topics: &Topics, cell: &str) {
    let marker = topics.input_marker.expect("the input marker is written");
    let deadline = Instant::now() + RECOVERY;
    loop {
        let stats = retrying("input stats", || checker.topic_stats(&topics.input)).await;
        let md = stats
            .subscriptions
            .iter()
            .find(|s| s.name == "worker")
            .and_then(|s| s.mark_delete)
            .map(|m| (m.ledger_id, m.entry_id));
        if md == Some((marker.ledger.0, marker.entry.0)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{cell}: the input cursor stays at {md:?}, before the marker at {marker}: some \
             input is neither acknowledged nor delivered"
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// When (since the cell started) each step ended.
type Steps = Vec<(&'static str, Duration)>;

/// Kills the cell's target now and notes when.
fn kill(
    cluster: &mut Cluster,
    cell: Cell,
    owner: &str,
    steps: &mut Steps,
    started: Instant,
) -> Victim {
    let v = tokio::task::block_in_place(|| cluster.kill(cell.target, owner));
    steps.push(("killed", started.elapsed()));
    v
}

/// What one cell saw, for the summary.
struct Report {
    name: String,
    answer: Answer,
    state: String,
    took: Duration,
    steps: Steps,
}

/// Runs one cell on a fresh cluster; panics with the cell's name on any violation.
async fn run_cell(cluster: &mut Cluster, cell: Cell) -> Report {
    let started = Instant::now();
    let name = cell.name();
    let checker = connect(cluster.url(None, false)).await;
    let output = format!("persistent://public/default/txn-matrix-{name}-out");
    let mut topics = Topics {
        input: topic_beside(
            &output,
            &format!("persistent://public/default/txn-matrix-{name}-in"),
        ),
        output,
        input_marker: None,
    };

    // K numbered inputs, four to an entry (so acks name batch indexes too).
    let seed = retrying("seed producer", || {
        checker
            .producer(&topics.input)
            .batch_max_messages(4)
            .create()
    })
    .await;
    let mut last = None;
    for n in 0..K {
        last = Some(seed.send_async(n.to_string()).await.expect("queue input"));
    }
    last.expect("inputs").await.expect("inputs stored");
    seed.close().await.expect("close seed producer");
    let owner = retrying("lookup", || checker.lookup(&topics.input))
        .await
        .address;

    // The worker's admin requests (begin, commit) go to the owner as well, so a kill of the
    // owner breaks the commit's path too. When the client is to abort, they go to another
    // broker: the abort is decided at once, while the sends still wait for a new owner, so
    // they arrive late.
    let owner_first = cell.expected != Aborted;
    let worker = connect(cluster.url(Some(&owner), owner_first)).await;
    let mut consumer = subscribe(&worker, &topics.input, "worker").await;
    let producer = worker
        .producer(&topics.output)
        .batch_max_messages(2)
        .send_timeout(RECOVERY)
        .create()
        .await
        .expect("output producer");
    assert_eq!(
        retrying("lookup", || checker.lookup(&topics.output))
            .await
            .address,
        owner,
        "{name}: input and output share a bundle, so one broker owns both"
    );
    let mut received = Vec::new();
    while (received.len() as u64) < K {
        let m = within("inputs", consumer.receive())
            .await
            .expect("receive input");
        received.push((number(&m.payload).expect("a number"), m.id));
    }
    let txn = worker
        .new_transaction()
        .timeout(TXN_TIMEOUT)
        .begin()
        .await
        .expect("begin");
    let ids: Vec<MessageId> = received.iter().map(|(_, id)| *id).collect();
    consumer
        .ack_all_in(&txn, &ids)
        .await
        .expect("inputs acknowledged in the transaction");

    let mut steps: Steps = vec![("begun", started.elapsed())];
    let mut killed = None;
    if cell.phase == BeforeRegistration {
        killed = Some(kill(cluster, cell, &owner, &mut steps, started));
    }
    // The first half stored (unless the kill came before it), the rest in flight.
    let half = if cell.phase == BeforeRegistration {
        0
    } else {
        received.len() / 2
    };
    for (n, _) in &received[..half] {
        producer
            .send_in(&txn, n.to_string())
            .await
            .expect("output stored on a whole cluster");
    }
    let mut in_flight = Vec::new();
    for (n, _) in &received[half..] {
        in_flight.push(
            producer
                .send_async_in(&txn, n.to_string())
                .await
                .expect("output queued"),
        );
    }
    if cell.phase == MidProduce {
        killed = Some(kill(cluster, cell, &owner, &mut steps, started));
    }
    let answer = if cell.expected == Aborted {
        // Abort while the sends are still retried: whatever of them lands is never delivered.
        let first = within("abort", txn.abort()).await;
        let answer = end_until_answered(&txn, false, first).await;
        for send in in_flight {
            let _ = within("output send", send).await;
        }
        answer
    } else {
        for send in in_flight {
            let stored = within("output send", send).await;
            // After a kill a send may fail for good (the commit then aborts); before, not.
            if killed.is_none() {
                stored.expect("output stored on a whole cluster");
            }
        }
        match cell.phase {
            DuringCommit => {
                let committing = {
                    let txn = txn.clone();
                    tokio::spawn(async move { txn.commit().await })
                };
                killed = Some(kill(cluster, cell, &owner, &mut steps, started));
                let first = within("commit", committing).await.expect("commit task");
                end_until_answered(&txn, true, first).await
            }
            AfterCommit => {
                txn.commit().await.expect("commit on a whole cluster");
                killed = Some(kill(cluster, cell, &owner, &mut steps, started));
                Answer::Committed {
                    retries: 0,
                    first: String::new(),
                }
            }
            BeforeRegistration | MidProduce => {
                let first = within("commit", txn.commit()).await;
                end_until_answered(&txn, true, first).await
            }
        }
    };
    let victim = killed.expect("every cell kills a node");
    steps.push(("answered", started.elapsed()));

    // The worker is done: everything it sent has settled (the commit waited for it).
    let _ = tokio::time::timeout(RECOVERY, producer.close()).await;
    drop(consumer);
    drop(worker);

    let state = decision(&checker, txn.id()).await;
    match &answer {
        Answer::Committed { .. } => assert_eq!(
            state, "COMMITTED",
            "{name}: the client was told committed, but the transaction is {state}"
        ),
        Answer::Aborted { .. } => assert_eq!(
            state, "ABORTED",
            "{name}: the client was told aborted, but the transaction is {state}"
        ),
        Answer::Refused(e) => assert_ne!(
            state, "COMMITTED",
            "{name}: the commit was refused ({e}) yet the transaction committed: the caller \
             would redo the work and duplicate it"
        ),
    }
    if cell.expected == Committed {
        assert_eq!(
            state, "COMMITTED",
            "{name}: the kill must not cost the transaction (client answer: {answer})"
        );
    }
    if cell.expected == Aborted {
        assert_eq!(state, "ABORTED", "{name}: client answer: {answer}");
    }
    let committed = state == "COMMITTED";

    // Markers after the decision: everything the transaction wrote lies before them.
    send_one(&checker, &topics.output, END.to_owned()).await;
    topics.input_marker = Some(send_one(&checker, &topics.input, END.to_owned()).await);
    let outputs = outputs_up_to_marker(&checker, &topics, "audit").await;
    check_outputs(&name, &state, &outputs);
    check_inputs(&checker, &topics, committed, &name).await;
    steps.push(("checked", started.elapsed()));

    // The node comes back; the decision and the acks hold across its return too.
    tokio::task::block_in_place(|| cluster.restart(victim));
    steps.push(("restarted", started.elapsed()));
    let outputs = outputs_up_to_marker(&checker, &topics, "audit-after-restart").await;
    check_outputs(&format!("{name}, after the restart"), &state, &outputs);
    input_cursor_reaches_marker(&checker, &topics, &format!("{name}, after the restart")).await;
    checker.close().await;
    Report {
        name,
        answer,
        state,
        took: started.elapsed(),
        steps,
    }
}

/// Every cell of the matrix: one node SIGKILLed at one point of a consume → produce
/// transaction; the transaction is all or nothing, and the client's answer says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transaction_is_all_or_nothing_whichever_node_is_killed_whenever() {
    let started = Instant::now();
    let only = std::env::var("STRATA_MATRIX_CELLS").unwrap_or_default();
    let chosen = |c: &Cell| {
        let name = c.name();
        only.is_empty() || only.split(',').any(|w| name.contains(w.trim()))
    };
    let mut reports = Vec::new();
    for cell in CELLS.iter().filter(|c| chosen(c)) {
        let mut cluster = tokio::task::spawn_blocking(Cluster::start)
            .await
            .expect("cluster");
        let report = run_cell(&mut cluster, *cell).await;
        let steps: Vec<String> = report
            .steps
            .iter()
            .map(|(step, at)| format!("{step} {:.1}", at.as_secs_f64()))
            .collect();
        eprintln!(
            "{:<41} {:<9} {:>5.1} s  client: {}; {}",
            report.name,
            report.state,
            report.took.as_secs_f64(),
            report.answer,
            steps.join(", ")
        );
        reports.push(report);
        tokio::task::block_in_place(|| drop(cluster));
    }
    let committed = reports.iter().filter(|r| r.state == "COMMITTED").count();
    eprintln!(
        "{} cells, {committed} committed, in {:?}",
        reports.len(),
        started.elapsed()
    );
}
