//! `strata metastore`: one voter of a replicated metastore, and `strata meta`, a small client
//! for its key space (get, put, scan), in the manner of etcdctl.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use strata_metastore::{EventKind, Expect, MetaClient, MetaStore, MetaStoreConfig, NodeOptions};
use strata_transport::ServerTls;

use crate::http::HttpServer;

#[derive(Debug, Clone, clap::Args)]
pub struct MetastoreArgs {
    #[arg(long, env = "STRATA_NODE_ID")]
    pub node_id: u64,
    #[arg(long, env = "STRATA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address of this node's RPC server (raft traffic and client requests).
    #[arg(long, env = "STRATA_LISTEN")]
    pub listen: SocketAddr,
    /// HTTP address for /healthz, /readyz, /metrics.
    #[arg(long, env = "STRATA_HTTP", default_value = "127.0.0.1:0")]
    pub http: SocketAddr,
    /// Voters of a new cluster: `1=host:port,2=host:port,3=host:port` (this node included).
    /// Used on first start only; restarting with the same list is a no-op.
    #[arg(
        long,
        env = "STRATA_INITIAL_MEMBERS",
        required_unless_present = "join",
        conflicts_with = "join"
    )]
    pub initial_members: Option<String>,
    /// Join an existing cluster instead: start without bootstrapping one and wait to be added
    /// (`strata cluster metastore add`, then `promote`).
    #[arg(long)]
    pub join: bool,
    #[arg(long, env = "STRATA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "STRATA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_members(s: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("member {part:?} must look like ID=HOST:PORT"))?;
        let id: u64 = id
            .parse()
            .with_context(|| format!("member id {id:?} is not a number"))?;
        if !addr.contains(':') {
            anyhow::bail!("member {id} address {addr:?} has no :port");
        }
        if members.insert(id, addr.to_owned()).is_some() {
            anyhow::bail!("member id {id} appears twice");
        }
    }
    if members.is_empty() {
        anyhow::bail!("--initial-members is empty");
    }
    Ok(members)
}

/// How often the leader looks for transactions past their deadline.
pub const TXN_EXPIRY_INTERVAL: Duration = Duration::from_millis(500);

/// Runs one voter until `shutdown` resolves.
pub async fn run(
    args: MetastoreArgs,
    ca: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let initial_members = match (&args.initial_members, args.join) {
        // No initial members: open_node waits to be added instead of bootstrapping.
        (_, true) => BTreeMap::new(),
        (Some(list), false) => parse_members(list)?,
        (None, false) => anyhow::bail!("give --initial-members, or --join to join a cluster"),
    };
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => ServerTls::from_pem_files(c, k)?,
        (None, None) => ServerTls::dev_in_dir(&args.data_dir.join("tls"), &[])?.0,
        _ => anyhow::bail!("give both --tls-cert and --tls-key, or neither"),
    };
    let options = NodeOptions {
        node_id: args.node_id,
        listen: args.listen,
        initial_members,
        tls,
        ca,
        faults: None,
    };
    let store = MetaStore::open_node(
        &args.data_dir.join("metastore"),
        MetaStoreConfig::default(),
        options,
    )
    .await?;
    let ready = Arc::new(AtomicBool::new(false));
    let metrics_store = store.clone();
    let metrics = Arc::new(move || render_metrics(&metrics_store));
    let http = HttpServer::start(args.http, ready.clone(), metrics).await?;
    eprintln!(
        "strata metastore: node {} RPC on {}, HTTP on {}",
        args.node_id, args.listen, http.local_addr
    );
    if args.join {
        eprintln!(
            "strata metastore: waiting to be added: strata cluster metastore add --node-id {} --addr HOST:PORT",
            args.node_id
        );
    }
    // Times transactions out while this node leads; any node may lead next.
    let expiry =
        strata_metastore::txn_coordinator::spawn_expiry(store.clone(), TXN_EXPIRY_INTERVAL);
    let waiter = store.clone();
    let ready_flag = ready.clone();
    tokio::spawn(async move {
        if waiter
            .wait_for_leader(Duration::from_secs(3600))
            .await
            .is_ok()
        {
            ready_flag.store(true, Ordering::Release);
        }
    });
    shutdown.await?;
    expiry.abort();
    http.shutdown().await;
    store.shutdown().await?;
    Ok(())
}

