//! On-disk key and value formats of the bookie (pure functions, no I/O).
//!
//! Column family `entries`:
//!
//! ```text
//! key   = ledger_id u64 BE ++ entry_id u64 BE                       (16 bytes)
//! value = format u8 (= 1) ++ crc32c u32 BE ++ payload
//!         crc32c covers ledger_id BE ++ entry_id BE ++ payload, so an entry stored
//!         under the wrong key fails its check too.
//! ```
//!
//! Column family `ledgers`:
//!
//! ```text
//! key   = ledger_id u64 BE                                          (8 bytes)
//! value = format u8 (= 1) ++ flags u8 ++ last_add_confirmed u64 BE ++ last_entry u64 BE
//!         flags: bit 0 fenced, bit 1 last_add_confirmed present, bit 2 last_entry present;
//!         an absent field is stored as 0.                             (18 bytes)
//! ```
//!
//! Big-endian ids make RocksDB's bytewise order the log order.

use bytes::Bytes;
use strata_proto::{EntryId, LedgerId};

use crate::BookieError;

/// Format version of an entry value.
pub const ENTRY_FORMAT_V1: u8 = 1;
/// Format version of a ledger record.
pub const LEDGER_FORMAT_V1: u8 = 1;
/// Bytes before the payload in an entry value.
pub const ENTRY_HEADER_LEN: usize = 1 + 4;
/// Length of an encoded ledger record.
pub const LEDGER_RECORD_LEN: usize = 1 + 1 + 8 + 8;

const FLAG_FENCED: u8 = 1 << 0;
const FLAG_HAS_LAC: u8 = 1 << 1;
const FLAG_HAS_LAST_ENTRY: u8 = 1 << 2;
const KNOWN_FLAGS: u8 = FLAG_FENCED | FLAG_HAS_LAC | FLAG_HAS_LAST_ENTRY;

/// Key of an entry in the `entries` column family.
pub fn entry_key(ledger: LedgerId, entry: EntryId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&ledger.0.to_be_bytes());
    key[8..].copy_from_slice(&entry.0.to_be_bytes());
    key
}

/// Exclusive upper bound just above `entry_key(ledger, entry)`: that key followed by a zero
/// byte, so a range or iteration bound can include `entry` without overflowing the id.
pub fn entry_key_after(ledger: LedgerId, entry: EntryId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..16].copy_from_slice(&entry_key(ledger, entry));
    key
}

/// Decodes an `entries` key; `None` if it is not 16 bytes.
pub fn decode_entry_key(key: &[u8]) -> Option<(LedgerId, EntryId)> {
    let ledger: [u8; 8] = key.get(..8)?.try_into().ok()?;
    let entry: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    (key.len() == 16).then(|| {
        (
            LedgerId(u64::from_be_bytes(ledger)),
            EntryId(u64::from_be_bytes(entry)),
        )
    })
}

/// Key of a ledger record in the `ledgers` column family.
pub fn ledger_key(ledger: LedgerId) -> [u8; 8] {
    ledger.0.to_be_bytes()
}

/// Decodes a `ledgers` key; `None` if it is not 8 bytes.
pub fn decode_ledger_key(key: &[u8]) -> Option<LedgerId> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(LedgerId(u64::from_be_bytes(bytes)))
}

/// The CRC32C an entry value carries.
pub fn entry_crc(ledger: LedgerId, entry: EntryId, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&entry_key(ledger, entry));
    crc32c::crc32c_append(crc, payload)
}

/// Encodes an entry value.
pub fn encode_entry(ledger: LedgerId, entry: EntryId, payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(ENTRY_HEADER_LEN + payload.len());
    value.push(ENTRY_FORMAT_V1);
    value.extend_from_slice(&entry_crc(ledger, entry, payload).to_be_bytes());
    value.extend_from_slice(payload);
    value
}

