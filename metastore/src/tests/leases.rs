//! Leases, sessions, history compaction and scan paging, on a real one-voter store.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, timeout};

use crate::{EventKind, Expect, MetaError, MetaStore, MetaStoreConfig, Session, Watcher};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Upper bound on any single wait; reaching it is a failure, not a pacing.
const DEADLINE: Duration = Duration::from_secs(20);

/// Short TTLs for tests: the minimum lease is 300 ms, and a new leader's grace is 100 ms.
fn fast_leases() -> MetaStoreConfig {
    MetaStoreConfig {
        heartbeat_interval_ms: 100,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        lease_min_ttl_ms: 300,
        lease_grace_ms: 100,
        housekeeping_interval_ms: 20,
        ..Default::default()
    }
}

async fn open(dir: &Path, config: MetaStoreConfig) -> Result<MetaStore, MetaError> {
    timeout(DEADLINE, MetaStore::open_standalone(dir, config))
        .await
        .map_err(|_| MetaError::Raft("open_standalone timed out".into()))?
}

fn val(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The next `n` events of `w`, failing if they do not all arrive within [`DEADLINE`].
async fn events(
    w: &mut Watcher,
    n: usize,
) -> Result<Vec<(EventKind, String)>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = match timeout(DEADLINE, w.next()).await {
            Err(_) => {
                return Err(format!("only {} of {n} events before the deadline", out.len()).into());
            }
            Ok(None) => return Err("watch ended".into()),
            Ok(Some(e)) => e?,
        };
        let key = event.kv.map(|kv| kv.key).unwrap_or_default();
        out.push((EventKind::try_from(event.kind)?, key));
    }
    Ok(out)
}

/// A lease that is not kept alive expires: the leader revokes it through the log, which
/// deletes exactly the keys bound to it (a key put without the lease stays), and afterwards
/// the lease is unknown to keep-alive, put and revoke alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrenewed_lease_expires_and_deletes_its_keys() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), fast_leases()).await?;
    let lease = store.lease_grant(Duration::from_millis(300)).await?;
    let mut watch = store.watch("/reg/", 0).await?;
    store
        .put_leased("/reg/a", val("1"), Expect::Absent, lease.id)
        .await?;
    store
        .put_leased("/reg/b", val("2"), Expect::Absent, lease.id)
        .await?;
    store.put("/reg/plain", val("3"), Expect::Absent).await?;
    assert_eq!(
        store.get("/reg/a").await?.map(|kv| kv.lease),
        Some(lease.id),
        "the key records its lease"
    );
    let seen = events(&mut watch, 5).await?;
    assert_eq!(
        seen[3..],
        [
            (EventKind::Delete, "/reg/a".to_string()),
            (EventKind::Delete, "/reg/b".to_string())
        ]
    );
    assert!(
        store.get("/reg/plain").await?.is_some(),
        "unleased key stays"
    );
    assert!(matches!(
        store.lease_keep_alive(lease.id).await,
        Err(MetaError::LeaseNotFound { id }) if id == lease.id
    ));
    assert!(matches!(
        store
            .put_leased("/reg/c", val("x"), Expect::Any, lease.id)
            .await,
        Err(MetaError::LeaseNotFound { .. })
    ));
    assert!(
        store.get("/reg/c").await?.is_none(),
        "nothing written half-way"
    );
    assert!(matches!(
        store.lease_revoke(lease.id).await,
        Err(MetaError::LeaseNotFound { .. })
    ));
    store.shutdown().await?;
    Ok(())
}

/// A session keeps its lease alive well past the TTL; closing it revokes the lease, and the
/// bound key is deleted at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_keeps_lease_alive_and_close_revokes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), fast_leases()).await?;
    let session = Session::start(store.clone(), Duration::from_millis(300)).await?;
    store
        .put_leased(
            "/brokers/1",
            val("addr"),
            Expect::Absent,
            session.lease_id(),
        )
        .await?;
    let mut watch = store.watch("/brokers/", 0).await?;
    // The property is about time passing: the key must outlive several TTLs.
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        assert!(session.is_alive(), "session lost while kept alive");
        assert!(
            store.get("/brokers/1").await?.is_some(),
            "key expired while kept alive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    session.close().await?;
    let seen = events(&mut watch, 1).await?;
    assert_eq!(seen, [(EventKind::Delete, "/brokers/1".to_string())]);
    store.shutdown().await?;
    Ok(())
}

/// A session whose lease is revoked behind its back reports itself lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_notices_its_lease_is_gone() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), fast_leases()).await?;
    let session = Session::start(store.clone(), Duration::from_millis(300)).await?;
    assert_eq!(store.lease_revoke(session.lease_id()).await?, 0);
    let why = timeout(DEADLINE, session.lost()).await?;
    assert!(why.contains("expired"), "{why}");
    assert!(!session.is_alive());
    store.shutdown().await?;
    Ok(())
}

