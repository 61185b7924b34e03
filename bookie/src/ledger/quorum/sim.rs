//! Randomised simulation of a writer, its bookies and a concurrent recovery, all driven
//! through the protocol structs over an unordered network that loses messages. Bookies
//! crash (keeping their data, answering nothing), the writer suspects slow bookies and
//! changes ensembles by compare-and-set on a metadata model, and the old writer keeps going
//! while the recovery fences and reads.
//!
//! The tests that run it are in `model_tests.rs`. Failures name the seed; replay one with
//! `QUORUM_SIM_SEED=<seed> cargo test --release -p strata-bookie sim_` (prints every event).

use std::collections::BTreeSet;

use strata_proto::EntryId;

use super::placement::SplitMix64;
use super::schedule::WriteSchedule;
use super::{
    AddQuorum, EntryAnswer, FailureAction, LacAnswer, LacOutcome, LacRecovery, RecoveryAction,
    RecoveryPlan, Stop,
};

const SPARE_BOOKIES: usize = 2;
const MAX_ENTRIES: u64 = 6;
const MAX_SUSPICIONS: usize = 3;

#[derive(Debug, Default, Clone)]
struct Bookie {
    entries: BTreeSet<u64>,
    lac: Option<u64>,
    fenced: bool,
    down: bool,
}

