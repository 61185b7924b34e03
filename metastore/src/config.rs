//! [`MetaStoreConfig`]: limits, raft timing and snapshot policy, with validation.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A configuration field is out of its allowed range.
#[derive(Debug, thiserror::Error)]
#[error("invalid metastore config: {field}: {reason}")]
pub struct ConfigError {
    /// The offending field, as spelled in the TOML file.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub reason: String,
}

/// Configuration of a metastore node (`[metastore]` in the server's TOML file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetaStoreConfig {
    /// Largest value accepted by `put`, in bytes. Default 1 MiB; allowed 1 B ..= 64 MiB.
    pub max_value_size: usize,
    /// Build a state-machine snapshot after this many log entries since the last one.
    /// Default 10 000; at least 1.
    pub snapshot_every_logs: u64,
    /// Log entries kept behind a snapshot (for followers catching up without one). Default 1 000.
    pub max_in_snapshot_log_to_keep: u64,
    /// Leader heartbeat interval, ms. Default 250.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomised election timeout, ms; must exceed the heartbeat interval.
    /// Default 1 000.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout, ms; must exceed the lower bound.
    /// Default 2 000.
    pub election_timeout_max_ms: u64,
    /// How long `open_standalone` waits for leadership before failing, ms. Default 30 000.
    pub startup_timeout_ms: u64,
    /// Capacity (in applied batches) of the live watch channel. A watcher that falls further
    /// behind re-reads the history column family instead of losing events. Default 1 024.
    pub watch_channel_capacity: usize,
    /// How long a request may wait for a leader (elections, forwarding) before it fails.
    pub request_timeout_ms: u64,
    /// Shortest lease TTL granted, ms. Default 1 000; at least 2 × `heartbeat_interval_ms`.
    pub lease_min_ttl_ms: u64,
    /// Longest lease TTL granted, ms. Default 3 600 000 (an hour).
    pub lease_max_ttl_ms: u64,
    /// Extra time a new leader gives every lease (on top of its TTL) before expiring it, so
    /// clients can find the new leader and keep their leases alive. Default 2 000 ms.
    pub lease_grace_ms: u64,
    /// How often the leader checks lease deadlines and the history size, ms. Default 100.
    pub housekeeping_interval_ms: u64,
    /// The leader compacts history older than this many revisions (0: never compact
    /// automatically; `MetaStore::compact` still works). Default 100 000.
    pub history_keep_revisions: u64,
}

impl Default for MetaStoreConfig {
    fn default() -> Self {
        MetaStoreConfig {
            max_value_size: 1024 * 1024,
            snapshot_every_logs: 10_000,
            max_in_snapshot_log_to_keep: 1_000,
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            startup_timeout_ms: 30_000,
            watch_channel_capacity: 1_024,
            request_timeout_ms: 10_000,
            lease_min_ttl_ms: 1_000,
            lease_max_ttl_ms: 3_600_000,
            lease_grace_ms: 2_000,
            housekeeping_interval_ms: 100,
            history_keep_revisions: 100_000,
        }
    }
}

/// Largest allowed `max_value_size`.
const MAX_VALUE_SIZE_LIMIT: usize = 64 * 1024 * 1024;

