//! `strata tenants ...`, `strata namespaces ...` and `strata topics ...`: the admin verbs
//! for the names messages live under.

use strata_client::Client;
use strata_proto::pb::client::CreateNamespace;

use crate::cluster::Output;
use crate::subscriptions_admin;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant.
    Create {
        tenant: String,
        /// A role allowed to administer the tenant; repeat for several.
        #[arg(long = "admin-role")]
        admin_roles: Vec<String>,
    },
    /// List every tenant.
    List,
    /// Delete a tenant that has no namespaces.
    Delete { tenant: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TopicsCommand {
    /// Create a topic; with --partitions, a partitioned topic of that many partitions.
    Create {
        topic: String,
        #[arg(long, short = 'p')]
        partitions: Option<u32>,
    },
    /// Delete a topic (a partitioned topic with all its partitions).
    Delete { topic: String },
    /// List the topics of a namespace (partitions included) and its partitioned topics.
    List {
        #[arg(default_value = "public/default")]
        namespace: String,
    },
    /// How many partitions a topic has (0: not partitioned).
    Partitions { topic: String },
    /// Entries, size, and per subscription its type, consumers, backlog and unacked messages.
    Stats {
        topic: String,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The broker serving a topic: its id and address.
    Lookup { topic: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum NamespacesCommand {
    /// Create `tenant/namespace` (the tenant too, if new).
    Create {
        namespace: String,
        /// Refuse producers and consumers on topics that were not created first.
        #[arg(long)]
        no_auto_create_topics: bool,
        /// Number of bundles (default 4).
        #[arg(long)]
        bundles: Option<u32>,
        #[command(flatten)]
        policies: PolicyArgs,
    },
    /// Change an existing namespace's policies: the options given replace the stored ones.
    SetPolicies {
        namespace: String,
        /// Create topics on first use (true) or refuse them (false).
        #[arg(long)]
        auto_create_topics: Option<bool>,
        #[command(flatten)]
        policies: PolicyArgs,
        /// Remove a policy, back to the broker's default (repeatable). As when set, a
        /// replication or rollover change applies to topics loaded afterwards.
        #[arg(long, value_enum)]
        clear: Vec<ClearPolicy>,
    },
    /// List the namespaces of a tenant.
    List { tenant: String },
    /// Delete an empty namespace.
    Delete { namespace: String },
    /// Print a namespace's policies (JSON).
    Policies { namespace: String },
    /// List a namespace's bundles and the broker owning each.
    Bundles { namespace: String },
    /// Unload every owned bundle of a namespace at its owner; lookups assign them again.
    Unload { namespace: String },
    /// Split one bundle (a range as `bundles` prints it) in two at its midpoint.
    SplitBundle { namespace: String, range: String },
}

/// Policies a namespace is created with or changed to.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Replication of the namespace's ledgers: ensemble size (with the two quorums).
    #[arg(long, requires_all = ["write_quorum", "ack_quorum"])]
    ensemble: Option<u32>,
    #[arg(long, requires_all = ["ensemble", "ack_quorum"])]
    write_quorum: Option<u32>,
    #[arg(long, requires_all = ["ensemble", "write_quorum"])]
    ack_quorum: Option<u32>,
    /// Keep consumed data up to this many minutes (with --retention-size-mb); by default a
    /// ledger every subscription has consumed is deleted.
    #[arg(long, requires = "retention_size_mb")]
    retention_minutes: Option<u64>,
    /// Keep up to this many MiB of consumed data (with --retention-minutes).
    #[arg(long, requires = "retention_minutes")]
    retention_size_mb: Option<u64>,
    /// Limit each topic's unconsumed data to this many MiB.
    #[arg(long)]
    backlog_quota_mb: Option<u64>,
    /// What happens over the backlog quota.
    #[arg(long, value_enum, requires = "backlog_quota_mb")]
    backlog_quota_policy: Option<QuotaPolicy>,
    /// Roll a topic's ledger over after this many entries.
    #[arg(long)]
    rollover_max_entries: Option<u64>,
    /// Roll a topic's ledger over after this many MiB.
    #[arg(long)]
    rollover_max_size_mb: Option<u64>,
    /// Roll a topic's ledger over once it is this many minutes old.
    #[arg(long)]
    rollover_max_minutes: Option<u64>,
}

/// A policy `set-policies --clear` removes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ClearPolicy {
    /// Ensemble and quorums: the broker's default replication.
    Replication,
    /// Consumed data is deleted at once.
    Retention,
    /// No backlog limit.
    BacklogQuota,
    /// The broker's ledger rollover limits.
    LedgerRollover,
}

impl ClearPolicy {
    /// Its name in the request.
    fn name(self) -> &'static str {
        match self {
            ClearPolicy::Replication => "replication",
            ClearPolicy::Retention => "retention",
            ClearPolicy::BacklogQuota => "backlog_quota",
            ClearPolicy::LedgerRollover => "ledger_rollover",
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum QuotaPolicy {
    /// Refuse new messages until consumers catch up.
    ProducerException,
    /// Move the slowest subscriptions past their oldest ledgers.
    ConsumerBacklogEviction,
}

impl PolicyArgs {
    fn request(self, namespace: String) -> CreateNamespace {
        CreateNamespace {
            namespace,
            ensemble_size: self.ensemble,
            write_quorum: self.write_quorum,
            ack_quorum: self.ack_quorum,
            retention_minutes: self.retention_minutes,
            retention_size_mb: self.retention_size_mb,
            backlog_quota_mb: self.backlog_quota_mb,
            backlog_quota_policy: self.backlog_quota_policy.map(|p| {
                match p {
                    QuotaPolicy::ProducerException => "producer_exception",
                    QuotaPolicy::ConsumerBacklogEviction => "consumer_backlog_eviction",
                }
                .to_owned()
            }),
            rollover_max_entries: self.rollover_max_entries,
            rollover_max_size_mb: self.rollover_max_size_mb,
            rollover_max_minutes: self.rollover_max_minutes,
            ..CreateNamespace::default()
        }
    }
}

/// The update `set-policies` sends.
fn update_request(
    namespace: String,
    auto_create_topics: Option<bool>,
    policies: PolicyArgs,
    clear: &[ClearPolicy],
) -> CreateNamespace {
    let mut request = policies.request(namespace);
    request.auto_create_topics = auto_create_topics;
    request.clear = clear.iter().map(|c| c.name().to_owned()).collect();
    request
}

/// A broker older than `clear` ignores it and answers done: the policies are read back so
/// that the operator is not told a policy was removed when it was not.
async fn check_cleared(
    client: &Client,
    namespace: &str,
    clear: &[ClearPolicy],
) -> anyhow::Result<()> {
    let json = client.namespace_policies(namespace).await?;
    let stored: serde_json::Value = serde_json::from_str(&json)?;
    for c in clear {
        if stored.get(c.name()).is_some() {
            anyhow::bail!(
                "{namespace}: {} is still set after the update (a broker older than --clear ignores it)",
                c.name()
            );
        }
    }
    Ok(())
}

pub async fn tenants(client: &Client, cmd: TenantsCommand) -> anyhow::Result<()> {
    match cmd {
        TenantsCommand::Create {
            tenant,
            admin_roles,
        } => client.create_tenant(&tenant, admin_roles).await?,
        TenantsCommand::List => {
            for t in client.list_tenants().await? {
                println!("{t}");
            }
        }
        TenantsCommand::Delete { tenant } => client.delete_tenant(&tenant).await?,
    }
    Ok(())
}

pub async fn topics(client: &Client, cmd: TopicsCommand) -> anyhow::Result<()> {
    match cmd {
        TopicsCommand::Create {
            topic,
            partitions: None,
        } => client.create_topic(&topic).await?,
        TopicsCommand::Create {
            topic,
            partitions: Some(n),
        } => client.create_partitioned_topic(&topic, n).await?,
        TopicsCommand::Lookup { topic } => {
            let owner = client.lookup(&topic).await?;
            println!("{} {}", owner.broker_id, owner.address);
        }
        TopicsCommand::Delete { topic } => {
            if client.partitions(&topic).await? > 0 {
                client.delete_partitioned_topic(&topic).await?;
            } else {
                client.delete_topic(&topic).await?;
            }
        }
        TopicsCommand::List { namespace } => {
            for t in client.list_topics(&namespace).await? {
                println!("{t}");
            }
            for t in client.list_partitioned_topics(&namespace).await? {
                println!("{t} (partitioned)");
            }
        }
        TopicsCommand::Partitions { topic } => println!("{}", client.partitions(&topic).await?),
        TopicsCommand::Stats { topic, output } => {
            let s = client.topic_stats(&topic).await?;
            subscriptions_admin::print_stats(&s, output)?;
        }
    }
    Ok(())
}

pub async fn namespaces(client: &Client, cmd: NamespacesCommand) -> anyhow::Result<()> {
    match cmd {
        NamespacesCommand::Create {
            namespace,
            no_auto_create_topics,
            bundles,
            policies,
        } => {
            let mut request = policies.request(namespace);
            request.auto_create_topics = Some(!no_auto_create_topics);
            request.bundles = bundles;
            client.create_namespace(request).await?
        }
        NamespacesCommand::SetPolicies {
            namespace,
            auto_create_topics,
            policies,
            clear,
        } => {
            let request = update_request(namespace.clone(), auto_create_topics, policies, &clear);
            client.update_namespace(request).await?;
            if !clear.is_empty() {
                check_cleared(client, &namespace, &clear).await?;
            }
        }
        NamespacesCommand::List { tenant } => {
            for ns in client.list_namespaces(&tenant).await? {
                println!("{ns}");
            }
        }
        NamespacesCommand::Delete { namespace } => client.delete_namespace(&namespace).await?,
        NamespacesCommand::Policies { namespace } => {
            println!("{}", client.namespace_policies(&namespace).await?);
        }
        NamespacesCommand::Bundles { namespace } => {
            for b in client.namespace_bundles(&namespace).await? {
                let owner = if b.owner_id.is_empty() {
                    "unowned".to_owned()
                } else {
                    format!("{} {}", b.owner_id, b.owner_address)
                };
                println!("{} {owner}", b.range);
            }
        }
        NamespacesCommand::SplitBundle { namespace, range } => {
            client.split_bundle(&namespace, &range).await?;
        }
        NamespacesCommand::Unload { namespace } => {
            let n = client.unload_namespace(&namespace).await?;
            eprintln!("unloaded {n} bundle(s)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(subcommand)]
        command: NamespacesCommand,
    }

    fn update(args: &[&str]) -> Result<CreateNamespace, clap::Error> {
        let argv = ["namespaces", "set-policies", "acme/orders"];
        match Args::try_parse_from(argv.iter().chain(args))?.command {
            NamespacesCommand::SetPolicies {
                namespace,
                auto_create_topics,
                policies,
                clear,
            } => Ok(update_request(
                namespace,
                auto_create_topics,
                policies,
                &clear,
            )),
            _ => unreachable!("parsed set-policies"),
        }
    }

    /// `--clear` names reach the request as the broker spells them; an unknown one is a
    /// usage error before anything is sent.
    #[test]
    fn set_policies_clear_names_the_policies_to_remove() {
        let request =
            update(&["--clear", "backlog-quota", "--clear", "ledger-rollover"]).expect("parses");
        assert_eq!(request.clear, ["backlog_quota", "ledger_rollover"]);
        assert_eq!(request.namespace, "acme/orders");
        let request = update(&["--clear", "replication", "--clear", "retention"]).expect("ok");
        assert_eq!(request.clear, ["replication", "retention"]);
        assert!(update(&[]).expect("parses").clear.is_empty());
        assert!(update(&["--clear", "bundles"]).is_err());
    }
}