/// The metastore node's Prometheus text (the standalone serves it too).
pub(crate) fn render_metrics(store: &MetaStore) -> String {
    let m = store.raft_metrics();
    // The server state, not `current_leader`: a restarted node's restored vote can name itself
    // as leader before it learns the term moved on.
    let is_leader = u8::from(store.is_leader());
    let rows = [
        (
            "strata_metastore_is_leader",
            "1 if this node is the raft leader",
            u64::from(is_leader),
        ),
        ("strata_metastore_term", "Current raft term", m.current_term),
        (
            "strata_metastore_last_log_index",
            "Last raft log index",
            m.last_log_index.unwrap_or(0),
        ),
        (
            "strata_metastore_last_applied_index",
            "Last applied raft log index",
            m.last_applied.map(|l| l.index).unwrap_or(0),
        ),
        (
            "strata_metastore_revision",
            "Last applied key-space revision",
            store.current_revision(),
        ),
        (
            "strata_metastore_oldest_revision",
            "Oldest revision kept in the change history",
            store.oldest_revision(),
        ),
        (
            "strata_metastore_leases",
            "Live leases",
            store.lease_count(),
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    }
    out
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum MetaCommand {
    /// Print a key's value (exit 1 if absent).
    Get { key: String },
    /// Set a key. With --expect-version N (0 = must not exist), a compare-and-set.
    Put {
        key: String,
        value: String,
        #[arg(long)]
        expect_version: Option<u64>,
    },
    /// Delete a key. With --expect-version N, only if it is at version N.
    Delete {
        key: String,
        #[arg(long)]
        expect_version: Option<u64>,
    },
    /// Print every key under a prefix with its value (read page by page).
    Scan { prefix: String },
    /// Print every change under a prefix as it happens (from --from-revision, default now),
    /// until interrupted.
    Watch {
        prefix: String,
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
    },
    /// Drop the change history below a revision.
    Compact { revision: u64 },
}

/// Keys per page when `strata meta scan` reads a prefix.
const SCAN_PAGE: u32 = 1_000;

pub async fn meta(
    addrs: &str,
    ca: Option<PathBuf>,
    timeout: Duration,
    cmd: MetaCommand,
) -> anyhow::Result<()> {
    let client = MetaClient::new(crate::cluster::node_addrs(addrs), ca, timeout)?;
    match cmd {
        MetaCommand::Get { key } => match client.get(&key).await? {
            Some(kv) => println!("{}", String::from_utf8_lossy(&kv.value)),
            None => anyhow::bail!("key {key:?} not found"),
        },
        MetaCommand::Put {
            key,
            value,
            expect_version,
        } => {
            let expect = match expect_version {
                None => Expect::Any,
                Some(0) => Expect::Absent,
                Some(v) => Expect::Version(v),
            };
            let w = client.put(&key, Bytes::from(value), expect).await?;
            println!("revision {} version {}", w.revision, w.version);
        }
        MetaCommand::Delete {
            key,
            expect_version,
        } => {
            let expect = match expect_version {
                None => Expect::Any,
                Some(v) => Expect::Version(v),
            };
            if !client.delete(&key, expect).await? {
                anyhow::bail!("key {key:?} not found");
            }
        }
        MetaCommand::Scan { prefix } => {
            let mut after = String::new();
            loop {
                let page = client.scan_page(&prefix, &after, SCAN_PAGE).await?;
                for kv in &page.kvs {
                    println!("{} {}", kv.key, String::from_utf8_lossy(&kv.value));
                }
                match page.kvs.last() {
                    Some(last) if page.more => after = last.key.clone(),
                    _ => break,
                }
            }
        }
        MetaCommand::Watch {
            prefix,
            from_revision,
        } => {
            let mut watch = client.watch(&prefix, from_revision).await?;
            while let Some(event) = watch.next().await {
                let event = event?;
                let kv = event.kv.unwrap_or_default();
                match EventKind::try_from(event.kind) {
                    Ok(EventKind::Delete) => println!("{} DELETE {}", event.revision, kv.key),
                    _ => println!(
                        "{} PUT {} {}",
                        event.revision,
                        kv.key,
                        String::from_utf8_lossy(&kv.value)
                    ),
                }
            }
        }
        MetaCommand::Compact { revision } => {
            let oldest = client.compact(revision).await?;
            println!("history kept from revision {oldest}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lists_parse_or_name_the_problem() {
        let m = parse_members("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=h:1").expect("valid");
        assert_eq!(m.len(), 3);
        assert_eq!(m[&2], "127.0.0.1:7002");
        for (bad, why) in [
            ("", "empty"),
            ("1:127.0.0.1:1", "ID=HOST:PORT"),
            ("x=h:1", "not a number"),
            ("1=h", ":port"),
            ("1=h:1,1=h:2", "twice"),
        ] {
            let err = parse_members(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
