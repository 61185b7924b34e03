//! Test helpers around [`LocalCluster`]: a real one-voter metastore and real bookie servers
//! on 127.0.0.1, in temporary directories, with short deadlines so failures show quickly.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_bookie::local_cluster::{LocalCluster, LocalClusterOptions};
use strata_bookie::storage::{CF_ENTRIES, CF_LEDGERS, format};
use strata_bookie::{BookieClientOptions, BookieServer, LedgerClient, LedgerClientOptions};
use strata_proto::{EntryId, LedgerId};

pub struct TestCluster {
    _dir: tempfile::TempDir,
    pub inner: LocalCluster,
}

impl TestCluster {
    pub async fn start(n: usize) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = LocalClusterOptions {
            bookies: n,
            ..LocalClusterOptions::default()
        };
        let inner = LocalCluster::start(dir.path(), options)
            .await
            .expect("start cluster");
        TestCluster { _dir: dir, inner }
    }

    pub fn meta(&self) -> &strata_metastore::MetaStore {
        &self.inner.meta
    }

    /// A ledger client over QUIC with short deadlines.
    pub fn client(&self) -> LedgerClient {
        self.client_with(LedgerClientOptions {
            ensemble_retry_delay: Duration::from_millis(200),
            ..LedgerClientOptions::default()
        })
    }

    pub fn client_with(&self, options: LedgerClientOptions) -> LedgerClient {
        let bookie_client = BookieClientOptions {
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            ..BookieClientOptions::default()
        };
        self.inner.ledger_client(bookie_client, options)
    }

    pub fn index_of(&self, id: &str) -> usize {
        self.inner.index_of(id).expect("known bookie")
    }

    pub fn server(&self, i: usize) -> &BookieServer {
        self.inner.bookies[i].server().expect("bookie running")
    }

    pub fn storage_dir(&self, i: usize) -> std::path::PathBuf {
        self.inner.bookies[i].storage_dir()
    }

    pub async fn stop(&mut self, i: usize) {
        self.inner.stop(i).await;
    }

    pub async fn restart(&mut self, i: usize) {
        self.inner.restart(i).await.expect("restart bookie");
    }

    pub async fn shutdown(self) {
        self.inner.shutdown().await;
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
