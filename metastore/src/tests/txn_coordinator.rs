//! The transaction coordinator on a real one-voter metastore (Raft log and state machine in
//! RocksDB): decisions are one compare-and-set each, idempotent, final, and survive a
//! restart; the expiry times out overdue transactions; limits and ownership are enforced.

use std::collections::BTreeMap;
use std::time::Duration;

use strata_proto::{Position, TopicName, TxnId};

use crate::tables::{Tables, TxnRuleError, TxnState, now_ms};
use crate::txn_coordinator::{CoordinatorError, TxnCoordinator, TxnLimits};
use crate::{MetaStore, MetaStoreConfig};

pub(super) async fn open(dir: &std::path::Path) -> MetaStore {
    tokio::time::timeout(
        Duration::from_secs(20),
        MetaStore::open_standalone(dir, MetaStoreConfig::default()),
    )
    .await
    .expect("opened in time")
    .expect("open")
}

fn coordinator(store: &MetaStore, limits: TxnLimits) -> TxnCoordinator {
    TxnCoordinator::new(Tables::new(store.clone()), limits)
}

pub(super) fn topic(name: &str) -> TopicName {
    TopicName::parse(name).expect("topic")
}

/// Commit fixes the ranges, answers again on a retry, refuses an abort afterwards, and the
/// decision is still there after the metastore restarts. Ids are never reused.
#[tokio::test]
async fn commit_is_idempotent_final_and_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = coordinator(&store, TxnLimits::default());
    let (id, record) = c
        .begin("app", Some(Duration::from_secs(30)), None)
        .await
        .expect("begin");
    assert_eq!(record.state, TxnState::Open);
    let p0 = topic("out-partition-0");
    c.register_partition(id, "app", &p0, Position::new(9, 4), None)
        .await
        .expect("register");
    c.register_partition(id, "app", &p0, Position::new(9, 7), None)
        .await
        .expect("registered already: no-op");
    c.register_subscription(id, "app", &topic("in"), "workers", None)
        .await
        .expect("register subscription");
    let last = BTreeMap::from([(p0.to_string(), Position::new(9, 8))]);
    let committed = c.commit(id, "app", &last).await.expect("commit");
    assert_eq!(committed.state, TxnState::Committed);
    assert_eq!(
        committed.partitions[&p0.to_string()].first,
        Position::new(9, 4)
    );
    assert_eq!(
        committed.partitions[&p0.to_string()].last,
        Some(Position::new(9, 8))
    );
    // A retried commit answers the same.
    assert_eq!(
        c.commit(id, "app", &last).await.expect("again").state,
        TxnState::Committed
    );
    assert!(matches!(
        c.abort(id, Some("app")).await,
        Err(CoordinatorError::Rule(TxnRuleError::AlreadyDecided { .. }))
    ));
    assert!(matches!(
        c.register_partition(id, "app", &topic("late"), Position::new(9, 9), None)
            .await,
        Err(CoordinatorError::Rule(TxnRuleError::NotOpen { .. }))
    ));
    assert!(
        c.list(true).await.expect("list").is_empty(),
        "no transaction is open"
    );
    // Every handle on the store goes before it is reopened (RocksDB's lock).
    drop(c);
    store.shutdown().await.expect("shutdown");
    drop(store);

    let store = open(dir.path()).await;
    let c = coordinator(&store, TxnLimits::default());
    assert_eq!(
        c.get(id).await.expect("get").record.state,
        TxnState::Committed
    );
    let (next, _) = c
        .begin("app", None, None)
        .await
        .expect("begin after restart");
    assert!(next > id, "ids are never reused: {next} after {id}");
    store.shutdown().await.expect("shutdown");
}

/// Only the owner acts; an unknown id is NotFound; an abort is final and a second one
/// answers the same; an operator may abort anyone's transaction.
#[tokio::test]
async fn abort_ownership_and_unknown_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = coordinator(&store, TxnLimits::default());
    let (id, _) = c.begin("app", None, None).await.expect("begin");
    assert!(matches!(
        c.commit(id, "intruder", &BTreeMap::new()).await,
        Err(CoordinatorError::Rule(TxnRuleError::NotOwner { .. }))
    ));
    assert!(matches!(
        c.register_partition(id, "intruder", &topic("x"), Position::new(1, 0), None)
            .await,
        Err(CoordinatorError::Rule(TxnRuleError::NotOwner { .. }))
    ));
    assert!(matches!(
        c.commit(TxnId(u64::MAX), "app", &BTreeMap::new()).await,
        Err(CoordinatorError::NotFound(_))
    ));
    assert_eq!(
        c.abort(id, Some("app")).await.expect("abort").state,
        TxnState::Aborted
    );
    assert_eq!(
        c.abort(id, Some("app")).await.expect("again").state,
        TxnState::Aborted
    );
    assert!(matches!(
        c.commit(id, "app", &BTreeMap::new()).await,
        Err(CoordinatorError::Rule(TxnRuleError::AlreadyDecided { .. }))
    ));
    let (other, _) = c.begin("someone", None, None).await.expect("begin");
    assert_eq!(
        c.abort(other, None).await.expect("operator abort").state,
        TxnState::Aborted
    );
    store.shutdown().await.expect("shutdown");
}

