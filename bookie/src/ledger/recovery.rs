//! Recovery (BookKeeper's recovery open), driving [`LacRecovery`] and [`RecoveryPlan`] with
//! bookie calls: mark the ledger IN_RECOVERY, fence it on the last ensemble while reading the
//! bookies' last-add-confirmed, read forward with fencing reads to the first entry proven
//! absent, re-write every entry found after the LAC to its write quorum, and close the ledger
//! by compare-and-set. Of two racing recoveries exactly one closes it; the other sees it
//! CLOSED and adopts that end.

use std::collections::VecDeque;

use bytes::Bytes;
use strata_metastore::tables::TableError;
use strata_proto::pb::bookie::{LedgerMetadata, LedgerState};
use strata_proto::{EntryId, LedgerId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::quorum::{
    EntryAnswer, LacAnswer, LacOutcome, LacRecovery, RecoveryAction, RecoveryPlan, WriteSchedule,
};
use super::{LedgerClient, LedgerError, bump, entry, metadata};
use crate::BookieRpcError;

/// How many times a recovery re-reads metadata that changed under it before giving up.
const RECOVERY_ATTEMPTS: usize = 8;

/// What a recovery found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// The ledger's last entry (`None`: it is empty).
    pub last_entry: Option<EntryId>,
    pub length_bytes: u64,
    /// Whether this call closed the ledger; `false` when it was CLOSED already (by its
    /// writer, or by a recovery that won the race).
    pub closed_by_this_call: bool,
}

