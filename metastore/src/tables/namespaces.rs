//! Namespaces: `/namespaces/<tenant>/<namespace>` → [`NamespacePolicies`] (JSON).

use serde::{Deserialize, Serialize};
use strata_proto::NamespaceName;

use super::tenants::TenantName;
use super::{JsonRecord, Listing, Schema};

/// Prefix of every namespace key.
pub const PREFIX: &str = "/namespaces/";

/// Policies of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamespacePolicies {
    /// Create a topic on its first producer or consumer instead of refusing it.
    pub auto_create_topics: bool,
}

impl Default for NamespacePolicies {
    fn default() -> Self {
        Self {
            auto_create_topics: true,
        }
    }
}

impl JsonRecord for NamespacePolicies {
    const FORMAT_VERSION: u32 = 1;
}

/// The namespaces table; list the namespaces of a tenant.
#[derive(Debug)]
pub struct Namespaces;

impl Schema for Namespaces {
    type Key = NamespaceName;
    type Record = NamespacePolicies;
    const NAME: &'static str = "namespace";

    fn key(ns: &NamespaceName) -> String {
        format!("{PREFIX}{ns}")
    }
}

impl Listing for Namespaces {
    type Parent = TenantName;

    fn prefix(tenant: &TenantName) -> String {
        format!("{PREFIX}{tenant}/")
    }

    fn child(tenant: &TenantName, rest: &str) -> Result<NamespaceName, String> {
        NamespaceName::new(tenant.as_str(), rest).map_err(|e| e.to_string())
    }
}
