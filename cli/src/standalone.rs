//! `strata standalone`: a one-voter metastore, one bookie (E = Qw = Qa = 1) and one broker in
//! one process, with every byte under one data directory:
//!
//! ```text
//! <data-dir>/metastore   Raft log and state machine (RocksDB)
//! <data-dir>/bookie      ledger entries (RocksDB)
//! <data-dir>/tls         generated development CA and certificate (ca.pem for clients)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use strata_bookie::{BookieStorage, LedgerClient, LedgerConfig, StorageOptions};
use strata_broker::NamespacePolicies;
use strata_broker::managed_ledger::ManagedLedgerConfig;
use strata_broker::ownership::{Ownership, OwnershipConfig};
use strata_broker::{BrokerConfig, BrokerServer, BrokerService, ServerConfig};
use strata_metastore::{MetaStore, MetaStoreConfig};
use strata_transport::{ServerTls, TransportTuning};
use tracing::info;

use crate::config::StandaloneConfig;
use crate::http::HttpServer;

/// A running standalone.
pub struct Standalone {
    pub quic_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Where clients find the CA to trust (None when TLS files were given).
    pub ca_path: Option<PathBuf>,
    server: BrokerServer,
    http: HttpServer,
    service: Arc<BrokerService>,
    meta: MetaStore,
    /// Times transactions out (this one-voter metastore always leads).
    txn_expiry: tokio::task::JoinHandle<()>,
}

impl Standalone {
    /// Starts every part and returns once the broker accepts connections.
    pub async fn start(config: StandaloneConfig) -> anyhow::Result<Self> {
        config.validate()?;
        strata_transport::install_crypto_provider();
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;

        let meta = MetaStore::open_standalone(&dir.join("metastore"), MetaStoreConfig::default())
            .await
            .context("starting the metastore")?;
        let bookie = BookieStorage::open(&dir.join("bookie"), StorageOptions::default())
            .context("starting the bookie")?;
        let ledgers =
            LedgerClient::local(meta.clone(), bookie.clone(), "standalone-bookie".to_owned());
        let broker_config = BrokerConfig {
            managed_ledger: ManagedLedgerConfig {
                max_entries_per_ledger: config.max_entries_per_ledger,
                max_ledger_bytes: config.max_ledger_bytes,
                ledger: LedgerConfig::single(),
                ..ManagedLedgerConfig::default()
            },
            // One bookie: every ledger is E = Qw = Qa = 1.
            default_replication: Some(LedgerConfig::single()),
            eager_begin: config.eager_begin,
            dedup_producer_expiry: std::time::Duration::from_secs(
                config.dedup_producer_expiry_secs,
            ),
            ..BrokerConfig::default()
        };
        let service = BrokerService::new(meta.clone(), ledgers, broker_config);
        service.start_retention(crate::broker_node::RETENTION_INTERVAL);
        let public_default = "public/default".parse().context("default namespace")?;
        service
            .ensure_namespace(&public_default, &NamespacePolicies::default())
            .await?;

        let (tls, ca_path) = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => (ServerTls::from_pem_files(cert, key)?, None),
            _ => {
                let (tls, paths) = ServerTls::dev_in_dir(&dir.join("tls"), &[])?;
                (tls, Some(paths.ca_cert))
            }
        };
        let tuning = TransportTuning {
            stream_receive_window: config.stream_receive_window,
            connection_receive_window: config.connection_receive_window,
            ..TransportTuning::default()
        };
        let server_config = ServerConfig {
            listen: config.listen,
            max_frame_size: config.max_frame_size,
            tuning,
        };
        let server = BrokerServer::start(service.clone(), server_config, &tls)?;
        let quic_addr = server.local_addr()?;
        // The standalone owns bundles like any broker (the only one registered, it gets all).
        let ownership = Ownership::start(
            meta.clone(),
            OwnershipConfig::new("standalone", quic_addr.to_string()),
        )
        .await?;
        service.enable_ownership(ownership);
        let txn_expiry = strata_metastore::txn_coordinator::spawn_expiry(
            meta.clone(),
            crate::metastore_node::TXN_EXPIRY_INTERVAL,
        );

        let ready = Arc::new(AtomicBool::new(false));
        let metrics_service = service.clone();
        let metrics_bookie = bookie.clone();
        let metrics_meta = meta.clone();
        let metrics = Arc::new(move || {
            let mut text = metrics_service.metrics.render();
            text.push_str(&crate::metastore_node::render_metrics(&metrics_meta));
            text.push_str(&metrics_service.ledger_stats().render_prometheus());
            let s = metrics_bookie.stats();
            text.push_str(&format!(
                "# HELP strata_bookie_corrupt_reads_total Entries whose checksum did not match\n# TYPE strata_bookie_corrupt_reads_total counter\nstrata_bookie_corrupt_reads_total {}\n",
                s.corrupt_reads
            ));
            text
        });
        let http = HttpServer::start(config.http, ready.clone(), metrics).await?;
        ready.store(true, Ordering::Release);
        info!(quic = %quic_addr, http = %http.local_addr, data_dir = %dir.display(), "standalone ready");
        Ok(Self {
            quic_addr,
            http_addr: http.local_addr,
            ca_path,
            server,
            http,
            service,
            meta,
            txn_expiry,
        })
    }

    /// The broker service (tests use it to set up namespaces).
    pub fn broker(&self) -> &Arc<BrokerService> {
        &self.service
    }

    /// Graceful stop: stop accepting, close open ledgers, stop the metastore.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.server.shutdown().await;
        self.service.close_all().await;
        if let Some(ownership) = self.service.ownership() {
            ownership.shutdown().await;
        }
        self.http.shutdown().await;
        self.txn_expiry.abort();
        self.meta.shutdown().await?;
        Ok(())
    }
}
