//! In-process test harness: start a standalone on port 0 in a temporary directory, connect
//! clients to it, restart it on the same data.
//!
//! # Layout
//!
//! Everything is in this file: [`TestStandalone`] and [`client`].

use std::path::{Path, PathBuf};

use strata_cli::config::StandaloneConfig;
use strata_cli::standalone::Standalone;
use strata_client::{Client, ClientOptions};

/// A standalone on free ports over a data directory that outlives restarts.
pub struct TestStandalone {
    pub standalone: Standalone,
    pub data_dir: PathBuf,
    pub config: StandaloneConfig,
}

/// The config a test standalone uses: port 0 everywhere, the given data directory.
pub fn test_config(data_dir: &Path) -> StandaloneConfig {
    StandaloneConfig {
        data_dir: data_dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("static address"),
        http: "127.0.0.1:0".parse().expect("static address"),
        ..StandaloneConfig::default()
    }
}

impl TestStandalone {
    pub async fn start(config: StandaloneConfig) -> anyhow::Result<Self> {
        init_test_logging();
        let data_dir = config.data_dir.clone();
        let standalone = Standalone::start(config.clone()).await?;
        Ok(Self {
            standalone,
            data_dir,
            config,
        })
    }

    pub fn url(&self) -> String {
        format!("quic://{}", self.standalone.quic_addr)
    }

    /// Stops gracefully and starts again on the same data directory (new ports).
    pub async fn restart(self) -> anyhow::Result<Self> {
        let config = self.config.clone();
        self.standalone.shutdown().await?;
        Self::start(config).await
    }
}

/// A client of `server`, trusting its generated CA (as a remote client would).
pub async fn client(server: &TestStandalone) -> anyhow::Result<Client> {
    let options = ClientOptions {
        url: server.url(),
        tls_ca: server.standalone.ca_path.clone(),
        ..ClientOptions::default()
    };
    Ok(Client::connect(options).await?)
}

/// Logs to the test output when `STRATA_LOG` is set (e.g. `STRATA_LOG=debug`).
pub fn init_test_logging() {
    if let Ok(filter) = std::env::var("STRATA_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
