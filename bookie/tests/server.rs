//! Bookie server tests: real QUIC on 127.0.0.1 (port 0), real RocksDB in temporary
//! directories, the real `BookieClient`; registration against a real one-voter metastore.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use strata_bookie::registration::{self, BOOKIES_AVAILABLE_PREFIX};
use strata_bookie::server::{DiskStatus, DiskThreshold};
use strata_bookie::{
    BookieClient, BookieClientOptions, BookieRpcError, BookieServer, BookieStorage, Registration,
    RegistrationConfig, ServerConfig, StorageOptions,
};
use strata_metastore::{MetaStore, MetaStoreConfig};
use strata_proto::pb::bookie::{
    BookieRequest, BookieResponse, ReadLac, bookie_request, bookie_response,
};
use strata_proto::{EntryId, ErrorCode, LedgerId};
use strata_transport::handshake::client_handshake;
use strata_transport::{ClientTrust, ServerTls, TransportTuning, client_endpoint, close_code};

/// Nothing is ever too full for these tests unless a test says so.
const NEVER_READ_ONLY: DiskThreshold = DiskThreshold {
    min_free_bytes: 0,
    min_free_ratio: 0.0,
};

struct Bookie {
    dir: tempfile::TempDir,
    server: BookieServer,
    addr: String,
}

impl Bookie {
    fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("bookie")
    }
}

fn tls(dir: &Path) -> ServerTls {
    strata_transport::install_crypto_provider();
    ServerTls::dev_in_dir(&dir.join("tls"), &[])
        .expect("dev tls")
        .0
}

fn start_server(dir: &Path, storage: BookieStorage, threshold: DiskThreshold) -> BookieServer {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"), dir.to_path_buf());
    config.disk_threshold = threshold;
    BookieServer::start(storage, config, &tls(dir)).expect("start server")
}

fn addr_of(server: &BookieServer) -> String {
    format!("127.0.0.1:{}", server.local_addr().expect("addr").port())
}

async fn start_bookie() -> Bookie {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage =
        BookieStorage::open(&dir.path().join("bookie"), StorageOptions::default()).expect("open");
    let server = start_server(dir.path(), storage, NEVER_READ_ONLY);
    let addr = addr_of(&server);
    Bookie { dir, server, addr }
}

fn client() -> BookieClient {
    BookieClient::new(BookieClientOptions::default())
}

fn payload(ledger: u64, entry: u64, len: usize) -> Bytes {
    let seed = format!("ledger {ledger} entry {entry} ");
    Bytes::from(
        seed.bytes()
            .cycle()
            .take(len.max(seed.len()))
            .collect::<Vec<u8>>(),
    )
}

/// Waits until `cond` holds, polling, or panics after a generous deadline.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Entries added over the network read back identical (small and large payloads), with the
/// piggybacked LAC; the LAC read reports LAC and last entry; a deleted ledger is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_read_round_trip_over_the_network() {
    let b = start_bookie().await;
    let c = client();
    let ledger = LedgerId(1);
    let sizes = [0usize, 10, 5000, 1024 * 1024];
    for (i, len) in sizes.iter().enumerate() {
        let i = i as u64;
        let lac = i.checked_sub(1).map(EntryId);
        c.add(&b.addr, ledger, EntryId(i), lac, payload(1, i, *len), false)
            .await
            .expect("add");
    }
    for (i, len) in sizes.iter().enumerate() {
        let i = i as u64;
        let read = c
            .read(&b.addr, ledger, EntryId(i), false)
            .await
            .expect("read");
        assert_eq!(read.payload, payload(1, i, *len), "entry {i}");
        assert_eq!(read.last_add_confirmed, Some(EntryId(2)));
    }
    let lac = c.read_lac(&b.addr, ledger, false).await.expect("lac");
    assert_eq!(lac.last_add_confirmed, Some(EntryId(2)));
    assert_eq!(lac.last_entry, Some(EntryId(3)));
    assert!(!lac.fenced);

    // A request above the frame limit is refused before it is sent.
    let huge = Bytes::from(vec![0u8; 9 * 1024 * 1024]);
    assert!(matches!(
        c.add(&b.addr, ledger, EntryId(4), None, huge, false).await,
        Err(BookieRpcError::TooLarge { .. })
    ));

    let stats = b.server.stats();
    assert_eq!(stats.adds, 4);
    assert_eq!(stats.reads, 4);
    assert_eq!(stats.connections, 1);

    c.delete(&b.addr, ledger).await.expect("delete");
    assert!(matches!(
        c.read(&b.addr, ledger, EntryId(0), false).await,
        Err(BookieRpcError::NoSuchLedger { ledger: l, .. }) if l == ledger
    ));
    c.close().await;
    b.server.shutdown().await;
}

