//! Tests of [`BookieStorage`]: one conformance suite run against each configuration, plus
//! durability, group commit and corruption tests.

use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_proto::{EntryId, LedgerId};

use super::*;

fn options(blob_files: bool) -> StorageOptions {
    StorageOptions {
        blob_files,
        ..StorageOptions::default()
    }
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

/// The behaviour every storage configuration must have. Expects an empty storage.
async fn conformance(storage: &BookieStorage) {
    let (l1, l2, l3, unknown) = (LedgerId(1), LedgerId(2), LedgerId(3), LedgerId(99));

    // Nothing yet.
    assert_eq!(storage.ledgers().expect("ledgers"), vec![]);
    assert!(
        matches!(storage.read_entry(l1, EntryId(0)), Err(BookieError::NoSuchLedger(l)) if l == l1)
    );
    assert!(matches!(
        storage.last_entry(unknown),
        Err(BookieError::NoSuchLedger(_))
    ));

    // Adds, small and blob-sized, read back identical, one by one and as a range.
    let sizes = [0usize, 1, 100, 4095, 4096, 64 * 1024, 300];
    for (i, len) in sizes.iter().enumerate() {
        let lac = i.checked_sub(1).map(|p| EntryId(p as u64));
        storage
            .add_entry(
                l1,
                EntryId(i as u64),
                lac,
                payload(1, i as u64, *len),
                false,
            )
            .await
            .expect("add");
    }
    for (i, len) in sizes.iter().enumerate() {
        let read = storage.read_entry(l1, EntryId(i as u64)).expect("read");
        assert_eq!(read, payload(1, i as u64, *len), "entry {i}");
    }
    let last = EntryId(sizes.len() as u64 - 1);
    let range = storage.read_range(l1, EntryId(0), last).expect("range");
    assert_eq!(range.len(), sizes.len());
    for (i, (id, bytes)) in range.iter().enumerate() {
        assert_eq!(*id, EntryId(i as u64));
        assert_eq!(*bytes, payload(1, i as u64, sizes[i]));
    }
    let middle = storage
        .read_range(l1, EntryId(2), EntryId(4))
        .expect("middle");
    assert_eq!(
        middle.iter().map(|(id, _)| id.0).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(storage.last_entry(l1).expect("last"), Some(last));
    assert_eq!(
        storage.last_add_confirmed(l1).expect("lac"),
        Some(EntryId(last.0 - 1))
    );
    let expected_bytes: usize = sizes
        .iter()
        .enumerate()
        .map(|(i, len)| payload(1, i as u64, *len).len())
        .sum();
    assert_eq!(
        storage.payload_bytes(l1, last).expect("bytes"),
        expected_bytes as u64
    );

    // Reads past the end or of holes are typed errors.
    assert!(matches!(
        storage.read_entry(l1, EntryId(last.0 + 1)),
        Err(BookieError::NoSuchEntry { ledger, entry }) if ledger == l1 && entry.0 == last.0 + 1
    ));
    assert!(matches!(
        storage.read_range(l1, EntryId(0), EntryId(last.0 + 5)),
        Err(BookieError::NoSuchEntry { entry, .. }) if entry.0 == last.0 + 1
    ));
    assert!(matches!(
        storage.read_range(l1, EntryId(3), EntryId(2)),
        Err(BookieError::InvalidRange { .. })
    ));
    storage
        .add_entry(l2, EntryId(0), None, payload(2, 0, 10), false)
        .await
        .expect("add");
    storage
        .add_entry(l2, EntryId(2), None, payload(2, 2, 10), false)
        .await
        .expect("add");
    assert!(matches!(
        storage.read_range(l2, EntryId(0), EntryId(2)),
        Err(BookieError::NoSuchEntry {
            entry: EntryId(1),
            ..
        })
    ));
    assert_eq!(storage.last_entry(l2).expect("last"), Some(EntryId(2)));
    assert_eq!(storage.last_add_confirmed(l2).expect("lac"), None);
    // Out-of-order LACs keep the maximum.
    storage
        .add_entry(l2, EntryId(1), Some(EntryId(1)), payload(2, 1, 10), false)
        .await
        .expect("add");
    storage
        .add_entry(l2, EntryId(3), Some(EntryId(0)), payload(2, 3, 10), false)
        .await
        .expect("add");
    assert_eq!(
        storage.last_add_confirmed(l2).expect("lac"),
        Some(EntryId(1))
    );

    // Fencing: normal adds refused, recovery adds accepted, fence returns the last entry.
    assert_eq!(storage.fence(l2).await.expect("fence"), Some(EntryId(3)));
    assert!(storage.is_fenced(l2).expect("fenced"));
    assert!(matches!(
        storage.add_entry(l2, EntryId(4), None, payload(2, 4, 10), false).await,
        Err(BookieError::Fenced(l)) if l == l2
    ));
    storage
        .add_entry(l2, EntryId(4), None, payload(2, 4, 10), true)
        .await
        .expect("recovery add");
    assert_eq!(
        storage.read_entry(l2, EntryId(4)).expect("read"),
        payload(2, 4, 10)
    );
    assert_eq!(
        storage.fence(l2).await.expect("fence again"),
        Some(EntryId(4))
    );
    // Fencing an unknown ledger creates it fenced and empty.
    assert_eq!(storage.fence(l3).await.expect("fence new"), None);
    assert!(matches!(
        storage
            .add_entry(l3, EntryId(0), None, payload(3, 0, 1), false)
            .await,
        Err(BookieError::Fenced(_))
    ));
    assert_eq!(storage.ledgers().expect("ledgers"), vec![l1, l2, l3]);

    // Deleting a ledger removes its entries and record and leaves the others alone.
    storage.delete_ledger(l1).await.expect("delete");
    assert!(matches!(
        storage.read_entry(l1, EntryId(0)),
        Err(BookieError::NoSuchLedger(_))
    ));
    assert!(matches!(
        storage.read_range(l1, EntryId(0), EntryId(1)),
        Err(BookieError::NoSuchLedger(_))
    ));
    assert!(matches!(
        storage.last_entry(l1),
        Err(BookieError::NoSuchLedger(_))
    ));
    assert_eq!(storage.payload_bytes(l1, last).expect("bytes"), 0);
    assert_eq!(storage.ledgers().expect("ledgers"), vec![l2, l3]);
    assert_eq!(
        storage.read_entry(l2, EntryId(0)).expect("other ledger"),
        payload(2, 0, 10)
    );
    assert_eq!(
        storage
            .read_range(l2, EntryId(0), EntryId(4))
            .expect("other ledger")
            .len(),
        5
    );
    // Deleting an unknown ledger is a no-op.
    storage
        .delete_ledger(unknown)
        .await
        .expect("delete unknown");

    let stats = storage.stats();
    assert_eq!(stats.corrupt_reads, 0);
    assert_eq!(stats.fenced_rejections, 2);
}

/// The conformance suite holds with values inline in SST files.
#[tokio::test]
async fn conformance_without_blob_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = BookieStorage::open(dir.path(), options(false)).expect("open");
    conformance(&storage).await;
}

/// The conformance suite holds with large values in blob files.
#[tokio::test]
async fn conformance_with_blob_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = BookieStorage::open(dir.path(), options(true)).expect("open");
    conformance(&storage).await;
}

