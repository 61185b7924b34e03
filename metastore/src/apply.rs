//! The key-space semantics, as plain logic: apply [`Command`]s over a read view.
//!
//! [`ApplyBatch`] reads current values through a [`KvSource`] (RocksDB in production, a map in
//! tests), keeps the batch's own changes in an overlay so later commands in the same batch see
//! earlier ones, and yields the changed keys and the watch events to persist. It performs no
//! I/O of its own; the state machine writes the result in one `WriteBatch`.
//!
//! Rules (etcd's): the global revision grows by one per command that changes something; a key's
//! `version` is 1 on creation and +1 per put; deleting a key removes it, and re-creating it
//! starts again at version 1. A command whose condition fails changes nothing.

use std::collections::BTreeMap;

use strata_proto::pb::metastore::{EventKind, KeyValue, Lease, WatchEvent};

use crate::types::{
    Command, CommandResult, Compare, LeaseId, Txn, TxnOp, TxnOpResult, TxnResponse, Written,
};

/// Where [`ApplyBatch`] reads the current state of a key or a lease.
pub(crate) trait KvSource {
    type Error;
    fn load(&self, key: &str) -> Result<Option<KeyValue>, Self::Error>;
    fn load_lease(&self, id: LeaseId) -> Result<Option<Lease>, Self::Error>;
}

/// The state machine's counters, before or after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Revision of the last change.
    pub(crate) revision: u64,
    /// Oldest revision still in the history.
    pub(crate) oldest_revision: u64,
    /// The id the next granted lease gets.
    pub(crate) next_lease_id: LeaseId,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            revision: 0,
            oldest_revision: 1,
            next_lease_id: 1,
        }
    }
}

/// The outcome of a batch: the final state of every touched key and lease (`None` =
/// deleted), the events in revision order and the counters after the batch.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) changes: BTreeMap<String, Option<KeyValue>>,
    pub(crate) leases: BTreeMap<LeaseId, Option<Lease>>,
    pub(crate) events: Vec<WatchEvent>,
    pub(crate) counters: Counters,
    /// The history below `counters.oldest_revision` is to be dropped.
    pub(crate) compacted: bool,
}

/// Applies commands on top of a [`KvSource`], accumulating their effects.
pub(crate) struct ApplyBatch<'a, S: KvSource> {
    source: &'a S,
    out: Applied,
}

impl<'a, S: KvSource> ApplyBatch<'a, S> {
    /// Starts a batch over `source`, whose counters are `counters`.
    pub(crate) fn new(source: &'a S, counters: Counters) -> Self {
        ApplyBatch {
            source,
            out: Applied {
                counters,
                ..Applied::default()
            },
        }
    }

    fn current(&self, key: &str) -> Result<Option<KeyValue>, S::Error> {
        match self.out.changes.get(key) {
            Some(state) => Ok(state.clone()),
            None => self.source.load(key),
        }
    }

    fn lease(&self, id: LeaseId) -> Result<Option<Lease>, S::Error> {
        if id == 0 {
            return Ok(None);
        }
        match self.out.leases.get(&id) {
            Some(state) => Ok(state.clone()),
            None => self.source.load_lease(id),
        }
    }

