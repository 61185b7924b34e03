//! The replicated state machine on RocksDB: [`StateMachine`] implements openraft's
//! `RaftStateMachine`, [`SnapshotBuilder`] its `RaftSnapshotBuilder`.
//!
//! Applying a batch of entries runs `apply::ApplyBatch` over the `kv` CF and writes
//! its result (changed keys, history events, and the new `last_applied` / membership /
//! revision in `sm_meta`) in ONE `WriteBatch`, so a crash never leaves a half-applied batch.
//! The batch is written without fsync: the log is already durable and RocksDB recovers its WAL
//! as a prefix, so a lost apply is simply re-applied. After the write the new revision is
//! published and the events are broadcast to watchers.
//!
//! A snapshot is a prost [`SnapshotData`] (every key, the revision, membership and last applied
//! log id as JSON), sealed in the record envelope. The current one is kept in memory and in
//! `sm_meta`. Installing one replaces the `kv` CF and drops the history it does not cover
//! (watches from before it get [`crate::MetaError::Compacted`]).

use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use rocksdb::{IteratorMode, WriteBatch};
use strata_proto::pb::metastore::{KeyValue, Lease, SnapshotData};

use crate::apply::{Applied, ApplyBatch, Counters, KvSource};
use crate::db::{Core, DbError, RaftGuard};
use crate::keys::{self, CodecError};
use crate::types::{CommandResult, LeaseId, NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, BasicNode>;

/// Version of the [`SnapshotData`] layout this build writes and reads.
const SNAPSHOT_FORMAT: u32 = 1;

fn sm_read_err(e: DbError) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn sm_write_err(e: DbError) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

impl KvSource for Core {
    type Error = DbError;
    fn load(&self, key: &str) -> Result<Option<KeyValue>, DbError> {
        self.get_kv(key)
    }
    fn load_lease(&self, id: LeaseId) -> Result<Option<Lease>, DbError> {
        self.get_lease(id)
    }
}

/// The current snapshot: its metadata and its sealed bytes.
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

type SharedSnapshot = Arc<Mutex<Option<StoredSnapshot>>>;

fn lock(s: &SharedSnapshot) -> MutexGuard<'_, Option<StoredSnapshot>> {
    // A panic while holding this lock cannot leave the Option half-written.
    s.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The RocksDB-backed key-space state machine.
pub struct StateMachine {
    core: Arc<Core>,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    snapshot: SharedSnapshot,
    guard: RaftGuard,
}

impl StateMachine {
    /// Loads the applied state and the current snapshot from `sm_meta`.
    pub(crate) fn open(core: Arc<Core>, guard: RaftGuard) -> Result<Self, DbError> {
        let last_applied: Option<LogId<NodeId>> = match core.get_meta(keys::SM_LAST_APPLIED)? {
            None => None,
            Some(raw) => keys::unseal_json("sm_meta.last_applied", &raw)?,
        };
        let membership: Membership = match core.get_meta(keys::SM_MEMBERSHIP)? {
            None => Membership::default(),
            Some(raw) => keys::unseal_json("sm_meta.membership", &raw)?,
        };
        let snapshot = match (
            core.get_meta(keys::SM_SNAPSHOT_META)?,
            core.get_meta(keys::SM_SNAPSHOT_DATA)?,
        ) {
            (Some(meta), Some(data)) => {
                let meta = keys::unseal_json("sm_meta.snapshot_meta", &meta)?;
                // Verify the stored snapshot now rather than when a follower asks for it.
                decode_snapshot(&data)?;
                Some(StoredSnapshot { meta, data })
            }
            _ => None,
        };
        Ok(StateMachine {
            core,
            last_applied,
            membership,
            snapshot: Arc::new(Mutex::new(snapshot)),
            guard,
        })
    }

    /// Writes an applied batch and the new applied state atomically.
    fn commit(
        &self,
        applied: &Applied,
        last_applied: &Option<LogId<NodeId>>,
        membership: &Membership,
    ) -> Result<(), DbError> {
        let kv = self.core.cf(keys::CF_KV)?;
        let history = self.core.cf(keys::CF_HISTORY)?;
        let meta = self.core.cf(keys::CF_SM_META)?;
        let leases = self.core.cf(keys::CF_LEASES)?;
        let mut batch = WriteBatch::default();
        for (id, state) in &applied.leases {
            match state {
                Some(lease) => batch.put_cf(&leases, keys::u64_key(*id), keys::seal_prost(lease)),
                None => batch.delete_cf(&leases, keys::u64_key(*id)),
            }
        }
        let counters = &applied.counters;
        if applied.compacted {
            batch.delete_range_cf(
                &history,
                keys::u64_key(0),
                keys::u64_key(counters.oldest_revision),
            );
        }
        batch.put_cf(
            &meta,
            keys::SM_OLDEST_REVISION,
            keys::seal_u64(counters.oldest_revision),
        );
        batch.put_cf(
            &meta,
            keys::SM_NEXT_LEASE_ID,
            keys::seal_u64(counters.next_lease_id),
        );
        for (key, state) in &applied.changes {
            match state {
                Some(value) => batch.put_cf(&kv, key.as_bytes(), keys::seal_prost(value)),
                None => batch.delete_cf(&kv, key.as_bytes()),
            }
        }
        for event in &applied.events {
            batch.put_cf(
                &history,
                keys::u64_key(event.revision),
                keys::seal_prost(event),
            );
        }
        batch.put_cf(
            &meta,
            keys::SM_LAST_APPLIED,
            keys::seal_json("sm_meta.last_applied", last_applied)?,
        );
        batch.put_cf(
            &meta,
            keys::SM_MEMBERSHIP,
            keys::seal_json("sm_meta.membership", membership)?,
        );
        batch.put_cf(&meta, keys::SM_REVISION, keys::seal_u64(counters.revision));
        self.core.write(batch, false)?;
        self.core.update_hot_keys(&applied.changes);
        Ok(())
    }

    /// Replaces the whole state with a snapshot's, atomically and durably.
    fn install(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: &[u8],
        snap: &SnapshotData,
    ) -> Result<(), DbError> {
        let kv = self.core.cf(keys::CF_KV)?;
        let history = self.core.cf(keys::CF_HISTORY)?;
        let sm_meta = self.core.cf(keys::CF_SM_META)?;
        let leases = self.core.cf(keys::CF_LEASES)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&kv, &b""[..], keys::KV_END);
        for entry in &snap.kvs {
            batch.put_cf(&kv, entry.key.as_bytes(), keys::seal_prost(entry));
        }
        batch.delete_range_cf(&leases, keys::u64_key(0), keys::u64_key(u64::MAX));
        batch.delete_cf(&leases, keys::u64_key(u64::MAX));
        for lease in &snap.leases {
            batch.put_cf(&leases, keys::u64_key(lease.id), keys::seal_prost(lease));
        }
        batch.put_cf(
            &sm_meta,
            keys::SM_NEXT_LEASE_ID,
            keys::seal_u64(snap.next_lease_id.max(1)),
        );
        // History before the snapshot is not part of it: forget ours rather than keep a
        // history inconsistent with the new state.
        batch.delete_range_cf(&history, keys::u64_key(0), keys::u64_key(u64::MAX));
        batch.delete_cf(&history, keys::u64_key(u64::MAX));
        batch.put_cf(&sm_meta, keys::SM_REVISION, keys::seal_u64(snap.revision));
        batch.put_cf(
            &sm_meta,
            keys::SM_OLDEST_REVISION,
            keys::seal_u64(snap.revision.saturating_add(1)),
        );
        batch.put_cf(
            &sm_meta,
            keys::SM_LAST_APPLIED,
            keys::seal_json("sm_meta.last_applied", &meta.last_log_id)?,
        );
        batch.put_cf(
            &sm_meta,
            keys::SM_MEMBERSHIP,
            keys::seal_json("sm_meta.membership", &meta.last_membership)?,
        );
        batch.put_cf(
            &sm_meta,
            keys::SM_SNAPSHOT_META,
            keys::seal_json("sm_meta.snapshot_meta", meta)?,
        );
        batch.put_cf(&sm_meta, keys::SM_SNAPSHOT_DATA, data);
        self.core.write(batch, true)?;
        self.core.reload_hot_keys()
    }
}

