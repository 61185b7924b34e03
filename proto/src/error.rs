//! Stable numeric error codes carried on the wire, so clients can tell cases apart.

use crate::pb::common::ErrorInfo;

/// A code's number never changes once released; add new codes at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    Unknown = 0,
    IncompatibleVersion = 1,
    FrameTooLarge = 2,
    MalformedFrame = 3,
    InvalidTopicName = 4,
    TopicNotFound = 5,
    NamespaceNotFound = 6,
    TopicAlreadyExists = 7,
    SubscriptionBusy = 8,
    InvalidMessageId = 9,
    ProtocolViolation = 10,
    StorageError = 11,
    MetadataError = 12,
    ServiceNotReady = 13,
    TooManyRequests = 14,
    ProducerBusy = 15,
    /// The bookie holds nothing for this ledger.
    NoSuchLedger = 16,
    /// The bookie has the ledger but not this entry.
    NoSuchEntry = 17,
    /// The ledger is fenced on the bookie; only recovery adds are accepted.
    Fenced = 18,
    /// The bookie accepts no adds (low disk space); reads still work.
    ReadOnly = 19,
    /// The stored entry failed its checksum; its bytes are not returned.
    ChecksumMismatch = 20,
    /// Another broker owns the topic's bundle: look the topic up again and go there.
    NotOwner = 21,
    NamespaceAlreadyExists = 22,
    /// A namespace cannot be deleted while it has topics.
    NamespaceNotEmpty = 23,
    /// A policy value is out of range (e.g. replication breaking E >= Qw >= Qa >= 1).
    InvalidPolicy = 24,
    /// A consumer asked for a subscription type other than the one its consumers use.
    IncompatibleSubscription = 25,
    /// The subscription's cursor was reset: resubscribe, and expect messages again from there.
    SubscriptionReset = 26,
    TenantNotFound = 27,
    TenantAlreadyExists = 28,
    /// A tenant cannot be deleted while it has namespaces.
    TenantNotEmpty = 29,
    /// The topic's backlog is over its namespace's quota and the policy refuses producers.
    BacklogQuotaExceeded = 30,
    TransactionNotFound = 31,
    /// The transaction is decided (or timed out): no more sends, acks or the opposite
    /// decision.
    TransactionNotOpen = 32,
    /// The transaction belongs to another client.
    TransactionNotOwner = 33,
    /// Too many open transactions for the client or the cluster.
    TooManyTransactions = 34,
    /// Another open transaction holds an ack on the same message.
    TransactionConflict = 35,
    /// The request conflicts with the current state (a partition's record while its
    /// partitioned topic exists, a partitioned topic whose partitions still exist).
    PreconditionFailed = 36,
    /// A newer instance of the transactional producer started: this one is a zombie.
    ProducerFenced = 37,
}

impl ErrorCode {
    pub fn from_u32(code: u32) -> Self {
        use ErrorCode::*;
        const ALL: [ErrorCode; 38] = [
            Unknown,
            IncompatibleVersion,
            FrameTooLarge,
            MalformedFrame,
            InvalidTopicName,
            TopicNotFound,
            NamespaceNotFound,
            TopicAlreadyExists,
            SubscriptionBusy,
            InvalidMessageId,
            ProtocolViolation,
            StorageError,
            MetadataError,
            ServiceNotReady,
            TooManyRequests,
            ProducerBusy,
            NoSuchLedger,
            NoSuchEntry,
            Fenced,
            ReadOnly,
            ChecksumMismatch,
            NotOwner,
            NamespaceAlreadyExists,
            NamespaceNotEmpty,
            InvalidPolicy,
            IncompatibleSubscription,
            SubscriptionReset,
            TenantNotFound,
            TenantAlreadyExists,
            TenantNotEmpty,
            BacklogQuotaExceeded,
            TransactionNotFound,
            TransactionNotOpen,
            TransactionNotOwner,
            TooManyTransactions,
            TransactionConflict,
            PreconditionFailed,
            ProducerFenced,
        ];
        ALL.get(code as usize).copied().unwrap_or(Unknown)
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::StorageError
                | ErrorCode::MetadataError
                | ErrorCode::ServiceNotReady
                | ErrorCode::TooManyRequests
                | ErrorCode::NotOwner
                | ErrorCode::SubscriptionReset
        )
    }
}

/// An error as it travels on the wire: a code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ErrorInfo> for WireError {
    fn from(e: ErrorInfo) -> Self {
        Self {
            code: ErrorCode::from_u32(e.code),
            message: e.message,
        }
    }
}

impl From<WireError> for ErrorInfo {
    fn from(e: WireError) -> Self {
        Self {
            code: e.code as u32,
            message: e.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_numbers_map_to_unknown() {
        for n in 0..38 {
            assert_eq!(ErrorCode::from_u32(n) as u32, n);
        }
        assert_eq!(ErrorCode::from_u32(9999), ErrorCode::Unknown);
    }
}
