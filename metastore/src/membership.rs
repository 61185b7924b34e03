//! Membership changes of a clustered metastore — add a learner, promote it to voter, remove a
//! member — and the cluster's status, each routed to the leader from any node like a write.
//!
//! A new node starts with no initial members (`NodeOptions::initial_members` empty) and
//! waits; [`MetaStore::add_learner`] makes it a non-voting member and returns once it has
//! every entry up to its own addition; [`MetaStore::promote`] makes it a voter;
//! [`MetaStore::remove`] takes a voter or learner out.
//!
//! What happens to a removed node: the leader stops replicating to it as soon as it appends
//! the membership without it, so the node usually never sees that entry. It believes it is
//! still a voter, loses its leader after an election timeout and then campaigns forever
//! without success (its log is behind). A client request sent to it would wait for a leader
//! until the request timeout. To fail fast instead, a node refuses client requests with
//! [`MetaError::NotMember`] when
//! - its own latest membership does not name it (a removed leader, or a node that did see
//!   the entry; also a joining node not added yet), or
//! - it was told so: after removing a node the leader sends it the committed membership, and
//!   a node with no leader asks its peers for theirs ([`MetaStore::find_leader`]); a committed
//!   membership newer than its own that does not name it means it was removed.
//!
//! A removed node never serves a stale read: reads run on the leader only, and a removed node
//! cannot become leader again (the remaining voters have a longer log).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::metrics::WaitError;
use openraft::{BasicNode, ChangeMembers, LogId, Membership, ServerState};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, instrument, warn};

use crate::client::MetaClient;
use crate::rpc::{FORWARD_TIMEOUT, NodeRequest, NodeResponse, RemoteError};
use crate::types::NodeId;
use crate::{MetaError, MetaStore};

/// How long the leader waits for raft to commit a membership change.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`MetaStore::add_learner`] waits for the new learner to catch up.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(15);
/// Limit on the leader's answer to a forwarded membership change (covers the catch-up wait).
pub const MEMBERSHIP_RPC_TIMEOUT: Duration = Duration::from_secs(25);
/// Limit on a [`MetaClient`]'s membership call (covers forwarding to the leader).
pub const CLIENT_MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(40);
/// A learner further behind the leader than this many entries is not promoted.
pub const PROMOTE_MAX_LAG: u64 = 1_000;
/// How long a peer may take to report its view while this node looks for a leader.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Between two rounds of asking the peers while no leader is known.
const PROBE_EVERY: Duration = Duration::from_millis(300);

/// A membership change, as sent to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    AddLearner { node_id: NodeId, addr: String },
    Promote { node_id: NodeId },
    Remove { node_id: NodeId },
}

/// Why a membership change was refused. Nothing changed, except for
/// [`MembershipError::CatchUpTimeout`] (the learner was added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    /// Promote or remove of a node that is not a member.
    #[error("node {node_id} is not a member of the metastore cluster")]
    UnknownNode { node_id: NodeId },
    /// The id is already a member with another address.
    #[error(
        "node {node_id} is already a member at {existing}, not {requested}; remove it first to change its address"
    )]
    AddressConflict {
        node_id: NodeId,
        existing: String,
        requested: String,
    },
    #[error("address {addr:?} of node {node_id} is invalid: {reason}")]
    InvalidAddress {
        node_id: NodeId,
        addr: String,
        reason: String,
    },
    /// Raft changes membership one step at a time: the previous change is not committed yet.
    #[error(
        "another membership change is in progress (membership at log index {membership_index:?}, committed up to {committed_index:?}); retry"
    )]
    InProgress {
        membership_index: Option<u64>,
        committed_index: Option<u64>,
    },
    /// Removing this voter would leave no voter.
    #[error("node {node_id} is the last voter; a cluster needs at least one")]
    LastVoter { node_id: NodeId },
    /// The learner is too far behind to be promoted without stalling commits.
    #[error(
        "learner {node_id} is {lag} entries behind the leader (at most {max} to promote); wait and retry"
    )]
    Lagging { node_id: NodeId, lag: u64, max: u64 },
    /// The learner was added but had not caught up within the deadline; it keeps catching up.
    #[error(
        "learner {node_id} was added but has log index {matched:?} of {needed} after {waited_ms} ms; it keeps catching up (see status) before it can be promoted"
    )]
    CatchUpTimeout {
        node_id: NodeId,
        matched: Option<u64>,
        needed: u64,
        waited_ms: u64,
    },
}