impl MetaStoreConfig {
    /// Checks every field against its allowed range, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: String| Err(ConfigError { field, reason });
        if self.max_value_size == 0 || self.max_value_size > MAX_VALUE_SIZE_LIMIT {
            return bad(
                "max_value_size",
                format!(
                    "{} is outside 1..={MAX_VALUE_SIZE_LIMIT}",
                    self.max_value_size
                ),
            );
        }
        if self.snapshot_every_logs == 0 {
            return bad("snapshot_every_logs", "must be at least 1".into());
        }
        if self.heartbeat_interval_ms == 0 {
            return bad("heartbeat_interval_ms", "must be at least 1".into());
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return bad(
                "election_timeout_min_ms",
                format!(
                    "{} must be greater than heartbeat_interval_ms ({})",
                    self.election_timeout_min_ms, self.heartbeat_interval_ms
                ),
            );
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return bad(
                "election_timeout_max_ms",
                format!(
                    "{} must be greater than election_timeout_min_ms ({})",
                    self.election_timeout_max_ms, self.election_timeout_min_ms
                ),
            );
        }
        if self.startup_timeout_ms == 0 {
            return bad("startup_timeout_ms", "must be at least 1".into());
        }
        if self.watch_channel_capacity == 0 {
            return bad("watch_channel_capacity", "must be at least 1".into());
        }
        if self.lease_min_ttl_ms < 2 * self.heartbeat_interval_ms {
            return bad(
                "lease_min_ttl_ms",
                format!(
                    "{} must be at least twice heartbeat_interval_ms ({})",
                    self.lease_min_ttl_ms, self.heartbeat_interval_ms
                ),
            );
        }
        if self.lease_max_ttl_ms < self.lease_min_ttl_ms {
            return bad(
                "lease_max_ttl_ms",
                format!(
                    "{} must be at least lease_min_ttl_ms ({})",
                    self.lease_max_ttl_ms, self.lease_min_ttl_ms
                ),
            );
        }
        if self.housekeeping_interval_ms == 0 {
            return bad("housekeeping_interval_ms", "must be at least 1".into());
        }
        Ok(())
    }

    /// The openraft configuration this metastore config implies (validated by openraft too).
    /// Entries per AppendEntries RPC: few enough that one RPC fits the node RPC frame even
    /// when every entry is a full group-commit batch ending in a value of the largest size
    /// (log entries travel as JSON with hex values: under three times their raw bytes).
    fn max_entries_per_append(&self) -> u64 {
        let worst_entry = 3 * (crate::group_commit::MAX_BATCH_BYTES + self.max_value_size);
        (crate::rpc::MAX_RPC_FRAME / worst_entry).clamp(1, 300) as u64
    }

    pub(crate) fn raft_config(&self) -> Result<Arc<openraft::Config>, ConfigError> {
        self.validate()?;
        let config = openraft::Config {
            cluster_name: "strata-metastore".to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every_logs),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            max_payload_entries: self.max_entries_per_append(),
            ..Default::default()
        };
        let config = config.validate().map_err(|e| ConfigError {
            field: "raft",
            reason: e.to_string(),
        })?;
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are valid and translate into a valid openraft config.
    #[test]
    fn defaults_are_valid() {
        let c = MetaStoreConfig::default();
        assert!(c.validate().is_ok());
        assert!(c.raft_config().is_ok());
        assert_eq!(c.max_value_size, 1 << 20);
        assert_eq!(
            c.max_entries_per_append(),
            17,
            "17 x 3.75 MiB fits a 64 MiB frame"
        );
        assert_eq!(c.snapshot_every_logs, 10_000);
    }

    /// Out-of-range fields are rejected and named.
    #[test]
    fn bad_fields_are_named() {
        let c = MetaStoreConfig {
            election_timeout_min_ms: 100,
            ..Default::default()
        };
        assert_eq!(
            c.validate().err().map(|e| e.field),
            Some("election_timeout_min_ms")
        );
        let c = MetaStoreConfig {
            max_value_size: 0,
            ..Default::default()
        };
        assert_eq!(c.validate().err().map(|e| e.field), Some("max_value_size"));
    }

    /// A partial TOML-like document fills the rest from defaults; unknown fields are errors.
    #[test]
    fn partial_config_uses_defaults() -> Result<(), serde_json::Error> {
        let c: MetaStoreConfig = serde_json::from_str(r#"{"max_value_size": 10}"#)?;
        assert_eq!(c.max_value_size, 10);
        assert_eq!(c.heartbeat_interval_ms, 250);
        assert!(serde_json::from_str::<MetaStoreConfig>(r#"{"nope": 1}"#).is_err());
        Ok(())
    }
}
