//! How many transactions are open, per client and in all, as a coordinator last saw them.
//!
//! The limits on open transactions are checked on every begin. Counting the deadline index
//! exactly each time is a linearizable read per begin, a fifth of a transaction's cost. So
//! a coordinator keeps the counts from its last exact read and adds its own begins since.
//! An answer that would refuse is always checked against a fresh exact count first, so
//! refusals are exact. An acceptance may overshoot by what other coordinators began within
//! [`MAX_VIEW_AGE`], and by begins still being written when a count is taken (as before the
//! view: a count and a begin were never one atomic step).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::txn_coordinator::{CoordinatorError, TxnLimits};

/// How old the counts may be when they accept a begin.
pub const MAX_VIEW_AGE: Duration = Duration::from_millis(100);

/// Open transactions as of `taken_at`, plus the begins counted since.
#[derive(Debug, Clone)]
pub(crate) struct OpenView {
    /// `None`: never counted.
    taken_at: Option<Instant>,
    total: usize,
    per_owner: HashMap<String, usize>,
}

impl OpenView {
    /// A view that is too old to accept anything (the first begin reads).
    pub(crate) fn stale() -> Self {
        Self {
            taken_at: None,
            total: 0,
            per_owner: HashMap::new(),
        }
    }

    /// The exact counts, from the owners of every open transaction.
    pub(crate) fn counted<'a>(owners: impl IntoIterator<Item = &'a str>, now: Instant) -> Self {
        let mut view = Self {
            taken_at: Some(now),
            total: 0,
            per_owner: HashMap::new(),
        };
        for owner in owners {
            view.add(owner);
        }
        view
    }

    /// Whether these counts may decide for a begin at `now`: recent enough and accepting.
    /// Otherwise the caller counts exactly and asks [`OpenView::refusal`] of that.
    pub(crate) fn accepts(&self, owner: &str, limits: &TxnLimits, now: Instant) -> bool {
        self.taken_at
            .is_some_and(|at| now.saturating_duration_since(at) < MAX_VIEW_AGE)
            && self.refusal(owner, limits).is_none()
    }

    /// Why one more transaction of `owner` would break a limit, if it would.
    pub(crate) fn refusal(&self, owner: &str, limits: &TxnLimits) -> Option<CoordinatorError> {
        if self.total >= limits.max_open {
            return Some(CoordinatorError::TooManyOpen {
                scope: "in the cluster".into(),
                limit: limits.max_open,
            });
        }
        if self.per_owner.get(owner).copied().unwrap_or(0) >= limits.max_open_per_client {
            return Some(CoordinatorError::TooManyOpen {
                scope: format!("for client {owner}"),
                limit: limits.max_open_per_client,
            });
        }
        None
    }

    /// Counts one more open transaction of `owner` (a begin accepted by this view).
    pub(crate) fn add(&mut self, owner: &str) {
        self.total += 1;
        *self.per_owner.entry(owner.to_owned()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_client: usize, total: usize) -> TxnLimits {
        TxnLimits {
            max_open_per_client: per_client,
            max_open: total,
            ..TxnLimits::default()
        }
    }

    #[test]
    fn counts_per_owner_and_in_all() {
        let now = Instant::now();
        let view = OpenView::counted(["a", "a", "b"], now);
        assert!(view.accepts("b", &limits(2, 4), now));
        assert!(
            !view.accepts("a", &limits(2, 4), now),
            "client a has 2 of 2 open"
        );
        assert!(matches!(
            view.refusal("c", &limits(2, 3)),
            Some(CoordinatorError::TooManyOpen { .. })
        ));
    }

    #[test]
    fn begins_since_the_count_are_counted() {
        let now = Instant::now();
        let mut view = OpenView::counted([], now);
        view.add("a");
        assert!(view.accepts("a", &limits(2, 10), now));
        view.add("a");
        assert!(!view.accepts("a", &limits(2, 10), now));
    }

    #[test]
    fn an_old_view_never_decides() {
        let now = Instant::now();
        let view = OpenView::counted([], now);
        assert!(!view.accepts("a", &limits(5, 5), now + MAX_VIEW_AGE));
        assert!(!OpenView::stale().accepts("a", &limits(5, 5), Instant::now()));
    }
}
