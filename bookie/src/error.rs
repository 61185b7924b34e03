//! Errors of the bookie's storage layer.

use strata_proto::{EntryId, LedgerId};

/// An error from [`BookieStorage`](crate::BookieStorage).
#[derive(Debug, thiserror::Error)]
pub enum BookieError {
    /// The bookie holds no data and no fence record for this ledger.
    #[error("no such ledger {0} on this bookie")]
    NoSuchLedger(LedgerId),
    /// The ledger exists but this entry is not stored.
    #[error("no entry {entry} in ledger {ledger} on this bookie")]
    NoSuchEntry { ledger: LedgerId, entry: EntryId },
    /// The ledger was fenced by a recovery; only recovery adds are accepted.
    #[error("ledger {0} is fenced")]
    Fenced(LedgerId),
    /// The stored entry failed its CRC32C check; its bytes are not returned.
    #[error(
        "entry {entry} of ledger {ledger} is corrupt: crc32c expected {expected_crc:#010x}, actual {actual_crc:#010x}"
    )]
    Corrupt {
        ledger: LedgerId,
        entry: EntryId,
        expected_crc: u32,
        actual_crc: u32,
    },
    /// A stored record could not be decoded (bad length, unknown format version or flags).
    #[error("malformed {what} record for ledger {ledger}: {detail}")]
    Malformed {
        what: &'static str,
        ledger: LedgerId,
        detail: String,
    },
    /// `first > last` in a range read.
    #[error("invalid entry range {first}..={last}")]
    InvalidRange { first: EntryId, last: EntryId },
    /// The storage options failed validation.
    #[error("invalid storage option {field}: {reason}")]
    InvalidOptions { field: &'static str, reason: String },
    /// RocksDB is temporarily unable to serve the request (busy, try again, timed out).
    #[error("bookie storage busy: {0}")]
    Busy(String),
    /// Any other RocksDB or file-system failure.
    #[error("bookie storage error: {0}")]
    Storage(String),
    /// The storage's writer has shut down (the storage is being dropped, or the writer died).
    #[error("bookie storage is closed")]
    Closed,
}

impl BookieError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BookieError::Busy(_))
    }
}

impl From<rocksdb::Error> for BookieError {
    fn from(e: rocksdb::Error) -> Self {
        use rocksdb::ErrorKind;
        match e.kind() {
            ErrorKind::Busy | ErrorKind::TryAgain | ErrorKind::TimedOut | ErrorKind::Incomplete => {
                BookieError::Busy(e.into_string())
            }
            _ => BookieError::Storage(e.into_string()),
        }
    }
}
