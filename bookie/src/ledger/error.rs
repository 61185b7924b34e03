//! Errors of the ledger client.

use strata_metastore::tables::TableError;
use strata_proto::{EntryId, LedgerId};

use crate::BookieRpcError;

/// An error from [`LedgerClient`](super::LedgerClient), [`LedgerWriter`](super::LedgerWriter)
/// or [`LedgerReader`](super::LedgerReader).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A bookie failed the request (for a read: the last replica tried).
    #[error(transparent)]
    Bookie(#[from] BookieRpcError),
    /// Reading or writing the ledger's metadata failed (including a stored record this
    /// version cannot decode).
    #[error("ledger metadata: {0}")]
    Metadata(#[from] TableError),
    /// No metadata for this ledger.
    #[error("no such ledger {0}")]
    NoSuchLedger(LedgerId),
    /// The writer was closed; no more adds.
    #[error("ledger {0} is closed")]
    LedgerClosed(LedgerId),
    /// The ledger was fenced by a recovery: this writer lost it.
    #[error("ledger {0} is fenced: it was recovered by another client")]
    Fenced(LedgerId),
    /// An earlier add of this writer failed, so no later entry can be confirmed.
    #[error(
        "ledger {ledger}: add of entry {failed_entry} failed, so the writer accepts no more adds"
    )]
    WriterFailed {
        ledger: LedgerId,
        failed_entry: EntryId,
    },
    /// A read asked for entries beyond the last readable one.
    #[error(
        "ledger {ledger}: entry {requested} is beyond the last-add-confirmed {last_add_confirmed:?}"
    )]
    ReadBeyondLastAddConfirmed {
        ledger: LedgerId,
        requested: EntryId,
        last_add_confirmed: Option<EntryId>,
    },
    /// `first > last` in a read, or a range too long to count (`0..=u64::MAX`).
    #[error("ledger {ledger}: invalid entry range {first}..={last}")]
    InvalidRange {
        ledger: LedgerId,
        first: EntryId,
        last: EntryId,
    },
    /// The ledger configuration breaks `E >= Qw >= Qa >= 1`.
    #[error("invalid ledger config: {0}")]
    InvalidConfig(String),
    /// The ensemble needs more bookies than there are.
    #[error("ensemble needs {needed} bookies, {available} available")]
    NotEnoughBookies { needed: u32, available: u32 },
    /// Metadata kept changing under a recovery; retry it.
    #[error("ledger {0}: metadata changed concurrently during recovery")]
    ConcurrentRecovery(LedgerId),
    /// The stored metadata record is not one this version understands.
    #[error("ledger {ledger}: bad metadata record: {reason}")]
    BadMetadata { ledger: LedgerId, reason: String },
    /// An entry is larger than the client accepts.
    #[error("ledger {ledger}: entry of {len} bytes exceeds the {max}-byte limit")]
    EntryTooLarge {
        ledger: LedgerId,
        len: usize,
        max: usize,
    },
    /// An entry read from a bookie is not in the ledger's entry format.
    #[error("ledger {ledger}: entry {entry} is malformed: {reason}")]
    BadEntry {
        ledger: LedgerId,
        entry: EntryId,
        reason: String,
    },
    /// The writer could not replace failed bookies and too few are left to reach the ack
    /// quorum; it accepts no more adds.
    #[error("ledger {ledger}: too few writable bookies to continue: {reason}")]
    EnsembleChangeFailed { ledger: LedgerId, reason: String },
    /// Recovery could not decide the ledger's end (too many bookies unreachable); retry it.
    #[error("ledger {ledger}: recovery failed: {reason}")]
    RecoveryFailed { ledger: LedgerId, reason: String },
    /// A bookie's local storage failed (garbage collection, in-process bookies).
    #[error("bookie storage: {0}")]
    Storage(String),
    /// A background task of the client went away (runtime shutting down).
    #[error("ledger {0}: client task stopped")]
    Shutdown(LedgerId),
}

impl LedgerError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            LedgerError::Bookie(e) => e.is_retryable(),
            LedgerError::Metadata(e) => e.is_retryable(),
            LedgerError::ConcurrentRecovery(_) | LedgerError::RecoveryFailed { .. } => true,
            _ => false,
        }
    }
}

impl From<strata_metastore::MetaError> for LedgerError {
    fn from(e: strata_metastore::MetaError) -> Self {
        LedgerError::Metadata(TableError::from(e))
    }
}

impl From<crate::BookieError> for LedgerError {
    fn from(e: crate::BookieError) -> Self {
        LedgerError::Storage(e.to_string())
    }
}