/// Decodes an entry value and verifies its checksum, returning the payload.
pub fn decode_entry(ledger: LedgerId, entry: EntryId, value: &[u8]) -> Result<&[u8], BookieError> {
    let malformed = |detail: String| BookieError::Malformed {
        what: "entry",
        ledger,
        detail,
    };
    let (&version, rest) = value
        .split_first()
        .ok_or_else(|| malformed(format!("entry {entry}: empty value")))?;
    if version != ENTRY_FORMAT_V1 {
        return Err(malformed(format!(
            "entry {entry}: unknown format version {version}, expected {ENTRY_FORMAT_V1}"
        )));
    }
    let (crc, payload) = rest.split_at_checked(4).ok_or_else(|| {
        malformed(format!(
            "entry {entry}: value is {} bytes, shorter than its header",
            value.len()
        ))
    })?;
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(crc);
    let expected_crc = u32::from_be_bytes(crc_bytes);
    let actual_crc = entry_crc(ledger, entry, payload);
    if expected_crc != actual_crc {
        return Err(BookieError::Corrupt {
            ledger,
            entry,
            expected_crc,
            actual_crc,
        });
    }
    Ok(payload)
}

/// Decodes and verifies an entry value into an owned payload.
pub fn decode_entry_bytes(
    ledger: LedgerId,
    entry: EntryId,
    value: &[u8],
) -> Result<Bytes, BookieError> {
    decode_entry(ledger, entry, value).map(Bytes::copy_from_slice)
}

/// Per-ledger state a bookie keeps beside the entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerRecord {
    /// Set by a recovery; afterwards only recovery adds are accepted.
    pub fenced: bool,
    /// Highest last-add-confirmed piggybacked on any add.
    pub last_add_confirmed: Option<EntryId>,
    /// Highest entry id stored.
    pub last_entry: Option<EntryId>,
}

impl LedgerRecord {
    /// Encodes the record in format 1.
    pub fn encode(&self) -> [u8; LEDGER_RECORD_LEN] {
        let mut out = [0u8; LEDGER_RECORD_LEN];
        let mut flags = 0;
        if self.fenced {
            flags |= FLAG_FENCED;
        }
        if let Some(lac) = self.last_add_confirmed {
            flags |= FLAG_HAS_LAC;
            out[2..10].copy_from_slice(&lac.0.to_be_bytes());
        }
        if let Some(last) = self.last_entry {
            flags |= FLAG_HAS_LAST_ENTRY;
            out[10..18].copy_from_slice(&last.0.to_be_bytes());
        }
        out[0] = LEDGER_FORMAT_V1;
        out[1] = flags;
        out
    }

