//! Broker errors and their wire codes.

use strata_bookie::LedgerError;
use strata_metastore::tables::TableError;
use strata_proto::{ErrorCode, TopicNameError, WireError};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    InvalidTopicName(#[from] TopicNameError),
    #[error("topic {0} does not exist")]
    TopicNotFound(String),
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    #[error("namespace {0} does not exist")]
    NamespaceNotFound(String),
    #[error("subscription {subscription} on {topic} already has an exclusive consumer")]
    SubscriptionBusy { topic: String, subscription: String },
    #[error(
        "subscription {subscription} is {existing} while it has consumers; a {requested} consumer cannot join"
    )]
    IncompatibleSubscription {
        subscription: String,
        existing: String,
        requested: String,
    },
    #[error("subscription {0}'s cursor was reset; subscribe again")]
    SubscriptionReset(String),
    #[error("subscription {0} does not exist")]
    SubscriptionNotFound(String),
    #[error("message id {0} does not exist on this subscription")]
    InvalidMessageId(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("ledger storage: {0}")]
    Ledger(#[from] LedgerError),
    #[error("metadata: {0}")]
    Meta(#[from] TableError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("broker is shutting down")]
    ShuttingDown,
    /// A transient condition the client resolves by retrying after a pause.
    #[error("retry later: {0}")]
    Retry(String),
    #[error(
        "subscription {subscription}'s cursor was changed elsewhere (topic deleted or re-created); reconnect"
    )]
    CursorFenced { subscription: String },
    #[error("topic {0} was deleted")]
    TopicDeleted(String),
    #[error("namespace {0} already exists")]
    NamespaceAlreadyExists(String),
    #[error("namespace {namespace} still has {topics} topic(s); delete them first")]
    NamespaceNotEmpty { namespace: String, topics: usize },
    #[error("tenant {0} does not exist")]
    TenantNotFound(String),
    #[error("tenant {0} already exists")]
    TenantAlreadyExists(String),
    #[error("tenant {tenant} still has {namespaces} namespace(s); delete them first")]
    TenantNotEmpty { tenant: String, namespaces: usize },
    #[error("{0} is a partitioned topic: producers and consumers use its partitions")]
    PartitionedTopic(String),
    #[error("{topic}: {reason}")]
    InvalidPartitions { topic: String, reason: String },
    #[error("{topic}: {reason}")]
    PartitionConflict { topic: String, reason: String },
    #[error(
        "topic {topic}'s backlog ({backlog_mb} MB) is over its quota of {limit_mb} MB; consumers must catch up"
    )]
    BacklogQuotaExceeded {
        topic: String,
        backlog_mb: u64,
        limit_mb: u64,
    },
    #[error(transparent)]
    Txn(#[from] strata_metastore::txn_coordinator::CoordinatorError),
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    #[error("topic {topic} is served by broker {broker_id} at {address}; look it up again")]
    NotOwner {
        topic: String,
        broker_id: String,
        address: String,
    },
}

impl BrokerError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidTopicName(_) => ErrorCode::InvalidTopicName,
            Self::TopicNotFound(_) => ErrorCode::TopicNotFound,
            Self::TopicAlreadyExists(_) => ErrorCode::TopicAlreadyExists,
            Self::NamespaceNotFound(_) => ErrorCode::NamespaceNotFound,
            Self::SubscriptionBusy { .. } => ErrorCode::SubscriptionBusy,
            Self::IncompatibleSubscription { .. } => ErrorCode::IncompatibleSubscription,
            Self::SubscriptionReset(_) => ErrorCode::SubscriptionReset,
            Self::SubscriptionNotFound(_) => ErrorCode::TopicNotFound,
            Self::InvalidMessageId(_) => ErrorCode::InvalidMessageId,
            Self::Protocol(_) => ErrorCode::ProtocolViolation,
            // Resending cannot help.
            Self::Ledger(LedgerError::EntryTooLarge { .. }) => ErrorCode::FrameTooLarge,
            Self::Ledger(_) | Self::Corrupt(_) => ErrorCode::StorageError,
            // A stored record this version cannot read is corrupt storage, as before tables.
            Self::Meta(TableError::Decode { .. } | TableError::Encode { .. }) => {
                ErrorCode::StorageError
            }
            Self::Meta(_) => ErrorCode::MetadataError,
            Self::ShuttingDown | Self::Retry(_) => ErrorCode::ServiceNotReady,
            Self::CursorFenced { .. } => ErrorCode::MetadataError,
            Self::TopicDeleted(_) => ErrorCode::TopicNotFound,
            Self::NotOwner { .. } => ErrorCode::NotOwner,
            Self::NamespaceAlreadyExists(_) => ErrorCode::NamespaceAlreadyExists,
            Self::NamespaceNotEmpty { .. } => ErrorCode::NamespaceNotEmpty,
            Self::InvalidPolicy(_) => ErrorCode::InvalidPolicy,
            Self::TenantNotFound(_) => ErrorCode::TenantNotFound,
            Self::TenantAlreadyExists(_) => ErrorCode::TenantAlreadyExists,
            Self::TenantNotEmpty { .. } => ErrorCode::TenantNotEmpty,
            Self::InvalidPartitions { .. } => ErrorCode::InvalidTopicName,
            Self::PartitionedTopic(_) | Self::PartitionConflict { .. } => {
                ErrorCode::PreconditionFailed
            }
            Self::BacklogQuotaExceeded { .. } => ErrorCode::BacklogQuotaExceeded,
            Self::Txn(e) => txn_code(e),
        }
    }

    pub fn to_wire(&self) -> WireError {
        WireError::new(self.code(), self.to_string())
    }
}

fn txn_code(e: &strata_metastore::txn_coordinator::CoordinatorError) -> ErrorCode {
    use strata_metastore::tables::TxnRuleError as Rule;
    use strata_metastore::txn_coordinator::CoordinatorError as C;
    match e {
        C::NotFound(_) => ErrorCode::TransactionNotFound,
        C::Rule(Rule::NotOwner { .. }) => ErrorCode::TransactionNotOwner,
        C::Rule(Rule::ProducerFenced { .. }) => ErrorCode::ProducerFenced,
        C::Rule(Rule::NotInGroup { .. }) => ErrorCode::TransactionNotOwner,
        C::Rule(Rule::Prepared { .. }) => ErrorCode::TransactionNotOpen,
        C::Rule(Rule::NotPrepared { .. }) => ErrorCode::PreconditionFailed,
        C::Rule(Rule::NotOpen { .. } | Rule::AlreadyDecided { .. }) => {
            ErrorCode::TransactionNotOpen
        }
        C::Rule(Rule::MissingLastPosition { .. } | Rule::BadRange { .. }) => {
            ErrorCode::ProtocolViolation
        }
        C::TooManyOpen { .. } => ErrorCode::TooManyTransactions,
        C::Conflict(_) => ErrorCode::TransactionConflict,
        C::InvalidTimeout { .. } => ErrorCode::InvalidPolicy,
        C::Table(TableError::Decode { .. } | TableError::Encode { .. }) => ErrorCode::StorageError,
        C::Table(_) => ErrorCode::MetadataError,
    }
}