/// The expiry times out exactly the overdue open transactions; a timed-out one cannot be
/// committed; a decided one is not touched.
#[tokio::test]
async fn expiry_times_out_overdue_transactions_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = coordinator(&store, TxnLimits::default());
    let (short, rec) = c
        .begin("app", Some(Duration::from_millis(10)), None)
        .await
        .expect("begin");
    let (long, _) = c
        .begin("app", Some(Duration::from_secs(600)), None)
        .await
        .expect("begin");
    let (done, _) = c
        .begin("app", Some(Duration::from_millis(10)), None)
        .await
        .expect("begin");
    c.commit(done, "app", &BTreeMap::new())
        .await
        .expect("commit");
    // "Now" is passed in: no sleeping for the deadline.
    assert_eq!(c.expire_due(rec.deadline_ms - 1).await.expect("expire"), 0);
    assert_eq!(c.expire_due(rec.deadline_ms + 1).await.expect("expire"), 1);
    assert_eq!(
        c.get(short).await.expect("get").record.state,
        TxnState::TimedOut
    );
    assert_eq!(c.get(long).await.expect("get").record.state, TxnState::Open);
    assert_eq!(
        c.get(done).await.expect("get").record.state,
        TxnState::Committed
    );
    assert!(matches!(
        c.commit(short, "app", &BTreeMap::new()).await,
        Err(CoordinatorError::Rule(TxnRuleError::AlreadyDecided { .. }))
    ));
    assert_eq!(c.expire_due(now_ms() + 3_600_000).await.expect("expire"), 1);
    store.shutdown().await.expect("shutdown");
}

/// Open transactions are limited per client and per cluster; deciding one frees its slot;
/// a timeout out of range is refused.
#[tokio::test]
async fn open_transactions_are_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = coordinator(
        &store,
        TxnLimits {
            max_open_per_client: 2,
            max_open: 3,
            ..TxnLimits::default()
        },
    );
    let (a, _) = c.begin("a", None, None).await.expect("begin");
    c.begin("a", None, None).await.expect("begin");
    assert!(matches!(
        c.begin("a", None, None).await,
        Err(CoordinatorError::TooManyOpen { .. })
    ));
    c.begin("b", None, None).await.expect("another client");
    assert!(matches!(
        c.begin("c", None, None).await,
        Err(CoordinatorError::TooManyOpen { .. })
    ));
    c.abort(a, Some("a")).await.expect("abort");
    c.begin("a", None, None)
        .await
        .expect("a slot is free again");
    assert!(matches!(
        c.begin("a", Some(Duration::ZERO), None).await,
        Err(CoordinatorError::InvalidTimeout { .. })
    ));
    store.shutdown().await.expect("shutdown");
}

/// A new instance of a transactional producer takes the next epoch and fences the older
/// one: the zombie's open transaction is aborted (its commit is refused), it cannot begin
/// again, and another producer's transactions are untouched.
#[tokio::test]
async fn a_new_producer_epoch_fences_the_zombie() {
    use crate::tables::ProducerEpoch;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = coordinator(&store, TxnLimits::default());
    let at = |epoch| {
        Some(ProducerEpoch {
            name: "worker-1".into(),
            epoch,
        })
    };
    assert!(
        matches!(
            c.begin("zombie", None, at(1)).await,
            Err(CoordinatorError::Rule(TxnRuleError::ProducerFenced {
                current: 0,
                ..
            }))
        ),
        "an epoch nobody took is refused"
    );
    let first = c.init_producer("worker-1", "zombie").await.expect("init");
    assert_eq!(first, 1);
    let (old, _) = c.begin("zombie", None, at(1)).await.expect("begin");
    let (bystander, _) = c.begin("other", None, None).await.expect("begin");

    let second = c
        .init_producer("worker-1", "restarted")
        .await
        .expect("init");
    assert_eq!(second, 2);
    assert_eq!(
        c.get(old).await.expect("get").record.state,
        TxnState::Aborted
    );
    assert!(matches!(
        c.commit(old, "zombie", &BTreeMap::new()).await,
        Err(CoordinatorError::Rule(TxnRuleError::AlreadyDecided { .. }))
    ));
    assert!(matches!(
        c.begin("zombie", None, at(1)).await,
        Err(CoordinatorError::Rule(TxnRuleError::ProducerFenced {
            epoch: 1,
            current: 2,
            ..
        }))
    ));
    assert_eq!(
        c.get(bystander).await.expect("get").record.state,
        TxnState::Open
    );
    let (new, record) = c.begin("restarted", None, at(2)).await.expect("begin");
    assert_eq!(record.producer, at(2));
    c.commit(new, "restarted", &BTreeMap::new())
        .await
        .expect("the current instance commits");
    store.shutdown().await.expect("shutdown");
}