    /// Applies one command and returns its result for the proposer.
    pub(crate) fn apply(&mut self, cmd: &Command) -> Result<CommandResult, S::Error> {
        match cmd {
            Command::Put {
                key,
                value,
                expect,
                lease,
            } => {
                let current = self.current(key)?;
                let actual = current.as_ref().map(|kv| kv.version);
                if !expect.holds(actual) {
                    return Ok(CommandResult::Mismatch { actual });
                }
                if *lease != 0 && self.lease(*lease)?.is_none() {
                    return Ok(CommandResult::LeaseNotFound { id: *lease });
                }
                Ok(CommandResult::Written(
                    self.put(key, value, *lease, current)?,
                ))
            }
            Command::Delete { key, expect } => {
                let current = self.current(key)?;
                let actual = current.as_ref().map(|kv| kv.version);
                if !expect.holds(actual) {
                    return Ok(CommandResult::Mismatch { actual });
                }
                match current {
                    None => Ok(CommandResult::Absent),
                    Some(kv) => Ok(CommandResult::Deleted {
                        revision: self.delete(kv)?,
                    }),
                }
            }
            Command::Txn(txn) => self.apply_txn(txn),
            Command::Batch { commands } => Ok(CommandResult::Batch(
                commands
                    .iter()
                    .map(|cmd| self.apply(cmd))
                    .collect::<Result<_, _>>()?,
            )),
            Command::LeaseGrant { ttl_ms } => {
                let id = self.out.counters.next_lease_id;
                self.out.counters.next_lease_id += 1;
                let lease = Lease {
                    id,
                    ttl_ms: *ttl_ms,
                    keys: Vec::new(),
                };
                self.out.leases.insert(id, Some(lease));
                Ok(CommandResult::LeaseGranted {
                    id,
                    ttl_ms: *ttl_ms,
                })
            }
            Command::LeaseRevoke { id, .. } => {
                let Some(lease) = self.lease(*id)? else {
                    return Ok(CommandResult::LeaseNotFound { id: *id });
                };
                let mut deleted_keys = 0;
                for key in &lease.keys {
                    if let Some(kv) = self.current(key)? {
                        self.delete(kv)?;
                        deleted_keys += 1;
                    }
                }
                self.out.leases.insert(*id, None);
                Ok(CommandResult::LeaseRevoked {
                    id: *id,
                    deleted_keys,
                })
            }
            Command::Compact { revision } => {
                let counters = &mut self.out.counters;
                if *revision > counters.revision {
                    return Ok(CommandResult::CompactBeyondRevision {
                        requested: *revision,
                        current: counters.revision,
                    });
                }
                if *revision > counters.oldest_revision {
                    counters.oldest_revision = *revision;
                    self.out.compacted = true;
                }
                Ok(CommandResult::Compacted {
                    oldest: counters.oldest_revision,
                })
            }
        }
    }

    /// Writes `key` (whose current state is `current`), moving it to `lease`.
    fn put(
        &mut self,
        key: &str,
        value: &bytes::Bytes,
        lease: LeaseId,
        current: Option<KeyValue>,
    ) -> Result<Written, S::Error> {
        let old_lease = current.as_ref().map_or(0, |kv| kv.lease);
        if old_lease != lease {
            self.unbind(old_lease, key)?;
            self.bind(lease, key)?;
        }
        let revision = self.out.counters.revision + 1;
        let kv = KeyValue {
            key: key.to_owned(),
            value: value.clone(),
            version: current.as_ref().map_or(1, |kv| kv.version + 1),
            create_revision: current.map_or(revision, |kv| kv.create_revision),
            mod_revision: revision,
            lease,
        };
        let written = Written {
            revision,
            version: kv.version,
        };
        self.record(EventKind::Put, kv.clone());
        self.out.changes.insert(key.to_owned(), Some(kv));
        Ok(written)
    }

    /// Removes an existing key; returns the deleting revision.
    fn delete(&mut self, current: KeyValue) -> Result<u64, S::Error> {
        self.unbind(current.lease, &current.key)?;
        let revision = self.out.counters.revision + 1;
        // As etcd: a delete event carries the key and the deleting revision only.
        let tombstone = KeyValue {
            key: current.key.clone(),
            mod_revision: revision,
            ..KeyValue::default()
        };
        self.record(EventKind::Delete, tombstone);
        self.out.changes.insert(current.key, None);
        Ok(revision)
    }

    fn bind(&mut self, lease: LeaseId, key: &str) -> Result<(), S::Error> {
        if let Some(mut record) = self.lease(lease)? {
            if let Err(at) = record.keys.binary_search_by(|k| k.as_str().cmp(key)) {
                record.keys.insert(at, key.to_owned());
            }
            self.out.leases.insert(lease, Some(record));
        }
        Ok(())
    }

    fn unbind(&mut self, lease: LeaseId, key: &str) -> Result<(), S::Error> {
        if let Some(mut record) = self.lease(lease)? {
            if let Ok(at) = record.keys.binary_search_by(|k| k.as_str().cmp(key)) {
                record.keys.remove(at);
            }
            self.out.leases.insert(lease, Some(record));
        }
        Ok(())
    }

