//! Ledger client tests against a standalone metastore and one bookie.

use std::sync::Arc;

use bytes::Bytes;
use strata_bookie::{
    BookieError, BookieStorage, LedgerClient, LedgerConfig, LedgerError, StorageOptions,
};
use strata_metastore::tables::{Ledgers, Table};
use strata_metastore::{MetaStore, MetaStoreConfig};
use strata_proto::pb::bookie::LedgerState;
use strata_proto::{EntryId, LedgerId};

struct Setup {
    _dir: tempfile::TempDir,
    meta: MetaStore,
    bookie: BookieStorage,
    client: LedgerClient,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = MetaStore::open_standalone(&dir.path().join("meta"), MetaStoreConfig::default())
        .await
        .expect("metastore");
    let bookie =
        BookieStorage::open(&dir.path().join("bookie"), StorageOptions::default()).expect("bookie");
    let client = LedgerClient::local(meta.clone(), bookie.clone(), "bookie-1".into());
    Setup {
        _dir: dir,
        meta,
        bookie,
        client,
    }
}

fn entry(i: u64) -> Bytes {
    Bytes::from(format!("entry number {i}"))
}

/// Ids are assigned densely in call order, futures resolve (in any await order) only once
/// every earlier entry is confirmed, and the LAC ends at the last id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_get_dense_ids_in_call_order() {
    let s = setup().await;
    let writer = Arc::new(
        s.client
            .create_ledger(LedgerConfig::single())
            .await
            .expect("create"),
    );
    assert_eq!(writer.last_add_confirmed(), None);

    // One task: ids follow call order even when awaited backwards.
    let futures: Vec<_> = (0..100).map(|i| writer.add(entry(i))).collect();
    for (i, fut) in futures.into_iter().enumerate().rev() {
        let id = fut.await.expect("add");
        assert_eq!(id, EntryId(i as u64));
        assert!(
            writer.last_add_confirmed() >= Some(id),
            "resolved before confirmed"
        );
    }
    assert_eq!(writer.last_add_confirmed(), Some(EntryId(99)));

    // Many tasks: every id used once, increasing within each task.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..50 {
                let id = writer.add(Bytes::from_static(b"x")).await.expect("add");
                assert!(writer.last_add_confirmed() >= Some(id));
                ids.push(id.0);
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let ids = task.await.expect("task");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "per-task order {ids:?}"
        );
        all.extend(ids);
    }
    all.sort_unstable();
    assert_eq!(all, (100..500).collect::<Vec<_>>());
    assert_eq!(writer.entries_added(), 500);
    assert_eq!(writer.last_add_confirmed(), Some(EntryId(499)));
    let read = writer.read(EntryId(0), EntryId(99)).await.expect("read");
    assert!(read.iter().all(|(id, bytes)| *bytes == entry(id.0)));
}

/// Closing waits for in-flight adds and sets the metadata CLOSED at the last entry with the
/// ledger's length; it is idempotent, and later adds fail with `LedgerClosed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_sets_metadata_closed_at_last_entry() {
    let s = setup().await;
    let writer = s
        .client
        .create_ledger(LedgerConfig::single())
        .await
        .expect("create");
    let id = writer.id();
    let adds: Vec<_> = (0..10).map(|i| writer.add(entry(i))).collect();
    let expected_len: u64 = (0..10).map(|i| entry(i).len() as u64).sum();
    assert_eq!(writer.length_bytes(), expected_len);
    // Close without awaiting the adds first: close must wait for them.
    assert_eq!(writer.close().await.expect("close"), Some(EntryId(9)));
    for add in adds {
        add.await.expect("add in flight at close");
    }
    let (md, _) = s.client.metadata(id).await.expect("metadata");
    assert_eq!(md.state, LedgerState::Closed as i32);
    assert_eq!(md.last_entry_id, Some(9));
    assert_eq!(md.length_bytes, expected_len);
    assert_eq!(md.fragments[0].bookies, vec!["bookie-1".to_string()]);

    assert_eq!(writer.close().await.expect("close again"), Some(EntryId(9)));
    assert!(matches!(writer.add(entry(10)).await, Err(LedgerError::LedgerClosed(l)) if l == id));

    let reader = s.client.open_ledger(id).await.expect("open");
    assert!(reader.is_closed());
    assert_eq!(reader.last_entry(), Some(EntryId(9)));
    let read = reader.read(EntryId(0), EntryId(9)).await.expect("read");
    assert_eq!(read.len(), 10);
    assert!(read.iter().all(|(i, bytes)| *bytes == entry(i.0)));
}

