//! Each request against the storage, and how storage errors travel as wire codes.

use std::time::Duration;

use strata_proto::pb::bookie::{
    AddEntry, DeleteLedger, DeleteLedgerAck, EntryData, LacReply, ReadEntry, ReadLac,
    bookie_response,
};
use strata_proto::{EntryId, ErrorCode, LedgerId, WireError};
use tracing::{debug, warn};

use super::Shared;
use super::metrics::inc;
use crate::BookieError;
use crate::storage::{Queued, format::LedgerRecord};

type Reply = Result<bookie_response::Response, WireError>;

/// The wire form of a storage error.
pub(crate) fn wire_error(e: &BookieError) -> WireError {
    let code = match e {
        BookieError::NoSuchLedger(_) => ErrorCode::NoSuchLedger,
        BookieError::NoSuchEntry { .. } => ErrorCode::NoSuchEntry,
        BookieError::Fenced(_) => ErrorCode::Fenced,
        // Stored bytes that fail verification: the caller reads another replica.
        BookieError::Corrupt { .. } | BookieError::Malformed { .. } => ErrorCode::ChecksumMismatch,
        BookieError::InvalidRange { .. } => ErrorCode::ProtocolViolation,
        BookieError::Busy(_) | BookieError::Storage(_) => ErrorCode::StorageError,
        BookieError::Closed => ErrorCode::ServiceNotReady,
        BookieError::InvalidOptions { .. } => ErrorCode::Unknown,
    };
    WireError::new(code, e.to_string())
}

/// Queues an add in arrival order; the caller awaits [`Queued::wait`] off the read loop.
/// Refused at once when the bookie is read-only (recovery adds excepted, see module docs).
pub(super) async fn queue_add(shared: &Shared, add: AddEntry) -> Result<Queued<()>, WireError> {
    if !add.recovery && shared.disk.is_read_only() {
        inc(&shared.metrics.read_only_rejections, 1);
        inc(&shared.metrics.add_errors, 1);
        return Err(WireError::new(
            ErrorCode::ReadOnly,
            shared.disk.status().reason(&shared.disk.path),
        ));
    }
    shared
        .storage
        .queue_add(
            LedgerId(add.ledger_id),
            EntryId(add.entry_id),
            add.last_add_confirmed.map(EntryId),
            add.payload,
            add.recovery,
        )
        .await
        .map_err(|e| {
            inc(&shared.metrics.add_errors, 1);
            wire_error(&e)
        })
}

/// Waits for a queued add to be durable.
pub(super) async fn finish_add(
    shared: &Shared,
    queued: Queued<()>,
    ledger_id: u64,
    entry_id: u64,
    bytes: usize,
) -> Reply {
    match queued.wait().await {
        Ok(()) => {
            inc(&shared.metrics.adds, 1);
            inc(&shared.metrics.add_bytes, bytes as u64);
            Ok(bookie_response::Response::Added(
                strata_proto::pb::bookie::AddEntryAck {
                    ledger_id,
                    entry_id,
                },
            ))
        }
        Err(e) => {
            inc(&shared.metrics.add_errors, 1);
            if !matches!(e, BookieError::Fenced(_)) {
                warn!(ledger = ledger_id, entry = entry_id, error = %e, "add failed");
            }
            Err(wire_error(&e))
        }
    }
}

pub(super) async fn read(shared: &Shared, r: ReadEntry) -> Reply {
    let (ledger, entry) = (LedgerId(r.ledger_id), EntryId(r.entry_id));
    let result = async {
        if r.fence {
            fence(shared, ledger).await?;
        }
        let storage = shared.storage.clone();
        // Entry reads may hit the disk (blob files): keep them off the runtime's workers.
        tokio::task::spawn_blocking(move || {
            let payload = storage.read_entry(ledger, entry)?;
            let lac = storage.last_add_confirmed(ledger)?;
            Ok::<_, BookieError>((payload, lac))
        })
        .await
        .map_err(|e| BookieError::Storage(format!("read task failed: {e}")))?
    }
    .await;
    match result {
        Ok((payload, lac)) => {
            inc(&shared.metrics.reads, 1);
            inc(&shared.metrics.read_bytes, payload.len() as u64);
            Ok(bookie_response::Response::Entry(EntryData {
                ledger_id: ledger.0,
                entry_id: entry.0,
                last_add_confirmed: lac.map(|e| e.0),
                payload,
            }))
        }
        Err(e) => {
            inc(&shared.metrics.read_errors, 1);
            if matches!(
                e,
                BookieError::Corrupt { .. } | BookieError::Malformed { .. }
            ) {
                inc(&shared.metrics.checksum_mismatches, 1);
            }
            Err(wire_error(&e))
        }
    }
}

async fn fence(shared: &Shared, ledger: LedgerId) -> Result<Option<EntryId>, BookieError> {
    let last = shared.storage.fence(ledger).await?;
    inc(&shared.metrics.fences, 1);
    debug!(ledger = %ledger, last_entry = ?last, "ledger fenced");
    Ok(last)
}

pub(super) async fn read_lac(shared: &Shared, r: ReadLac) -> Reply {
    let ledger = LedgerId(r.ledger_id);
    let result = async {
        if r.fence {
            fence(shared, ledger).await?;
        }
        if r.timeout_ms > 0 {
            let wait =
                Duration::from_millis(u64::from(r.timeout_ms)).min(shared.config.max_long_poll);
            long_poll(shared, ledger, r.wait_for_lac_above.map(EntryId), wait).await
        } else {
            shared.storage.ledger_state(ledger)
        }
    }
    .await;
    inc(&shared.metrics.lac_reads, 1);
    result
        .map(|record| {
            bookie_response::Response::Lac(LacReply {
                last_add_confirmed: record.last_add_confirmed.map(|e| e.0),
                ledger_id: ledger.0,
                last_entry_id: record.last_entry.map(|e| e.0),
                fenced: record.fenced,
            })
        })
        .map_err(|e| wire_error(&e))
}

/// Waits until the ledger's LAC is above `above` (any LAC when `None`), `wait` passes, or the
/// server shuts down; returns the state then.
async fn long_poll(
    shared: &Shared,
    ledger: LedgerId,
    above: Option<EntryId>,
    wait: Duration,
) -> Result<LedgerRecord, BookieError> {
    let _gauge = shared.metrics.long_poll_started();
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before reading, so a write between the read and the wait still wakes us.
    let mut changes = shared.storage.watch_ledger(ledger);
    loop {
        match shared.storage.ledger_state(ledger) {
            Ok(record) if record.last_add_confirmed > above => return Ok(record),
            // The ledger may not have reached this bookie yet: keep waiting for it.
            Ok(_) | Err(BookieError::NoSuchLedger(_)) => {}
            Err(e) => return Err(e),
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = shared.shutdown.cancelled() => break,
        }
    }
    shared.storage.ledger_state(ledger)
}

pub(super) async fn delete(shared: &Shared, d: DeleteLedger) -> Reply {
    let ledger = LedgerId(d.ledger_id);
    shared
        .storage
        .delete_ledger(ledger)
        .await
        .map_err(|e| wire_error(&e))?;
    inc(&shared.metrics.deletes, 1);
    debug!(ledger = %ledger, "ledger deleted");
    Ok(bookie_response::Response::Deleted(DeleteLedgerAck {
        ledger_id: ledger.0,
    }))
}