impl LedgerClient {
    /// Recovers a ledger: afterwards it is CLOSED at an end that includes every entry ever
    /// acknowledged to its writer, and the old writer's adds fail with `Fenced`. Idempotent:
    /// an already CLOSED ledger is left as it is; one left IN_RECOVERY by a recovery that
    /// died is recovered again.
    #[tracing::instrument(skip_all, fields(ledger = %id))]
    pub async fn recover(&self, id: LedgerId) -> Result<Recovered, LedgerError> {
        for _ in 0..RECOVERY_ATTEMPTS {
            let (md, mut version) = self.metadata(id).await?;
            match metadata::state(id, &md)? {
                LedgerState::Closed => {
                    return Ok(Recovered {
                        last_entry: metadata::last_entry(&md),
                        length_bytes: md.length_bytes,
                        closed_by_this_call: false,
                    });
                }
                LedgerState::Open => {
                    let mut in_recovery = md.clone();
                    in_recovery.state = LedgerState::InRecovery as i32;
                    match self.ledgers().update(&id, &in_recovery, version).await {
                        Ok(written) => version = written.version,
                        Err(TableError::VersionMismatch { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                // Another recovery is running or died: recovering again is safe, the final
                // compare-and-set decides.
                LedgerState::InRecovery => {}
            }
            let (last, length) = self.find_end(id, &md).await?;
            let closed = metadata::closed(md, last, length);
            match self.ledgers().update(&id, &closed, version).await {
                Ok(_) => {
                    bump(&self.inner.stats.recoveries);
                    tracing::info!(ledger = %id, last_entry = ?last, length, "recovered ledger");
                    return Ok(Recovered {
                        last_entry: last,
                        length_bytes: length,
                        closed_by_this_call: true,
                    });
                }
                Err(TableError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LedgerError::ConcurrentRecovery(id))
    }

    /// Fences the last ensemble, finds the last entry, re-replicates what follows the LAC and
    /// returns the end and the ledger's length there.
    async fn find_end(
        &self,
        id: LedgerId,
        md: &LedgerMetadata,
    ) -> Result<(Option<EntryId>, u64), LedgerError> {
        let schedule = metadata::schedule(md)?;
        let fragment = metadata::last_fragment(md).ok_or_else(|| LedgerError::BadMetadata {
            ledger: id,
            reason: "no fragment".into(),
        })?;
        let ensemble = fragment.bookies.clone();
        let lac = self.fence_and_read_lac(id, schedule, &ensemble).await?;

        let mut plan = RecoveryPlan::<Bytes>::new(schedule, lac, EntryId(fragment.first_entry_id));
        let mut actions = VecDeque::from([plan.start()]);
        let mut rewrites: Vec<JoinHandle<Result<(), LedgerError>>> = Vec::new();
        let mut last_length = None;
        while let Some(action) = actions.pop_front() {
            match action {
                RecoveryAction::Read { entry, indexes } => {
                    actions.extend(
                        self.recovery_read(id, &ensemble, &mut plan, entry, indexes)
                            .await,
                    );
                }
                RecoveryAction::Rewrite { entry, payload } => {
                    let stored = entry::decode(md.entry_format, id, entry, payload.clone())?;
                    last_length = stored.length_after;
                    let targets: Vec<String> = schedule
                        .write_set(entry)
                        .map(|i| ensemble[i].clone())
                        .collect();
                    let client = self.clone();
                    rewrites.push(tokio::spawn(async move {
                        client
                            .rewrite(id, entry, lac, payload, targets, schedule.ack_quorum())
                            .await
                    }));
                }
                RecoveryAction::Close { last_entry } => {
                    for rewrite in rewrites.drain(..) {
                        rewrite.await.map_err(|_| LedgerError::Shutdown(id))??;
                    }
                    let length = match (last_entry, last_length) {
                        (None, _) => 0,
                        (Some(_), Some(length)) => length,
                        // Nothing after the LAC: the length is in the LAC entry's header.
                        (Some(last), None) => self
                            .read_entry(id, md, last)
                            .await?
                            .length_after
                            .unwrap_or(0),
                    };
                    return Ok((last_entry, length));
                }
                RecoveryAction::Failed { entry } => {
                    return Err(LedgerError::RecoveryFailed {
                        ledger: id,
                        reason: format!(
                            "entry {entry} could be neither read nor proven absent (bookies unreachable)"
                        ),
                    });
                }
            }
        }
        Err(LedgerError::RecoveryFailed {
            ledger: id,
            reason: "recovery plan ended without a decision".into(),
        })
    }

    /// Fences the ledger on every bookie of `ensemble` and returns the highest LAC once the
    /// answers cover the ensemble (no ack quorum can form without a fenced bookie).
    async fn fence_and_read_lac(
        &self,
        id: LedgerId,
        schedule: WriteSchedule,
        ensemble: &[String],
    ) -> Result<Option<EntryId>, LedgerError> {
        let mut recovery = LacRecovery::new(schedule);
        let (answers, mut answered) = mpsc::unbounded_channel();
        for index in recovery.targets() {
            let (client, bookie, answers) =
                (self.clone(), ensemble[index].clone(), answers.clone());
            tokio::spawn(async move {
                let result = client.cluster().read_lac(&bookie, id, true).await;
                let _ = answers.send((index, result));
            });
        }
        drop(answers);
        while let Some((index, result)) = answered.recv().await {
            let answer = match result {
                Ok(info) => LacAnswer::Lac(info.last_add_confirmed),
                Err(BookieRpcError::NoSuchLedger { .. }) => LacAnswer::NoLedger,
                Err(BookieRpcError::Fenced { .. }) => LacAnswer::Fenced,
                Err(e) => {
                    tracing::warn!(ledger = %id, error = %e, "recovery: fence failed on a bookie");
                    LacAnswer::Error
                }
            };
            match recovery.answer(index, answer) {
                LacOutcome::Pending => {}
                LacOutcome::Done { lac } => return Ok(lac),
                LacOutcome::Failed => break,
            }
        }
        Err(LedgerError::RecoveryFailed {
            ledger: id,
            reason: "too few bookies of the last ensemble answered the fence".into(),
        })
    }

    /// Reads `entry` with fencing reads from `indexes` until the plan decides; returns the
    /// plan's next actions.
    async fn recovery_read(
        &self,
        id: LedgerId,
        ensemble: &[String],
        plan: &mut RecoveryPlan<Bytes>,
        entry: EntryId,
        indexes: Vec<usize>,
    ) -> Vec<RecoveryAction<Bytes>> {
        let (answers, mut answered) = mpsc::unbounded_channel();
        for index in indexes {
            let (client, bookie, answers) =
                (self.clone(), ensemble[index].clone(), answers.clone());
            tokio::spawn(async move {
                let result = client.cluster().read(&bookie, id, entry, true).await;
                let _ = answers.send((index, result));
            });
        }
        drop(answers);
        while let Some((index, result)) = answered.recv().await {
            let answer = match result {
                Ok(read) => EntryAnswer::Found(read.payload),
                // The fence is recorded before the read, so "no ledger" is a denial too.
                Err(BookieRpcError::NoSuchEntry { .. } | BookieRpcError::NoSuchLedger { .. }) => {
                    EntryAnswer::NoSuchEntry
                }
                Err(e) => {
                    if let BookieRpcError::ChecksumMismatch { .. } = e {
                        bump(&self.inner.stats.corrupt_replicas);
                    }
                    tracing::warn!(ledger = %id, entry = %entry, error = %e, "recovery read failed");
                    EntryAnswer::Error
                }
            };
            let next = plan.answer(entry, index, answer);
            if !next.is_empty() {
                return next;
            }
        }
        // Every answer is in and none decided: EntryRecovery reports Unrecoverable before
        // this, so it cannot happen; fail rather than loop.
        vec![RecoveryAction::Failed { entry }]
    }

    /// Writes a recovered entry to every bookie of its write set (recovery adds pass the
    /// fence); succeeds once all answered and at least Qa stored it. Copies a dead bookie
    /// missed are restored by re-replication.
    async fn rewrite(
        &self,
        id: LedgerId,
        entry: EntryId,
        lac: Option<EntryId>,
        stored: Bytes,
        targets: Vec<String>,
        ack_quorum: usize,
    ) -> Result<(), LedgerError> {
        let mut writes = Vec::with_capacity(targets.len());
        for bookie in targets {
            let (client, stored) = (self.clone(), stored.clone());
            writes.push(tokio::spawn(async move {
                client
                    .cluster()
                    .add(&bookie, id, entry, lac, stored, true)
                    .await
            }));
        }
        let mut stored_on = 0;
        let mut last_error = None;
        for write in writes {
            match write.await.map_err(|_| LedgerError::Shutdown(id))? {
                Ok(()) => stored_on += 1,
                Err(e) => last_error = Some(e),
            }
        }
        if stored_on >= ack_quorum {
            return Ok(());
        }
        Err(LedgerError::RecoveryFailed {
            ledger: id,
            reason: format!(
                "entry {entry} re-written to {stored_on} bookies, fewer than Qa = {ack_quorum}: {}",
                last_error.map_or_else(String::new, |e| e.to_string())
            ),
        })
    }
}