/// A ledger closed with no entries has no last entry, and any read is beyond it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_ledger_closes_without_last_entry() {
    let s = setup().await;
    let writer = s
        .client
        .create_ledger(LedgerConfig::single())
        .await
        .expect("create");
    assert_eq!(writer.close().await.expect("close"), None);
    let reader = s.client.open_ledger(writer.id()).await.expect("open");
    assert!(reader.is_closed());
    assert!(matches!(
        reader.read(EntryId(0), EntryId(0)).await,
        Err(LedgerError::ReadBeyondLastAddConfirmed {
            last_add_confirmed: None,
            ..
        })
    ));
}

/// Reading past the last readable entry is a typed error, for closed ledgers and for the
/// writer's own reads; an inverted range is one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_past_last_entry_is_a_typed_error() {
    let s = setup().await;
    let writer = s
        .client
        .create_ledger(LedgerConfig::single())
        .await
        .expect("create");
    for i in 0..3 {
        writer.add(entry(i)).await.expect("add");
    }
    assert!(matches!(
        writer.read(EntryId(0), EntryId(3)).await,
        Err(LedgerError::ReadBeyondLastAddConfirmed {
            requested: EntryId(3),
            last_add_confirmed: Some(EntryId(2)),
            ..
        })
    ));
    writer.close().await.expect("close");
    let reader = s.client.open_ledger(writer.id()).await.expect("open");
    assert!(matches!(
        reader.read(EntryId(2), EntryId(5)).await,
        Err(LedgerError::ReadBeyondLastAddConfirmed {
            requested: EntryId(5),
            last_add_confirmed: Some(EntryId(2)),
            ..
        })
    ));
    assert!(matches!(
        reader.read(EntryId(2), EntryId(1)).await,
        Err(LedgerError::InvalidRange { .. })
    ));
}

/// A tailing reader (no fencing) reads up to the bookie's last-add-confirmed, sees it advance
/// on refresh, and sees the ledger close; the writer is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_reader_follows_the_writer() {
    let s = setup().await;
    let writer = s
        .client
        .create_ledger(LedgerConfig::single())
        .await
        .expect("create");
    let reader = s.client.open_ledger(writer.id()).await.expect("open empty");
    assert!(!reader.is_closed());
    assert_eq!(reader.last_entry(), None);

    for i in 0..5 {
        writer.add(entry(i)).await.expect("add");
    }
    // Entry 4 carried LAC 3: the bookie knows entries up to 3 are confirmed.
    assert_eq!(
        reader.refresh_last_add_confirmed().await.expect("refresh"),
        Some(EntryId(3))
    );
    assert_eq!(
        reader
            .read(EntryId(0), EntryId(3))
            .await
            .expect("read")
            .len(),
        4
    );
    assert!(matches!(
        reader.read(EntryId(0), EntryId(4)).await,
        Err(LedgerError::ReadBeyondLastAddConfirmed {
            last_add_confirmed: Some(EntryId(3)),
            ..
        })
    ));
    writer.add(entry(5)).await.expect("add");
    // The read refreshes once by itself.
    assert_eq!(
        reader
            .read(EntryId(4), EntryId(4))
            .await
            .expect("read after refresh")
            .len(),
        1
    );
    writer.close().await.expect("close");
    assert_eq!(
        reader.refresh_last_add_confirmed().await.expect("refresh"),
        Some(EntryId(5))
    );
    assert!(reader.is_closed());
    // The tailing reader did not fence: the metadata was closed by the writer itself.
    assert!(!s.bookie.is_fenced(writer.id()).expect("fenced?"));
}

