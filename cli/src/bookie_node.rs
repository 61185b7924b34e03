//! `strata bookie`: one bookie — its ledger storage served over QUIC, registered in the
//! metastore under a lease, with the HTTP side port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use strata_bookie::gc::GarbageCollector;
use strata_bookie::replication::{ReplicationOptions, ReplicationService};
use strata_bookie::server::DiskThreshold;
use strata_bookie::{
    BookieClient, BookieClientOptions, BookieServer, BookieStorage, LedgerClient,
    LedgerClientOptions, NetworkBookies, Registration, RegistrationConfig, ServerConfig,
    StorageOptions,
};
use strata_metastore::MetaClient;
use strata_transport::ServerTls;

use crate::http::HttpServer;

#[derive(Debug, Clone, clap::Args)]
pub struct BookieArgs {
    /// Data directory: ledger storage in `<dir>/bookie`, development TLS in `<dir>/tls`.
    #[arg(long, env = "STRATA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// QUIC address to serve ledger clients on.
    #[arg(long, env = "STRATA_LISTEN", default_value = "127.0.0.1:3181")]
    pub listen: SocketAddr,
    /// `host:port` other nodes reach this bookie at; defaults to --listen, and is required
    /// when listening on an unspecified address (0.0.0.0 or ::).
    #[arg(long, env = "STRATA_ADVERTISED_ADDRESS")]
    pub advertised_address: Option<String>,
    /// The bookie's identity in ledger metadata and in its registration key; defaults to the
    /// advertised address.
    #[arg(long, env = "STRATA_BOOKIE_ID")]
    pub bookie_id: Option<String>,
    /// HTTP address for /healthz, /readyz, /metrics.
    #[arg(long, env = "STRATA_HTTP", default_value = "127.0.0.1:0")]
    pub http: SocketAddr,
    /// Metastore nodes, `host:port[,host:port...]`.
    #[arg(long, env = "STRATA_METASTORE")]
    pub metastore: String,
    /// Rack (or zone) announced for rack-aware placement.
    #[arg(long, env = "STRATA_RACK")]
    pub rack: Option<String>,
    #[arg(long, env = "STRATA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "STRATA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Refuse adds (read-only) when fewer bytes than this are free on the data directory.
    #[arg(long, env = "STRATA_MIN_FREE_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub min_free_bytes: u64,
    /// Refuse adds when less than this percentage of the data directory's disk is free.
    #[arg(long, env = "STRATA_MIN_FREE_PERCENT", default_value_t = 5.0)]
    pub min_free_percent: f64,
    /// TTL of the registration's lease, seconds: how long a dead bookie stays listed.
    #[arg(long, env = "STRATA_REGISTRATION_TTL_SECS", default_value_t = 10)]
    pub registration_ttl_secs: u64,
    /// Seconds a bookie must be gone (unregistered) before its copies are made again on
    /// other bookies; keep it longer than a rolling restart.
    #[arg(long, env = "STRATA_LOST_BOOKIE_DELAY_SECS", default_value_t = 300)]
    pub lost_bookie_delay_secs: u64,
    /// Seconds between re-replication audits and work rounds.
    #[arg(long, env = "STRATA_AUDIT_INTERVAL_SECS", default_value_t = 5)]
    pub audit_interval_secs: u64,
    /// Seconds between garbage collections of ledgers deleted while this bookie was away.
    #[arg(long, env = "STRATA_GC_INTERVAL_SECS", default_value_t = 600)]
    pub gc_interval_secs: u64,
}

impl BookieArgs {
    /// The advertised address and the bookie id, checked.
    fn identity(&self) -> anyhow::Result<(String, String)> {
        let (address, id) = crate::cluster::node_identity(
            self.listen,
            self.advertised_address.as_deref(),
            self.bookie_id.as_deref(),
            "bookie",
        )?;
        if !(0.0..100.0).contains(&self.min_free_percent) {
            anyhow::bail!(
                "--min-free-percent {} must be at least 0 and below 100",
                self.min_free_percent
            );
        }
        Ok((address, id))
    }
}