/// Decodes sealed snapshot bytes and checks their format.
fn decode_snapshot(data: &[u8]) -> Result<SnapshotData, CodecError> {
    let snap: SnapshotData = keys::unseal_prost("snapshot", data)?;
    if snap.format_version != SNAPSHOT_FORMAT {
        return Err(CodecError::Payload {
            what: "snapshot",
            reason: format!(
                "format_version {} is not {SNAPSHOT_FORMAT}",
                snap.format_version
            ),
        });
    }
    Ok(snap)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = ApplyBatch::new(&*self.core, self.core.counters());
        let mut last_applied = self.last_applied;
        let mut membership = self.membership.clone();
        let mut results = Vec::new();
        for entry in entries {
            last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Normal(cmd) => batch.apply(&cmd).map_err(|e| {
                    StorageError::from(StorageIOError::apply(entry.log_id, AnyError::new(&e)))
                })?,
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResult::None
                }
            };
            results.push(result);
        }
        if results.is_empty() {
            return Ok(results);
        }
        let applied = batch.finish();
        self.commit(&applied, &last_applied, &membership)
            .map_err(sm_write_err)?;
        self.last_applied = last_applied;
        self.membership = membership;
        self.core.set_counters(applied.counters);
        self.core.update_lease_ttls(&applied.leases);
        self.core.publish(applied.events);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            core: self.core.clone(),
            snapshot: self.snapshot.clone(),
            _guard: self.guard.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let signature = Some(meta.signature());
        let snap = decode_snapshot(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                signature.clone(),
                AnyError::new(&e),
            ))
        })?;
        self.install(meta, &data, &snap).map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(signature, AnyError::new(&e)))
        })?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.core.set_counters(Counters {
            revision: snap.revision,
            oldest_revision: snap.revision.saturating_add(1),
            next_lease_id: snap.next_lease_id.max(1),
        });
        self.core
            .replace_lease_ttls(snap.leases.iter().map(|l| (l.id, l.ttl_ms)).collect());
        *lock(&self.snapshot) = Some(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(lock(&self.snapshot).clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Builds a snapshot from a consistent RocksDB view, concurrently with further applies.
pub struct SnapshotBuilder {
    core: Arc<Core>,
    snapshot: SharedSnapshot,
    _guard: RaftGuard,
}

impl SnapshotBuilder {
    fn build(&self) -> Result<StoredSnapshot, DbError> {
        // One RocksDB snapshot: the kv contents and the applied state agree, because every
        // apply writes both in one batch.
        let view = self.core.db.snapshot();
        let meta_cf = self.core.cf(keys::CF_SM_META)?;
        let kv_cf = self.core.cf(keys::CF_KV)?;
        let read_meta = |key: &[u8]| view.get_cf(&meta_cf, key);
        let last_applied: Option<LogId<NodeId>> = match read_meta(keys::SM_LAST_APPLIED)? {
            None => None,
            Some(raw) => keys::unseal_json("sm_meta.last_applied", &raw)?,
        };
        let membership: Membership = match read_meta(keys::SM_MEMBERSHIP)? {
            None => Membership::default(),
            Some(raw) => keys::unseal_json("sm_meta.membership", &raw)?,
        };
        let revision = match read_meta(keys::SM_REVISION)? {
            None => 0,
            Some(raw) => keys::unseal_u64("sm_meta.revision", &raw)?,
        };
        let next_lease_id = match read_meta(keys::SM_NEXT_LEASE_ID)? {
            None => 1,
            Some(raw) => keys::unseal_u64("sm_meta.next_lease_id", &raw)?,
        };
        let mut kvs = Vec::new();
        for item in view.iterator_cf(&kv_cf, IteratorMode::Start) {
            let (_, v) = item?;
            kvs.push(keys::unseal_prost::<KeyValue>("kv", &v)?);
        }
        let leases_cf = self.core.cf(keys::CF_LEASES)?;
        let mut leases = Vec::new();
        for item in view.iterator_cf(&leases_cf, IteratorMode::Start) {
            let (_, v) = item?;
            leases.push(keys::unseal_prost::<Lease>("lease", &v)?);
        }
        let codec = |what: &'static str, e: serde_json::Error| CodecError::Payload {
            what,
            reason: e.to_string(),
        };
        let snap = SnapshotData {
            format_version: SNAPSHOT_FORMAT,
            revision,
            kvs,
            membership_json: serde_json::to_vec(&membership)
                .map_err(|e| codec("snapshot.membership", e))?
                .into(),
            last_applied_json: serde_json::to_vec(&last_applied)
                .map_err(|e| codec("snapshot.last_applied", e))?
                .into(),
            leases,
            next_lease_id,
        };
        let snapshot_id = match &last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, revision),
            None => format!("none-{revision}"),
        };
        Ok(StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            },
            data: keys::seal_prost(&snap),
        })
    }

    /// Makes `built` the current snapshot (in `sm_meta` and in memory) unless a newer one is.
    fn persist(&self, built: &StoredSnapshot) -> Result<(), DbError> {
        let mut current = lock(&self.snapshot);
        if let Some(cur) = current.as_ref()
            && cur.meta.last_log_id > built.meta.last_log_id
        {
            return Ok(());
        }
        let meta_cf = self.core.cf(keys::CF_SM_META)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            &meta_cf,
            keys::SM_SNAPSHOT_META,
            keys::seal_json("sm_meta.snapshot_meta", &built.meta)?,
        );
        batch.put_cf(&meta_cf, keys::SM_SNAPSHOT_DATA, &built.data);
        self.core.write(batch, true)?;
        *current = Some(built.clone());
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let built = self.build().map_err(sm_read_err)?;
        self.persist(&built).map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(
                Some(built.meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        Ok(Snapshot {
            meta: built.meta,
            snapshot: Box::new(Cursor::new(built.data)),
        })
    }
}