#[derive(Debug, Clone)]
enum Msg {
    /// Writer to bookie: (to, entry, piggybacked LAC).
    Add(u32, u64, Option<u64>),
    /// Bookie to writer: (from, entry).
    Ack(u32, u64),
    /// Bookie to writer: (from, fenced); not fenced means down (a timeout).
    AddFailed(u32, bool),
    /// Recovery to bookie: (to, ensemble index).
    Fence(u32, usize),
    /// Recovery to bookie, fencing: (to, ensemble index, entry).
    Read(u32, usize, u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MdState {
    Open,
    InRecovery,
    Closed(Option<u64>),
}

#[derive(Debug)]
pub(super) struct Metadata {
    version: u64,
    state: MdState,
    /// (first entry, ensemble), by first entry.
    pub(super) fragments: Vec<(u64, Vec<u32>)>,
}

pub(super) enum Recovery {
    NotStarted,
    Fencing(LacRecovery),
    Reading(RecoveryPlan<u64>),
    Closed(Option<u64>),
    Failed,
}

pub(super) struct Sim {
    seed: u64,
    rng: SplitMix64,
    s: WriteSchedule,
    bookies: Vec<Bookie>,
    pub(super) md: Metadata,
    pub(super) q: AddQuorum<u32>,
    writer_version: u64,
    /// Replacements chosen for the change in progress.
    change: Option<Vec<(usize, u32)>>,
    acknowledged: Vec<u64>,
    pub(super) recovery: Recovery,
    /// The last fragment (first entry, ensemble) and metadata version the recovery saw.
    recovering: (u64, Vec<u32>, u64),
    net: Vec<Msg>,
    max_down: usize,
    downs: usize,
    suspicions: usize,
    /// Print every event (when replaying one seed).
    pub(super) verbose: bool,
    /// Recovery reads that do not fence (to show that they must).
    pub(super) unfenced_reads: bool,
}

impl Sim {
    pub(super) fn new(s: WriteSchedule, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let ensemble: Vec<u32> = (0..s.ensemble_size() as u32).collect();
        let max_down = rng.below(s.ack_quorum() + 2);
        Sim {
            seed,
            rng,
            s,
            bookies: vec![Bookie::default(); s.ensemble_size() + SPARE_BOOKIES],
            md: Metadata {
                version: 1,
                state: MdState::Open,
                fragments: vec![(0, ensemble.clone())],
            },
            q: AddQuorum::new(s, ensemble, None).expect("valid ensemble"),
            writer_version: 1,
            change: None,
            acknowledged: Vec::new(),
            recovery: Recovery::NotStarted,
            recovering: (0, Vec::new(), 0),
            net: Vec::new(),
            max_down,
            downs: 0,
            suspicions: 0,
            verbose: false,
            unfenced_reads: false,
        }
    }

    fn can_send(&self) -> bool {
        self.q.stopped().is_none() && self.q.next_entry().is_some_and(|e| e.0 < MAX_ENTRIES)
    }

    pub(super) fn run(&mut self) {
        for _ in 0..100_000 {
            let recovering = !matches!(self.recovery, Recovery::NotStarted);
            let busy = self.can_send() || !self.net.is_empty() || self.change.is_some();
            if !busy && recovering {
                return;
            }
            match self.rng.below(20) {
                0..=3 if self.can_send() => self.writer_send(),
                4 if self.change.is_some() => self.writer_cas(),
                5 if !recovering => self.start_recovery(),
                6 if self.downs < self.max_down => {
                    let b = self.rng.below(self.bookies.len());
                    if !self.bookies[b].down {
                        self.bookies[b].down = true;
                        self.downs += 1;
                    }
                }
                7 if self.suspicions < MAX_SUSPICIONS && self.q.stopped().is_none() => {
                    self.suspicions += 1;
                    let index = self.rng.below(self.s.ensemble_size());
                    let bookie = self.q.ensemble()[index];
                    self.writer_failure(bookie);
                }
                _ if !self.net.is_empty() => self.deliver(),
                _ if !busy => self.start_recovery(),
                _ if self.change.is_some() => self.writer_cas(),
                _ if self.can_send() => self.writer_send(),
                _ => {}
            }
        }
        panic!("seed {}: no quiescence", self.seed);
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("{}", what());
        }
    }

    fn writer_send(&mut self) {
        let Some(entry) = self.q.next_entry() else {
            return;
        };
        let lac = self.q.last_add_confirmed().map(|l| l.0);
        let targets = self.q.sent(entry).expect("writer sends in order");
        for t in targets {
            self.net.push(Msg::Add(t.bookie, entry.0, lac));
        }
    }

    fn acknowledge(&mut self, entries: &[EntryId]) {
        for e in entries {
            let expected = self.acknowledged.len() as u64;
            assert_eq!(e.0, expected, "seed {}: out of order or twice", self.seed);
            self.acknowledged.push(e.0);
            self.log(|| format!("writer: acknowledged {}", e.0));
        }
    }

    fn writer_failure(&mut self, bookie: u32) {
        self.log(|| format!("writer: bookie {bookie} failed"));
        if let FailureAction::ChangeEnsemble(c) = self.q.bookie_failed(&bookie) {
            self.plan_change(&c.failed);
        }
    }

    /// Picks replacements among up bookies outside the ensemble, or stops the writer.
    fn plan_change(&mut self, failed: &[usize]) {
        let ensemble = self.q.ensemble().to_vec();
        let mut free = (0..self.bookies.len() as u32)
            .filter(|b| !ensemble.contains(b) && !self.bookies[*b as usize].down);
        let mut picks = Vec::new();
        for index in failed {
            match free.next() {
                Some(b) => picks.push((*index, b)),
                None => {
                    self.q.stop(Stop::EnsembleChangeFailed);
                    self.change = None;
                    return;
                }
            }
        }
        self.log(|| format!("writer: change {failed:?} -> {picks:?}"));
        self.change = Some(picks);
    }

    /// The compare-and-set of the change in progress on the metadata.
    fn writer_cas(&mut self) {
        let Some(picks) = self.change.take() else {
            return;
        };
        if self.md.version != self.writer_version || self.md.state != MdState::Open {
            self.q.stop(Stop::EnsembleChangeFailed);
            return;
        }
        let first = self.q.changing().expect("change in progress").0;
        let mut ensemble = self.q.ensemble().to_vec();
        for (i, b) in &picks {
            ensemble[*i] = *b;
        }
        match self.md.fragments.last_mut() {
            Some(last) if last.0 == first => last.1 = ensemble.clone(),
            _ => self.md.fragments.push((first, ensemble.clone())),
        }
        self.md.version += 1;
        self.writer_version = self.md.version;
        self.log(|| format!("writer: cas ok, fragments {:?}", self.md.fragments));
        let changed = self.q.ensemble_changed(&picks).expect("valid change");
        assert_eq!(self.q.ensemble(), &ensemble[..], "seed {}", self.seed);
        self.acknowledge(&changed.acknowledged.entries);
        let lac = self.q.last_add_confirmed().map(|l| l.0);
        for r in changed.resend {
            self.net.push(Msg::Add(r.bookie, r.entry.0, lac));
        }
        if let Some(next) = changed.next_change {
            self.plan_change(&next.failed);
        }
    }

    fn start_recovery(&mut self) {
        if !matches!(self.recovery, Recovery::NotStarted) {
            return;
        }
        if let MdState::Closed(last) = self.md.state {
            self.recovery = Recovery::Closed(last);
            return;
        }
        self.md.state = MdState::InRecovery;
        self.md.version += 1;
        let (first, ensemble) = self.md.fragments.last().cloned().expect("a fragment");
        self.log(|| format!("recovery: start on {first} {ensemble:?}"));
        for (index, to) in ensemble.iter().enumerate() {
            self.net.push(Msg::Fence(*to, index));
        }
        self.recovery = Recovery::Fencing(LacRecovery::new(self.s));
        self.recovering = (first, ensemble, self.md.version);
    }

    fn deliver(&mut self) {
        let i = self.rng.below(self.net.len());
        let msg = self.net.swap_remove(i);
        // The writer's messages are sometimes lost: it times out on that bookie.
        let lost = self.rng.below(10) == 0;
        self.log(|| format!("deliver {msg:?} lost={lost}"));
        match msg {
            Msg::Add(to, ..) | Msg::Ack(to, _) if lost => self.writer_failure(to),
            Msg::Add(to, entry, lac) => {
                let b = &mut self.bookies[to as usize];
                let reply = if b.down || b.fenced {
                    Msg::AddFailed(to, b.fenced && !b.down)
                } else {
                    b.entries.insert(entry);
                    b.lac = b.lac.max(lac);
                    Msg::Ack(to, entry)
                };
                self.net.push(reply);
            }
            Msg::Ack(from, entry) => {
                let done = self.q.acked(EntryId(entry), &from);
                self.acknowledge(&done.entries);
            }
            Msg::AddFailed(_, true) => {
                self.q.stop(Stop::Fenced);
                self.change = None;
            }
            Msg::AddFailed(from, false) => self.writer_failure(from),
            Msg::Fence(to, index) => {
                let b = &mut self.bookies[to as usize];
                let answer = if b.down {
                    LacAnswer::Error
                } else {
                    b.fenced = true;
                    if b.entries.is_empty() && b.lac.is_none() {
                        LacAnswer::NoLedger
                    } else {
                        LacAnswer::Lac(b.lac.map(EntryId))
                    }
                };
                self.on_lac_answer(index, answer);
            }
            Msg::Read(to, index, entry) => {
                let fence = !self.unfenced_reads;
                let b = &mut self.bookies[to as usize];
                // A recovery read fences, so a denial cannot be overtaken by a late add.
                b.fenced |= fence && !b.down;
                let answer = if b.down {
                    EntryAnswer::Error
                } else if b.entries.contains(&entry) {
                    EntryAnswer::Found(entry)
                } else {
                    EntryAnswer::NoSuchEntry
                };
                let actions = match &mut self.recovery {
                    Recovery::Reading(plan) => plan.answer(EntryId(entry), index, answer),
                    _ => Vec::new(),
                };
                self.run_recovery(actions);
            }
        }
    }

    fn on_lac_answer(&mut self, index: usize, answer: LacAnswer) {
        let Recovery::Fencing(lac) = &mut self.recovery else {
            return;
        };
        let outcome = lac.answer(index, answer);
        self.log(|| format!("recovery: lac answer {index} {answer:?} -> {outcome:?}"));
        match outcome {
            LacOutcome::Pending => {}
            LacOutcome::Failed => self.recovery = Recovery::Failed,
            LacOutcome::Done { lac } => {
                let plan = RecoveryPlan::new(self.s, lac, EntryId(self.recovering.0));
                let start = plan.start();
                self.recovery = Recovery::Reading(plan);
                self.run_recovery(vec![start]);
            }
        }
    }

    fn run_recovery(&mut self, actions: Vec<RecoveryAction<u64>>) {
        let (_, ensemble, version) = self.recovering.clone();
        for action in actions {
            self.log(|| format!("recovery: {action:?}"));
            match action {
                RecoveryAction::Read { entry, indexes } => {
                    for index in indexes {
                        self.net.push(Msg::Read(ensemble[index], index, entry.0));
                    }
                }
                // Recovery adds pass the fence; delivered at once for simplicity.
                RecoveryAction::Rewrite { entry, payload } => {
                    assert_eq!(payload, entry.0);
                    for index in self.s.write_set(entry) {
                        let b = &mut self.bookies[ensemble[index] as usize];
                        if !b.down {
                            b.entries.insert(entry.0);
                        }
                    }
                }
                RecoveryAction::Close { last_entry } => {
                    assert_eq!(self.md.version, version, "seed {}", self.seed);
                    let last = last_entry.map(|e| e.0);
                    self.md.state = MdState::Closed(last);
                    self.md.version += 1;
                    self.recovery = Recovery::Closed(last);
                }
                RecoveryAction::Failed { .. } => self.recovery = Recovery::Failed,
            }
        }
    }

    /// Fragment ensemble holding `entry` in the final metadata.
    fn ensemble_of(&self, entry: u64) -> &[u32] {
        let (_, ensemble) = self
            .md
            .fragments
            .iter()
            .rev()
            .find(|(first, _)| *first <= entry)
            .expect("fragment 0 starts at 0");
        ensemble
    }

    /// The properties every run must keep; `Err` names the first one broken.
    pub(super) fn check(&self) -> Result<(), String> {
        let seed = self.seed;
        for x in &self.acknowledged {
            let ensemble = self.ensemble_of(*x);
            let copies = self
                .s
                .write_set(EntryId(*x))
                .filter(|i| self.bookies[ensemble[*i] as usize].entries.contains(x))
                .count();
            if copies < self.s.ack_quorum() {
                return Err(format!(
                    "seed {seed}: entry {x} acknowledged with {copies} copies in its fragment"
                ));
            }
        }
        let last_acked = self.acknowledged.last().copied();
        match self.recovery {
            Recovery::Closed(last) if last < last_acked => Err(format!(
                "seed {seed}: closed at {last:?} before acknowledged {last_acked:?}"
            )),
            Recovery::Closed(Some(last)) if self.downs < self.s.ack_quorum() => {
                match (0..=last).find(|x| !self.readable(*x)) {
                    Some(x) => Err(format!("seed {seed}: entry {x} is unreadable")),
                    None => Ok(()),
                }
            }
            Recovery::Closed(_) => Ok(()),
            Recovery::Failed if self.downs < self.s.ack_quorum() => Err(format!(
                "seed {seed}: recovery failed with {} bookies down",
                self.downs
            )),
            Recovery::Failed => Ok(()),
            _ => Err(format!("seed {seed}: recovery did not finish")),
        }
    }

    /// Some up bookie of `entry`'s write set in its fragment stores it.
    fn readable(&self, entry: u64) -> bool {
        let ensemble = self.ensemble_of(entry);
        self.s.write_set(EntryId(entry)).any(|i| {
            let b = &self.bookies[ensemble[i] as usize];
            !b.down && b.entries.contains(&entry)
        })
    }
}
