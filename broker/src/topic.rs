//! A loaded topic: its managed ledger, its producers' dedup state and its subscriptions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use strata_metastore::Expect;
use strata_metastore::tables::{
    BacklogQuota, BacklogQuotaPolicy, DedupRecord, LedgerInfo, Tables, TxnRecord, TxnRuleError,
    TxnState, now_ms,
};
use strata_metastore::txn_coordinator::{CoordinatorError, TxnCoordinator};
use strata_metastore::types::TxnOp;
use strata_proto::pb::client::{InitialPosition, Message, StoredBatch};
use strata_proto::{Position, TopicName, TxnId};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::BrokerError;
use crate::backlog;
use crate::dedup::{DedupState, Verdict};
use crate::managed_ledger::{ManagedLedger, PendingAppend};
use crate::subscription::Subscription;
use crate::txn_buffer::{Outcome, Span, TxnBuffer};

/// Format version written into every stored batch.
pub const STORED_BATCH_FORMAT: u32 = 1;

const MB: u64 = 1024 * 1024;

/// Entries read at a time when replaying the log into the dedup state.
const REPLAY_BATCH: usize = 256;

/// What became of a published batch.
pub enum Published {
    /// Handed to the log; resolves once durable.
    Stored(PendingAppend),
    /// Stored before (a resend); the position when still known.
    Duplicate(Option<Position>),
}

struct Dedup {
    state: DedupState,
    /// A write failed: the log's tail is uncertain until the state is rebuilt from it.
    stale: bool,
    /// The log's failed appends when the state was last rebuilt: a failure since (even one
    /// no producer session is left to report) makes the state stale too.
    failures_seen: u64,
}

impl Dedup {
    fn is_stale(&self, ml: &ManagedLedger) -> bool {
        self.stale || self.failures_seen != ml.failures()
    }
}

/// One producer session's view of the log, taken when it opens: once an append to the log
/// fails, the session stores nothing more. What each session stored is then an in-order
/// prefix of what it sent, so the client's resends on a new session are all new to the
/// sequence-id dedup (which remembers only the highest id stored) and none is lost.
#[derive(Debug, Clone, Copy)]
pub struct ProducerSession {
    ledger_failures: u64,
}

/// A write of a transaction: which, by which client, and (lazy begin) the start that
/// creates the transaction if nothing of it was written before.
#[derive(Debug, Clone, Copy)]
pub struct TxnWrite<'a> {
    pub id: TxnId,
    pub client: &'a str,
    pub start: Option<&'a strata_metastore::txn_start::TxnStart>,
}

pub struct Topic {
    name: TopicName,
    ml: Arc<ManagedLedger>,
    tables: Tables,
    /// Also serialises publishes, so the log's order is the order of the dedup decisions.
    dedup: Mutex<Dedup>,
    /// How long a producer may send nothing new before dedup forgets it.
    dedup_expiry: Duration,
    subscriptions: Mutex<HashMap<String, Arc<Subscription>>>,
    /// Messages and payload bytes stored, for the publish rates in stats.
    pub published_msgs: crate::rates::RateMeter,
    pub published_bytes: crate::rates::RateMeter,
    /// The transactions that wrote here: open ones hold read-committed readers back.
    txns: SharedTxns,
    coordinator: TxnCoordinator,
    /// Backlog and limit (MB) while the backlog is over a `producer_exception` quota:
    /// publishes are refused.
    over_quota: std::sync::Mutex<Option<(u64, u64)>>,
    /// Wakes the task settling decided transactions (see [`Topic::settle_decided`]).
    settle_wake: Arc<tokio::sync::Notify>,
}

impl Drop for Topic {
    fn drop(&mut self) {
        // The settling task holds only a weak reference: woken, it finds the topic gone.
        self.settle_wake.notify_one();
    }
}

impl Topic {
    /// Loads a topic over its opened log, rebuilding the producers' dedup state and its
    /// transactions; starts settling decided transactions in the background.
    pub async fn load(
        name: TopicName,
        ml: Arc<ManagedLedger>,
        tables: Tables,
        coordinator: TxnCoordinator,
        dedup_expiry: Duration,
    ) -> Result<Arc<Self>, BrokerError> {
        let state = rebuild_dedup(&ml, &tables).await?;
        let log_end = ml.next_position_hint().ok();
        let txns = rebuild_txns(&name, &tables, log_end).await?;
        let txns = Arc::new(std::sync::Mutex::new(txns));
        let failures_seen = ml.failures();
        let topic = Arc::new(Self {
            name,
            ml,
            tables,
            dedup: Mutex::new(Dedup {
                state,
                stale: false,
                failures_seen,
            }),
            dedup_expiry,
            subscriptions: Mutex::new(HashMap::new()),
            published_msgs: Default::default(),
            published_bytes: Default::default(),
            txns,
            coordinator,
            over_quota: std::sync::Mutex::new(None),
            settle_wake: Arc::new(tokio::sync::Notify::new()),
        });
        tokio::spawn(settle_decided_txns(Arc::downgrade(&topic)));
        // Decided transactions found at load are settled at once.
        topic.settle_wake.notify_one();
        Ok(topic)
    }

