//! The leader's lease clock: when each lease expires, as plain logic without I/O.
//!
//! Lease *records* are replicated state (granted, bound keys, revoked through the log); lease
//! *deadlines* are not. Only the leader keeps time: keep-alives reach it and push a deadline
//! forward; when a deadline passes it proposes a `LeaseRevoke` through the log, so every
//! replica ends the lease at the same log position and deletes the same keys.
//!
//! A node that becomes leader does not know when each lease was last kept alive, so it gives
//! every lease a full TTL plus a grace period (the time clients need to find the new leader)
//! before expiring anything. A lease it has not seen before (just granted) gets a full TTL.
//! Losing leadership forgets every deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::types::LeaseId;

/// Deadlines of the live leases, kept by the leader.
#[derive(Debug)]
pub(crate) struct LeaseClock {
    grace: Duration,
    /// The term in which this node leads, while it does.
    term: Option<u64>,
    deadlines: BTreeMap<LeaseId, Instant>,
    /// Leases whose revoke has been proposed but not yet applied.
    revoking: BTreeSet<LeaseId>,
}

/// What a keep-alive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepAlive {
    /// The deadline moved to now + TTL.
    Renewed,
    /// The lease has expired (its revoke is under way): too late.
    Expired,
    /// This node is not leading, so it keeps no deadlines.
    NotLeader,
}

impl LeaseClock {
    pub(crate) fn new(grace: Duration) -> Self {
        LeaseClock {
            grace,
            term: None,
            deadlines: BTreeMap::new(),
            revoking: BTreeSet::new(),
        }
    }

