//! `strata`: every server role and every client verb in one binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use strata_cli::cluster;
use strata_cli::commands::{self, ConnectArgs};
use strata_cli::config::StandaloneConfig;
use strata_cli::metastore_node;
use strata_cli::standalone::Standalone;
use strata_cli::tenancy_admin::{self, NamespacesCommand, TenantsCommand, TopicsCommand};
use strata_cli::{bookie_node, broker_node, subscriptions_admin, txn_admin};
use strata_cli::{perf, perf_ledger, perf_txn};
use strata_client::InitialPosition;

/// The servers make many small, short-lived allocations on several threads (frames,
/// metastore commands, futures); glibc's allocator spent an eighth of the standalone's CPU on
/// them under `strata perf txn` (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: a Pulsar-style message cluster"
)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Log format.
    #[arg(long, global = true, env = "STRATA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run metastore, bookie and broker in one process.
    Standalone(StandaloneArgs),
    /// Run one voter of a replicated metastore.
    Metastore(metastore_node::MetastoreArgs),
    /// Run one bookie (ledger storage server), registered in the metastore.
    Bookie(bookie_node::BookieArgs),
    /// Run one stateless broker of a cluster (metastore and bookies elsewhere).
    Broker(broker_node::BrokerArgs),
    /// Read and write a metastore cluster's keys.
    Meta {
        /// Metastore nodes, `host:port[,host:port...]`.
        #[arg(long, env = "STRATA_METASTORE", default_value = "127.0.0.1:6670")]
        metastore: String,
        #[command(subcommand)]
        command: metastore_node::MetaCommand,
    },
    /// Send messages.
    Produce {
        topic: String,
        /// Message text; repeat for several. Without it, each line of standard input is a message.
        #[arg(short = 'm', long = "message")]
        messages: Vec<String>,
        /// Send each -m text this many times.
        #[arg(short = 'n', long, default_value_t = 1)]
        num: u64,
    },
    /// Receive messages, print each payload on its own line and acknowledge it.
    Consume {
        topic: String,
        #[arg(short = 's', long)]
        subscription: String,
        /// Exit after this many messages (0 = never).
        #[arg(short = 'n', long, default_value_t = 0)]
        num: u64,
        /// Where a new subscription starts.
        #[arg(long, value_enum, default_value_t = Start::Earliest)]
        initial_position: Start,
    },
    /// Manage tenants.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Manage namespaces and their policies.
    #[command(subcommand)]
    Namespaces(NamespacesCommand),
    /// Manage topics, partitioned or not.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// A topic's subscriptions: list, reset, peek, skip.
    #[command(subcommand)]
    Subscriptions(subscriptions_admin::SubscriptionsCommand),
    /// Transactions: list, show, abort.
    #[command(subcommand)]
    Txn(txn_admin::TxnCommand),
    /// Cluster administration: metastore membership, bookies.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Inspect ledgers.
    #[command(subcommand)]
    Ledgers(cluster::LedgersCommand),
    /// Load generators.
    #[command(subcommand)]
    Perf(PerfCommand),
}

#[derive(Clone, Copy, ValueEnum)]
enum Start {
    Earliest,
    Latest,
}

#[derive(Subcommand)]
enum PerfCommand {
    Produce(perf::PerfProduceArgs),
    Consume(perf::PerfConsumeArgs),
    /// Compare-and-set puts against a metastore cluster.
    Meta(perf::PerfMetaArgs),
    /// Ledger adds against bookies started in this process on loopback.
    Ledger(perf_ledger::PerfLedgerArgs),
    /// Consume → produce with N messages per transaction, against the same without.
    Txn(perf_txn::PerfTxnArgs),
}

#[derive(clap::Args)]
struct StandaloneArgs {
    /// TOML config file; flags and STRATA_* variables override it.
    #[arg(long, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "STRATA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// QUIC address for clients (default 127.0.0.1:6650).
    #[arg(long, env = "STRATA_LISTEN")]
    listen: Option<SocketAddr>,
    /// HTTP address for /healthz, /readyz, /metrics (default 127.0.0.1:8080).
    #[arg(long, env = "STRATA_HTTP")]
    http: Option<SocketAddr>,
    #[arg(long, env = "STRATA_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "STRATA_TLS_KEY")]
    tls_key: Option<PathBuf>,
    #[arg(long, env = "STRATA_MAX_FRAME_SIZE")]
    max_frame_size: Option<usize>,
    #[arg(long, env = "STRATA_MAX_ENTRIES_PER_LEDGER")]
    max_entries_per_ledger: Option<u64>,
    /// Write each transaction's record at begin, even when its client asks for a lazy begin.
    #[arg(long, env = "STRATA_EAGER_BEGIN")]
    eager_begin: bool,
    /// Seconds a producer may send nothing new before dedup forgets it (default 6 hours).
    #[arg(long, env = "STRATA_DEDUP_PRODUCER_EXPIRY_SECS")]
    dedup_producer_expiry_secs: Option<u64>,
}

