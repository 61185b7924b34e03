//! [`BookieCluster`]: the bookies a ledger client sees and the calls it makes to them, by
//! bookie id (the name ledger metadata uses).
//!
//! Two implementations: [`NetworkBookies`], real bookies over QUIC found through their
//! registrations in the metastore, and [`LocalBookies`], bookies in this process (the
//! standalone, and tests that want storage without sockets). Both answer with the same typed
//! [`BookieRpcError`]s, so the replication logic above cannot tell them apart.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use strata_metastore::Meta;
use strata_proto::{EntryId, LedgerId};

use super::quorum::BookieInfo;
use crate::registration::list_bookies;
use crate::server::{BookieEntry, LacInfo};
use crate::{BookieClient, BookieError, BookieRpcError, BookieStorage};

/// A boxed future, so [`BookieCluster`] can be used as `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The bookies a ledger client writes to and reads from.
pub trait BookieCluster: Send + Sync + 'static {
    /// The bookies that can be chosen for an ensemble now (registered ones, writable or not).
    fn bookies(&self) -> BoxFuture<'_, Result<Vec<BookieInfo>, BookieRpcError>>;

    /// Stores an entry on `bookie`; `Ok` once it is durable there.
    fn add<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        entry: EntryId,
        lac: Option<EntryId>,
        payload: Bytes,
        recovery: bool,
    ) -> BoxFuture<'a, Result<(), BookieRpcError>>;

    /// Reads an entry; with `fence`, fences the ledger on the bookie first.
    fn read<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        entry: EntryId,
        fence: bool,
    ) -> BoxFuture<'a, Result<BookieEntry, BookieRpcError>>;

    /// The bookie's view of the ledger; with `fence`, fences it first.
    fn read_lac<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        fence: bool,
    ) -> BoxFuture<'a, Result<LacInfo, BookieRpcError>>;

    /// Waits until the bookie's LAC is above `above` or `wait` passes; returns its view then.
    fn read_lac_long_poll<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        above: Option<EntryId>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<LacInfo, BookieRpcError>>;

    /// Deletes the ledger's data on the bookie (a no-op when it has none).
    fn delete<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
    ) -> BoxFuture<'a, Result<(), BookieRpcError>>;
}

/// Bookies over QUIC. A bookie id resolves to the address in its registration; an id that is
/// not registered (a stopped bookie) is tried as an address, which is what ids are unless a
/// bookie was given one explicitly.
pub struct NetworkBookies {
    client: BookieClient,
    meta: Meta,
    addresses: Mutex<HashMap<String, String>>,
}

