//! Table properties, checked on a real one-voter metastore (raft over RocksDB) in a tempdir.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use strata_proto::pb::bookie::{LedgerMetadata, LedgerState};
use strata_proto::{LedgerId, NamespaceName, Position, TopicName};
use tokio::time::timeout;

use super::*;
use crate::{Expect, MetaError, MetaStore, MetaStoreConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Upper bound on any single wait; reaching it is a failure, not a pacing.
const DEADLINE: Duration = Duration::from_secs(20);

async fn open(dir: &Path) -> Result<MetaStore, MetaError> {
    timeout(
        DEADLINE,
        MetaStore::open_standalone(dir, MetaStoreConfig::default()),
    )
    .await
    .map_err(|_| MetaError::Raft("open_standalone timed out".into()))?
}

fn ns(s: &str) -> NamespaceName {
    s.parse().expect("test namespace name")
}

fn topic(s: &str) -> TopicName {
    TopicName::parse(s).expect("test topic name")
}

fn tenant(s: &str) -> TenantName {
    TenantName::new(s).expect("test tenant name")
}

fn ledger_metadata(id: u64) -> LedgerMetadata {
    LedgerMetadata {
        format_version: 1,
        ledger_id: id,
        ensemble_size: 1,
        write_quorum: 1,
        ack_quorum: 1,
        state: LedgerState::Open as i32,
        last_entry_id: None,
        fragments: Vec::new(),
        created_ms: 5,
        length_bytes: 0,
        entry_format: 1,
    }
}

fn cursor_record() -> CursorRecord {
    let mut c = CursorRecord {
        mark_delete: Some(Position::new(4, 4)),
        ..CursorRecord::default()
    };
    c.acked.insert(
        Position::new(4, 6),
        EntryAck::Partial {
            batch_size: 2,
            indexes: [1].into(),
        },
    );
    c.acked.insert(Position::new(4, 8), EntryAck::Full);
    c
}

/// Writes a row, reads it back and checks record and version (1); an update with the version
/// read lands and yields version 2, and a read sees the new record.
async fn round_trip<S: Schema>(
    table: &Table<S>,
    key: &S::Key,
    first: S::Record,
    second: S::Record,
) -> TestResult
where
    S::Record: PartialEq + std::fmt::Debug + Clone,
{
    assert_eq!(table.get(key).await?, None, "{} starts absent", S::NAME);
    let written = table.create(key, &first).await?;
    assert_eq!(written.version, 1);
    let read = table.require(key).await?;
    assert_eq!((read.record, read.version), (first, 1), "{}", S::NAME);
    let updated = table.update(key, &second, 1).await?;
    assert_eq!(updated.version, 2);
    let read = table.get(key).await?.ok_or("row vanished")?;
    assert_eq!(
        (read.record, read.version, read.mod_revision),
        (second, 2, updated.revision),
        "{}",
        S::NAME
    );
    Ok(())
}

/// Every table stores and returns its record unchanged, with the metastore's versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_round_trips_its_record() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    let t = Tables::new(store.clone());
    let orders = topic("acme/prod/orders");

    round_trip(
        &t.tenants,
        &tenant("acme"),
        TenantRecord::default(),
        TenantRecord {
            admin_roles: ["ops".to_owned()].into(),
            created_ms: 9,
        },
    )
    .await?;
    round_trip(
        &t.namespaces,
        &ns("acme/prod"),
        NamespacePolicies::default(),
        NamespacePolicies {
            auto_create_topics: false,
            replication: Some(ReplicationPolicy {
                ensemble_size: 3,
                write_quorum: 3,
                ack_quorum: 2,
            }),
            bundles: Some(vec![0, 0x8000_0000, u32::MAX]),
            retention: Some(RetentionPolicy {
                minutes: 60,
                size_mb: 1024,
            }),
            backlog_quota: Some(BacklogQuota {
                limit_mb: 10,
                policy: BacklogQuotaPolicy::ConsumerBacklogEviction,
            }),
            ledger_rollover: Some(LedgerRolloverPolicy {
                max_entries: Some(100),
                max_size_mb: None,
                max_minutes: Some(30),
            }),
        },
    )
    .await?;
    round_trip(
        &t.topics,
        &orders,
        TopicRecord { created_ms: 1 },
        TopicRecord { created_ms: 2 },
    )
    .await?;
    round_trip(
        &t.partitioned_topics,
        &orders,
        PartitionedTopicRecord {
            partitions: 4,
            created_ms: 1,
        },
        PartitionedTopicRecord {
            partitions: 8,
            created_ms: 1,
        },
    )
    .await?;
    let owner = |lease_id| OwnershipRecord {
        broker_id: BrokerId("broker-1".into()),
        address: "10.0.0.1:6650".into(),
        lease_id,
        acquired_ms: 3,
    };
    let bundle = NamespaceBundle {
        namespace: ns("acme/prod"),
        range: BundleRange::FULL,
    };
    round_trip(&t.ownership, &bundle, owner(7), owner(8)).await?;
    let info = |entries| LedgerInfo {
        id: LedgerId(3),
        entries,
        size_bytes: 10,
        closed_ms: None,
    };
    round_trip(
        &t.managed_ledgers,
        &orders,
        ManagedLedgerRecord {
            ledgers: vec![info(None)],
        },
        ManagedLedgerRecord {
            ledgers: vec![info(Some(4))],
        },
    )
    .await?;
    let mut closed = ledger_metadata(3);
    closed.state = LedgerState::Closed as i32;
    closed.last_entry_id = Some(0);
    round_trip(&t.ledgers, &LedgerId(3), ledger_metadata(3), closed).await?;
    round_trip(
        &t.cursors,
        &CursorKey::new(orders.clone(), "sub"),
        CursorRecord::default(),
        cursor_record(),
    )
    .await?;
    store.shutdown().await?;
    Ok(())
}

