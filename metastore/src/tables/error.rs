//! [`TableError`], what a table call fails with, and [`DecodeError`], why a stored value or
//! key could not be read back.

use crate::{Expect, MetaError};

/// Why a stored value (or a key found by a listing) is not a record this build can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not the record's encoding (bad JSON or protobuf, wrong shape).
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The record carries no `format_version`.
    #[error("record has no format_version")]
    MissingFormatVersion,
    /// Written by a newer release; this build must not guess at its meaning.
    #[error("format_version {found} is newer than this build reads (up to {supported})")]
    FutureVersion { found: u32, supported: u32 },
    /// An older format this build has no migration for.
    #[error("format_version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// A key under a table's prefix that does not name a row of that table.
    #[error("key does not name a row of this table: {0}")]
    BadKey(String),
}

/// Everything a table call can fail with.
///
/// A failed compare-and-set is [`TableError::VersionMismatch`] (never wrapped in
/// [`TableError::Meta`]), so callers match one variant for "someone else changed it".
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The expected version did not hold; nothing was written. `actual` is `None` when the
    /// key is absent.
    #[error("version mismatch on {key:?}: expected {expected:?}, actual {actual:?}")]
    VersionMismatch {
        key: String,
        expected: Expect,
        actual: Option<u64>,
    },
    /// The row does not exist (only from calls that require it, e.g. [`super::Table::require`]).
    #[error("no {table} record at {key:?}")]
    NotFound { table: &'static str, key: String },
    /// The stored value or key is not a record this build can read.
    #[error("{table} record at {key:?}: {source}")]
    Decode {
        table: &'static str,
        key: String,
        #[source]
        source: DecodeError,
    },
    /// The record could not be encoded (a bug in the record type, not bad input).
    #[error("{table} record at {key:?} cannot be encoded: {reason}")]
    Encode {
        table: &'static str,
        key: String,
        reason: String,
    },
    /// The metastore failed the call (any error but a version mismatch).
    #[error(transparent)]
    Meta(MetaError),
}

impl TableError {
    /// Whether this is a failed compare-and-set (re-read and decide again).
    pub fn is_version_mismatch(&self) -> bool {
        matches!(self, TableError::VersionMismatch { .. })
    }

    /// Whether retrying the same call may succeed (the metastore's notion).
    pub fn is_retryable(&self) -> bool {
        matches!(self, TableError::Meta(e) if e.is_retryable())
    }
}

impl From<MetaError> for TableError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::VersionMismatch {
                key,
                expected,
                actual,
            } => TableError::VersionMismatch {
                key,
                expected,
                actual,
            },
            other => TableError::Meta(other),
        }
    }
}
