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

use super::quorum::WriteSchedule;
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
        entry_format: super::entry::FORMAT_WITH_LENGTH,
    }
}

/// Checks a record read for ledger `id`: it names that ledger, its state is known, its
/// quorums are valid and every fragment names E distinct bookies, fragments in entry order.
pub fn validate(id: LedgerId, metadata: &LedgerMetadata) -> Result<(), LedgerError> {
    let bad = |reason: String| LedgerError::BadMetadata { ledger: id, reason };
    if metadata.ledger_id != id.0 {
        return Err(bad(format!("record names ledger {}", metadata.ledger_id)));
    }
    state(id, metadata)?;
    let schedule = schedule(metadata).map_err(|e| bad(e.to_string()))?;
    if metadata.fragments.is_empty() || metadata.fragments[0].first_entry_id != 0 {
        return Err(bad("the first fragment must start at entry 0".into()));
    }
    for (i, fragment) in metadata.fragments.iter().enumerate() {
        let bookies = &fragment.bookies;
        if bookies.len() != schedule.ensemble_size() {
            return Err(bad(format!("fragment {i} names {} bookies", bookies.len())));
        }
        if (1..bookies.len()).any(|j| bookies[..j].contains(&bookies[j])) {
            return Err(bad(format!("fragment {i} names a bookie twice")));
        }
        if i > 0 && fragment.first_entry_id <= metadata.fragments[i - 1].first_entry_id {
            return Err(bad(format!(
                "fragment {i} does not start after fragment {}",
                i - 1
            )));
        }
    }
    Ok(())
}

/// The record's write schedule (E, Qw, Qa).
pub fn schedule(metadata: &LedgerMetadata) -> Result<WriteSchedule, LedgerError> {
    LedgerConfig {
        ensemble_size: metadata.ensemble_size,
        write_quorum: metadata.write_quorum,
        ack_quorum: metadata.ack_quorum,
    }
    .schedule()
}

/// The fragment `entry` belongs to: the last one starting at or before it.
pub fn fragment_of(metadata: &LedgerMetadata, entry: EntryId) -> Option<&Fragment> {
    metadata
        .fragments
        .iter()
        .rev()
        .find(|f| f.first_entry_id <= entry.0)
}

/// The last fragment (validated records have one).
pub fn last_fragment(metadata: &LedgerMetadata) -> Option<&Fragment> {
    metadata.fragments.last()
}

/// The record with a new last fragment from `first_entry` on `bookies`. A last fragment that
/// starts at the same entry held nothing yet and is replaced, as BookKeeper does.
pub fn with_fragment(
    mut metadata: LedgerMetadata,
    first_entry: EntryId,
    bookies: Vec<String>,
) -> LedgerMetadata {
    if metadata
        .fragments
        .last()
        .is_some_and(|f| f.first_entry_id >= first_entry.0)
    {
        metadata.fragments.pop();
    }
    metadata.fragments.push(Fragment {
        first_entry_id: first_entry.0,
        bookies,
    });
    metadata
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
        let mut two_fragments = with_fragment(md.clone(), EntryId(4), vec!["b2".into()]);
        assert!(validate(LedgerId(5), &two_fragments).is_ok());
        assert_eq!(
            fragment_of(&two_fragments, EntryId(3)).map(|f| f.first_entry_id),
            Some(0)
        );
        assert_eq!(
            fragment_of(&two_fragments, EntryId(9)).map(|f| f.first_entry_id),
            Some(4)
        );
        // A fragment that held nothing is replaced, not followed.
        two_fragments = with_fragment(two_fragments, EntryId(4), vec!["b3".into()]);
        assert_eq!(two_fragments.fragments.len(), 2);
        assert_eq!(two_fragments.fragments[1].bookies, vec!["b3".to_string()]);
        let mut unordered = two_fragments.clone();
        unordered.fragments[1].first_entry_id = 0;
        assert!(validate(LedgerId(5), &unordered).is_err());
        let mut wrong_size = md.clone();
        wrong_size.fragments[0].bookies.push("b9".into());
        assert!(validate(LedgerId(5), &wrong_size).is_err());
        let closed = closed(md, Some(EntryId(3)), 99);
        assert_eq!(state(LedgerId(5), &closed).ok(), Some(LedgerState::Closed));
        assert_eq!(last_entry(&closed), Some(EntryId(3)));
        assert_eq!(closed.length_bytes, 99);
    }
}