/// An update at a stale version, a create of an existing row and a delete at a stale version
/// all fail with `VersionMismatch` carrying the actual version, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_conflicts_are_version_mismatches_and_change_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    let t = Tables::new(store.clone());
    let orders = topic("acme/prod/orders");
    t.topics
        .create(&orders, &TopicRecord { created_ms: 1 })
        .await?;
    t.topics
        .update(&orders, &TopicRecord { created_ms: 2 }, 1)
        .await?;
    let revision = store.current_revision();

    let stale = t
        .topics
        .update(&orders, &TopicRecord { created_ms: 3 }, 1)
        .await;
    assert!(
        matches!(
            &stale,
            Err(TableError::VersionMismatch { key, expected: Expect::Version(1), actual: Some(2) })
                if key == "/topics/acme/prod/orders"
        ),
        "{stale:?}"
    );
    let again = t
        .topics
        .create(&orders, &TopicRecord { created_ms: 4 })
        .await;
    assert!(
        matches!(
            again,
            Err(TableError::VersionMismatch {
                expected: Expect::Absent,
                actual: Some(2),
                ..
            })
        ),
        "{again:?}"
    );
    let delete = t.topics.delete(&orders, Expect::Version(1)).await;
    assert!(
        delete.as_ref().is_err_and(TableError::is_version_mismatch),
        "{delete:?}"
    );
    assert_eq!(store.current_revision(), revision, "nothing was written");
    let row = t.topics.require(&orders).await?;
    assert_eq!((row.record.created_ms, row.version), (2, 2));

    assert!(t.topics.delete(&orders, Expect::Version(2)).await?);
    let gone = t
        .topics
        .update(&orders, &TopicRecord { created_ms: 5 }, 2)
        .await;
    assert!(
        matches!(gone, Err(TableError::VersionMismatch { actual: None, .. })),
        "an update of a deleted row is a mismatch: {gone:?}"
    );
    let missing = t.topics.require(&orders).await;
    assert!(
        matches!(&missing, Err(TableError::NotFound { table: "topic", key }) if key == "/topics/acme/prod/orders"),
        "{missing:?}"
    );
    store.shutdown().await?;
    Ok(())
}

