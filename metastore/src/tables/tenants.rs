//! Tenants: `/tenants/<tenant>` → [`TenantRecord`] (JSON).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use strata_proto::{NamespaceName, TopicNameError};

use super::{JsonRecord, Listing, Schema};

/// Prefix of every tenant key.
pub const PREFIX: &str = "/tenants/";

/// A validated tenant name (the rules of a [`NamespaceName`]'s tenant part).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantName(String);

impl TenantName {
    pub fn new(name: &str) -> Result<Self, TopicNameError> {
        // The namespace part is a placeholder: only the tenant is checked here, by the one
        // set of naming rules strata_proto keeps.
        NamespaceName::new(name, "default")?;
        Ok(TenantName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&NamespaceName> for TenantName {
    fn from(ns: &NamespaceName) -> Self {
        TenantName(ns.tenant().to_owned())
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant: who administers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// Roles allowed to administer the tenant's namespaces.
    pub admin_roles: BTreeSet<String>,
    pub created_ms: u64,
}

impl JsonRecord for TenantRecord {
    const FORMAT_VERSION: u32 = 1;
}

/// The tenants table; list with parent `()`.
#[derive(Debug)]
pub struct Tenants;

impl Schema for Tenants {
    type Key = TenantName;
    type Record = TenantRecord;
    const NAME: &'static str = "tenant";

    fn key(tenant: &TenantName) -> String {
        format!("{PREFIX}{tenant}")
    }
}

impl Listing for Tenants {
    type Parent = ();

    fn prefix(_: &()) -> String {
        PREFIX.to_owned()
    }

    fn child(_: &(), rest: &str) -> Result<TenantName, String> {
        TenantName::new(rest).map_err(|e| e.to_string())
    }
}
