//! Lazy begin on a real one-voter metastore: an issued transaction has no record until its
//! first write creates it (in that write), concurrent first writes create one record, no
//! record is created after the deadline or for a fenced producer, limits count created
//! records, a transaction that wrote nothing is decided by creating its record decided, and
//! a decided record outlives its deadline. The deadline is judged on the metastore leader's
//! clock as a creating write enters the log.

use std::collections::BTreeMap;
use std::time::Duration;

use strata_proto::Position;

use super::txn_coordinator::{open, topic};
use crate::tables::{Decided, ProducerEpoch, Tables, TxnRuleError, TxnState, now_ms};
use crate::txn_coordinator::{
    Actor, BeginOptions, CoordinatorError, Ending, TxnCoordinator, TxnLimits,
};
use crate::txn_start::TxnStart;
use crate::txn_sweep::DecidedSweeper;
use crate::types::{Compare, Txn};

fn options(timeout: Duration) -> BeginOptions {
    BeginOptions {
        timeout: Some(timeout),
        ..BeginOptions::default()
    }
}

/// Issuing writes nothing; the first registration creates the record with the start's
/// owner and deadline, its deadline mark and its partition mark, in one write; the next
/// registration updates it.
#[tokio::test]
async fn the_first_registration_creates_the_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = TxnCoordinator::new(Tables::new(store.clone()), TxnLimits::default());
    let t = Tables::new(store.clone());
    let (id, start) = c
        .issue("app", options(Duration::from_secs(30)))
        .await
        .expect("issue");
    let revision = store.current_revision();
    let (again, _) = c
        .issue("app", options(Duration::from_secs(30)))
        .await
        .expect("issue");
    assert_ne!(id, again, "ids are never reused");
    assert_eq!(store.current_revision(), revision, "issuing writes nothing");
    assert!(matches!(
        c.get(id).await,
        Err(CoordinatorError::NotFound(_))
    ));

    let p0 = topic("lazy-p0");
    c.register_partition(id, "app", &p0, Position::new(3, 0), Some(&start))
        .await
        .expect("first registration");
    assert_eq!(
        store.current_revision(),
        revision + 3,
        "record, deadline and partition marks"
    );
    let row = c.get(id).await.expect("created");
    assert_eq!(row.version, 1);
    assert_eq!(row.record.state, TxnState::Open);
    assert_eq!(row.record.owner, "app");
    assert_eq!(row.record.deadline_ms, start.deadline_ms);
    assert_eq!(row.record.created_ms, start.created_ms);
    assert!(row.record.partitions.contains_key(&p0.to_string()));
    let marks = t.txn_deadlines.list(&()).await.expect("marks");
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0].0, (start.deadline_ms, id));
    assert!(
        t.txn_partitions
            .get(&(p0, id))
            .await
            .expect("mark")
            .is_some()
    );

    c.register_partition(
        id,
        "app",
        &topic("lazy-p1"),
        Position::new(4, 0),
        Some(&start),
    )
    .await
    .expect("second registration");
    assert_eq!(c.get(id).await.expect("record").version, 2);
    assert_eq!(
        c.register_partition(
            id,
            "other",
            &topic("lazy-p2"),
            Position::new(5, 0),
            Some(&start)
        )
        .await
        .err()
        .map(|e| e.to_string()),
        Some(TxnRuleError::NotOwner { id }.to_string()),
    );
    store.shutdown().await.expect("shutdown");
}

/// Two coordinators (two brokers) writing first at once, a send on one and an ack on the
/// other: one creates the record, the other updates it; one deadline mark.
#[tokio::test]
async fn concurrent_first_writes_create_one_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let a = TxnCoordinator::new(Tables::new(store.clone()), TxnLimits::default());
    let b = TxnCoordinator::new(Tables::new(store.clone()), TxnLimits::default());
    let t = Tables::new(store.clone());
    for round in 0..10 {
        let (id, start) = a
            .issue("app", options(Duration::from_secs(30)))
            .await
            .expect("issue");
        let out = topic(&format!("race-out-{round}"));
        let input = topic(&format!("race-in-{round}"));
        let (sent, acked) = tokio::join!(
            a.register_partition(id, "app", &out, Position::new(1, 0), Some(&start)),
            b.register_subscription(id, "app", &input, "workers", Some(&start)),
        );
        sent.expect("send side");
        acked.expect("ack side");
        let record = a.get(id).await.expect("record").record;
        assert!(
            record.partitions.contains_key(&out.to_string()),
            "round {round}"
        );
        assert!(
            record
                .subscriptions
                .contains(&(input.to_string(), "workers".to_owned())),
            "round {round}"
        );
        let marks = t.txn_deadlines.list(&()).await.expect("marks");
        assert_eq!(
            marks.iter().filter(|(k, _)| k.1 == id).count(),
            1,
            "round {round}"
        );
    }
    store.shutdown().await.expect("shutdown");
}