/// Recovery of an open ledger fences its writer (the next add fails with `Fenced`, and so
/// does everything after) and closes the ledger at the last durable entry, including entries
/// past the bookie's last-add-confirmed, up to the first hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_fences_the_writer_and_closes_at_last_durable_entry() {
    let s = setup().await;
    let writer = s
        .client
        .create_ledger(LedgerConfig::single())
        .await
        .expect("create");
    let id = writer.id();
    for i in 0..5 {
        writer.add(entry(i)).await.expect("add");
    }
    assert_eq!(
        s.bookie.last_add_confirmed(id).expect("lac"),
        Some(EntryId(3))
    );
    // An entry durable beyond a hole (entry 5 missing) must not be included.
    s.bookie
        .add_entry(id, EntryId(6), None, entry(6), false)
        .await
        .expect("stray add");

    let reader = s
        .client
        .open_ledger_with_recovery(id)
        .await
        .expect("recover");
    assert!(reader.is_closed());
    assert_eq!(reader.last_entry(), Some(EntryId(4)));
    let (md, _) = s.client.metadata(id).await.expect("metadata");
    assert_eq!(md.state, LedgerState::Closed as i32);
    assert_eq!(md.last_entry_id, Some(4));
    assert_eq!(
        md.length_bytes,
        (0..5).map(|i| entry(i).len() as u64).sum::<u64>()
    );
    assert_eq!(
        reader
            .read(EntryId(0), EntryId(4))
            .await
            .expect("read")
            .len(),
        5
    );

    assert!(matches!(writer.add(entry(5)).await, Err(LedgerError::Fenced(l)) if l == id));
    assert!(matches!(writer.add(entry(6)).await, Err(LedgerError::Fenced(l)) if l == id));
    assert!(s.bookie.is_fenced(id).expect("fenced"));
}

/// No acknowledged add is lost by a recovery racing a busy writer: every add acknowledged
/// before the fence is within the recovered ledger, and every add after the first failure
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_racing_adds_loses_no_acknowledged_entry() {
    let s = setup().await;
    let writer = Arc::new(
        s.client
            .create_ledger(LedgerConfig::single())
            .await
            .expect("create"),
    );
    let id = writer.id();
    let adder = {
        let writer = writer.clone();
        tokio::spawn(async move {
            // Keep a window of adds in flight until the recovery fences the writer.
            let mut results = Vec::new();
            let mut window = std::collections::VecDeque::new();
            for i in 0..1_000_000u64 {
                window.push_back(writer.add(entry(i)));
                if window.len() < 16 {
                    continue;
                }
                let result = window.pop_front().expect("non-empty window").await;
                let failed = result.is_err();
                results.push(result);
                if failed {
                    break;
                }
            }
            for add in window {
                results.push(add.await);
            }
            results
        })
    };
    // Recover once the writer is under way.
    while writer.last_add_confirmed().is_none() {
        tokio::task::yield_now().await;
    }
    let reader = s
        .client
        .open_ledger_with_recovery(id)
        .await
        .expect("recover");
    let results = adder.await.expect("adder");
    let acked: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|e| e.0)
        .collect();
    assert_eq!(
        acked,
        (0..acked.len() as u64).collect::<Vec<_>>(),
        "acks are dense and come before every failure"
    );
    if let Some(&last_acked) = acked.last() {
        assert!(
            reader.last_entry() >= Some(EntryId(last_acked)),
            "acked entry lost by recovery"
        );
    }
    // Every add after the first failure failed too, and with `Fenced`.
    let first_failure = results
        .iter()
        .position(Result::is_err)
        .expect("the writer was fenced");
    for r in &results[first_failure..] {
        assert!(matches!(r, Err(LedgerError::Fenced(_))), "{r:?}");
    }
    assert!(matches!(
        writer.add(entry(9999)).await,
        Err(LedgerError::Fenced(_))
    ));
    if let Some(last) = reader.last_entry() {
        assert_eq!(
            reader.read(EntryId(0), last).await.expect("read all").len() as u64,
            last.0 + 1
        );
    }
}

/// Recovering twice is idempotent: the second recovery changes nothing and reports the same
/// last entry; a ledger left IN_RECOVERY by a recovery that died is recovered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_idempotent() {
    let s = setup().await;
    let writer = s
        .client
        .create_ledger(LedgerConfig::single())
        .await
        .expect("create");
    let id = writer.id();
    for i in 0..3 {
        writer.add(entry(i)).await.expect("add");
    }
    let first = s
        .client
        .open_ledger_with_recovery(id)
        .await
        .expect("recover");
    let (_, version) = s.client.metadata(id).await.expect("metadata");
    let second = s
        .client
        .open_ledger_with_recovery(id)
        .await
        .expect("recover again");
    assert_eq!(first.last_entry(), Some(EntryId(2)));
    assert_eq!(second.last_entry(), Some(EntryId(2)));
    assert_eq!(
        s.client.metadata(id).await.expect("metadata").1,
        version,
        "metadata untouched"
    );

    // A second ledger whose recoverer died after marking it IN_RECOVERY.
    let writer2 = s
        .client
        .create_ledger(LedgerConfig::single())
        .await
        .expect("create");
    let id2 = writer2.id();
    writer2.add(entry(0)).await.expect("add");
    let (mut md, version) = s.client.metadata(id2).await.expect("metadata");
    md.state = LedgerState::InRecovery as i32;
    Table::<Ledgers>::new(s.meta.clone())
        .update(&id2, &md, version)
        .await
        .expect("mark in recovery");
    let reader = s
        .client
        .open_ledger_with_recovery(id2)
        .await
        .expect("recover in-recovery");
    assert!(reader.is_closed());
    assert_eq!(reader.last_entry(), Some(EntryId(0)));
    // Its writer was fenced by the recovery.
    assert!(matches!(
        writer2.add(entry(1)).await,
        Err(LedgerError::Fenced(_))
    ));
}