impl NetworkBookies {
    pub fn new(client: BookieClient, meta: impl Into<Meta>) -> Self {
        NetworkBookies {
            client,
            meta: meta.into(),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &BookieClient {
        &self.client
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.addresses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn address(&self, bookie: &str) -> String {
        if let Some(addr) = self.lock().get(bookie) {
            return addr.clone();
        }
        match crate::registration::get_bookie(&self.meta, bookie).await {
            Ok(Some(reg)) => {
                let addr = reg.record.address;
                self.lock().insert(bookie.to_owned(), addr.clone());
                addr
            }
            _ => bookie.to_owned(),
        }
    }

    /// Forgets a cached address after a connection failure: the bookie may have moved.
    fn forget_on_failure<T>(&self, bookie: &str, result: &Result<T, BookieRpcError>) {
        if let Err(BookieRpcError::Unreachable { .. }) = result {
            self.lock().remove(bookie);
        }
    }
}

/// Renames the bookie in an error from its address to its id.
fn with_id(e: BookieRpcError, id: &str) -> BookieRpcError {
    use BookieRpcError as E;
    let id = id.to_owned();
    match e {
        E::Unreachable { reason, .. } => E::Unreachable { bookie: id, reason },
        E::Timeout { after, .. } => E::Timeout { bookie: id, after },
        E::NoSuchLedger { ledger, .. } => E::NoSuchLedger { bookie: id, ledger },
        E::NoSuchEntry { ledger, entry, .. } => E::NoSuchEntry {
            bookie: id,
            ledger,
            entry,
        },
        E::Fenced { ledger, .. } => E::Fenced { bookie: id, ledger },
        E::ReadOnly { message, .. } => E::ReadOnly {
            bookie: id,
            message,
        },
        E::ChecksumMismatch {
            ledger,
            entry,
            message,
            ..
        } => E::ChecksumMismatch {
            bookie: id,
            ledger,
            entry,
            message,
        },
        E::Remote { code, message, .. } => E::Remote {
            bookie: id,
            code,
            message,
        },
        E::Protocol { reason, .. } => E::Protocol { bookie: id, reason },
        other @ E::TooLarge { .. } => other,
    }
}

/// Runs a call against the bookie's address and names the bookie by id in errors.
macro_rules! network_call {
    ($self:ident, $bookie:ident, |$client:ident, $addr:ident| $call:expr) => {
        Box::pin(async move {
            let $addr = $self.address($bookie).await;
            let $client = &$self.client;
            let result = $call.await;
            $self.forget_on_failure($bookie, &result);
            result.map_err(|e| with_id(e, $bookie))
        })
    };
}

impl BookieCluster for NetworkBookies {
    fn bookies(&self) -> BoxFuture<'_, Result<Vec<BookieInfo>, BookieRpcError>> {
        Box::pin(async move {
            let registered =
                list_bookies(&self.meta)
                    .await
                    .map_err(|e| BookieRpcError::Unreachable {
                        bookie: "metastore".into(),
                        reason: format!("listing bookies: {e}"),
                    })?;
            let mut addresses = self.lock();
            Ok(registered
                .into_iter()
                .map(|r| {
                    addresses.insert(r.record.bookie_id.clone(), r.record.address.clone());
                    BookieInfo {
                        id: r.record.bookie_id,
                        rack: r.record.rack,
                        writable: r.record.writable,
                    }
                })
                .collect())
        })
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
        network_call!(self, bookie, |c, addr| c
            .add(&addr, ledger, entry, lac, payload, recovery))
    }

    fn read<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        entry: EntryId,
        fence: bool,
    ) -> BoxFuture<'a, Result<BookieEntry, BookieRpcError>> {
        network_call!(self, bookie, |c, addr| c.read(&addr, ledger, entry, fence))
    }

    fn read_lac<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        fence: bool,
    ) -> BoxFuture<'a, Result<LacInfo, BookieRpcError>> {
        network_call!(self, bookie, |c, addr| c.read_lac(&addr, ledger, fence))
    }

    fn read_lac_long_poll<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        above: Option<EntryId>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<LacInfo, BookieRpcError>> {
        network_call!(self, bookie, |c, addr| c
            .read_lac_long_poll(&addr, ledger, above, wait))
    }

    fn delete<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
    ) -> BoxFuture<'a, Result<(), BookieRpcError>> {
        network_call!(self, bookie, |c, addr| c.delete(&addr, ledger))
    }
}

/// Bookies in this process, by id. Each behaves as its server would, without read-only
/// checks (the standalone has nowhere else to write).
#[derive(Clone, Default)]
pub struct LocalBookies {
    bookies: Arc<Vec<(BookieInfo, BookieStorage)>>,
}

impl LocalBookies {
    pub fn new(bookies: Vec<(String, BookieStorage)>) -> Self {
        LocalBookies {
            bookies: Arc::new(
                bookies
                    .into_iter()
                    .map(|(id, storage)| {
                        let info = BookieInfo {
                            id,
                            rack: None,
                            writable: true,
                        };
                        (info, storage)
                    })
                    .collect(),
            ),
        }
    }

    /// One bookie (the standalone's).
    pub fn single(id: impl Into<String>, storage: BookieStorage) -> Self {
        Self::new(vec![(id.into(), storage)])
    }

