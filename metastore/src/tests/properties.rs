//! Key-space properties, checked through the public [`MetaStore`] API on a real one-voter
//! raft group over RocksDB.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::timeout;

use crate::{EventKind, Expect, MetaError, MetaStore, MetaStoreConfig, WatchEvent, Watcher};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Upper bound on any single wait in these tests; reaching it is a failure, not a pacing.
const DEADLINE: Duration = Duration::from_secs(20);

async fn open_with(dir: &Path, config: MetaStoreConfig) -> Result<MetaStore, MetaError> {
    timeout(DEADLINE, MetaStore::open_standalone(dir, config))
        .await
        .map_err(|_| MetaError::Raft("open_standalone timed out".into()))?
}

async fn open(dir: &Path) -> Result<MetaStore, MetaError> {
    open_with(dir, MetaStoreConfig::default()).await
}

fn val(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Next event of `w`, failing the test if none arrives within [`DEADLINE`].
async fn next_event(w: &mut Watcher) -> Result<WatchEvent, Box<dyn std::error::Error>> {
    match timeout(DEADLINE, w.next()).await {
        Err(_) => Err("no watch event before the deadline".into()),
        Ok(None) => Err("watch ended".into()),
        Ok(Some(res)) => Ok(res?),
    }
}

fn key_of(e: &WatchEvent) -> &str {
    e.kv.as_ref().map_or("", |kv| kv.key.as_str())
}

/// A put with a stale expected version fails with `VersionMismatch` carrying the actual
/// version, and changes nothing: the value and the global revision are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_with_stale_version_fails_and_changes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    store.put("k", val("v1"), Expect::Any).await?;
    store.put("k", val("v2"), Expect::Version(1)).await?;
    let rev = store.current_revision();

    match store.put("k", val("stale"), Expect::Version(1)).await {
        Err(MetaError::VersionMismatch {
            key,
            expected,
            actual,
        }) => {
            assert_eq!(key, "k");
            assert_eq!(expected, Expect::Version(1));
            assert_eq!(actual, Some(2));
        }
        other => return Err(format!("expected VersionMismatch, got {other:?}").into()),
    }
    assert_eq!(store.current_revision(), rev);
    let kv = store.get("k").await?.ok_or("k vanished")?;
    assert_eq!((kv.value, kv.version, kv.mod_revision), (val("v2"), 2, rev));
    store.shutdown().await?;
    Ok(())
}

/// `Expect::Absent` fails on an existing key (and on a put: nothing is written), and succeeds
/// on a missing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_fails_on_existing_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    let w = store.put("k", val("first"), Expect::Absent).await?;
    assert_eq!(w.version, 1);
    match store.put("k", val("second"), Expect::Absent).await {
        Err(MetaError::VersionMismatch { actual, .. }) => assert_eq!(actual, Some(1)),
        other => return Err(format!("expected VersionMismatch, got {other:?}").into()),
    }
    assert_eq!(store.get("k").await?.map(|kv| kv.value), Some(val("first")));
    store.shutdown().await?;
    Ok(())
}

/// The global revision grows by exactly one per change; a key's version is 1 on creation and
/// +1 per put; a deleted and re-created key restarts at version 1 with a new create_revision;
/// a no-op delete bumps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_revisions_advance_as_specified() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    let r0 = store.current_revision();

    let a1 = store.put("a", val("1"), Expect::Any).await?;
    let b1 = store.put("b", val("1"), Expect::Any).await?;
    let a2 = store.put("a", val("2"), Expect::Any).await?;
    assert_eq!((a1.revision, a1.version), (r0 + 1, 1));
    assert_eq!((b1.revision, b1.version), (r0 + 2, 1));
    assert_eq!((a2.revision, a2.version), (r0 + 3, 2));

    let a = store.get("a").await?.ok_or("a missing")?;
    assert_eq!(
        (a.version, a.create_revision, a.mod_revision),
        (2, r0 + 1, r0 + 3)
    );

    assert!(store.delete("a", Expect::Any).await?);
    assert_eq!(store.current_revision(), r0 + 4);
    assert!(!store.delete("a", Expect::Any).await?);
    assert_eq!(store.current_revision(), r0 + 4, "no-op delete bumped");
    assert_eq!(store.get("a").await?, None);

    let a3 = store.put("a", val("3"), Expect::Absent).await?;
    assert_eq!((a3.revision, a3.version), (r0 + 5, 1));
    let a = store.get("a").await?.ok_or("a missing")?;
    assert_eq!((a.create_revision, a.mod_revision), (r0 + 5, r0 + 5));
    store.shutdown().await?;
    Ok(())
}

