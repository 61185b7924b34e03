//! [`ReplicationService`]: the auditor (when elected) and a worker, in one background task.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_metastore::tables::{Ledgers, Table, now_ms};
use strata_metastore::{Expect, LeaseId, Meta, MetaError, Session};
use strata_proto::pb::bookie::LedgerMetadata;
use strata_proto::{EntryId, LedgerId};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::plan::{FragmentRepair, LostBookies, repairs};
use super::{
    AUDITOR_KEY, UnderReplicated, claim_key, pending_key, pending_of, put_pending, status,
};
use crate::ledger::quorum::choose_replacement;
use crate::registration::list_bookies;
use crate::{LedgerClient, LedgerError};

/// Settings of a [`ReplicationService`].
#[derive(Debug, Clone)]
pub struct ReplicationOptions {
    /// Names this process in the auditor key, claims and progress (the bookie id).
    pub name: String,
    /// How long a bookie must be unregistered before its copies are made again: longer than
    /// a rolling restart takes.
    pub lost_bookie_delay: Duration,
    /// How often the auditor audits and the worker looks for marked ledgers.
    pub interval: Duration,
    /// TTL of the lease behind the auditor key and the claims.
    pub session_ttl: Duration,
    /// Entries copied at once.
    pub copy_concurrency: usize,
}

impl ReplicationOptions {
    pub fn new(name: impl Into<String>) -> Self {
        ReplicationOptions {
            name: name.into(),
            lost_bookie_delay: Duration::from_secs(300),
            interval: Duration::from_secs(5),
            session_ttl: Duration::from_secs(10),
            copy_concurrency: 64,
        }
    }
}

/// Runs re-replication in the background until [`stop`](Self::stop).
pub struct ReplicationService {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    auditor: Arc<AtomicBool>,
}

impl ReplicationService {
    pub fn start(meta: impl Into<Meta>, client: LedgerClient, options: ReplicationOptions) -> Self {
        let cancel = CancellationToken::new();
        let auditor = Arc::new(AtomicBool::new(false));
        let runner = Runner {
            meta: meta.into(),
            client,
            options,
            auditor: auditor.clone(),
        };
        let task = tokio::spawn(runner.run(cancel.clone()));
        ReplicationService {
            cancel,
            task,
            auditor,
        }
    }

    /// Whether this process is the elected auditor now.
    pub fn is_auditor(&self) -> bool {
        self.auditor.load(Ordering::Acquire)
    }

