//! Check-back: the checker sessions of producer groups connected to this broker. When the
//! coordinator asks about a prepared transaction (its record's check count goes up), the
//! broker passes the question to one checker of the transaction's group, round-robin; the
//! checker answers with an `EndTxn` naming its group. With checkers of a group on several
//! brokers, each asks one of its own: answers are idempotent decisions, so that is harmless.

use std::collections::HashMap;
use std::sync::Mutex;

use strata_metastore::tables::TxnRecord;
use strata_proto::TxnId;
use tokio::sync::mpsc;

#[derive(Debug, Default)]
pub struct TxnCheckers {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Sessions by group: (session id, its client, where its questions go).
    groups: HashMap<String, Vec<(u64, String, mpsc::UnboundedSender<TxnId>)>>,
    /// Per open transaction, the check count already passed on.
    asked: HashMap<TxnId, u32>,
    /// Round-robin position per group.
    turn: HashMap<String, usize>,
}

impl TxnCheckers {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a checker session of `group`; its questions arrive on the receiver until
    /// [`TxnCheckers::remove`].
    pub fn add(&self, group: &str, client: &str) -> (u64, mpsc::UnboundedReceiver<TxnId>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.state();
        st.next_id += 1;
        let id = st.next_id;
        let sessions = st.groups.entry(group.to_owned()).or_default();
        sessions.push((id, client.to_owned(), tx));
        (id, rx)
    }

    /// Whether `client` has a checker session of `group` here: only such a client may
    /// answer for the group.
    pub fn is_member(&self, group: &str, client: &str) -> bool {
        self.state()
            .groups
            .get(group)
            .is_some_and(|s| s.iter().any(|(_, c, _)| c == client))
    }

    /// The watch restarted: checks asked while it was down are asked again as they come.
    pub fn forget_asked(&self) {
        self.state().asked.clear();
    }

    pub fn remove(&self, group: &str, session: u64) {
        let mut st = self.state();
        if let Some(sessions) = st.groups.get_mut(group) {
            sessions.retain(|(id, _, _)| *id != session);
            if sessions.is_empty() {
                st.groups.remove(group);
                st.turn.remove(group);
            }
        }
    }

    /// A transaction record changed: if the coordinator asked a new check of a group with a
    /// checker here, pass it to one. Forgets decided transactions.
    pub fn record_changed(&self, id: TxnId, record: &TxnRecord) {
        let mut st = self.state();
        if !record.state.is_open() {
            st.asked.remove(&id);
            return;
        }
        let Some(group) = &record.group else { return };
        if !record.prepared || record.checks <= st.asked.get(&id).copied().unwrap_or(0) {
            return;
        }
        let Some(sessions) = st.groups.get(group) else {
            return;
        };
        let n = sessions.len();
        let start = st.turn.get(group).copied().unwrap_or(0);
        // The first live session from this group's turn on (a closed one is skipped).
        let sent = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| sessions[i].2.send(id).is_ok());
        if let Some(i) = sent {
            st.turn.insert(group.clone(), i + 1);
            st.asked.insert(id, record.checks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(group: &str, checks: u32) -> TxnRecord {
        let mut r = TxnRecord::open("app", 0, 1000);
        r.group = Some(group.to_owned());
        r.prepared = true;
        r.checks = checks;
        r
    }

    #[test]
    fn each_new_check_goes_to_one_checker_of_the_group_in_turn() {
        let checkers = TxnCheckers::default();
        let (_, mut a) = checkers.add("orders", "c1");
        let (_, mut b) = checkers.add("orders", "c2");
        let (_, mut other) = checkers.add("billing", "c3");
        assert!(checkers.is_member("orders", "c2") && !checkers.is_member("orders", "c3"));
        checkers.record_changed(TxnId(7), &prepared("orders", 1));
        checkers.record_changed(TxnId(7), &prepared("orders", 1)); // the same check again
        checkers.record_changed(TxnId(7), &prepared("orders", 2));
        assert_eq!(a.try_recv().ok(), Some(TxnId(7)));
        assert_eq!(b.try_recv().ok(), Some(TxnId(7)));
        assert!(
            a.try_recv().is_err() && b.try_recv().is_err(),
            "once per check"
        );
        assert!(other.try_recv().is_err(), "another group is not asked");
    }

    #[test]
    fn unprepared_unchecked_and_decided_transactions_ask_nothing() {
        let checkers = TxnCheckers::default();
        let (session, mut a) = checkers.add("orders", "c1");
        let mut r = prepared("orders", 1);
        r.prepared = false;
        checkers.record_changed(TxnId(1), &r);
        checkers.record_changed(TxnId(2), &prepared("orders", 0));
        let mut decided = prepared("orders", 1);
        decided.abort(TxnId(3), false, 1).expect("abort");
        checkers.record_changed(TxnId(3), &decided);
        assert!(a.try_recv().is_err());
        checkers.remove("orders", session);
        checkers.record_changed(TxnId(4), &prepared("orders", 1));
        assert!(a.try_recv().is_err(), "a removed session is not asked");
    }
}