/// A first write after the deadline is refused and writes nothing: a late write never
/// creates a transaction that may have been decided and forgotten. So is a start no begin
/// could have issued.
#[tokio::test]
async fn no_record_is_created_after_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = TxnCoordinator::new(Tables::new(store.clone()), TxnLimits::default());
    let (id, _) = c
        .issue("app", options(Duration::from_secs(30)))
        .await
        .expect("issue");
    let now = now_ms();
    let expired = TxnStart {
        created_ms: now - 2_000,
        deadline_ms: now - 1_000,
        producer: None,
        check_back: None,
    };
    let revision = store.current_revision();
    let late = c
        .register_partition(
            id,
            "app",
            &topic("late"),
            Position::new(1, 0),
            Some(&expired),
        )
        .await;
    assert!(
        matches!(
            late,
            Err(CoordinatorError::Rule(TxnRuleError::NotOpen {
                state: TxnState::TimedOut,
                ..
            }))
        ),
        "{late:?}"
    );
    let ack = c
        .ack_guard(id, "app", &topic("late-in"), "s", Some(&expired))
        .await;
    assert!(ack.is_err(), "an ack's guard too");
    let too_long = TxnStart {
        created_ms: now,
        deadline_ms: now + 10 * 3_600_000,
        producer: None,
        check_back: None,
    };
    assert!(matches!(
        c.register_partition(
            id,
            "app",
            &topic("late"),
            Position::new(1, 0),
            Some(&too_long)
        )
        .await,
        Err(CoordinatorError::InvalidTimeout { .. })
    ));
    assert_eq!(store.current_revision(), revision, "nothing written");
    store.shutdown().await.expect("shutdown");
}

/// A transaction that wrote nothing: its abort creates the record ABORTED (so a send still
/// on its way finds it decided), its commit creates it COMMITTED; both answer the same on a
/// retry. A commit naming partition ends, or coming after the deadline, finds nothing: its
/// record may have been decided and forgotten.
#[tokio::test]
async fn an_unwritten_transaction_is_decided_by_creating_its_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = TxnCoordinator::new(Tables::new(store.clone()), TxnLimits::default());
    let t = Tables::new(store.clone());
    let none = BTreeMap::new();
    let client = Actor::Client("app");

    let (aborted, start) = c
        .issue("app", options(Duration::from_secs(30)))
        .await
        .expect("issue");
    let (record, decided) = c
        .end(aborted, client, Ending::Abort, Some(&start))
        .await
        .expect("abort");
    assert_eq!((record.state, decided), (TxnState::Aborted, Decided::Now));
    let (_, again) = c
        .end(aborted, client, Ending::Abort, Some(&start))
        .await
        .expect("abort again");
    assert_eq!(again, Decided::Already);
    assert!(t.txn_deadlines.list(&()).await.expect("marks").is_empty());
    assert_eq!(t.txn_decided.list(&()).await.expect("decided").len(), 1);
    let late = c
        .register_partition(
            aborted,
            "app",
            &topic("p"),
            Position::new(1, 0),
            Some(&start),
        )
        .await;
    assert!(
        matches!(
            late,
            Err(CoordinatorError::Rule(TxnRuleError::NotOpen {
                state: TxnState::Aborted,
                ..
            }))
        ),
        "{late:?}"
    );

    let (committed, start) = c
        .issue("app", options(Duration::from_secs(30)))
        .await
        .expect("issue");
    let (record, _) = c
        .end(committed, client, Ending::Commit(&none), Some(&start))
        .await
        .expect("commit");
    assert_eq!(record.state, TxnState::Committed);
    assert_eq!(
        c.get(committed).await.expect("record").record.state,
        TxnState::Committed
    );

    let (claimed, start) = c
        .issue("app", options(Duration::from_secs(30)))
        .await
        .expect("issue");
    let ends = BTreeMap::from([(
        "persistent://public/default/p".to_owned(),
        Position::new(1, 0),
    )]);
    assert!(matches!(
        c.end(claimed, client, Ending::Commit(&ends), Some(&start))
            .await,
        Err(CoordinatorError::NotFound(_))
    ));
    let now = now_ms();
    let expired = TxnStart {
        created_ms: now - 2_000,
        deadline_ms: now - 1_000,
        ..start
    };
    assert!(matches!(
        c.end(claimed, client, Ending::Abort, Some(&expired)).await,
        Err(CoordinatorError::NotFound(_))
    ));
    assert!(
        matches!(
            c.end(claimed, Actor::Operator, Ending::Abort, None).await,
            Err(CoordinatorError::NotFound(_))
        ),
        "an operator has no start: nothing to abort"
    );
    store.shutdown().await.expect("shutdown");
}