/// 1,000 adds issued at once on one connection are all acknowledged and readable, and they
/// are pipelined: the bookie group-commits them in far fewer fsyncs than adds, which a
/// client or server that waited for each answer before the next request could not do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_adds_on_one_connection_are_all_acked_and_readable() {
    let b = start_bookie().await;
    let c = client();
    let ledger = LedgerId(7);
    let n = 1000u64;
    let adds = (0..n).map(|i| {
        let c = c.clone();
        let addr = b.addr.clone();
        async move {
            c.add(&addr, ledger, EntryId(i), None, payload(7, i, 100), false)
                .await
        }
    });
    let results = futures::future::join_all(adds).await;
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "add {i}: {r:?}");
    }
    let stats = b.server.stats();
    assert_eq!(stats.adds, n);
    assert_eq!(stats.connections, 1, "one cached connection");
    assert!(
        stats.storage.batches < n / 4,
        "{} group commits for {n} adds: not pipelined",
        stats.storage.batches
    );
    let reads = (0..n).map(|i| {
        let c = c.clone();
        let addr = b.addr.clone();
        async move { (i, c.read(&addr, ledger, EntryId(i), false).await) }
    });
    for (i, r) in futures::future::join_all(reads).await {
        assert_eq!(r.expect("read").payload, payload(7, i, 100), "entry {i}");
    }
    c.close().await;
    b.server.shutdown().await;
}

/// A fencing LAC read or a fencing entry read fences the ledger: later normal adds fail with
/// `Fenced`, recovery adds still succeed, and the fence reports the last entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_reads_refuse_normal_adds_and_allow_recovery_adds() {
    let b = start_bookie().await;
    let c = client();
    let (l1, l2) = (LedgerId(1), LedgerId(2));
    for e in 0..2u64 {
        c.add(
            &b.addr,
            l1,
            EntryId(e),
            e.checked_sub(1).map(EntryId),
            payload(1, e, 10),
            false,
        )
        .await
        .expect("add");
        c.add(&b.addr, l2, EntryId(e), None, payload(2, e, 10), false)
            .await
            .expect("add");
    }

    let lac = c
        .read_lac(&b.addr, l1, true)
        .await
        .expect("fencing lac read");
    assert!(lac.fenced);
    assert_eq!(lac.last_entry, Some(EntryId(1)));
    assert_eq!(lac.last_add_confirmed, Some(EntryId(0)));
    let refused = c
        .add(&b.addr, l1, EntryId(2), None, payload(1, 2, 10), false)
        .await;
    assert!(
        matches!(&refused, Err(BookieRpcError::Fenced { ledger, .. }) if *ledger == l1),
        "{refused:?}"
    );
    assert!(
        !refused
            .as_ref()
            .err()
            .is_some_and(BookieRpcError::is_retryable)
    );
    c.add(&b.addr, l1, EntryId(2), None, payload(1, 2, 10), true)
        .await
        .expect("recovery add");
    assert_eq!(
        c.read(&b.addr, l1, EntryId(2), false)
            .await
            .expect("read")
            .payload,
        payload(1, 2, 10)
    );

    // A fencing entry read fences too, and still returns the entry.
    let read = c
        .read(&b.addr, l2, EntryId(1), true)
        .await
        .expect("fencing read");
    assert_eq!(read.payload, payload(2, 1, 10));
    assert!(matches!(
        c.add(&b.addr, l2, EntryId(2), None, payload(2, 2, 10), false)
            .await,
        Err(BookieRpcError::Fenced { .. })
    ));
    assert_eq!(b.server.stats().fences, 2);
    c.close().await;
    b.server.shutdown().await;
}

