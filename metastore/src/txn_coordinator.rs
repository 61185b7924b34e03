//! The transaction coordinator: begins, registers participants in, decides and times out
//! transactions, each step one compare-and-set of the transaction's record (one Raft entry).
//! Any broker runs the client-facing steps against the metastore; the metastore leader runs
//! the expiry (see [`spawn_expiry`]), so a timeout survives the failover of any node.
//!
//! The rules themselves (which transitions are allowed, idempotent decisions) are plain
//! methods of [`TxnRecord`]; this module adds the reads, retries and limits.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proto::{Position, TopicName, TxnId};
use tracing::{debug, info, warn};

use crate::tables::counters::TXN_ID;
use crate::tables::{
    CursorKey, Decided, DecidedMark, ProducerEpoch, TableError, Tables, TxnPartitionMark,
    TxnProducerRecord, TxnRecord, TxnRuleError, TxnSubMark, Versioned, now_ms,
};
use crate::txn_open_view::OpenView;
use crate::txn_record_cache::{KnownRecord, RecordCache, RecordTurn};
use crate::txn_start::{LATE_WRITE_MARGIN, TxnStart};
use crate::txn_sweep::{DEFAULT_KEEP_DECIDED, DecidedSweeper};
use crate::types::Txn;
use crate::{Expect, MetaStore};

/// Bounds on transactions, so open ones cannot pile up without limit.
#[derive(Debug, Clone, Copy)]
pub struct TxnLimits {
    pub max_open_per_client: usize,
    pub max_open: usize,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
}

