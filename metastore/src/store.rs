//! [`MetaStore`]: the public handle — open, read, write, watch, shut down.
//!
//! Writes go through `Raft::client_write` and return what the state machine's apply produced.
//! Reads call `Raft::ensure_linearizable` (this node is still leader and has applied everything
//! committed before the read began) and then read RocksDB directly.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::{BasicNode, Raft};
use strata_proto::pb::metastore::KeyValue;
use tokio::sync::Mutex;
use tracing::{debug, info, instrument};

use crate::MetaError;
use crate::config::MetaStoreConfig;
use crate::db::{self, Core, GuardWaiter};
use crate::keys;
use crate::log_store::LogStore;
use crate::network::NoNetworkFactory;
use crate::state_machine::StateMachine;
use crate::types::{Command, CommandResult, Expect, STANDALONE_NODE_ID, TypeConfig, Written};
use crate::watch::Watcher;

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 4096;

/// A handle to the metastore. Cheap to clone, `Send + Sync`.
///
/// The database stays open while any clone (or [`Watcher`]) lives; to reopen the same
/// directory, call [`MetaStore::shutdown`] and drop every clone and watcher first.
#[derive(Clone)]
pub struct MetaStore {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft<TypeConfig>,
    core: Arc<Core>,
    config: MetaStoreConfig,
    raft_released: Mutex<GuardWaiter>,
}

fn validate_key(key: &str) -> Result<(), MetaError> {
    let reason = if key.is_empty() {
        "key is empty"
    } else if key.len() > MAX_KEY_LEN {
        "key is longer than 4096 bytes"
    } else {
        return Ok(());
    };
    Err(MetaError::InvalidKey {
        key: key.to_string(),
        reason,
    })
}

impl MetaStore {
    /// Opens or creates a single-voter metastore in `dir` (creating the directory).
    ///
    /// Bootstrapping (initialising raft with this node as the only voter) is idempotent across
    /// restarts. Returns once this node is leader and has applied everything in its log, so
    /// reads after it see every durable write.
    #[instrument(skip_all, fields(dir = %dir.display()))]
    pub async fn open_standalone(
        dir: &Path,
        config: MetaStoreConfig,
    ) -> Result<MetaStore, MetaError> {
        let raft_config = config.raft_config()?;
        let path = dir.to_path_buf();
        let capacity = config.watch_channel_capacity;
        let core = tokio::task::spawn_blocking(move || -> Result<Arc<Core>, MetaError> {
            std::fs::create_dir_all(&path)
                .map_err(|e| MetaError::Storage(format!("creating {}: {e}", path.display())))?;
            Ok(Core::open(&path, capacity)?)
        })
        .await
        .map_err(|e| MetaError::Storage(format!("opening the database: {e}")))??;

        let (guard, raft_released) = db::raft_guard();
        let log_store = LogStore::new(core.clone(), guard.clone());
        let state_machine = StateMachine::open(core.clone(), guard)?;
        let raft = Raft::new(
            STANDALONE_NODE_ID,
            raft_config,
            NoNetworkFactory,
            log_store,
            state_machine,
        )
        .await?;
        let store = MetaStore {
            inner: Arc::new(Inner {
                raft,
                core,
                config,
                raft_released: Mutex::new(raft_released),
            }),
        };
        match store.bootstrap().await {
            Ok(()) => {
                info!(revision = store.current_revision(), "metastore ready");
                Ok(store)
            }
            Err(e) => {
                // Stop raft so it releases the database before we report the failure.
                if let Err(shutdown_err) = store.shutdown().await {
                    debug!(error = %shutdown_err, "shutdown after a failed open");
                }
                Err(e)
            }
        }
    }