/// Written entries, LACs and fences read back identical after the storage is closed and
/// reopened (with and without blob files).
#[tokio::test]
async fn entries_survive_close_and_reopen() {
    for blob_files in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let storage = BookieStorage::open(dir.path(), options(blob_files)).expect("open");
            for e in 0..50u64 {
                let lac = e.checked_sub(1).map(EntryId);
                let len = if e % 2 == 0 { 10 } else { 8192 };
                storage
                    .add_entry(LedgerId(7), EntryId(e), lac, payload(7, e, len), false)
                    .await
                    .expect("add");
            }
            storage.fence(LedgerId(8)).await.expect("fence");
        }
        let storage = BookieStorage::open(dir.path(), options(blob_files)).expect("reopen");
        let range = storage
            .read_range(LedgerId(7), EntryId(0), EntryId(49))
            .expect("range");
        for (e, (id, bytes)) in range.into_iter().enumerate() {
            let len = if e % 2 == 0 { 10 } else { 8192 };
            assert_eq!(id, EntryId(e as u64));
            assert_eq!(bytes, payload(7, e as u64, len));
        }
        assert_eq!(
            storage.last_entry(LedgerId(7)).expect("last"),
            Some(EntryId(49))
        );
        assert_eq!(
            storage.last_add_confirmed(LedgerId(7)).expect("lac"),
            Some(EntryId(48))
        );
        assert!(storage.is_fenced(LedgerId(8)).expect("fenced"));
        assert_eq!(
            storage.ledgers().expect("ledgers"),
            vec![LedgerId(7), LedgerId(8)]
        );
    }
}