/// A membership as raft stores it: voter sets and every member's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipInfo {
    /// The log entry that set it (`None`: the node is not initialised).
    pub log_id: Option<LogId<NodeId>>,
    /// The voter sets: one, or two while a joint change is under way.
    pub voter_sets: Vec<BTreeSet<NodeId>>,
    /// Every member (voters and learners) and its `host:port`.
    pub nodes: BTreeMap<NodeId, String>,
}

impl MembershipInfo {
    fn new(log_id: Option<LogId<NodeId>>, m: &Membership<NodeId, BasicNode>) -> Self {
        Self {
            log_id,
            voter_sets: m.get_joint_config().clone(),
            nodes: m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
        }
    }

    /// Every voter of every voter set.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.voter_sets.iter().flatten().copied().collect()
    }

    /// Members that are not voters.
    pub fn learners(&self) -> BTreeSet<NodeId> {
        let voters = self.voters();
        self.nodes
            .keys()
            .filter(|id| !voters.contains(id))
            .copied()
            .collect()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.nodes.contains_key(&id)
    }

    pub fn is_joint(&self) -> bool {
        self.voter_sets.len() > 1
    }

    pub fn log_index(&self) -> Option<u64> {
        self.log_id.map(|l| l.index)
    }
}

/// What one node knows, answered locally (used by nodes looking for a leader).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalView {
    pub node_id: NodeId,
    pub term: u64,
    pub leader: Option<NodeId>,
    /// The latest membership this node knows to be committed.
    pub committed: MembershipInfo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Voter,
    Learner,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Voter => "voter",
            Role::Learner => "learner",
        })
    }
}

/// One member as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub addr: String,
    pub role: Role,
    /// Last log index known to be on this member (`None`: nothing confirmed yet).
    pub match_index: Option<u64>,
    /// Entries the member is behind the leader's last log index.
    pub lag: u64,
}

/// The cluster as its leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub leader: NodeId,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Log index of the membership in effect.
    pub membership_index: Option<u64>,
    /// A joint (two voter sets) change is under way.
    pub joint: bool,
    /// Every member, by id.
    pub members: Vec<MemberStatus>,
}

impl ClusterStatus {
    /// Ids of the members with `role` (the leader counts as a voter too).
    pub fn ids(&self, role: Role) -> BTreeSet<NodeId> {
        self.members
            .iter()
            .filter(|m| m.role == role || (role == Role::Voter && m.role == Role::Leader))
            .map(|m| m.node_id)
            .collect()
    }
}

/// Remembers that this node was removed: the newest committed membership without it.
#[derive(Debug, Default)]
pub(crate) struct Eviction {
    removed_at: std::sync::Mutex<Option<LogId<NodeId>>>,
}

impl Eviction {
    fn get(&self) -> Option<LogId<NodeId>> {
        *self.removed_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, at: LogId<NodeId>) {
        let mut guard = self.removed_at.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none_or(|old| old < at) {
            *guard = Some(at);
        }
    }
}