/// A read past the last entry is `NoSuchEntry` naming the entry; reads of a ledger the bookie
/// never saw are `NoSuchLedger`; neither is retryable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_entries_and_ledgers_are_typed_errors() {
    let b = start_bookie().await;
    let c = client();
    c.add(
        &b.addr,
        LedgerId(3),
        EntryId(0),
        None,
        payload(3, 0, 10),
        false,
    )
    .await
    .expect("add");
    let past = c.read(&b.addr, LedgerId(3), EntryId(1), false).await;
    assert!(
        matches!(&past, Err(BookieRpcError::NoSuchEntry { ledger, entry, .. })
            if *ledger == LedgerId(3) && *entry == EntryId(1)),
        "{past:?}"
    );
    assert_eq!(past.expect_err("past").code(), Some(ErrorCode::NoSuchEntry));
    for result in [
        c.read(&b.addr, LedgerId(99), EntryId(0), false)
            .await
            .map(|_| ()),
        c.read_lac(&b.addr, LedgerId(99), false).await.map(|_| ()),
    ] {
        let err = result.expect_err("unknown ledger");
        assert!(
            matches!(&err, BookieRpcError::NoSuchLedger { ledger, .. } if *ledger == LedgerId(99)),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    }
    c.close().await;
    b.server.shutdown().await;
}

/// A byte flipped in a stored entry comes back over the wire as a typed `ChecksumMismatch`
/// (never the bytes), counted on the server; the neighbouring entries still read fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_entry_is_a_typed_checksum_mismatch_over_the_wire() {
    let b = start_bookie().await;
    let c = client();
    let ledger = LedgerId(4);
    for e in 0..3u64 {
        c.add(&b.addr, ledger, EntryId(e), None, payload(4, e, 200), false)
            .await
            .expect("add");
    }
    c.close().await;
    let Bookie { dir, server, .. } = b;
    server.shutdown().await;

    support::corrupt_entry_on_disk(&dir.path().join("bookie"), ledger, EntryId(1));

    let storage =
        BookieStorage::open(&dir.path().join("bookie"), StorageOptions::default()).expect("reopen");
    let server = start_server(dir.path(), storage, NEVER_READ_ONLY);
    let addr = addr_of(&server);
    let c = client();
    let err = c
        .read(&addr, ledger, EntryId(1), false)
        .await
        .expect_err("corrupt entry must not be returned");
    assert!(
        matches!(&err, BookieRpcError::ChecksumMismatch { ledger: l, entry, .. }
            if *l == ledger && *entry == EntryId(1)),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    for e in [0u64, 2] {
        assert_eq!(
            c.read(&addr, ledger, EntryId(e), false)
                .await
                .expect("intact")
                .payload,
            payload(4, e, 200)
        );
    }
    let stats = server.stats();
    assert_eq!(stats.checksum_mismatches, 1);
    assert_eq!(stats.storage.corrupt_reads, 1);
    assert!(
        stats
            .render_prometheus()
            .contains("strata_bookie_corrupt_reads_total 1\n")
    );
    c.close().await;
    server.shutdown().await;
}