/// The deadline is also judged on the metastore leader's clock, as the creating write enters
/// the log: a write checked in time on the broker but delayed past the deadline on its way
/// creates nothing, and its failure is reported as a timeout (not retried for ever), unless
/// another write created the record in time. The
/// leader stamps the time itself: what a proposer puts in the comparison is overwritten.
#[tokio::test]
async fn a_creating_write_delayed_past_the_deadline_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = TxnCoordinator::new(Tables::new(store.clone()), TxnLimits::default());
    let t = Tables::new(store.clone());
    let (id, start) = c
        .issue("app", options(Duration::from_millis(300)))
        .await
        .expect("issue");
    let creation = c
        .creation(id, "app", &start, true)
        .await
        .expect("in time on the broker's clock")
        .expect("no record yet");
    // Another one, created in time by its first write.
    let (created, created_start) = c
        .issue("app", options(Duration::from_millis(300)))
        .await
        .expect("issue");
    c.register_partition(
        created,
        "app",
        &topic("in-time"),
        Position::new(1, 0),
        Some(&created_start),
    )
    .await
    .expect("created in time");
    let (record, compares, marks) = creation.split();
    let write = Txn {
        compares,
        success: std::iter::once(t.txns.put_op(&id, &record).expect("op"))
            .chain(marks)
            .collect(),
        failure: Vec::new(),
    };
    // The write is held up in transit until the deadline has passed.
    let late_by = start.deadline_ms.saturating_sub(now_ms()) + 20;
    tokio::time::sleep(Duration::from_millis(late_by)).await;
    let response = store.txn(write).await.expect("write");
    assert!(!response.succeeded, "refused on the leader's clock");
    assert!(matches!(
        c.get(id).await,
        Err(CoordinatorError::NotFound(_))
    ));
    let marks = t.txn_deadlines.list(&()).await.expect("marks");
    assert!(marks.iter().all(|(key, _)| key.1 != id), "no deadline mark");
    let why = c.creation_failed(id, &start).await;
    assert!(
        matches!(
            why,
            Err(CoordinatorError::Rule(TxnRuleError::NotOpen {
                state: TxnState::TimedOut,
                ..
            }))
        ),
        "{why:?}"
    );
    assert!(
        c.creation_failed(created, &created_start).await.is_ok(),
        "a record that exists is read next, whatever the time: not reported timed out"
    );

    let now = now_ms();
    let claims = |deadline_ms, leader_ms| Txn {
        compares: vec![Compare::LeaderTimeAtMost {
            deadline_ms,
            leader_ms,
        }],
        success: Vec::new(),
        failure: Vec::new(),
    };
    let passed = store.txn(claims(now - 1_000, 1)).await.expect("write");
    assert!(!passed.succeeded, "a proposer's early time is overwritten");
    let ahead = store
        .txn(claims(now + 60_000, u64::MAX))
        .await
        .expect("write");
    assert!(ahead.succeeded, "a proposer's late time is overwritten");
    store.shutdown().await.expect("shutdown");
}