/// TTLs outside the configured range are refused before anything is proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_ttl_out_of_range_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), fast_leases()).await?;
    let before = store.current_revision();
    for ttl in [Duration::from_millis(10), Duration::from_secs(100_000)] {
        assert!(matches!(
            store.lease_grant(ttl).await,
            Err(MetaError::InvalidLeaseTtl { .. })
        ));
    }
    assert_eq!(store.current_revision(), before);
    let granted = store.lease_grant(Duration::from_millis(300)).await?;
    assert_eq!(granted.id, 1, "the refused grants took no id");
    store.shutdown().await?;
    Ok(())
}

/// Leases are durable state: after a restart the lease and its binding are still there, a
/// new grant gets a fresh id, and the restarted leader (a new term) gives the lease a full
/// TTL plus grace before expiring it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = MetaStoreConfig {
        lease_min_ttl_ms: 1_000,
        ..fast_leases()
    };
    let store = open(dir.path(), config.clone()).await?;
    let lease = store.lease_grant(Duration::from_secs(5)).await?;
    store
        .put_leased("/own/x", val("1"), Expect::Absent, lease.id)
        .await?;
    store.shutdown().await?;
    drop(store);
    let store = open(dir.path(), config).await?;
    assert_eq!(
        store.lease_keep_alive(lease.id).await?,
        Duration::from_secs(5)
    );
    assert_eq!(
        store.get("/own/x").await?.map(|kv| kv.lease),
        Some(lease.id)
    );
    let next = store.lease_grant(Duration::from_secs(5)).await?;
    assert!(next.id > lease.id, "{next:?} after {lease:?}");
    assert_eq!(store.lease_revoke(lease.id).await?, 1);
    assert!(store.get("/own/x").await?.is_none());
    store.shutdown().await?;
    Ok(())
}

/// After compaction a watch from before the oldest kept revision fails with `Compacted`
/// naming it, a watch from it replays exactly the kept changes, and compacting to a future
/// revision is a typed error that changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_refuses_old_watches_and_keeps_the_rest() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), MetaStoreConfig::default()).await?;
    for i in 0..10 {
        store.put(&format!("/c/{i}"), val("v"), Expect::Any).await?;
    }
    let now = store.current_revision();
    assert!(matches!(
        store.compact(now + 5).await,
        Err(MetaError::FutureRevision { requested, current }) if requested == now + 5 && current == now
    ));
    assert_eq!(store.compact(now - 3).await?, now - 3);
    assert_eq!(store.oldest_revision(), now - 3);
    assert!(matches!(
        store.watch("/c/", now - 4).await,
        Err(MetaError::Compacted { requested, oldest }) if requested == now - 4 && oldest == now - 3
    ));
    let mut watch = store.watch("/c/", now - 3).await?;
    let seen = events(&mut watch, 4).await?;
    let keys: Vec<_> = seen.into_iter().map(|(_, k)| k).collect();
    assert_eq!(keys, ["/c/6", "/c/7", "/c/8", "/c/9"]);
    // Compacting to an older revision is a no-op that reports the current floor.
    assert_eq!(store.compact(2).await?, now - 3);
    store.shutdown().await?;
    Ok(())
}

/// The leader compacts history on its own once it holds more than `history_keep_revisions`
/// (plus a tenth), keeping at least that many revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_compacts_history_automatically() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = MetaStoreConfig {
        history_keep_revisions: 20,
        ..fast_leases()
    };
    let store = open(dir.path(), config).await?;
    for i in 0..60 {
        store.put(&format!("/h/{i}"), val("v"), Expect::Any).await?;
    }
    let deadline = Instant::now() + DEADLINE;
    while store.oldest_revision() == 1 {
        assert!(Instant::now() < deadline, "history never compacted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let oldest = store.oldest_revision();
    assert!(
        store.current_revision() - oldest >= 20,
        "kept at least 20 revisions"
    );
    assert!(store.watch("/h/", oldest).await.is_ok());
    assert!(matches!(
        store.watch("/h/", oldest - 1).await,
        Err(MetaError::Compacted { .. })
    ));
    store.shutdown().await?;
    Ok(())
}

/// Paging through a prefix returns every key under it exactly once, in order, and none of
/// its neighbours (`/p0`, `/o`); `more` is false only on the last page; a zero or huge limit
/// is a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_pages_cover_the_prefix_exactly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), MetaStoreConfig::default()).await?;
    for key in ["/o", "/p0", "/p/"] {
        store.put(key, val("n"), Expect::Any).await?;
    }
    let mut expected = vec!["/p/".to_string()];
    for i in 0..24 {
        let key = format!("/p/{i:02}");
        store.put(&key, val("v"), Expect::Any).await?;
        expected.push(key);
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let page = store.scan_page("/p/", &after, 10).await?;
        pages += 1;
        assert!(page.kvs.len() <= 10);
        seen.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        if !page.more {
            break;
        }
        after = seen
            .last()
            .cloned()
            .ok_or("a page with more=true was empty")?;
    }
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);
    for limit in [0, crate::MAX_SCAN_PAGE + 1] {
        assert!(matches!(
            store.scan_page("/p/", "", limit).await,
            Err(MetaError::InvalidRequest(_))
        ));
    }
    store.shutdown().await?;
    Ok(())
}