    pub fn name(&self) -> &TopicName {
        &self.name
    }

    pub fn managed_ledger(&self) -> &Arc<ManagedLedger> {
        &self.ml
    }

    /// Stores one producer batch as one entry unless that producer's batch with this
    /// sequence id was stored before.
    /// Starts a producer session (see [`ProducerSession`]).
    pub fn producer_session(&self) -> ProducerSession {
        ProducerSession {
            ledger_failures: self.ml.failures(),
        }
    }

    /// Stores a batch; with `txn`, as a write of that transaction (registering this
    /// partition in it first, if new here).
    pub async fn publish(
        &self,
        session: ProducerSession,
        producer_name: &str,
        sequence_id: u64,
        messages: Vec<Message>,
        txn: Option<TxnWrite<'_>>,
    ) -> Result<Published, BrokerError> {
        // Checked again where the entry is appended (that one closes the race); this one
        // refuses before the dedup state records anything.
        if self.ml.failures() != session.ledger_failures {
            return Err(crate::managed_ledger::session_ended(&self.name));
        }
        let mut batch = StoredBatch {
            format_version: STORED_BATCH_FORMAT,
            producer_name: producer_name.to_owned(),
            sequence_id,
            publish_time_ms: now_ms(),
            messages,
            txn_id: txn.map_or(0, |w| w.id.0),
        };
        // An entry over the limit is refused before anything records the batch (its
        // transaction's registration, the dedup state: a refusal after that would leave the
        // state stale, and a rebuild replays the log). The publish time is set again under
        // the lock, so times follow log order; its encoded size stays the same.
        self.ml.check_entry_size(batch.encoded_len())?;
        let mut dedup = loop {
            let dedup = self.settled_dedup().await?;
            // Refusals come before the dedup state records the batch, and only for a new one:
            // a resend already stored is answered as such.
            if dedup.state.is_new(producer_name, sequence_id) {
                if let Some(e) = self.quota_refusal() {
                    return Err(e);
                }
                if let Some(write) = txn
                    && let TxnAdmission::Join(registration) =
                        self.txn_admission(write.id, write.client)?
                {
                    // The registration is a metastore write: other producers publish
                    // meanwhile, and this one's next batch waits behind this call.
                    drop(dedup);
                    self.join_txn(write, registration).await?;
                    continue;
                }
            }
            break dedup;
        };
        batch.publish_time_ms = now_ms();
        let entry = Bytes::from(batch.encode_to_vec());
        match dedup
            .state
            .check(producer_name, sequence_id, Instant::now())
        {
            Verdict::New => {}
            Verdict::Duplicate(position) => return Ok(Published::Duplicate(position)),
            Verdict::InFlight => {
                return Err(BrokerError::Retry(format!(
                    "batch {sequence_id} of producer {producer_name} is still being stored"
                )));
            }
        }
        let appended = self
            .ml
            .append_at(entry, Some(session.ledger_failures))
            .await;
        let pending = match appended {
            Ok((at, pending)) => {
                // Still under the publish lock: settling a decided transaction takes that
                // lock first, so it sees every entry admitted before the decision.
                if let Some(TxnWrite { id: txn, .. }) = txn
                    && !self.txn_state().buffer.appended(txn, at)
                {
                    warn!(topic = %self.name, %txn, entry = %at, "entry of a transaction not registered here");
                }
                pending
            }
            Err(e) => {
                dedup.stale = true;
                return Err(e);
            }
        };
        if !dedup.state.snapshot_due() {
            return Ok(Published::Stored(pending));
        }
        self.forget_idle_producers(&mut dedup.state);
        // Every batch pushed so far lies at or before this one in the log, so once it is
        // durable the pushed marks describe exactly the log up to its position.
        let marks = dedup.state.pushed_marks();
        let forgotten_floor = dedup.state.forgotten_floor();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (tables, topic, ml) = (self.tables.clone(), self.name.clone(), self.ml.clone());
        tokio::spawn(async move {
            let outcome = pending.await;
            if let Ok(position) = &outcome
                && !ml.is_deleted()
            {
                let record = DedupRecord {
                    position: Some(*position),
                    producers: marks,
                    forgotten_floor,
                };
                // Any writer's snapshot is consistent with the log (it is taken only after its
                // position is durable), so an older one overwriting a newer costs replay only.
                if let Err(e) = tables.dedup.put(&topic, &record, Expect::Any).await {
                    warn!(%topic, error = %e, "dedup snapshot not written");
                }
            }
            let _ = tx.send(outcome);
        });
        Ok(Published::Stored(Box::pin(async move {
            rx.await.unwrap_or(Err(BrokerError::ShuttingDown))
        })))
    }