/// Waits until `cond` holds, polling, or panics after a generous deadline.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Adds queued while the writer is busy are all acknowledged, each durable, and written in
/// far fewer group commits than adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Holding the writer's gate across awaits is the point: it lets the queue build up.
#[allow(clippy::await_holding_lock)]
async fn concurrent_adds_are_group_committed() {
    const TASKS: u64 = 16;
    const PER_TASK: u64 = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = BookieStorage::open(dir.path(), options(false)).expect("open");

    let pause = storage.pause_writer();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let adds = (0..PER_TASK).map(|i| {
                let storage = storage.clone();
                async move {
                    storage
                        .add_entry(LedgerId(t), EntryId(i), None, payload(t, i, 64), false)
                        .await
                }
            });
            futures::future::join_all(adds).await
        }));
    }
    // Every add is queued (the writer holds the first one, blocked on the pause).
    wait_until("all adds queued", || {
        storage.stats().queued == TASKS * PER_TASK
    })
    .await;
    drop(pause);
    for task in tasks {
        for result in task.await.expect("task") {
            result.expect("add");
        }
    }
    let stats = storage.stats();
    assert_eq!(stats.adds, TASKS * PER_TASK);
    assert!(
        stats.batches <= 2,
        "{} batches for {} adds",
        stats.batches,
        stats.adds
    );
    for t in 0..TASKS {
        let range = storage
            .read_range(LedgerId(t), EntryId(0), EntryId(PER_TASK - 1))
            .expect("range");
        assert_eq!(range.len() as u64, PER_TASK);
    }
}

/// Many tasks adding concurrently without any pause all succeed, and group commit never
/// makes more batches than adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaused_concurrent_adds_all_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = BookieStorage::open(dir.path(), options(true)).expect("open");
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100u64 {
                storage
                    .add_entry(
                        LedgerId(t),
                        EntryId(i),
                        i.checked_sub(1).map(EntryId),
                        payload(t, i, 5000),
                        false,
                    )
                    .await?;
            }
            Ok::<_, BookieError>(())
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("adds");
    }
    let stats = storage.stats();
    assert_eq!(stats.adds, 800);
    assert!(stats.batches <= stats.adds);
    for t in 0..8u64 {
        assert_eq!(
            storage.last_entry(LedgerId(t)).expect("last"),
            Some(EntryId(99))
        );
    }
}

/// A byte flipped in an entry's stored value is reported as `Corrupt` (and counted), never
/// returned as data, by single and range reads alike.
#[tokio::test]
async fn flipped_byte_is_detected_as_corrupt() {
    for blob_files in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = BookieStorage::open(dir.path(), options(blob_files)).expect("open");
        let ledger = LedgerId(5);
        for e in 0..3u64 {
            storage
                .add_entry(ledger, EntryId(e), None, payload(5, e, 6000), false)
                .await
                .expect("add");
        }
        let mut value = format::encode_entry(ledger, EntryId(1), &payload(5, 1, 6000));
        value[100] ^= 0x01;
        storage
            .put_raw_entry(ledger, EntryId(1), value)
            .await
            .expect("inject");

        assert!(matches!(
            storage.read_entry(ledger, EntryId(1)),
            Err(BookieError::Corrupt {
                entry: EntryId(1),
                ..
            })
        ));
        assert!(matches!(
            storage.read_range(ledger, EntryId(0), EntryId(2)),
            Err(BookieError::Corrupt {
                entry: EntryId(1),
                ..
            })
        ));
        assert_eq!(storage.stats().corrupt_reads, 2);
        // Neighbours are intact.
        assert_eq!(
            storage.read_entry(ledger, EntryId(0)).expect("read"),
            payload(5, 0, 6000)
        );
        assert_eq!(
            storage.read_entry(ledger, EntryId(2)).expect("read"),
            payload(5, 2, 6000)
        );
    }
}

