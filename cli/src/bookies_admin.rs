//! `strata cluster bookies` and `strata ledgers show <id>`: the registered bookies, the
//! re-replication auditor and its progress, and one ledger's metadata.

use std::collections::BTreeSet;

use serde_json::json;
use strata_bookie::registration::{RegisteredBookie, list_bookies};
use strata_bookie::replication::{self, ReplicationStatus, UnderReplicated};
use strata_metastore::Meta;
use strata_metastore::tables::{Ledgers, Table};
use strata_proto::LedgerId;
use strata_proto::pb::bookie::{LedgerMetadata, LedgerState};

use crate::cluster::Output;

/// Prints the registered bookies, the auditor and the under-replicated ledgers.
pub async fn bookies(meta: &Meta, output: Output) -> anyhow::Result<()> {
    let registered = list_bookies(meta).await?;
    let status = replication::status(meta).await?;
    match output {
        Output::Table => print!("{}", render_bookies(&registered, &status)),
        Output::Json => {
            let bookies: Vec<_> = registered
                .iter()
                .map(|b| serde_json::to_value(&b.record))
                .collect::<Result<_, _>>()?;
            let pending: Vec<_> = status
                .pending
                .iter()
                .map(|(id, mark)| json!({ "ledger": id.0, "mark": mark }))
                .collect();
            let doc = json!({
                "bookies": bookies,
                "auditor": status.auditor,
                "under_replicated": pending,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(())
}

fn progress(mark: &UnderReplicated) -> String {
    let worker = mark.worker.as_deref().unwrap_or("unclaimed");
    let mut s = format!(
        "lost {}; {worker}: {}/{} entries copied",
        mark.lost_bookies.join(","),
        mark.copied_entries,
        mark.entries_to_copy
    );
    if let Some(waiting) = &mark.waiting_for {
        s.push_str(&format!("; waiting for {waiting}"));
    }
    s
}

pub fn render_bookies(registered: &[RegisteredBookie], status: &ReplicationStatus) -> String {
    let mut out = format!(
        "{} bookie(s) registered; auditor: {}\n",
        registered.len(),
        status.auditor.as_deref().unwrap_or("none")
    );
    out.push_str(&format!(
        "{:<24} {:<24} {:<10} {:<9} {:>12}\n",
        "ID", "ADDRESS", "RACK", "WRITABLE", "FREE MIB"
    ));
    for b in registered {
        let r = &b.record;
        out.push_str(&format!(
            "{:<24} {:<24} {:<10} {:<9} {:>12}\n",
            r.bookie_id,
            r.address,
            r.rack.as_deref().unwrap_or("-"),
            if r.writable { "yes" } else { "READ-ONLY" },
            r.free_bytes / (1024 * 1024)
        ));
    }
    if status.pending.is_empty() {
        out.push_str("under-replicated ledgers: none\n");
    } else {
        out.push_str(&format!(
            "under-replicated ledgers: {}\n",
            status.pending.len()
        ));
        for (id, mark) in &status.pending {
            out.push_str(&format!("  ledger {}: {}\n", id.0, progress(mark)));
        }
    }
    out
}

/// Prints one ledger's metadata and re-replication state.
pub async fn show_ledger(meta: &Meta, id: u64, output: Output) -> anyhow::Result<()> {
    let id = LedgerId(id);
    let row = Table::<Ledgers>::new(meta.clone())
        .get(&id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no ledger {}", id.0))?;
    let registered: BTreeSet<String> = list_bookies(meta)
        .await?
        .into_iter()
        .map(|b| b.record.bookie_id)
        .collect();
    let mark = replication::pending_of(meta, id).await?.map(|(m, _)| m);
    match output {
        Output::Table => print!("{}", render_ledger(&row.record, &registered, mark.as_ref())),
        Output::Json => {
            let fragments: Vec<_> = row
                .record
                .fragments
                .iter()
                .map(|f| json!({ "first_entry_id": f.first_entry_id, "bookies": f.bookies }))
                .collect();
            let md = &row.record;
            let doc = json!({
                "ledger_id": md.ledger_id,
                "state": state_name(md),
                "ensemble_size": md.ensemble_size,
                "write_quorum": md.write_quorum,
                "ack_quorum": md.ack_quorum,
                "last_entry_id": md.last_entry_id,
                "length_bytes": md.length_bytes,
                "fragments": fragments,
                "re_replication": mark,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(())
}

fn state_name(md: &LedgerMetadata) -> &'static str {
    match LedgerState::try_from(md.state) {
        Ok(LedgerState::Open) => "OPEN",
        Ok(LedgerState::InRecovery) => "IN_RECOVERY",
        Ok(LedgerState::Closed) => "CLOSED",
        Err(_) => "UNKNOWN",
    }
}

pub fn render_ledger(
    md: &LedgerMetadata,
    registered: &BTreeSet<String>,
    mark: Option<&UnderReplicated>,
) -> String {
    let last = md
        .last_entry_id
        .map_or_else(|| "-".to_owned(), |e| e.to_string());
    let mut out = format!(
        "ledger {}: {} E={} Qw={} Qa={} last entry {} length {} bytes\n",
        md.ledger_id,
        state_name(md),
        md.ensemble_size,
        md.write_quorum,
        md.ack_quorum,
        last,
        md.length_bytes
    );
    for f in &md.fragments {
        let bookies: Vec<String> = f
            .bookies
            .iter()
            .map(|b| {
                if registered.contains(b) {
                    b.clone()
                } else {
                    format!("{b} (gone)")
                }
            })
            .collect();
        out.push_str(&format!(
            "  fragment from entry {}: {}\n",
            f.first_entry_id,
            bookies.join(", ")
        ));
    }
    match mark {
        Some(mark) => out.push_str(&format!("re-replication: {}\n", progress(mark))),
        None => out.push_str("re-replication: none pending\n"),
    }
    out
}
