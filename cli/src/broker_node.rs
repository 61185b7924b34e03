//! `strata broker`: one stateless broker of a cluster. Its topics' data lives on the bookies
//! and its metadata in the metastore; it owns namespace bundles under its session's lease and
//! serves the topics in them. Any number run side by side.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use strata_bookie::{
    BookieClient, BookieClientOptions, LedgerClient, LedgerClientOptions, NetworkBookies,
};
use strata_broker::managed_ledger::ManagedLedgerConfig;
use strata_broker::ownership::{Ownership, OwnershipConfig};
use strata_broker::server::{BrokerServer, ServerConfig};
use strata_broker::service::{BrokerConfig, BrokerService};
use strata_metastore::MetaClient;
use strata_metastore::tables::NamespacePolicies;
use strata_transport::{ServerTls, TransportTuning};

use crate::http::HttpServer;

#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Directory for the development TLS material (`<dir>/tls`); brokers keep no data.
    #[arg(long, env = "STRATA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// QUIC address for clients.
    #[arg(long, env = "STRATA_LISTEN", default_value = "127.0.0.1:6650")]
    pub listen: SocketAddr,
    /// `host:port` clients reach this broker at; defaults to --listen, and is required when
    /// listening on an unspecified address (0.0.0.0 or ::).
    #[arg(long, env = "STRATA_ADVERTISED_ADDRESS")]
    pub advertised_address: Option<String>,
    /// The broker's identity in ownership records; defaults to the advertised address. Must
    /// be unique in the cluster.
    #[arg(long, env = "STRATA_BROKER_ID")]
    pub broker_id: Option<String>,
    /// HTTP address for /healthz, /readyz, /metrics.
    #[arg(long, env = "STRATA_HTTP", default_value = "127.0.0.1:0")]
    pub http: SocketAddr,
    /// Metastore nodes, `host:port[,host:port...]`.
    #[arg(long, env = "STRATA_METASTORE")]
    pub metastore: String,
    #[arg(long, env = "STRATA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "STRATA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// TTL of the broker's session, seconds: how long a dead broker's bundles stay owned
    /// before another broker takes them over.
    #[arg(long, env = "STRATA_SESSION_TTL_SECS", default_value_t = 10)]
    pub session_ttl_secs: u64,
    #[arg(long, env = "STRATA_MAX_ENTRIES_PER_LEDGER", default_value_t = 50_000)]
    pub max_entries_per_ledger: u64,
    /// Write each transaction's record at begin, even when its client asks for a lazy begin
    /// (while metastore nodes of an older version, which sweep without the late-write
    /// margin, are still in the cluster).
    #[arg(long, env = "STRATA_EAGER_BEGIN")]
    pub eager_begin: bool,
    /// Seconds a producer may send nothing new before dedup forgets it (Pulsar's producer
    /// inactivity timeout; a resend after that is stored again).
    #[arg(long, env = "STRATA_DEDUP_PRODUCER_EXPIRY_SECS", default_value_t = strata_broker::DEFAULT_DEDUP_PRODUCER_EXPIRY.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub dedup_producer_expiry_secs: u64,
}

impl BrokerArgs {
    /// The advertised address and the broker id, checked.
    fn identity(&self) -> anyhow::Result<(String, String)> {
        crate::cluster::node_identity(
            self.listen,
            self.advertised_address.as_deref(),
            self.broker_id.as_deref(),
            "broker",
        )
    }
}

/// Runs the broker until `shutdown` resolves; then stops accepting, closes its topics'
/// ledgers and gives up its bundles.
pub async fn run(
    args: BrokerArgs,
    ca: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let (_, broker_id) = args.identity()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => ServerTls::from_pem_files(c, k)?,
        (None, None) => ServerTls::dev_in_dir(&args.data_dir.join("tls"), &[])?.0,
        _ => anyhow::bail!("give both --tls-cert and --tls-key, or neither"),
    };
    let meta = MetaClient::new(
        crate::cluster::node_addrs(&args.metastore),
        ca.clone(),
        Duration::from_secs(5),
    )?;
    let bookie_client = BookieClient::new(BookieClientOptions {
        name: format!("strata-broker {broker_id}"),
        ca,
        ..BookieClientOptions::default()
    });
    let ledgers = LedgerClient::new(
        meta.clone(),
        Arc::new(NetworkBookies::new(bookie_client, meta.clone())),
        LedgerClientOptions::default(),
    );
    let config = BrokerConfig {
        managed_ledger: ManagedLedgerConfig {
            max_entries_per_ledger: args.max_entries_per_ledger,
            ..ManagedLedgerConfig::default()
        },
        default_replication: None,
        eager_begin: args.eager_begin,
        dedup_producer_expiry: Duration::from_secs(args.dedup_producer_expiry_secs),
        ..BrokerConfig::default()
    };
    let service = BrokerService::new(meta.clone(), ledgers, config);
    service.start_retention(RETENTION_INTERVAL);
    service
        .ensure_namespace(
            &"public/default".parse().context("default namespace")?,
            &NamespacePolicies::default(),
        )
        .await?;
    let server = BrokerServer::start(
        service.clone(),
        ServerConfig {
            listen: args.listen,
            max_frame_size: strata_proto::DEFAULT_MAX_FRAME_SIZE,
            tuning: TransportTuning::default(),
        },
        &tls,
    )
    .context("starting the broker")?;
    let quic_addr = server.local_addr()?;
    // With port 0 the advertised address is only known now.
    let address = match &args.advertised_address {
        Some(a) => a.clone(),
        None => quic_addr.to_string(),
    };
    let broker_id = args.broker_id.clone().unwrap_or_else(|| address.clone());
    let mut ownership_config = OwnershipConfig::new(broker_id.clone(), address.clone());
    ownership_config.session_ttl = Duration::from_secs(args.session_ttl_secs.max(1));
    let ownership = Ownership::start(meta, ownership_config).await?;
    service.enable_ownership(ownership.clone());

    let ready = Arc::new(AtomicBool::new(true));
    let metrics_service = service.clone();
    let metrics = Arc::new(move || {
        let mut text = metrics_service.metrics.render();
        text.push_str(&metrics_service.ledger_stats().render_prometheus());
        text
    });
    let http = HttpServer::start(args.http, ready.clone(), metrics).await?;
    eprintln!(
        "strata broker {broker_id}: QUIC on {quic_addr}, HTTP on {}, advertised as {address}",
        http.local_addr
    );

    shutdown.await?;
    eprintln!("strata broker: shutting down");
    ready.store(false, Ordering::Release);
    server.shutdown().await;
    service.close_all().await;
    ownership.shutdown().await;
    http.shutdown().await;
    Ok(())
}

/// How often consumed ledgers are checked against retention and deleted.
pub const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