/// The epoch is checked at commit too: if a new instance took the next epoch but stopped
/// before aborting the old instance's transactions, the zombie's commit is refused with
/// `ProducerFenced` and its transaction is aborted instead.
#[tokio::test]
async fn a_zombie_commit_is_fenced_even_if_the_sweep_never_ran() {
    use crate::tables::{ProducerEpoch, TxnProducerRecord};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = coordinator(&store, TxnLimits::default());
    c.init_producer("worker-1", "zombie").await.expect("init");
    let epoch_1 = Some(ProducerEpoch {
        name: "worker-1".into(),
        epoch: 1,
    });
    let (old, _) = c.begin("zombie", None, epoch_1).await.expect("begin");
    // The new instance's init: the epoch bump only, as if it crashed before the sweep.
    let tables = Tables::new(store.clone());
    let row = tables
        .txn_producers
        .get(&"worker-1".to_string())
        .await
        .expect("get")
        .expect("the producer exists");
    let next = TxnProducerRecord::next(Some(&row.record), "restarted");
    tables
        .txn_producers
        .update(&"worker-1".to_string(), &next, row.version)
        .await
        .expect("bump the epoch");

    assert!(matches!(
        c.commit(old, "zombie", &BTreeMap::new()).await,
        Err(CoordinatorError::Rule(TxnRuleError::ProducerFenced {
            epoch: 1,
            current: 2,
            ..
        }))
    ));
    assert_eq!(
        c.get(old).await.expect("get").record.state,
        TxnState::Aborted,
        "the zombie's transaction is aborted, not left open"
    );
    store.shutdown().await.expect("shutdown");
}

/// Ids come from blocks each coordinator reserves with one counter write: two coordinators
/// (two brokers) beginning at once never hand out the same id, and a block is reserved once
/// per `TXN_ID_BLOCK` transactions, not per transaction.
#[tokio::test]
async fn coordinators_hand_out_distinct_ids_from_reserved_blocks() {
    use crate::tables::counters::TXN_ID;
    use crate::txn_coordinator::TXN_ID_BLOCK;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let limits = TxnLimits {
        max_open: 10_000,
        max_open_per_client: 10_000,
        ..TxnLimits::default()
    };
    let (a, b) = (coordinator(&store, limits), coordinator(&store, limits));
    let mut begins = tokio::task::JoinSet::new();
    for i in 0..60 {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        begins.spawn(async move { c.begin("app", None, None).await.map(|(id, _)| id) });
    }
    let mut ids = Vec::new();
    while let Some(done) = begins.join_next().await {
        ids.push(done.expect("task").expect("begin"));
    }
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "an id was handed out twice");
    let counter = Tables::new(store.clone())
        .counters
        .current(TXN_ID)
        .await
        .expect("counter");
    assert_eq!(
        counter,
        Some(2 * TXN_ID_BLOCK),
        "each coordinator reserved one block"
    );
    store.shutdown().await.expect("shutdown");
}