/// A delete with an expected version removes the key only at that version; a mismatch (or a
/// missing key) is a `VersionMismatch` that leaves the key in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_expected_version() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    store.put("k", val("1"), Expect::Any).await?;
    store.put("k", val("2"), Expect::Any).await?;
    let rev = store.current_revision();

    match store.delete("k", Expect::Version(1)).await {
        Err(MetaError::VersionMismatch { actual, .. }) => assert_eq!(actual, Some(2)),
        other => return Err(format!("expected VersionMismatch, got {other:?}").into()),
    }
    assert_eq!(store.current_revision(), rev);
    assert!(store.get("k").await?.is_some());

    assert!(store.delete("k", Expect::Version(2)).await?);
    assert_eq!(store.get("k").await?, None);

    match store.delete("k", Expect::Version(2)).await {
        Err(MetaError::VersionMismatch { actual, .. }) => assert_eq!(actual, None),
        other => return Err(format!("expected VersionMismatch, got {other:?}").into()),
    }
    assert!(!store.delete("k", Expect::Absent).await?);
    store.shutdown().await?;
    Ok(())
}

/// A scan returns exactly the keys with the prefix, in key order — not neighbours that sort
/// just before or after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_returns_exactly_the_prefix_in_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    for k in [
        "app/2", "b", "app", "app/10", "ap", "app/1", "app0", "app/1/x",
    ] {
        store.put(k, val(k), Expect::Any).await?;
    }
    let keys: Vec<String> = store
        .scan("app/")
        .await?
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, vec!["app/1", "app/1/x", "app/10", "app/2"]);
    assert!(store.scan("zzz").await?.is_empty());
    assert_eq!(store.scan("").await?.len(), 8);
    store.shutdown().await?;
    Ok(())
}

/// A watch from an old revision first replays the history under its prefix from that
/// revision, then streams live changes: in revision order, with no gap and no duplicate,
/// including deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_history_then_streams_live() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    store.put("w/a", val("0"), Expect::Any).await?; // before from_revision
    let from = store.current_revision() + 1;
    store.put("w/a", val("1"), Expect::Any).await?;
    store.put("other", val("x"), Expect::Any).await?;
    store.put("w/b", val("1"), Expect::Any).await?;
    store.delete("w/a", Expect::Any).await?;

    let mut watcher = store.watch("w/", from).await?;

    // Live writes race with the replay on another task.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                let key = if i % 3 == 0 { "other" } else { "w/c" };
                store.put(key, val(&i.to_string()), Expect::Any).await?;
            }
            Ok::<_, MetaError>(())
        })
    };

    let expected_live = (0..20).filter(|i| i % 3 != 0).count();
    let mut events = Vec::new();
    for _ in 0..(3 + expected_live) {
        events.push(next_event(&mut watcher).await?);
    }
    writer.await??;

    let revs: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "not strictly increasing: {revs:?}"
    );
    assert!(revs[0] >= from);
    assert!(events.iter().all(|e| key_of(e).starts_with("w/")));
    assert_eq!(
        events[..3].iter().map(key_of).collect::<Vec<_>>(),
        vec!["w/a", "w/b", "w/a"]
    );
    assert_eq!(events[2].kind, EventKind::Delete as i32);
    let c_values: Vec<Bytes> = events[3..]
        .iter()
        .filter_map(|e| e.kv.as_ref().map(|kv| kv.value.clone()))
        .collect();
    let want: Vec<Bytes> = (0..20)
        .filter(|i| i % 3 != 0)
        .map(|i| val(&i.to_string()))
        .collect();
    assert_eq!(c_values, want);

    // Nothing more is pending: the next event is a new write, not a duplicate.
    let last = store.put("w/z", val("end"), Expect::Any).await?;
    let e = next_event(&mut watcher).await?;
    assert_eq!((e.revision, key_of(&e)), (last.revision, "w/z"));
    store.shutdown().await?;
    Ok(())
}

