//! Ledger reads over two bookies in this process (no sockets): a reader whose metadata went
//! stale when a fragment moved to another bookie, and replica reads whose task panics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use strata_bookie::ledger::cluster::BoxFuture;
use strata_bookie::ledger::quorum::BookieInfo;
use strata_bookie::server::{BookieEntry, LacInfo};
use strata_bookie::{
    BookieCluster, BookieRpcError, BookieStorage, LedgerClient, LedgerClientOptions, LedgerConfig,
    LedgerError, LocalBookies, StorageOptions,
};
use strata_metastore::tables::{Ledgers, Table};
use strata_metastore::{MetaStore, MetaStoreConfig};
use strata_proto::{EntryId, LedgerId};

struct Setup {
    _dir: tempfile::TempDir,
    meta: MetaStore,
    /// `b1` and `b2`.
    storages: Vec<(String, BookieStorage)>,
    bookies: LocalBookies,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = MetaStore::open_standalone(&dir.path().join("meta"), MetaStoreConfig::default())
        .await
        .expect("metastore");
    let storages: Vec<(String, BookieStorage)> = ["b1", "b2"]
        .into_iter()
        .map(|name| {
            let storage = BookieStorage::open(&dir.path().join(name), StorageOptions::default())
                .expect("bookie");
            (name.to_owned(), storage)
        })
        .collect();
    let bookies = LocalBookies::new(storages.clone());
    Setup {
        _dir: dir,
        meta,
        storages,
        bookies,
    }
}

/// No speculative reads: a replica that never answers is not rescued by a timeout.
fn options() -> LedgerClientOptions {
    LedgerClientOptions {
        speculative_read_delay: None,
        ..LedgerClientOptions::default()
    }
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("entry {i:06} ").repeat(4))
}

/// Writes `n` entries to a new ledger of `config` and closes it.
async fn write_closed(client: &LedgerClient, config: LedgerConfig, n: u64) -> LedgerId {
    let writer = client.create_ledger(config).await.expect("create");
    for i in 0..n {
        writer.add(payload(i)).await.expect("add");
    }
    writer.close().await.expect("close");
    writer.id()
}

fn assert_entries(read: &[(EntryId, Bytes)], n: u64) {
    assert_eq!(read.len() as u64, n);
    for (i, (id, data)) in read.iter().enumerate() {
        assert_eq!(id.0, i as u64);
        assert_eq!(data, &payload(i as u64), "content of entry {i}");
    }
}

/// A reader opened before its ledger's only fragment moved to another bookie (as
/// re-replication does, deleting nothing it still needs) reads every entry: every replica its
/// metadata names denies them, so it re-reads the metadata and reads from the new bookie.
/// When the newer metadata changes nothing, the denial is the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_with_stale_metadata_follows_a_moved_fragment() {
    let s = setup().await;
    let client = LedgerClient::new(s.meta.clone(), Arc::new(s.bookies.clone()), options());
    let id = write_closed(&client, LedgerConfig::single(), 10).await;
    let reader = client.open_ledger(id).await.expect("open");
    assert_eq!(reader.last_entry(), Some(EntryId(9)));

    let ledgers = Table::<Ledgers>::new(s.meta.clone());
    let row = ledgers.get(&id).await.expect("get").expect("metadata");
    let from = row.record.fragments[0].bookies[0].clone();
    let storage = |name: &str| {
        s.storages
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, storage)| storage.clone())
            .expect("known bookie")
    };
    let to = if from == "b1" { "b2" } else { "b1" };
    for e in 0..10 {
        let stored = storage(&from)
            .read_entry(id, EntryId(e))
            .expect("stored copy");
        storage(to)
            .add_entry(id, EntryId(e), Some(EntryId(9)), stored, true)
            .await
            .expect("copy");
    }
    let mut moved = row.record.clone();
    moved.fragments[0].bookies = vec![to.to_owned()];
    ledgers.update(&id, &moved, row.version).await.expect("CAS");
    storage(&from)
        .delete_ledger(id)
        .await
        .expect("delete old copy");

    let read = reader
        .read(EntryId(0), EntryId(9))
        .await
        .expect("read under the newer metadata");
    assert_entries(&read, 10);

    // Gone from the new bookie too: the metadata is current, so the denial stands.
    storage(to)
        .delete_ledger(id)
        .await
        .expect("delete new copy");
    let denied = reader.read(EntryId(0), EntryId(9)).await;
    assert!(
        matches!(
            denied,
            Err(LedgerError::Bookie(
                BookieRpcError::NoSuchLedger { .. } | BookieRpcError::NoSuchEntry { .. }
            ))
        ),
        "{denied:?}"
    );
}

/// Local bookies whose entry reads panic on the bookies named in `panicking`.
struct PanickingReads {
    inner: LocalBookies,
    panicking: Mutex<Vec<String>>,
}

impl BookieCluster for PanickingReads {
    fn bookies(&self) -> BoxFuture<'_, Result<Vec<BookieInfo>, BookieRpcError>> {
        self.inner.bookies()
    }

    fn add<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        entry: EntryId,
        lac: Option<EntryId>,
        payload: Bytes,
        recovery: bool,
    ) -> BoxFuture<'a, Result<(), BookieRpcError>> {
        self.inner
            .add(bookie, ledger, entry, lac, payload, recovery)
    }

    fn read<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        entry: EntryId,
        fence: bool,
    ) -> BoxFuture<'a, Result<BookieEntry, BookieRpcError>> {
        let panics = self
            .panicking
            .lock()
            .expect("lock")
            .iter()
            .any(|b| b == bookie);
        if panics {
            return Box::pin(async move { panic!("test: read of {entry} on {bookie} panics") });
        }
        self.inner.read(bookie, ledger, entry, fence)
    }

    fn read_lac<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        fence: bool,
    ) -> BoxFuture<'a, Result<LacInfo, BookieRpcError>> {
        self.inner.read_lac(bookie, ledger, fence)
    }

    fn read_lac_long_poll<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        above: Option<EntryId>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<LacInfo, BookieRpcError>> {
        self.inner.read_lac_long_poll(bookie, ledger, above, wait)
    }

    fn delete<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
    ) -> BoxFuture<'a, Result<(), BookieRpcError>> {
        self.inner.delete(bookie, ledger)
    }
}

/// A replica read whose task panics counts as a failed replica: the read fails over to the
/// next one, and fails with an error (never hangs) when every replica's task panicked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_replica_read_fails_over_and_never_hangs() {
    let s = setup().await;
    let cluster = Arc::new(PanickingReads {
        inner: s.bookies.clone(),
        panicking: Mutex::new(vec!["b1".to_owned()]),
    });
    let client = LedgerClient::new(s.meta.clone(), cluster.clone(), options());
    let both = LedgerConfig {
        ensemble_size: 2,
        write_quorum: 2,
        ack_quorum: 2,
    };
    let id = write_closed(&client, both, 6).await;
    let reader = client.open_ledger(id).await.expect("open");
    let deadline = Duration::from_secs(20);
    // Half the entries are read from b1 first.
    let read = tokio::time::timeout(deadline, reader.read(EntryId(0), EntryId(5)))
        .await
        .expect("the read ends")
        .expect("b2 answers");
    assert_entries(&read, 6);
    assert!(client.stats().read_failovers >= 1);

    cluster
        .panicking
        .lock()
        .expect("lock")
        .push("b2".to_owned());
    let failed = tokio::time::timeout(deadline, reader.read(EntryId(0), EntryId(0)))
        .await
        .expect("the read ends");
    assert!(
        matches!(failed, Err(LedgerError::Shutdown(_))),
        "{failed:?}"
    );
}
