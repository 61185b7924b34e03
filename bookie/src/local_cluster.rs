//! [`LocalCluster`]: a bookie cluster in one process, for tests and benchmarks: a one-voter
//! metastore (real openraft and RocksDB), real bookie servers on 127.0.0.1 (QUIC, RocksDB)
//! registered under leases, and ledger clients that find them through the registrations.
//! Bookies can be stopped and started again on the same address (their id) and data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strata_metastore::{MetaError, MetaStore, MetaStoreConfig};
use strata_transport::{ServerTls, TransportError};

use crate::server::{DiskThreshold, ServerError};
use crate::{
    BookieClient, BookieClientOptions, BookieError, BookieServer, BookieStorage, LedgerClient,
    LedgerClientOptions, NetworkBookies, Registration, RegistrationConfig, ServerConfig,
    StorageOptions,
};

/// Why a [`LocalCluster`] could not start a part.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    #[error("metastore: {0}")]
    Meta(#[from] MetaError),
    #[error("bookie storage: {0}")]
    Storage(#[from] BookieError),
    #[error("bookie server: {0}")]
    Server(#[from] ServerError),
    #[error("tls: {0}")]
    Tls(#[from] TransportError),
    #[error("bookie {0} did not register")]
    NotRegistered(usize),
}

/// Settings of a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    pub bookies: usize,
    pub storage: StorageOptions,
    /// TTL of each bookie's registration lease.
    pub registration_ttl: Duration,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        LocalClusterOptions {
            bookies: 3,
            storage: StorageOptions::default(),
            registration_ttl: Duration::from_secs(2),
        }
    }
}

/// One bookie of the cluster.
pub struct LocalBookie {
    dir: PathBuf,
    /// Its id, which is its address.
    pub id: String,
    addr: SocketAddr,
    running: Option<(BookieServer, Registration)>,
}

impl LocalBookie {
    /// Where its RocksDB lives.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("bookie")
    }

    /// Its server, while running.
    pub fn server(&self) -> Option<&BookieServer> {
        self.running.as_ref().map(|(server, _)| server)
    }
}

pub struct LocalCluster {
    pub meta: MetaStore,
    pub bookies: Vec<LocalBookie>,
    options: LocalClusterOptions,
}

impl LocalCluster {
    /// Starts the metastore in `dir/metastore` and the bookies in `dir/bookie-<i>`.
    pub async fn start(
        dir: &Path,
        options: LocalClusterOptions,
    ) -> Result<Self, LocalClusterError> {
        strata_transport::install_crypto_provider();
        let meta =
            MetaStore::open_standalone(&dir.join("metastore"), MetaStoreConfig::default()).await?;
        let mut cluster = LocalCluster {
            meta,
            bookies: Vec::new(),
            options,
        };
        for i in 0..cluster.options.bookies {
            cluster.bookies.push(LocalBookie {
                dir: dir.join(format!("bookie-{i}")),
                id: String::new(),
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                running: None,
            });
            cluster.restart(i).await?;
        }
        Ok(cluster)
    }

    /// Starts bookie `i` (again: on its old address and data) and waits for its registration.
    pub async fn restart(&mut self, i: usize) -> Result<(), LocalClusterError> {
        // Never read-only for lack of disk.
        let roomy = DiskThreshold {
            min_free_bytes: 0,
            min_free_ratio: 0.0,
        };
        self.restart_with_threshold(i, roomy).await
    }

    /// As [`restart`](Self::restart), read-only below `threshold` free (a threshold above
    /// the disk's size starts it read-only).
    pub async fn restart_with_threshold(
        &mut self,
        i: usize,
        threshold: DiskThreshold,
    ) -> Result<(), LocalClusterError> {
        let storage_options = self.options.storage.clone();
        let ttl = self.options.registration_ttl;
        let meta = self.meta.clone();
        let bookie = &mut self.bookies[i];
        if bookie.running.is_some() {
            return Ok(());
        }
        let storage = BookieStorage::open(&bookie.storage_dir(), storage_options)?;
        let mut config = ServerConfig::new(bookie.addr, bookie.dir.clone());
        config.disk_threshold = threshold;
        let (tls, _) = ServerTls::dev_in_dir(&bookie.dir.join("tls"), &[])?;
        let server = BookieServer::start(storage, config, &tls)?;
        bookie.addr = server.local_addr().map_err(|source| TransportError::Bind {
            addr: bookie.addr,
            source,
        })?;
        bookie.id = bookie.addr.to_string();
        let mut reg = RegistrationConfig::new(bookie.id.clone(), bookie.id.clone());
        reg.ttl = ttl;
        reg.refresh_interval = ttl / 2;
        let registration = Registration::start(meta, reg, server.disk_status());
        let mut registered = registration.watch();
        bookie.running = Some((server, registration));
        let wait = tokio::time::timeout(
            Duration::from_secs(30),
            registered.wait_for(|lease| lease.is_some()),
        );
        match wait.await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(LocalClusterError::NotRegistered(i)),
        }
    }

    /// Stops bookie `i`: its server goes away and its registration is revoked.
    pub async fn stop(&mut self, i: usize) {
        if let Some((server, registration)) = self.bookies[i].running.take() {
            server.shutdown().await;
            registration.close().await;
        }
    }

    /// Index of the bookie with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.bookies.iter().position(|b| b.id == id)
    }

    /// A ledger client reaching the bookies over QUIC.
    pub fn ledger_client(
        &self,
        bookie_client: BookieClientOptions,
        options: LedgerClientOptions,
    ) -> LedgerClient {
        let cluster = Arc::new(NetworkBookies::new(
            BookieClient::new(bookie_client),
            self.meta.clone(),
        ));
        LedgerClient::new(self.meta.clone(), cluster, options)
    }

    /// Stops every bookie and the metastore.
    pub async fn shutdown(mut self) {
        for i in 0..self.bookies.len() {
            self.stop(i).await;
        }
        let _ = self.meta.shutdown().await;
    }
}