/// `host:port` with a non-empty host and a non-zero port.
fn validate_addr(node_id: NodeId, addr: &str) -> Result<(), MembershipError> {
    let invalid = |reason: &str| MembershipError::InvalidAddress {
        node_id,
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected HOST:PORT"))?;
    if host.trim_matches(['[', ']']).is_empty() {
        return Err(invalid("the host is empty"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid("the port is not a number in 1..=65535")),
        Ok(_) => Ok(()),
    }
}

/// Maps openraft's refusal of a membership change onto a typed error.
fn change_error(
    node_id: NodeId,
    e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> MetaError {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(p) => MembershipError::InProgress {
                membership_index: p.membership_log_id.map(|l| l.index),
                committed_index: p.committed.map(|l| l.index),
            },
            ChangeMembershipError::EmptyMembership(_) => MembershipError::LastVoter { node_id },
            ChangeMembershipError::LearnerNotFound(l) => {
                MembershipError::UnknownNode { node_id: l.node_id }
            }
        }
        .into(),
        other => other.into(),
    }
}

fn change_timeout(change: &MembershipChange) -> MetaError {
    MetaError::Raft(format!(
        "{change:?} was not committed within {CHANGE_TIMEOUT:?}; outcome unknown"
    ))
}

/// Last log index on `id` according to the leader's replication metrics.
fn matched(m: &openraft::RaftMetrics<NodeId, BasicNode>, id: NodeId) -> Option<u64> {
    m.replication
        .as_ref()?
        .get(&id)
        .and_then(|l| l.as_ref())
        .map(|l| l.index)
}

/// How many entries a member at `matched` is behind a leader whose log ends at `last`.
fn lag(last: Option<u64>, matched: Option<u64>) -> u64 {
    match (last, matched) {
        (Some(l), Some(m)) => l.saturating_sub(m),
        // Indexes start at 0: a member with nothing lacks l + 1 entries.
        (Some(l), None) => l.saturating_add(1),
        (None, _) => 0,
    }
}

impl NodeResponse {
    /// The id in a "not a member" answer, whatever the request was.
    pub(crate) fn not_member(&self) -> Option<NodeId> {
        let err = match self {
            NodeResponse::Write(Err(e)) => e,
            NodeResponse::Get(Err(e)) => e,
            NodeResponse::Scan(Err(e)) => e,
            NodeResponse::ScanPage(Err(e)) => e,
            NodeResponse::LeaseKeepAlive(Err(e)) => e,
            NodeResponse::WatchStarted(Err(e)) => e,
            NodeResponse::ChangeMembership(Err(e)) => e,
            NodeResponse::ClusterStatus(Err(e)) => e,
            _ => return None,
        };
        match err {
            RemoteError::NotMember { node_id } => Some(*node_id),
            _ => None,
        }
    }
}

impl MetaStore {
    /// Adds `node_id` at `addr` (`host:port` of its node RPC server) as a non-voting member
    /// and returns once it has every log entry up to its addition. Re-adding a member with the
    /// same address is a no-op (for a learner: waits for it to catch up); another address is
    /// [`MembershipError::AddressConflict`].
    #[instrument(skip(self), fields(node = self.node_id()))]
    pub async fn add_learner(
        &self,
        node_id: NodeId,
        addr: &str,
    ) -> Result<MembershipInfo, MetaError> {
        validate_addr(node_id, addr)?;
        self.change_membership(MembershipChange::AddLearner {
            node_id,
            addr: addr.to_owned(),
        })
        .await
    }

    /// Makes learner `node_id` a voter (a voter already: no-op). Refused with
    /// [`MembershipError::Lagging`] while it is far behind.
    #[instrument(skip(self), fields(node = self.node_id()))]
    pub async fn promote(&self, node_id: NodeId) -> Result<MembershipInfo, MetaError> {
        self.change_membership(MembershipChange::Promote { node_id })
            .await
    }

    /// Removes voter or learner `node_id` from the cluster. The removed node refuses client
    /// requests afterwards ([`MetaError::NotMember`]) and should be shut down.
    #[instrument(skip(self), fields(node = self.node_id()))]
    pub async fn remove(&self, node_id: NodeId) -> Result<MembershipInfo, MetaError> {
        self.change_membership(MembershipChange::Remove { node_id })
            .await
    }

    /// The cluster's status as the leader sees it, with replication figures per member.
    pub async fn status(&self) -> Result<ClusterStatus, MetaError> {
        self.routed_timed(
            || self.status_here(),
            &NodeRequest::ClusterStatus { forwarded: true },
            FORWARD_TIMEOUT,
            |resp| match resp {
                NodeResponse::ClusterStatus(r) => Some(r),
                _ => None,
            },
        )
        .await
    }

    pub(crate) async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipInfo, MetaError> {
        self.routed_timed(
            || self.change_membership_here(change.clone()),
            &NodeRequest::ChangeMembership {
                change: change.clone(),
                forwarded: true,
            },
            MEMBERSHIP_RPC_TIMEOUT,
            |resp| match resp {
                NodeResponse::ChangeMembership(r) => Some(r),
                _ => None,
            },
        )
        .await
    }

    /// `NotLeader` unless this node leads; else the membership in effect.
    fn leader_membership(&self) -> Result<MembershipInfo, MetaError> {
        let me = self.node_id();
        let metrics = self.raft().metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader {
            return Err(MetaError::NotLeader {
                leader: m.current_leader.filter(|l| *l != me),
            });
        }
        let stored = &m.membership_config;
        Ok(MembershipInfo::new(*stored.log_id(), stored.membership()))
    }

    /// Runs a membership change on this node, which must be leader.
    pub(crate) async fn change_membership_here(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipInfo, MetaError> {
        let current = self.leader_membership()?;
        match &change {
            MembershipChange::AddLearner { node_id, addr } => {
                self.add_learner_here(*node_id, addr, &current, &change)
                    .await
            }
            MembershipChange::Promote { node_id } => {
                self.promote_here(*node_id, &current, &change).await
            }
            MembershipChange::Remove { node_id } => {
                self.remove_here(*node_id, &current, &change).await
            }
        }
    }

    async fn add_learner_here(
        &self,
        node_id: NodeId,
        addr: &str,
        current: &MembershipInfo,
        change: &MembershipChange,
    ) -> Result<MembershipInfo, MetaError> {
        validate_addr(node_id, addr)?;
        if let Some(existing) = current.nodes.get(&node_id) {
            if existing != addr {
                return Err(MembershipError::AddressConflict {
                    node_id,
                    existing: existing.clone(),
                    requested: addr.to_owned(),
                }
                .into());
            }
            if !current.voters().contains(&node_id) {
                let needed = current.log_index().unwrap_or(0);
                self.wait_caught_up(node_id, needed).await?;
            }
            return Ok(current.clone());
        }
        let node = BasicNode {
            addr: addr.to_owned(),
        };
        // Not openraft's blocking mode: that waits for the learner without a deadline.
        let resp = tokio::time::timeout(
            CHANGE_TIMEOUT,
            self.raft().add_learner(node_id, node, false),
        )
        .await
        .map_err(|_| change_timeout(change))?
        .map_err(|e| change_error(node_id, e))?;
        let added = match &resp.membership {
            Some(m) => MembershipInfo::new(Some(resp.log_id), m),
            None => self.leader_membership()?,
        };
        // A concurrent add of the same id with another address may have won.
        match added.nodes.get(&node_id) {
            Some(a) if a == addr => {}
            other => {
                return Err(MembershipError::AddressConflict {
                    node_id,
                    existing: other.cloned().unwrap_or_default(),
                    requested: addr.to_owned(),
                }
                .into());
            }
        }
        info!(
            learner = node_id,
            addr, "added a learner; waiting for it to catch up"
        );
        self.wait_caught_up(node_id, resp.log_id.index).await?;
        Ok(added)
    }

    /// Waits (up to [`CATCH_UP_TIMEOUT`]) until the leader has confirmed log index `needed`
    /// on `node_id`.
    async fn wait_caught_up(&self, node_id: NodeId, needed: u64) -> Result<(), MetaError> {
        let waited = self
            .raft()
            .wait(Some(CATCH_UP_TIMEOUT))
            .metrics(
                |m| m.replication.is_none() || matched(m, node_id) >= Some(needed),
                "the learner has caught up",
            )
            .await;
        match waited {
            // Leadership moved meanwhile: the caller routes again and finds it added.
            Ok(m) if m.replication.is_none() => Err(MetaError::NotLeader {
                leader: m.current_leader.filter(|l| *l != self.node_id()),
            }),
            Ok(_) => Ok(()),
            Err(WaitError::ShuttingDown) => Err(MetaError::Closed),
            Err(WaitError::Timeout(after, _)) => Err(MembershipError::CatchUpTimeout {
                node_id,
                matched: matched(&self.raft().metrics().borrow(), node_id),
                needed,
                waited_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            }
            .into()),
        }
    }

    async fn promote_here(
        &self,
        node_id: NodeId,
        current: &MembershipInfo,
        change: &MembershipChange,
    ) -> Result<MembershipInfo, MetaError> {
        if !current.contains(node_id) {
            return Err(MembershipError::UnknownNode { node_id }.into());
        }
        if current
            .voter_sets
            .last()
            .is_some_and(|voters| voters.contains(&node_id))
        {
            return Ok(current.clone());
        }
        let behind = {
            let metrics = self.raft().metrics();
            let m = metrics.borrow();
            lag(m.last_log_index, matched(&m, node_id))
        };
        if behind > PROMOTE_MAX_LAG {
            return Err(MembershipError::Lagging {
                node_id,
                lag: behind,
                max: PROMOTE_MAX_LAG,
            }
            .into());
        }
        let changes = ChangeMembers::AddVoterIds(BTreeSet::from([node_id]));
        let resp =
            tokio::time::timeout(CHANGE_TIMEOUT, self.raft().change_membership(changes, true))
                .await
                .map_err(|_| change_timeout(change))?
                .map_err(|e| change_error(node_id, e))?;
        info!(voter = node_id, "promoted a learner to voter");
        match &resp.membership {
            Some(m) => Ok(MembershipInfo::new(Some(resp.log_id), m)),
            None => self.leader_membership(),
        }
    }

    async fn remove_here(
        &self,
        node_id: NodeId,
        current: &MembershipInfo,
        change: &MembershipChange,
    ) -> Result<MembershipInfo, MetaError> {
        let Some(addr) = current.nodes.get(&node_id).cloned() else {
            return Err(MembershipError::UnknownNode { node_id }.into());
        };
        let changes = if current.voters().contains(&node_id) {
            let last = current.voter_sets.last().cloned().unwrap_or_default();
            if last.iter().all(|v| *v == node_id) {
                return Err(MembershipError::LastVoter { node_id }.into());
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        };
        // `retain = false`: a removed voter leaves the cluster instead of staying a learner.
        let resp = tokio::time::timeout(
            CHANGE_TIMEOUT,
            self.raft().change_membership(changes, false),
        )
        .await
        .map_err(|_| change_timeout(change))?
        .map_err(|e| change_error(node_id, e))?;
        let after = match &resp.membership {
            Some(m) => MembershipInfo::new(Some(resp.log_id), m),
            None => self.leader_membership()?,
        };
        info!(removed = node_id, "removed a member");
        if node_id != self.node_id() {
            // Tell the node, so it refuses requests at once instead of after an election
            // timeout; if it is unreachable it finds out from its peers later.
            let notice = NodeRequest::Removed {
                membership: after.clone(),
            };
            if let Err(e) = self.peers().call(&addr, &notice, PROBE_TIMEOUT).await {
                debug!(removed = node_id, error = %e, "could not tell the removed node");
            }
        }
        Ok(after)
    }

    /// The cluster's status, on this node, which must be leader.
    pub(crate) async fn status_here(&self) -> Result<ClusterStatus, MetaError> {
        let committed_index = self
            .raft()
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await?;
        let me = self.node_id();
        let m = self.raft_metrics();
        let (ServerState::Leader, Some(_)) = (m.state, &m.replication) else {
            return Err(MetaError::NotLeader {
                leader: m.current_leader.filter(|l| *l != me),
            });
        };
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let match_index = match matched(&m, *id) {
                    None if *id == me => m.last_log_index,
                    other => other,
                };
                let role = if *id == me {
                    Role::Leader
                } else if voters.contains(id) {
                    Role::Voter
                } else {
                    Role::Learner
                };
                MemberStatus {
                    node_id: *id,
                    addr: node.addr.clone(),
                    role,
                    match_index,
                    lag: lag(m.last_log_index, match_index),
                }
            })
            .collect();
        Ok(ClusterStatus {
            leader: me,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed_index,
            applied_index: m.last_applied.map(|l| l.index),
            membership_index: m.membership_config.log_id().map(|l| l.index),
            joint: membership.get_joint_config().len() > 1,
            members,
        })
    }

    /// This node's own view, for peers looking for a leader.
    pub(crate) async fn local_view(&self) -> Result<LocalView, MetaError> {
        let committed = self
            .raft()
            .with_raft_state(|st| {
                let c = st.membership_state.committed();
                MembershipInfo::new(*c.log_id(), c.membership())
            })
            .await?;
        let metrics = self.raft().metrics();
        let m = metrics.borrow();
        Ok(LocalView {
            node_id: self.node_id(),
            term: m.current_term,
            leader: m.current_leader,
            committed,
        })
    }

    /// `NotMember` if this node knows it is not a member: its latest membership leaves it out,
    /// or it learned of a newer committed one that does.
    pub(crate) async fn check_member(&self) -> Result<(), MetaError> {
        let me = self.node_id();
        let (log_id, named) = {
            let metrics = self.raft().metrics();
            let m = metrics.borrow();
            let stored = &m.membership_config;
            (
                *stored.log_id(),
                stored.membership().get_node(&me).is_some(),
            )
        };
        if self.is_member(log_id, named) {
            return Ok(());
        }
        // Metrics trail raft's state (a node just added holds the entry before its metrics
        // show it), so ask raft itself before refusing.
        let (log_id, named) = self
            .raft()
            .with_raft_state(move |st| {
                let effective = st.membership_state.effective();
                (*effective.log_id(), effective.get_node(&me).is_some())
            })
            .await?;
        if self.is_member(log_id, named) {
            Ok(())
        } else {
            Err(MetaError::NotMember { node_id: me })
        }
    }

    /// The address of member `id` in this node's latest membership.
    pub(crate) async fn member_addr(&self, id: NodeId) -> Result<Option<String>, MetaError> {
        let known = {
            let metrics = self.raft().metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        };
        if known.is_some() {
            return Ok(known);
        }
        // Metrics trail raft's state: a node just added may not show its membership yet.
        Ok(self
            .raft()
            .with_raft_state(move |st| {
                st.membership_state
                    .effective()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
            })
            .await?)
    }

    /// Named in the membership set at `log_id`, and not removed by a later one.
    fn is_member(&self, log_id: Option<LogId<NodeId>>, named: bool) -> bool {
        // Re-added after a removal: a newer membership naming this node ends the eviction.
        named && self.eviction().get().is_none_or(|at| log_id > Some(at))
    }

    /// Takes note of a committed membership another node reported: if it is newer than this
    /// node's and leaves this node out, this node was removed. Returns whether it was.
    pub(crate) fn note_membership(&self, committed: &MembershipInfo) -> bool {
        let me = self.node_id();
        let Some(at) = committed.log_id else {
            return false;
        };
        let mine = *self.raft().metrics().borrow().membership_config.log_id();
        if committed.contains(me) || Some(at) <= mine {
            return false;
        }
        if self.eviction().get().is_none_or(|old| old < at) {
            warn!(
                membership_index = at.index,
                "this node was removed from the metastore cluster; it serves no requests and should be shut down"
            );
        }
        self.eviction().set(at);
        true
    }

    /// Waits for a leader to be known, up to `remaining`. While none is, asks the peers for
    /// their view, so a removed node (which never learns of a leader again) fails fast with
    /// `NotMember`.
    pub(crate) async fn find_leader(&self, remaining: Duration) -> Result<NodeId, MetaError> {
        let deadline = tokio::time::Instant::now() + remaining;
        loop {
            self.check_member().await?;
            if let Some(leader) = self.raft().metrics().borrow().current_leader {
                return Ok(leader);
            }
            self.probe_peers().await;
            self.check_member().await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(MetaError::NotLeader { leader: None }.with_context(remaining));
            }
            let waited = self
                .raft()
                .wait(Some(left.min(PROBE_EVERY)))
                .metrics(|m| m.current_leader.is_some(), "a known leader")
                .await;
            match waited {
                Ok(m) => {
                    if let Some(leader) = m.current_leader {
                        return Ok(leader);
                    }
                }
                Err(WaitError::ShuttingDown) => return Err(MetaError::Closed),
                Err(WaitError::Timeout(..)) => {}
            }
        }
    }

    /// Asks every other member this node knows of for its committed membership.
    async fn probe_peers(&self) {
        let me = self.node_id();
        let addrs: Vec<String> = {
            let metrics = self.raft().metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != me)
                .map(|(_, n)| n.addr.clone())
                .collect()
        };
        let calls = addrs.iter().map(|addr| {
            self.peers()
                .call(addr, &NodeRequest::LocalView, PROBE_TIMEOUT)
        });
        for answer in futures::future::join_all(calls).await {
            if let Ok(NodeResponse::LocalView(Ok(view))) = answer {
                self.note_membership(&view.committed);
            }
        }
    }
}

