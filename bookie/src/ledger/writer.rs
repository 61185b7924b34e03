//! [`LedgerWriter`]: the single writer of an OPEN ledger, driving an [`AddQuorum`] with
//! bookie calls and metadata compare-and-sets.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use strata_metastore::tables::TableError;
use strata_proto::pb::bookie::{LedgerMetadata, LedgerState};
use strata_proto::{EntryId, LedgerId};
use tokio::sync::{Notify, oneshot};

use super::quorum::{
    Acknowledged, AddQuorum, ChangeEnsemble, FailureAction, Stop, choose_replacement,
};
use super::{LedgerClient, LedgerError, bump, entry, metadata, now_nanos};
use crate::BookieRpcError;

/// Writes entries to one ledger. `Send + Sync`: share it behind an `Arc`.
///
/// Entry ids are assigned in call order by [`add`](Self::add); the returned futures resolve
/// in id order, each once Qa bookies of its write set stored it. When a bookie fails, it is
/// replaced in a new fragment and the outstanding entries are resent to the replacement; the
/// caller sees nothing of it. The writer fails for good only when a recovery fenced it
/// ([`LedgerError::Fenced`]) or fewer than Qa bookies are left to write to.
pub struct LedgerWriter {
    shared: Arc<Shared>,
}

struct Shared {
    client: LedgerClient,
    id: LedgerId,
    runtime: tokio::runtime::Handle,
    state: Mutex<State>,
    /// Notified whenever the last outstanding add settles or a change ends.
    idle: Notify,
}

struct State {
    quorum: AddQuorum<String>,
    /// Entries sent and not yet acknowledged, from the quorum's LAC + 1 on.
    outstanding: VecDeque<Outstanding>,
    /// Payload bytes of every add assigned an id.
    length_bytes: u64,
    /// Payload bytes of the acknowledged adds (the ledger's length when closed).
    confirmed_bytes: u64,
    /// The metadata as this writer last wrote it, and its metastore version.
    metadata: LedgerMetadata,
    metadata_version: u64,
    /// Bookies that failed on this writer: never chosen as replacements again.
    failed_bookies: Vec<String>,
    /// Why the writer stopped, once it did.
    stopped: Option<LedgerError>,
    closing: bool,
    /// Set once `close` wrote CLOSED metadata: the last entry it closed at.
    closed_at: Option<Option<EntryId>>,
}

impl State {
    /// An ensemble change is in progress. Read from the quorum rather than kept in a flag of
    /// its own, so it ends under the same lock hold as the quorum's change: no add, `close`
    /// or retry can see the change over while this still says otherwise, or the reverse.
    fn changing(&self) -> bool {
        self.quorum.changing().is_some()
    }
}

struct Outstanding {
    stored: Bytes,
    len: u64,
    reply: Option<oneshot::Sender<Result<EntryId, LedgerError>>>,
}

impl std::fmt::Debug for LedgerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerWriter")
            .field("id", &self.shared.id)
            .finish()
    }
}

/// Replies to send once the state lock is released.
type Replies = Vec<(
    oneshot::Sender<Result<EntryId, LedgerError>>,
    Result<EntryId, LedgerError>,
)>;

fn send_replies(replies: Replies) {
    for (reply, result) in replies {
        // A caller that dropped its future no longer cares.
        let _ = reply.send(result);
    }
}