/// An intact entry value copied under another entry's key is caught: the CRC covers the ids.
#[tokio::test]
async fn misplaced_entry_is_detected_as_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = BookieStorage::open(dir.path(), options(false)).expect("open");
    storage
        .add_entry(LedgerId(1), EntryId(0), None, payload(1, 0, 10), false)
        .await
        .expect("add");
    let value = format::encode_entry(LedgerId(1), EntryId(0), &payload(1, 0, 10));
    storage
        .put_raw_entry(LedgerId(1), EntryId(1), value)
        .await
        .expect("inject");
    assert!(matches!(
        storage.read_entry(LedgerId(1), EntryId(1)),
        Err(BookieError::Corrupt { .. })
    ));
}

/// A fence is durable: after a reopen, normal adds are still refused, recovery adds accepted.
#[tokio::test]
async fn fence_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let storage = BookieStorage::open(dir.path(), options(false)).expect("open");
        storage
            .add_entry(LedgerId(1), EntryId(0), None, payload(1, 0, 10), false)
            .await
            .expect("add");
        assert_eq!(
            storage.fence(LedgerId(1)).await.expect("fence"),
            Some(EntryId(0))
        );
    }
    let storage = BookieStorage::open(dir.path(), options(false)).expect("reopen");
    assert!(matches!(
        storage
            .add_entry(LedgerId(1), EntryId(1), None, payload(1, 1, 10), false)
            .await,
        Err(BookieError::Fenced(_))
    ));
    storage
        .add_entry(LedgerId(1), EntryId(1), None, payload(1, 1, 10), true)
        .await
        .expect("recovery add");
}

/// Adds queued before a fence in the same group commit land; those queued after it are
/// refused, so the fence's answer is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Holding the writer's gate across awaits is the point: it lets the queue build up.
#[allow(clippy::await_holding_lock)]
async fn fence_orders_with_queued_adds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = BookieStorage::open(dir.path(), options(false)).expect("open");
    let ledger = LedgerId(1);
    let pause = storage.pause_writer();
    let before = {
        let s = storage.clone();
        tokio::spawn(async move {
            s.add_entry(ledger, EntryId(0), None, payload(1, 0, 10), false)
                .await
        })
    };
    wait_until("first add queued", || storage.stats().queued == 1).await;
    let fence = {
        let s = storage.clone();
        tokio::spawn(async move { s.fence(ledger).await })
    };
    wait_until("fence queued", || storage.stats().queued == 2).await;
    let after = {
        let s = storage.clone();
        tokio::spawn(async move {
            s.add_entry(ledger, EntryId(1), None, payload(1, 1, 10), false)
                .await
        })
    };
    wait_until("second add queued", || storage.stats().queued == 3).await;
    drop(pause);
    before.await.expect("task").expect("add before fence");
    assert_eq!(fence.await.expect("task").expect("fence"), Some(EntryId(0)));
    assert!(matches!(
        after.await.expect("task"),
        Err(BookieError::Fenced(_))
    ));
    assert_eq!(storage.stats().batches, 1);
}

/// Options that cannot work are rejected at open, naming the field.
#[test]
fn invalid_options_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = StorageOptions {
        group_commit_max_batch: 0,
        ..StorageOptions::default()
    };
    assert!(matches!(
        BookieStorage::open(dir.path(), bad),
        Err(BookieError::InvalidOptions {
            field: "group_commit_max_batch",
            ..
        })
    ));
}

/// Dropping the storage releases the database lock, so the directory reopens at once, even
/// from outside an async runtime.
#[test]
fn drop_releases_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    for _ in 0..3 {
        let storage = BookieStorage::open(dir.path(), options(false)).expect("open");
        assert_eq!(storage.ledgers().expect("ledgers"), vec![]);
    }
}