    fn storage(&self, bookie: &str) -> Result<&BookieStorage, BookieRpcError> {
        self.bookies
            .iter()
            .find(|(info, _)| info.id == bookie)
            .map(|(_, storage)| storage)
            .ok_or_else(|| BookieRpcError::Unreachable {
                bookie: bookie.to_owned(),
                reason: "no such bookie in this process".into(),
            })
    }
}

fn lac_info(record: crate::storage::format::LedgerRecord) -> LacInfo {
    LacInfo {
        last_add_confirmed: record.last_add_confirmed,
        last_entry: record.last_entry,
        fenced: record.fenced,
    }
}

impl BookieCluster for LocalBookies {
    fn bookies(&self) -> BoxFuture<'_, Result<Vec<BookieInfo>, BookieRpcError>> {
        let infos = self.bookies.iter().map(|(info, _)| info.clone()).collect();
        Box::pin(async move { Ok(infos) })
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
        Box::pin(async move {
            self.storage(bookie)?
                .add_entry(ledger, entry, lac, payload, recovery)
                .await
                .map_err(|e| BookieRpcError::from_storage(bookie, ledger, Some(entry), &e))
        })
    }

    fn read<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        entry: EntryId,
        fence: bool,
    ) -> BoxFuture<'a, Result<BookieEntry, BookieRpcError>> {
        Box::pin(async move {
            let storage = self.storage(bookie)?.clone();
            let fail =
                |e: &BookieError| BookieRpcError::from_storage(bookie, ledger, Some(entry), e);
            if fence {
                storage.fence(ledger).await.map_err(|e| fail(&e))?;
            }
            // Entry reads may hit the disk: keep them off the runtime's workers.
            tokio::task::spawn_blocking(move || {
                let payload = storage.read_entry(ledger, entry)?;
                let lac = storage.last_add_confirmed(ledger)?;
                Ok::<_, BookieError>(BookieEntry {
                    payload,
                    last_add_confirmed: lac,
                })
            })
            .await
            .map_err(|e| fail(&BookieError::Storage(format!("read task failed: {e}"))))?
            .map_err(|e| fail(&e))
        })
    }

    fn read_lac<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        fence: bool,
    ) -> BoxFuture<'a, Result<LacInfo, BookieRpcError>> {
        Box::pin(async move {
            let storage = self.storage(bookie)?;
            let fail = |e: BookieError| BookieRpcError::from_storage(bookie, ledger, None, &e);
            if fence {
                storage.fence(ledger).await.map_err(fail)?;
            }
            storage.ledger_state(ledger).map(lac_info).map_err(fail)
        })
    }

    fn read_lac_long_poll<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
        above: Option<EntryId>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<LacInfo, BookieRpcError>> {
        Box::pin(async move {
            let storage = self.storage(bookie)?;
            let fail = |e: BookieError| BookieRpcError::from_storage(bookie, ledger, None, &e);
            let deadline = tokio::time::Instant::now() + wait;
            // Subscribe before reading, so a write in between still wakes us.
            let mut changes = storage.watch_ledger(ledger);
            loop {
                match storage.ledger_state(ledger) {
                    Ok(record) if record.last_add_confirmed > above => {
                        return Ok(lac_info(record));
                    }
                    Ok(_) | Err(BookieError::NoSuchLedger(_)) => {}
                    Err(e) => return Err(fail(e)),
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            storage.ledger_state(ledger).map(lac_info).map_err(fail)
        })
    }

    fn delete<'a>(
        &'a self,
        bookie: &'a str,
        ledger: LedgerId,
    ) -> BoxFuture<'a, Result<(), BookieRpcError>> {
        Box::pin(async move {
            self.storage(bookie)?
                .delete_ledger(ledger)
                .await
                .map_err(|e| BookieRpcError::from_storage(bookie, ledger, None, &e))
        })
    }
}