/// A stored value that is not the table's encoding (garbage, the wrong JSON shape, bad
/// protobuf, a counter of the wrong length) reads as a `Decode` error naming the key, from
/// `get` and from `list`; nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_decode_errors_naming_the_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    let t = Tables::new(store.clone());
    let orders = topic("acme/prod/orders");
    let namespace = ns("acme/prod");

    let cases: [&[u8]; 5] = [
        b"\xff\x00not json",
        b"[1, 2]",
        b"{\"format_version\": \"one\"}",
        b"{\"format_version\": 1, \"created_ms\": \"yesterday\"}",
        b"",
    ];
    for raw in cases {
        store
            .put(
                "/topics/acme/prod/orders",
                Bytes::from_static(raw),
                Expect::Any,
            )
            .await?;
        let got = t.topics.get(&orders).await;
        assert!(
            matches!(
                &got,
                Err(TableError::Decode { table: "topic", key, source: DecodeError::Malformed(_) })
                    if key == "/topics/acme/prod/orders"
            ),
            "{raw:?}: {got:?}"
        );
        let listed = t.topics.list(&namespace).await;
        assert!(
            matches!(listed, Err(TableError::Decode { .. })),
            "{raw:?}: {listed:?}"
        );
    }
    // Keys alone still list without decoding the values.
    assert_eq!(t.topics.list_keys(&namespace).await?, vec![orders.clone()]);

    store
        .put(
            &t.ledgers.key(&LedgerId(9)),
            Bytes::from_static(&[0xff, 0xff, 0xff]),
            Expect::Any,
        )
        .await?;
    let ledger = t.ledgers.get(&LedgerId(9)).await;
    assert!(
        matches!(&ledger, Err(TableError::Decode { key, source: DecodeError::Malformed(_), .. })
            if key == "/ledgers/00000000000000000009"),
        "{ledger:?}"
    );

    store
        .put(
            counters::LEDGER_ID.key(),
            Bytes::from_static(b"seven"),
            Expect::Any,
        )
        .await?;
    let counter = t.counters.current(counters::LEDGER_ID).await;
    assert!(
        matches!(&counter, Err(TableError::Decode { key, .. }) if key == "/counters/ledger-id"),
        "{counter:?}"
    );
    store.shutdown().await?;
    Ok(())
}

