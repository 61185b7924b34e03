//! Protocol version negotiation.
//!
//! The opener sends `Hello { protocol_version, min_protocol_version }`; the acceptor picks the
//! highest version both support or refuses with [`ErrorCode::IncompatibleVersion`](crate::ErrorCode).

use crate::pb::common::Hello;

/// The version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The peer's version range does not overlap ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "incompatible protocol: peer speaks versions {peer_min}..={peer_max}, this side {ours_min}..={ours_max}"
)]
pub struct IncompatibleVersion {
    pub peer_min: u32,
    pub peer_max: u32,
    pub ours_min: u32,
    pub ours_max: u32,
}

/// Picks the version to speak with a peer that sent `hello`.
pub fn negotiate(hello: &Hello) -> Result<u32, IncompatibleVersion> {
    let peer_max = hello.protocol_version;
    // A peer that did not fill the minimum speaks exactly its version.
    let peer_min = if hello.min_protocol_version == 0 {
        peer_max
    } else {
        hello.min_protocol_version
    };
    let agreed = peer_max.min(PROTOCOL_VERSION);
    if agreed < MIN_PROTOCOL_VERSION || agreed < peer_min || peer_min > peer_max {
        return Err(IncompatibleVersion {
            peer_min,
            peer_max,
            ours_min: MIN_PROTOCOL_VERSION,
            ours_max: PROTOCOL_VERSION,
        });
    }
    Ok(agreed)
}

/// The `Hello` this build sends.
pub fn hello(peer_name: &str) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        min_protocol_version: MIN_PROTOCOL_VERSION,
        peer_name: peer_name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(min: u32, max: u32) -> Hello {
        Hello {
            protocol_version: max,
            min_protocol_version: min,
            peer_name: "t".into(),
        }
    }

    #[test]
    fn same_version_agrees() {
        assert_eq!(negotiate(&hello("x")), Ok(PROTOCOL_VERSION));
    }

    #[test]
    fn newer_peer_that_still_speaks_ours_agrees_on_ours() {
        assert_eq!(
            negotiate(&peer(1, PROTOCOL_VERSION + 5)),
            Ok(PROTOCOL_VERSION)
        );
    }

    #[test]
    fn peer_without_overlap_is_refused_with_both_ranges() {
        let err =
            negotiate(&peer(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 2)).expect_err("too new");
        assert_eq!(err.peer_min, PROTOCOL_VERSION + 1);
        assert!(err.to_string().contains("incompatible protocol"));
        assert!(
            negotiate(&peer(0, 0)).is_err(),
            "version 0 was never released"
        );
    }
}