impl LedgerWriter {
    /// Must be called within a tokio runtime (adds are driven by tasks spawned on it).
    pub(crate) fn new(
        client: LedgerClient,
        id: LedgerId,
        metadata: LedgerMetadata,
        version: u64,
    ) -> Result<Self, LedgerError> {
        let schedule = metadata::schedule(&metadata)?;
        let ensemble = metadata::last_fragment(&metadata)
            .map(|f| f.bookies.clone())
            .unwrap_or_default();
        let quorum =
            AddQuorum::new(schedule, ensemble, None).map_err(|e| LedgerError::BadMetadata {
                ledger: id,
                reason: e.to_string(),
            })?;
        let state = State {
            quorum,
            outstanding: VecDeque::new(),
            length_bytes: 0,
            confirmed_bytes: 0,
            metadata,
            metadata_version: version,
            failed_bookies: Vec::new(),
            stopped: None,
            closing: false,
            closed_at: None,
        };
        Ok(LedgerWriter {
            shared: Arc::new(Shared {
                client,
                id,
                runtime: tokio::runtime::Handle::current(),
                state: Mutex::new(state),
                idle: Notify::new(),
            }),
        })
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
        let started = shared.start_add(payload, reply);
        async move {
            started?;
            answer.await.map_err(|_| LedgerError::Shutdown(id))?
        }
    }

    /// Highest entry id such that it and every earlier entry completed.
    pub fn last_add_confirmed(&self) -> Option<EntryId> {
        self.shared.lock().quorum.last_add_confirmed()
    }

    /// Entry ids assigned so far (including adds still in flight or failed).
    pub fn entries_added(&self) -> u64 {
        self.shared
            .lock()
            .quorum
            .next_entry()
            .map_or(u64::MAX, |e| e.0)
    }

    /// Payload bytes of every add assigned an id so far.
    pub fn length_bytes(&self) -> u64 {
        self.shared.lock().length_bytes
    }

    /// The ledger's metadata as this writer last wrote it (its fragments show ensemble
    /// changes).
    pub fn metadata(&self) -> LedgerMetadata {
        self.shared.lock().metadata.clone()
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
        let (lac, md) = {
            let state = self.shared.lock();
            (state.quorum.last_add_confirmed(), state.metadata.clone())
        };
        if lac.is_none_or(|lac| last > lac) {
            return Err(LedgerError::ReadBeyondLastAddConfirmed {
                ledger: id,
                requested: last,
                last_add_confirmed: lac,
            });
        }
        self.shared.client.read_range(id, &md, first, last).await
    }

