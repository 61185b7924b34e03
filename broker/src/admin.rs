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
    if !c.clear.is_empty() {
        return Err(BrokerError::InvalidPolicy(
            "a new namespace has no policies to clear".into(),
        ));
    }
    let mut policies = NamespacePolicies::default();
    apply_changes(&mut policies, c)?;
    Ok(policies)
}

/// A policy an update may remove (`CreateNamespace.clear`), by its name there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clearable {
    Replication,
    Retention,
    BacklogQuota,
    LedgerRollover,
}

impl Clearable {
    const ALL: [(&'static str, Clearable); 4] = [
        ("replication", Clearable::Replication),
        ("retention", Clearable::Retention),
        ("backlog_quota", Clearable::BacklogQuota),
        ("ledger_rollover", Clearable::LedgerRollover),
    ];

    fn parse(name: &str) -> Result<Clearable, BrokerError> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                BrokerError::InvalidPolicy(format!(
                    "cannot clear {name:?}: the policies that can be cleared are {}",
                    names.join(", ")
                ))
            })
    }

    /// Whether `c` also sets this policy (a contradiction).
    fn is_set_by(self, c: &CreateNamespace) -> bool {
        match self {
            Clearable::Replication => {
                c.ensemble_size.is_some() || c.write_quorum.is_some() || c.ack_quorum.is_some()
            }
            Clearable::Retention => c.retention_minutes.is_some() || c.retention_size_mb.is_some(),
            Clearable::BacklogQuota => {
                c.backlog_quota_mb.is_some() || c.backlog_quota_policy.is_some()
            }
            Clearable::LedgerRollover => {
                c.rollover_max_entries.is_some()
                    || c.rollover_max_size_mb.is_some()
                    || c.rollover_max_minutes.is_some()
            }
        }
    }

    fn clear(self, policies: &mut NamespacePolicies) {
        match self {
            Clearable::Replication => policies.replication = None,
            Clearable::Retention => policies.retention = None,
            Clearable::BacklogQuota => policies.backlog_quota = None,
            Clearable::LedgerRollover => policies.ledger_rollover = None,
        }
    }
}

/// Removes the policies `c` names in `clear`, then sets the fields of `c` that are set onto
/// `policies` (an update keeps the rest).
pub fn apply_changes(
    policies: &mut NamespacePolicies,
    c: &CreateNamespace,
) -> Result<(), BrokerError> {
    for name in &c.clear {
        let clearable = Clearable::parse(name)?;
        if clearable.is_set_by(c) {
            return Err(BrokerError::InvalidPolicy(format!(
                "{name} is both set and cleared"
            )));
        }
        clearable.clear(policies);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn update(c: CreateNamespace) -> CreateNamespace {
        CreateNamespace {
            namespace: "public/ns".into(),
            ..c
        }
    }

    fn all_set() -> NamespacePolicies {
        policies_from(&update(CreateNamespace {
            ensemble_size: Some(3),
            write_quorum: Some(2),
            ack_quorum: Some(2),
            retention_minutes: Some(60),
            retention_size_mb: Some(10),
            backlog_quota_mb: Some(5),
            rollover_max_entries: Some(100),
            ..CreateNamespace::default()
        }))
        .expect("valid")
    }

    /// Each clearable policy goes back to unset (the broker's default) and the others stay.
    #[test]
    fn an_update_clears_the_policies_it_names_and_keeps_the_rest() {
        for (name, _) in Clearable::ALL {
            let mut p = all_set();
            let before = p.clone();
            apply_changes(
                &mut p,
                &update(CreateNamespace {
                    clear: vec![name.to_owned()],
                    ..CreateNamespace::default()
                }),
            )
            .expect("cleared");
            let mut expected = before;
            match name {
                "replication" => expected.replication = None,
                "retention" => expected.retention = None,
                "backlog_quota" => expected.backlog_quota = None,
                _ => expected.ledger_rollover = None,
            }
            assert_eq!(p, expected, "clearing {name}");
            assert_ne!(
                p,
                all_set(),
                "{name} was set, so clearing it changes something"
            );
        }
    }

    /// Unknown names, a policy both set and cleared, and a clear on creation are refused
    /// with `InvalidPolicy`.
    #[test]
    fn contradictory_or_unknown_clears_are_refused() {
        let refused = |c: CreateNamespace| {
            let mut p = all_set();
            match apply_changes(&mut p, &update(c)) {
                Err(BrokerError::InvalidPolicy(m)) => m,
                other => panic!("expected InvalidPolicy, got {other:?}"),
            }
        };
        let m = refused(CreateNamespace {
            clear: vec!["bundles".into()],
            ..CreateNamespace::default()
        });
        assert!(
            m.contains("backlog_quota"),
            "names what can be cleared: {m}"
        );
        let m = refused(CreateNamespace {
            clear: vec!["retention".into()],
            retention_minutes: Some(1),
            retention_size_mb: Some(1),
            ..CreateNamespace::default()
        });
        assert!(m.contains("both set and cleared"), "{m}");
        refused(CreateNamespace {
            clear: vec!["backlog_quota".into()],
            backlog_quota_policy: Some("producer_exception".into()),
            ..CreateNamespace::default()
        });
        assert!(matches!(
            policies_from(&update(CreateNamespace {
                clear: vec!["retention".into()],
                ..CreateNamespace::default()
            })),
            Err(BrokerError::InvalidPolicy(_))
        ));
    }
}
