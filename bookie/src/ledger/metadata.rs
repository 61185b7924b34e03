//! Ledger metadata records in the metastore: keys, encoding and validation.
//!
//! One record per ledger at `/ledgers/{id:020}` (zero-padded so a prefix scan lists ledgers in
//! id order), holding the prost [`LedgerMetadata`] with `format_version` 1. Ids come from the
//! counter `/counters/ledger-id`. Every change is a compare-and-set on the record's version.

use bytes::Bytes;
use prost::Message;
use strata_proto::pb::bookie::{Fragment, LedgerMetadata, LedgerState};
use strata_proto::{EntryId, LedgerId};

use super::{LedgerConfig, LedgerError};

/// Format version written in every metadata record.
pub const METADATA_FORMAT_VERSION: u32 = 1;
/// Prefix of every ledger metadata key.
pub const LEDGERS_PREFIX: &str = "/ledgers/";
/// Metastore counter that allocates ledger ids.
pub const LEDGER_ID_COUNTER: &str = "/counters/ledger-id";

/// Metastore key of a ledger's metadata.
pub fn ledger_key(id: LedgerId) -> String {
    format!("{LEDGERS_PREFIX}{:020}", id.0)
}

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

/// Encodes a record.
pub fn encode(metadata: &LedgerMetadata) -> Bytes {
    Bytes::from(metadata.encode_to_vec())
}

/// Decodes and validates a record read for ledger `id`.
pub fn decode(id: LedgerId, value: &[u8]) -> Result<LedgerMetadata, LedgerError> {
    let bad = |reason: String| LedgerError::BadMetadata { ledger: id, reason };
    let metadata = LedgerMetadata::decode(value).map_err(|e| bad(format!("protobuf: {e}")))?;
    if metadata.format_version != METADATA_FORMAT_VERSION {
        return Err(bad(format!(
            "format version {}, expected {METADATA_FORMAT_VERSION}",
            metadata.format_version
        )));
    }
    if metadata.ledger_id != id.0 {
        return Err(bad(format!("record names ledger {}", metadata.ledger_id)));
    }
    state(id, &metadata)?;
    Ok(metadata)
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

    /// Keys are zero-padded so lexicographic order is id order.
    #[test]
    fn keys_sort_in_id_order() {
        assert_eq!(ledger_key(LedgerId(42)), "/ledgers/00000000000000000042");
        assert!(ledger_key(LedgerId(9)) < ledger_key(LedgerId(10)));
        assert!(ledger_key(LedgerId(10)) < ledger_key(LedgerId(u64::MAX)));
    }

    /// A record round-trips; one for another ledger, of another version, with an unknown
    /// state, or not protobuf at all, is rejected.
    #[test]
    fn records_are_validated() {
        let config = LedgerConfig::single();
        let md = new_metadata(LedgerId(5), config, vec!["b1".into()], 7);
        assert_eq!(decode(LedgerId(5), &encode(&md)).ok(), Some(md.clone()));
        assert!(decode(LedgerId(6), &encode(&md)).is_err());
        let mut v2 = md.clone();
        v2.format_version = 2;
        assert!(decode(LedgerId(5), &encode(&v2)).is_err());
        let mut bad_state = md.clone();
        bad_state.state = 17;
        assert!(decode(LedgerId(5), &encode(&bad_state)).is_err());
        assert!(decode(LedgerId(5), &[0xff, 0xff, 0xff]).is_err());
        let closed = closed(md, Some(EntryId(3)), 99);
        assert_eq!(state(LedgerId(5), &closed).ok(), Some(LedgerState::Closed));
        assert_eq!(last_entry(&closed), Some(EntryId(3)));
    }
}