impl MetaClient {
    /// [`MetaStore::status`] from another process.
    pub async fn status(&self) -> Result<ClusterStatus, MetaError> {
        let req = NodeRequest::ClusterStatus { forwarded: true };
        match self.call_timed(req, FORWARD_TIMEOUT).await? {
            NodeResponse::ClusterStatus(r) => r.map_err(MetaError::from),
            other => Err(MetaError::Raft(format!(
                "unexpected answer to a status request: {other:?}"
            ))),
        }
    }

    /// [`MetaStore::add_learner`] from another process.
    pub async fn add_learner(
        &self,
        node_id: NodeId,
        addr: &str,
    ) -> Result<MembershipInfo, MetaError> {
        validate_addr(node_id, addr)?;
        self.change_membership(MembershipChange::AddLearner {
            node_id,
            addr: addr.to_owned(),
        })
        .await
    }

    /// [`MetaStore::promote`] from another process.
    pub async fn promote(&self, node_id: NodeId) -> Result<MembershipInfo, MetaError> {
        self.change_membership(MembershipChange::Promote { node_id })
            .await
    }

    /// [`MetaStore::remove`] from another process.
    pub async fn remove(&self, node_id: NodeId) -> Result<MembershipInfo, MetaError> {
        self.change_membership(MembershipChange::Remove { node_id })
            .await
    }

