//! Topic ownership: `/ownership/<tenant>/<namespace>/<bundle range>` → [`OwnershipRecord`]
//! (JSON): which broker serves the topics of a namespace bundle, under which lease.
//!
//! A bundle is a slice of the 32-bit hash space of a namespace's topic names, as in Pulsar;
//! its range is spelled `0x<lower>_0x<upper>` with 8 lowercase hex digits each, e.g.
//! `0x00000000_0xffffffff` for the whole namespace. Only the record and the keys exist so
//! far; the lease is the metastore's, and its id is kept here as a plain number.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use strata_proto::NamespaceName;

use super::{JsonRecord, Listing, Schema};

/// Prefix of every ownership key.
pub const PREFIX: &str = "/ownership/";

/// Identity of a broker, as it names itself in ownership records.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BrokerId(pub String);

impl fmt::Display for BrokerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A slice `[lower, upper)` of the topic-name hash space (the last bundle's `upper`,
/// `0xffffffff`, is inclusive, as in Pulsar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BundleRange {
    lower: u32,
    upper: u32,
}

impl BundleRange {
    /// The whole hash space: one bundle for the namespace.
    pub const FULL: BundleRange = BundleRange {
        lower: 0,
        upper: u32::MAX,
    };

    /// A range; `None` unless `lower < upper`.
    pub fn new(lower: u32, upper: u32) -> Option<Self> {
        (lower < upper).then_some(BundleRange { lower, upper })
    }

    pub fn lower(&self) -> u32 {
        self.lower
    }

    pub fn upper(&self) -> u32 {
        self.upper
    }
}

impl fmt::Display for BundleRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08x}_0x{:08x}", self.lower, self.upper)
    }
}

impl FromStr for BundleRange {
    type Err = String;

    /// Accepts only the spelling `Display` produces, so one range has one key.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a bundle range like 0x00000000_0xffffffff");
        let bound = |part: &str| -> Option<u32> {
            let hex = part.strip_prefix("0x")?;
            if hex.len() != 8 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return None;
            }
            u32::from_str_radix(hex, 16).ok()
        };
        let (lower, upper) = s.split_once('_').ok_or_else(bad)?;
        let lower = bound(lower).ok_or_else(bad)?;
        let upper = bound(upper).ok_or_else(bad)?;
        BundleRange::new(lower, upper)
            .ok_or_else(|| format!("{s:?}: lower bound is not below upper"))
    }
}

/// A namespace bundle: the unit of topic ownership.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespaceBundle {
    pub namespace: NamespaceName,
    pub range: BundleRange,
}

impl fmt::Display for NamespaceBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.range)
    }
}

/// Who owns a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipRecord {
    pub broker_id: BrokerId,
    /// Where clients reach the owner (`host:port` of its QUIC endpoint).
    pub address: String,
    /// The metastore lease the ownership is bound to: the record goes when it expires.
    pub lease_id: u64,
    pub acquired_ms: u64,
}

impl JsonRecord for OwnershipRecord {
    const FORMAT_VERSION: u32 = 1;
}

/// The ownership table, keyed by bundle; list the owned bundles of a namespace.
#[derive(Debug)]
pub struct Ownership;

impl Schema for Ownership {
    type Key = NamespaceBundle;
    type Record = OwnershipRecord;
    const NAME: &'static str = "bundle ownership";

    fn key(bundle: &NamespaceBundle) -> String {
        format!("{PREFIX}{bundle}")
    }
}

impl Listing for Ownership {
    type Parent = NamespaceName;

    fn prefix(ns: &NamespaceName) -> String {
        format!("{PREFIX}{ns}/")
    }

    fn child(ns: &NamespaceName, rest: &str) -> Result<NamespaceBundle, String> {
        Ok(NamespaceBundle {
            namespace: ns.clone(),
            range: rest.parse()?,
        })
    }
}
