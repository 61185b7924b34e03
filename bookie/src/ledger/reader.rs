//! [`LedgerReader`]: reads a ledger, closed or still being written (tailing).

use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use strata_proto::pb::bookie::LedgerState;
use strata_proto::{EntryId, LedgerId};

use super::{LedgerClient, LedgerError, metadata};

/// Reads one ledger. Reads are bounded by the last readable entry: the last entry of a CLOSED
/// ledger, else the bookie's last-add-confirmed (which trails the writer's by the entries
/// whose confirmation no later add has carried yet).
pub struct LedgerReader {
    client: LedgerClient,
    id: LedgerId,
    state: Mutex<ReaderState>,
}

#[derive(Debug, Clone, Copy)]
struct ReaderState {
    closed: bool,
    last: Option<EntryId>,
}

impl std::fmt::Debug for LedgerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = *self.lock();
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
        closed: bool,
        last: Option<EntryId>,
    ) -> Self {
        LedgerReader {
            client,
            id,
            state: Mutex::new(ReaderState { closed, last }),
        }
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

    /// Learns the last readable entry again: from the metadata if the ledger has closed since,
    /// else from the bookie's last-add-confirmed.
    pub async fn refresh_last_add_confirmed(&self) -> Result<Option<EntryId>, LedgerError> {
        if let ReaderState { closed: true, last } = *self.lock() {
            return Ok(last);
        }
        let (md, _) = self.client.metadata(self.id).await?;
        let mut state = self.lock();
        if metadata::state(self.id, &md)? == LedgerState::Closed {
            *state = ReaderState {
                closed: true,
                last: metadata::last_entry(&md),
            };
        } else {
            let lac = self.client.bookie_lac(self.id)?;
            state.last = state.last.max(lac);
        }
        Ok(state.last)
    }

    /// Reads entries `first..=last`. If `last` is beyond the last readable entry, refreshes it
    /// once, then fails with [`LedgerError::ReadBeyondLastAddConfirmed`].
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
        self.client.read_entries(self.id, first, last).await
    }
}
