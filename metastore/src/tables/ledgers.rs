//! Ledgers: `/ledgers/<id, 20 digits>` → protobuf [`LedgerMetadata`] (E/Qw/Qa, state, last
//! entry, fragments). Ids are zero-padded so a scan lists ledgers in id order, and come from
//! the counter [`super::counters::LEDGER_ID`]. Written by the ledger client (create, close,
//! recovery) by compare-and-set on the version it read.
//!
//! The record keeps its protobuf encoding; its own `format_version` field is the version
//! marker (proto3 has no presence, so 0 reads as "missing").

use bytes::Bytes;
use prost::Message;
use strata_proto::LedgerId;
use strata_proto::pb::bookie::LedgerMetadata;

use super::{DecodeError, Listing, Record, Schema};

/// Prefix of every ledger key.
pub const PREFIX: &str = "/ledgers/";

impl Record for LedgerMetadata {
    const FORMAT_VERSION: u32 = 1;

    fn encode(&self) -> Result<Bytes, String> {
        if self.format_version == Self::FORMAT_VERSION {
            return Ok(Bytes::from(self.encode_to_vec()));
        }
        let mut stamped = self.clone();
        stamped.format_version = Self::FORMAT_VERSION;
        Ok(Bytes::from(stamped.encode_to_vec()))
    }

    fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        let md = <LedgerMetadata as Message>::decode(raw)
            .map_err(|e| DecodeError::Malformed(format!("protobuf: {e}")))?;
        let supported = <Self as Record>::FORMAT_VERSION;
        match md.format_version {
            0 => Err(DecodeError::MissingFormatVersion),
            v if v == supported => Ok(md),
            found if found > supported => Err(DecodeError::FutureVersion { found, supported }),
            found => Err(DecodeError::UnsupportedVersion { found, supported }),
        }
    }
}

/// The ledgers table; list every ledger with parent `()`.
#[derive(Debug)]
pub struct Ledgers;

impl Schema for Ledgers {
    type Key = LedgerId;
    type Record = LedgerMetadata;
    const NAME: &'static str = "ledger";

    fn key(id: &LedgerId) -> String {
        format!("{PREFIX}{:020}", id.0)
    }
}

impl Listing for Ledgers {
    type Parent = ();

    fn prefix(_: &()) -> String {
        PREFIX.to_owned()
    }

    fn child(_: &(), rest: &str) -> Result<LedgerId, String> {
        if rest.len() != 20 || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{rest:?} is not a 20-digit ledger id"));
        }
        rest.parse()
            .map(LedgerId)
            .map_err(|e| format!("{rest:?}: {e}"))
    }
}
