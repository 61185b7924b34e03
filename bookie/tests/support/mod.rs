//! A bookie cluster in one process for ledger tests: a real one-voter metastore (openraft,
//! RocksDB), real bookie servers on 127.0.0.1 (QUIC, RocksDB) registered under leases, and
//! ledger clients that find them through the registrations.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_bookie::server::DiskThreshold;
use strata_bookie::storage::{CF_ENTRIES, CF_LEDGERS, format};
use strata_bookie::{
    BookieClient, BookieClientOptions, BookieServer, BookieStorage, LedgerClient,
    LedgerClientOptions, NetworkBookies, Registration, RegistrationConfig, ServerConfig,
    StorageOptions,
};
use strata_metastore::{MetaStore, MetaStoreConfig};
use strata_proto::{EntryId, LedgerId};
use strata_transport::ServerTls;

pub const NEVER_READ_ONLY: DiskThreshold = DiskThreshold {
    min_free_bytes: 0,
    min_free_ratio: 0.0,
};

/// One bookie: its directory outlives the server, so it can be stopped and started again on
/// the same address (its id).
pub struct TestBookie {
    pub dir: tempfile::TempDir,
    pub id: String,
    pub addr: SocketAddr,
    pub running: Option<Running>,
}

pub struct Running {
    pub server: BookieServer,
    pub registration: Registration,
}

impl TestBookie {
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("bookie")
    }

    pub fn server(&self) -> &BookieServer {
        &self.running.as_ref().expect("bookie running").server
    }
}

pub struct TestCluster {
    _meta_dir: tempfile::TempDir,
    pub meta: MetaStore,
    pub bookies: Vec<TestBookie>,
}

fn tls(dir: &Path) -> ServerTls {
    strata_transport::install_crypto_provider();
    ServerTls::dev_in_dir(&dir.join("tls"), &[])
        .expect("dev tls")
        .0
}

impl TestCluster {
    /// A metastore and `n` registered bookies (racks `rack-0`, `rack-1`, ... when `racks`).
    pub async fn start(n: usize) -> TestCluster {
        let meta_dir = tempfile::tempdir().expect("tempdir");
        let meta = MetaStore::open_standalone(meta_dir.path(), MetaStoreConfig::default())
            .await
            .expect("metastore");
        let mut cluster = TestCluster {
            _meta_dir: meta_dir,
            meta,
            bookies: Vec::new(),
        };
        for _ in 0..n {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut bookie = TestBookie {
                dir,
                id: String::new(),
                addr: "127.0.0.1:0".parse().expect("addr"),
                running: None,
            };
            cluster.run(&mut bookie).await;
            bookie.id = bookie.addr.to_string();
            cluster.bookies.push(bookie);
        }
        for i in 0..n {
            cluster.wait_registered(i).await;
        }
        cluster
    }

    async fn run(&self, bookie: &mut TestBookie) {
        let storage = BookieStorage::open(&bookie.storage_dir(), StorageOptions::default())
            .expect("open storage");
        let mut config = ServerConfig::new(bookie.addr, bookie.dir.path().to_path_buf());
        config.disk_threshold = NEVER_READ_ONLY;
        let server =
            BookieServer::start(storage, config, &tls(bookie.dir.path())).expect("start bookie");
        bookie.addr = server.local_addr().expect("addr");
        let id = bookie.addr.to_string();
        let mut reg = RegistrationConfig::new(id.clone(), id);
        reg.ttl = Duration::from_secs(2);
        reg.refresh_interval = Duration::from_secs(1);
        let registration = Registration::start(self.meta.clone(), reg, server.disk_status());
        bookie.running = Some(Running {
            server,
            registration,
        });
    }

    async fn wait_registered(&self, i: usize) {
        let bookie = &self.bookies[i];
        let running = bookie.running.as_ref().expect("running");
        wait_until("bookie registration", || {
            running.registration.is_registered()
        })
        .await;
    }

    /// A ledger client over QUIC with short deadlines, so failures show quickly.
    pub fn client(&self) -> LedgerClient {
        self.client_with(LedgerClientOptions {
            ensemble_retry_delay: Duration::from_millis(200),
            ..LedgerClientOptions::default()
        })
    }

    pub fn client_with(&self, options: LedgerClientOptions) -> LedgerClient {
        let bookie_client = BookieClient::new(BookieClientOptions {
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            ..BookieClientOptions::default()
        });
        let cluster = Arc::new(NetworkBookies::new(bookie_client, self.meta.clone()));
        LedgerClient::new(self.meta.clone(), cluster, options)
    }

    /// Index of the bookie with this id.
    pub fn index_of(&self, id: &str) -> usize {
        self.bookies
            .iter()
            .position(|b| b.id == id)
            .expect("known bookie")
    }

    /// Stops a bookie as a crash would look to its peers: the server goes away and its
    /// registration is revoked.
    pub async fn stop(&mut self, i: usize) {
        if let Some(running) = self.bookies[i].running.take() {
            running.server.shutdown().await;
            running.registration.close().await;
        }
    }

    /// Starts a stopped bookie again on its old address (its id), on its old data.
    pub async fn restart(&mut self, i: usize) {
        let mut bookie = std::mem::replace(
            &mut self.bookies[i],
            TestBookie {
                dir: tempfile::tempdir().expect("tempdir"),
                id: String::new(),
                addr: "127.0.0.1:0".parse().expect("addr"),
                running: None,
            },
        );
        self.run(&mut bookie).await;
        self.bookies[i] = bookie;
        self.wait_registered(i).await;
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.bookies.len() {
            self.stop(i).await;
        }
    }
}

/// Flips one payload byte of a stored entry directly in a stopped bookie's RocksDB, keeping
/// the stored checksum.
pub fn corrupt_entry_on_disk(db_dir: &Path, ledger: LedgerId, entry: EntryId) {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(false);
    let db = rocksdb::DB::open_cf(&options, db_dir, [CF_ENTRIES, CF_LEDGERS]).expect("open db");
    let cf = db.cf_handle(CF_ENTRIES).expect("entries cf");
    let key = format::entry_key(ledger, entry);
    let mut value = db.get_cf(&cf, key).expect("get").expect("entry stored");
    let last = value.len() - 1;
    value[last] ^= 0x20;
    db.put_cf(&cf, key, value).expect("put");
    db.flush_cf(&cf).expect("flush");
}

/// A payload that names its entry, so a read returning the wrong entry shows.
pub fn payload(i: u64) -> Bytes {
    Bytes::from(format!("entry {i:06} ").repeat(8))
}

/// Waits until `cond` holds, polling, or panics after a generous deadline.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
