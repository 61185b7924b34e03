//! openraft's storage conformance suite against [`LogStore`] + [`StateMachine`], and the
//! snapshot install path of the state machine.

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError,
    StorageIOError,
};
use tempfile::TempDir;

use crate::db::{self, Core};
use crate::types::{Command, CommandResult, Expect, NodeId, TypeConfig};
use crate::watch::Watcher;
use crate::{LogStore, MetaError, StateMachine};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Builds a fresh RocksDB-backed log store and state machine in a temporary directory.
struct RocksBuilder;

// openraft's `StorageError` is what the suite speaks; its size is not ours to change.
#[allow(clippy::result_large_err)]
fn open_fresh() -> Result<(TempDir, Arc<Core>, LogStore, StateMachine), StorageError<NodeId>> {
    let (dir, core, log, sm, _released) = open_fresh_guarded()?;
    Ok((dir, core, log, sm))
}

type FreshStores = (TempDir, Arc<Core>, LogStore, StateMachine, db::GuardWaiter);

/// As [`open_fresh`], with the waiter that says when raft's last use of the database (the
/// log store's WAL sync thread among them) is over, so a test can reopen the directory.
#[allow(clippy::result_large_err)]
fn open_fresh_guarded() -> Result<FreshStores, StorageError<NodeId>> {
    let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
    let core = Core::open(dir.path(), 16).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
    let (guard, released) = db::raft_guard();
    let log = LogStore::new(core.clone(), guard.clone())
        .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
    let sm = StateMachine::open(core.clone(), guard)
        .map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))?;
    Ok((dir, core, log, sm, released))
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let (dir, _core, log, sm) = open_fresh()?;
        Ok((dir, log, sm))
    }
}

/// The RocksDB log store and state machine pass every test of openraft's storage suite.
#[test]
#[allow(clippy::result_large_err)]
fn rocksdb_stores_pass_the_openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(RocksBuilder)
}

fn put_entry(index: u64, key: &str, value: &'static [u8]) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Put {
            key: key.into(),
            value: Bytes::from_static(value),
            expect: Expect::Any,
            lease: 0,
        }),
    }
}

/// Installing a snapshot reproduces the leader's key space and revision on the follower, and
/// a watch from before the snapshot fails with `Compacted` instead of silently skipping
/// history the follower never had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_snapshot_reproduces_state_and_compacts_history() -> TestResult {
    let (_dir_l, core_l, _log_l, mut sm_l) = open_fresh()?;
    let (_dir_f, core_f, _log_f, mut sm_f) = open_fresh()?;

    let lease_entry = |index, cmd| Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    };
    let results = sm_l
        .apply([
            put_entry(1, "a", b"1"),
            put_entry(2, "b", b"2"),
            put_entry(3, "a", b"3"),
            lease_entry(4, Command::LeaseGrant { ttl_ms: 5_000 }),
            lease_entry(
                5,
                Command::Put {
                    key: "e".into(),
                    value: Bytes::from_static(b"x"),
                    expect: Expect::Any,
                    lease: 1,
                },
            ),
        ])
        .await?;
    assert!(matches!(results[2], CommandResult::Written(w) if w.revision == 3 && w.version == 2));
    assert!(matches!(results[4], CommandResult::Written(w) if w.revision == 4));

    let snap = sm_l.get_snapshot_builder().await.build_snapshot().await?;
    let mut receiving = sm_f.begin_receiving_snapshot().await?;
    *receiving = Cursor::new(snap.snapshot.into_inner());
    sm_f.install_snapshot(&snap.meta, receiving).await?;

    assert_eq!(core_f.revision(), 4);
    assert_eq!(core_f.scan("")?, core_l.scan("")?);
    assert_eq!(sm_f.applied_state().await?.0, snap.meta.last_log_id);
    // Leases travel with the snapshot: the record, its bound key and the id counter.
    assert_eq!(core_f.all_leases()?, core_l.all_leases()?);
    assert_eq!(core_f.lease_ttls().get(&1), Some(&5_000));
    assert_eq!(core_f.counters().next_lease_id, 2);

    match Watcher::start(core_f.clone(), "", 1) {
        Err(MetaError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (1, 5))
        }
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("watch from a compacted revision succeeded".into()),
    }
    // Watching from the first revision after the snapshot is fine.
    assert!(Watcher::start(core_f, "", 5).is_ok());
    Ok(())
}