    /// Evaluates every comparison, then applies one branch. Each operation takes its own
    /// revision (so the history keeps one event per revision); all land in this one entry.
    /// A branch naming a lease that does not exist applies nothing.
    fn apply_txn(&mut self, txn: &Txn) -> Result<CommandResult, S::Error> {
        let mut succeeded = true;
        for compare in &txn.compares {
            let holds = match compare {
                Compare::Version { key, expect } => {
                    expect.holds(self.current(key)?.map(|kv| kv.version))
                }
                Compare::Value { key, value } => {
                    self.current(key)?.is_some_and(|kv| kv.value == *value)
                }
                Compare::LeaderTimeAtMost {
                    deadline_ms,
                    leader_ms,
                } => *leader_ms != 0 && leader_ms <= deadline_ms,
            };
            if !holds {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            if let TxnOp::Put { lease, .. } = op
                && *lease != 0
                && self.lease(*lease)?.is_none()
            {
                return Ok(CommandResult::LeaseNotFound { id: *lease });
            }
        }
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let current = self.current(op.key())?;
            results.push(match (op, current) {
                (TxnOp::Put { key, value, lease }, current) => {
                    TxnOpResult::Written(self.put(key, value, *lease, current)?)
                }
                (TxnOp::Delete { .. }, Some(kv)) => TxnOpResult::Deleted {
                    revision: self.delete(kv)?,
                },
                (TxnOp::Delete { .. }, None) => TxnOpResult::Absent,
            });
        }
        Ok(CommandResult::Txn(TxnResponse { succeeded, results }))
    }

    fn record(&mut self, kind: EventKind, kv: KeyValue) {
        self.out.counters.revision += 1;
        self.out.events.push(WatchEvent {
            revision: self.out.counters.revision,
            kind: kind as i32,
            kv: Some(kv),
        });
    }