    /// Brings the clock up to date with leadership (`Some(term)` while this node leads) and
    /// with the live leases (id → TTL in ms, as applied here), and returns the leases that
    /// have expired and must now be revoked. Each is returned once; if its revoke fails, call
    /// [`LeaseClock::revoke_failed`] so a later tick returns it again.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        leading_term: Option<u64>,
        live: &BTreeMap<LeaseId, u64>,
    ) -> Vec<LeaseId> {
        let Some(term) = leading_term else {
            self.term = None;
            self.deadlines.clear();
            self.revoking.clear();
            return Vec::new();
        };
        if self.term != Some(term) {
            // New leadership: nobody knows when these were last kept alive.
            self.term = Some(term);
            self.revoking.clear();
            self.deadlines = live
                .iter()
                .map(|(id, ttl)| (*id, now + Duration::from_millis(*ttl) + self.grace))
                .collect();
        }
        self.deadlines.retain(|id, _| live.contains_key(id));
        self.revoking.retain(|id| live.contains_key(id));
        for (id, ttl) in live {
            self.deadlines
                .entry(*id)
                .or_insert_with(|| now + Duration::from_millis(*ttl));
        }
        let expired: Vec<LeaseId> = self
            .deadlines
            .iter()
            .filter(|(id, deadline)| **deadline <= now && !self.revoking.contains(id))
            .map(|(id, _)| *id)
            .collect();
        self.revoking.extend(expired.iter().copied());
        expired
    }

    /// A keep-alive of lease `id` (TTL `ttl_ms`, live as applied here) arrived at `now`.
    pub(crate) fn keep_alive(&mut self, id: LeaseId, ttl_ms: u64, now: Instant) -> KeepAlive {
        if self.term.is_none() {
            return KeepAlive::NotLeader;
        }
        if self.revoking.contains(&id) {
            return KeepAlive::Expired;
        }
        self.deadlines
            .insert(id, now + Duration::from_millis(ttl_ms));
        KeepAlive::Renewed
    }

    /// A proposed revoke of `id` did not commit (leadership moved, or an error): a later tick
    /// may return it again.
    pub(crate) fn revoke_failed(&mut self, id: LeaseId) {
        self.revoking.remove(&id);
    }

    /// Time left on lease `id`, if this node tracks it.
    #[cfg(test)]
    pub(crate) fn remaining(&self, id: LeaseId, now: Instant) -> Option<Duration> {
        self.deadlines
            .get(&id)
            .map(|d| d.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(2);

    fn live(leases: &[(LeaseId, u64)]) -> BTreeMap<LeaseId, u64> {
        leases.iter().copied().collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A follower keeps no deadlines and never expires anything, however old the leases.
    #[test]
    fn a_follower_expires_nothing() {
        let mut clock = LeaseClock::new(GRACE);
        let t0 = Instant::now();
        let leases = live(&[(1, 100)]);
        assert!(clock.tick(t0, None, &leases).is_empty());
        assert!(clock.tick(t0 + ms(60_000), None, &leases).is_empty());
        assert_eq!(clock.keep_alive(1, 100, t0), KeepAlive::NotLeader);
    }

    /// On becoming leader every existing lease gets TTL + grace; a lease granted later gets
    /// its TTL from when the leader first sees it. Each expiry is reported exactly once.
    #[test]
    fn new_leader_grants_grace_then_expires_each_once() {
        let mut clock = LeaseClock::new(GRACE);
        let t0 = Instant::now();
        let mut leases = live(&[(1, 1_000)]);
        assert!(clock.tick(t0, Some(3), &leases).is_empty());
        leases.insert(2, 500);
        assert!(clock.tick(t0 + ms(100), Some(3), &leases).is_empty());
        // Lease 2: seen at +100, TTL 500 → expires at +600.
        assert_eq!(clock.tick(t0 + ms(600), Some(3), &leases), vec![2]);
        assert!(
            clock.tick(t0 + ms(700), Some(3), &leases).is_empty(),
            "once"
        );
        // Lease 1: TTL 1000 + grace 2000 from +0.
        assert!(clock.tick(t0 + ms(2_999), Some(3), &leases).is_empty());
        assert_eq!(clock.tick(t0 + ms(3_000), Some(3), &leases), vec![1]);
    }

    /// A keep-alive pushes the deadline to now + TTL; a keep-alive after expiry was decided
    /// is refused rather than resurrecting a lease whose revoke is in flight.
    #[test]
    fn keep_alive_extends_and_cannot_resurrect() {
        let mut clock = LeaseClock::new(Duration::ZERO);
        let t0 = Instant::now();
        let leases = live(&[(1, 1_000)]);
        clock.tick(t0, Some(1), &leases);
        assert_eq!(clock.keep_alive(1, 1_000, t0 + ms(900)), KeepAlive::Renewed);
        assert!(clock.tick(t0 + ms(1_899), Some(1), &leases).is_empty());
        assert_eq!(clock.remaining(1, t0 + ms(1_400)), Some(ms(500)));
        assert_eq!(clock.tick(t0 + ms(1_900), Some(1), &leases), vec![1]);
        assert_eq!(
            clock.keep_alive(1, 1_000, t0 + ms(1_901)),
            KeepAlive::Expired
        );
    }

    /// A failed revoke is retried by a later tick; a revoked lease (gone from the live set)
    /// is forgotten.
    #[test]
    fn failed_revoke_is_retried_and_applied_revoke_forgotten() {
        let mut clock = LeaseClock::new(Duration::ZERO);
        let t0 = Instant::now();
        let mut leases = live(&[(1, 100)]);
        clock.tick(t0, Some(1), &leases);
        assert_eq!(clock.tick(t0 + ms(100), Some(1), &leases), vec![1]);
        clock.revoke_failed(1);
        assert_eq!(clock.tick(t0 + ms(150), Some(1), &leases), vec![1]);
        leases.clear();
        assert!(clock.tick(t0 + ms(200), Some(1), &leases).is_empty());
        assert_eq!(clock.remaining(1, t0), None);
    }

    /// Losing leadership and winning it again (a new term) restarts every deadline with grace:
    /// time that passed while another node led does not count against a lease.
    #[test]
    fn regaining_leadership_restarts_deadlines() {
        let mut clock = LeaseClock::new(GRACE);
        let t0 = Instant::now();
        let leases = live(&[(1, 1_000)]);
        clock.tick(t0, Some(1), &leases);
        clock.tick(t0 + ms(500), None, &leases);
        assert!(clock.tick(t0 + ms(10_000), Some(5), &leases).is_empty());
        assert_eq!(clock.remaining(1, t0 + ms(10_000)), Some(ms(1_000) + GRACE));
    }
}
