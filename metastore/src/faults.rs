//! [`Faults`]: a test hook that drops and delays node-to-node messages, per direction.
//!
//! A call from node A to node B is two messages: the request A→B and the response B→A
//! ([`crate::rpc::PeerClient::call`]). Each direction of each link can be *cut* (its messages
//! are lost) and *delayed* (its messages arrive late). So:
//!
//! - A→B cut: B never sees the request. A learns nothing until its connection to B idles
//!   out (QUIC keep-alives are lost too): the call fails with `RpcError::Unreachable`
//!   (outcome unknown) at the idle timeout after the cut, or at its own deadline if sooner,
//!   as for a peer that died. A new connection needs both directions, so dialling fails after
//!   the connect timeout with `RpcError::NotSent`, as for a peer that is down.
//! - B→A cut: B runs the request, A never hears the answer and fails the same way (outcome
//!   unknown).
//! - A delay on a direction is added to every message sent that way; a dial takes one round
//!   trip.
//!
//! One `Faults` value is shared (it is a cheap clone) by every node of an in-process cluster
//! through `NodeOptions::faults`, and by test clients (`MetaClient::with_faults`). Nodes are
//! known to it by id; [`Faults::register`] maps each node's address to its id. Nothing here
//! runs unless a `Faults` was given: production nodes have none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::types::NodeId;

/// What happens to a message sent one way on one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// The message is lost; the link has been cut since then.
    pub cut_since: Option<Instant>,
    /// The message arrives this much later.
    pub delay: Duration,
}

/// The shared fault table of an in-process cluster (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// `host:port` → node id, for calls that only know the address.
    nodes: HashMap<String, NodeId>,
    /// Directions (from, to) whose messages are lost, and since when.
    cut: HashMap<(NodeId, NodeId), Instant>,
    /// Directions (from, to) whose messages are delayed.
    delay: HashMap<(NodeId, NodeId), Duration>,
}

impl Faults {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data, valid after any panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that node `id` is reached at `addr` (`host:port`, as in the membership).
    pub fn register(&self, id: NodeId, addr: &str) {
        self.state().nodes.insert(addr.to_owned(), id);
    }

    /// The node registered at `addr`.
    pub fn node_at(&self, addr: &str) -> Option<NodeId> {
        self.state().nodes.get(addr).copied()
    }

    /// Loses every message from `from` to `to` (one direction only).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.partition_directed(&[from], &[to]);
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        self.partition_directed(a, b);
        self.partition_directed(b, a);
    }

    /// Cuts every direction from a node of `from` to a node of `to`; a link already cut keeps
    /// its original time.
    fn partition_directed(&self, from: &[NodeId], to: &[NodeId]) {
        let now = Instant::now();
        let mut state = self.state();
        for &x in from {
            for &y in to {
                state.cut.entry((x, y)).or_insert(now);
            }
        }
    }

    /// Delays every message from `from` to `to` by `delay` (one direction only; zero clears).
    pub fn delay(&self, from: NodeId, to: NodeId, delay: Duration) {
        let mut state = self.state();
        if delay.is_zero() {
            state.delay.remove(&(from, to));
        } else {
            state.delay.insert((from, to), delay);
        }
    }

    /// Removes every cut and every delay (registered addresses stay).
    pub fn heal(&self) {
        let mut state = self.state();
        state.cut.clear();
        state.delay.clear();
    }

    /// What happens now to a message from `from` to `to`.
    pub fn link(&self, from: NodeId, to: NodeId) -> Link {
        let state = self.state();
        Link {
            cut_since: state.cut.get(&(from, to)).copied(),
            delay: state.delay.get(&(from, to)).copied().unwrap_or_default(),
        }
    }

    /// Carries one message from `from` to `to`: waits the link's delay, then `Ok`, or
    /// `Err(since)` if the link is cut (checked after the delay, as the message arrives):
    /// the message is lost, and the link has been down since `since`.
    pub(crate) async fn pass(&self, from: NodeId, to: NodeId) -> Result<(), Instant> {
        let delay = self.link(from, to).delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match self.link(from, to).cut_since {
            Some(since) => Err(since),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A healthy table changes nothing: no link is cut or delayed.
    #[test]
    fn no_faults_by_default() {
        let f = Faults::new();
        assert_eq!(f.link(1, 2), Link::default());
        assert_eq!(f.node_at("127.0.0.1:1"), None);
    }

    /// `cut` affects one direction only; `partition` cuts both directions between the groups
    /// and nothing inside a group; `heal` undoes both.
    #[test]
    fn cuts_are_directional_and_partitions_are_between_groups() {
        let f = Faults::new();
        f.cut(1, 2);
        assert!(f.link(1, 2).cut_since.is_some());
        assert!(f.link(2, 1).cut_since.is_none());
        f.heal();
        f.partition(&[1], &[2, 3]);
        for (a, b) in [(1, 2), (2, 1), (1, 3), (3, 1)] {
            assert!(f.link(a, b).cut_since.is_some(), "{a}->{b}");
        }
        assert!(f.link(2, 3).cut_since.is_none() && f.link(3, 2).cut_since.is_none());
        f.heal();
        assert_eq!(f.link(1, 2), Link::default());
    }

    /// Delays are per direction, a zero delay clears one, and `heal` clears all; addresses
    /// stay registered across `heal`.
    #[test]
    fn delays_are_directional() {
        let f = Faults::new();
        f.register(2, "127.0.0.1:7002");
        f.delay(1, 2, 30 * MS);
        assert_eq!(f.link(1, 2).delay, 30 * MS);
        assert_eq!(f.link(2, 1).delay, Duration::ZERO);
        f.delay(1, 2, Duration::ZERO);
        assert_eq!(f.link(1, 2).delay, Duration::ZERO);
        f.delay(2, 1, 20 * MS);
        f.heal();
        assert_eq!(f.link(2, 1).delay, Duration::ZERO);
        assert_eq!(f.node_at("127.0.0.1:7002"), Some(2));
    }

    /// Clones share one table: a cut made through one is seen through the other.
    #[test]
    fn clones_share_the_table() {
        let f = Faults::new();
        let g = f.clone();
        g.cut(3, 1);
        assert!(f.link(3, 1).cut_since.is_some());
    }

    /// Cutting a link that is already cut keeps the time it went down (a connection over it
    /// idles out from then, not from the second cut).
    #[test]
    fn recutting_keeps_the_first_time() {
        let f = Faults::new();
        f.cut(1, 2);
        let first = f.link(1, 2).cut_since;
        std::thread::sleep(Duration::from_millis(2));
        f.partition(&[1], &[2]);
        assert_eq!(f.link(1, 2).cut_since, first);
        assert!(f.link(2, 1).cut_since > first);
    }

    /// A message on a delayed link arrives no sooner than the delay; one on a cut link is
    /// lost and reports when the link went down. (Real time: only lower bounds are asserted,
    /// so a slow machine cannot fail it.)
    #[tokio::test]
    async fn pass_waits_the_delay_and_never_crosses_a_cut() {
        let f = Faults::new();
        f.delay(1, 2, 40 * MS);
        let start = Instant::now();
        assert_eq!(f.pass(1, 2).await, Ok(()));
        assert!(start.elapsed() >= 40 * MS);
        f.cut(2, 1);
        let since = f.link(2, 1).cut_since.expect("cut");
        assert_eq!(f.pass(2, 1).await, Err(since));
        f.delay(2, 1, 40 * MS);
        let start = Instant::now();
        assert_eq!(f.pass(2, 1).await, Err(since));
        assert!(start.elapsed() >= 40 * MS);
    }
}
