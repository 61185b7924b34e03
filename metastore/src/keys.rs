//! RocksDB layout: column family names, key encodings and the record envelope.
//!
//! # Column families
//!
//! | CF          | key                              | value                                   |
//! |-------------|----------------------------------|-----------------------------------------|
//! | `log`       | log index, u64 big-endian        | envelope(serde_json openraft `Entry`)   |
//! | `raft_meta` | `vote`, `committed`, `purged`    | envelope(serde_json)                    |
//! | `kv`        | the key's UTF-8 bytes            | envelope(prost `KeyValue`)              |
//! | `history`   | revision, u64 big-endian         | envelope(prost `WatchEvent`)            |
//! | `leases`    | lease id, u64 big-endian         | envelope(prost `Lease`)                 |
//! | `sm_meta`   | see the `SM_*` constants         | envelope(serde_json / u64 BE / prost)   |
//!
//! Big-endian integer keys make RocksDB's byte-wise order the numeric order, so iteration
//! follows the log and the history.
//!
//! # Envelope
//!
//! Every value written by this crate is wrapped as
//!
//! ```text
//! +--------------+---------------------------+-----------------+
//! | format: u8=1 | crc32c(payload): u32 BE   | payload ...     |
//! +--------------+---------------------------+-----------------+
//! ```
//!
//! and checked on read: an unknown format byte or a checksum mismatch is a typed
//! [`CodecError`], never a panic.

/// CF holding raft log entries.
pub(crate) const CF_LOG: &str = "log";
/// CF holding the vote, the committed log id and the last purged log id.
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// CF holding the current value of every key.
pub(crate) const CF_KV: &str = "kv";
/// CF holding every change, by revision.
pub(crate) const CF_HISTORY: &str = "history";
/// CF holding the state machine's own metadata.
pub(crate) const CF_SM_META: &str = "sm_meta";

/// CF holding every live lease, by id.
pub(crate) const CF_LEASES: &str = "leases";

/// Every column family this crate opens.
pub(crate) const ALL_CFS: [&str; 6] = [
    CF_LOG,
    CF_RAFT_META,
    CF_KV,
    CF_HISTORY,
    CF_SM_META,
    CF_LEASES,
];

/// `raft_meta`: the persisted vote (serde_json `Vote`).
pub(crate) const META_VOTE: &[u8] = b"vote";
/// `raft_meta`: the last committed log id (serde_json `Option<LogId>`).
pub(crate) const META_COMMITTED: &[u8] = b"committed";
/// `raft_meta`: the last purged log id (serde_json `LogId`).
pub(crate) const META_PURGED: &[u8] = b"purged";

/// `sm_meta`: the last applied log id (serde_json `Option<LogId>`).
pub(crate) const SM_LAST_APPLIED: &[u8] = b"last_applied";
/// `sm_meta`: the last applied membership (serde_json `StoredMembership`).
pub(crate) const SM_MEMBERSHIP: &[u8] = b"membership";
/// `sm_meta`: the revision of the last applied change (u64 BE).
pub(crate) const SM_REVISION: &[u8] = b"revision";
/// `sm_meta`: the oldest revision still in `history` (u64 BE).
pub(crate) const SM_OLDEST_REVISION: &[u8] = b"oldest_revision";
/// `sm_meta`: the id the next granted lease gets (u64 BE; absent: 1).
pub(crate) const SM_NEXT_LEASE_ID: &[u8] = b"next_lease_id";
/// `sm_meta`: the current snapshot's metadata (serde_json `SnapshotMeta`).
pub(crate) const SM_SNAPSHOT_META: &[u8] = b"snapshot_meta";
/// `sm_meta`: the current snapshot's data (prost `SnapshotData`).
pub(crate) const SM_SNAPSHOT_DATA: &[u8] = b"snapshot_data";

/// An exclusive upper bound above every key of the `kv` CF: `0xFF` never occurs in UTF-8.
pub(crate) const KV_END: &[u8] = &[0xFF];

/// The current record format.
pub(crate) const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 5;

