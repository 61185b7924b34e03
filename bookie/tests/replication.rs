//! Replicated ledgers over real bookies (QUIC, RocksDB) and a real metastore: quorum writes
//! through bookie failures, fencing, recovery, racing recoveries, corrupt replicas,
//! speculative reads and tailing reads.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_bookie::registration::{BookieRegistration, registration_key};
use strata_bookie::{LedgerClientOptions, LedgerConfig, LedgerError, LedgerWriter};
use strata_metastore::Expect;
use strata_metastore::tables::Record;
use strata_proto::EntryId;
use support::{TestCluster, corrupt_entry_on_disk, payload};
use tokio::task::JoinHandle;

const E3_QW3_QA2: LedgerConfig = LedgerConfig::replicated();

/// Adds `n` entries with at most `window` in flight; returns the acknowledged ids in order.
fn write_stream(writer: Arc<LedgerWriter>, first: u64, n: u64) -> JoinHandle<Vec<EntryId>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut window = std::collections::VecDeque::new();
        for i in first..first + n {
            window.push_back(writer.add(payload(i)));
            if window.len() >= 32 {
                let add = window.pop_front().expect("in window");
                acked.push(add.await.expect("add acknowledged"));
            }
        }
        for add in window {
            acked.push(add.await.expect("add acknowledged"));
        }
        acked
    })
}

/// Reads the whole ledger back with a fresh client and checks every entry's content.
async fn assert_readable(cluster: &TestCluster, writer: &LedgerWriter, n: u64) {
    let reader = cluster
        .client()
        .open_ledger(writer.id())
        .await
        .expect("open for reading");
    assert!(reader.is_closed());
    assert_eq!(reader.last_entry(), Some(EntryId(n - 1)));
    let entries = reader
        .read(EntryId(0), EntryId(n - 1))
        .await
        .expect("read all");
    for (i, (id, data)) in entries.iter().enumerate() {
        assert_eq!(id.0, i as u64);
        assert_eq!(data, &payload(i as u64), "content of entry {i}");
    }
}

/// Under a continuous stream of adds to E3/Qw3/Qa2, a bookie of the ensemble stops: the writer
/// sees no error, the bookie is replaced in a new fragment, and every acknowledged entry reads
/// back afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bookie_failing_under_load_is_replaced_without_errors() {
    let mut cluster = TestCluster::start(4).await;
    let client = cluster.client();
    let writer = Arc::new(client.create_ledger(E3_QW3_QA2).await.expect("create"));
    let ensemble = writer.metadata().fragments[0].bookies.clone();

    let stream = write_stream(writer.clone(), 0, 3000);
    support::wait_until("some entries acknowledged", || {
        writer.last_add_confirmed() >= Some(EntryId(300))
    })
    .await;
    let victim = cluster.index_of(&ensemble[1]);
    cluster.stop(victim).await;
    let acked = stream.await.expect("stream");
    assert_eq!(acked.len(), 3000);
    assert!(acked.windows(2).all(|w| w[1].0 == w[0].0 + 1), "in order");

    // The last adds may all reach Qa on the two live bookies before the stopped one's copies
    // fail; the replacement follows that failure.
    support::wait_until("a new fragment", || writer.metadata().fragments.len() >= 2).await;
    let md = writer.metadata();
    let last = md.fragments.last().expect("fragment");
    assert!(
        !last.bookies.contains(&ensemble[1]),
        "the stopped bookie is out"
    );
    assert!(client.stats().ensemble_changes >= 1);
    assert_eq!(writer.close().await.expect("close"), Some(EntryId(2999)));
    assert_readable(&cluster, &writer, 3000).await;
    cluster.shutdown().await;
}

/// With exactly three bookies there is no replacement: the writer goes on with the two left
/// (Qa = 2), and every entry stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_spare_bookie_the_writer_goes_on_with_an_ack_quorum() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let writer = Arc::new(client.create_ledger(E3_QW3_QA2).await.expect("create"));
    let stream = write_stream(writer.clone(), 0, 1000);
    support::wait_until("some entries acknowledged", || {
        writer.last_add_confirmed() >= Some(EntryId(100))
    })
    .await;
    cluster.stop(2).await;
    assert_eq!(stream.await.expect("stream").len(), 1000);
    assert!(client.stats().postponed_changes >= 1);
    assert_eq!(writer.close().await.expect("close"), Some(EntryId(999)));
    assert_readable(&cluster, &writer, 1000).await;

    // A new E3 ledger cannot be placed on the two bookies left.
    let writer = client.create_ledger(E3_QW3_QA2).await;
    assert!(
        matches!(writer, Err(LedgerError::NotEnoughBookies { needed: 3, .. })),
        "{writer:?}"
    );
    cluster.shutdown().await;
}

