//! Reading one entry from its replicas: [`ReadPlan`] decides the order, failover and
//! speculative reads; this drives it with bookie calls.

use std::time::Instant;

use bytes::Bytes;
use strata_proto::pb::bookie::LedgerMetadata;
use strata_proto::{EntryId, LedgerId};
use tokio::sync::mpsc;

use super::entry::{self, StoredEntry};
use super::quorum::{IndexSet, ReadPlan, ReadStep};
use super::{LedgerClient, LedgerError, bump, metadata};
use crate::BookieRpcError;
use crate::server::BookieEntry;

type ReplicaAnswer = (usize, Option<Result<BookieEntry, BookieRpcError>>);

impl LedgerClient {
    /// Reads `entry` from one of its replicas under `md`: in write-set order, the next one
    /// after an error (a corrupt copy included, which is counted and logged), and the next one
    /// too when a replica is slower than the speculative delay. The first copy wins. The read
    /// fails with a denial (see [`is_denial`]) only when every replica denied the entry.
    pub(crate) async fn read_entry(
        &self,
        id: LedgerId,
        md: &LedgerMetadata,
        entry: EntryId,
    ) -> Result<StoredEntry, LedgerError> {
        let stored = self.read_stored(id, md, entry, &[]).await?;
        entry::decode(md.entry_format, id, entry, stored)
    }

    /// As [`read_entry`](Self::read_entry), returning the bytes as stored (header included),
    /// and trying the bookies in `avoid` last (known dead: re-replication).
    pub(crate) async fn read_stored(
        &self,
        id: LedgerId,
        md: &LedgerMetadata,
        entry: EntryId,
        avoid: &[String],
    ) -> Result<Bytes, LedgerError> {
        let schedule = metadata::schedule(md)?;
        let bookies = metadata::fragment_of(md, entry)
            .map(|f| f.bookies.clone())
            .ok_or_else(|| LedgerError::BadMetadata {
                ledger: id,
                reason: format!("no fragment holds entry {entry}"),
            })?;
        let delay = self.options().speculative_read_delay;
        let mut known_failed = IndexSet::new();
        for (index, bookie) in bookies.iter().enumerate() {
            if avoid.contains(bookie) {
                known_failed.insert(index);
            }
        }
        let mut plan = ReadPlan::new(schedule, entry, None, known_failed, delay);
        let (answers, mut answered) = mpsc::unbounded_channel();
        let send = |index: usize| {
            let client = self.clone();
            let bookie = bookies[index].clone();
            let answer = AnswerOnce {
                index,
                answers: Some(answers.clone()),
            };
            tokio::spawn(async move {
                let result = client.cluster().read(&bookie, id, entry, false).await;
                answer.send(result);
            });
        };
        let mut last_error: Option<LedgerError> = None;
        let mut step = plan.start(Instant::now());
        loop {
            match step {
                ReadStep::Send(index) => send(index),
                ReadStep::Done => unreachable_done(id, entry)?,
                ReadStep::Failed => return Err(last_error.unwrap_or(LedgerError::Shutdown(id))),
                ReadStep::Wait => {}
            }
            let deadline = plan.poll_timeout().map(tokio::time::Instant::from_std);
            let answer = tokio::select! {
                answer = answered.recv() => answer,
                _ = sleep_until(deadline) => {
                    if let Some(index) = plan.on_timeout(Instant::now()) {
                        bump(&self.inner.stats.speculative_reads);
                        send(index);
                    }
                    step = ReadStep::Wait;
                    continue;
                }
            };
            let Some((index, result)) = answer else {
                return Err(LedgerError::Shutdown(id));
            };
            let error = match result {
                Some(Ok(read)) => {
                    if plan.on_success(index) {
                        if index != plan.order()[0] {
                            bump(&self.inner.stats.read_failovers);
                        }
                        return Ok(read.payload);
                    }
                    step = ReadStep::Wait;
                    continue;
                }
                Some(Err(e)) => {
                    if let BookieRpcError::ChecksumMismatch { bookie, .. } = &e {
                        bump(&self.inner.stats.corrupt_replicas);
                        tracing::error!(ledger = %id, entry = %entry, bookie, "corrupt replica: reading another copy");
                    } else {
                        tracing::debug!(ledger = %id, entry = %entry, error = %e, "replica read failed");
                    }
                    LedgerError::Bookie(e)
                }
                None => {
                    tracing::warn!(ledger = %id, entry = %entry, bookie = %bookies[index], "replica read task ended without an answer");
                    LedgerError::Shutdown(id)
                }
            };
            // A denial never hides another error, so the read fails with one only when
            // every replica denied the entry (which `LedgerReader::read` acts on).
            if last_error.is_none() || !is_denial(&error) {
                last_error = Some(error);
            }
            step = plan.on_error(index, Instant::now());
        }
    }
}

/// Whether a read failed because the replica has no such entry (or no such ledger: its copy
/// was deleted) rather than because it could not answer.
pub(crate) fn is_denial(error: &LedgerError) -> bool {
    matches!(
        error,
        LedgerError::Bookie(
            BookieRpcError::NoSuchEntry { .. } | BookieRpcError::NoSuchLedger { .. }
        )
    )
}

/// Delivers one replica's answer to the read loop. A read task that ends without answering
/// (it panicked, or was dropped at runtime shutdown) delivers `None` from `drop`: the loop
/// holds a sender itself, so the channel never closes and would otherwise wait forever.
struct AnswerOnce {
    index: usize,
    answers: Option<mpsc::UnboundedSender<ReplicaAnswer>>,
}

impl AnswerOnce {
    fn send(mut self, result: Result<BookieEntry, BookieRpcError>) {
        if let Some(answers) = self.answers.take() {
            // The read may be over already (another replica won): nobody listens then.
            let _ = answers.send((self.index, Some(result)));
        }
    }
}

impl Drop for AnswerOnce {
    fn drop(&mut self) {
        if let Some(answers) = self.answers.take() {
            let _ = answers.send((self.index, None));
        }
    }
}

/// `Done` is only reported by `on_success`, which returns above.
fn unreachable_done(id: LedgerId, entry: EntryId) -> Result<(), LedgerError> {
    Err(LedgerError::BadEntry {
        ledger: id,
        entry,
        reason: "read plan finished without an answer".into(),
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
