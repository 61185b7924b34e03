//! [`LedgerWriter`]: the single writer of an OPEN ledger.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use strata_metastore::tables::TableError;
use strata_proto::pb::bookie::{LedgerMetadata, LedgerState};
use strata_proto::{EntryId, LedgerId};
use tokio::sync::{Notify, oneshot};

use super::pending::{AddRefused, PendingAddQueue, Settled};
use super::{LedgerClient, LedgerError, metadata};
use crate::BookieError;

/// Writes entries to one ledger. `Send + Sync`: share it behind an `Arc`.
///
/// Entry ids are assigned in call order by [`add`](Self::add); the returned futures resolve
/// in id order. A failed add makes the writer refuse every later add (with
/// [`LedgerError::Fenced`] if a recovery fenced it, else [`LedgerError::WriterFailed`]).
pub struct LedgerWriter {
    shared: Arc<Shared>,
}

struct Shared {
    client: LedgerClient,
    id: LedgerId,
    runtime: tokio::runtime::Handle,
    state: Mutex<State>,
    /// Notified when the last pending add settles.
    idle: Notify,
}

struct State {
    queue: PendingAddQueue<Waiter>,
    /// Bytes of every add assigned an id.
    length_bytes: u64,
    /// Bytes of the completed adds (the ledger's length when closed).
    confirmed_bytes: u64,
    /// The metadata as this writer last wrote it, and its metastore version.
    metadata: LedgerMetadata,
    metadata_version: u64,
    /// Set once a recovery fenced this writer.
    fenced: bool,
    /// Set once `close` wrote CLOSED metadata: the last entry it closed at.
    closed_at: Option<Option<EntryId>>,
}

struct Waiter {
    reply: oneshot::Sender<Result<EntryId, LedgerError>>,
    len: u64,
}