/// A watcher that falls far behind the live channel (capacity 1) still receives every
/// event, in order, once each: the missed range is re-read from history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_loses_no_events() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = MetaStoreConfig {
        watch_channel_capacity: 1,
        ..Default::default()
    };
    let store = open_with(dir.path(), config).await?;
    let mut watcher = store.watch("", 0).await?;
    let first = store.current_revision() + 1;
    for i in 0..50 {
        store
            .put(&format!("k{i:02}"), val("v"), Expect::Any)
            .await?;
    }
    for i in 0..50u64 {
        let e = next_event(&mut watcher).await?;
        assert_eq!(e.revision, first + i);
        assert_eq!(key_of(&e), format!("k{i:02}"));
    }
    store.shutdown().await?;
    Ok(())
}

/// `from_revision == 0` streams only changes made after the watch was created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_zero_sees_only_new_changes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    store.put("k", val("old"), Expect::Any).await?;
    let mut watcher = store.watch("k", 0).await?;
    let w = store.put("k", val("new"), Expect::Any).await?;
    let e = next_event(&mut watcher).await?;
    assert_eq!(e.revision, w.revision);
    assert_eq!(e.kv.map(|kv| kv.value), Some(val("new")));
    store.shutdown().await?;
    Ok(())
}

/// Writes survive shutting the store down and reopening the same directory: values,
/// versions, the revision counter and the watch history all come back, bootstrapping is not
/// repeated, and new writes continue the revision sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_close_and_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rev_before;
    {
        let store = open(dir.path()).await?;
        store.put("a", val("1"), Expect::Any).await?;
        store.put("a", val("2"), Expect::Any).await?;
        store.put("b", val("1"), Expect::Any).await?;
        store.delete("b", Expect::Any).await?;
        rev_before = store.current_revision();
        let mut watcher = store.watch("", 0).await?;
        store.shutdown().await?;
        store.shutdown().await?; // idempotent
        assert!(matches!(store.get("a").await, Err(MetaError::Closed)));
        assert!(matches!(
            timeout(DEADLINE, watcher.next()).await?,
            Some(Err(MetaError::Closed))
        ));
        assert!(timeout(DEADLINE, watcher.next()).await?.is_none());
    }

    let store = open(dir.path()).await?;
    assert_eq!(store.current_revision(), rev_before);
    let a = store.get("a").await?.ok_or("a lost")?;
    assert_eq!((a.value, a.version), (val("2"), 2));
    assert_eq!(store.get("b").await?, None);
    let w = store.put("c", val("1"), Expect::Absent).await?;
    assert_eq!(w.revision, rev_before + 1);

    let mut watcher = store.watch("", 1).await?;
    let mut revs = Vec::new();
    for _ in 0..=rev_before {
        revs.push(next_event(&mut watcher).await?.revision);
    }
    assert_eq!(revs, (1..=rev_before + 1).collect::<Vec<_>>());
    store.shutdown().await?;
    Ok(())
}

/// With frequent snapshots and no log kept behind them, a restart rebuilds the same state
/// from the persisted state machine although the log was purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_reopen_after_snapshot_and_log_purge() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = MetaStoreConfig {
        snapshot_every_logs: 10,
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    {
        let store = open_with(dir.path(), config.clone()).await?;
        for i in 0..40 {
            store
                .put(&format!("k{i:02}"), val(&i.to_string()), Expect::Any)
                .await?;
        }
        store
            .inner_raft()
            .wait(Some(DEADLINE))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= 30),
                "snapshot and purge",
            )
            .await?;
        store.shutdown().await?;
    }
    let store = open_with(dir.path(), config).await?;
    let all = store.scan("k").await?;
    assert_eq!(all.len(), 40);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, kv)| kv.value == val(&i.to_string()))
    );
    assert_eq!(store.current_revision(), 40);
    store.shutdown().await?;
    Ok(())
}