/// A long-poll LAC read answers as soon as an add raises the LAC above the asked value, and
/// otherwise after its timeout with the unchanged LAC; one already satisfied answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_lac_wakes_on_add_and_times_out_otherwise() {
    let b = start_bookie().await;
    let c = client();
    let ledger = LedgerId(5);
    c.add(&b.addr, ledger, EntryId(0), None, payload(5, 0, 10), false)
        .await
        .expect("add");
    c.add(
        &b.addr,
        ledger,
        EntryId(1),
        Some(EntryId(0)),
        payload(5, 1, 10),
        false,
    )
    .await
    .expect("add");

    // Already above: immediate.
    let started = Instant::now();
    let lac = c
        .read_lac_long_poll(&b.addr, ledger, None, Duration::from_secs(30))
        .await
        .expect("poll");
    assert_eq!(lac.last_add_confirmed, Some(EntryId(0)));
    assert!(started.elapsed() < Duration::from_secs(10));

    // Nothing new: the timeout answers with the same LAC.
    let started = Instant::now();
    let lac = c
        .read_lac_long_poll(
            &b.addr,
            ledger,
            Some(EntryId(0)),
            Duration::from_millis(300),
        )
        .await
        .expect("poll");
    assert_eq!(lac.last_add_confirmed, Some(EntryId(0)));
    assert!(started.elapsed() >= Duration::from_millis(300));

    // An add that raises the LAC wakes a waiting poll long before its timeout.
    let poll = {
        let (c, addr) = (c.clone(), b.addr.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let lac = c
                .read_lac_long_poll(&addr, ledger, Some(EntryId(0)), Duration::from_secs(30))
                .await;
            (lac, started.elapsed())
        })
    };
    wait_until("the poll to wait", || b.server.stats().long_polls == 1).await;
    c.add(
        &b.addr,
        ledger,
        EntryId(2),
        Some(EntryId(1)),
        payload(5, 2, 10),
        false,
    )
    .await
    .expect("add");
    let (lac, waited) = poll.await.expect("poll task");
    assert_eq!(lac.expect("poll").last_add_confirmed, Some(EntryId(1)));
    assert!(waited < Duration::from_secs(10), "woke after {waited:?}");
    c.close().await;
    b.server.shutdown().await;
}

/// With less free space than the threshold the bookie refuses adds with a typed `ReadOnly`
/// error saying why, keeps serving reads, and reports itself read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_bookie_refuses_adds_and_serves_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage =
        BookieStorage::open(&dir.path().join("bookie"), StorageOptions::default()).expect("open");
    storage
        .add_entry(LedgerId(6), EntryId(0), None, payload(6, 0, 10), false)
        .await
        .expect("local add");
    let full = DiskThreshold {
        min_free_bytes: u64::MAX,
        min_free_ratio: 0.0,
    };
    let server = start_server(dir.path(), storage, full);
    let addr = addr_of(&server);
    assert!(server.is_read_only());
    let c = client();

    let err = c
        .add(
            &addr,
            LedgerId(6),
            EntryId(1),
            Some(EntryId(0)),
            payload(6, 1, 10),
            false,
        )
        .await
        .expect_err("read-only");
    match &err {
        BookieRpcError::ReadOnly { message, .. } => {
            assert!(
                message.contains("read-only") && message.contains("free"),
                "{message}"
            )
        }
        other => panic!("expected ReadOnly, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(
        c.read(&addr, LedgerId(6), EntryId(0), false)
            .await
            .expect("read")
            .payload,
        payload(6, 0, 10)
    );
    // Recovery adds are still accepted (BookKeeper's high-priority writes).
    c.add(
        &addr,
        LedgerId(6),
        EntryId(1),
        None,
        payload(6, 1, 10),
        true,
    )
    .await
    .expect("recovery add on a read-only bookie");
    let stats = server.stats();
    assert!(stats.disk.read_only);
    assert_eq!(stats.read_only_rejections, 1);
    assert!(
        stats
            .render_prometheus()
            .contains("strata_bookie_read_only 1\n")
    );
    c.close().await;
    server.shutdown().await;
}

/// A raw connection to the bookie: the handshake done, ready for streams.
async fn raw_connection(addr: &str) -> quinn::Connection {
    let sock = addr.parse().expect("addr");
    let endpoint = client_endpoint(
        sock,
        &ClientTrust::LoopbackDev,
        strata_proto::ALPN_BOOKIE,
        &TransportTuning::default(),
    )
    .expect("endpoint");
    let conn = endpoint
        .connect(sock, "127.0.0.1")
        .expect("connect")
        .await
        .expect("connected");
    client_handshake(&conn, "raw-test", 1024 * 1024)
        .await
        .expect("handshake");
    conn
}

fn frame(body: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.put_slice(body);
    buf.freeze()
}

