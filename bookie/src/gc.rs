//! Garbage collection on a bookie: ledgers it stores whose metadata is gone from the
//! metastore were deleted while this bookie could not be told (it was down or unreachable
//! when `LedgerClient::delete_ledger` ran). The collector deletes them locally: a range delete
//! of their entries plus a compaction of that range, as an explicit delete does.
//!
//! Metadata is written before any entry of a ledger, so a stored ledger without metadata can
//! only be a deleted one. Ledgers whose metadata exists but no longer names this bookie (its
//! fragment was re-replicated elsewhere while it was away) are kept: a re-replication worker
//! copies entries to a bookie before the metadata names it, and telling those apart needs the
//! worker's claim; see docs/ARCHITECTURE.md.

use std::time::Duration;

use strata_metastore::Meta;
use strata_metastore::tables::{Ledgers, Table};
use strata_proto::LedgerId;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{BookieStorage, LedgerError};

/// Deletes the stored ledgers that have no metadata; returns them.
pub async fn collect_once(
    storage: &BookieStorage,
    ledgers: &Table<Ledgers>,
) -> Result<Vec<LedgerId>, LedgerError> {
    let mut collected = Vec::new();
    for id in storage.ledgers()? {
        if ledgers.get(&id).await?.is_some() {
            continue;
        }
        storage.delete_ledger(id).await?;
        info!(ledger = %id, "garbage-collected a deleted ledger");
        collected.push(id);
    }
    Ok(collected)
}

/// Runs [`collect_once`] every `interval` until stopped.
pub struct GarbageCollector {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl GarbageCollector {
    pub fn start(storage: BookieStorage, meta: impl Into<Meta>, interval: Duration) -> Self {
        let cancel = CancellationToken::new();
        let ledgers = Table::<Ledgers>::new(meta.into());
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = collect_once(&storage, &ledgers).await {
                    warn!(error = %e, "garbage collection round failed");
                }
            }
        });
        GarbageCollector { cancel, task }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}
