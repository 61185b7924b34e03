//! [`Record`]: how a table's value is encoded, with a `format_version` on every record so a
//! later release can migrate it; [`JsonRecord`] gives a serde type that encoding.
//!
//! JSON records are stored as one object, `{"format_version": N, <the record's fields>}`.
//! The version is written by the codec, not by callers, and checked before the fields are
//! read: a newer version is refused with [`DecodeError::FutureVersion`] (its fields may mean
//! something this build does not know), an older one goes through [`JsonRecord::upgrade`].

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::DecodeError;

/// A value stored in a table.
pub trait Record: Sized + Send + Sync + 'static {
    /// The format this build writes, and the newest it reads.
    const FORMAT_VERSION: u32;

    /// The stored bytes, stamped with [`Record::FORMAT_VERSION`].
    fn encode(&self) -> Result<Bytes, String>;

    /// Reads stored bytes back; never panics, whatever they are.
    fn decode(raw: &[u8]) -> Result<Self, DecodeError>;
}

/// A record stored as a JSON object with a `format_version` field (see the module docs).
///
/// The type's own fields must not include `format_version`, and it must not use
/// `deny_unknown_fields` (the object it reads carries `format_version` too).
pub trait JsonRecord: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The format this build writes, and the newest it reads.
    const FORMAT_VERSION: u32;

    /// Reads a record stored in the older format `version` (`raw` is the whole stored
    /// object). A release that changes a record's format keeps the old one readable here;
    /// no record has an older format yet, so the default refuses.
    fn upgrade(version: u32, raw: &[u8]) -> Result<Self, DecodeError> {
        let _ = raw;
        Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: Self::FORMAT_VERSION,
        })
    }
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    format_version: u32,
    #[serde(flatten)]
    record: &'a T,
}

/// Only the version, so it is checked before the rest is interpreted.
#[derive(Deserialize)]
struct VersionOnly {
    format_version: Option<u32>,
}

impl<T: JsonRecord> Record for T {
    const FORMAT_VERSION: u32 = <T as JsonRecord>::FORMAT_VERSION;

    fn encode(&self) -> Result<Bytes, String> {
        let envelope = Envelope {
            format_version: <T as JsonRecord>::FORMAT_VERSION,
            record: self,
        };
        serde_json::to_vec(&envelope)
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    }

    fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        let malformed = |e: serde_json::Error| DecodeError::Malformed(e.to_string());
        let supported = <T as JsonRecord>::FORMAT_VERSION;
        let found = serde_json::from_slice::<VersionOnly>(raw)
            .map_err(malformed)?
            .format_version
            .ok_or(DecodeError::MissingFormatVersion)?;
        if found > supported {
            return Err(DecodeError::FutureVersion { found, supported });
        }
        if found < supported {
            return T::upgrade(found, raw);
        }
        serde_json::from_slice(raw).map_err(malformed)
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it), for `created_ms` fields.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
