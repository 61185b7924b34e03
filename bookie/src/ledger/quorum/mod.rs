//! The replication protocol of a ledger (Apache BookKeeper's rules) as plain structs without
//! I/O: each takes answers from bookies (and `now`, where timing matters) and returns what to
//! do next. Tasks, sockets and the metastore only drive them.
//!
//! # Rules
//!
//! - A ledger is written by one writer to an ensemble of E bookies. Entry `e` goes to its
//!   *write set*: the Qw bookies at ensemble indexes `e mod E, e mod E + 1, ...` (mod E).
//!   It is durable once Qa of them acked, and acknowledged to the client once every earlier
//!   entry is too; the last acknowledged entry is the last-add-confirmed (LAC), which the
//!   writer piggybacks on every add.
//! - When a bookie fails, the writer replaces it with one outside the ensemble in a new
//!   *fragment* starting at LAC + 1 (compare-and-set on the metadata), then resends to the
//!   replacement the outstanding entries the failed bookie held. Nothing is acknowledged
//!   while the change is in progress, and the failed bookie's acks no longer count.
//! - Recovery (a new owner): fence the ledger on the last ensemble and read the bookies'
//!   LACs until the answers *cover* the ensemble (every write set has fewer than Qa silent
//!   bookies, so no ack quorum can form without a fenced one), then read forward from the
//!   highest LAC (but not before the last fragment's first entry: everything before it was
//!   acknowledged): an entry found on any replica is recovered and re-written to its write
//!   quorum; an entry is absent once Qw - Qa + 1 of its write set answered "no such entry"
//!   (then no ack quorum can have stored it); errors are neither. Recovery reads fence too,
//!   so a bookie that denied an entry cannot store it for the old writer afterwards (the
//!   simulation in the tests finds lost entries without this). The ledger is closed at the
//!   last recovered entry by compare-and-set, so of two racing recoveries one wins.
//! - Reads try the write set's replicas in order, fail over on error, and read the next
//!   replica speculatively when one is slow.
//!
//! # Layout
//!
//! - [`schedule`]: [`WriteSchedule`] (E, Qw, Qa; write sets; LAC and absence coverage) and
//!   [`IndexSet`].
//! - [`add_quorum`]: [`AddQuorum`], the writer: ack counting, in-order acknowledgement,
//!   ensemble changes and resends.
//! - [`recovery`]: [`LacRecovery`], [`EntryRecovery`] and [`RecoveryPlan`] (read forward,
//!   re-write, close).
//! - [`placement`]: [`choose_ensemble`] and [`choose_replacement`], rack-aware and seeded.
//! - [`read_plan`]: [`ReadPlan`], replica order, failover and speculative reads.

pub mod add_quorum;
pub mod placement;
pub mod read_plan;
pub mod recovery;
pub mod schedule;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod sim;

pub use add_quorum::{
    Acknowledged, AddQuorum, AddQuorumError, ChangeEnsemble, EnsembleChanged, FailureAction,
    Resend, Stop, Target,
};
pub use placement::{BookieInfo, PlacementError, choose_ensemble, choose_replacement};
pub use read_plan::{ReadPlan, ReadStep};
pub use recovery::{
    EntryAnswer, EntryOutcome, EntryRecovery, LacAnswer, LacOutcome, LacRecovery, RecoveryAction,
    RecoveryPlan,
};
pub use schedule::{IndexSet, MAX_ENSEMBLE_SIZE, ScheduleError, WriteSchedule};
