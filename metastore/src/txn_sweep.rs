//! Forgetting decided transactions: the metastore leader deletes a decided transaction's
//! record some time after the decision (`keep`: meanwhile a client retrying its commit still
//! hears "committed"), but only once every participant has settled it — no partition mark
//! (`/txn-partitions/`) and no subscription mark (`/txn-subs/`) of it is left. Until then a
//! participant loaded after a failover may still need the record to learn the outcome.
//!
//! The record goes in one compare-and-set that also requires every mark it names to be
//! absent; if one is still there, the transaction is looked at again `keep` later.
//!
//! Nor does a record go before its deadline plus a margin for clock skew: a write of a
//! lazily begun transaction may create its record until the deadline (see
//! [`crate::txn_start`]), and must find the decision instead.

use std::time::Duration;

use futures::future::join_all;
use strata_proto::{TopicName, TxnId};
use tracing::{info, warn};

use crate::Expect;
use crate::tables::{CursorKey, DecidedMark, Schema, TableError, TxnDecided};
use crate::txn_coordinator::{CoordinatorError, TxnCoordinator};
use crate::txn_start::LATE_WRITE_MARGIN;
use crate::types::Txn;

/// How long a decided transaction is kept by default.
pub const DEFAULT_KEEP_DECIDED: Duration = Duration::from_secs(60);

/// Decided transactions looked at per pass.
const SWEEP_PAGE: u32 = 256;

/// Passes between two that start from the oldest mark again (the others resume where the
/// last one stopped, so they do not walk the deleted marks' tombstones; a mark written with
/// a clock behind the others' sorts before that point and is found by the next restart).
const RESTART_EVERY: u32 = 64;

/// What one look at a decided transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swept {
    Forgotten,
    /// A participant has not settled it yet: looked at again later.
    Kept,
}

/// The leader's sweep over the decided transactions, in decision order.
pub struct DecidedSweeper {
    coordinator: TxnCoordinator,
    keep: Duration,
    /// How long past its deadline a record is kept at least.
    late_write_margin: Duration,
    resume_after: String,
    passes: u32,
}

impl DecidedSweeper {
    pub fn new(coordinator: TxnCoordinator, keep: Duration) -> Self {
        Self {
            coordinator,
            keep,
            late_write_margin: LATE_WRITE_MARGIN,
            resume_after: String::new(),
            passes: 0,
        }
    }

    /// Keeps records `margin` past their deadline instead of [`LATE_WRITE_MARGIN`] (tests on
    /// one machine, one clock).
    pub fn with_late_write_margin(mut self, margin: Duration) -> Self {
        self.late_write_margin = margin;
        self
    }

    /// Looks at up to a page of transactions decided at least `keep` before `now`; returns
    /// how many it forgot.
    pub async fn sweep(&mut self, now: u64) -> Result<usize, CoordinatorError> {
        if self.passes.is_multiple_of(RESTART_EVERY) {
            self.resume_after.clear();
        }
        self.passes = self.passes.wrapping_add(1);
        let cutoff = now.saturating_sub(self.keep.as_millis() as u64);
        let tables = self.coordinator.tables();
        let page = tables
            .txn_decided
            .list_page(&(), &self.resume_after, SWEEP_PAGE)
            .await?;
        let due: Vec<(u64, TxnId)> = page
            .into_iter()
            .map(|(key, _)| key)
            .take_while(|(decided_ms, _)| *decided_ms <= cutoff)
            .collect();
        let Some(last) = due.last() else {
            self.resume_after.clear();
            return Ok(0);
        };
        let last_key = TxnDecided::key(last);
        // Concurrent, so the metastore packs them into few raft entries.
        let margin_ms = self.late_write_margin.as_millis() as u64;
        let outcomes = join_all(
            due.iter()
                .map(|&(decided_ms, id)| self.coordinator.forget(decided_ms, id, now, margin_ms)),
        )
        .await;
        let mut forgotten = 0;
        for (outcome, (_, id)) in outcomes.into_iter().zip(&due) {
            match outcome {
                Ok(Swept::Forgotten) => forgotten += 1,
                Ok(Swept::Kept) => {}
                // One bad record must not stop the others: it is looked at again next time.
                Err(e) => warn!(txn = %id, error = %e, "decided transaction not forgotten"),
            }
        }
        self.resume_after = last_key;
        if forgotten > 0 {
            info!(forgotten, "decided transactions forgotten");
        }
        Ok(forgotten)
    }
}

impl TxnCoordinator {
    /// Deletes the record of `id`, decided at `decided_ms`, if every participant settled it
    /// and it is `margin_ms` past its deadline; else moves its mark to be looked at again
    /// later.
    pub async fn forget(
        &self,
        decided_ms: u64,
        id: TxnId,
        now: u64,
        margin_ms: u64,
    ) -> Result<Swept, CoordinatorError> {
        let t = self.tables();
        let mark = (decided_ms, id);
        let row = match self.get(id).await {
            Ok(row) if !row.record.state.is_open() => row,
            // Gone already, or (never) open again: the mark is stray.
            Ok(_) | Err(CoordinatorError::NotFound(_)) => {
                t.txn_decided.delete(&mark, Expect::Any).await?;
                return Ok(Swept::Forgotten);
            }
            Err(e) => return Err(e),
        };
        if !row.record.marked {
            // From before participants marked themselves: no telling whether one still
            // needs it. Kept, and not looked at again.
            t.txn_decided.delete(&mark, Expect::Any).await?;
            return Ok(Swept::Kept);
        }
        let late_writes_end = row.record.deadline_ms.saturating_add(margin_ms);
        if now < late_writes_end {
            // A late write may still come: it must find the decision, not create it anew.
            let later = (late_writes_end, id);
            let txn = Txn {
                compares: Vec::new(),
                success: vec![
                    t.txn_decided.delete_op(&mark),
                    t.txn_decided.put_op(&later, &DecidedMark {})?,
                ],
                failure: Vec::new(),
            };
            t.meta().txn(txn).await.map_err(TableError::from)?;
            return Ok(Swept::Kept);
        }
        let mut compares = vec![t.txns.version_is(&id, Expect::Version(row.version))];
        for topic in row.record.partitions.keys() {
            let topic = TopicName::parse(topic).map_err(|e| bad_topic(id, topic, e))?;
            compares.push(t.txn_partitions.version_is(&(topic, id), Expect::Absent));
        }
        for (topic, sub) in &row.record.subscriptions {
            let topic = TopicName::parse(topic).map_err(|e| bad_topic(id, topic, e))?;
            let cursor = CursorKey::new(topic, sub.clone());
            compares.push(t.txn_subs.version_is(&(cursor, id), Expect::Absent));
        }
        let later = (now.max(decided_ms.saturating_add(1)), id);
        let txn = Txn {
            compares,
            success: vec![t.txns.delete_op(&id), t.txn_decided.delete_op(&mark)],
            failure: vec![
                t.txn_decided.delete_op(&mark),
                t.txn_decided.put_op(&later, &DecidedMark {})?,
            ],
        };
        let written = t.meta().txn(txn).await.map_err(TableError::from)?;
        Ok(if written.succeeded {
            Swept::Forgotten
        } else {
            Swept::Kept
        })
    }
}

fn bad_topic(id: TxnId, topic: &str, e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Table(TableError::Decode {
        table: "transaction",
        key: format!("{id}"),
        source: crate::tables::DecodeError::Malformed(format!("participant {topic:?}: {e}")),
    })
}