/// A record written by a newer release (higher `format_version`) is refused with
/// `FutureVersion`, and one without a version with `MissingFormatVersion`: JSON records and
/// protobuf ledger metadata alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_and_missing_format_versions_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    let t = Tables::new(store.clone());
    let key = CursorKey::new(topic("acme/prod/orders"), "sub");
    let raw_key = t.cursors.key(&key);

    store
        .put(
            &raw_key,
            Bytes::from_static(br#"{"format_version":2,"mark_delete":null,"acked":[]}"#),
            Expect::Any,
        )
        .await?;
    let future = t.cursors.get(&key).await;
    assert!(
        matches!(
            future,
            Err(TableError::Decode {
                source: DecodeError::FutureVersion {
                    found: 2,
                    supported: 1
                },
                ..
            })
        ),
        "{future:?}"
    );
    store
        .put(
            &raw_key,
            Bytes::from_static(br#"{"mark_delete":null,"acked":[]}"#),
            Expect::Any,
        )
        .await?;
    let missing = t.cursors.get(&key).await;
    assert!(
        matches!(
            missing,
            Err(TableError::Decode {
                source: DecodeError::MissingFormatVersion,
                ..
            })
        ),
        "{missing:?}"
    );
    store
        .put(
            &raw_key,
            Bytes::from_static(br#"{"format_version":0,"mark_delete":null,"acked":[]}"#),
            Expect::Any,
        )
        .await?;
    let old = t.cursors.get(&key).await;
    assert!(
        matches!(
            old,
            Err(TableError::Decode {
                source: DecodeError::UnsupportedVersion { found: 0, .. },
                ..
            })
        ),
        "an older format without a migration is refused: {old:?}"
    );

    let mut md = ledger_metadata(4);
    md.format_version = 2;
    store
        .put(
            &t.ledgers.key(&LedgerId(4)),
            Bytes::from(md.encode_to_vec()),
            Expect::Any,
        )
        .await?;
    let ledger = t.ledgers.get(&LedgerId(4)).await;
    assert!(
        matches!(
            ledger,
            Err(TableError::Decode {
                source: DecodeError::FutureVersion { found: 2, .. },
                ..
            })
        ),
        "{ledger:?}"
    );
    md.format_version = 0;
    store
        .put(
            &t.ledgers.key(&LedgerId(4)),
            Bytes::from(md.encode_to_vec()),
            Expect::Any,
        )
        .await?;
    let ledger = t.ledgers.get(&LedgerId(4)).await;
    assert!(
        matches!(
            ledger,
            Err(TableError::Decode {
                source: DecodeError::MissingFormatVersion,
                ..
            })
        ),
        "{ledger:?}"
    );
    store.shutdown().await?;
    Ok(())
}

/// Listing (and deleting everything) under a parent touches exactly its rows: not those of a
/// parent whose name extends it (`a/b` vs `a/bc`, tenant `a` vs `ab`, topic `t` vs `t2`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_does_not_leak_neighbours() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    let t = Tables::new(store.clone());
    let policies = NamespacePolicies::default();
    for n in ["a/b", "a/bc", "ab/b"] {
        t.namespaces.create(&ns(n), &policies).await?;
    }
    for name in ["a/b/x", "a/b/y", "a/bc/x", "ab/b/x"] {
        t.topics
            .create(&topic(name), &TopicRecord { created_ms: 0 })
            .await?;
        t.managed_ledgers
            .create(&topic(name), &ManagedLedgerRecord::default())
            .await?;
    }
    for (name, sub) in [("a/b/t", "s1"), ("a/b/t", "s2"), ("a/b/t2", "s3")] {
        t.cursors
            .create(&CursorKey::new(topic(name), sub), &CursorRecord::default())
            .await?;
    }
    let owner = OwnershipRecord {
        broker_id: BrokerId("b".into()),
        address: "h:1".into(),
        lease_id: 1,
        acquired_ms: 0,
    };
    let half = BundleRange::new(0, 0x8000_0000).ok_or("range")?;
    for n in ["a/b", "a/bc"] {
        let bundle = NamespaceBundle {
            namespace: ns(n),
            range: half,
        };
        t.ownership.create(&bundle, &owner).await?;
    }
    for n in ["a", "ab"] {
        t.tenants
            .create(&tenant(n), &TenantRecord::default())
            .await?;
    }

    let names = |v: Vec<TopicName>| v.iter().map(TopicName::path).collect::<Vec<_>>();
    assert_eq!(
        names(t.topics.list_keys(&ns("a/b")).await?),
        ["a/b/x", "a/b/y"]
    );
    let listed: Vec<_> = t.topics.list(&ns("a/b")).await?;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        names(t.managed_ledgers.list_keys(&ns("a/b")).await?),
        ["a/b/x", "a/b/y"]
    );
    let nss = t.namespaces.list_keys(&tenant("a")).await?;
    assert_eq!(nss, [ns("a/b"), ns("a/bc")]);
    let subs: Vec<_> = t
        .cursors
        .list_keys(&topic("a/b/t"))
        .await?
        .into_iter()
        .map(|k| k.subscription)
        .collect();
    assert_eq!(subs, ["s1", "s2"]);
    assert_eq!(t.cursors.delete_all(&topic("a/b/t")).await?, 2);
    assert!(t.cursors.list_keys(&topic("a/b/t")).await?.is_empty());
    assert_eq!(
        t.cursors.list_keys(&topic("a/b/t2")).await?.len(),
        1,
        "deleting a topic's cursors leaves its neighbour's"
    );
    let owned = t.ownership.list_keys(&ns("a/b")).await?;
    assert_eq!(
        owned,
        [NamespaceBundle {
            namespace: ns("a/b"),
            range: half
        }]
    );
    assert_eq!(t.tenants.list_keys(&()).await?, [tenant("a"), tenant("ab")]);
    store.shutdown().await?;
    Ok(())
}

/// A key under a table's prefix that names no row (written by hand, say) makes a listing
/// fail with a `BadKey` decode error naming it, not a panic or a silently wrong key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_key_under_a_prefix_is_a_bad_key_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    let t = Tables::new(store.clone());
    let value = TopicRecord { created_ms: 0 }.encode()?;
    store
        .put("/topics/a/b/x/deeper", value.clone(), Expect::Any)
        .await?;
    let listed = t.topics.list_keys(&ns("a/b")).await;
    assert!(
        matches!(&listed, Err(TableError::Decode { key, source: DecodeError::BadKey(_), .. })
            if key == "/topics/a/b/x/deeper"),
        "{listed:?}"
    );
    store
        .put("/ledgers/12", Bytes::from_static(b"x"), Expect::Any)
        .await?;
    let ledgers = t.ledgers.list_keys(&()).await;
    assert!(
        matches!(
            ledgers,
            Err(TableError::Decode {
                source: DecodeError::BadKey(_),
                ..
            })
        ),
        "{ledgers:?}"
    );
    store.shutdown().await?;
    Ok(())
}