/// An oversized value gives `ValueTooLarge`, an empty or over-long key gives `InvalidKey`, and
/// neither reaches raft (the revision does not move).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_value_and_bad_keys_give_typed_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = MetaStoreConfig {
        max_value_size: 16,
        ..Default::default()
    };
    let store = open_with(dir.path(), config).await?;
    let rev = store.current_revision();
    match store
        .put("k", Bytes::from(vec![0u8; 17]), Expect::Any)
        .await
    {
        Err(MetaError::ValueTooLarge { key, len, max }) => {
            assert_eq!((key.as_str(), len, max), ("k", 17, 16))
        }
        other => return Err(format!("expected ValueTooLarge, got {other:?}").into()),
    }
    assert!(
        store
            .put("k", Bytes::from(vec![0u8; 16]), Expect::Any)
            .await
            .is_ok()
    );
    let rev = rev + 1;
    assert!(matches!(
        store.put("", val("v"), Expect::Any).await,
        Err(MetaError::InvalidKey { .. })
    ));
    assert!(matches!(
        store.get("").await,
        Err(MetaError::InvalidKey { .. })
    ));
    assert!(matches!(
        store.delete(&"x".repeat(4097), Expect::Any).await,
        Err(MetaError::InvalidKey { .. })
    ));
    assert_eq!(store.current_revision(), rev);
    store.shutdown().await?;
    Ok(())
}

/// `next_id` called concurrently from many tasks yields distinct ids that are exactly
/// 1..=n (no gaps); a key holding a non-counter value is an `InvalidKey`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_next_id_is_distinct_and_gapless() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    const TASKS: u64 = 8;
    const PER_TASK: u64 = 15;
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..PER_TASK {
                ids.push(store.next_id("ids/ledger").await?);
            }
            Ok::<_, MetaError>(ids)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(timeout(DEADLINE, h).await???);
    }
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "duplicate ids");
    assert_eq!(distinct, (1..=TASKS * PER_TASK).collect::<BTreeSet<_>>());

    store.put("not-a-counter", val("abc"), Expect::Any).await?;
    assert!(matches!(
        store.next_id("not-a-counter").await,
        Err(MetaError::InvalidKey { .. })
    ));
    store.shutdown().await?;
    Ok(())
}

/// While a store is open, opening the same directory again fails with a storage error (the
/// RocksDB lock) instead of corrupting it; after shutdown and drop it opens fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_a_live_directory_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    store.put("k", val("v"), Expect::Any).await?;
    match open(dir.path()).await {
        Err(MetaError::Storage(msg)) => assert!(msg.to_lowercase().contains("lock"), "{msg}"),
        Err(e) => return Err(format!("expected a storage (lock) error, got {e:?}").into()),
        Ok(_) => return Err("a second open of a live directory succeeded".into()),
    }
    store.shutdown().await?;
    drop(store);
    let store = open(dir.path()).await?;
    assert_eq!(store.get("k").await?.map(|kv| kv.value), Some(val("v")));
    store.shutdown().await?;
    Ok(())
}

/// Transactions are atomic under concurrent clients: 8 tasks each move 1 unit between two
/// counters 20 times with compare-on-version transactions (retrying when a comparison fails);
/// the total never changes and every successful move is counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_by_txn_keep_the_total() -> Result<(), Box<dyn std::error::Error>> {
    use crate::{Compare, Txn, TxnOp};
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    store.put("/acct/a", val("100"), Expect::Absent).await?;
    store.put("/acct/b", val("0"), Expect::Absent).await?;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut moved = 0u32;
            while moved < 20 {
                let a = store.get("/acct/a").await?.ok_or("a missing")?;
                let b = store.get("/acct/b").await?.ok_or("b missing")?;
                let parse = |v: &Bytes| -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
                    Ok(std::str::from_utf8(v)?.parse()?)
                };
                let (av, bv) = (parse(&a.value)?, parse(&b.value)?);
                let txn = Txn {
                    compares: vec![
                        Compare::Version {
                            key: "/acct/a".into(),
                            expect: Expect::Version(a.version),
                        },
                        Compare::Version {
                            key: "/acct/b".into(),
                            expect: Expect::Version(b.version),
                        },
                    ],
                    success: vec![
                        TxnOp::Put {
                            key: "/acct/a".into(),
                            value: Bytes::from((av - 1).to_string()),
                            lease: 0,
                        },
                        TxnOp::Put {
                            key: "/acct/b".into(),
                            value: Bytes::from((bv + 1).to_string()),
                            lease: 0,
                        },
                    ],
                    failure: vec![],
                };
                if store.txn(txn).await?.succeeded {
                    moved += 1;
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(|e| e.to_string())?;
    }
    let a = store.get("/acct/a").await?.ok_or("a")?;
    let b = store.get("/acct/b").await?.ok_or("b")?;
    assert_eq!(
        (&a.value[..], &b.value[..]),
        (&b"-60"[..], &b"160"[..]),
        "8 x 20 moves, none lost or doubled"
    );
    Ok(())
}
