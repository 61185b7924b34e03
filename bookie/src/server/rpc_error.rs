//! [`BookieRpcError`]: what a [`BookieClient`](super::BookieClient) call can fail with.

use std::time::Duration;

use strata_proto::{EntryId, ErrorCode, LedgerId, WireError};

/// Why a call to a bookie failed: no answer (unreachable, timed out), or the bookie's typed
/// answer. `bookie` is the address called.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BookieRpcError {
    /// No connection, or it broke before the answer came. The request may or may not have
    /// been executed.
    #[error("bookie {bookie} unreachable: {reason}")]
    Unreachable { bookie: String, reason: String },
    /// No answer before the call's deadline (the request may have been executed).
    #[error("bookie {bookie} did not answer within {after:?}")]
    Timeout { bookie: String, after: Duration },
    #[error("bookie {bookie} has no ledger {ledger}")]
    NoSuchLedger { bookie: String, ledger: LedgerId },
    #[error("bookie {bookie} has no entry {entry} of ledger {ledger}")]
    NoSuchEntry {
        bookie: String,
        ledger: LedgerId,
        entry: EntryId,
    },
    /// The ledger is fenced on the bookie: a recovery took it over.
    #[error("ledger {ledger} is fenced on bookie {bookie}")]
    Fenced { bookie: String, ledger: LedgerId },
    /// The bookie refuses adds for lack of disk space (`message` says how much is free).
    #[error("bookie {bookie}: {message}")]
    ReadOnly { bookie: String, message: String },
    /// The bookie's copy of the entry failed its checksum; read another replica.
    #[error("bookie {bookie}: entry {entry} of ledger {ledger} failed its checksum: {message}")]
    ChecksumMismatch {
        bookie: String,
        ledger: LedgerId,
        entry: EntryId,
        message: String,
    },
    /// The request is larger than the frame limit; it was not sent.
    #[error("request of {len} bytes exceeds the {max}-byte frame limit")]
    TooLarge { len: usize, max: usize },
    /// Any other typed error from the bookie (storage failure, shutting down, ...).
    #[error("bookie {bookie}: {message} ({code:?})")]
    Remote {
        bookie: String,
        code: ErrorCode,
        message: String,
    },
    /// The bookie broke the protocol (an answer of the wrong kind, a malformed frame).
    #[error("bookie {bookie} broke the protocol: {reason}")]
    Protocol { bookie: String, reason: String },
}

impl BookieRpcError {
    /// Whether the same request to the same bookie may succeed later. `ReadOnly`, `Fenced`
    /// and `ChecksumMismatch` are not: the caller goes to another bookie (ensemble change,
    /// another replica) or gives up (fenced).
    pub fn is_retryable(&self) -> bool {
        match self {
            BookieRpcError::Unreachable { .. } | BookieRpcError::Timeout { .. } => true,
            BookieRpcError::Remote { code, .. } => code.is_retryable(),
            _ => false,
        }
    }

    /// The wire code of a typed answer from the bookie; `None` when there was no answer.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            BookieRpcError::NoSuchLedger { .. } => ErrorCode::NoSuchLedger,
            BookieRpcError::NoSuchEntry { .. } => ErrorCode::NoSuchEntry,
            BookieRpcError::Fenced { .. } => ErrorCode::Fenced,
            BookieRpcError::ReadOnly { .. } => ErrorCode::ReadOnly,
            BookieRpcError::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            BookieRpcError::Remote { code, .. } => *code,
            _ => return None,
        })
    }

    /// The error a bookie in this process answers with (no wire in between): the same typed
    /// error its server would send.
    pub(crate) fn from_storage(
        bookie: &str,
        ledger: LedgerId,
        entry: Option<EntryId>,
        e: &crate::BookieError,
    ) -> Self {
        Self::from_wire(bookie, ledger, entry, super::handler::wire_error(e))
    }

    /// The typed error for a bookie's error answer to a request about `ledger` / `entry`.
    pub(crate) fn from_wire(
        bookie: &str,
        ledger: LedgerId,
        entry: Option<EntryId>,
        e: WireError,
    ) -> Self {
        let bookie = bookie.to_owned();
        match (e.code, entry) {
            (ErrorCode::NoSuchLedger, _) => BookieRpcError::NoSuchLedger { bookie, ledger },
            (ErrorCode::NoSuchEntry, Some(entry)) => BookieRpcError::NoSuchEntry {
                bookie,
                ledger,
                entry,
            },
            (ErrorCode::Fenced, _) => BookieRpcError::Fenced { bookie, ledger },
            (ErrorCode::ReadOnly, _) => BookieRpcError::ReadOnly {
                bookie,
                message: e.message,
            },
            (ErrorCode::ChecksumMismatch, Some(entry)) => BookieRpcError::ChecksumMismatch {
                bookie,
                ledger,
                entry,
                message: e.message,
            },
            (code, _) => BookieRpcError::Remote {
                bookie,
                code,
                message: e.message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only failures without an answer and retryable remote codes are retryable.
    #[test]
    fn retryable_is_no_answer_or_a_retryable_code() {
        let b = || "b:1".to_owned();
        assert!(
            BookieRpcError::Timeout {
                bookie: b(),
                after: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(
            BookieRpcError::from_wire(
                "b:1",
                LedgerId(1),
                None,
                WireError::new(ErrorCode::StorageError, "x")
            )
            .is_retryable()
        );
        for code in [
            ErrorCode::Fenced,
            ErrorCode::ReadOnly,
            ErrorCode::NoSuchLedger,
            ErrorCode::NoSuchEntry,
            ErrorCode::ChecksumMismatch,
        ] {
            let e = BookieRpcError::from_wire(
                "b:1",
                LedgerId(1),
                Some(EntryId(2)),
                WireError::new(code, "x"),
            );
            assert!(!e.is_retryable(), "{e}");
            assert_eq!(e.code(), Some(code));
        }
    }
}