    /// Decodes a record, rejecting unknown versions, flags and lengths.
    pub fn decode(ledger: LedgerId, value: &[u8]) -> Result<Self, BookieError> {
        let malformed = |detail: String| BookieError::Malformed {
            what: "ledger",
            ledger,
            detail,
        };
        let bytes: &[u8; LEDGER_RECORD_LEN] = value.try_into().map_err(|_| {
            malformed(format!(
                "record is {} bytes, expected {LEDGER_RECORD_LEN}",
                value.len()
            ))
        })?;
        if bytes[0] != LEDGER_FORMAT_V1 {
            return Err(malformed(format!(
                "unknown format version {}, expected {LEDGER_FORMAT_V1}",
                bytes[0]
            )));
        }
        let flags = bytes[1];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(malformed(format!("unknown flags {flags:#04x}")));
        }
        let field = |range: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[range]);
            EntryId(u64::from_be_bytes(b))
        };
        Ok(LedgerRecord {
            fenced: flags & FLAG_FENCED != 0,
            last_add_confirmed: (flags & FLAG_HAS_LAC != 0).then(|| field(2..10)),
            last_entry: (flags & FLAG_HAS_LAST_ENTRY != 0).then(|| field(10..18)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys sort by (ledger, entry) numerically, because ids are big-endian.
    #[test]
    fn entry_keys_sort_in_log_order() {
        let ids = [
            (1, 0),
            (1, 1),
            (1, 255),
            (1, 256),
            (2, 0),
            (256, 0),
            (u64::MAX, u64::MAX),
        ];
        for pair in ids.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(
                entry_key(LedgerId(a.0), EntryId(a.1)) < entry_key(LedgerId(b.0), EntryId(b.1)),
                "{a:?} < {b:?}"
            );
        }
        let last = entry_key(LedgerId(7), EntryId(u64::MAX));
        let after = entry_key_after(LedgerId(7), EntryId(u64::MAX));
        assert!(last.as_slice() < after.as_slice());
        assert!(after.as_slice() < entry_key(LedgerId(8), EntryId(0)).as_slice());
    }

    /// An entry value round-trips, and the key decodes back to the ids.
    #[test]
    fn entry_value_round_trips() {
        let value = encode_entry(LedgerId(3), EntryId(9), b"hello");
        assert_eq!(
            decode_entry(LedgerId(3), EntryId(9), &value).ok(),
            Some(&b"hello"[..])
        );
        let key = entry_key(LedgerId(3), EntryId(9));
        assert_eq!(decode_entry_key(&key), Some((LedgerId(3), EntryId(9))));
        assert_eq!(decode_entry_key(&key[..15]), None);
    }

    /// Any flipped byte in an entry value is reported as corrupt or malformed, never returned.
    #[test]
    fn every_flipped_byte_is_detected() {
        let value = encode_entry(LedgerId(3), EntryId(9), b"some payload bytes");
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 0x40;
            let err = decode_entry(LedgerId(3), EntryId(9), &bad).expect_err("flip must be caught");
            assert!(
                matches!(
                    err,
                    BookieError::Corrupt { .. } | BookieError::Malformed { .. }
                ),
                "{err}"
            );
        }
    }

    /// An intact value stored under another entry's key fails the check: the CRC covers the ids.
    #[test]
    fn misplaced_entry_is_detected() {
        let value = encode_entry(LedgerId(3), EntryId(9), b"payload");
        assert!(matches!(
            decode_entry(LedgerId(3), EntryId(10), &value),
            Err(BookieError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_entry(LedgerId(4), EntryId(9), &value),
            Err(BookieError::Corrupt { .. })
        ));
    }

    /// Truncated or unversioned entry values are malformed errors, not panics.
    #[test]
    fn short_entry_values_are_malformed() {
        for value in [&[][..], &[1][..], &[1, 0, 0, 0][..], &[2, 0, 0, 0, 0][..]] {
            assert!(matches!(
                decode_entry(LedgerId(1), EntryId(1), value),
                Err(BookieError::Malformed { .. })
            ));
        }
    }

    /// Ledger records round-trip for every combination of fields.
    #[test]
    fn ledger_record_round_trips() {
        for fenced in [false, true] {
            for lac in [None, Some(EntryId(0)), Some(EntryId(u64::MAX))] {
                for last in [None, Some(EntryId(0)), Some(EntryId(42))] {
                    let record = LedgerRecord {
                        fenced,
                        last_add_confirmed: lac,
                        last_entry: last,
                    };
                    let decoded = LedgerRecord::decode(LedgerId(1), &record.encode());
                    assert_eq!(decoded.ok(), Some(record));
                }
            }
        }
    }

    /// Ledger records with a wrong length, version or unknown flags are rejected.
    #[test]
    fn bad_ledger_records_are_rejected() {
        let good = LedgerRecord::default().encode();
        assert!(LedgerRecord::decode(LedgerId(1), &good[..17]).is_err());
        let mut bad_version = good;
        bad_version[0] = 2;
        assert!(LedgerRecord::decode(LedgerId(1), &bad_version).is_err());
        let mut bad_flags = good;
        bad_flags[1] = 0x80;
        assert!(LedgerRecord::decode(LedgerId(1), &bad_flags).is_err());
    }
}
