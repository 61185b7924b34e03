//! [`Watcher`]: a gap-free, duplicate-free stream of changes under a prefix.
//!
//! A watcher tracks `next_rev`, the next *global* revision it has not accounted for, and
//! filters by prefix itself. Each step it either catches up from the `history` CF (whenever
//! `next_rev` is at or below the applied revision) or waits on the live broadcast. Because the
//! state machine writes a batch, then advances the applied revision, then broadcasts the
//! batch, and the watcher subscribes before it first reads the applied revision, every event
//! is seen either in history or live; events at revisions below `next_rev` are skipped, so
//! none is seen twice. A lagging receiver (or any gap) just falls back to history.

use std::collections::VecDeque;
use std::sync::Arc;

use strata_proto::pb::metastore::WatchEvent;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use crate::MetaError;
use crate::db::{Core, EventBatch};

/// History rows read per catch-up step.
const HISTORY_CHUNK: usize = 512;

/// A stream of [`WatchEvent`]s under a prefix, in revision order. Created by
/// [`crate::MetaStore::watch`].
///
/// A watcher keeps the database open while it lives; drop it before reopening the same
/// directory.
pub struct Watcher {
    core: Arc<Core>,
    prefix: String,
    next_rev: u64,
    pending: VecDeque<WatchEvent>,
    live: broadcast::Receiver<EventBatch>,
    closed: watch::Receiver<bool>,
    finished: bool,
}

impl Watcher {
    /// Starts a watch of `prefix` from revision `from_revision` (0 = changes after now).
    pub(crate) fn start(
        core: Arc<Core>,
        prefix: &str,
        from_revision: u64,
    ) -> Result<Watcher, MetaError> {
        if core.is_closed() {
            return Err(MetaError::Closed);
        }
        // Subscribe before reading the applied revision: nothing applied after this point can
        // be missed by the live stream.
        let live = core.subscribe();
        let closed = core.closed_signal();
        let next_rev = if from_revision == 0 {
            core.revision().saturating_add(1)
        } else {
            from_revision
        };
        let oldest = core.oldest_revision();
        if next_rev < oldest {
            return Err(MetaError::Compacted {
                requested: next_rev,
                oldest,
            });
        }
        Ok(Watcher {
            core,
            prefix: prefix.to_string(),
            next_rev,
            pending: VecDeque::new(),
            live,
            closed,
            finished: false,
        })
    }

    /// The revision this watcher accounts for next: its next event is at or after it.
    pub fn next_revision(&self) -> u64 {
        self.next_rev
    }

    /// The next change, waiting for one if needed. `None` after the stream ended (the store
    /// shut down — reported once as `Err(Closed)` — or an error was returned).
    pub async fn next(&mut self) -> Option<Result<WatchEvent, MetaError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            if self.next_rev <= self.core.revision() {
                if let Err(e) = self.catch_up() {
                    self.finished = true;
                    return Some(Err(e));
                }
                continue;
            }
            if *self.closed.borrow() {
                self.finished = true;
                return Some(Err(MetaError::Closed));
            }
            tokio::select! {
                received = self.live.recv() => match received {
                    Ok(batch) => self.take_live(&batch),
                    // Fell behind: the next loop re-reads the missed range from history.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => {
                        self.finished = true;
                        return Some(Err(MetaError::Closed));
                    }
                },
                // Either the flag flipped or the store is gone; the loop re-checks it.
                changed = self.closed.changed() => {
                    if changed.is_err() {
                        self.finished = true;
                        return Some(Err(MetaError::Closed));
                    }
                }
            }
        }
    }

    fn matches(&self, event: &WatchEvent) -> bool {
        event
            .kv
            .as_ref()
            .is_some_and(|kv| kv.key.starts_with(&self.prefix))
    }

    /// Reads the next chunk of history from `next_rev`.
    fn catch_up(&mut self) -> Result<(), MetaError> {
        let oldest = self.core.oldest_revision();
        if self.next_rev < oldest {
            return Err(MetaError::Compacted {
                requested: self.next_rev,
                oldest,
            });
        }
        let rows = self.core.read_history(self.next_rev, HISTORY_CHUNK)?;
        if rows.first().map(|e| e.revision) != Some(self.next_rev) {
            // Applied revisions are written to history in the same batch, so a hole means the
            // history was dropped under us (snapshot install) or is corrupt.
            let oldest = self.core.oldest_revision();
            if self.next_rev < oldest {
                return Err(MetaError::Compacted {
                    requested: self.next_rev,
                    oldest,
                });
            }
            return Err(MetaError::Storage(format!(
                "history is missing revision {} (first found: {:?})",
                self.next_rev,
                rows.first().map(|e| e.revision)
            )));
        }
        for event in rows {
            if event.revision != self.next_rev {
                // A hole later in the chunk: stop here; the next step reports it.
                break;
            }
            self.next_rev += 1;
            if self.matches(&event) {
                self.pending.push_back(event);
            }
        }
        Ok(())
    }

    /// Takes the events of a live batch that continue exactly at `next_rev`.
    fn take_live(&mut self, batch: &[WatchEvent]) {
        for event in batch {
            if event.revision < self.next_rev {
                continue;
            }
            if event.revision > self.next_rev {
                // A gap: the next loop catches up from history (which holds this batch).
                return;
            }
            self.next_rev += 1;
            if self.matches(event) {
                self.pending.push_back(event.clone());
            }
        }
    }
}