/// A new epoch of a transactional producer fences its transactions that have no record
/// yet: their issue, creation and decision are refused.
#[tokio::test]
async fn a_new_epoch_fences_an_unwritten_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = TxnCoordinator::new(Tables::new(store.clone()), TxnLimits::default());
    let epoch = c.init_producer("worker", "app-1").await.expect("init");
    let producer = Some(ProducerEpoch {
        name: "worker".into(),
        epoch,
    });
    let with_producer = || BeginOptions {
        producer: producer.clone(),
        ..options(Duration::from_secs(30))
    };
    let (id, start) = c.issue("app-1", with_producer()).await.expect("issue");
    c.init_producer("worker", "app-2")
        .await
        .expect("next instance");
    fn fenced<T>(r: &Result<T, CoordinatorError>) -> bool {
        matches!(
            r,
            Err(CoordinatorError::Rule(TxnRuleError::ProducerFenced { .. }))
        )
    }
    let created = c
        .register_partition(
            id,
            "app-1",
            &topic("fenced"),
            Position::new(1, 0),
            Some(&start),
        )
        .await;
    assert!(fenced(&created), "{created:?}");
    let acked = c
        .register_subscription(id, "app-1", &topic("fenced-in"), "s", Some(&start))
        .await;
    assert!(fenced(&acked), "{acked:?}");
    let none = BTreeMap::new();
    let commit = c
        .end(
            id,
            Actor::Client("app-1"),
            Ending::Commit(&none),
            Some(&start),
        )
        .await;
    assert!(fenced(&commit), "{commit:?}");
    let issued = c.issue("app-1", with_producer()).await;
    assert!(fenced(&issued), "{issued:?}");
    assert!(matches!(
        c.get(id).await,
        Err(CoordinatorError::NotFound(_))
    ));
    store.shutdown().await.expect("shutdown");
}

/// Limits count created records: issuing is never refused, the first write beyond the
/// limit is.
#[tokio::test]
async fn limits_are_counted_when_records_are_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let limits = TxnLimits {
        max_open_per_client: 1,
        ..TxnLimits::default()
    };
    let c = TxnCoordinator::new(Tables::new(store.clone()), limits);
    let (first, first_start) = c
        .issue("app", options(Duration::from_secs(30)))
        .await
        .expect("issue");
    let (second, second_start) = c
        .issue("app", options(Duration::from_secs(30)))
        .await
        .expect("issuing is not limited");
    c.register_partition(
        first,
        "app",
        &topic("l0"),
        Position::new(1, 0),
        Some(&first_start),
    )
    .await
    .expect("the first one opens");
    let refused = c
        .register_partition(
            second,
            "app",
            &topic("l1"),
            Position::new(1, 0),
            Some(&second_start),
        )
        .await;
    assert!(
        matches!(refused, Err(CoordinatorError::TooManyOpen { .. })),
        "{refused:?}"
    );
    store.shutdown().await.expect("shutdown");
}

/// A record decided long before its deadline is kept until the deadline plus the late-write
/// margin, then forgotten.
#[tokio::test]
async fn a_decided_record_is_kept_past_its_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = TxnCoordinator::new(Tables::new(store.clone()), TxnLimits::default());
    let (id, start) = c
        .issue("app", options(Duration::from_secs(30)))
        .await
        .expect("issue");
    c.register_partition(id, "app", &topic("kept"), Position::new(1, 0), Some(&start))
        .await
        .expect("register");
    let ends = BTreeMap::from([(topic("kept").to_string(), Position::new(1, 0))]);
    c.commit(id, "app", &ends).await.expect("commit");
    Tables::new(store.clone())
        .txn_partitions
        .delete(&(topic("kept"), id), crate::Expect::Any)
        .await
        .expect("the partition settles");
    let margin = Duration::from_secs(5);
    let mut sweeper = DecidedSweeper::new(c.clone(), Duration::ZERO).with_late_write_margin(margin);
    assert_eq!(sweeper.sweep(now_ms()).await.expect("sweep"), 0);
    assert!(c.get(id).await.is_ok(), "kept before its deadline");
    let past = start.deadline_ms + margin.as_millis() as u64;
    let mut sweeper = DecidedSweeper::new(c.clone(), Duration::ZERO).with_late_write_margin(margin);
    assert_eq!(sweeper.sweep(past).await.expect("sweep"), 1);
    assert!(matches!(
        c.get(id).await,
        Err(CoordinatorError::NotFound(_))
    ));
    store.shutdown().await.expect("shutdown");
}