impl StandaloneArgs {
    fn into_config(self) -> anyhow::Result<StandaloneConfig> {
        let mut c = match &self.config {
            Some(path) => StandaloneConfig::from_file(path)?,
            None => StandaloneConfig::default(),
        };
        if let Some(v) = self.data_dir {
            c.data_dir = v
        }
        if let Some(v) = self.listen {
            c.listen = v
        }
        if let Some(v) = self.http {
            c.http = v
        }
        if let Some(v) = self.tls_cert {
            c.tls_cert = Some(v)
        }
        if let Some(v) = self.tls_key {
            c.tls_key = Some(v)
        }
        if let Some(v) = self.max_frame_size {
            c.max_frame_size = v
        }
        if let Some(v) = self.max_entries_per_ledger {
            c.max_entries_per_ledger = v
        }
        c.eager_begin |= self.eager_begin;
        if let Some(v) = self.dedup_producer_expiry_secs {
            c.dedup_producer_expiry_secs = v
        }
        c.validate()?;
        Ok(c)
    }
}

fn init_logging(format: LogFormat, server: bool) {
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Standalone(args) => {
            let standalone = Standalone::start(args.into_config()?).await?;
            eprintln!(
                "strata standalone: QUIC on {}, HTTP on {}",
                standalone.quic_addr, standalone.http_addr
            );
            if let Some(ca) = &standalone.ca_path {
                eprintln!("clients on other hosts trust {}", ca.display());
            }
            wait_for_shutdown_signal().await?;
            eprintln!("shutting down");
            standalone.shutdown().await
        }
        Command::Metastore(args) => {
            metastore_node::run(args, cli.connect.tls_ca.clone(), wait_for_shutdown_signal()).await
        }
        Command::Bookie(args) => {
            bookie_node::run(args, cli.connect.tls_ca.clone(), wait_for_shutdown_signal()).await
        }
        Command::Broker(args) => {
            broker_node::run(args, cli.connect.tls_ca.clone(), wait_for_shutdown_signal()).await
        }
        Command::Meta { metastore, command } => {
            let timeout = std::time::Duration::from_secs(cli.connect.connect_timeout_secs);
            metastore_node::meta(&metastore, cli.connect.tls_ca.clone(), timeout, command).await
        }
        Command::Cluster(cmd) => {
            let timeout = std::time::Duration::from_secs(cli.connect.connect_timeout_secs);
            cluster::run(cmd, cli.connect.tls_ca.clone(), timeout).await
        }
        Command::Ledgers(cmd) => {
            let timeout = std::time::Duration::from_secs(cli.connect.connect_timeout_secs);
            cluster::ledgers(cmd, cli.connect.tls_ca.clone(), timeout).await
        }
        Command::Produce {
            topic,
            messages,
            num,
        } => {
            let client = cli.connect.connect().await?;
            let sent = commands::produce(&client, &topic, &messages, num).await?;
            client.close().await;
            eprintln!("sent {sent} message(s)");
            Ok(())
        }
        Command::Consume {
            topic,
            subscription,
            num,
            initial_position,
        } => {
            let client = cli.connect.connect().await?;
            let start = match initial_position {
                Start::Earliest => InitialPosition::Earliest,
                Start::Latest => InitialPosition::Latest,
            };
            commands::consume(&client, &topic, &subscription, num, start).await?;
            client.close().await;
            Ok(())
        }
        Command::Tenants(cmd) => {
            let client = cli.connect.connect().await?;
            let outcome = tenancy_admin::tenants(&client, cmd).await;
            client.close().await;
            outcome
        }
        Command::Topics(cmd) => {
            let client = cli.connect.connect().await?;
            let outcome = tenancy_admin::topics(&client, cmd).await;
            client.close().await;
            outcome
        }
        Command::Txn(cmd) => {
            let client = cli.connect.connect().await?;
            let outcome = txn_admin::run(&client, cmd).await;
            client.close().await;
            outcome
        }
        Command::Subscriptions(cmd) => {
            let client = cli.connect.connect().await?;
            let outcome = subscriptions_admin::run(&client, cmd).await;
            client.close().await;
            outcome
        }
        Command::Namespaces(cmd) => {
            let client = cli.connect.connect().await?;
            let outcome = tenancy_admin::namespaces(&client, cmd).await;
            client.close().await;
            outcome
        }
        Command::Perf(cmd) => {
            match cmd {
                PerfCommand::Meta(args) => return perf::meta(args).await,
                PerfCommand::Ledger(args) => return perf_ledger::ledger(args).await,
                _ => {}
            }
            let client = cli.connect.connect().await?;
            match cmd {
                PerfCommand::Produce(args) => perf::produce(&client, args).await?,
                PerfCommand::Consume(args) => perf::consume(&client, args).await?,
                PerfCommand::Txn(args) => perf_txn::txn(&client, args).await?,
                PerfCommand::Meta(_) | PerfCommand::Ledger(_) => {}
            }
            client.close().await;
            Ok(())
        }
    }
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    strata_transport::install_crypto_provider();
    let cli = Cli::parse();
    init_logging(
        cli.log_format,
        matches!(cli.command, Command::Standalone(_) | Command::Bookie(_)),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