/// Recovery while the writer is still adding: afterwards the old writer is fenced, and the
/// ledger closes at or after the last entry acknowledged to it, with every acknowledged entry
/// readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_fences_the_writer_and_keeps_every_acknowledged_entry() {
    let cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let writer = Arc::new(client.create_ledger(E3_QW3_QA2).await.expect("create"));
    let id = writer.id();
    // Adds keep coming while the recovery runs; some will fail once fenced.
    let adder = {
        let writer = writer.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                match writer.add(payload(i)).await {
                    Ok(e) => acked.push(e),
                    Err(LedgerError::Fenced(_)) => return acked,
                    Err(e) => panic!("unexpected add error {e}"),
                }
            }
            acked
        })
    };
    support::wait_until("entries acknowledged", || {
        writer.last_add_confirmed() >= Some(EntryId(50))
    })
    .await;
    let recovered = cluster.client().recover(id).await.expect("recover");
    let acked = adder.await.expect("adder");
    assert!(recovered.closed_by_this_call);
    let last_acked = acked.last().copied();
    assert!(
        recovered.last_entry >= last_acked,
        "closed at {:?}, but {last_acked:?} was acknowledged",
        recovered.last_entry
    );
    assert!(matches!(
        writer.add(payload(0)).await,
        Err(LedgerError::Fenced(l)) if l == id
    ));
    assert!(matches!(writer.close().await, Err(LedgerError::Fenced(_))));
    let last = recovered.last_entry.expect("entries");
    let reader = cluster.client().open_ledger(id).await.expect("open");
    let entries = reader.read(EntryId(0), last).await.expect("read");
    for (id, data) in entries {
        assert_eq!(data, payload(id.0));
    }
    let expected_length: u64 = (0..=last.0).map(|i| payload(i).len() as u64).sum();
    assert_eq!(
        recovered.length_bytes, expected_length,
        "length from the header"
    );
    cluster.shutdown().await;
}

/// Recovery with one bookie of the ensemble gone still decides (the others cover every ack
/// quorum) and keeps every acknowledged entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_succeeds_with_a_bookie_down() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let writer = client.create_ledger(E3_QW3_QA2).await.expect("create");
    for i in 0..20 {
        writer.add(payload(i)).await.expect("add");
    }
    cluster.stop(0).await;
    let recovered = cluster
        .client()
        .recover(writer.id())
        .await
        .expect("recover");
    assert_eq!(recovered.last_entry, Some(EntryId(19)));
    assert_readable(&cluster, &writer, 20).await;
    cluster.shutdown().await;
}

/// Two recoveries of one ledger at once: exactly one closes it, the other adopts the same
/// end without writing, and neither fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_racing_recoveries_exactly_one_closes_the_ledger() {
    let cluster = TestCluster::start(3).await;
    let client = cluster.client();
    for round in 0..5u64 {
        let writer = client.create_ledger(E3_QW3_QA2).await.expect("create");
        let adds: Vec<_> = (0..10 + round).map(|i| writer.add(payload(i))).collect();
        for add in adds {
            add.await.expect("add");
        }
        let (a, b) = (cluster.client(), cluster.client());
        let id = writer.id();
        let (ra, rb) = tokio::join!(a.recover(id), b.recover(id));
        let (ra, rb) = (ra.expect("recovery a"), rb.expect("recovery b"));
        assert_eq!(
            u8::from(ra.closed_by_this_call) + u8::from(rb.closed_by_this_call),
            1,
            "round {round}: {ra:?} {rb:?}"
        );
        assert_eq!(ra.last_entry, rb.last_entry);
        assert_eq!(ra.last_entry, Some(EntryId(9 + round)));
        let (md, _) = client.metadata(id).await.expect("metadata");
        assert_eq!(md.last_entry_id, Some(9 + round));
    }
    cluster.shutdown().await;
}