/// Runs the bookie until `shutdown` resolves; then stops accepting, answers what is in
/// flight, and revokes the registration.
pub async fn run(
    args: BookieArgs,
    ca: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let (address, bookie_id) = args.identity()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => ServerTls::from_pem_files(c, k)?,
        (None, None) => ServerTls::dev_in_dir(&args.data_dir.join("tls"), &[])?.0,
        _ => anyhow::bail!("give both --tls-cert and --tls-key, or neither"),
    };
    let storage = BookieStorage::open(&args.data_dir.join("bookie"), StorageOptions::default())
        .context("opening the bookie storage")?;
    let mut config = ServerConfig::new(args.listen, args.data_dir.clone());
    config.disk_threshold = DiskThreshold {
        min_free_bytes: args.min_free_bytes,
        min_free_ratio: args.min_free_percent / 100.0,
    };
    let server = BookieServer::start(storage, config, &tls).context("starting the bookie")?;

    let ca_for_peers = ca.clone();
    let meta = MetaClient::new(
        crate::cluster::node_addrs(&args.metastore),
        ca,
        Duration::from_secs(5),
    )?;
    let mut reg_config = RegistrationConfig::new(bookie_id.clone(), address.clone());
    reg_config.rack = args.rack.clone();
    reg_config.ttl = Duration::from_secs(args.registration_ttl_secs);
    let registration = Registration::start(meta.clone(), reg_config, server.disk_status());

    // Every bookie runs a re-replication worker; one of them is elected auditor.
    let bookie_client = BookieClient::new(BookieClientOptions {
        name: format!("strata-bookie {bookie_id} re-replication"),
        ca: ca_for_peers.clone(),
        ..BookieClientOptions::default()
    });
    let ledgers = LedgerClient::new(
        meta.clone(),
        Arc::new(NetworkBookies::new(bookie_client, meta.clone())),
        LedgerClientOptions::default(),
    );
    let mut replication_options = ReplicationOptions::new(bookie_id.clone());
    replication_options.lost_bookie_delay = Duration::from_secs(args.lost_bookie_delay_secs);
    replication_options.interval = Duration::from_secs(args.audit_interval_secs.max(1));
    let replication = ReplicationService::start(meta.clone(), ledgers, replication_options);
    let gc = GarbageCollector::start(
        server.storage().clone(),
        meta,
        Duration::from_secs(args.gc_interval_secs.max(1)),
    );

    // Ready while registered: writers only pick bookies they can find.
    let ready = Arc::new(AtomicBool::new(false));
    let ready_task = {
        let ready = ready.clone();
        let mut lease = registration.watch();
        tokio::spawn(async move {
            loop {
                ready.store(lease.borrow_and_update().is_some(), Ordering::Release);
                if lease.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    let stats = server.stats_handle();
    let registered = ready.clone();
    let metrics = Arc::new(move || {
        let mut text = stats.stats().render_prometheus();
        let name = "strata_bookie_registered";
        text.push_str(&format!(
            "# HELP {name} 1 while the bookie's registration is in the metastore\n# TYPE {name} gauge\n{name} {}\n",
            u8::from(registered.load(Ordering::Acquire))
        ));
        text
    });
    let http = HttpServer::start(args.http, ready.clone(), metrics).await?;
    eprintln!(
        "strata bookie {bookie_id}: QUIC on {}, HTTP on {}, advertised as {address}",
        server.local_addr()?,
        http.local_addr
    );

    shutdown.await?;
    eprintln!("strata bookie: shutting down");
    ready_task.abort();
    ready.store(false, Ordering::Release);
    replication.stop().await;
    gc.stop().await;
    server.shutdown().await;
    registration.close().await;
    http.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BookieArgs,
    }

    fn parse(extra: &[&str]) -> BookieArgs {
        let mut argv = vec![
            "strata",
            "--data-dir",
            "/tmp/b",
            "--metastore",
            "127.0.0.1:1",
        ];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    /// The id defaults to the advertised address, which defaults to --listen; an unspecified
    /// listen address or a bad id is refused with the flag to fix.
    #[test]
    fn identity_defaults_and_validation() {
        let (addr, id) = parse(&["--listen", "127.0.0.1:4000"])
            .identity()
            .expect("valid");
        assert_eq!(
            (addr.as_str(), id.as_str()),
            ("127.0.0.1:4000", "127.0.0.1:4000")
        );
        let (addr, id) = parse(&[
            "--listen",
            "0.0.0.0:4000",
            "--advertised-address",
            "b1:4000",
        ])
        .identity()
        .expect("valid");
        assert_eq!((addr.as_str(), id.as_str()), ("b1:4000", "b1:4000"));
        let err = parse(&["--listen", "0.0.0.0:4000"])
            .identity()
            .expect_err("unspecified");
        assert!(err.to_string().contains("--advertised-address"), "{err}");
        let err = parse(&["--bookie-id", "a/b"])
            .identity()
            .expect_err("slash");
        assert!(err.to_string().contains("'/'"), "{err}");
        let err = parse(&["--min-free-percent", "100"])
            .identity()
            .expect_err("percent");
        assert!(err.to_string().contains("--min-free-percent"), "{err}");
    }
}