fn lac_request(id: u64, ledger: u64) -> Bytes {
    let req = BookieRequest {
        request_id: id,
        request: Some(bookie_request::Request::ReadLac(ReadLac {
            ledger_id: ledger,
            ..ReadLac::default()
        })),
    };
    frame(&req.encode_to_vec())
}

/// Reads every response frame until the stream ends.
async fn read_all(recv: &mut quinn::RecvStream) -> Vec<BookieResponse> {
    let bytes = tokio::time::timeout(Duration::from_secs(20), recv.read_to_end(1 << 20))
        .await
        .expect("stream ends")
        .expect("read");
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        out.push(BookieResponse::decode(&rest[4..4 + len]).expect("response"));
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes");
    out
}

/// A frame that is not a `BookieRequest`, or one over the size limit, ends only its stream:
/// requests read before it are answered, then an error with request id 0 and the stream's end,
/// and the bookie stops the stream with the protocol-violation code. Other streams and
/// connections go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_ends_only_its_stream() {
    let b = start_bookie().await;
    let c = client();
    c.add(
        &b.addr,
        LedgerId(8),
        EntryId(0),
        Some(EntryId(0)),
        payload(8, 0, 10),
        false,
    )
    .await
    .expect("add");
    let conn = raw_connection(&b.addr).await;

    for (garbage, code) in [
        (
            frame(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            ErrorCode::MalformedFrame,
        ),
        (
            Bytes::from_static(&[0xff, 0xff, 0xff, 0xf0]),
            ErrorCode::FrameTooLarge,
        ),
    ] {
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(&lac_request(7, 8)).await.expect("write");
        send.write_all(&garbage).await.expect("write");
        let answers = read_all(&mut recv).await;
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert_eq!(answers[0].request_id, 7);
        assert!(matches!(
            &answers[0].response,
            Some(bookie_response::Response::Lac(l)) if l.last_add_confirmed == Some(0)
        ));
        assert_eq!(answers[1].request_id, 0);
        match &answers[1].response {
            Some(bookie_response::Response::Error(e)) => assert_eq!(e.code, code as u32, "{e:?}"),
            other => panic!("expected an error, got {other:?}"),
        }
        let stopped = tokio::time::timeout(Duration::from_secs(20), send.stopped())
            .await
            .expect("stopped in time")
            .expect("stopped");
        assert_eq!(
            stopped,
            Some(quinn::VarInt::from_u32(close_code::PROTOCOL_VIOLATION))
        );
    }

    // The same connection still serves a new stream, and other connections are untouched.
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(&lac_request(9, 8)).await.expect("write");
    send.finish().expect("finish");
    let answers = read_all(&mut recv).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].request_id, 9);
    c.add(
        &b.addr,
        LedgerId(8),
        EntryId(1),
        Some(EntryId(0)),
        payload(8, 1, 10),
        false,
    )
    .await
    .expect("other connection still served");
    assert_eq!(b.server.stats().protocol_errors, 2);
    conn.close(quinn::VarInt::from_u32(0), b"done");
    c.close().await;
    b.server.shutdown().await;
}