    /// Refuses new adds, waits for the in-flight ones (and any ensemble change), then
    /// compare-and-sets the metadata to CLOSED at the last-add-confirmed with the confirmed
    /// length. Returns the last entry. Idempotent. Fails with [`LedgerError::Fenced`] if a
    /// recovery took the ledger over.
    #[tracing::instrument(skip_all, fields(ledger = %self.shared.id))]
    pub async fn close(&self) -> Result<Option<EntryId>, LedgerError> {
        let shared = &self.shared;
        let id = shared.id;
        loop {
            let idle = shared.idle.notified();
            {
                let mut state = shared.lock();
                state.closing = true;
                if let Some(closed_at) = state.closed_at {
                    return Ok(closed_at);
                }
                if let Some(LedgerError::Fenced(_)) = state.stopped {
                    return Err(LedgerError::Fenced(id));
                }
                if state.outstanding.is_empty() && !state.changing() {
                    break;
                }
            }
            idle.await;
        }
        loop {
            let (last, target, version) = {
                let state = shared.lock();
                let last = state.quorum.last_add_confirmed();
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
                        // A concurrent close (a recovery that found the same end) already
                        // wrote what this close would.
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
                            shared.stop(Stop::Fenced);
                            return Err(LedgerError::Fenced(id));
                        }
                        // Changed but still open: retry on it.
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
        // Every change to the state is made under one lock hold and leaves it consistent, so
        // a panic elsewhere cannot leave it half-done.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Assigns the entry its id and sends it to its write set.
    fn start_add(
        self: &Arc<Self>,
        payload: Bytes,
        reply: oneshot::Sender<Result<EntryId, LedgerError>>,
    ) -> Result<(), LedgerError> {
        let id = self.id;
        let max = self.client.options().max_entry_bytes;
        if payload.len() > max {
            return Err(LedgerError::EntryTooLarge {
                ledger: id,
                len: payload.len(),
                max,
            });
        }
        let mut state = self.lock();
        if let Some(e) = &state.stopped {
            return Err(refused(id, e));
        }
        if state.closing {
            return Err(LedgerError::LedgerClosed(id));
        }
        let entry = state.quorum.next_entry().ok_or(LedgerError::WriterFailed {
            ledger: id,
            failed_entry: EntryId(u64::MAX),
        })?;
        let len = payload.len() as u64;
        let length_after = state.length_bytes + len;
        let stored = entry::encode(state.metadata.entry_format, length_after, &payload);
        let targets = state.quorum.sent(entry).map_err(|e| {
            tracing::error!(ledger = %id, error = %e, "add refused by the quorum tracker");
            LedgerError::WriterFailed {
                ledger: id,
                failed_entry: entry,
            }
        })?;
        state.length_bytes = length_after;
        state.outstanding.push_back(Outstanding {
            stored: stored.clone(),
            len,
            reply: Some(reply),
        });
        let lac = state.quorum.last_add_confirmed();
        drop(state);
        for target in targets {
            self.send(entry, target.bookie, stored.clone(), lac);
        }
        Ok(())
    }

    /// Sends one copy of an entry to a bookie and feeds the answer back.
    fn send(self: &Arc<Self>, entry: EntryId, bookie: String, stored: Bytes, lac: Option<EntryId>) {
        let shared = self.clone();
        self.runtime.spawn(async move {
            let result = shared
                .client
                .cluster()
                .add(&bookie, shared.id, entry, lac, stored, false)
                .await;
            match result {
                Ok(()) => shared.on_ack(entry, &bookie),
                Err(e) => shared.on_add_error(entry, &bookie, e),
            }
        });
    }

    fn on_ack(&self, entry: EntryId, bookie: &str) {
        let mut state = self.lock();
        let acknowledged = state.quorum.acked(entry, &bookie.to_owned());
        let replies = settle_acknowledged(&mut state, acknowledged);
        let idle = state.outstanding.is_empty();
        drop(state);
        send_replies(replies);
        if idle {
            self.idle.notify_waiters();
        }
    }

    fn on_add_error(self: &Arc<Self>, entry: EntryId, bookie: &str, error: BookieRpcError) {
        if let BookieRpcError::Fenced { .. } = error {
            tracing::info!(ledger = %self.id, bookie, "ledger fenced: a recovery took it over");
            self.stop(Stop::Fenced);
            return;
        }
        tracing::warn!(ledger = %self.id, entry = %entry, bookie, error = %error, "bookie failed an add");
        let mut state = self.lock();
        let action = state.quorum.bookie_failed(&bookie.to_owned());
        if !matches!(action, FailureAction::Ignored)
            && !state.failed_bookies.iter().any(|b| b == bookie)
        {
            state.failed_bookies.push(bookie.to_owned());
        }
        if let FailureAction::ChangeEnsemble(change) = action {
            drop(state);
            let shared = self.clone();
            self.runtime
                .spawn(async move { shared.change_ensemble(change).await });
        }
    }

    /// Replaces failed bookies until none is left to replace: choose replacements, CAS the
    /// metadata with a new fragment, resend. With no replacement available, goes on without
    /// the failed bookies while Qa remain, and looks again after `ensemble_retry_delay`.
    async fn change_ensemble(self: Arc<Self>, first: ChangeEnsemble) {
        let mut change = first;
        loop {
            let next = match self.try_change(&change).await {
                Ok(next) => next,
                Err(stop) => {
                    self.stop(stop);
                    None
                }
            };
            match next {
                Some(next) => change = next,
                None => break,
            }
        }
        // The change ended (and `changing()` turned false) under the lock hold that ended it
        // in the quorum: ensemble_changed, postpone_change or stop.
        self.idle.notify_waiters();
    }

    /// One round of a change. `Ok(Some)`: more bookies to replace; `Ok(None)`: done or
    /// postponed; `Err`: the writer must stop.
    async fn try_change(
        self: &Arc<Self>,
        change: &ChangeEnsemble,
    ) -> Result<Option<ChangeEnsemble>, Stop> {
        let available = match self.client.cluster().bookies().await {
            Ok(bookies) => bookies,
            Err(e) => {
                tracing::warn!(ledger = %self.id, error = %e, "cannot list bookies for an ensemble change");
                Vec::new()
            }
        };
        let (mut ensemble, exclude) = {
            let state = self.lock();
            (
                state.quorum.ensemble().to_vec(),
                state.failed_bookies.clone(),
            )
        };
        let mut replacements = Vec::new();
        for &index in &change.failed {
            let seed = now_nanos() ^ index as u64;
            if let Ok(bookie) = choose_replacement(&ensemble, index, &available, &exclude, seed) {
                ensemble[index] = bookie.clone();
                replacements.push((index, bookie));
            }
        }
        if replacements.is_empty() {
            return self.postpone();
        }
        loop {
            let (target, version) = {
                let state = self.lock();
                let target = metadata::with_fragment(
                    state.metadata.clone(),
                    change.first_entry,
                    ensemble.clone(),
                );
                (target, state.metadata_version)
            };
            match self
                .client
                .ledgers()
                .update(&self.id, &target, version)
                .await
            {
                Ok(written) => {
                    bump(&self.client.inner.stats.ensemble_changes);
                    tracing::info!(ledger = %self.id, first_entry = %change.first_entry, ensemble = ?ensemble, "ensemble changed");
                    return Ok(self.changed(target, written.version, &replacements));
                }
                Err(TableError::VersionMismatch { .. }) => {
                    let (current, version) = match self.client.metadata(self.id).await {
                        Ok(read) => read,
                        // The metastore is briefly unavailable: that is no reason to give up
                        // the ledger. Wait and go round again (the CAS fails on the stale
                        // version and the metadata is read again).
                        Err(e) if e.is_retryable() => {
                            tracing::warn!(ledger = %self.id, error = %e, "ensemble change: cannot re-read the metadata; retrying");
                            tokio::time::sleep(self.client.options().ensemble_retry_delay).await;
                            // Stopped meanwhile (fenced by an add): nothing left to change.
                            if self.lock().stopped.is_some() {
                                return Ok(None);
                            }
                            continue;
                        }
                        // Deleted, or a record this version cannot read: definitive.
                        Err(e) => {
                            tracing::error!(ledger = %self.id, error = %e, "ensemble change: cannot re-read the metadata");
                            return Err(Stop::EnsembleChangeFailed);
                        }
                    };
                    if !matches!(metadata::state(self.id, &current), Ok(LedgerState::Open)) {
                        return Err(Stop::Fenced);
                    }
                    let mut state = self.lock();
                    state.metadata = current;
                    state.metadata_version = version;
                }
                Err(e) => {
                    tracing::warn!(ledger = %self.id, error = %e, "ensemble change: metadata write failed");
                    if !e.is_retryable() {
                        return Err(Stop::EnsembleChangeFailed);
                    }
                    tokio::time::sleep(self.client.options().ensemble_retry_delay).await;
                }
            }
        }
    }

    /// The metadata names the replacements: resend, acknowledge what was held back.
    fn changed(
        self: &Arc<Self>,
        md: LedgerMetadata,
        version: u64,
        replacements: &[(usize, String)],
    ) -> Option<ChangeEnsemble> {
        let mut state = self.lock();
        state.metadata = md;
        state.metadata_version = version;
        // `outstanding[0]` is the entry after the LAC as it is before the change releases
        // anything.
        let first = state.quorum.last_add_confirmed().map_or(0, |l| l.0 + 1);
        let changed = match state.quorum.ensemble_changed(replacements) {
            Ok(changed) => changed,
            Err(e) => {
                drop(state);
                tracing::error!(ledger = %self.id, error = %e, "ensemble change refused by the quorum tracker");
                // Unless it stopped already, the quorum still holds the change open and
                // acknowledges nothing: without a stop the writer (and `close`) would hang.
                self.stop(Stop::EnsembleChangeFailed);
                return None;
            }
        };
        let lac = state.quorum.last_add_confirmed();
        let resends: Vec<_> = changed
            .resend
            .iter()
            .filter_map(|r| {
                let slot = usize::try_from(r.entry.0.checked_sub(first)?).ok()?;
                let stored = state.outstanding.get(slot)?.stored.clone();
                Some((r.entry, r.bookie.clone(), stored))
            })
            .collect();
        let replies = settle_acknowledged(&mut state, changed.acknowledged);
        drop(state);
        send_replies(replies);
        for (entry, bookie, stored) in resends {
            self.send(entry, bookie, stored, lac);
        }
        changed.next_change
    }

    /// No replacement now: go on without the failed bookies if Qa remain, and try again
    /// later; else stop.
    fn postpone(self: &Arc<Self>) -> Result<Option<ChangeEnsemble>, Stop> {
        let mut state = self.lock();
        match state.quorum.postpone_change() {
            Ok(acknowledged) => {
                bump(&self.client.inner.stats.postponed_changes);
                tracing::warn!(ledger = %self.id, failed = ?state.quorum.failed_indexes(), "no replacement bookie: writing to the others until one appears");
                let replies = settle_acknowledged(&mut state, acknowledged);
                drop(state);
                send_replies(replies);
                // Weak: a writer dropped meanwhile (never closed) stops retrying.
                let shared = Arc::downgrade(self);
                let delay = self.client.options().ensemble_retry_delay;
                self.runtime.spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(shared) = shared.upgrade() {
                        shared.retry_change();
                    }
                });
                Ok(None)
            }
            Err(e) => {
                tracing::error!(ledger = %self.id, error = %e, "no replacement bookie and too few left");
                Err(Stop::EnsembleChangeFailed)
            }
        }
    }