    /// Records a batch as durable (called in the producer's order, as receipts go out).
    pub async fn persisted(&self, producer_name: &str, sequence_id: u64, position: Position) {
        self.dedup
            .lock()
            .await
            .state
            .persisted(producer_name, sequence_id, position);
    }

    /// A batch could not be stored: the dedup state is rebuilt before the next publish.
    pub async fn publish_failed(&self) {
        self.dedup.lock().await.stale = true;
    }

    /// Highest sequence id stored for `producer_name` (0: none), read from the log when a
    /// failed write left the dedup state unsure of its tail.
    pub async fn last_sequence_id(&self, producer_name: &str) -> Result<u64, BrokerError> {
        Ok(self
            .settled_dedup()
            .await?
            .state
            .last_persisted(producer_name))
    }

    /// The dedup state, locked, rebuilt first if a failed write left it stale.
    async fn settled_dedup(&self) -> Result<tokio::sync::MutexGuard<'_, Dedup>, BrokerError> {
        let mut dedup = self.dedup.lock().await;
        if dedup.is_stale(&self.ml) {
            // A failed write may or may not have reached the log: settle the log (recover
            // the failed ledger), then read back what it holds before deciding anything.
            let failures = self.ml.failures();
            self.ml.repair().await?;
            dedup.state = rebuild_dedup(&self.ml, &self.tables).await?;
            dedup.stale = false;
            dedup.failures_seen = failures;
        }
        Ok(dedup)
    }

    /// Forgets the producers idle for longer than the dedup expiry (see [`DedupState`]).
    fn forget_idle_producers(&self, state: &mut DedupState) {
        let forgotten = state.forget_idle(Instant::now(), self.dedup_expiry);
        if forgotten > 0 {
            info!(topic = %self.name, forgotten, kept = state.producer_count(), "idle producers forgotten by dedup");
        }
    }

    /// The named subscription, created at `initial` if new.
    pub async fn subscription(
        &self,
        name: &str,
        initial: InitialPosition,
    ) -> Result<Arc<Subscription>, BrokerError> {
        let mut subs = self.subscriptions.lock().await;
        if let Some(s) = subs.get(name) {
            return Ok(s.clone());
        }
        let sub = Subscription::open(
            self.ml.clone(),
            self.tables.clone(),
            name,
            initial,
            self.txns.clone(),
        )
        .await?;
        subs.insert(name.to_owned(), sub.clone());
        Ok(sub)
    }

    /// Deletes the ledgers every subscription has consumed that `retention` does not keep.
    /// Nothing is deleted from a topic without subscriptions (unlike Pulsar, data nobody
    /// subscribed to yet is kept). The floor also respects the dedup snapshot, so the replay
    /// after a failover finds every entry it needs.
    pub async fn trim(
        &self,
        retention: Option<strata_metastore::tables::RetentionPolicy>,
    ) -> Result<Vec<strata_proto::LedgerId>, BrokerError> {
        let cursors = self.tables.cursors.list(&self.name).await?;
        let mut floor: Option<Position> = None;
        for (_, row) in &cursors {
            let Some(md) = row.record.mark_delete else {
                return Ok(Vec::new()); // a subscription has consumed nothing yet
            };
            floor = Some(floor.map_or(md, |f| f.min(md)));
        }
        let Some(consumed) = floor else {
            return Ok(Vec::new());
        };
        let Some(snapshot) = self.snapshot_dedup().await? else {
            return Ok(Vec::new());
        };
        let deleted = self.ml.trim(consumed.min(snapshot), retention).await?;
        // Also when nothing was deleted now: ranges of ledgers deleted before, found at load.
        if let Some(first_kept) = self.ml.start() {
            self.drop_skipped_before(first_kept).await?;
        }
        Ok(deleted)
    }

    /// Forgets the skipped transaction ranges that lie wholly in deleted ledgers.
    async fn drop_skipped_before(&self, first_kept: Position) -> Result<(), BrokerError> {
        let gone = self.txn_state().buffer.trim_before(first_kept);
        let t = &self.tables;
        for (i, chunk) in gone.chunks(SETTLE_CHUNK).enumerate() {
            let ops = chunk
                .iter()
                .map(|(txn, r)| {
                    t.txn_aborts
                        .delete_op(&(self.name.clone(), r.from.ledger, *txn))
                })
                .collect();
            if let Err(e) = self.write_as_owner(ops).await {
                // This chunk and the rest are kept, to be dropped by the next trim.
                let mut state = self.txn_state();
                for (txn, range) in &gone[i * SETTLE_CHUNK..] {
                    state.buffer.restore_skipped(*txn, *range);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Checks the backlog against the namespace's quota: over a `producer_exception` quota,
    /// publishes are refused until the next check finds the backlog fits; over a
    /// `consumer_backlog_eviction` quota, subscriptions behind the newest ledgers that fit
    /// skip to them. Returns the backlog in bytes.
    pub async fn enforce_backlog_quota(
        &self,
        quota: Option<BacklogQuota>,
    ) -> Result<u64, BrokerError> {
        let cursors = self.tables.cursors.list(&self.name).await?;
        let mut slowest: Option<Option<Position>> = None;
        for (_, row) in &cursors {
            let md = row.record.mark_delete;
            slowest = Some(slowest.map_or(md, |s| s.min(md)));
        }
        let ledgers = self.ml.ledgers_with_sizes();
        // Without subscriptions nobody has a backlog.
        let backlog = slowest.map_or(0, |s| backlog::backlog_bytes(&ledgers, s));
        let refusal = match quota {
            Some(q) if backlog > q.limit_mb.saturating_mul(MB) => match q.policy {
                BacklogQuotaPolicy::ProducerException => Some((backlog / MB, q.limit_mb)),
                BacklogQuotaPolicy::ConsumerBacklogEviction => {
                    self.evict(&ledgers, q.limit_mb.saturating_mul(MB)).await?;
                    None
                }
            },
            _ => None,
        };
        *self.over_quota.lock().unwrap_or_else(|p| p.into_inner()) = refusal;
        Ok(backlog)
    }

    /// Moves every subscription behind the newest ledgers that fit in `limit` to their start.
    async fn evict(&self, ledgers: &[LedgerInfo], limit: u64) -> Result<(), BrokerError> {
        let Some(keep_from) = backlog::eviction_start(ledgers, limit) else {
            return Ok(());
        };
        let start = Position {
            ledger: keep_from,
            entry: strata_proto::EntryId(0),
        };
        // The last entry before the ledgers kept: everything up to it is skipped.
        let Some(last_skipped) = self.ml.prev_position(start) else {
            return Ok(());
        };
        for name in self.subscription_names().await? {
            let sub = self.existing_subscription(&name).await?;
            if sub.skip_to(last_skipped).await {
                warn!(topic = %self.name, subscription = %name, to = %last_skipped, "backlog quota: subscription skipped its oldest messages");
            }
        }
        Ok(())
    }

    fn txn_state(&self) -> std::sync::MutexGuard<'_, PartitionTxns> {
        self.txns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `client`'s transaction `txn` may write here now, or must first be registered
    /// with the coordinator as a participant (or wait for the registration under way).
    fn txn_admission(&self, txn: TxnId, client: &str) -> Result<TxnAdmission, BrokerError> {
        let mut state = self.txn_state();
        if let Some(outcome) = state.buffer.outcome(txn) {
            let state = outcome.state();
            return Err(CoordinatorError::Rule(TxnRuleError::NotOpen { id: txn, state }).into());
        }
        // A registration under way is checked first: the transaction is open here already
        // (so a decision arriving meanwhile finds it) but may not write until it is durable.
        if let Some(registration) = state.joining.get(&txn) {
            return Ok(TxnAdmission::Join(registration.clone()));
        }
        // Only once its registration is durable: an entry written before could belong to a
        // transaction that is then forgotten here (taken for committed when read).
        if state.registered.contains(&txn) && state.buffer.is_open(txn) {
            if state.owners.get(&txn).is_some_and(|(o, _)| o != client) {
                return Err(CoordinatorError::Rule(TxnRuleError::NotOwner { id: txn }).into());
            }
            return Ok(TxnAdmission::Ready);
        }
        let registration = Arc::new(tokio::sync::OnceCell::new());
        state.joining.insert(txn, registration.clone());
        Ok(TxnAdmission::Join(registration))
    }

    /// Registers `txn` here as a participant with the coordinator (one metastore write, the
    /// first time only), or waits for the registration another batch started. On `Ok` the
    /// caller checks admission again.
    ///
    /// The first position registered is the log's end before the registration, so it lies at
    /// or before the transaction's first entry here: a stable position may only err early.
    async fn join_txn(
        &self,
        write: TxnWrite<'_>,
        registration: Arc<tokio::sync::OnceCell<bool>>,
    ) -> Result<(), BrokerError> {
        let mut failure = None;
        registration
            .get_or_init(|| async {
                match self.register_txn(write, &registration).await {
                    Ok(()) => true,
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                }
            })
            .await;
        // A registration another batch ran that failed: this batch tries again itself.
        failure.map_or(Ok(()), Err)
    }

    async fn register_txn(
        &self,
        write: TxnWrite<'_>,
        registration: &Arc<tokio::sync::OnceCell<bool>>,
    ) -> Result<(), BrokerError> {
        let TxnWrite {
            id: txn, client, ..
        } = write;
        // Until the write succeeds the transaction has no entry here; if it fails, or this
        // call is dropped (its producer went away), it must not hold delivery back.
        let mut undo = UnregisterOnDrop {
            txns: &self.txns,
            txn,
            registration,
            counted: false,
            succeeded: false,
        };
        let first = {
            let mut state = self.txn_state();
            if let Some(outcome) = state.buffer.outcome(txn) {
                // Decided while this batch waited for its turn to register.
                return Err(CoordinatorError::Rule(TxnRuleError::NotOpen {
                    id: txn,
                    state: outcome.state(),
                })
                .into());
            }
            // Taking over from a registration that was dropped (its producer went away), this
            // one is the registration under way now: other batches wait for it.
            state
                .joining
                .entry(txn)
                .or_insert_with(|| registration.clone());
            // Open before registering: a decision arriving right after the registration
            // must find it.
            let first = self.ml.next_position_hint()?;
            state.buffer.opened(txn, first);
            state
                .owners
                .entry(txn)
                .or_insert_with(|| (client.to_owned(), now_ms()));
            *state.registering.entry(txn).or_default() += 1;
            undo.counted = true;
            first
        };
        self.coordinator
            .register_partition(txn, client, &self.name, first, write.start)
            .await?;
        let mut state = self.txn_state();
        // Decided while the write was under way: its batches may not be stored any more.
        if !state.buffer.is_open(txn) {
            let decided = state
                .buffer
                .outcome(txn)
                .map_or(TxnState::Aborted, |o| o.state());
            return Err(CoordinatorError::Rule(TxnRuleError::NotOpen {
                id: txn,
                state: decided,
            })
            .into());
        }
        state.registered.insert(txn);
        undo.succeeded = true;
        Ok(())
    }

    /// The coordinator decided `txn`: read-committed subscriptions may move on past its
    /// entries, its acks here are applied (commit) or released (abort), and it is settled
    /// in the background. Does not wait: the caller is the broker's one watch of decisions,
    /// which must not stall behind a subscription's lock (held while one opens).
    pub fn txn_decided(self: &Arc<Self>, txn: TxnId, record: &TxnRecord) {
        if record.state.is_open() {
            return;
        }
        let wrote_here = record.partitions.contains_key(&self.name.to_string());
        let released = {
            let mut state = self.txn_state();
            let open_here = state.buffer.is_open(txn);
            // A registration under way learns of the decision too: its transaction may not
            // open here any more. One unknown here but named by the record (its
            // registration's answer was lost) is settled too, to drop its mark.
            if open_here || state.joining.contains_key(&txn) || wrote_here {
                state.buffer.decided(txn, outcome_here(&self.name, record));
                state.owners.remove(&txn);
                state.registered.remove(&txn);
            }
            open_here
        };
        if wrote_here || released {
            self.settle_wake.notify_one();
        }
        // A subscription opening now holds the lock: it is told once open (one opened after
        // that reads the decided record itself).
        let topic = self.clone();
        let committed = record.state.is_committed();
        tokio::spawn(async move {
            let subs: Vec<Arc<Subscription>> =
                topic.subscriptions.lock().await.values().cloned().collect();
            for sub in subs {
                if released {
                    sub.wake();
                }
                // Applying or releasing acks waits on metastore writes, one subscription
                // need not wait for another.
                tokio::spawn(async move { sub.txn_acks_decided(txn, committed).await });
            }
        });
    }

    /// Settles every decided transaction: records what its readers must skip here (if
    /// anything) and drops its partition mark, in a few metastore writes, then forgets it.
    async fn settle_decided(&self) -> Result<(), BrokerError> {
        // Under the publish lock no append admitted before a decision is still under way, so
        // each decided transaction's span is final.
        let settlements = {
            let _publishing = self.dedup.lock().await;
            self.txn_state().buffer.settlements()
        };
        let t = &self.tables;
        for chunk in settlements.chunks(SETTLE_CHUNK) {
            let mut ops = Vec::with_capacity(chunk.len() * 2);
            for s in chunk {
                ops.push(t.txn_partitions.delete_op(&(self.name.clone(), s.txn)));
                if let Some(skip) = &s.skip {
                    let key = (self.name.clone(), skip.from.ledger, s.txn);
                    ops.push(t.txn_aborts.put_op(&key, skip)?);
                }
            }
            self.write_as_owner(ops).await?;
            let mut state = self.txn_state();
            for s in chunk {
                state.buffer.settled(*s);
            }
        }
        Ok(())
    }

    /// Writes `ops` in one metastore transaction, only while this broker still holds the
    /// topic's log (a former owner must not overwrite what the new one settled).
    async fn write_as_owner(&self, ops: Vec<TxnOp>) -> Result<(), BrokerError> {
        self.ml.write_as_owner(ops).await
    }

    /// For the metrics: how many transactions are open here, and the age (ms) of the oldest.
    pub fn txn_gauges(&self, now_ms: u64) -> (usize, u64) {
        let state = self.txn_state();
        let oldest = state.owners.values().map(|(_, since)| *since).min();
        let lag = oldest.map_or(0, |since| now_ms.saturating_sub(since));
        (state.owners.len(), lag)
    }

    /// The transactions open here, as writers or as acknowledgers (to check their records
    /// after a missed decision).
    pub async fn open_txns(&self) -> Vec<TxnId> {
        let mut txns: Vec<TxnId> = self
            .txn_state()
            .buffer
            .open_transactions()
            .map(|(t, _)| t)
            .collect();
        let subs: Vec<Arc<Subscription>> =
            self.subscriptions.lock().await.values().cloned().collect();
        for sub in subs {
            txns.extend(sub.txns_with_acks().await);
        }
        txns.sort();
        txns.dedup();
        txns
    }

    /// The error publishes get while the topic is over a `producer_exception` quota.
    pub fn quota_refusal(&self) -> Option<BrokerError> {
        let over = *self.over_quota.lock().unwrap_or_else(|p| p.into_inner());
        over.map(|(backlog_mb, limit_mb)| BrokerError::BacklogQuotaExceeded {
            topic: self.name.to_string(),
            backlog_mb,
            limit_mb,
        })
    }

    /// Writes a dedup snapshot at the log's last durable entry, if no batch is in flight
    /// (then every entry of the log is reflected in the marks). Returns the snapshot position
    /// now stored, or None if none could be taken.
    async fn snapshot_dedup(&self) -> Result<Option<Position>, BrokerError> {
        let mut dedup = self.dedup.lock().await;
        let Some(last) = self.ml.last_confirmed() else {
            return Ok(None);
        };
        if dedup.is_stale(&self.ml) || !dedup.state.all_persisted() {
            return Ok(None);
        }
        self.forget_idle_producers(&mut dedup.state);
        let record = DedupRecord {
            position: Some(last),
            producers: dedup.state.pushed_marks(),
            forgotten_floor: dedup.state.forgotten_floor(),
        };
        self.tables
            .dedup
            .put(&self.name, &record, Expect::Any)
            .await?;
        Ok(Some(last))
    }

    /// An existing subscription (never creates one).
    pub async fn existing_subscription(
        &self,
        name: &str,
    ) -> Result<Arc<Subscription>, BrokerError> {
        if !self.subscriptions.lock().await.contains_key(name)
            && !self.subscription_names().await?.iter().any(|s| s == name)
        {
            return Err(BrokerError::SubscriptionNotFound(name.to_owned()));
        }
        self.subscription(name, InitialPosition::Earliest).await
    }

    /// The first entry published at or after `time_ms` (None: none yet). Entries are in
    /// publish order, so a binary search over the log's entries finds it.
    pub async fn first_published_at(&self, time_ms: u64) -> Result<Option<Position>, BrokerError> {
        let index = self.ml.entry_index();
        let (mut lo, mut hi) = (0u64, index.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(at) = index.get(mid) else { break };
            let entries = self.ml.read(at, 1).await?;
            let Some((pos, data)) = entries.first() else {
                hi = mid;
                continue;
            };
            let batch = StoredBatch::decode(data.clone())
                .map_err(|e| BrokerError::Corrupt(format!("entry {pos} of {}: {e}", self.name)))?;
            if batch.publish_time_ms < time_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(index.get(lo))
    }

    /// Makes every loaded subscription's cursor durable (graceful shutdown).
    pub async fn flush_cursors(&self) {
        for sub in self.subscriptions.lock().await.values() {
            if let Err(e) = sub.flush().await {
                tracing::warn!(topic = %self.name, subscription = %sub.name(), error = %e, "cursor not flushed on shutdown");
            }
        }
    }

    /// Names of the subscriptions persisted for this topic.
    pub async fn subscription_names(&self) -> Result<Vec<String>, BrokerError> {
        let keys = self.tables.cursors.list_keys(&self.name).await?;
        Ok(keys.into_iter().map(|k| k.subscription).collect())
    }

    /// Deletes the log and every cursor.
    pub async fn delete(&self) -> Result<(), BrokerError> {
        self.ml.delete().await?;
        let gone = BrokerError::TopicDeleted(self.name.to_string());
        for sub in self.subscriptions.lock().await.values() {
            sub.terminate(&gone).await;
        }
        for subscription in self.subscription_names().await? {
            let cursor = strata_metastore::tables::CursorKey::new(self.name.clone(), subscription);
            self.tables.pending_acks.delete_all(&cursor).await?;
            self.tables.txn_subs.delete_all(&cursor).await?;
        }
        self.tables.cursors.delete_all(&self.name).await?;
        self.tables.dedup.delete(&self.name, Expect::Any).await?;
        self.tables.txn_partitions.delete_all(&self.name).await?;
        self.tables.txn_aborts.delete_all(&self.name).await?;
        Ok(())
    }
}

/// Settled transactions per metastore write.
const SETTLE_CHUNK: usize = 64;

/// Settles the topic's decided transactions whenever woken, until the topic is dropped. A
/// failed write is retried after a pause (the transactions stay decided meanwhile).
async fn settle_decided_txns(topic: std::sync::Weak<Topic>) {
    loop {
        let Some(wake) = topic.upgrade().map(|t| t.settle_wake.clone()) else {
            return;
        };
        wake.notified().await;
        let Some(t) = topic.upgrade() else {
            return;
        };
        if t.ml.is_deleted() {
            return;
        }
        if let Err(e) = t.settle_decided().await {
            warn!(topic = %t.name, error = %e, "settling decided transactions failed; retrying");
            drop(t);
            tokio::time::sleep(SETTLE_RETRY).await;
            wake.notify_one();
        }
    }
}

/// Pause before settling again after a failure.
const SETTLE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// The dedup state of a topic's log: its last snapshot plus every entry after it.
async fn rebuild_dedup(ml: &ManagedLedger, tables: &Tables) -> Result<DedupState, BrokerError> {
    // A snapshot left by an earlier topic of the same name (deleted, then re-created) must
    // not mark this log's producers' batches as duplicates.
    let snapshot = match tables.dedup.get(ml.topic()).await? {
        Some(row) if !ml.is_fresh() => row.record,
        Some(_) => {
            tables.dedup.delete(ml.topic(), Expect::Any).await?;
            DedupRecord::default()
        }
        None => DedupRecord::default(),
    };
    let mut state = DedupState::from_snapshot(&snapshot, Instant::now());
    // A snapshot position no longer in the log was trimmed away: replay what remains.
    let mut next = match snapshot.position {
        Some(p) if ml.contains(p) => ml.next_position(p),
        _ => ml.first_position(),
    };
    let mut replayed = 0u64;
    while let Some(from) = next {
        let entries = ml.read(from, REPLAY_BATCH).await?;
        let Some(&(last, _)) = entries.last() else {
            break;
        };
        for (position, data) in &entries {
            let batch = StoredBatch::decode(data.clone()).map_err(|e| {
                BrokerError::Corrupt(format!("entry {position} of {}: {e}", ml.topic()))
            })?;
            state.replayed(&batch.producer_name, batch.sequence_id, *position);
        }
        replayed += entries.len() as u64;
        next = ml.next_position(last);
    }
    if replayed > 0 {
        info!(topic = %ml.topic(), replayed, "dedup state rebuilt from the log");
    }
    Ok(state)
}

/// A partition's transactions and who owns the open ones, shared by the topic (writes) and
/// its subscriptions (read-committed delivery).
#[derive(Debug)]
pub struct PartitionTxns {
    pub buffer: TxnBuffer,
    /// The open transactions' owners, and since when (ms) each has been open here.
    pub owners: HashMap<TxnId, (String, u64)>,
    /// Registrations with the coordinator under way; set to whether it succeeded.
    pub joining: HashMap<TxnId, Arc<tokio::sync::OnceCell<bool>>>,
    /// Open transactions registered here durably: only their batches are stored.
    pub registered: HashSet<TxnId>,
    /// Registrations with the coordinator in flight per transaction (a dropped one's waiter
    /// may take over while another starts): the transaction is forgotten only when none is.
    pub registering: HashMap<TxnId, usize>,
    /// Bumped when an open transaction is forgotten without a decision (its registration
    /// failed): the dispatchers it held back look again.
    pub released: tokio::sync::watch::Sender<u64>,
}

impl Default for PartitionTxns {
    fn default() -> Self {
        Self {
            buffer: TxnBuffer::default(),
            owners: HashMap::new(),
            joining: HashMap::new(),
            registered: HashSet::new(),
            registering: HashMap::new(),
            released: tokio::sync::watch::channel(0).0,
        }
    }
}

/// Ends a registration: forgets `registration` as the one under way and, if it opened the
/// transaction here but did not complete (failed, or dropped) and no other registration of it
/// has completed or is under way, forgets the transaction and wakes the dispatchers its first
/// position may have held back. (It wrote nothing here: batches wait for a registration.)
struct UnregisterOnDrop<'a> {
    txns: &'a SharedTxns,
    txn: TxnId,
    registration: &'a Arc<tokio::sync::OnceCell<bool>>,
    /// Counted in `PartitionTxns::registering` (it opened the transaction here).
    counted: bool,
    succeeded: bool,
}

impl Drop for UnregisterOnDrop<'_> {
    fn drop(&mut self) {
        let mut state = self.txns.lock().unwrap_or_else(|p| p.into_inner());
        // Only this registration's entry: a later one may have replaced it.
        if state
            .joining
            .get(&self.txn)
            .is_some_and(|r| Arc::ptr_eq(r, self.registration))
        {
            state.joining.remove(&self.txn);
        }
        if !self.counted {
            return;
        }
        let in_flight = state.registering.get_mut(&self.txn).map_or(0, |n| {
            *n -= 1;
            *n
        });
        if in_flight == 0 {
            state.registering.remove(&self.txn);
        }
        if !self.succeeded && in_flight == 0 && !state.registered.contains(&self.txn) {
            state.buffer.cancel(self.txn);
            state.owners.remove(&self.txn);
            state.released.send_modify(|n| *n += 1);
        }
    }
}

/// Whether a transaction's batch may be stored now.
enum TxnAdmission {
    Ready,
    /// First register it here (or wait for the registration under way).
    Join(Arc<tokio::sync::OnceCell<bool>>),
}

pub type SharedTxns = Arc<std::sync::Mutex<PartitionTxns>>;

/// What a decided transaction's record means for `topic`'s entries.
fn outcome_here(topic: &TopicName, record: &TxnRecord) -> Outcome {
    let last = record
        .partitions
        .get(&topic.to_string())
        .and_then(|p| p.last);
    match (record.state, last) {
        (TxnState::Committed, Some(last)) => Outcome::Committed { last },
        // A commit fixes a last position for every partition registered, so a committed
        // record without one here never happens; delivering nothing is the safe reading.
        _ => Outcome::Aborted,
    }
}

/// The transactions that wrote to `topic`: unsettled ones from their partition marks and
/// records (open ones, and decided ones to settle again), spanning at most to `log_end`, the
/// log's end at load; then the skipped ranges of settled ones. Marks first: a mark dropped
/// meanwhile was dropped with its range written, so the range is read after.
async fn rebuild_txns(
    topic: &TopicName,
    tables: &Tables,
    log_end: Option<Position>,
) -> Result<PartitionTxns, BrokerError> {
    let mut state = PartitionTxns::default();
    for ((_, id), mark) in tables.txn_partitions.list(topic).await? {
        let Some(row) = tables.txns.get(&id).await? else {
            continue;
        };
        let first = mark.record.first;
        let span = Span {
            first,
            before: log_end.filter(|end| *end > first),
        };
        state.buffer.opened_span(id, span);
        if row.record.state.is_open() {
            let since = row.record.created_ms;
            state.owners.insert(id, (row.record.owner.clone(), since));
            state.registered.insert(id);
        } else {
            state.buffer.decided(id, outcome_here(topic, &row.record));
        }
    }
    for ((_, _, id), row) in tables.txn_aborts.list(topic).await? {
        state.buffer.restore_skipped(id, row.record);
    }
    Ok(state)
}