/// A byte flipped in one bookie's copy: the read is served from another replica, and the
/// corruption is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_replica_is_skipped_and_counted() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let writer = client.create_ledger(E3_QW3_QA2).await.expect("create");
    for i in 0..6 {
        writer.add(payload(i)).await.expect("add");
    }
    writer.close().await.expect("close");
    // Entry 0's write set starts at ensemble index 0: that replica is read first.
    let first = writer.metadata().fragments[0].bookies[0].clone();
    let i = cluster.index_of(&first);
    cluster.stop(i).await;
    corrupt_entry_on_disk(&cluster.storage_dir(i), writer.id(), EntryId(0));
    cluster.restart(i).await;

    let reader_client = cluster.client();
    let reader = reader_client.open_ledger(writer.id()).await.expect("open");
    let entries = reader.read(EntryId(0), EntryId(5)).await.expect("read");
    assert_eq!(entries[0].1, payload(0), "served from a good replica");
    let stats = reader_client.stats();
    assert_eq!(stats.corrupt_replicas, 1);
    assert!(stats.read_failovers >= 1);
    assert!(
        stats
            .render_prometheus()
            .contains("\nstrata_ledger_corrupt_replicas_total 1\n"),
        "reported in metrics"
    );
    assert_eq!(cluster.server(i).stats().storage.corrupt_reads, 1);
    cluster.shutdown().await;
}

/// A replica that never answers (its registration points at a socket that drops every
/// packet): the read goes to the next replica after the speculative delay and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replica_triggers_a_speculative_read() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let writer = client.create_ledger(E3_QW3_QA2).await.expect("create");
    writer.add(payload(0)).await.expect("add");
    writer.close().await.expect("close");
    let first = writer.metadata().fragments[0].bookies[0].clone();
    let i = cluster.index_of(&first);
    cluster.stop(i).await;
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let record = BookieRegistration {
        bookie_id: first.clone(),
        address: black_hole.local_addr().expect("addr").to_string(),
        rack: None,
        writable: true,
        free_bytes: 0,
        total_bytes: 0,
        registered_ms: 0,
        updated_ms: 0,
    };
    cluster
        .meta()
        .put(
            &registration_key(&first),
            record.encode().expect("encode"),
            Expect::Any,
        )
        .await
        .expect("register the black hole");

    let reader_client = cluster.client_with(LedgerClientOptions {
        speculative_read_delay: Some(Duration::from_millis(50)),
        ..LedgerClientOptions::default()
    });
    let reader = reader_client.open_ledger(writer.id()).await.expect("open");
    let entries = reader.read(EntryId(0), EntryId(0)).await.expect("read");
    assert_eq!(entries[0].1, payload(0));
    assert!(reader_client.stats().speculative_reads >= 1);
    drop(black_hole);
    cluster.shutdown().await;
}

/// A tailing reader's long poll returns once the writer's adds move the last-add-confirmed
/// the bookies know past what the reader has seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailing_reader_long_polls_the_last_add_confirmed() {
    let cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let writer = Arc::new(client.create_ledger(E3_QW3_QA2).await.expect("create"));
    writer.add(payload(0)).await.expect("add");
    let reader = cluster
        .client()
        .open_ledger(writer.id())
        .await
        .expect("open");
    let seen = reader.last_entry();
    let poll = tokio::spawn(async move {
        let after = reader
            .wait_for_entries_after(seen, Duration::from_secs(20))
            .await
            .expect("long poll");
        (after, reader)
    });
    for i in 1..5 {
        writer.add(payload(i)).await.expect("add");
    }
    let (after, reader) = poll.await.expect("poll task");
    assert!(after > seen, "{after:?} after {seen:?}");
    let last = after.expect("an entry");
    let entries = reader.read(EntryId(0), last).await.expect("read");
    assert_eq!(entries.len() as u64, last.0 + 1);
    cluster.shutdown().await;
}

/// Bad input gets typed errors: an entry too large, a read past the last-add-confirmed, an
/// add to a closed ledger, an unknown ledger, an impossible config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors() {
    let cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let writer = client.create_ledger(E3_QW3_QA2).await.expect("create");
    let huge = Bytes::from(vec![0u8; client.options().max_entry_bytes + 1]);
    assert!(matches!(
        writer.add(huge).await,
        Err(LedgerError::EntryTooLarge { .. })
    ));
    writer.add(payload(0)).await.expect("the writer goes on");
    assert!(matches!(
        writer.read(EntryId(0), EntryId(1)).await,
        Err(LedgerError::ReadBeyondLastAddConfirmed { .. })
    ));
    writer.close().await.expect("close");
    assert!(matches!(
        writer.add(payload(1)).await,
        Err(LedgerError::LedgerClosed(_))
    ));
    let reader = client.open_ledger(writer.id()).await.expect("open");
    assert!(matches!(
        reader.read(EntryId(0), EntryId(1)).await,
        Err(LedgerError::ReadBeyondLastAddConfirmed { .. })
    ));
    assert!(matches!(
        reader.read(EntryId(1), EntryId(0)).await,
        Err(LedgerError::InvalidRange { .. })
    ));
    let unknown = strata_proto::LedgerId(9_999_999);
    assert!(matches!(
        client.open_ledger(unknown).await,
        Err(LedgerError::NoSuchLedger(_))
    ));
    assert!(matches!(
        client.recover(unknown).await,
        Err(LedgerError::NoSuchLedger(_))
    ));
    assert!(matches!(
        client
            .create_ledger(LedgerConfig {
                ensemble_size: 4,
                write_quorum: 3,
                ack_quorum: 2
            })
            .await,
        Err(LedgerError::NotEnoughBookies {
            needed: 4,
            available: 3
        })
    ));
    cluster.shutdown().await;
}