/// A persisted record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{what}: record is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    TooShort { what: &'static str, len: usize },
    #[error("{what}: unknown record format {found} (this build reads format {FORMAT_V1})")]
    UnknownFormat { what: &'static str, found: u8 },
    #[error("{what}: checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("{what}: expected an 8-byte big-endian integer, found {len} bytes")]
    BadInteger { what: &'static str, len: usize },
    #[error("{what}: {reason}")]
    Payload { what: &'static str, reason: String },
}

/// Wraps `payload` in the versioned, checksummed envelope.
pub(crate) fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks the envelope of a record read from disk and returns its payload.
pub(crate) fn unseal<'a>(what: &'static str, raw: &'a [u8]) -> Result<&'a [u8], CodecError> {
    if raw.len() < HEADER_LEN {
        return Err(CodecError::TooShort {
            what,
            len: raw.len(),
        });
    }
    if raw[0] != FORMAT_V1 {
        return Err(CodecError::UnknownFormat {
            what,
            found: raw[0],
        });
    }
    let stored = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
    let payload = &raw[HEADER_LEN..];
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(CodecError::Checksum {
            what,
            stored,
            computed,
        });
    }
    Ok(payload)
}

/// Seals a serde_json encoding of `value`.
pub(crate) fn seal_json<T: serde::Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, CodecError> {
    let json = serde_json::to_vec(value).map_err(|e| CodecError::Payload {
        what,
        reason: e.to_string(),
    })?;
    Ok(seal(&json))
}

/// Unseals and decodes a serde_json record.
pub(crate) fn unseal_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    raw: &[u8],
) -> Result<T, CodecError> {
    serde_json::from_slice(unseal(what, raw)?).map_err(|e| CodecError::Payload {
        what,
        reason: e.to_string(),
    })
}

/// Seals a prost message.
pub(crate) fn seal_prost<M: prost::Message>(msg: &M) -> Vec<u8> {
    seal(&msg.encode_to_vec())
}

/// Unseals and decodes a prost record.
pub(crate) fn unseal_prost<M: prost::Message + Default>(
    what: &'static str,
    raw: &[u8],
) -> Result<M, CodecError> {
    M::decode(unseal(what, raw)?).map_err(|e| CodecError::Payload {
        what,
        reason: e.to_string(),
    })
}

/// Seals a u64 (big-endian).
pub(crate) fn seal_u64(v: u64) -> Vec<u8> {
    seal(&v.to_be_bytes())
}

/// Unseals a u64 written by [`seal_u64`].
pub(crate) fn unseal_u64(what: &'static str, raw: &[u8]) -> Result<u64, CodecError> {
    decode_u64(what, unseal(what, raw)?)
}

/// Encodes a log index or a revision as a RocksDB key.
pub(crate) fn u64_key(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Decodes an 8-byte big-endian integer (a key from [`u64_key`], or a counter value).
pub(crate) fn decode_u64(what: &'static str, raw: &[u8]) -> Result<u64, CodecError> {
    let arr: [u8; 8] = raw.try_into().map_err(|_| CodecError::BadInteger {
        what,
        len: raw.len(),
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// The counter stored at `key` as `value` (8-byte big-endian), moved on by `count`.
pub(crate) fn advanced_counter_value(
    key: &str,
    value: &[u8],
    count: u64,
) -> Result<u64, crate::MetaError> {
    let current = decode_u64("counter", value).map_err(|_| crate::MetaError::InvalidKey {
        key: key.to_string(),
        reason: "not a counter: value is not an 8-byte big-endian u64",
    })?;
    current
        .checked_add(count)
        .ok_or_else(|| crate::MetaError::InvalidKey {
            key: key.to_string(),
            reason: "counter is exhausted (u64::MAX)",
        })
}

/// The least key after every key starting with `prefix` (`None`: there is none, the prefix
/// being all 0xFF bytes).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a prefix sorts after every key under it and before every key after them.
    #[test]
    fn prefix_ends_bound_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/txn-acks/"), Some(b"/txn-acks0".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        let end = prefix_end(b"/t/").expect("end");
        assert!(b"/t/\xff\xff".as_slice() < end.as_slice());
        assert!(end.as_slice() <= b"/t0".as_slice());
    }

    /// A sealed record unseals to the same payload.
    #[test]
    fn seal_then_unseal_round_trips() {
        let sealed = seal(b"hello");
        assert_eq!(unseal("t", &sealed).ok(), Some(&b"hello"[..]));
        assert_eq!(unseal_u64("t", &seal_u64(42)).ok(), Some(42));
    }

    /// A flipped payload bit, an unknown format and a truncated record are all typed errors.
    #[test]
    fn corrupt_records_are_rejected_with_typed_errors() {
        let mut sealed = seal(b"hello");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(
            unseal("t", &sealed),
            Err(CodecError::Checksum { .. })
        ));
        let mut sealed = seal(b"hello");
        sealed[0] = 9;
        assert!(matches!(
            unseal("t", &sealed),
            Err(CodecError::UnknownFormat { found: 9, .. })
        ));
        assert!(matches!(
            unseal("t", &[1, 2]),
            Err(CodecError::TooShort { len: 2, .. })
        ));
        assert!(matches!(
            decode_u64("t", &[1, 2, 3]),
            Err(CodecError::BadInteger { len: 3, .. })
        ));
    }

    /// Big-endian keys sort numerically under byte-wise comparison.
    #[test]
    fn u64_keys_sort_numerically() {
        assert!(u64_key(255) < u64_key(256));
        assert!(u64_key(1) < u64_key(u64::MAX));
    }
}
