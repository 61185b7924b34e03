//! Standalone configuration: a TOML file whose every field has a default, overridden by
//! flags and `STRATA_*` environment variables, checked by one `validate()`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StandaloneConfig {
    pub data_dir: PathBuf,
    /// QUIC address for clients.
    pub listen: SocketAddr,
    /// HTTP side port: /healthz, /readyz, /metrics.
    pub http: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_frame_size: usize,
    pub max_entries_per_ledger: u64,
    pub max_ledger_bytes: u64,
    pub stream_receive_window: u32,
    pub connection_receive_window: u32,
    /// Write each transaction's record at begin even when its client asks for a lazy begin.
    pub eager_begin: bool,
    /// Seconds a producer may send nothing new before dedup forgets it (Pulsar's producer
    /// inactivity timeout; a resend after that is stored again).
    pub dedup_producer_expiry_secs: u64,
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data/standalone"),
            listen: SocketAddr::from(([127, 0, 0, 1], 6650)),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            max_frame_size: strata_proto::DEFAULT_MAX_FRAME_SIZE,
            max_entries_per_ledger: 50_000,
            max_ledger_bytes: 512 * 1024 * 1024,
            stream_receive_window: 16 * 1024 * 1024,
            connection_receive_window: 64 * 1024 * 1024,
            eager_begin: false,
            dedup_producer_expiry_secs: strata_broker::DEFAULT_DEDUP_PRODUCER_EXPIRY.as_secs(),
        }
    }
}

/// A configuration value outside its allowed range, named.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid config: {field} = {value}: {allowed}")]
pub struct ConfigError {
    pub field: &'static str,
    pub value: String,
    pub allowed: String,
}

impl StandaloneConfig {
    /// Reads a TOML file; unknown keys are errors so typos do not pass silently.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, value: String, allowed: &str| {
            Err(ConfigError {
                field,
                value,
                allowed: allowed.to_owned(),
            })
        };
        if !(1024..=64 * 1024 * 1024).contains(&self.max_frame_size) {
            return err(
                "max_frame_size",
                self.max_frame_size.to_string(),
                "must be 1024..=67108864 bytes",
            );
        }
        if self.max_entries_per_ledger == 0 {
            return err("max_entries_per_ledger", "0".into(), "must be at least 1");
        }
        if self.max_ledger_bytes < 1024 {
            return err(
                "max_ledger_bytes",
                self.max_ledger_bytes.to_string(),
                "must be at least 1024",
            );
        }
        if self.stream_receive_window < 64 * 1024
            || self.connection_receive_window < self.stream_receive_window
        {
            return err(
                "stream_receive_window",
                format!(
                    "{}/{}",
                    self.stream_receive_window, self.connection_receive_window
                ),
                "stream window must be >= 65536 and <= connection_receive_window",
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return err(
                "tls_cert/tls_key",
                format!("{:?}/{:?}", self.tls_cert, self.tls_key),
                "give both or neither",
            );
        }
        if self.dedup_producer_expiry_secs == 0 {
            return err(
                "dedup_producer_expiry_secs",
                "0".into(),
                "must be at least 1 (a resend is only caught while its producer is remembered)",
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return err("data_dir", String::new(), "must not be empty");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_a_partial_file_keeps_the_other_defaults() {
        StandaloneConfig::default()
            .validate()
            .expect("defaults valid");
        let c: StandaloneConfig = toml::from_str("listen = \"127.0.0.1:7000\"").expect("parse");
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.http, StandaloneConfig::default().http);
    }

    #[test]
    fn bad_values_name_the_field_and_the_allowed_range() {
        let c = StandaloneConfig {
            max_frame_size: 10,
            ..Default::default()
        };
        let e = c.validate().expect_err("too small");
        assert_eq!(e.field, "max_frame_size");
        assert!(e.to_string().contains("1024..="));
        let c = StandaloneConfig {
            tls_cert: Some("a.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            c.validate().expect_err("half TLS").field,
            "tls_cert/tls_key"
        );
        let c = StandaloneConfig {
            dedup_producer_expiry_secs: 0,
            ..Default::default()
        };
        assert_eq!(
            c.validate().expect_err("no expiry").field,
            "dedup_producer_expiry_secs"
        );
        assert!(
            toml::from_str::<StandaloneConfig>("lisen = \"x\"").is_err(),
            "unknown keys are refused"
        );
    }
}