/// A table watch yields decoded puts and deletes of its parent's rows only, in order; a
/// malformed value is reported as a decode error and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_yields_decoded_events_and_survives_a_bad_value() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    let t = Tables::new(store.clone());
    let mut w = t.topics.watch(&ns("a/b"), 0).await?;
    let x = topic("a/b/x");
    t.topics
        .create(&topic("a/bc/x"), &TopicRecord { created_ms: 0 })
        .await?;
    let created = t.topics.create(&x, &TopicRecord { created_ms: 7 }).await?;
    store
        .put(&t.topics.key(&x), Bytes::from_static(b"junk"), Expect::Any)
        .await?;
    t.topics
        .put(&x, &TopicRecord { created_ms: 8 }, Expect::Any)
        .await?;
    let deleted = store.current_revision() + 1;
    t.topics.delete(&x, Expect::Any).await?;

    let mut next = async || {
        timeout(DEADLINE, w.next())
            .await
            .map_err(|_| "no event before the deadline")?
            .ok_or("watch ended")
    };
    match next().await? {
        Ok(TableEvent::Put { key, value }) => {
            assert_eq!(key, x);
            assert_eq!(
                (value.record.created_ms, value.version, value.mod_revision),
                (7, 1, created.revision)
            );
        }
        other => return Err(format!("expected the create, got {other:?}").into()),
    }
    assert!(
        matches!(next().await?, Err(TableError::Decode { .. })),
        "the junk value is a decode error"
    );
    assert!(
        matches!(next().await?, Ok(TableEvent::Put { value, .. }) if value.record.created_ms == 8 && value.version == 3)
    );
    match next().await? {
        Ok(TableEvent::Deleted { key, revision }) => {
            assert_eq!((key, revision), (x, deleted));
        }
        other => return Err(format!("expected the delete, got {other:?}").into()),
    }
    store.shutdown().await?;
    Ok(())
}

/// Counters start at 1, count up, and report their last value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_ids_are_allocated_in_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    let t = Tables::new(store.clone());
    assert_eq!(t.counters.current(counters::LEDGER_ID).await?, None);
    assert_eq!(t.counters.next_ledger_id().await?, LedgerId(1));
    assert_eq!(t.counters.next_ledger_id().await?, LedgerId(2));
    assert_eq!(t.counters.current(counters::LEDGER_ID).await?, Some(2));
    store.shutdown().await?;
    Ok(())
}

/// Keys are exactly the layout earlier releases wrote, so existing data directories open.
#[test]
fn keys_keep_the_existing_layout() {
    let orders = topic("persistent://public/default/orders");
    assert_eq!(
        Namespaces::key(&ns("public/default")),
        "/namespaces/public/default"
    );
    assert_eq!(Topics::key(&orders), "/topics/public/default/orders");
    assert_eq!(
        ManagedLedgers::key(&orders),
        "/managed-ledgers/public/default/orders"
    );
    assert_eq!(
        Cursors::key(&CursorKey::new(orders.clone(), "sub")),
        "/cursors/public/default/orders/sub"
    );
    assert_eq!(Ledgers::key(&LedgerId(42)), "/ledgers/00000000000000000042");
    assert!(Ledgers::key(&LedgerId(9)) < Ledgers::key(&LedgerId(10)));
    assert_eq!(counters::LEDGER_ID.key(), "/counters/ledger-id");
    assert_eq!(Tenants::key(&tenant("public")), "/tenants/public");
    assert_eq!(
        PartitionedTopics::key(&orders),
        "/partitioned-topics/public/default/orders"
    );
    let bundle = NamespaceBundle {
        namespace: ns("public/default"),
        range: BundleRange::FULL,
    };
    assert_eq!(
        Ownership::key(&bundle),
        "/ownership/public/default/0x00000000_0xffffffff"
    );
}

