//! [`LedgerReader`]: reads a ledger, closed or still being written (tailing).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use strata_proto::pb::bookie::LedgerMetadata;
use strata_proto::{EntryId, LedgerId};
use tokio::sync::mpsc;

use super::read::is_denial;
use super::{LedgerClient, LedgerError, is_closed, metadata};

/// Reads one ledger. Reads are bounded by the last readable entry: the last entry of a CLOSED
/// ledger, else the highest last-add-confirmed the bookies report (which trails the writer's
/// by the entries whose confirmation no later add has carried yet).
pub struct LedgerReader {
    client: LedgerClient,
    id: LedgerId,
    state: Mutex<ReaderState>,
}

#[derive(Debug, Clone)]
struct ReaderState {
    metadata: LedgerMetadata,
    closed: bool,
    last: Option<EntryId>,
}

impl std::fmt::Debug for LedgerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("LedgerReader")
            .field("id", &self.id)
            .field("closed", &state.closed)
            .field("last", &state.last)
            .finish()
    }
}

impl LedgerReader {
    pub(crate) fn new(
        client: LedgerClient,
        id: LedgerId,
        metadata: LedgerMetadata,
    ) -> Result<Self, LedgerError> {
        let closed = is_closed(id, &metadata)?;
        let last = if closed {
            metadata::last_entry(&metadata)
        } else {
            None
        };
        Ok(LedgerReader {
            client,
            id,
            state: Mutex::new(ReaderState {
                metadata,
                closed,
                last,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ReaderState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The ledger's id.
    pub fn id(&self) -> LedgerId {
        self.id
    }

    /// Whether the ledger is known to be CLOSED (its last entry is final).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The last readable entry known now.
    pub fn last_entry(&self) -> Option<EntryId> {
        self.lock().last
    }

    /// The ledger's length in payload bytes, once CLOSED.
    pub fn length_bytes(&self) -> Option<u64> {
        let state = self.lock();
        state.closed.then_some(state.metadata.length_bytes)
    }

    /// Learns the last readable entry again: from the metadata if the ledger has closed since,
    /// else the highest last-add-confirmed the last ensemble's bookies report.
    pub async fn refresh_last_add_confirmed(&self) -> Result<Option<EntryId>, LedgerError> {
        if self.is_closed() {
            return Ok(self.last_entry());
        }
        let (md, _) = self.client.metadata(self.id).await?;
        if is_closed(self.id, &md)? {
            return Ok(self.adopt(md, None));
        }
        let lac = self.bookies_lac(&md, None, Duration::ZERO).await?;
        Ok(self.adopt(md, lac))
    }

    /// Waits up to `wait` for the last-add-confirmed to pass `above` (a tailing reader's long
    /// poll at the bookies), or for the ledger to close; returns the last readable entry then.
    pub async fn wait_for_entries_after(
        &self,
        above: Option<EntryId>,
        wait: Duration,
    ) -> Result<Option<EntryId>, LedgerError> {
        let known = self.last_entry();
        if self.is_closed() || known > above {
            return Ok(known);
        }
        let (md, _) = self.client.metadata(self.id).await?;
        if is_closed(self.id, &md)? {
            return Ok(self.adopt(md, None));
        }
        let lac = self.bookies_lac(&md, above, wait).await?;
        Ok(self.adopt(md, lac))
    }

    /// Takes newer metadata (and, if still open, a LAC learnt from bookies).
    fn adopt(&self, md: LedgerMetadata, lac: Option<EntryId>) -> Option<EntryId> {
        let mut state = self.lock();
        if is_closed(self.id, &md).unwrap_or(false) {
            state.closed = true;
            state.last = metadata::last_entry(&md);
        } else {
            state.last = state.last.max(lac);
        }
        state.metadata = md;
        state.last
    }

    /// The highest LAC the last ensemble reports: every answer when `wait` is zero, else the
    /// first answer above `above` (a long poll), or the highest when all came back without.
    async fn bookies_lac(
        &self,
        md: &LedgerMetadata,
        above: Option<EntryId>,
        wait: Duration,
    ) -> Result<Option<EntryId>, LedgerError> {
        let bookies = metadata::last_fragment(md)
            .map(|f| f.bookies.clone())
            .unwrap_or_default();
        let (answers, mut answered) = mpsc::unbounded_channel();
        for bookie in &bookies {
            let (client, bookie, answers, id) = (
                self.client.clone(),
                bookie.clone(),
                answers.clone(),
                self.id,
            );
            tokio::spawn(async move {
                let cluster = client.cluster();
                let result = if wait.is_zero() {
                    cluster.read_lac(&bookie, id, false).await
                } else {
                    cluster.read_lac_long_poll(&bookie, id, above, wait).await
                };
                let _ = answers.send(result);
            });
        }
        drop(answers);
        let mut best = None;
        let mut last_error = None;
        let mut answers = 0;
        while let Some(result) = answered.recv().await {
            match result {
                Ok(info) => {
                    answers += 1;
                    best = best.max(info.last_add_confirmed);
                    if !wait.is_zero() && best > above {
                        break;
                    }
                }
                // A bookie the ledger has not reached yet knows no LAC: not an error.
                Err(crate::BookieRpcError::NoSuchLedger { .. }) => answers += 1,
                Err(e) => last_error = Some(e),
            }
        }
        match (answers, last_error) {
            (0, Some(e)) => Err(e.into()),
            _ => Ok(best),
        }
    }

    /// Reads entries `first..=last`. If `last` is beyond the last readable entry, refreshes it
    /// once, then fails with [`LedgerError::ReadBeyondLastAddConfirmed`]. If every replica of
    /// an entry denies it, re-reads the metadata once and, if it changed (re-replication moved
    /// the fragment), reads again.
    pub async fn read(
        &self,
        first: EntryId,
        last: EntryId,
    ) -> Result<Vec<(EntryId, Bytes)>, LedgerError> {
        if first > last {
            return Err(LedgerError::InvalidRange {
                ledger: self.id,
                first,
                last,
            });
        }
        let beyond = |known: Option<EntryId>| known.is_none_or(|k| last > k);
        if beyond(self.last_entry()) {
            let known = self.refresh_last_add_confirmed().await?;
            if beyond(known) {
                return Err(LedgerError::ReadBeyondLastAddConfirmed {
                    ledger: self.id,
                    requested: last,
                    last_add_confirmed: known,
                });
            }
        }
        let md = self.lock().metadata.clone();
        match self.client.read_range(self.id, &md, first, last).await {
            // Every entry asked for is readable, so a copy exists: denied by every replica
            // this metadata names, it was moved to other bookies after this reader read it.
            Err(e) if is_denial(&e) => {
                let (current, _) = self.client.metadata(self.id).await?;
                if current.fragments == md.fragments {
                    return Err(e);
                }
                tracing::debug!(ledger = %self.id, error = %e, "replicas denied a readable entry: reading again under newer metadata");
                self.adopt(current.clone(), None);
                self.client.read_range(self.id, &current, first, last).await
            }
            read => read,
        }
    }
}

impl LedgerClient {
    /// Reads `first..=last` under `md`, up to `read_concurrency` entries at once, in order.
    pub(crate) async fn read_range(
        &self,
        id: LedgerId,
        md: &LedgerMetadata,
        first: EntryId,
        last: EntryId,
    ) -> Result<Vec<(EntryId, Bytes)>, LedgerError> {
        let count = range_len(id, first, last)?;
        let mut out = Vec::with_capacity(count.min(4096) as usize);
        let chunk = self.options().read_concurrency.max(1) as u64;
        let mut next = first.0;
        loop {
            let end = last.0.min(next.saturating_add(chunk - 1));
            let reads: Vec<_> = (next..=end)
                .map(|e| {
                    let (client, md) = (self.clone(), md.clone());
                    tokio::spawn(async move { client.read_entry(id, &md, EntryId(e)).await })
                })
                .collect();
            for (e, read) in (next..=end).zip(reads) {
                let stored = read.await.map_err(|_| LedgerError::Shutdown(id))??;
                out.push((EntryId(e), stored.payload));
            }
            // Stop at `last` rather than test `next <= last`: `end + 1` overflows at u64::MAX.
            if end == last.0 {
                return Ok(out);
            }
            next = end + 1;
        }
    }
}

/// How many entries `first..=last` holds: [`LedgerError::InvalidRange`] if `first > last` or
/// the count does not fit a `u64` (`0..=u64::MAX`).
fn range_len(id: LedgerId, first: EntryId, last: EntryId) -> Result<u64, LedgerError> {
    last.0
        .checked_sub(first.0)
        .and_then(|n| n.checked_add(1))
        .ok_or(LedgerError::InvalidRange {
            ledger: id,
            first,
            last,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A range's length is counted without overflow: an inverted range or one of 2^64
    /// entries is a typed error, never a panic or a wrapped count.
    #[test]
    fn range_length_is_checked() {
        let id = LedgerId(1);
        let len = |first, last| range_len(id, EntryId(first), EntryId(last));
        assert_eq!(len(5, 5).ok(), Some(1));
        assert_eq!(len(0, 9).ok(), Some(10));
        assert_eq!(len(1, u64::MAX).ok(), Some(u64::MAX));
        assert_eq!(len(u64::MAX, u64::MAX).ok(), Some(1));
        for (first, last) in [(6, 5), (u64::MAX, 0), (0, u64::MAX)] {
            assert!(
                matches!(len(first, last), Err(LedgerError::InvalidRange { .. })),
                "{first}..={last}"
            );
        }
    }
}
