//! `strata txn list|show|abort`: the transactions the coordinator keeps.

use strata_client::Client;
use strata_proto::TxnId;
use strata_proto::pb::client::TxnInfo;

use crate::cluster::Output;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TxnCommand {
    /// Transactions, oldest first.
    List {
        /// Only the open ones.
        #[arg(long)]
        open: bool,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One transaction: state, owner, deadline, participants.
    Show {
        id: u64,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Abort an open transaction of any client.
    Abort { id: u64 },
}

pub async fn run(client: &Client, cmd: TxnCommand) -> anyhow::Result<()> {
    match cmd {
        TxnCommand::List { open, output } => print(&client.list_transactions(open).await?, output)?,
        TxnCommand::Show { id, output } => {
            print(&[client.transaction_info(TxnId(id)).await?], output)?
        }
        TxnCommand::Abort { id } => {
            let t = client.abort_transaction(TxnId(id)).await?;
            println!("txn {} {}", t.txn_id, t.state);
        }
    }
    Ok(())
}

fn print(txns: &[TxnInfo], output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => {
            let rows: Vec<_> = txns
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "id": t.txn_id,
                        "state": t.state,
                        "owner": t.owner,
                        "producer": (!t.producer.is_empty()).then_some(&t.producer),
                        "group": (!t.group.is_empty()).then_some(&t.group),
                        "prepared": t.prepared,
                        "checks": t.checks,
                        "created_ms": t.created_ms,
                        "deadline_ms": t.deadline_ms,
                        "decided_ms": (t.decided_ms > 0).then_some(t.decided_ms),
                        "partitions": t.partitions,
                        "subscriptions": t.subscriptions,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Table => {
            println!(
                "{:>10}  {:<10}  {:<24}  {:>14}  {:>10}  {:>13}",
                "ID", "STATE", "OWNER", "DEADLINE_MS", "PARTITIONS", "SUBSCRIPTIONS"
            );
            for t in txns {
                println!(
                    "{:>10}  {:<10}  {:<24}  {:>14}  {:>10}  {:>13}",
                    t.txn_id,
                    t.state,
                    t.owner,
                    t.deadline_ms,
                    t.partitions.len(),
                    t.subscriptions.len()
                );
            }
        }
    }
    Ok(())
}