/// A corrupted snapshot is refused with a storage error and leaves the state untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshot_is_refused() -> TestResult {
    let (_dir_l, _core_l, _log_l, mut sm_l) = open_fresh()?;
    let (_dir_f, core_f, _log_f, mut sm_f) = open_fresh()?;
    sm_l.apply([put_entry(1, "a", b"1")]).await?;
    let snap = sm_l.get_snapshot_builder().await.build_snapshot().await?;
    let mut bytes = snap.snapshot.into_inner();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    let res = sm_f
        .install_snapshot(&snap.meta, Box::new(Cursor::new(bytes)))
        .await;
    assert!(res.is_err(), "corrupt snapshot was installed");
    assert_eq!(core_f.revision(), 0);
    assert!(core_f.scan("")?.is_empty());
    Ok(())
}

/// Scans of the hot prefixes are served from memory; the copy agrees with RocksDB after
/// puts and deletes, after a snapshot is installed, and after the database is reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_key_scans_agree_with_rocksdb() -> TestResult {
    let (dir_l, core_l, _log_l, mut sm_l, mut released_l) = open_fresh_guarded()?;
    let delete = |index, key: &str| Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Delete {
            key: key.into(),
            expect: Expect::Any,
        }),
    };
    sm_l.apply([
        put_entry(1, "/txn-deadlines/1/a", b"1"),
        put_entry(2, "/txn-deadlines/2/b", b"2"),
        put_entry(3, "/txn-checks/3/c", b"3"),
        put_entry(4, "/txns/a", b"4"),
        delete(5, "/txn-deadlines/1/a"),
        put_entry(6, "/txn-deadlines/2/b", b"6"),
    ])
    .await?;
    let keys = |kvs: Vec<strata_proto::pb::metastore::KeyValue>| {
        kvs.into_iter()
            .map(|kv| (kv.key, kv.version))
            .collect::<Vec<_>>()
    };
    let expected = vec![("/txn-deadlines/2/b".to_string(), 2)];
    assert_eq!(keys(core_l.scan("/txn-deadlines/")?), expected);
    assert_eq!(
        keys(core_l.scan("/txn-deadlines/")?),
        keys(core_l.scan_page("/txn-deadlines/", "", 100)?.0),
        "the memory copy and RocksDB disagree"
    );

    let (_dir_f, core_f, _log_f, mut sm_f) = open_fresh()?;
    sm_f.apply([put_entry(1, "/txn-checks/9/stale", b"x")])
        .await?;
    let snap = sm_l.get_snapshot_builder().await.build_snapshot().await?;
    let mut receiving = sm_f.begin_receiving_snapshot().await?;
    *receiving = Cursor::new(snap.snapshot.into_inner());
    sm_f.install_snapshot(&snap.meta, receiving).await?;
    assert_eq!(keys(core_f.scan("/txn-deadlines/")?), expected);
    assert_eq!(
        keys(core_f.scan("/txn-checks/")?),
        vec![("/txn-checks/3/c".to_string(), 1)],
        "a key the snapshot does not hold is gone from the copy"
    );

    drop((core_l, _log_l, sm_l));
    // The WAL sync thread lets go of the database a moment after its log store is dropped.
    released_l.released().await;
    let reopened = Core::open(dir_l.path(), 16)?;
    assert_eq!(keys(reopened.scan("/txn-deadlines/")?), expected);
    Ok(())
}
