//! [`Session`]: a lease kept alive in the background — how brokers and bookies register.
//!
//! A session grants a lease, then renews it every third of its TTL. It counts as *lost* as
//! soon as the cluster says the lease is gone, or when no renewal has succeeded for a whole
//! TTL: past that point the leader may have expired it, so the holder must stop acting on
//! anything the lease guards (a broker stops writing the topics it owned). Closing a session
//! revokes its lease, deleting its keys at once instead of after the TTL.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::store::Lease;
use crate::types::LeaseId;
use crate::{MetaClient, MetaError, MetaStore};

/// The lease calls a session makes; [`MetaStore`] (in process) and [`MetaClient`] (remote)
/// provide them.
pub trait LeaseApi: Clone + Send + Sync + 'static {
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<Lease, MetaError>> + Send;
    fn keep_alive(&self, id: LeaseId) -> impl Future<Output = Result<Duration, MetaError>> + Send;
    fn revoke(&self, id: LeaseId) -> impl Future<Output = Result<u64, MetaError>> + Send;
}

impl LeaseApi for MetaStore {
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<Lease, MetaError>> + Send {
        self.lease_grant(ttl)
    }
    fn keep_alive(&self, id: LeaseId) -> impl Future<Output = Result<Duration, MetaError>> + Send {
        self.lease_keep_alive(id)
    }
    fn revoke(&self, id: LeaseId) -> impl Future<Output = Result<u64, MetaError>> + Send {
        self.lease_revoke(id)
    }
}

impl LeaseApi for MetaClient {
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<Lease, MetaError>> + Send {
        self.lease_grant(ttl)
    }
    fn keep_alive(&self, id: LeaseId) -> impl Future<Output = Result<Duration, MetaError>> + Send {
        self.lease_keep_alive(id)
    }
    fn revoke(&self, id: LeaseId) -> impl Future<Output = Result<u64, MetaError>> + Send {
        self.lease_revoke(id)
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    Alive,
    /// The lease is gone or may be: stop acting on what it guards.
    Lost(String),
}

/// A lease kept alive by a background task until [`Session::close`] or loss.
pub struct Session {
    lease: Lease,
    state: watch::Receiver<SessionState>,
    task: tokio::task::JoinHandle<()>,
    revoke: Box<dyn Fn(LeaseId) -> RevokeFuture + Send + Sync>,
}

type RevokeFuture = std::pin::Pin<Box<dyn Future<Output = Result<u64, MetaError>> + Send>>;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("lease", &self.lease)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Session {
    /// Grants a lease of `ttl` and starts keeping it alive.
    pub async fn start<M: LeaseApi>(meta: M, ttl: Duration) -> Result<Session, MetaError> {
        let lease = meta.grant(ttl).await?;
        let (tx, state) = watch::channel(SessionState::Alive);
        let task = tokio::spawn(keep_alive_loop(meta.clone(), lease, tx));
        let revoke = Box::new(move |id| {
            let meta = meta.clone();
            Box::pin(async move { meta.revoke(id).await }) as RevokeFuture
        });
        Ok(Session {
            lease,
            state,
            task,
            revoke,
        })
    }

    pub fn lease_id(&self) -> LeaseId {
        self.lease.id
    }

    pub fn ttl(&self) -> Duration {
        self.lease.ttl
    }

    /// Whether the session is still alive.
    pub fn is_alive(&self) -> bool {
        *self.state.borrow() == SessionState::Alive
    }

    /// A receiver of the session's state, for tasks that must stop when it is lost.
    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// Waits until the session is lost; returns why.
    pub async fn lost(&self) -> String {
        let mut state = self.state.clone();
        loop {
            if let SessionState::Lost(why) = &*state.borrow_and_update() {
                return why.clone();
            }
            if state.changed().await.is_err() {
                return "session task ended".into();
            }
        }
    }

    /// Stops the renewals and revokes the lease, deleting its keys now.
    pub async fn close(self) -> Result<(), MetaError> {
        self.task.abort();
        match (self.revoke)(self.lease.id).await {
            // Expired meanwhile: its keys are gone either way.
            Ok(_) | Err(MetaError::LeaseNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Without close(), the lease simply expires after its TTL.
        self.task.abort();
    }
}

async fn keep_alive_loop<M: LeaseApi>(meta: M, lease: Lease, state: watch::Sender<SessionState>) {
    let period = lease.ttl / 3;
    // The lease is certainly alive until a TTL after the last renewal the leader confirmed.
    let mut safe_until = Instant::now() + lease.ttl;
    let mut next = Instant::now() + period;
    loop {
        tokio::time::sleep_until(next).await;
        let remaining = safe_until.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            state.send_replace(SessionState::Lost(format!(
                "lease {} not renewed within its TTL of {:?}",
                lease.id, lease.ttl
            )));
            return;
        }
        let sent = Instant::now();
        match tokio::time::timeout(remaining, meta.keep_alive(lease.id)).await {
            Ok(Ok(ttl)) => {
                safe_until = sent + ttl;
                next = sent + period;
            }
            Ok(Err(MetaError::LeaseNotFound { id })) => {
                warn!(lease = id, "session lost: the lease expired");
                state.send_replace(SessionState::Lost(format!("lease {id} expired")));
                return;
            }
            Ok(Err(e)) => {
                debug!(lease = lease.id, error = %e, "keep-alive failed; retrying");
                next = Instant::now() + period.min(Duration::from_millis(200));
            }
            Err(_) => next = Instant::now(),
        }
    }
}
