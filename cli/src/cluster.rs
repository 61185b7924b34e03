//! `strata cluster ...`: cluster administration. `strata cluster metastore status | add |
//! promote | remove` reads and changes the metastore's membership through any of its nodes
//! (the request is routed to the leader); `strata cluster bookies` lists bookies and
//! re-replication; `strata ledgers show` one ledger.

use std::path::PathBuf;
use std::time::Duration;

use strata_metastore::{ClusterStatus, MembershipInfo, MetaClient};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClusterCommand {
    /// Metastore membership: status, add, promote, remove.
    #[command(subcommand)]
    Metastore(MetastoreCommand),
    /// Registered bookies, the re-replication auditor, and under-replicated ledgers with
    /// their progress.
    Bookies {
        #[command(flatten)]
        nodes: MetastoreNodes,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// `strata ledgers ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LedgersCommand {
    /// A ledger's state, quorums, fragments (bookies gone marked) and re-replication
    /// progress.
    Show {
        id: u64,
        #[command(flatten)]
        nodes: MetastoreNodes,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

pub async fn ledgers(
    cmd: LedgersCommand,
    ca: Option<PathBuf>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let LedgersCommand::Show { id, nodes, output } = cmd;
    let meta = MetaClient::new(node_addrs(&nodes.metastore), ca, timeout)?;
    crate::bookies_admin::show_ledger(&meta.into(), id, output).await
}

/// Where to reach the metastore.
#[derive(Debug, Clone, clap::Args)]
pub struct MetastoreNodes {
    /// Metastore nodes, `host:port[,host:port...]`.
    #[arg(long, env = "STRATA_METASTORE", default_value = "127.0.0.1:6670")]
    pub metastore: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum MetastoreCommand {
    /// Leader, term, log indexes, and each member's role, match index and lag.
    Status {
        #[command(flatten)]
        nodes: MetastoreNodes,
        /// `table` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Add a node (started with `strata metastore --join`) as a learner; returns once it has
    /// caught up.
    Add {
        #[arg(long)]
        node_id: u64,
        /// The new node's RPC address (`host:port`) as the other nodes reach it.
        #[arg(long)]
        addr: String,
        #[command(flatten)]
        nodes: MetastoreNodes,
    },
    /// Make a learner a voter.
    Promote {
        #[arg(long)]
        node_id: u64,
        #[command(flatten)]
        nodes: MetastoreNodes,
    },
    /// Remove a voter or learner from the cluster; shut the removed node down afterwards.
    Remove {
        #[arg(long)]
        node_id: u64,
        #[command(flatten)]
        nodes: MetastoreNodes,
    },
}

/// A node's advertised address (`--advertised-address`, else `--listen`, which must then be
/// reachable) and its id (`id`, else the address), checked; `role` names the node in errors.
pub fn node_identity(
    listen: std::net::SocketAddr,
    advertised: Option<&str>,
    id: Option<&str>,
    role: &str,
) -> anyhow::Result<(String, String)> {
    let address = match advertised {
        Some(a) if a.contains(':') => a.to_owned(),
        Some(a) => anyhow::bail!("--advertised-address {a:?} has no :port"),
        None if listen.ip().is_unspecified() => anyhow::bail!(
            "--listen {listen} is not an address others can reach: give --advertised-address HOST:PORT"
        ),
        None => listen.to_string(),
    };
    let id = id.map_or_else(|| address.clone(), str::to_owned);
    if id.is_empty() || id.contains('/') || id.chars().any(char::is_whitespace) {
        anyhow::bail!("{role} id {id:?} must be non-empty, without '/' or whitespace");
    }
    Ok((address, id))
}

/// Splits `host:port[,host:port...]`.
pub fn node_addrs(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

pub async fn run(
    cmd: ClusterCommand,
    ca: Option<PathBuf>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let cmd = match cmd {
        ClusterCommand::Metastore(cmd) => cmd,
        ClusterCommand::Bookies { nodes, output } => {
            let meta = MetaClient::new(node_addrs(&nodes.metastore), ca, timeout)?;
            return crate::bookies_admin::bookies(&meta.into(), output).await;
        }
    };
    let client =
        |nodes: &MetastoreNodes| MetaClient::new(node_addrs(&nodes.metastore), ca.clone(), timeout);
    match cmd {
        MetastoreCommand::Status { nodes, output } => {
            let status = client(&nodes)?.status().await?;
            match output {
                Output::Table => print!("{}", render_status(&status)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
            }
        }
        MetastoreCommand::Add {
            node_id,
            addr,
            nodes,
        } => {
            let m = client(&nodes)?.add_learner(node_id, &addr).await?;
            println!(
                "node {node_id} added as a learner at {addr}; {}",
                describe(&m)
            );
        }
        MetastoreCommand::Promote { node_id, nodes } => {
            let m = client(&nodes)?.promote(node_id).await?;
            println!("node {node_id} is a voter; {}", describe(&m));
        }
        MetastoreCommand::Remove { node_id, nodes } => {
            let m = client(&nodes)?.remove(node_id).await?;
            println!("node {node_id} removed; shut it down; {}", describe(&m));
        }
    }
    Ok(())
}

fn join_ids(ids: impl IntoIterator<Item = u64>) -> String {
    let ids: Vec<String> = ids.into_iter().map(|id| id.to_string()).collect();
    if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(",")
    }
}

/// One line: voters and learners.
fn describe(m: &MembershipInfo) -> String {
    format!(
        "voters {}; learners {}",
        join_ids(m.voters()),
        join_ids(m.learners())
    )
}

fn index(i: Option<u64>) -> String {
    i.map_or_else(|| "-".to_owned(), |i| i.to_string())
}

/// A header line, then one row per member.
pub fn render_status(s: &ClusterStatus) -> String {
    let mut out = format!(
        "leader {}, term {}; log: last {}, committed {}, applied {}; membership at {}{}\n",
        s.leader,
        s.term,
        index(s.last_log_index),
        index(s.committed_index),
        index(s.applied_index),
        index(s.membership_index),
        if s.joint {
            " (joint change in progress)"
        } else {
            ""
        }
    );
    let rows: Vec<[String; 5]> = s
        .members
        .iter()
        .map(|m| {
            [
                m.node_id.to_string(),
                m.addr.clone(),
                m.role.to_string(),
                index(m.match_index),
                m.lag.to_string(),
            ]
        })
        .collect();
    let header = ["ID", "ADDRESS", "ROLE", "MATCH", "LAG"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use strata_metastore::{MemberStatus, Role};

    use super::*;

    /// The table names the leader and term and lists each member's role, match index and lag
    /// in aligned columns.
    #[test]
    fn status_table_lists_every_member() {
        let status = ClusterStatus {
            leader: 2,
            term: 5,
            last_log_index: Some(120),
            committed_index: Some(120),
            applied_index: Some(119),
            membership_index: Some(100),
            joint: false,
            members: vec![
                MemberStatus {
                    node_id: 1,
                    addr: "10.0.0.1:6670".into(),
                    role: Role::Voter,
                    match_index: Some(120),
                    lag: 0,
                },
                MemberStatus {
                    node_id: 2,
                    addr: "10.0.0.2:6670".into(),
                    role: Role::Leader,
                    match_index: Some(120),
                    lag: 0,
                },
                MemberStatus {
                    node_id: 14,
                    addr: "meta-14.metastore.svc:6670".into(),
                    role: Role::Learner,
                    match_index: None,
                    lag: 121,
                },
            ],
        };
        let table = render_status(&status);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "leader 2, term 5; log: last 120, committed 120, applied 119; membership at 100"
        );
        assert_eq!(
            lines[1],
            "ID  ADDRESS                     ROLE     MATCH  LAG"
        );
        assert_eq!(
            lines[2],
            "1   10.0.0.1:6670               voter    120    0"
        );
        assert_eq!(
            lines[4],
            "14  meta-14.metastore.svc:6670  learner  -      121"
        );
        assert_eq!(lines.len(), 5);
    }

    /// Address lists split on commas; blanks are dropped.
    #[test]
    fn node_lists_split_on_commas() {
        assert_eq!(node_addrs(" a:1, b:2,,"), vec!["a:1", "b:2"]);
        assert!(node_addrs("").is_empty());
    }
}
