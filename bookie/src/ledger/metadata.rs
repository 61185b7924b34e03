//! The rules of a ledger's metadata record, on top of its table
//! ([`strata_metastore::tables::ledgers`]: `/ledgers/{id:020}`, protobuf [`LedgerMetadata`]
//! with `format_version` 1, ids from the counter `/counters/ledger-id`).
//!
//! The table decodes and version-checks the record; this module adds what only the ledger
//! client knows: the record must name the ledger it is stored under and be in a state this
//! version understands. Every change is a compare-and-set on the record's version.

use strata_metastore::tables::Record;
use strata_proto::pb::bookie::{Fragment, LedgerMetadata, LedgerState};
use strata_proto::{EntryId, LedgerId};

use super::{LedgerConfig, LedgerError};

/// Format version written in every metadata record.
pub const METADATA_FORMAT_VERSION: u32 = <LedgerMetadata as Record>::FORMAT_VERSION;

/// Metadata of a new, OPEN ledger whose only fragment starts at entry 0 on `bookies`.
pub fn new_metadata(
    id: LedgerId,
    config: LedgerConfig,
    bookies: Vec<String>,
    created_ms: u64,
) -> LedgerMetadata {
    LedgerMetadata {
        format_version: METADATA_FORMAT_VERSION,
        ledger_id: id.0,
        ensemble_size: config.ensemble_size,
        write_quorum: config.write_quorum,
        ack_quorum: config.ack_quorum,
        state: LedgerState::Open as i32,
        last_entry_id: None,
        fragments: vec![Fragment {
            first_entry_id: 0,
            bookies,
        }],
        created_ms,
        length_bytes: 0,
    }
}

/// Checks a record read for ledger `id`: it names that ledger and its state is known.
pub fn validate(id: LedgerId, metadata: &LedgerMetadata) -> Result<(), LedgerError> {
    if metadata.ledger_id != id.0 {
        return Err(LedgerError::BadMetadata {
            ledger: id,
            reason: format!("record names ledger {}", metadata.ledger_id),
        });
    }
    state(id, metadata).map(|_| ())
}

/// The record's state, rejecting values this version does not know.
pub fn state(id: LedgerId, metadata: &LedgerMetadata) -> Result<LedgerState, LedgerError> {
    LedgerState::try_from(metadata.state).map_err(|_| LedgerError::BadMetadata {
        ledger: id,
        reason: format!("unknown state {}", metadata.state),
    })
}

/// The record's last entry (meaningful once CLOSED).
pub fn last_entry(metadata: &LedgerMetadata) -> Option<EntryId> {
    metadata.last_entry_id.map(EntryId)
}

/// The record, CLOSED at `last_entry` with `length_bytes`.
pub fn closed(
    mut metadata: LedgerMetadata,
    last_entry: Option<EntryId>,
    length_bytes: u64,
) -> LedgerMetadata {
    metadata.state = LedgerState::Closed as i32;
    metadata.last_entry_id = last_entry.map(|e| e.0);
    metadata.length_bytes = length_bytes;
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record for another ledger or with an unknown state is rejected; closing sets the
    /// state, the last entry and the length.
    #[test]
    fn records_are_validated() {
        let config = LedgerConfig::single();
        let md = new_metadata(LedgerId(5), config, vec!["b1".into()], 7);
        assert!(validate(LedgerId(5), &md).is_ok());
        assert!(matches!(
            validate(LedgerId(6), &md),
            Err(LedgerError::BadMetadata { .. })
        ));
        let mut bad_state = md.clone();
        bad_state.state = 17;
        assert!(matches!(
            validate(LedgerId(5), &bad_state),
            Err(LedgerError::BadMetadata { .. })
        ));
        let closed = closed(md, Some(EntryId(3)), 99);
        assert_eq!(state(LedgerId(5), &closed).ok(), Some(LedgerState::Closed));
        assert_eq!(last_entry(&closed), Some(EntryId(3)));
        assert_eq!(closed.length_bytes, 99);
    }
}