    /// The batch's effects.
    pub(crate) fn finish(self) -> Applied {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;

    use super::*;
    use crate::types::Expect;

    struct MapSource(BTreeMap<String, KeyValue>);

    impl KvSource for MapSource {
        type Error = Infallible;
        fn load(&self, key: &str) -> Result<Option<KeyValue>, Infallible> {
            Ok(self.0.get(key).cloned())
        }
        fn load_lease(&self, _: LeaseId) -> Result<Option<Lease>, Infallible> {
            Ok(None)
        }
    }

    fn at(revision: u64) -> Counters {
        Counters {
            revision,
            ..Counters::default()
        }
    }

    fn put(key: &str, value: &'static [u8], expect: Expect) -> Command {
        Command::Put {
            key: key.into(),
            value: Bytes::from_static(value),
            expect,
            lease: 0,
        }
    }

    fn del(key: &str, expect: Expect) -> Command {
        Command::Delete {
            key: key.into(),
            expect,
        }
    }

    fn run(source: &MapSource, revision: u64, cmds: &[Command]) -> (Vec<CommandResult>, Applied) {
        let mut batch = ApplyBatch::new(source, at(revision));
        let results = cmds
            .iter()
            .map(|c| match batch.apply(c) {
                Ok(r) => r,
                Err(never) => match never {},
            })
            .collect();
        (results, batch.finish())
    }

    /// Commands later in a batch see the effects of earlier ones; versions and revisions
    /// advance by one per successful change.
    #[test]
    fn batch_sees_its_own_writes() {
        let src = MapSource(BTreeMap::new());
        let (results, applied) = run(
            &src,
            10,
            &[
                put("a", b"1", Expect::Absent),
                put("a", b"2", Expect::Version(1)),
                put("a", b"3", Expect::Absent),
            ],
        );
        assert_eq!(
            results,
            vec![
                CommandResult::Written(Written {
                    revision: 11,
                    version: 1
                }),
                CommandResult::Written(Written {
                    revision: 12,
                    version: 2
                }),
                CommandResult::Mismatch { actual: Some(2) },
            ]
        );
        assert_eq!(applied.counters.revision, 12);
        let kv = applied.changes.get("a").cloned().flatten();
        assert_eq!(kv.as_ref().map(|kv| kv.create_revision), Some(11));
        assert_eq!(kv.as_ref().map(|kv| kv.mod_revision), Some(12));
        assert_eq!(applied.events.len(), 2);
    }

    /// A batch command applies its commands in order exactly as separate entries would:
    /// each has its own condition, revision and result.
    #[test]
    fn batch_command_applies_each_command_as_its_own() {
        let src = MapSource(BTreeMap::new());
        let cmds = vec![
            put("a", b"1", Expect::Absent),
            put("a", b"2", Expect::Absent),
            put("b", b"1", Expect::Absent),
            del("a", Expect::Version(1)),
        ];
        let (separate, separate_applied) = run(&src, 5, &cmds);
        let (batched, batched_applied) = run(&src, 5, &[Command::Batch { commands: cmds }]);
        assert_eq!(batched, vec![CommandResult::Batch(separate)]);
        assert_eq!(batched_applied.counters, separate_applied.counters);
        assert_eq!(batched_applied.changes, separate_applied.changes);
        assert_eq!(batched_applied.events, separate_applied.events);
        assert_eq!(
            batched_applied.counters.revision, 8,
            "three changes, one mismatch"
        );
    }

    /// A failed condition changes nothing: no revision, no event, no key change.
    #[test]
    fn failed_condition_changes_nothing() {
        let mut map = BTreeMap::new();
        map.insert(
            "k".to_string(),
            KeyValue {
                key: "k".into(),
                value: Bytes::from_static(b"v"),
                version: 3,
                create_revision: 1,
                mod_revision: 5,
                lease: 0,
            },
        );
        let src = MapSource(map);
        let (results, applied) = run(
            &src,
            5,
            &[
                put("k", b"x", Expect::Version(2)),
                put("k", b"x", Expect::Absent),
                del("k", Expect::Version(4)),
                del("missing", Expect::Version(1)),
            ],
        );
        assert_eq!(
            results,
            vec![
                CommandResult::Mismatch { actual: Some(3) },
                CommandResult::Mismatch { actual: Some(3) },
                CommandResult::Mismatch { actual: Some(3) },
                CommandResult::Mismatch { actual: None },
            ]
        );
        assert_eq!(applied.counters.revision, 5);
        assert!(applied.changes.is_empty());
        assert!(applied.events.is_empty());
    }

    /// Deleting then re-creating a key restarts its version at 1 with a new create_revision;
    /// deleting an absent key is a no-op.
    #[test]
    fn delete_then_recreate_restarts_version() {
        let src = MapSource(BTreeMap::new());
        let (results, applied) = run(
            &src,
            0,
            &[
                put("k", b"1", Expect::Any),
                put("k", b"2", Expect::Any),
                del("k", Expect::Version(2)),
                del("k", Expect::Any),
                put("k", b"3", Expect::Any),
            ],
        );
        assert_eq!(results[2], CommandResult::Deleted { revision: 3 });
        assert_eq!(results[3], CommandResult::Absent);
        assert_eq!(
            results[4],
            CommandResult::Written(Written {
                revision: 4,
                version: 1
            })
        );
        let kv = applied.changes.get("k").cloned().flatten();
        assert_eq!(kv.map(|kv| kv.create_revision), Some(4));
        let kinds: Vec<i32> = applied.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::Put as i32,
                EventKind::Put as i32,
                EventKind::Delete as i32,
                EventKind::Put as i32
            ]
        );
    }

    fn txn(compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Command {
        Command::Txn(Txn {
            compares,
            success,
            failure,
        })
    }

    fn tput(key: &str, value: &'static [u8]) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: Bytes::from_static(value),
            lease: 0,
        }
    }

    /// When every comparison holds, all success operations apply, in order, each with its own
    /// revision; otherwise only the failure branch applies and the success ops leave no trace.
    #[test]
    fn txn_applies_exactly_one_branch() {
        let source = MapSource(BTreeMap::new());
        let mut batch = ApplyBatch::new(&source, at(10));
        let create = txn(
            vec![
                Compare::Version {
                    key: "/a".into(),
                    expect: Expect::Absent,
                },
                Compare::Version {
                    key: "/b".into(),
                    expect: Expect::Absent,
                },
            ],
            vec![tput("/a", b"1"), tput("/b", b"2")],
            vec![tput("/lost", b"x")],
        );
        match batch.apply(&create).expect("infallible") {
            CommandResult::Txn(r) => {
                assert!(r.succeeded);
                assert_eq!(
                    r.results,
                    vec![
                        TxnOpResult::Written(Written {
                            revision: 11,
                            version: 1
                        }),
                        TxnOpResult::Written(Written {
                            revision: 12,
                            version: 1
                        })
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        // Same transaction again: /a exists now, so the failure branch runs instead.
        match batch.apply(&create).expect("infallible") {
            CommandResult::Txn(r) => assert!(!r.succeeded && r.results.len() == 1),
            other => panic!("{other:?}"),
        }
        let value_mismatch = txn(
            vec![Compare::Value {
                key: "/a".into(),
                value: Bytes::from_static(b"other"),
            }],
            vec![TxnOp::Delete { key: "/a".into() }],
            vec![],
        );
        assert!(matches!(
            batch.apply(&value_mismatch),
            Ok(CommandResult::Txn(TxnResponse {
                succeeded: false,
                ..
            }))
        ));
        let out = batch.finish();
        assert_eq!(out.counters.revision, 13);
        assert!(out.changes.contains_key("/lost"), "failure branch applied");
        assert!(
            out.changes.get("/a").is_some_and(|kv| kv.is_some()),
            "value mismatch deleted nothing"
        );
    }

    /// A leader-time comparison holds only once stamped, and only while the stamp is at most
    /// the deadline; stamping reaches every transaction of a batch and overwrites what was
    /// there.
    #[test]
    fn leader_time_compare_holds_only_stamped_within_the_deadline() {
        let source = MapSource(BTreeMap::new());
        let at_most = |deadline_ms, leader_ms| {
            txn(
                vec![Compare::LeaderTimeAtMost {
                    deadline_ms,
                    leader_ms,
                }],
                vec![tput("/t", b"x")],
                vec![],
            )
        };
        let succeeded = |cmd: &Command| {
            let mut batch = ApplyBatch::new(&source, at(1));
            match batch.apply(cmd).expect("infallible") {
                CommandResult::Txn(r) => r.succeeded,
                other => panic!("{other:?}"),
            }
        };
        assert!(!succeeded(&at_most(1_000, 0)), "unstamped");
        assert!(succeeded(&at_most(1_000, 1_000)), "at the deadline");
        assert!(!succeeded(&at_most(1_000, 1_001)), "past it");

        let mut batch = Command::Batch {
            commands: vec![at_most(1_000, 5_000), put("/p", b"v", Expect::Any)],
        };
        batch.stamp_leader_time(900);
        let Command::Batch { commands } = &batch else {
            unreachable!()
        };
        assert_eq!(
            commands[0],
            at_most(1_000, 900),
            "the proposer's time overwritten"
        );
        assert!(succeeded(&commands[0]));
    }

    fn ok<T>(r: Result<T, Infallible>) -> T {
        match r {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    fn leased(key: &str, lease: LeaseId) -> Command {
        Command::Put {
            key: key.into(),
            value: Bytes::from_static(b"v"),
            expect: Expect::Any,
            lease,
        }
    }

    /// Granting assigns increasing ids; keys bind to their lease; revoking deletes exactly the
    /// bound keys (a key moved to no lease, or deleted, is no longer bound) and ends the lease;
    /// a second revoke, or a put on the ended lease, finds no lease and changes nothing.
    #[test]
    fn lease_binds_and_revoke_deletes_bound_keys() {
        let src = MapSource(BTreeMap::new());
        let mut batch = ApplyBatch::new(&src, at(0));
        assert_eq!(
            ok(batch.apply(&Command::LeaseGrant { ttl_ms: 5000 })),
            CommandResult::LeaseGranted {
                id: 1,
                ttl_ms: 5000
            }
        );
        assert_eq!(
            ok(batch.apply(&Command::LeaseGrant { ttl_ms: 9000 })),
            CommandResult::LeaseGranted {
                id: 2,
                ttl_ms: 9000
            }
        );
        for key in ["/a", "/b", "/c", "/d"] {
            ok(batch.apply(&leased(key, 1)));
        }
        ok(batch.apply(&leased("/b", 0))); // moved off the lease
        ok(batch.apply(&leased("/d", 2))); // moved to another lease
        ok(batch.apply(&del("/c", Expect::Any))); // gone already
        assert_eq!(
            ok(batch.apply(&leased("/x", 7))),
            CommandResult::LeaseNotFound { id: 7 }
        );
        let before = batch.out.counters.revision;
        assert_eq!(
            ok(batch.apply(&Command::LeaseRevoke {
                id: 1,
                expired: true
            })),
            CommandResult::LeaseRevoked {
                id: 1,
                deleted_keys: 1
            }
        );
        assert_eq!(batch.out.counters.revision, before + 1, "one delete: /a");
        assert_eq!(
            ok(batch.apply(&Command::LeaseRevoke {
                id: 1,
                expired: true
            })),
            CommandResult::LeaseNotFound { id: 1 }
        );
        assert_eq!(
            ok(batch.apply(&leased("/y", 1))),
            CommandResult::LeaseNotFound { id: 1 }
        );
        let out = batch.finish();
        assert_eq!(out.counters.next_lease_id, 3);
        assert_eq!(out.changes.get("/a"), Some(&None));
        assert!(
            out.changes
                .get("/b")
                .is_some_and(|kv| kv.as_ref().is_some_and(|kv| kv.lease == 0))
        );
        assert!(
            out.changes
                .get("/d")
                .is_some_and(|kv| kv.as_ref().is_some_and(|kv| kv.lease == 2))
        );
        assert_eq!(out.leases.get(&1), Some(&None));
        assert_eq!(
            out.leases.get(&2).cloned().flatten().map(|l| l.keys),
            Some(vec!["/d".to_string()])
        );
        assert!(!out.changes.contains_key("/x") && !out.changes.contains_key("/y"));
    }

    /// A transaction whose chosen branch names a missing lease applies none of its operations.
    #[test]
    fn txn_with_missing_lease_applies_nothing() {
        let src = MapSource(BTreeMap::new());
        let mut batch = ApplyBatch::new(&src, at(4));
        let result = ok(batch.apply(&txn(
            vec![],
            vec![
                tput("/ok", b"1"),
                TxnOp::Put {
                    key: "/leased".into(),
                    value: Bytes::from_static(b"2"),
                    lease: 99,
                },
            ],
            vec![],
        )));
        assert_eq!(result, CommandResult::LeaseNotFound { id: 99 });
        let out = batch.finish();
        assert!(out.changes.is_empty() && out.events.is_empty());
        assert_eq!(out.counters.revision, 4);
    }

    /// Compaction moves the oldest kept revision forward only, never past the current
    /// revision, and says where history now starts.
    #[test]
    fn compaction_only_moves_forward_and_not_beyond_now() {
        let src = MapSource(BTreeMap::new());
        let mut batch = ApplyBatch::new(&src, at(10));
        assert_eq!(
            ok(batch.apply(&Command::Compact { revision: 11 })),
            CommandResult::CompactBeyondRevision {
                requested: 11,
                current: 10
            }
        );
        assert!(!batch.out.compacted);
        assert_eq!(
            ok(batch.apply(&Command::Compact { revision: 8 })),
            CommandResult::Compacted { oldest: 8 }
        );
        assert_eq!(
            ok(batch.apply(&Command::Compact { revision: 5 })),
            CommandResult::Compacted { oldest: 8 }
        );
        let out = batch.finish();
        assert!(out.compacted);
        assert_eq!(out.counters.oldest_revision, 8);
        assert_eq!(out.counters.revision, 10, "compaction is not a change");
    }
}
