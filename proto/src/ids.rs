//! Newtype ids, so a ledger id can never be passed where an entry id is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pb::common::MessageIdData;

/// Id of a ledger: unique across the cluster, allocated by the metastore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LedgerId(pub u64);

/// Id of an entry within a ledger: dense, starting at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryId(pub u64);

impl fmt::Display for LedgerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Id of a transaction: unique across the cluster and its restarts, allocated by the
/// metastore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnId(pub u64);

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "txn-{}", self.0)
    }
}

/// An entry's place in a managed ledger: ledgers are ordered by id, entries within them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub ledger: LedgerId,
    pub entry: EntryId,
}

impl Position {
    pub const fn new(ledger: u64, entry: u64) -> Self {
        Self {
            ledger: LedgerId(ledger),
            entry: EntryId(entry),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ledger, self.entry)
    }
}

/// Id of one message: the entry that holds its batch and its index within the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId {
    pub ledger: LedgerId,
    pub entry: EntryId,
    pub batch_index: u32,
}

impl MessageId {
    pub const fn new(ledger: u64, entry: u64, batch_index: u32) -> Self {
        Self {
            ledger: LedgerId(ledger),
            entry: EntryId(entry),
            batch_index,
        }
    }

    /// The message at `batch_index` of the entry at `position`.
    pub const fn at(position: Position, batch_index: u32) -> Self {
        Self {
            ledger: position.ledger,
            entry: position.entry,
            batch_index,
        }
    }

    pub const fn position(&self) -> Position {
        Position {
            ledger: self.ledger,
            entry: self.entry,
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.ledger, self.entry, self.batch_index)
    }
}

impl From<MessageIdData> for MessageId {
    fn from(d: MessageIdData) -> Self {
        Self::new(d.ledger_id, d.entry_id, d.batch_index)
    }
}

impl From<MessageId> for MessageIdData {
    fn from(id: MessageId) -> Self {
        Self {
            ledger_id: id.ledger.0,
            entry_id: id.entry.0,
            batch_index: id.batch_index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Message ids order by ledger, then entry, then batch index: the log order.
    #[test]
    fn message_ids_order_like_the_log() {
        assert!(MessageId::new(1, 9, 9) < MessageId::new(2, 0, 0));
        assert!(MessageId::new(2, 0, 5) < MessageId::new(2, 1, 0));
        assert!(MessageId::new(2, 1, 0) < MessageId::new(2, 1, 1));
    }

    #[test]
    fn message_id_round_trips_through_wire_form() {
        let id = MessageId::new(7, 42, 3);
        assert_eq!(MessageId::from(MessageIdData::from(id)), id);
        assert_eq!(id.to_string(), "7:42:3");
    }
}
