//! Admin requests' policy fields to and from [`NamespacePolicies`].

use strata_metastore::tables::{
    BacklogQuota, BacklogQuotaPolicy, LedgerRolloverPolicy, NamespacePolicies, Record,
    ReplicationPolicy, RetentionPolicy,
};
use strata_proto::pb::client::CreateNamespace;

use crate::BrokerError;
use crate::bundles::BundleLayout;
use crate::managed_ledger::ManagedLedgerConfig;

/// Most bundles a namespace may be created with.
pub const MAX_BUNDLES: u32 = 1024;

/// The policies a `CreateNamespace` asks for; unset fields keep the defaults.
pub fn policies_from(c: &CreateNamespace) -> Result<NamespacePolicies, BrokerError> {
    let mut policies = NamespacePolicies::default();
    apply_changes(&mut policies, c)?;
    Ok(policies)
}

/// Sets the fields of `c` that are set onto `policies` (an update keeps the rest).
pub fn apply_changes(
    policies: &mut NamespacePolicies,
    c: &CreateNamespace,
) -> Result<(), BrokerError> {
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
    if let Some(limit_mb) = c.backlog_quota_mb {
        let policy = match c.backlog_quota_policy.as_deref() {
            // An update of the limit alone keeps the policy in force.
            None => policies
                .backlog_quota
                .map_or(BacklogQuotaPolicy::ProducerException, |q| q.policy),
            Some("producer_exception") => BacklogQuotaPolicy::ProducerException,
            Some("consumer_backlog_eviction") => BacklogQuotaPolicy::ConsumerBacklogEviction,
            Some(other) => {
                return Err(BrokerError::InvalidPolicy(format!(
                    "backlog quota policy must be producer_exception or consumer_backlog_eviction, got {other:?}"
                )));
            }
        };
        if limit_mb == 0 {
            return Err(BrokerError::InvalidPolicy(
                "a backlog quota must be at least 1 MB".into(),
            ));
        }
        policies.backlog_quota = Some(BacklogQuota { limit_mb, policy });
    } else if c.backlog_quota_policy.is_some() {
        return Err(BrokerError::InvalidPolicy(
            "a backlog quota policy needs a limit".into(),
        ));
    }
    let rollover = (
        c.rollover_max_entries,
        c.rollover_max_size_mb,
        c.rollover_max_minutes,
    );
    if rollover != (None, None, None) {
        if [rollover.0, rollover.1, rollover.2].contains(&Some(0)) {
            return Err(BrokerError::InvalidPolicy(
                "ledger rollover limits must be at least 1".into(),
            ));
        }
        let mut r = policies.ledger_rollover.unwrap_or_default();
        r.max_entries = rollover.0.or(r.max_entries);
        r.max_size_mb = rollover.1.or(r.max_size_mb);
        r.max_minutes = rollover.2.or(r.max_minutes);
        policies.ledger_rollover = Some(r);
    }
    Ok(())
}

/// The managed-ledger configuration of a topic in a namespace with `policy`: the broker's
/// `base`, with the limits the policy sets.
pub fn with_rollover(
    mut base: ManagedLedgerConfig,
    policy: Option<LedgerRolloverPolicy>,
) -> ManagedLedgerConfig {
    let Some(p) = policy else { return base };
    if let Some(n) = p.max_entries {
        base.max_entries_per_ledger = n;
    }
    if let Some(mb) = p.max_size_mb {
        base.max_ledger_bytes = mb.saturating_mul(1024 * 1024);
    }
    if let Some(minutes) = p.max_minutes {
        base.max_ledger_age = Some(std::time::Duration::from_secs(minutes.saturating_mul(60)));
    }
    base
}

/// The stored JSON of the policies (what `strata namespaces policies` prints).
pub fn policies_json(policies: &NamespacePolicies) -> String {
    policies
        .encode()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("{{\"error\": {e:?}}}"))
}