/// Deleting a ledger removes its data from every bookie that held it and its metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_data_on_every_bookie() {
    let cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let writer = client.create_ledger(E3_QW3_QA2).await.expect("create");
    for i in 0..10 {
        writer.add(payload(i)).await.expect("add");
    }
    writer.close().await.expect("close");
    let id = writer.id();
    for i in 0..3 {
        assert!(
            cluster
                .server(i)
                .storage()
                .ledgers()
                .expect("list")
                .contains(&id)
        );
    }
    client.delete_ledger(id).await.expect("delete");
    for i in 0..3 {
        assert!(
            !cluster
                .server(i)
                .storage()
                .ledgers()
                .expect("list")
                .contains(&id)
        );
    }
    assert!(matches!(
        client.metadata(id).await,
        Err(LedgerError::NoSuchLedger(_))
    ));
    cluster.shutdown().await;
}

/// A ledger deleted while one of its bookies was down stays on that bookie until its garbage
/// collector runs; then it is gone there too, and other ledgers are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_removes_ledgers_deleted_while_a_bookie_was_away() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let writer = client.create_ledger(E3_QW3_QA2).await.expect("create");
        for i in 0..5 {
            writer.add(payload(i)).await.expect("add");
        }
        writer.close().await.expect("close");
        ids.push(writer.id());
    }
    let (deleted, kept) = (ids[0], ids[1]);
    cluster.stop(2).await;
    client
        .delete_ledger(deleted)
        .await
        .expect("delete with a bookie down");
    cluster.restart(2).await;
    let storage = cluster.server(2).storage().clone();
    assert!(
        storage.ledgers().expect("list").contains(&deleted),
        "still there"
    );
    let table = strata_metastore::tables::Table::new(cluster.meta().clone());
    let collected = strata_bookie::gc::collect_once(&storage, &table)
        .await
        .expect("gc");
    assert_eq!(collected, vec![deleted]);
    let left = storage.ledgers().expect("list");
    assert!(!left.contains(&deleted));
    assert!(left.contains(&kept));
    assert!(storage.read_entry(kept, EntryId(4)).is_ok());
    cluster.shutdown().await;
}

/// A bookie of the ensemble comes back read-only (out of disk): it says so in its
/// registration, the writer's adds to it fail with `ReadOnly` and it is replaced, the caller
/// sees no error, and new ensembles leave it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_bookie_is_replaced_and_left_out() {
    let mut cluster = TestCluster::start(4).await;
    let client = cluster.client();
    let writer = client.create_ledger(E3_QW3_QA2).await.expect("create");
    for i in 0..10 {
        writer.add(payload(i)).await.expect("add");
    }
    let member = writer.metadata().fragments[0].bookies[0].clone();
    let i = cluster.index_of(&member);
    cluster.stop(i).await;
    let full = strata_bookie::server::DiskThreshold {
        min_free_bytes: u64::MAX,
        min_free_ratio: 0.0,
    };
    cluster
        .inner
        .restart_with_threshold(i, full)
        .await
        .expect("restart read-only");
    assert!(cluster.server(i).is_read_only());
    let registered = strata_bookie::registration::list_bookies(cluster.meta())
        .await
        .expect("list");
    let record = registered
        .iter()
        .find(|b| b.record.bookie_id == member)
        .expect("registered");
    assert!(!record.record.writable, "the registration says read-only");

    for i in 10..30 {
        writer
            .add(payload(i))
            .await
            .expect("add after the bookie turned read-only");
    }
    let last = writer
        .metadata()
        .fragments
        .last()
        .cloned()
        .expect("fragment");
    assert!(
        !last.bookies.contains(&member),
        "replaced: {:?}",
        last.bookies
    );
    assert_eq!(writer.close().await.expect("close"), Some(EntryId(29)));
    assert_readable(&cluster, &writer, 30).await;
    for _ in 0..5 {
        let other = client.create_ledger(E3_QW3_QA2).await.expect("create");
        assert!(!other.metadata().fragments[0].bookies.contains(&member));
    }
    cluster.shutdown().await;
}