impl Default for TxnLimits {
    fn default() -> Self {
        Self {
            max_open_per_client: 1_000,
            max_open: 100_000,
            default_timeout: Duration::from_secs(60),
            max_timeout: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(
        "transaction {0} does not exist (never begun, nothing written in it yet, or decided and since forgotten)"
    )]
    NotFound(TxnId),
    #[error(transparent)]
    Rule(#[from] TxnRuleError),
    #[error("too many open transactions {scope}: the limit is {limit}")]
    TooManyOpen { scope: String, limit: usize },
    #[error("transaction timeout {asked:?} is out of range (1 ms to {max:?})")]
    InvalidTimeout { asked: Duration, max: Duration },
    #[error("transaction conflict: {0}")]
    Conflict(String),
    #[error("metadata: {0}")]
    Table(#[from] TableError),
}

/// How often a check-back transaction's group is asked, unless the client says.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Each check is a metastore write and a watch event on every broker: not more often.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// How to begin a transaction.
#[derive(Debug, Clone, Default)]
pub struct BeginOptions {
    /// `None`: the coordinator's default.
    pub timeout: Option<Duration>,
    /// The transactional producer (and epoch) beginning it.
    pub producer: Option<ProducerEpoch>,
    /// Check-back: the producer group to ask once it is prepared, and how often (`None`:
    /// [`DEFAULT_CHECK_INTERVAL`]).
    pub check_back: Option<(String, Option<Duration>)>,
}

/// Who asks for a decision.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// The client that began the transaction.
    Client(&'a str),
    /// A checker of the transaction's producer group (check-back).
    Group(&'a str),
    /// An operator: any transaction, abort only.
    Operator,
}

/// See [`TxnCoordinator::ack_guard`]. Holds the record's turn: no other step of this
/// coordinator writes the record until it is dropped or [`AckGuard::applied`].
#[derive(Debug)]
pub struct AckGuard {
    /// The record's version as read (0: absent, created by the write carrying this guard).
    pub version: u64,
    pub compares: Vec<crate::types::Compare>,
    /// The writes registering the subscription in the transaction (creating the record
    /// first, if need be), if it is new there.
    pub register: Vec<crate::types::TxnOp>,
    /// The record once the write carrying this guard applies.
    after: TxnRecord,
    turn: RecordTurn,
}

impl AckGuard {
    /// The write carrying this guard applied: its record is the next step's guess.
    pub fn applied(mut self) {
        if self.register.is_empty() {
            self.turn.set(Some(KnownRecord {
                record: self.after,
                version: self.version,
            }));
        } else {
            self.turn.wrote(self.after, self.version);
        }
    }
}

/// A client's decision on a transaction that may have written nothing yet (lazy begin).
#[derive(Debug, Clone, Copy)]
struct Unwritten<'a> {
    owner: &'a str,
    start: &'a TxnStart,
    /// The client says it wrote: a missing record is not to be created.
    wrote: bool,
}

/// How a client ends its transaction.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    /// With the last entry it saw stored on each partition it wrote to.
    Commit(&'a BTreeMap<String, Position>),
    Abort,
}

/// The coordinator over the metastore's transaction tables. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TxnCoordinator {
    tables: Tables,
    limits: TxnLimits,
    /// Transaction ids reserved from the counter and not handed out yet.
    ids: Arc<tokio::sync::Mutex<Range<u64>>>,
    /// Open transactions as last counted, for the limits.
    open_view: Arc<tokio::sync::Mutex<OpenView>>,
    /// The records this coordinator wrote last, and one step at a time per record.
    records: Arc<RecordCache>,
}

/// Transaction ids reserved per counter write. A coordinator that stops skips the rest of its
/// block: ids are unique, not gapless.
pub const TXN_ID_BLOCK: u64 = 1_000;

impl TxnCoordinator {
    pub fn new(tables: Tables, limits: TxnLimits) -> Self {
        Self {
            tables,
            limits,
            ids: Arc::new(tokio::sync::Mutex::new(0..0)),
            open_view: Arc::new(tokio::sync::Mutex::new(OpenView::stale())),
            records: Arc::new(RecordCache::default()),
        }
    }

    /// The record as this turn knows it, else as read now (and then known to the turn).
    async fn current(&self, turn: &mut RecordTurn) -> Result<KnownRecord, CoordinatorError> {
        if let Some(known) = turn.known() {
            return Ok(known.clone());
        }
        let row = self.get(turn.id()).await?;
        let known = KnownRecord {
            record: row.record,
            version: row.version,
        };
        turn.set(Some(known.clone()));
        Ok(known)
    }

    /// As [`TxnCoordinator::current`], but with a `start`, an absent record is `None`:
    /// the caller's write creates it.
    async fn current_or_absent(
        &self,
        turn: &mut RecordTurn,
        start: Option<&TxnStart>,
    ) -> Result<Option<KnownRecord>, CoordinatorError> {
        match self.current(turn).await {
            Err(CoordinatorError::NotFound(_)) if start.is_some() => Ok(None),
            other => other.map(Some),
        }
    }

    pub(crate) fn limits(&self) -> &TxnLimits {
        &self.limits
    }

    /// A transaction id never handed out before, by any coordinator: from this coordinator's
    /// reserved block, reserving the next block when it is used up (one counter write per
    /// [`TXN_ID_BLOCK`] transactions instead of one per transaction).
    pub(crate) async fn next_id(&self) -> Result<TxnId, CoordinatorError> {
        let mut ids = self.ids.lock().await;
        if ids.is_empty() {
            *ids = self.tables.counters.reserve(TXN_ID, TXN_ID_BLOCK).await?;
        }
        let id = ids.start;
        ids.start += 1;
        Ok(TxnId(id))
    }

    /// Begins a transaction of `owner`; `timeout` `None` takes the default. With `producer`,
    /// the transaction belongs to that transactional producer and is begun only if its epoch
    /// is still the current one (checked in the same write).
    pub async fn begin(
        &self,
        owner: &str,
        timeout: Option<Duration>,
        producer: Option<ProducerEpoch>,
    ) -> Result<(TxnId, TxnRecord), CoordinatorError> {
        let options = BeginOptions {
            timeout,
            producer,
            check_back: None,
        };
        self.begin_with(owner, options).await
    }

    /// [`TxnCoordinator::begin`] with every option, check-back included: the record is
    /// written now (an eager begin; see [`crate::txn_start`] for the lazy one).
    pub async fn begin_with(
        &self,
        owner: &str,
        options: BeginOptions,
    ) -> Result<(TxnId, TxnRecord), CoordinatorError> {
        let now = now_ms();
        let start = self.start_of(options, now)?;
        let id = self.next_id().await?;
        let Some(creation) = self.creation(id, owner, &start, true).await? else {
            return Err(CoordinatorError::Conflict(format!("{id} exists already")));
        };
        let t = &self.tables;
        // Not the leader-time compare: the deadline is a whole timeout away, and a broker
        // begun eagerly must work with metastore nodes that predate that compare.
        let compares = std::iter::once(creation.absent)
            .chain(creation.producer)
            .collect();
        let (record, marks) = (creation.record, creation.marks);
        let txn = Txn {
            compares,
            success: std::iter::once(t.txns.put_op(&id, &record)?)
                .chain(marks)
                .collect(),
            failure: Vec::new(),
        };
        if !t.meta().txn(txn).await.map_err(TableError::from)?.succeeded {
            // The id is fresh from the counter: only a new epoch fails the write.
            self.creation_failed(id, &start).await?;
            return Err(CoordinatorError::Conflict(format!("{id} exists already")));
        }
        // The next steps (its registrations, its commit) start from this copy, without a read.
        self.records.turn(id).await.set(Some(KnownRecord {
            record: record.clone(),
            version: 1,
        }));
        debug!(txn = %id, owner, "transaction begun");
        Ok((id, record))
    }

    /// Starts a new instance (`owner`) of the transactional producer `name`: takes the next
    /// epoch, then aborts every open transaction of the older epochs, so a zombie instance
    /// can neither begin nor commit anything after this returns.
    pub async fn init_producer(&self, name: &str, owner: &str) -> Result<u64, CoordinatorError> {
        let t = &self.tables;
        let key = name.to_owned();
        let epoch = loop {
            let current = t.txn_producers.get(&key).await?;
            let next = TxnProducerRecord::next(current.as_ref().map(|r| &r.record), owner);
            let written = match &current {
                None => t.txn_producers.create(&key, &next).await,
                Some(row) => t.txn_producers.update(&key, &next, row.version).await,
            };
            match written {
                Ok(_) => break next.epoch,
                Err(TableError::VersionMismatch { .. }) => continue, // two instances raced
                Err(e) => return Err(e.into()),
            }
        };
        let mut fenced = 0;
        for ((_, id), mark) in t.txn_deadlines.list(&()).await? {
            if mark.record.producer.as_deref() != Some(name) {
                continue;
            }
            let older = |r: &TxnRecord| r.producer.as_ref().is_some_and(|p| p.epoch < epoch);
            match self.get(id).await {
                Ok(row) if older(&row.record) => match self.abort(id, None).await {
                    Ok(_) => fenced += 1,
                    // The old instance decided it meanwhile (a commit that raced the new
                    // epoch): it stands, and the sweep goes on.
                    Err(CoordinatorError::Rule(TxnRuleError::AlreadyDecided { .. })) => {}
                    Err(e) => return Err(e),
                },
                Ok(_) | Err(CoordinatorError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        info!(
            producer = name,
            epoch, fenced, "transactional producer started"
        );
        Ok(epoch)
    }

    /// Refuses a begin of `owner` that would break a limit on open transactions. Open
    /// transactions are those still in the deadline index; see [`OpenView`] for when that is
    /// counted exactly.
    pub(crate) async fn check_limits(&self, owner: &str) -> Result<(), CoordinatorError> {
        {
            let mut view = self.open_view.lock().await;
            if view.accepts(owner, &self.limits, Instant::now()) {
                view.add(owner);
                return Ok(());
            }
        }
        // Counted without holding the view, so other clients' begins do not queue behind
        // this scan.
        let open = self.tables.txn_deadlines.list(&()).await?;
        let counted = OpenView::counted(
            open.iter().map(|(_, row)| row.record.owner.as_str()),
            Instant::now(),
        );
        if let Some(refusal) = counted.refusal(owner, &self.limits) {
            return Err(refusal);
        }
        let mut view = self.open_view.lock().await;
        *view = counted;
        view.add(owner);
        Ok(())
    }

    /// The tables it works on.
    pub(crate) fn tables(&self) -> &Tables {
        &self.tables
    }

    pub async fn get(&self, id: TxnId) -> Result<Versioned<TxnRecord>, CoordinatorError> {
        self.tables
            .txns
            .get(&id)
            .await?
            .ok_or(CoordinatorError::NotFound(id))
    }

    /// Every transaction (only the open ones with `open_only`), by id.
    pub async fn list(&self, open_only: bool) -> Result<Vec<(TxnId, TxnRecord)>, CoordinatorError> {
        Ok(self
            .tables
            .txns
            .list(&())
            .await?
            .into_iter()
            .map(|(id, row)| (id, row.record))
            .filter(|(_, r)| !open_only || r.state.is_open())
            .collect())
    }

    /// Registers `topic` as written by `owner`'s transaction from `first` on. One metastore
    /// write the first time, none after. With `start`, the write creates the record if the
    /// transaction has none yet (lazy begin).
    pub async fn register_partition(
        &self,
        id: TxnId,
        owner: &str,
        topic: &TopicName,
        first: Position,
        start: Option<&TxnStart>,
    ) -> Result<(), CoordinatorError> {
        let mut turn = self.records.turn(id).await;
        loop {
            let Some(row) = self.current_or_absent(&mut turn, start).await? else {
                let Some(start) = start else {
                    return Err(CoordinatorError::NotFound(id));
                };
                let Some(creation) = self.creation(id, owner, start, true).await? else {
                    continue; // created meanwhile: read it
                };
                let (mut record, compares, marks) = creation.split();
                record.register_partition(id, topic, first)?;
                let t = &self.tables;
                let txn = Txn {
                    compares,
                    success: [
                        t.txns.put_op(&id, &record)?,
                        t.txn_partitions
                            .put_op(&(topic.clone(), id), &TxnPartitionMark { first })?,
                    ]
                    .into_iter()
                    .chain(marks)
                    .collect(),
                    failure: Vec::new(),
                };
                if t.meta().txn(txn).await.map_err(TableError::from)?.succeeded {
                    turn.wrote(record, 0);
                    return Ok(());
                }
                // Created meanwhile by another write of it (read it next), or fenced.
                self.creation_failed(id, start).await?;
                continue;
            };
            row.record.check_open(id, owner)?;
            let mut record = row.record.clone();
            let t = &self.tables;
            if !record.register_partition(id, topic, first)? {
                // Registered before; its mark may have gone with a deleted topic of the same
                // name, and the next owner finds the transaction only through it.
                // Written only while the record is as read (still open), or read again.
                let mark = (topic.clone(), id);
                if t.txn_partitions.get(&mark).await?.is_some() {
                    return Ok(());
                }
                let txn = Txn {
                    compares: vec![
                        t.txns.version_is(&id, Expect::Version(row.version)),
                        t.txn_partitions.version_is(&mark, Expect::Absent),
                    ],
                    success: vec![
                        t.txn_partitions
                            .put_op(&mark, &TxnPartitionMark { first })?,
                    ],
                    failure: Vec::new(),
                };
                // Unknown until the write's answer (which may be lost) says.
                turn.set(None);
                if t.meta().txn(txn).await.map_err(TableError::from)?.succeeded {
                    turn.set(Some(row));
                    return Ok(());
                }
                continue;
            }
            let txn = Txn {
                compares: vec![t.txns.version_is(&id, Expect::Version(row.version))],
                success: vec![
                    t.txns.put_op(&id, &record)?,
                    t.txn_partitions
                        .put_op(&(topic.clone(), id), &TxnPartitionMark { first })?,
                ],
                failure: Vec::new(),
            };
            turn.set(None);
            if t.meta().txn(txn).await.map_err(TableError::from)?.succeeded {
                turn.wrote(record, row.version);
                return Ok(());
            }
            // Another participant registered meanwhile (or it was decided): read again.
        }
    }

    /// What a write of acks in `owner`'s transaction must carry: the compare that the
    /// record is still as read now (so still open: acks never land in a decided
    /// transaction), and the record update registering `subscription` if it is new. One
    /// write then registers and acknowledges together. With `start`, a transaction without
    /// a record yet is created by that write (lazy begin).
    pub async fn ack_guard(
        &self,
        id: TxnId,
        owner: &str,
        topic: &TopicName,
        subscription: &str,
        start: Option<&TxnStart>,
    ) -> Result<AckGuard, CoordinatorError> {
        let mut turn = self.records.turn(id).await;
        let t = &self.tables;
        let cursor = CursorKey::new(topic.clone(), subscription);
        let row = loop {
            if let Some(row) = self.current_or_absent(&mut turn, start).await? {
                break row;
            }
            let Some(start) = start else {
                return Err(CoordinatorError::NotFound(id));
            };
            let Some(creation) = self.creation(id, owner, start, true).await? else {
                continue; // created meanwhile: read it
            };
            let (mut record, compares, marks) = creation.split();
            record.register_subscription(id, topic, subscription)?;
            let register = [
                t.txns.put_op(&id, &record)?,
                t.txn_subs.put_op(&(cursor, id), &TxnSubMark {})?,
            ]
            .into_iter()
            .chain(marks)
            .collect();
            return Ok(AckGuard {
                version: 0,
                compares,
                register,
                after: record,
                turn,
            });
        };
        row.record.check_open(id, owner)?;
        if row.record.prepared {
            return Err(TxnRuleError::Prepared { id }.into());
        }
        // Unknown until the write's answer says (see `AckGuard::applied`).
        turn.set(None);
        let mut record = row.record;
        let register = if record.register_subscription(id, topic, subscription)? {
            vec![
                t.txns.put_op(&id, &record)?,
                t.txn_subs.put_op(&(cursor, id), &TxnSubMark {})?,
            ]
        } else {
            Vec::new()
        };
        Ok(AckGuard {
            version: row.version,
            compares: vec![t.txns.version_is(&id, Expect::Version(row.version))],
            register,
            after: record,
            turn,
        })
    }

    /// The current version of the transaction's record, 0 if it has none (to tell a failed
    /// guard from a conflict).
    pub async fn version(&self, id: TxnId) -> Result<u64, CoordinatorError> {
        match self.get(id).await {
            Ok(row) => Ok(row.version),
            Err(CoordinatorError::NotFound(_)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Why a guarded write failed when the record is as the guard read it: `ProducerFenced`
    /// if the guard was to create it and a new epoch came, else `Ok`.
    pub async fn guard_failed(
        &self,
        id: TxnId,
        start: Option<&TxnStart>,
    ) -> Result<(), CoordinatorError> {
        match start {
            Some(start) => self.creation_failed(id, start).await,
            None => Ok(()),
        }
    }

    /// Registers a subscription acknowledged in `owner`'s transaction (what an ack write
    /// does through [`TxnCoordinator::ack_guard`], without acks).
    pub async fn register_subscription(
        &self,
        id: TxnId,
        owner: &str,
        topic: &TopicName,
        subscription: &str,
        start: Option<&TxnStart>,
    ) -> Result<(), CoordinatorError> {
        loop {
            let guard = self
                .ack_guard(id, owner, topic, subscription, start)
                .await?;
            if guard.register.is_empty() {
                guard.applied(); // nothing to write: the record is as read
                return Ok(());
            }
            let created = guard.version == 0;
            let txn = Txn {
                compares: guard.compares.clone(),
                success: guard.register.clone(),
                failure: Vec::new(),
            };
            if self
                .tables
                .meta()
                .txn(txn)
                .await
                .map_err(TableError::from)?
                .succeeded
            {
                guard.applied();
                return Ok(());
            }
            drop(guard);
            if created {
                self.guard_failed(id, start).await?;
            }
        }
    }

    /// Commits `owner`'s transaction; `last` gives, per partition written, the last entry
    /// the client saw acknowledged. Committing again answers `Committed` again.
    pub async fn commit(
        &self,
        id: TxnId,
        owner: &str,
        last: &BTreeMap<String, Position>,
    ) -> Result<TxnRecord, CoordinatorError> {
        Ok(self
            .end(id, Actor::Client(owner), Ending::Commit(last), None)
            .await?
            .0)
    }

    /// Aborts `owner`'s transaction (`owner` `None`: an operator's abort, for any client).
    pub async fn abort(
        &self,
        id: TxnId,
        owner: Option<&str>,
    ) -> Result<TxnRecord, CoordinatorError> {
        let actor = owner.map_or(Actor::Operator, Actor::Client);
        Ok(self.end(id, actor, Ending::Abort, None).await?.0)
    }

    /// Commits or aborts, saying whether this request decided (`Decided::Now`) or found the
    /// same decision already made (a retry). With `start` (the client's own request), a
    /// transaction that wrote nothing yet is decided by creating its record decided.
    pub async fn end(
        &self,
        id: TxnId,
        actor: Actor<'_>,
        ending: Ending<'_>,
        start: Option<&TxnStart>,
    ) -> Result<(TxnRecord, Decided), CoordinatorError> {
        let commit = matches!(ending, Ending::Commit(_));
        let unwritten = match (actor, start) {
            (Actor::Client(owner), Some(start)) => Some(Unwritten {
                owner,
                start,
                // A commit naming partition ends says the transaction wrote: a missing
                // record is then one decided and forgotten, never one to create.
                wrote: matches!(ending, Ending::Commit(last) if !last.is_empty()),
            }),
            _ => None,
        };
        let rule = |r: &mut TxnRecord| {
            match actor {
                Actor::Client(owner) if r.owner != owner => {
                    return Err(TxnRuleError::NotOwner { id });
                }
                Actor::Group(group) => r.check_group(id, group, commit)?,
                Actor::Client(_) | Actor::Operator => {}
            }
            match ending {
                Ending::Commit(last) => r.commit(id, last, now_ms()),
                Ending::Abort => r.abort(id, false, now_ms()),
            }
        };
        match self.decide(id, rule, commit, unwritten).await {
            // A newer instance of its producer exists (its init may have stopped before
            // aborting this one): the zombie's transaction is aborted, not committed.
            Err(CoordinatorError::Rule(fenced @ TxnRuleError::ProducerFenced { .. })) => {
                match self
                    .decide(id, |r| r.abort(id, false, now_ms()), false, unwritten)
                    .await
                {
                    Ok(_) => Err(fenced.into()),
                    // Decided meanwhile by a concurrent request (a retry, or its check-back
                    // group) that ran before the epoch moved: a commit stands and is the
                    // answer; saying "fenced" would make the caller redo committed work.
                    Err(CoordinatorError::Rule(TxnRuleError::AlreadyDecided { .. })) => {
                        let row = self.get(id).await?;
                        if row.record.state.is_committed() {
                            Ok((row.record, Decided::Already))
                        } else {
                            Err(fenced.into())
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            decided => decided,
        }
    }

    /// Applies a decision with one compare-and-set of the record, removing the deadline
    /// mark in the same write. With `fence`, a transaction of a transactional producer is
    /// decided only while its epoch is the producer's current one (checked in the same
    /// write), else the call fails with `ProducerFenced`.
    async fn decide(
        &self,
        id: TxnId,
        rule: impl Fn(&mut TxnRecord) -> Result<Decided, TxnRuleError>,
        fence: bool,
        unwritten: Option<Unwritten<'_>>,
    ) -> Result<(TxnRecord, Decided), CoordinatorError> {
        let mut turn = self.records.turn(id).await;
        loop {
            let start = unwritten.as_ref().map(|u| u.start);
            let Some(row) = self.current_or_absent(&mut turn, start).await? else {
                let Some(unwritten) = &unwritten else {
                    return Err(CoordinatorError::NotFound(id));
                };
                if let Some(decided) = self.decide_unwritten(id, unwritten, &rule, fence).await? {
                    return Ok(decided);
                }
                continue; // created meanwhile by a write of it: decide that record
            };
            let mut record = row.record;
            let deadline = record.deadline_ms;
            if rule(&mut record)? == Decided::Already {
                return Ok((record, Decided::Already));
            }
            let t = &self.tables;
            let mut compares = vec![t.txns.version_is(&id, Expect::Version(row.version))];
            if let Some(p) = record.producer.as_ref().filter(|_| fence) {
                let current = t.txn_producers.get(&p.name).await?;
                match current {
                    Some(c) if c.record.epoch == p.epoch => compares.push(
                        t.txn_producers
                            .version_is(&p.name, Expect::Version(c.version)),
                    ),
                    other => {
                        return Err(TxnRuleError::ProducerFenced {
                            name: p.name.clone(),
                            epoch: p.epoch,
                            current: other.map_or(0, |c| c.record.epoch),
                        }
                        .into());
                    }
                }
            }
            let decided_ms = record.decided_ms.unwrap_or_else(now_ms);
            let txn = Txn {
                compares,
                success: [
                    t.txns.put_op(&id, &record)?,
                    t.txn_deadlines.delete_op(&(deadline, id)),
                    t.txn_decided.put_op(&(decided_ms, id), &DecidedMark {})?,
                ]
                .into_iter()
                .chain(
                    record
                        .check
                        .map(|c| t.txn_checks.delete_op(&(c.next_ms, id))),
                )
                .collect(),
                failure: Vec::new(),
            };
            turn.set(None);
            if t.meta().txn(txn).await.map_err(TableError::from)?.succeeded {
                // Decided: no step of this coordinator writes the record again.
                self.records.remove(id);
                debug!(txn = %id, state = %record.state, "transaction decided");
                return Ok((record, Decided::Now));
            }
        }
    }

    /// Decides a lazily begun transaction that wrote nothing, creating its record decided in
    /// one write: an abort's record must exist, so that a send still on its way finds the
    /// transaction decided instead of creating it open. `None`: a write of the transaction
    /// created the record meanwhile.
    async fn decide_unwritten(
        &self,
        id: TxnId,
        unwritten: &Unwritten<'_>,
        rule: &impl Fn(&mut TxnRecord) -> Result<Decided, TxnRuleError>,
        fence: bool,
    ) -> Result<Option<(TxnRecord, Decided)>, CoordinatorError> {
        let now = now_ms();
        // Past the deadline a missing record may be one decided and forgotten: its outcome
        // is unknown here, and answering "aborted" could deny a commit.
        if unwritten.wrote || now > unwritten.start.deadline_ms {
            return Err(CoordinatorError::NotFound(id));
        }
        let Some(creation) = self
            .creation(id, unwritten.owner, unwritten.start, false)
            .await?
        else {
            return Ok(None);
        };
        let mut compares = vec![creation.absent, creation.in_time];
        compares.extend(creation.producer.filter(|_| fence));
        let mut record = creation.record;
        rule(&mut record)?;
        let t = &self.tables;
        let decided_ms = record.decided_ms.unwrap_or(now);
        let txn = Txn {
            compares,
            success: vec![
                t.txns.put_op(&id, &record)?,
                t.txn_decided.put_op(&(decided_ms, id), &DecidedMark {})?,
            ],
            failure: Vec::new(),
        };
        if t.meta().txn(txn).await.map_err(TableError::from)?.succeeded {
            self.records.remove(id);
            debug!(txn = %id, state = %record.state, "transaction decided without writes");
            return Ok(Some((record, Decided::Now)));
        }
        if fence && let Some(p) = &unwritten.start.producer {
            self.producer_compare(p).await?;
        }
        if !self.created_or_in_time(id, unwritten.start).await? {
            // Past the deadline on the leader's clock: as above, the outcome is not known.
            return Err(CoordinatorError::NotFound(id));
        }
        Ok(None)
    }

    /// Records that `owner`'s sends are done and where they end on each partition: from
    /// now on a checker of the transaction's group may commit it (check-back). Preparing
    /// again answers the same.
    ///
    /// With `start`, a transaction that wrote nothing yet is created prepared.
    pub async fn prepare(
        &self,
        id: TxnId,
        owner: &str,
        last: &BTreeMap<String, Position>,
        start: Option<&TxnStart>,
    ) -> Result<TxnRecord, CoordinatorError> {
        let mut turn = self.records.turn(id).await;
        loop {
            let Some(row) = self.current_or_absent(&mut turn, start).await? else {
                let Some(start) = start else {
                    return Err(CoordinatorError::NotFound(id));
                };
                if !last.is_empty() {
                    // It says it wrote: the record was decided and forgotten.
                    return Err(CoordinatorError::NotFound(id));
                }
                let Some(creation) = self.creation(id, owner, start, true).await? else {
                    continue; // created meanwhile: read it
                };
                let (mut record, compares, marks) = creation.split();
                record.prepare(id, last)?;
                let t = &self.tables;
                let txn = Txn {
                    compares,
                    success: std::iter::once(t.txns.put_op(&id, &record)?)
                        .chain(marks)
                        .collect(),
                    failure: Vec::new(),
                };
                if t.meta().txn(txn).await.map_err(TableError::from)?.succeeded {
                    turn.wrote(record.clone(), 0);
                    return Ok(record);
                }
                self.creation_failed(id, start).await?;
                continue;
            };
            row.record.check_open(id, owner)?;
            let mut record = row.record;
            if record.prepare(id, last)? == Decided::Already {
                return Ok(record);
            }
            turn.set(None);
            match self.tables.txns.update(&id, &record, row.version).await {
                Ok(_) => {
                    turn.wrote(record.clone(), row.version);
                    return Ok(record);
                }
                Err(TableError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Asks about every prepared check-back transaction due at or before `now`: bumps its
    /// check count (brokers see the record change and ask a checker of its group) and
    /// schedules the next check. An unprepared one is only rescheduled. Returns how many
    /// checks it asked for.
    pub async fn check_due(&self, now: u64) -> Result<usize, CoordinatorError> {
        let t = &self.tables;
        let mut asked = 0;
        for ((due, id), mark) in t.txn_checks.list(&()).await? {
            if due > now {
                break; // the index is in time order
            }
            let row = match self.get(id).await {
                Ok(row) if row.record.state.is_open() && row.record.check.is_some() => row,
                // Decided (its mark goes with the decision) or gone: drop a stray mark.
                Ok(_) | Err(CoordinatorError::NotFound(_)) => {
                    t.txn_checks.delete(&(due, id), Expect::Any).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut record = row.record;
            let Some(mut schedule) = record.check.filter(|c| c.next_ms == due) else {
                // A mark the record no longer points at (two leaders' passes overlapped).
                t.txn_checks.delete(&(due, id), Expect::Any).await?;
                continue;
            };
            if record.prepared {
                record.checks += 1;
            }
            schedule.next_ms = now + schedule.interval_ms;
            record.check = Some(schedule);
            let txn = Txn {
                compares: vec![t.txns.version_is(&id, Expect::Version(row.version))],
                success: vec![
                    t.txns.put_op(&id, &record)?,
                    t.txn_checks.delete_op(&(due, id)),
                    t.txn_checks.put_op(&(schedule.next_ms, id), &mark.record)?,
                ],
                failure: Vec::new(),
            };
            // A failed compare: it changed meanwhile (decided, say); the next pass sees it.
            if t.meta().txn(txn).await.map_err(TableError::from)?.succeeded && record.prepared {
                asked += 1;
            }
        }
        Ok(asked)
    }

    /// Times out every open transaction whose deadline is at or before `now`; returns how
    /// many it aborted.
    pub async fn expire_due(&self, now: u64) -> Result<usize, CoordinatorError> {
        let mut expired = 0;
        for ((deadline, id), _) in self.tables.txn_deadlines.list(&()).await? {
            if deadline > now {
                break; // the index is in deadline order
            }
            let decided = self
                .decide(id, |r| r.abort(id, true, now), false, None)
                .await;
            match decided {
                Ok((_, Decided::Now)) => expired += 1,
                Ok(_) => {}
                // A mark without its record (a crash cannot leave one: both are written
                // together) is dropped rather than retried forever.
                Err(CoordinatorError::NotFound(_)) => {
                    self.tables
                        .txn_deadlines
                        .delete(&(deadline, id), Expect::Any)
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
        if expired > 0 {
            info!(expired, "transactions timed out");
        }
        Ok(expired)
    }
}

/// Runs the coordinator's expiry every `interval` while `store` is the metastore leader, and
/// forgets decided transactions [`DEFAULT_KEEP_DECIDED`] after their decision.
pub fn spawn_expiry(store: MetaStore, interval: Duration) -> tokio::task::JoinHandle<()> {
    spawn_expiry_keeping(store, interval, DEFAULT_KEEP_DECIDED, LATE_WRITE_MARGIN)
}

/// As [`spawn_expiry`], forgetting decided transactions `keep_decided` after their decision
/// and `late_write_margin` after their deadline (once every participant has settled them;
/// see [`crate::txn_sweep`]).
pub fn spawn_expiry_keeping(
    store: MetaStore,
    interval: Duration,
    keep_decided: Duration,
    late_write_margin: Duration,
) -> tokio::task::JoinHandle<()> {
    let coordinator = TxnCoordinator::new(Tables::new(store.clone()), TxnLimits::default());
    let mut sweeper = DecidedSweeper::new(coordinator.clone(), keep_decided)
        .with_late_write_margin(late_write_margin);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !store.is_leader() {
                continue;
            }
            if let Err(e) = coordinator.expire_due(now_ms()).await {
                warn!(error = %e, "transaction expiry failed; retrying");
            }
            if let Err(e) = coordinator.check_due(now_ms()).await {
                warn!(error = %e, "transaction checks failed; retrying");
            }
            if let Err(e) = sweeper.sweep(now_ms()).await {
                warn!(error = %e, "sweeping decided transactions failed; retrying");
            }
        }
    })
}