impl std::fmt::Debug for LedgerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerWriter")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl LedgerWriter {
    /// Must be called within a tokio runtime (adds are driven by tasks spawned on it).
    pub(crate) fn new(
        client: LedgerClient,
        id: LedgerId,
        metadata: LedgerMetadata,
        version: u64,
    ) -> Self {
        let state = State {
            queue: PendingAddQueue::new(),
            length_bytes: 0,
            confirmed_bytes: 0,
            metadata,
            metadata_version: version,
            fenced: false,
            closed_at: None,
        };
        LedgerWriter {
            shared: Arc::new(Shared {
                client,
                id,
                runtime: tokio::runtime::Handle::current(),
                state: Mutex::new(state),
                idle: Notify::new(),
            }),
        }
    }

    /// The ledger's id.
    pub fn id(&self) -> LedgerId {
        self.shared.id
    }

    /// Assigns the next entry id now (in call order) and returns a future that resolves once
    /// the entry is durable at Qa bookies and every earlier entry completed. The write
    /// proceeds whether or not the future is polled; futures may be awaited in any order.
    pub fn add(
        &self,
        payload: Bytes,
    ) -> impl Future<Output = Result<EntryId, LedgerError>> + Send + 'static {
        let shared = self.shared.clone();
        let id = shared.id;
        let (reply, answer) = oneshot::channel();
        let len = payload.len() as u64;
        let started = {
            let mut state = shared.lock();
            match state.queue.push(Waiter { reply, len }) {
                Ok(entry) => {
                    state.length_bytes += len;
                    Ok((entry, state.queue.last_add_confirmed()))
                }
                Err(refused) => Err(refused_error(id, refused, state.fenced)),
            }
        };
        if let Ok((entry, lac)) = started {
            let task = shared.clone();
            shared.runtime.spawn(async move {
                let result = task
                    .client
                    .bookie()
                    .add_entry(task.id, entry, lac, payload, false)
                    .await;
                task.settle(entry, result);
            });
        }
        async move {
            started?;
            answer.await.map_err(|_| LedgerError::Shutdown(id))?
        }
    }

    /// Highest entry id such that it and every earlier entry completed.
    pub fn last_add_confirmed(&self) -> Option<EntryId> {
        self.shared.lock().queue.last_add_confirmed()
    }

    /// Entry ids assigned so far (including adds still in flight or failed).
    pub fn entries_added(&self) -> u64 {
        self.shared.lock().queue.entries_assigned()
    }

    /// Payload bytes of every add assigned an id so far.
    pub fn length_bytes(&self) -> u64 {
        self.shared.lock().length_bytes
    }

    /// Reads `first..=last` of this ledger; `last` must not exceed this writer's
    /// last-add-confirmed (the writer knows more than any tailing reader).
    pub async fn read(
        &self,
        first: EntryId,
        last: EntryId,
    ) -> Result<Vec<(EntryId, Bytes)>, LedgerError> {
        let id = self.shared.id;
        if first > last {
            return Err(LedgerError::InvalidRange {
                ledger: id,
                first,
                last,
            });
        }
        let lac = self.last_add_confirmed();
        if lac.is_none_or(|lac| last > lac) {
            return Err(LedgerError::ReadBeyondLastAddConfirmed {
                ledger: id,
                requested: last,
                last_add_confirmed: lac,
            });
        }
        self.shared.client.read_entries(id, first, last).await
    }

    /// Refuses new adds, waits for the in-flight ones, then compare-and-sets the metadata to
    /// CLOSED at the last-add-confirmed with the confirmed length. Returns the last entry.
    /// Idempotent. Fails with [`LedgerError::Fenced`] if a recovery took the ledger over.
    #[tracing::instrument(skip_all, fields(ledger = %self.shared.id))]
    pub async fn close(&self) -> Result<Option<EntryId>, LedgerError> {
        let shared = &self.shared;
        let id = shared.id;
        loop {
            let idle = shared.idle.notified();
            {
                let mut state = shared.lock();
                state.queue.close();
                if let Some(closed_at) = state.closed_at {
                    return Ok(closed_at);
                }
                if state.queue.pending() == 0 {
                    break;
                }
            }
            idle.await;
        }
        loop {
            let (last, target, version) = {
                let state = shared.lock();
                let last = state.queue.last_add_confirmed();
                let target = metadata::closed(state.metadata.clone(), last, state.confirmed_bytes);
                (last, target, state.metadata_version)
            };
            match shared.client.ledgers().update(&id, &target, version).await {
                Ok(written) => {
                    let mut state = shared.lock();
                    state.metadata = target;
                    state.metadata_version = written.version;
                    state.closed_at = Some(last);
                    tracing::debug!(last_entry = ?last, "closed ledger");
                    return Ok(last);
                }
                Err(TableError::VersionMismatch { .. }) => {
                    let (current, version) = shared.client.metadata(id).await?;
                    match metadata::state(id, &current)? {
                        // A concurrent close (of this writer, or a recovery that found the
                        // same end) already wrote what this close would.
                        LedgerState::Closed
                            if metadata::last_entry(&current) == last
                                && current.length_bytes == target.length_bytes =>
                        {
                            let mut state = shared.lock();
                            state.metadata = current;
                            state.metadata_version = version;
                            state.closed_at = Some(last);
                            return Ok(last);
                        }
                        LedgerState::Closed | LedgerState::InRecovery => {
                            shared.lock().fenced = true;
                            return Err(LedgerError::Fenced(id));
                        }
                        // Changed but still open (a future ensemble change): retry on it.
                        LedgerState::Open => {
                            let mut state = shared.lock();
                            state.metadata = current;
                            state.metadata_version = version;
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic in another holder: every change is a
        // single queue call.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Feeds an add's outcome to the queue and answers whatever it settles.
    fn settle(&self, entry: EntryId, result: Result<(), BookieError>) {
        let (settled, error, fenced) = {
            let mut state = self.lock();
            let (settled, error) = match result {
                Ok(()) => (state.queue.durable(entry), None),
                Err(e) => {
                    if matches!(e, BookieError::Fenced(_)) {
                        state.fenced = true;
                    }
                    (state.queue.fail(entry), Some(e))
                }
            };
            for (_, waiter) in &settled.completed {
                state.confirmed_bytes += waiter.len;
            }
            if state.queue.pending() == 0 {
                self.idle.notify_waiters();
            }
            (settled, error, state.fenced)
        };
        if let Some(e) = &error {
            tracing::warn!(ledger = %self.id, entry = %entry, error = %e, "ledger add failed");
        }
        answer(self.id, settled, entry, error, fenced);
    }
}

fn answer(
    id: LedgerId,
    settled: Settled<Waiter>,
    entry: EntryId,
    error: Option<BookieError>,
    fenced: bool,
) {
    // A caller that dropped its future no longer cares.
    for (done, waiter) in settled.completed {
        let _ = waiter.reply.send(Ok(done));
    }
    let mut error = error;
    for (failed, waiter) in settled.failed {
        let err = match error.take() {
            Some(BookieError::Fenced(_)) => LedgerError::Fenced(id),
            Some(e) if failed == entry => LedgerError::Bookie(e),
            _ if fenced => LedgerError::Fenced(id),
            _ => LedgerError::WriterFailed {
                ledger: id,
                failed_entry: entry,
            },
        };
        let _ = waiter.reply.send(Err(err));
    }
}

fn refused_error(id: LedgerId, refused: AddRefused, fenced: bool) -> LedgerError {
    match refused {
        _ if fenced => LedgerError::Fenced(id),
        AddRefused::Failed { entry } => LedgerError::WriterFailed {
            ledger: id,
            failed_entry: entry,
        },
        AddRefused::Closed => LedgerError::LedgerClosed(id),
    }
}