    /// Looks for replacements again after a postponed change.
    fn retry_change(self: &Arc<Self>) {
        let mut state = self.lock();
        // A closing writer is draining its last adds (which Qa bookies acknowledge without
        // the change), and a stopped one has nothing to write.
        if state.changing() || state.closing || state.stopped.is_some() || state.closed_at.is_some()
        {
            return;
        }
        if let Some(change) = state.quorum.retry_change() {
            drop(state);
            let shared = self.clone();
            self.runtime
                .spawn(async move { shared.change_ensemble(change).await });
        }
    }

    /// Stops the writer: every outstanding add fails with the reason.
    fn stop(&self, why: Stop) {
        let id = self.id;
        let error = match why {
            Stop::Fenced => LedgerError::Fenced(id),
            Stop::EnsembleChangeFailed => LedgerError::EnsembleChangeFailed {
                ledger: id,
                reason: "failed bookies could not be replaced and too few are left".into(),
            },
        };
        let mut state = self.lock();
        state.quorum.stop(why);
        let replies: Replies = state
            .outstanding
            .drain(..)
            .filter_map(|o| o.reply)
            .map(|reply| (reply, Err(refused(id, &error))))
            .collect();
        state.stopped.get_or_insert(error);
        drop(state);
        send_replies(replies);
        self.idle.notify_waiters();
    }
}

/// Pops the acknowledged entries off the outstanding queue and prepares their replies.
fn settle_acknowledged(state: &mut State, acknowledged: Acknowledged) -> Replies {
    let mut replies = Vec::with_capacity(acknowledged.entries.len());
    for entry in acknowledged.entries {
        if let Some(done) = state.outstanding.pop_front() {
            state.confirmed_bytes += done.len;
            if let Some(reply) = done.reply {
                replies.push((reply, Ok(entry)));
            }
        }
    }
    replies
}

/// The error for an add refused because the writer stopped with `why`.
fn refused(id: LedgerId, why: &LedgerError) -> LedgerError {
    match why {
        LedgerError::Fenced(_) => LedgerError::Fenced(id),
        LedgerError::EnsembleChangeFailed { reason, .. } => LedgerError::EnsembleChangeFailed {
            ledger: id,
            reason: reason.clone(),
        },
        _ => LedgerError::WriterFailed {
            ledger: id,
            failed_entry: EntryId(0),
        },
    }
}