/// A writer whose ledger was recovered cannot close it at a different end: close reports
/// `Fenced` when the recovered end differs from the writer's view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_after_recovery_reports_fenced() {
    let s = setup().await;
    let writer = s
        .client
        .create_ledger(LedgerConfig::single())
        .await
        .expect("create");
    let id = writer.id();
    writer.add(entry(0)).await.expect("add");
    // Entry 1 durable on the bookie but not added through this writer: recovery includes it.
    s.bookie
        .add_entry(id, EntryId(1), Some(EntryId(0)), entry(1), false)
        .await
        .expect("add");
    let reader = s
        .client
        .open_ledger_with_recovery(id)
        .await
        .expect("recover");
    assert_eq!(reader.last_entry(), Some(EntryId(1)));
    assert!(matches!(writer.close().await, Err(LedgerError::Fenced(l)) if l == id));
}

/// Deleting a ledger removes its entries from the bookie and its metadata, and leaves other
/// ledgers alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ledger_removes_only_that_ledger() {
    let s = setup().await;
    let a = s
        .client
        .create_ledger(LedgerConfig::single())
        .await
        .expect("create");
    let b = s
        .client
        .create_ledger(LedgerConfig::single())
        .await
        .expect("create");
    assert_ne!(a.id(), b.id());
    for i in 0..3 {
        a.add(entry(i)).await.expect("add");
        b.add(entry(i)).await.expect("add");
    }
    a.close().await.expect("close");
    b.close().await.expect("close");
    s.client.delete_ledger(a.id()).await.expect("delete");

    assert!(matches!(
        s.client.open_ledger(a.id()).await,
        Err(LedgerError::NoSuchLedger(_))
    ));
    assert!(matches!(
        s.bookie.read_entry(a.id(), EntryId(0)),
        Err(BookieError::NoSuchLedger(_))
    ));
    assert!(matches!(
        s.client.delete_ledger(a.id()).await,
        Err(LedgerError::NoSuchLedger(_))
    ));
    let reader = s.client.open_ledger(b.id()).await.expect("open other");
    assert_eq!(
        reader
            .read(EntryId(0), EntryId(2))
            .await
            .expect("read other")
            .len(),
        3
    );
}

/// Opening or recovering a ledger that does not exist is `NoSuchLedger`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_ledger_is_no_such_ledger() {
    let s = setup().await;
    assert!(matches!(
        s.client.open_ledger(LedgerId(424242)).await,
        Err(LedgerError::NoSuchLedger(_))
    ));
    assert!(matches!(
        s.client.open_ledger_with_recovery(LedgerId(424242)).await,
        Err(LedgerError::NoSuchLedger(_))
    ));
}

/// Configs breaking `E >= Qw >= Qa >= 1` are invalid; valid ones needing more bookies than
/// the one available are refused with `NotEnoughBookies`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_configs_are_refused() {
    let s = setup().await;
    let cfg = |e, qw, qa| LedgerConfig {
        ensemble_size: e,
        write_quorum: qw,
        ack_quorum: qa,
    };
    assert!(matches!(
        s.client.create_ledger(cfg(1, 2, 1)).await,
        Err(LedgerError::InvalidConfig(_))
    ));
    assert!(matches!(
        s.client.create_ledger(cfg(3, 3, 2)).await,
        Err(LedgerError::NotEnoughBookies {
            needed: 3,
            available: 1
        })
    ));
    let ok = s.client.create_ledger(cfg(1, 1, 1)).await.expect("1/1/1");
    assert_eq!(ok.entries_added(), 0);
}
