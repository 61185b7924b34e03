//! The generic part: [`Schema`] (a table's key layout and record type), [`Listing`] (the
//! rows under a parent, e.g. the topics of a namespace) and [`Table`], the typed operations
//! over a [`Meta`] (the metastore in process or remote).

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;

use super::{DecodeError, Record, TableError};
use crate::{Compare, Expect, KeyValue, Meta, MetaWatcher, TxnOp, WatchEvent, Written};
use strata_proto::pb::metastore::EventKind;

/// One table: how a row's typed key maps to its metastore key, and what it stores.
pub trait Schema: Send + Sync + 'static {
    /// The typed key of a row.
    type Key: Send + Sync;
    /// What a row stores.
    type Record: Record;
    /// What a row is, for errors ("topic", "cursor").
    const NAME: &'static str;
    /// The metastore key of a row.
    fn key(key: &Self::Key) -> String;
}

/// A table whose rows can be listed and watched under a parent.
pub trait Listing: Schema {
    /// What the rows are grouped under (a namespace for topics, a topic for cursors).
    type Parent: Clone + Send + Sync;
    /// The key prefix of the rows under `parent`. It ends with `/`, so the rows of a parent
    /// whose name extends this one's (`a/bc` next to `a/b`) are not included.
    fn prefix(parent: &Self::Parent) -> String;
    /// The typed key of the row stored at `prefix(parent) + rest`; `Err` says why `rest`
    /// names no row.
    fn child(parent: &Self::Parent, rest: &str) -> Result<Self::Key, String>;
}

/// A decoded record and the metastore version it was read at (the CAS token for updates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<R> {
    pub record: R,
    /// The key's version: 1 at creation, +1 per write.
    pub version: u64,
    /// The revision of the key's last write.
    pub mod_revision: u64,
}

/// A change to a row, from [`TableWatcher::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableEvent<K, R> {
    /// The row was created or updated.
    Put { key: K, value: Versioned<R> },
    /// The row was deleted at `revision`.
    Deleted { key: K, revision: u64 },
}

/// Typed operations on one table. Cheap to clone.
pub struct Table<S> {
    meta: Meta,
    _schema: PhantomData<fn() -> S>,
}

impl<S> Clone for Table<S> {
    fn clone(&self) -> Self {
        Table {
            meta: self.meta.clone(),
            _schema: PhantomData,
        }
    }
}

impl<S: Schema> fmt::Debug for Table<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table").field("table", &S::NAME).finish()
    }
}

impl<S: Schema> Table<S> {
    pub fn new(meta: impl Into<Meta>) -> Self {
        Table {
            meta: meta.into(),
            _schema: PhantomData,
        }
    }

    /// The metastore key of a row.
    pub fn key(&self, key: &S::Key) -> String {
        S::key(key)
    }

    /// The row and its version, or `None` if it does not exist.
    pub async fn get(&self, key: &S::Key) -> Result<Option<Versioned<S::Record>>, TableError> {
        match self.meta.get(&S::key(key)).await? {
            Some(kv) => decode::<S>(kv).map(Some),
            None => Ok(None),
        }
    }

    /// The row and its version; [`TableError::NotFound`] if it does not exist.
    pub async fn require(&self, key: &S::Key) -> Result<Versioned<S::Record>, TableError> {
        let k = S::key(key);
        match self.meta.get(&k).await? {
            Some(kv) => decode::<S>(kv),
            None => Err(TableError::NotFound {
                table: S::NAME,
                key: k,
            }),
        }
    }

    /// Creates the row; [`TableError::VersionMismatch`] if it exists.
    pub async fn create(&self, key: &S::Key, record: &S::Record) -> Result<Written, TableError> {
        self.put(key, record, Expect::Absent).await
    }

    /// Replaces the row if it is still at `expected_version`; else
    /// [`TableError::VersionMismatch`] (also when it no longer exists).
    pub async fn update(
        &self,
        key: &S::Key,
        record: &S::Record,
        expected_version: u64,
    ) -> Result<Written, TableError> {
        self.put(key, record, Expect::Version(expected_version))
            .await
    }

    /// Writes the row if `expect` holds.
    pub async fn put(
        &self,
        key: &S::Key,
        record: &S::Record,
        expect: Expect,
    ) -> Result<Written, TableError> {
        self.put_leased(key, record, expect, 0).await
    }

    /// Writes the row if `expect` holds, bound to `lease`: the row is deleted when the lease
    /// ends (ownership, registrations). 0: no lease.
    pub async fn put_leased(
        &self,
        key: &S::Key,
        record: &S::Record,
        expect: Expect,
        lease: crate::LeaseId,
    ) -> Result<Written, TableError> {
        let k = S::key(key);
        let value = encode::<S>(&k, record)?;
        Ok(self.meta.put_leased(&k, value, expect, lease).await?)
    }

    /// Deletes the row if `expect` holds: `Ok(true)` if it was deleted, `Ok(false)` if it was
    /// absent and `expect` allowed that (`Any`, `Absent`).
    pub async fn delete(&self, key: &S::Key, expect: Expect) -> Result<bool, TableError> {
        Ok(self.meta.delete(&S::key(key), expect).await?)
    }

    /// A transaction operation writing the row (for [`MetaStore::txn`]).
    pub fn put_op(&self, key: &S::Key, record: &S::Record) -> Result<TxnOp, TableError> {
        let k = S::key(key);
        let value = encode::<S>(&k, record)?;
        Ok(TxnOp::Put {
            key: k,
            value,
            lease: 0,
        })
    }

