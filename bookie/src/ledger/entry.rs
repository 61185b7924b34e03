//! How a ledger's entries are stored on bookies (`LedgerMetadata.entry_format`).
//!
//! Format 1 puts the ledger's length up to and including the entry in an 8-byte big-endian
//! header before the payload, as BookKeeper's entry header carries it: a recovery that finds
//! the last entry then also knows the length to close the ledger with. Format 0 (ledgers
//! written by the first, single-bookie client) stores the bare payload.

use bytes::{BufMut, Bytes, BytesMut};
use strata_proto::{EntryId, LedgerId};

use super::LedgerError;

/// The bare payload.
pub const FORMAT_RAW: u32 = 0;
/// Length header, then payload. What new ledgers use.
pub const FORMAT_WITH_LENGTH: u32 = 1;

const HEADER_LEN: usize = 8;

/// The bytes to store for an entry whose ledger is `length_after` bytes long with it.
pub fn encode(format: u32, length_after: u64, payload: &Bytes) -> Bytes {
    if format == FORMAT_RAW {
        return payload.clone();
    }
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_u64(length_after);
    out.put_slice(payload);
    out.freeze()
}

/// An entry read back: its payload and, in format 1, the ledger's length up to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub payload: Bytes,
    pub length_after: Option<u64>,
}

/// Splits stored bytes into payload and header.
pub fn decode(
    format: u32,
    ledger: LedgerId,
    entry: EntryId,
    stored: Bytes,
) -> Result<StoredEntry, LedgerError> {
    match format {
        FORMAT_RAW => Ok(StoredEntry {
            payload: stored,
            length_after: None,
        }),
        FORMAT_WITH_LENGTH if stored.len() >= HEADER_LEN => {
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&stored[..HEADER_LEN]);
            Ok(StoredEntry {
                payload: stored.slice(HEADER_LEN..),
                length_after: Some(u64::from_be_bytes(header)),
            })
        }
        FORMAT_WITH_LENGTH => Err(LedgerError::BadEntry {
            ledger,
            entry,
            reason: format!("{} bytes, shorter than the length header", stored.len()),
        }),
        other => Err(LedgerError::BadMetadata {
            ledger,
            reason: format!("unknown entry format {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Format 1 round-trips payload and length; format 0 stores the payload as is; a stored
    /// value too short for its header and an unknown format are typed errors.
    #[test]
    fn formats_round_trip_and_reject_bad_input() {
        let (l, e) = (LedgerId(1), EntryId(2));
        let payload = Bytes::from_static(b"hello");
        let stored = encode(FORMAT_WITH_LENGTH, 42, &payload);
        assert_eq!(stored.len(), 13);
        let back = decode(FORMAT_WITH_LENGTH, l, e, stored).expect("decodes");
        assert_eq!(back.payload, payload);
        assert_eq!(back.length_after, Some(42));
        let raw = encode(FORMAT_RAW, 42, &payload);
        assert_eq!(raw, payload);
        assert_eq!(
            decode(FORMAT_RAW, l, e, raw).expect("raw").length_after,
            None
        );
        assert!(matches!(
            decode(FORMAT_WITH_LENGTH, l, e, Bytes::from_static(b"short")),
            Err(LedgerError::BadEntry { .. })
        ));
        assert!(matches!(
            decode(9, l, e, payload),
            Err(LedgerError::BadMetadata { .. })
        ));
    }
}