/// Shutdown in the middle of a stream of adds finishes what it already read: afterwards the
/// entries stored are exactly the adds the client saw acknowledged (none stored without an
/// answer, none answered without being stored), and the bookie accepts no new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_adds_and_refuses_new_work() {
    let b = start_bookie().await;
    let c = client();
    let ledger = LedgerId(9);
    // A writer keeping up to 256 adds in flight until its adds fail.
    let writer = {
        let (c, addr) = (c.clone(), b.addr.clone());
        tokio::spawn(async move {
            let window = Arc::new(tokio::sync::Semaphore::new(256));
            let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut adds = Vec::new();
            for i in 0..1_000_000u64 {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let permit = window.clone().acquire_owned().await.expect("window");
                let (c, addr, failed) = (c.clone(), addr.clone(), failed.clone());
                adds.push(tokio::spawn(async move {
                    let result = c
                        .add(&addr, ledger, EntryId(i), None, payload(9, i, 1000), false)
                        .await;
                    if result.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    drop(permit);
                    (i, result.is_ok())
                }));
            }
            let mut acked = Vec::new();
            for add in adds {
                let (i, ok) = add.await.expect("add task");
                if ok {
                    acked.push(i);
                }
            }
            acked
        })
    };
    wait_until("some adds stored", || b.server.stats().adds >= 500).await;
    let storage_dir = b.storage_dir();
    let Bookie { dir, server, addr } = b;
    server.shutdown().await;
    let acked = writer.await.expect("writer");
    assert!(acked.len() >= 500, "{} acked", acked.len());

    let late = client()
        .add(
            &addr,
            ledger,
            EntryId(u64::MAX),
            None,
            payload(9, 0, 10),
            false,
        )
        .await;
    assert!(
        matches!(
            late,
            Err(BookieRpcError::Unreachable { .. } | BookieRpcError::Timeout { .. })
        ),
        "{late:?}"
    );
    let storage = BookieStorage::open(&storage_dir, StorageOptions::default()).expect("reopen");
    let last = storage
        .last_entry(ledger)
        .expect("ledger")
        .expect("entries")
        .0;
    let stored: Vec<u64> = (0..=last)
        .filter(|&i| storage.read_entry(ledger, EntryId(i)).is_ok())
        .collect();
    assert_eq!(
        stored, acked,
        "stored entries differ from acknowledged adds"
    );
    drop(dir);
}

fn disk(read_only: bool) -> DiskStatus {
    DiskStatus {
        free_bytes: 1000,
        total_bytes: 2000,
        required_free_bytes: 100,
        read_only,
    }
}

/// Registration writes a lease-bound record under `/bookies/available/<id>`, flips
/// `writable` when the disk status does, registers again under a new lease when its lease is
/// revoked from outside, and is deleted when the registration is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_lease_bound_refreshed_renewed_and_removed_on_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = MetaStore::open_standalone(dir.path(), MetaStoreConfig::default())
        .await
        .expect("metastore");
    let (disk_tx, disk_rx) = tokio::sync::watch::channel(disk(false));
    let mut config = RegistrationConfig::new("bookie-a".into(), "127.0.0.1:3181".into());
    config.rack = Some("rack-1".into());
    config.ttl = Duration::from_secs(2);
    config.refresh_interval = Duration::from_millis(200);
    config.retry_interval = Duration::from_millis(50);
    let reg = Registration::start(meta.clone(), config, disk_rx);
    assert_eq!(reg.key(), format!("{BOOKIES_AVAILABLE_PREFIX}bookie-a"));

    let meta_ref = Arc::new(meta.clone());
    let current = || {
        let meta = meta_ref.clone();
        async move {
            registration::get_bookie(&*meta, "bookie-a")
                .await
                .expect("get")
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(r) = current().await {
            break r;
        }
        assert!(Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(first.record.address, "127.0.0.1:3181");
    assert_eq!(first.record.rack.as_deref(), Some("rack-1"));
    assert!(first.record.writable);
    assert_eq!(first.record.free_bytes, 1000);
    assert_ne!(first.lease, 0, "bound to a lease");
    wait_until("registered flag", || reg.lease_id() == Some(first.lease)).await;
    let listed = registration::list_bookies(&meta).await.expect("list");
    assert_eq!(listed.len(), 1);

    // Read-only flips the record's writable flag promptly.
    disk_tx.send_replace(disk(true));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = current().await.expect("registered");
        if !r.record.writable {
            assert!(r.version > first.version);
            break;
        }
        assert!(Instant::now() < deadline, "writable never turned false");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Losing the lease (revoked behind the bookie's back) leads to a new registration.
    meta.lease_revoke(first.lease).await.expect("revoke");
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        if let Some(r) = current().await
            && r.lease != first.lease
        {
            break r;
        }
        assert!(Instant::now() < deadline, "never registered again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_ne!(second.lease, 0);
    assert!(!second.record.writable);

    // Closing revokes the lease: the key is gone as soon as close returns.
    reg.close().await;
    assert!(current().await.is_none(), "registration outlived close");
    assert!(meta.lease_keep_alive(second.lease).await.is_err());
    meta.shutdown().await.expect("shutdown");
}