    /// Stops both roles and gives up the auditor key and any claim.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

struct Runner {
    meta: Meta,
    client: LedgerClient,
    options: ReplicationOptions,
    auditor: Arc<AtomicBool>,
}

impl Runner {
    async fn run(self, cancel: CancellationToken) {
        loop {
            let session = tokio::select! {
                _ = cancel.cancelled() => return,
                s = Session::start(self.meta.clone(), self.options.session_ttl) => s,
            };
            let session = match session {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "re-replication: cannot start a session; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(self.options.interval) => continue,
                    }
                }
            };
            let stopped = self.with_session(&session, &cancel).await;
            self.auditor.store(false, Ordering::Release);
            // Closing revokes the lease: the auditor key and claims go at once.
            let _ = session.close().await;
            if stopped {
                return;
            }
        }
    }

    /// Audits and works until the session is lost (false) or the service stops (true).
    async fn with_session(&self, session: &Session, cancel: &CancellationToken) -> bool {
        let lease = session.lease_id();
        let mut tracker: Option<LostBookies> = None;
        let mut tick = tokio::time::interval(self.options.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return true,
                why = session.lost() => {
                    warn!(reason = %why, "re-replication session lost; starting a new one");
                    return false;
                }
                _ = tick.tick() => {}
            }
            let round = async {
                if tracker.is_none() && self.elect(lease).await {
                    tracker = Some(LostBookies::new(self.options.lost_bookie_delay));
                }
                if let Some(tracker) = tracker.as_mut()
                    && let Err(e) = self.audit(tracker).await
                {
                    warn!(error = %e, "audit failed");
                }
                if let Err(e) = self.work(lease).await {
                    warn!(error = %e, "re-replication work failed");
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return true,
                _ = round => {}
            }
        }
    }

    /// Tries to become the auditor: the key is bound to this session's lease.
    async fn elect(&self, lease: LeaseId) -> bool {
        let name = Bytes::from(self.options.name.clone());
        match self
            .meta
            .put_leased(AUDITOR_KEY, name, Expect::Absent, lease)
            .await
        {
            Ok(_) => {
                info!(name = %self.options.name, "elected re-replication auditor");
                self.auditor.store(true, Ordering::Release);
                true
            }
            Err(MetaError::VersionMismatch { .. }) => false,
            Err(e) => {
                warn!(error = %e, "auditor election failed");
                false
            }
        }
    }

    async fn registered(&self) -> Result<BTreeSet<String>, LedgerError> {
        Ok(list_bookies(&self.meta)
            .await
            .map_err(|e| LedgerError::RecoveryFailed {
                ledger: LedgerId(0),
                reason: format!("listing bookies: {e}"),
            })?
            .into_iter()
            .map(|b| b.record.bookie_id)
            .collect())
    }

    /// One audit: find lost bookies and mark every ledger that has copies on them.
    async fn audit(&self, tracker: &mut LostBookies) -> Result<(), LedgerError> {
        let registered = self.registered().await?;
        let ledgers = Table::<Ledgers>::new(self.meta.clone()).list(&()).await?;
        let referenced: BTreeSet<&str> = ledgers
            .iter()
            .flat_map(|(_, row)| row.record.fragments.iter())
            .flat_map(|f| f.bookies.iter().map(String::as_str))
            .collect();
        let lost = tracker.observe(referenced, &registered, Instant::now());
        if lost.is_empty() {
            return Ok(());
        }
        for (id, row) in &ledgers {
            let needs = repairs(&row.record, |b| lost.iter().any(|l| l == b));
            if needs.is_done() {
                continue;
            }
            let on_ledger = lost_on(&row.record, &lost);
            match pending_of(&self.meta, *id).await? {
                Some((mark, _)) if mark.lost_bookies == on_ledger => {}
                Some((mut mark, version)) => {
                    mark.lost_bookies = on_ledger;
                    mark.updated_ms = now_ms();
                    let _ = put_pending(&self.meta, *id, &mark, Expect::Version(version)).await;
                }
                None => {
                    let mark = UnderReplicated {
                        lost_bookies: on_ledger,
                        marked_ms: now_ms(),
                        worker: None,
                        copied_entries: 0,
                        entries_to_copy: 0,
                        waiting_for: None,
                        updated_ms: now_ms(),
                    };
                    if put_pending(&self.meta, *id, &mark, Expect::Absent)
                        .await
                        .is_ok()
                    {
                        info!(ledger = %id, lost = ?mark.lost_bookies, "ledger marked under-replicated");
                    }
                }
            }
        }
        Ok(())
    }

    /// Claims and repairs marked ledgers, one at a time.
    async fn work(&self, lease: LeaseId) -> Result<(), LedgerError> {
        let marked = status(&self.meta).await?.pending;
        for (id, mark) in marked {
            let name = Bytes::from(self.options.name.clone());
            match self
                .meta
                .put_leased(&claim_key(id), name, Expect::Absent, lease)
                .await
            {
                Ok(_) => {}
                Err(MetaError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
            let result = self.repair(id, mark).await;
            let _ = self.meta.delete(&claim_key(id), Expect::Any).await;
            if let Err(e) = result {
                warn!(ledger = %id, error = %e, "re-replication of a ledger failed; it stays marked");
            }
        }
        Ok(())
    }

    /// Copies what the lost bookies held and points the metadata at the copies.
    async fn repair(&self, id: LedgerId, mut mark: UnderReplicated) -> Result<(), LedgerError> {
        let registered = self.registered().await?;
        // A bookie that came back since it was marked keeps its copies.
        let lost: Vec<String> = mark
            .lost_bookies
            .iter()
            .filter(|b| !registered.contains(*b))
            .cloned()
            .collect();
        let (mut md, mut version) = match self.client.metadata(id).await {
            Ok(found) => found,
            Err(LedgerError::NoSuchLedger(_)) => {
                self.meta.delete(&pending_key(id), Expect::Any).await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let needs = repairs(&md, |b| lost.contains(&b.to_owned()));
        mark.worker = Some(self.options.name.clone());
        mark.copied_entries = 0;
        mark.entries_to_copy = needs.repairs.iter().map(|r| r.entries.len() as u64).sum();
        mark.waiting_for = None;
        self.progress(id, &mark).await;
        let available = self.client.cluster().bookies().await?;
        for repair in &needs.repairs {
            let ensemble = md.fragments[repair.fragment].bookies.clone();
            let seed = crate::ledger::now_nanos() ^ id.0;
            let Ok(replacement) =
                choose_replacement(&ensemble, repair.index, &available, &lost, seed)
            else {
                mark.waiting_for = Some("a writable bookie outside the fragment's ensemble".into());
                self.progress(id, &mark).await;
                return Ok(());
            };
            self.copy(id, &md, repair, &replacement, &lost, &mut mark)
                .await?;
            // Point the fragment at the copy; a concurrent change (the writer closing, another
            // fragment repaired) is re-read and the replacement applied to it.
            loop {
                let mut next = md.clone();
                next.fragments[repair.fragment].bookies[repair.index] = replacement.clone();
                match self.client.ledgers().update(&id, &next, version).await {
                    Ok(written) => {
                        (md, version) = (next, written.version);
                        break;
                    }
                    Err(strata_metastore::tables::TableError::VersionMismatch { .. }) => {
                        (md, version) = self.client.metadata(id).await?;
                        let fragment = md.fragments.get(repair.fragment);
                        if fragment.and_then(|f| f.bookies.get(repair.index))
                            != Some(&repair.lost_bookie)
                        {
                            return Err(LedgerError::ConcurrentRecovery(id));
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            info!(ledger = %id, fragment = repair.fragment, lost = %repair.lost_bookie, replacement = %replacement, entries = repair.entries.len(), "fragment re-replicated");
        }
        if needs.waits_for_close {
            mark.waiting_for = Some("the ledger's last fragment is still being written".into());
            self.progress(id, &mark).await;
            return Ok(());
        }
        self.meta.delete(&pending_key(id), Expect::Any).await?;
        info!(ledger = %id, "ledger fully replicated again");
        Ok(())
    }

    /// Copies a fragment's entries that the lost bookie held to `to`, reading each from a
    /// surviving replica.
    async fn copy(
        &self,
        id: LedgerId,
        md: &LedgerMetadata,
        repair: &FragmentRepair,
        to: &str,
        lost: &[String],
        mark: &mut UnderReplicated,
    ) -> Result<(), LedgerError> {
        let lac = repair.entries.last().copied();
        for chunk in repair.entries.chunks(self.options.copy_concurrency.max(1)) {
            let copies: Vec<_> = chunk
                .iter()
                .map(|entry| {
                    let (client, md, to, lost, entry) = (
                        self.client.clone(),
                        md.clone(),
                        to.to_owned(),
                        lost.to_vec(),
                        *entry,
                    );
                    tokio::spawn(async move {
                        copy_entry(&client, id, &md, entry, &to, &lost, lac).await
                    })
                })
                .collect();
            for copy in copies {
                copy.await.map_err(|_| LedgerError::Shutdown(id))??;
            }
            mark.copied_entries += chunk.len() as u64;
            self.progress(id, mark).await;
        }
        Ok(())
    }

    async fn progress(&self, id: LedgerId, mark: &UnderReplicated) {
        let mut mark = mark.clone();
        mark.updated_ms = now_ms();
        if let Err(e) = put_pending(&self.meta, id, &mark, Expect::Any).await {
            debug!(ledger = %id, error = %e, "could not record re-replication progress");
        }
    }
}

async fn copy_entry(
    client: &LedgerClient,
    id: LedgerId,
    md: &LedgerMetadata,
    entry: EntryId,
    to: &str,
    lost: &[String],
    lac: Option<EntryId>,
) -> Result<(), LedgerError> {
    let stored = client.read_stored(id, md, entry, lost).await?;
    // A recovery add: the copy is accepted even if the ledger is fenced on that bookie.
    client
        .cluster()
        .add(to, id, entry, lac, stored, true)
        .await?;
    Ok(())
}

/// The lost bookies that hold fragments of `md`, sorted.
fn lost_on(md: &LedgerMetadata, lost: &[String]) -> Vec<String> {
    let on: BTreeSet<&String> = md
        .fragments
        .iter()
        .flat_map(|f| f.bookies.iter())
        .filter(|b| lost.contains(b))
        .collect();
    on.into_iter().cloned().collect()
}