    async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipInfo, MetaError> {
        let req = NodeRequest::ChangeMembership {
            change,
            forwarded: true,
        };
        match self.call_timed(req, CLIENT_MEMBERSHIP_TIMEOUT).await? {
            NodeResponse::ChangeMembership(r) => r.map_err(MetaError::from),
            other => Err(MetaError::Raft(format!(
                "unexpected answer to a membership change: {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses must be HOST:PORT with a host and a port in 1..=65535.
    #[test]
    fn addresses_are_validated() {
        assert!(validate_addr(4, "127.0.0.1:7004").is_ok());
        assert!(validate_addr(4, "[::1]:7004").is_ok());
        assert!(validate_addr(4, "meta-4.meta:7004").is_ok());
        for bad in [
            "",
            "host",
            ":7004",
            "host:",
            "host:0",
            "host:70000",
            "host:x",
        ] {
            assert!(
                matches!(
                    validate_addr(4, bad),
                    Err(MembershipError::InvalidAddress { node_id: 4, .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    /// Each openraft refusal maps to its own typed error; only "in progress" is retryable.
    #[test]
    fn openraft_refusals_map_to_typed_errors() {
        let in_progress = change_error(
            3,
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(openraft::error::InProgress {
                    committed: None,
                    membership_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 7)),
                }),
            )),
        );
        assert!(
            matches!(
                in_progress,
                MetaError::Membership(MembershipError::InProgress {
                    membership_index: Some(7),
                    committed_index: None
                })
            ),
            "{in_progress:?}"
        );
        assert!(in_progress.is_retryable());
        let empty = change_error(
            3,
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::EmptyMembership(openraft::error::EmptyMembership {}),
            )),
        );
        assert!(matches!(
            empty,
            MetaError::Membership(MembershipError::LastVoter { node_id: 3 })
        ));
        assert!(!empty.is_retryable());
        let missing = change_error(
            3,
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::LearnerNotFound(openraft::error::LearnerNotFound {
                    node_id: 9,
                }),
            )),
        );
        assert!(matches!(
            missing,
            MetaError::Membership(MembershipError::UnknownNode { node_id: 9 })
        ));
    }

    /// Typed membership errors survive the trip through a forwarding node.
    #[test]
    fn membership_errors_cross_the_wire_typed() {
        let e = RemoteError::Membership(MembershipError::AddressConflict {
            node_id: 2,
            existing: "a:1".into(),
            requested: "b:2".into(),
        });
        let back: RemoteError =
            serde_json::from_slice(&serde_json::to_vec(&e).expect("encode")).expect("decode");
        assert!(matches!(
            MetaError::from(back),
            MetaError::Membership(MembershipError::AddressConflict { node_id: 2, .. })
        ));
        let e = RemoteError::NotMember { node_id: 5 };
        let back: RemoteError =
            serde_json::from_slice(&serde_json::to_vec(&e).expect("encode")).expect("decode");
        assert!(matches!(
            MetaError::from(back),
            MetaError::NotMember { node_id: 5 }
        ));
    }

    /// Lag counts the entries a member lacks; indexes start at 0.
    #[test]
    fn lag_counts_missing_entries() {
        assert_eq!(lag(Some(10), Some(10)), 0);
        assert_eq!(lag(Some(10), Some(7)), 3);
        assert_eq!(lag(Some(10), None), 11);
        assert_eq!(lag(None, None), 0);
    }
}
