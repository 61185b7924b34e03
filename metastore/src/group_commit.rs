//! Group commit: proposals made while earlier ones are being written share one raft entry.
//!
//! Each raft entry costs a log append with an fsync (and, in a cluster, a replication round),
//! whatever it holds. openraft 0.9 gives every `client_write` an entry of its own, so a leader
//! under many concurrent small writes (a transaction is several) spends its time in fsyncs.
//! Here a single task takes proposals from a queue; while [`MAX_IN_FLIGHT`] entries are being
//! written, new proposals wait in the queue, and the next entry takes all of them (up to
//! [`MAX_BATCH_COMMANDS`] and [`MAX_BATCH_BYTES`]) as one [`Command::Batch`]. The state
//! machine applies a batch's commands in order, each exactly as if it had its own entry
//! (its own condition, revision and result), so callers see no difference but the speed.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::warn;

use crate::types::{Command, CommandResult, NodeId, TypeConfig};

/// Entries being written at once. Two let one entry's apply overlap the next one's append.
pub(crate) const MAX_IN_FLIGHT: usize = 2;
/// Most commands in one entry.
pub(crate) const MAX_BATCH_COMMANDS: usize = 256;
/// An entry stops taking commands once it holds this many key and value bytes (a single
/// command may be larger: it goes alone). Kept small so that a follower catching up gets
/// many entries per AppendEntries RPC within the RPC frame limit (see `raft_config`).
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;

pub(crate) type WriteError = RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>;

/// What a proposer gets back: its command's result, the write's error, or `None` when the
/// group-commit task is gone (the node is shutting down).
type Reply = oneshot::Sender<Result<CommandResult, WriteError>>;

struct Proposal {
    cmd: Command,
    reply: Reply,
}

/// The queue in front of the raft group's writes. Cheap to clone.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::UnboundedSender<Proposal>,
}

impl GroupCommit {
    /// Starts the task that writes the queue's proposals to `raft`.
    pub(crate) fn start(raft: Raft<TypeConfig>) -> Self {
        let (queue, proposals) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, proposals));
        GroupCommit { queue }
    }

    /// Writes `cmd` through raft (in an entry shared with whatever else is waiting) and
    /// returns its result. `None`: the node is shutting down, and the command may or may not
    /// have been written.
    pub(crate) async fn propose(&self, cmd: Command) -> Option<Result<CommandResult, WriteError>> {
        let (reply, result) = oneshot::channel();
        self.queue.send(Proposal { cmd, reply }).ok()?;
        result.await.ok()
    }
}

async fn run(raft: Raft<TypeConfig>, mut proposals: mpsc::UnboundedReceiver<Proposal>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        // Taking a slot before the next proposal lets the queue fill while entries are
        // written: that is what makes the next entry a batch.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = proposals.recv().await else {
            return;
        };
        let batch = take_batch(first, &mut proposals);
        let raft = raft.clone();
        tokio::spawn(async move {
            write(&raft, batch).await;
            drop(slot);
        });
    }
}

/// `first` plus whatever else is queued now, within the batch limits.
fn take_batch(first: Proposal, queue: &mut mpsc::UnboundedReceiver<Proposal>) -> Vec<Proposal> {
    let mut bytes = first.cmd.payload_bytes();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
        let Ok(next) = queue.try_recv() else { break };
        bytes += next.cmd.payload_bytes();
        batch.push(next);
    }
    batch
}

async fn write(raft: &Raft<TypeConfig>, mut batch: Vec<Proposal>) {
    // Read as close to the proposal as can be: a leader-time comparison is about when the
    // write entered the log (see `Compare::LeaderTimeAtMost`).
    let now = crate::tables::now_ms();
    for proposal in &mut batch {
        proposal.cmd.stamp_leader_time(now);
    }
    if batch.len() == 1 {
        let Proposal { cmd, reply } = batch.remove(0);
        let _ = reply.send(raft.client_write(cmd).await.map(|r| r.data));
        return;
    }
    let (cmds, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let count = cmds.len();
    match raft.client_write(Command::Batch { commands: cmds }).await {
        Ok(resp) => match resp.data {
            CommandResult::Batch(results) if results.len() == count => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            other => {
                // Cannot happen (the state machine answers a batch with one result per
                // command); the proposers' writes were applied, their results are lost.
                warn!(?other, count, "a batch entry got an unexpected result");
                for reply in replies {
                    let _ = reply.send(Ok(CommandResult::None));
                }
            }
        },
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
