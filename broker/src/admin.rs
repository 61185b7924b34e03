//! Admin requests' policy fields to and from [`NamespacePolicies`].

use strata_metastore::tables::{NamespacePolicies, Record, ReplicationPolicy, RetentionPolicy};
use strata_proto::pb::client::CreateNamespace;

use crate::BrokerError;
use crate::bundles::BundleLayout;

/// Most bundles a namespace may be created with.
pub const MAX_BUNDLES: u32 = 1024;

/// The policies a `CreateNamespace` asks for; unset fields keep the defaults.
pub fn policies_from(c: &CreateNamespace) -> Result<NamespacePolicies, BrokerError> {
    let mut policies = NamespacePolicies::default();
    if let Some(auto) = c.auto_create_topics {
        policies.auto_create_topics = auto;
    }
    match (c.ensemble_size, c.write_quorum, c.ack_quorum) {
        (None, None, None) => {}
        (Some(e), Some(qw), Some(qa)) => {
            policies.replication = Some(ReplicationPolicy {
                ensemble_size: e,
                write_quorum: qw,
                ack_quorum: qa,
            });
        }
        _ => {
            return Err(BrokerError::InvalidPolicy(
                "give ensemble size, write quorum and ack quorum together".into(),
            ));
        }
    }
    match (c.retention_minutes, c.retention_size_mb) {
        (None, None) => {}
        (Some(minutes), Some(size_mb)) => {
            policies.retention = Some(RetentionPolicy { minutes, size_mb });
        }
        _ => {
            return Err(BrokerError::InvalidPolicy(
                "give retention minutes and size together".into(),
            ));
        }
    }
    if let Some(n) = c.bundles {
        if n == 0 || n > MAX_BUNDLES {
            return Err(BrokerError::InvalidPolicy(format!(
                "bundles must be 1 to {MAX_BUNDLES}, got {n}"
            )));
        }
        policies.bundles = Some(BundleLayout::equal(n).boundaries().to_vec());
    }
    Ok(policies)
}

/// The stored JSON of the policies (what `strata namespaces policies` prints).
pub fn policies_json(policies: &NamespacePolicies) -> String {
    policies
        .encode()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("{{\"error\": {e:?}}}"))
}