/// A decided transaction is forgotten only once `keep` has passed and none of its
/// participants' marks is left: with a partition or subscription mark still there, the record
/// stays (a participant loaded later still needs the outcome) and it is looked at again later.
#[tokio::test]
async fn decided_transactions_are_forgotten_only_once_settled() {
    use crate::tables::CursorKey;
    use crate::txn_sweep::DecidedSweeper;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let c = coordinator(&store, TxnLimits::default());
    let t = Tables::new(store.clone());
    let (id, _) = c
        .begin("app", Some(Duration::from_secs(30)), None)
        .await
        .expect("begin");
    let p0 = topic("forget-out");
    c.register_partition(id, "app", &p0, Position::new(4, 0), None)
        .await
        .expect("register");
    c.register_subscription(id, "app", &topic("forget-in"), "workers", None)
        .await
        .expect("register subscription");
    let cursor = CursorKey::new(topic("forget-in"), "workers");
    assert!(
        t.txn_subs
            .get(&(cursor.clone(), id))
            .await
            .expect("get")
            .is_some(),
        "registering a subscription marks it"
    );
    let last = BTreeMap::from([(p0.to_string(), Position::new(4, 2))]);
    c.commit(id, "app", &last).await.expect("commit");
    let decided = t.txn_decided.list(&()).await.expect("list");
    assert_eq!(decided.len(), 1, "the decision is indexed");

    let keep = Duration::from_secs(3600);
    let mut sweeper = DecidedSweeper::new(c.clone(), keep);
    let later = now_ms() + keep.as_millis() as u64 + 1;
    assert_eq!(
        sweeper.sweep(now_ms()).await.expect("sweep"),
        0,
        "kept for `keep`"
    );
    assert_eq!(sweeper.sweep(later).await.expect("sweep"), 0, "marks left");
    assert_eq!(
        c.get(id).await.expect("kept").record.state,
        TxnState::Committed
    );
    let moved = t.txn_decided.list(&()).await.expect("list");
    assert_eq!(moved.len(), 1);
    assert!(moved[0].0.0 >= later, "looked at again later: {moved:?}");

    // The partition settles; the subscription has not yet.
    t.txn_partitions
        .delete(&(p0.clone(), id), crate::Expect::Any)
        .await
        .expect("settle partition");
    let much_later = later + keep.as_millis() as u64 + 1;
    let mut sweeper = DecidedSweeper::new(c.clone(), keep);
    assert_eq!(sweeper.sweep(much_later).await.expect("sweep"), 0);
    assert!(c.get(id).await.is_ok(), "the subscription still needs it");
    t.txn_subs
        .delete(&(cursor, id), crate::Expect::Any)
        .await
        .expect("settle subscription");
    let last_pass = much_later + keep.as_millis() as u64 + 1;
    let mut sweeper = DecidedSweeper::new(c.clone(), keep);
    assert_eq!(sweeper.sweep(last_pass).await.expect("sweep"), 1);
    assert!(matches!(
        c.get(id).await,
        Err(CoordinatorError::NotFound(_))
    ));
    assert!(t.txn_decided.list(&()).await.expect("list").is_empty());
    store.shutdown().await.expect("shutdown");
}

/// Coordinators on different brokers step one transaction in turn, each from its own copy of
/// the record: a copy another one made stale fails its compare and is read again, so no step
/// is lost and no step lands on a decided transaction.
#[tokio::test]
async fn steps_from_stale_copies_are_redone_on_the_stored_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let here = coordinator(&store, TxnLimits::default());
    let there = coordinator(&store, TxnLimits::default());
    let (id, _) = here.begin("app", None, None).await.expect("begin");
    let (a, b) = (topic("stale-a"), topic("stale-b"));
    // `there` reads the record and registers; `here` still holds the copy from its begin.
    there
        .register_partition(id, "app", &a, Position::new(3, 0), None)
        .await
        .expect("register there");
    here.register_partition(id, "app", &b, Position::new(5, 0), None)
        .await
        .expect("register here, from a stale copy");
    there
        .register_subscription(id, "app", &topic("stale-in"), "workers", None)
        .await
        .expect("register a subscription there, from a stale copy");
    let stored = here.get(id).await.expect("record").record;
    assert_eq!(
        stored.partitions.len(),
        2,
        "a registration was lost: {stored:?}"
    );
    assert_eq!(stored.subscriptions.len(), 1, "{stored:?}");
    let last = BTreeMap::from([
        (a.to_string(), Position::new(3, 1)),
        (b.to_string(), Position::new(5, 1)),
    ]);
    // `here`'s copy is stale again (the subscription registered there): the commit still
    // decides on the stored record, which names both partitions.
    let committed = here.commit(id, "app", &last).await.expect("commit");
    assert_eq!(committed.partitions.len(), 2);
    // `there`'s copy still says open: its registration must be refused, not written into a
    // committed transaction.
    let late = there
        .register_partition(id, "app", &topic("stale-c"), Position::new(7, 0), None)
        .await;
    assert!(
        matches!(
            late,
            Err(CoordinatorError::Rule(TxnRuleError::NotOpen { .. }))
        ),
        "{late:?}"
    );
    let stored = here.get(id).await.expect("record").record;
    assert_eq!(stored.state, TxnState::Committed);
    assert_eq!(stored.partitions.len(), 2, "{stored:?}");
}
