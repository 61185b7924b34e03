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

use strata_proto::pb::metastore::{EventKind, KeyValue, WatchEvent};

use crate::types::{
    Command, CommandResult, Compare, Expect, Txn, TxnOp, TxnOpResult, TxnResponse, Written,
};

/// Where [`ApplyBatch`] reads the current value of a key.
pub(crate) trait KvSource {
    type Error;
    fn load(&self, key: &str) -> Result<Option<KeyValue>, Self::Error>;
}

/// The outcome of a batch: the final state of every touched key (`None` = deleted), the
/// events in revision order and the revision after the batch.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) changes: BTreeMap<String, Option<KeyValue>>,
    pub(crate) events: Vec<WatchEvent>,
    pub(crate) revision: u64,
}

/// Applies commands on top of a [`KvSource`], accumulating their effects.
pub(crate) struct ApplyBatch<'a, S: KvSource> {
    source: &'a S,
    out: Applied,
}

impl<'a, S: KvSource> ApplyBatch<'a, S> {
    /// Starts a batch over `source` whose last applied revision is `revision`.
    pub(crate) fn new(source: &'a S, revision: u64) -> Self {
        ApplyBatch {
            source,
            out: Applied {
                revision,
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

    /// Applies one command and returns its result for the proposer.
    pub(crate) fn apply(&mut self, cmd: &Command) -> Result<CommandResult, S::Error> {
        match cmd {
            Command::Put { key, value, expect } => {
                let current = self.current(key)?;
                let actual = current.as_ref().map(|kv| kv.version);
                if !expect.holds(actual) {
                    return Ok(CommandResult::Mismatch { actual });
                }
                let revision = self.out.revision + 1;
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    version: actual.map_or(1, |v| v + 1),
                    create_revision: current.map_or(revision, |kv| kv.create_revision),
                    mod_revision: revision,
                };
                let written = Written {
                    revision,
                    version: kv.version,
                };
                self.record(EventKind::Put, kv.clone());
                self.out.changes.insert(key.clone(), Some(kv));
                Ok(CommandResult::Written(written))
            }
            Command::Delete { key, expect } => {
                let current = self.current(key)?;
                let actual = current.as_ref().map(|kv| kv.version);
                if !expect.holds(actual) {
                    return Ok(CommandResult::Mismatch { actual });
                }
                if current.is_none() {
                    return Ok(CommandResult::Absent);
                }
                let revision = self.out.revision + 1;
                // As etcd: a delete event carries the key and the deleting revision only.
                let tombstone = KeyValue {
                    key: key.clone(),
                    mod_revision: revision,
                    ..KeyValue::default()
                };
                self.record(EventKind::Delete, tombstone);
                self.out.changes.insert(key.clone(), None);
                Ok(CommandResult::Deleted { revision })
            }
            Command::Txn(txn) => self.apply_txn(txn).map(CommandResult::Txn),
        }
    }

    /// Evaluates every comparison, then applies one branch. Each operation takes its own
    /// revision (so the history keeps one event per revision); all land in this one entry.
    fn apply_txn(&mut self, txn: &Txn) -> Result<TxnResponse, S::Error> {
        let mut succeeded = true;
        for compare in &txn.compares {
            let holds = match compare {
                Compare::Version { key, expect } => {
                    expect.holds(self.current(key)?.map(|kv| kv.version))
                }
                Compare::Value { key, value } => {
                    self.current(key)?.is_some_and(|kv| kv.value == *value)
                }
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
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let cmd = match op {
                TxnOp::Put { key, value } => Command::Put {
                    key: key.clone(),
                    value: value.clone(),
                    expect: Expect::Any,
                },
                TxnOp::Delete { key } => Command::Delete {
                    key: key.clone(),
                    expect: Expect::Any,
                },
            };
            results.push(match self.apply(&cmd)? {
                CommandResult::Written(w) => TxnOpResult::Written(w),
                CommandResult::Deleted { revision } => TxnOpResult::Deleted { revision },
                // Unconditional puts and deletes can only write, delete or find nothing.
                _ => TxnOpResult::Absent,
            });
        }
        Ok(TxnResponse { succeeded, results })
    }

    fn record(&mut self, kind: EventKind, kv: KeyValue) {
        self.out.revision += 1;
        self.out.events.push(WatchEvent {
            revision: self.out.revision,
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
    }

    fn put(key: &str, value: &'static [u8], expect: Expect) -> Command {
        Command::Put {
            key: key.into(),
            value: Bytes::from_static(value),
            expect,
        }
    }

    fn del(key: &str, expect: Expect) -> Command {
        Command::Delete {
            key: key.into(),
            expect,
        }
    }

    fn run(source: &MapSource, revision: u64, cmds: &[Command]) -> (Vec<CommandResult>, Applied) {
        let mut batch = ApplyBatch::new(source, revision);
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
        assert_eq!(applied.revision, 12);
        let kv = applied.changes.get("a").cloned().flatten();
        assert_eq!(kv.as_ref().map(|kv| kv.create_revision), Some(11));
        assert_eq!(kv.as_ref().map(|kv| kv.mod_revision), Some(12));
        assert_eq!(applied.events.len(), 2);
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
        assert_eq!(applied.revision, 5);
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
        }
    }

    /// When every comparison holds, all success operations apply, in order, each with its own
    /// revision; otherwise only the failure branch applies and the success ops leave no trace.
    #[test]
    fn txn_applies_exactly_one_branch() {
        let source = MapSource(BTreeMap::new());
        let mut batch = ApplyBatch::new(&source, 10);
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
        assert_eq!(out.revision, 13);
        assert!(out.changes.contains_key("/lost"), "failure branch applied");
        assert!(
            out.changes.get("/a").is_some_and(|kv| kv.is_some()),
            "value mismatch deleted nothing"
        );
    }
}