/// Values written by earlier releases (the broker's hand-rolled JSON) decode, and encoding
/// the decoded record gives back the same bytes.
#[test]
fn existing_stored_values_decode_and_re_encode_identically() -> TestResult {
    fn same<R: Record + PartialEq + std::fmt::Debug>(stored: &str, expected: R) -> TestResult {
        let decoded = R::decode(stored.as_bytes())?;
        assert_eq!(decoded, expected);
        assert_eq!(std::str::from_utf8(&decoded.encode()?)?, stored);
        Ok(())
    }
    same(
        r#"{"format_version":1,"auto_create_topics":false}"#,
        NamespacePolicies {
            auto_create_topics: false,
            replication: None,
            bundles: None,
            retention: None,
            backlog_quota: None,
            ledger_rollover: None,
        },
    )?;
    same(
        r#"{"format_version":1,"auto_create_topics":true,"replication":{"ensemble_size":5,"write_quorum":3,"ack_quorum":2}}"#,
        NamespacePolicies {
            auto_create_topics: true,
            replication: Some(ReplicationPolicy {
                ensemble_size: 5,
                write_quorum: 3,
                ack_quorum: 2,
            }),
            bundles: None,
            retention: None,
            backlog_quota: None,
            ledger_rollover: None,
        },
    )?;
    same(
        r#"{"format_version":1,"created_ms":1700000000000}"#,
        TopicRecord {
            created_ms: 1_700_000_000_000,
        },
    )?;
    same(
        r#"{"format_version":1,"ledgers":[{"id":3,"entries":12,"size_bytes":400},{"id":5,"entries":null,"size_bytes":0}]}"#,
        ManagedLedgerRecord {
            ledgers: vec![
                LedgerInfo {
                    id: LedgerId(3),
                    entries: Some(12),
                    size_bytes: 400,
                    closed_ms: None,
                },
                LedgerInfo {
                    id: LedgerId(5),
                    entries: None,
                    size_bytes: 0,
                    closed_ms: None,
                },
            ],
        },
    )?;
    same(
        r#"{"format_version":1,"mark_delete":{"ledger":4,"entry":4},"acked":[[{"ledger":4,"entry":6},{"Partial":{"batch_size":2,"indexes":[1]}}],[{"ledger":4,"entry":8},"Full"]]}"#,
        cursor_record(),
    )?;
    Ok(())
}

/// Partitions are named `<topic>-partition-<i>`, and only that canonical spelling maps back
/// to its partitioned topic and index.
#[test]
fn partition_names_map_both_ways() -> TestResult {
    let orders = topic("a/b/orders");
    let names = PartitionedTopicRecord {
        partitions: 3,
        created_ms: 0,
    }
    .partition_names(&orders)?;
    let paths: Vec<_> = names.iter().map(TopicName::path).collect();
    assert_eq!(
        paths,
        [
            "a/b/orders-partition-0",
            "a/b/orders-partition-1",
            "a/b/orders-partition-2"
        ]
    );
    assert_eq!(topics::partition_of(&names[2]), Some((orders.clone(), 2)));
    assert_eq!(topics::partition_of(&orders), None);
    for not_partition in [
        "a/b/orders-partition-",
        "a/b/orders-partition-01",
        "a/b/orders-partition-x",
        "a/b/orders-partition-99999999999",
        "a/b/-partition-1",
    ] {
        assert_eq!(
            topics::partition_of(&topic(not_partition)),
            None,
            "{not_partition}"
        );
    }
    let long = topic(&format!("a/b/{}", "x".repeat(250)));
    assert!(topics::partition_name(&long, 1).is_err(), "too long a name");
    Ok(())
}

/// Bundle ranges parse only from the spelling they print as, with lower below upper.
#[test]
fn bundle_ranges_have_one_spelling() {
    let r = BundleRange::new(0x10, 0x4000_0000).expect("valid range");
    assert_eq!(r.to_string(), "0x00000010_0x40000000");
    assert_eq!("0x00000010_0x40000000".parse::<BundleRange>(), Ok(r));
    assert_eq!(
        BundleRange::FULL.to_string().parse::<BundleRange>(),
        Ok(BundleRange::FULL)
    );
    for bad in [
        "0x00000010_0x4000000",
        "0x0000001G_0x40000000",
        "0x0000000A_0x40000000",
        "0x40000000_0x00000010",
        "0x00000010_0x00000010",
        "00000010_0x40000000",
        "0x00000010-0x40000000",
        "",
    ] {
        assert!(bad.parse::<BundleRange>().is_err(), "{bad}");
    }
    assert_eq!(BundleRange::new(5, 5), None);
}
