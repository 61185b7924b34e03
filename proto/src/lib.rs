//! Wire and disk types of Strata: a pure codec crate, with no I/O and no async.
//!
//! Everything that crosses a process boundary or lands on disk is defined here, so every
//! other crate agrees on one format.
//!
//! # Layout
//!
//! - [`ids`]: newtype ids (`LedgerId`, `EntryId`, `MessageId`, ...).
//! - [`topic`]: the validated [`TopicName`] (`persistent://tenant/namespace/topic`).
//! - [`frame`]: the length-prefixed frame codec with a maximum frame size.
//! - [`handshake`]: protocol version negotiation.
//! - [`hash`]: the stable hash of topic names and message keys.
//! - [`error`]: stable numeric error codes carried on the wire.
//! - [`pb`]: the prost types generated from `schemas/*.proto` at build time.

pub mod error;
pub mod frame;
pub mod handshake;
pub mod hash;
pub mod ids;
pub mod topic;

pub use error::{ErrorCode, WireError};
pub use frame::{DEFAULT_MAX_FRAME_SIZE, FrameDecoder, FrameError, encode_frame};
pub use handshake::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, negotiate};
pub use hash::stable_hash;
pub use ids::{EntryId, LedgerId, MessageId, Position, TxnId};
pub use topic::{NamespaceName, TopicName, TopicNameError};

/// Generated protobuf types, one module per `.proto` package.
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod pb {
    pub mod common {
        include!(concat!(env!("OUT_DIR"), "/strata.common.rs"));
    }
    pub mod client {
        include!(concat!(env!("OUT_DIR"), "/strata.client.rs"));
    }
    pub mod bookie {
        include!(concat!(env!("OUT_DIR"), "/strata.bookie.rs"));
    }
    pub mod metastore {
        include!(concat!(env!("OUT_DIR"), "/strata.metastore.rs"));
    }
}

/// ALPN of the client <-> broker protocol.
pub const ALPN_CLIENT: &[u8] = b"strata/1";

/// Most messages one transactional ack request may name (after a cumulative ack is
/// expanded): its pending-ack records go into one metastore write, which must stay well under
/// the size the metastore's replication assumes. Clients split longer lists.
pub const MAX_TXN_ACKS_PER_REQUEST: usize = 16_384;
/// ALPN of the ledger client <-> bookie protocol.
pub const ALPN_BOOKIE: &[u8] = b"strata-bookie/1";
/// ALPN of the node <-> metastore protocol.
pub const ALPN_METASTORE: &[u8] = b"strata-meta/1";
