//! Lazy begin (as Kafka's): a begin only issues an id and the transaction's parameters, and
//! writes nothing. The client carries those parameters ([`TxnStart`]) on the transaction's
//! writes; the first write that reaches the coordinator creates the record in the same
//! metastore write as its own change. A transaction that ends without writing anything is
//! decided in one write that creates its record already decided.
//!
//! A late write must never re-create a transaction that was decided and since forgotten. Two
//! rules prevent it: no write creates a record after the transaction's deadline, and the
//! sweeper keeps every decided record until [`LATE_WRITE_MARGIN`] past its deadline. Both
//! are read on the metastore leader's clock: a creating write carries a
//! [`Compare::LeaderTimeAtMost`] of the deadline, which the leader stamps as it proposes
//! the write, and the sweeper runs on the leader. However long a write takes to get there,
//! it is judged at the moment it enters the log. This assumes only that the clocks of the
//! metastore's nodes (one leader's, then the next's) differ by less than [`MAX_CLOCK_SKEW`].
//! The broker checks the deadline too, on its own clock, to refuse a late write without
//! writing.

use std::time::Duration;

use strata_proto::TxnId;

use crate::Expect;
use crate::tables::TableError;
use crate::tables::{
    CheckMark, CheckSchedule, DeadlineMark, ProducerEpoch, TxnRecord, TxnRuleError, TxnState,
    now_ms,
};
use crate::txn_coordinator::{
    BeginOptions, CoordinatorError, DEFAULT_CHECK_INTERVAL, TxnCoordinator,
};
use crate::types::{Compare, Txn, TxnOp};

/// How far the clocks of the metastore's nodes may disagree (see the module documentation);
/// also how far in the future a broker's begin time may lie.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// How long a creating write checked only on a broker's clock may take to apply: what
/// brokers from before the leader-time compare relied on (the metastore client's retries
/// and the broker's resends, each bounded by the 10 s request timeout, stay within it).
pub const MAX_CREATE_LATENCY: Duration = Duration::from_secs(60);

/// How long past its deadline the sweeper keeps a decided record. A creating write stamped
/// before the deadline by a leader whose clock is up to [`MAX_CLOCK_SKEW`] behind the
/// sweeping leader's entered the log before the record could be forgotten, so it found the
/// decision; that needs only the skew (plus a stall between a leader's stamp and its
/// append). The margin also covers [`MAX_CREATE_LATENCY`], so that brokers still without
/// the compare stay safe during a rolling upgrade.
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
    /// That the deadline has not passed on the metastore leader's clock.
    pub in_time: Compare,
    /// That its producer's epoch is still current (a transactional producer's only).
    pub producer: Option<Compare>,
    pub marks: Vec<TxnOp>,
}

impl Creation {
    /// Every compare the creating write carries.
    pub fn compares(&self) -> Vec<Compare> {
        [self.absent.clone(), self.in_time.clone()]
            .into_iter()
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
        // On this broker's clock, to refuse without writing; the write's own compare is
        // what decides (see the module documentation).
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
            in_time: Compare::LeaderTimeAtMost {
                deadline_ms: start.deadline_ms,
                leader_ms: 0,
            },
            producer,
            marks,
        }))
    }

    /// Why a creation's write did not apply: `ProducerFenced` if a new epoch came, `NotOpen`
    /// (timed out) if the record is still absent and the deadline passed on the metastore
    /// leader's clock, else `Ok` (the record exists now: another write created it; read it
    /// and go on).
    pub(crate) async fn creation_failed(
        &self,
        id: TxnId,
        start: &TxnStart,
    ) -> Result<(), CoordinatorError> {
        if let Some(p) = &start.producer {
            self.producer_compare(p).await?;
        }
        if self.created_or_in_time(id, start).await? {
            Ok(())
        } else {
            Err(TxnRuleError::NotOpen {
                id,
                state: TxnState::TimedOut,
            }
            .into())
        }
    }

    /// Whether the record of `id` exists, or may still be created: the metastore leader's
    /// clock is within `start`'s deadline. Asked after a creation failed, which would
    /// otherwise be retried until this broker's own clock passed the deadline.
    pub(crate) async fn created_or_in_time(
        &self,
        id: TxnId,
        start: &TxnStart,
    ) -> Result<bool, CoordinatorError> {
        let t = self.tables();
        // A write of nothing but comparisons: absent and in time, or one of them failed.
        let probe = Txn {
            compares: vec![
                t.txns.version_is(&id, Expect::Absent),
                Compare::LeaderTimeAtMost {
                    deadline_ms: start.deadline_ms,
                    leader_ms: 0,
                },
            ],
            success: Vec::new(),
            failure: Vec::new(),
        };
        let response = t.meta().txn(probe).await.map_err(TableError::from)?;
        Ok(response.succeeded || t.txns.get(&id).await?.is_some())
    }
}