    /// A transaction operation deleting the row.
    pub fn delete_op(&self, key: &S::Key) -> TxnOp {
        TxnOp::Delete { key: S::key(key) }
    }

    /// A transaction comparison on the row's version.
    pub fn version_is(&self, key: &S::Key, expect: Expect) -> Compare {
        Compare::Version {
            key: S::key(key),
            expect,
        }
    }

    /// Decodes a value read for this table some other way (a transaction, a raw scan).
    pub fn decode(&self, kv: KeyValue) -> Result<Versioned<S::Record>, TableError> {
        decode::<S>(kv)
    }
}

impl<S: Listing> Table<S> {
    /// Every row under `parent`, in key order.
    pub async fn list(
        &self,
        parent: &S::Parent,
    ) -> Result<Vec<(S::Key, Versioned<S::Record>)>, TableError> {
        let prefix = S::prefix(parent);
        let kvs = self.meta.scan(&prefix).await?;
        let mut rows = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let key = child::<S>(parent, &prefix, &kv.key)?;
            rows.push((key, decode::<S>(kv)?));
        }
        Ok(rows)
    }

    /// At most `limit` rows under `parent` whose keys sort after `start_after` (a key of this
    /// table, or "" for the first), in key order.
    pub async fn list_page(
        &self,
        parent: &S::Parent,
        start_after: &str,
        limit: u32,
    ) -> Result<Vec<(S::Key, Versioned<S::Record>)>, TableError> {
        let prefix = S::prefix(parent);
        let page = self.meta.scan_page(&prefix, start_after, limit).await?;
        let mut rows = Vec::with_capacity(page.kvs.len());
        for kv in page.kvs {
            let key = child::<S>(parent, &prefix, &kv.key)?;
            rows.push((key, decode::<S>(kv)?));
        }
        Ok(rows)
    }

    /// The keys of the rows under `parent`, in key order, without decoding their records.
    pub async fn list_keys(&self, parent: &S::Parent) -> Result<Vec<S::Key>, TableError> {
        let prefix = S::prefix(parent);
        self.meta
            .scan(&prefix)
            .await?
            .iter()
            .map(|kv| child::<S>(parent, &prefix, &kv.key))
            .collect()
    }

    /// Deletes every key under `parent`, rows or not (one delete per key, not atomically, so
    /// a retry after a failure deletes the rest). Returns how many were deleted.
    pub async fn delete_all(&self, parent: &S::Parent) -> Result<usize, TableError> {
        let mut deleted = 0;
        for kv in self.meta.scan(&S::prefix(parent)).await? {
            if self.meta.delete(&kv.key, Expect::Any).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Changes to the rows under `parent` from `from_revision` (0: from now on), decoded;
    /// history first, then live, as [`MetaStore::watch`].
    pub async fn watch(
        &self,
        parent: &S::Parent,
        from_revision: u64,
    ) -> Result<TableWatcher<S>, TableError> {
        let prefix = S::prefix(parent);
        let inner = self.meta.watch(&prefix, from_revision).await?;
        Ok(TableWatcher {
            inner,
            parent: parent.clone(),
            prefix,
        })
    }
}

/// A stream of decoded [`TableEvent`]s; see [`Table::watch`].
pub struct TableWatcher<S: Listing> {
    inner: MetaWatcher,
    parent: S::Parent,
    prefix: String,
}

impl<S: Listing> TableWatcher<S> {
    /// The next change. A change whose key or value cannot be decoded is reported as
    /// `Err(TableError::Decode)` and the stream goes on; `None` once the underlying watch
    /// ended (after reporting why).
    pub async fn next(&mut self) -> Option<Result<TableEvent<S::Key, S::Record>, TableError>> {
        let event = match self.inner.next().await? {
            Ok(event) => event,
            Err(e) => return Some(Err(e.into())),
        };
        Some(self.decode_event(event))
    }

    fn decode_event(&self, event: WatchEvent) -> Result<TableEvent<S::Key, S::Record>, TableError> {
        let Some(kv) = event.kv else {
            return Err(TableError::Decode {
                table: S::NAME,
                key: String::new(),
                source: DecodeError::Malformed(format!(
                    "watch event at revision {} carries no key",
                    event.revision
                )),
            });
        };
        let key = child::<S>(&self.parent, &self.prefix, &kv.key)?;
        if event.kind == EventKind::Delete as i32 {
            Ok(TableEvent::Deleted {
                key,
                revision: event.revision,
            })
        } else {
            Ok(TableEvent::Put {
                key,
                value: decode::<S>(kv)?,
            })
        }
    }
}

fn encode<S: Schema>(key: &str, record: &S::Record) -> Result<Bytes, TableError> {
    record.encode().map_err(|reason| TableError::Encode {
        table: S::NAME,
        key: key.to_owned(),
        reason,
    })
}

fn decode<S: Schema>(kv: KeyValue) -> Result<Versioned<S::Record>, TableError> {
    match S::Record::decode(&kv.value) {
        Ok(record) => Ok(Versioned {
            record,
            version: kv.version,
            mod_revision: kv.mod_revision,
        }),
        Err(source) => Err(TableError::Decode {
            table: S::NAME,
            key: kv.key,
            source,
        }),
    }
}

fn child<S: Listing>(parent: &S::Parent, prefix: &str, key: &str) -> Result<S::Key, TableError> {
    let bad = |reason: String| TableError::Decode {
        table: S::NAME,
        key: key.to_owned(),
        source: DecodeError::BadKey(reason),
    };
    let rest = key
        .strip_prefix(prefix)
        .ok_or_else(|| bad(format!("not under {prefix:?}")))?;
    S::child(parent, rest).map_err(bad)
}