    /// Initialises the one-voter group if needed, then waits for leadership and for every
    /// log entry to be applied.
    async fn bootstrap(&self) -> Result<(), MetaError> {
        let raft = &self.inner.raft;
        if !raft.is_initialized().await? {
            let members = BTreeMap::from([(STANDALONE_NODE_ID, BasicNode::default())]);
            match raft.initialize(members).await {
                Ok(()) => info!("initialised a new one-voter metastore"),
                // Raced with an earlier initialisation: already done.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let timeout = Duration::from_millis(self.inner.config.startup_timeout_ms);
        raft.wait(Some(timeout))
            .metrics(
                |m| m.current_leader == Some(STANDALONE_NODE_ID),
                "metastore leadership",
            )
            .await
            .map_err(|e| match e {
                WaitError::ShuttingDown => MetaError::Closed,
                WaitError::Timeout(after, _) => {
                    MetaError::Raft(format!("this node did not become leader within {after:?}"))
                }
            })?;
        // Waits until everything committed (all of our log, as the only voter) is applied.
        raft.ensure_linearizable().await?;
        Ok(())
    }

    /// The raft handle, for tests that wait on raft metrics.
    #[cfg(test)]
    pub(crate) fn inner_raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    fn check_open(&self) -> Result<(), MetaError> {
        if self.inner.core.is_closed() {
            Err(MetaError::Closed)
        } else {
            Ok(())
        }
    }

    async fn linearize(&self) -> Result<(), MetaError> {
        self.check_open()?;
        self.inner.raft.ensure_linearizable().await?;
        Ok(())
    }

    async fn propose(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        self.check_open()?;
        let resp = self.inner.raft.client_write(cmd).await?;
        Ok(resp.data)
    }

    /// The current value of `key` (linearizable).
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        validate_key(key)?;
        self.linearize().await?;
        Ok(self.inner.core.get_kv(key)?)
    }

    /// Sets `key` to `value` if `expect` holds.
    pub async fn put(&self, key: &str, value: Bytes, expect: Expect) -> Result<Written, MetaError> {
        validate_key(key)?;
        let max = self.inner.config.max_value_size;
        if value.len() > max {
            return Err(MetaError::ValueTooLarge {
                key: key.to_string(),
                len: value.len(),
                max,
            });
        }
        let cmd = Command::Put {
            key: key.to_string(),
            value,
            expect,
        };
        match self.propose(cmd).await? {
            CommandResult::Written(w) => Ok(w),
            CommandResult::Mismatch { actual } => Err(MetaError::VersionMismatch {
                key: key.to_string(),
                expected: expect,
                actual,
            }),
            other => Err(unexpected("put", &other)),
        }
    }

    /// Deletes `key` if `expect` holds. `Ok(true)` if a key was deleted, `Ok(false)` if it was
    /// absent and `expect` allowed that (`Any` or `Absent`).
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<bool, MetaError> {
        validate_key(key)?;
        let cmd = Command::Delete {
            key: key.to_string(),
            expect,
        };
        match self.propose(cmd).await? {
            CommandResult::Deleted { .. } => Ok(true),
            CommandResult::Absent => Ok(false),
            CommandResult::Mismatch { actual } => Err(MetaError::VersionMismatch {
                key: key.to_string(),
                expected: expect,
                actual,
            }),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// All keys starting with `prefix`, in key order (linearizable).
    pub async fn scan(&self, prefix: &str) -> Result<Vec<KeyValue>, MetaError> {
        self.linearize().await?;
        Ok(self.inner.core.scan(prefix)?)
    }

    /// Streams every change under `prefix` with revision >= `from_revision`, history first,
    /// then live, in revision order, with no gaps and no duplicates.
    ///
    /// As in etcd, `from_revision == 0` means "from now on" (`current_revision() + 1`).
    /// A `from_revision` older than the kept history fails with [`MetaError::Compacted`].
    pub async fn watch(&self, prefix: &str, from_revision: u64) -> Result<Watcher, MetaError> {
        self.check_open()?;
        Watcher::start(self.inner.core.clone(), prefix, from_revision)
    }

    /// Allocates the next value of the counter at `key` (an 8-byte big-endian u64), by
    /// compare-and-set retry. The first call returns 1; concurrent callers get distinct,
    /// gapless values.
    pub async fn next_id(&self, key: &str) -> Result<u64, MetaError> {
        loop {
            let (next, expect) = match self.get(key).await? {
                None => (1, Expect::Absent),
                Some(kv) => {
                    let current = keys::decode_u64("counter", &kv.value).map_err(|_| {
                        MetaError::InvalidKey {
                            key: key.to_string(),
                            reason: "not a counter: value is not an 8-byte big-endian u64",
                        }
                    })?;
                    let next = current
                        .checked_add(1)
                        .ok_or_else(|| MetaError::InvalidKey {
                            key: key.to_string(),
                            reason: "counter is exhausted (u64::MAX)",
                        })?;
                    (next, Expect::Version(kv.version))
                }
            };
            let value = Bytes::copy_from_slice(&next.to_be_bytes());
            match self.put(key, value, expect).await {
                Ok(_) => return Ok(next),
                // Somebody else allocated in between: re-read and try again.
                Err(MetaError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Revision of the last applied change (0 before the first).
    pub fn current_revision(&self) -> u64 {
        self.inner.core.revision()
    }

    /// Stops raft and waits until it no longer uses the database. Idempotent. Calls made
    /// afterwards fail with [`MetaError::Closed`]; watchers end with `Err(Closed)`.
    pub async fn shutdown(&self) -> Result<(), MetaError> {
        self.inner.core.close();
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| MetaError::Raft(format!("raft task failed: {e}")))?;
        self.inner.raft_released.lock().await.released().await;
        Ok(())
    }
}

fn unexpected(op: &str, result: &CommandResult) -> MetaError {
    MetaError::Raft(format!("{op} produced an unexpected result: {result:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handle and watchers can move across tasks: `MetaStore` is `Clone + Send + Sync`,
    /// and `Watcher` and the futures of its `next()` and of the store's calls are `Send`.
    #[test]
    fn handles_and_futures_are_send() {
        fn send_sync_clone<T: Send + Sync + Clone>() {}
        fn send<T: Send>(_: &T) {}
        send_sync_clone::<MetaStore>();
        #[allow(dead_code)]
        fn futures_are_send(store: &MetaStore, watcher: &mut Watcher) {
            send(&store.get("k"));
            send(&store.put("k", Bytes::new(), Expect::Any));
            send(&store.next_id("k"));
            send(&store.watch("", 0));
            send(&watcher.next());
        }
    }

    /// Keys must be non-empty and at most 4 KiB.
    #[test]
    fn key_validation_bounds() {
        assert!(matches!(
            validate_key(""),
            Err(MetaError::InvalidKey { .. })
        ));
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(matches!(
            validate_key(&"k".repeat(MAX_KEY_LEN + 1)),
            Err(MetaError::InvalidKey { .. })
        ));
    }
}
