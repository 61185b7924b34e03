//! Lazy begin (as Kafka's): a begin only issues an id and the transaction's parameters, and
//! writes nothing. The client carries those parameters ([`TxnStart`]) on the transaction's
//! writes; the first write that reaches the coordinator creates the record in the same
//! metastore write as its own change. A transaction that ends without writing anything is
//! decided in one write that creates its record already decided.
//!
//! A late write must never re-create a transaction that was decided and since forgotten. Two
//! rules prevent it: no write creates a record after the transaction's deadline, and the
//! sweeper keeps every decided record until [`LATE_WRITE_MARGIN`] past its deadline. This
//! assumes the clocks of brokers and of the metastore leader differ by less than
//! [`MAX_CLOCK_SKEW`], and that a creating write applies within [`MAX_CREATE_LATENCY`] of
//! its deadline check.

use std::time::Duration;

use strata_proto::TxnId;

use crate::Expect;
use crate::tables::{
    CheckMark, CheckSchedule, DeadlineMark, ProducerEpoch, TxnRecord, TxnRuleError, TxnState,
    now_ms,
};
use crate::txn_coordinator::{
    BeginOptions, CoordinatorError, DEFAULT_CHECK_INTERVAL, TxnCoordinator,
};
use crate::types::{Compare, TxnOp};

/// How far the clocks of brokers and the metastore leader may disagree (see the module
/// documentation).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// How long a creating write may take from its deadline check to being applied: the
/// metastore client's retries and the broker's resends of a write whose answer was lost
/// (each bounded by the 10 s request timeout) stay well within it.
pub const MAX_CREATE_LATENCY: Duration = Duration::from_secs(60);

/// How long past its deadline the sweeper keeps a decided record: a creating write checked
/// before the deadline, on a clock up to [`MAX_CLOCK_SKEW`] behind the leader's, applies
/// within this and finds the decision.
pub const LATE_WRITE_MARGIN: Duration =
    Duration::from_secs(MAX_CLOCK_SKEW.as_secs() + MAX_CREATE_LATENCY.as_secs());

/// A transaction as begun: what its record is created from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnStart {
    /// Begin time, on the issuing broker's clock.
    pub created_ms: u64,
    /// When it times out; no record is created after it.
    pub deadline_ms: u64,
    /// The transactional producer (and epoch) that began it.
    pub producer: Option<ProducerEpoch>,
    /// Check-back: the producer group and how often it is asked, ms.
    pub check_back: Option<(String, u64)>,
}

impl TxnStart {
    /// The record this start creates, open.
    pub fn record(&self, owner: &str) -> TxnRecord {
        let mut record = TxnRecord::open(
            owner,
            self.created_ms,
            self.deadline_ms.saturating_sub(self.created_ms),
        );
        record.producer = self.producer.clone();
        if let Some((group, interval_ms)) = &self.check_back {
            record.group = Some(group.clone());
            record.check = Some(CheckSchedule {
                interval_ms: *interval_ms,
                next_ms: self.created_ms + interval_ms,
            });
        }
        record
    }
}

/// What creating a record takes: the record (to change further before it is written), the
/// compares the write must carry, and the index marks it writes besides the record.
#[derive(Debug)]
pub struct Creation {
    pub record: TxnRecord,
    /// That the record is absent.
    pub absent: Compare,
    /// That its producer's epoch is still current (a transactional producer's only).
    pub producer: Option<Compare>,
    pub marks: Vec<TxnOp>,
}

impl Creation {
    /// Every compare the creating write carries.
    pub fn compares(&self) -> Vec<Compare> {
        std::iter::once(self.absent.clone())
            .chain(self.producer.clone())
            .collect()
    }

    /// The record, every compare, and the marks.
    pub fn split(self) -> (TxnRecord, Vec<Compare>, Vec<TxnOp>) {
        let compares = self.compares();
        (self.record, compares, self.marks)
    }
}

impl TxnCoordinator {
    /// A begin's parameters, checked against the limits, with `now` as the begin time.
    pub fn start_of(&self, options: BeginOptions, now: u64) -> Result<TxnStart, CoordinatorError> {
        let BeginOptions {
            timeout,
            producer,
            check_back,
        } = options;
        let limits = self.limits();
        let timeout = timeout.unwrap_or(limits.default_timeout);
        let interval = check_back
            .as_ref()
            .map(|(_, i)| i.unwrap_or(DEFAULT_CHECK_INTERVAL));
        for asked in std::iter::once(timeout).chain(interval) {
            if asked.is_zero() || asked > limits.max_timeout {
                return Err(CoordinatorError::InvalidTimeout {
                    asked,
                    max: limits.max_timeout,
                });
            }
        }
        Ok(TxnStart {
            created_ms: now,
            deadline_ms: now.saturating_add(timeout.as_millis() as u64),
            producer,
            check_back: check_back
                .zip(interval)
                .map(|((group, _), i)| (group, i.as_millis() as u64)),
        })
    }

    /// Lazy begin: an id never handed out before and the parameters its first write creates
    /// the record from. Writes nothing (one counter write per block of ids); a fenced
    /// transactional producer is refused here already.
    pub async fn issue(
        &self,
        owner: &str,
        options: BeginOptions,
    ) -> Result<(TxnId, TxnStart), CoordinatorError> {
        let start = self.start_of(options, now_ms())?;
        if let Some(p) = &start.producer {
            self.producer_compare(p).await?;
        }
        let id = self.next_id().await?;
        tracing::debug!(txn = %id, owner, "transaction issued");
        Ok((id, start))
    }

    /// The compare that `p` is still its producer's current epoch (read now), or
    /// `ProducerFenced`.
    pub(crate) async fn producer_compare(
        &self,
        p: &ProducerEpoch,
    ) -> Result<Compare, CoordinatorError> {
        let t = self.tables();
        let current = t.txn_producers.get(&p.name).await?;
        match current {
            Some(c) if c.record.epoch == p.epoch => Ok(t
                .txn_producers
                .version_is(&p.name, Expect::Version(c.version))),
            other => Err(TxnRuleError::ProducerFenced {
                name: p.name.clone(),
                epoch: p.epoch,
                current: other.map_or(0, |c| c.record.epoch),
            }
            .into()),
        }
    }

    /// What creating `owner`'s record of `id` from `start` takes: refused once past the
    /// deadline (a late write), or for a start no begin could have issued. With `open`, the
    /// record stays open: it counts against the limits and gets its deadline (and check)
    /// marks. `None`: the record exists now (created by another write at the limit).
    pub(crate) async fn creation(
        &self,
        id: TxnId,
        owner: &str,
        start: &TxnStart,
        open: bool,
    ) -> Result<Option<Creation>, CoordinatorError> {
        let timeout = Duration::from_millis(start.deadline_ms.saturating_sub(start.created_ms));
        let max = self.limits().max_timeout;
        if timeout.is_zero() || timeout > max {
            return Err(CoordinatorError::InvalidTimeout {
                asked: timeout,
                max,
            });
        }
        if let Some((_, interval_ms)) = &start.check_back {
            let asked = Duration::from_millis(*interval_ms);
            if asked.is_zero() || asked > max {
                return Err(CoordinatorError::InvalidTimeout { asked, max });
            }
        }
        let t = self.tables();
        let producer = match &start.producer {
            Some(p) => Some(self.producer_compare(p).await?),
            None => None,
        };
        if open && let Err(e) = self.check_limits(owner).await {
            // A write on another broker may have created it meanwhile, and been counted.
            if matches!(e, CoordinatorError::TooManyOpen { .. }) && t.txns.get(&id).await?.is_some()
            {
                return Ok(None);
            }
            return Err(e);
        }
        // Checked last, as close to the write as can be (see LATE_WRITE_MARGIN).
        let now = now_ms();
        if now > start.deadline_ms {
            return Err(TxnRuleError::NotOpen {
                id,
                state: TxnState::TimedOut,
            }
            .into());
        }
        if start.created_ms > now.saturating_add(MAX_CLOCK_SKEW.as_millis() as u64) {
            return Err(CoordinatorError::Conflict(format!(
                "{id} begins in the future ({} ms): clocks disagree",
                start.created_ms
            )));
        }
        let record = start.record(owner);
        let mut marks = Vec::new();
        if open {
            let mark = DeadlineMark {
                owner: owner.to_owned(),
                producer: record.producer.as_ref().map(|p| p.name.clone()),
            };
            marks.push(t.txn_deadlines.put_op(&(record.deadline_ms, id), &mark)?);
            if let (Some(group), Some(check)) = (&record.group, record.check) {
                let mark = CheckMark {
                    group: group.clone(),
                };
                marks.push(t.txn_checks.put_op(&(check.next_ms, id), &mark)?);
            }
        }
        Ok(Some(Creation {
            record,
            absent: t.txns.version_is(&id, Expect::Absent),
            producer,
            marks,
        }))
    }

    /// Why a creation's write did not apply: `ProducerFenced` if a new epoch came, else
    /// `None` (the record exists now: another write created it; read it and go on).
    pub(crate) async fn creation_failed(&self, start: &TxnStart) -> Result<(), CoordinatorError> {
        match &start.producer {
            Some(p) => self.producer_compare(p).await.map(drop),
            None => Ok(()),
        }
    }
}
