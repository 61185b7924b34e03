//! `strata perf ledger`: ledger adds against bookies on loopback, without a broker. Starts a
//! metastore and `--bookies` bookie servers in this process (QUIC, RocksDB, fsync on every
//! group commit), writes one ledger with `--in-flight` adds pipelined, and reports add
//! throughput and latency (from calling `add` to its acknowledgement at Qa bookies).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_bookie::local_cluster::{LocalCluster, LocalClusterOptions};
use strata_bookie::{BookieClientOptions, LedgerClientOptions, LedgerConfig, StorageOptions};

use crate::perf::{Stats, report, summary};

#[derive(Debug, Clone, clap::Args)]
pub struct PerfLedgerArgs {
    /// Bookie servers to start.
    #[arg(long, default_value_t = 3)]
    pub bookies: usize,
    #[arg(long, default_value_t = 3)]
    pub ensemble: u32,
    #[arg(long, default_value_t = 3)]
    pub write_quorum: u32,
    #[arg(long, default_value_t = 2)]
    pub ack_quorum: u32,
    /// Entry payload bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Adds in flight at once.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Keep entry payloads inline in RocksDB's LSM instead of in blob files.
    #[arg(long)]
    pub no_blob_files: bool,
    /// Where the metastore and bookies keep their data (deleted afterwards); default a new
    /// directory under ./data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub async fn ledger(args: PerfLedgerArgs) -> anyhow::Result<()> {
    let config = LedgerConfig {
        ensemble_size: args.ensemble,
        write_quorum: args.write_quorum,
        ack_quorum: args.ack_quorum,
    };
    config.validate()?;
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            std::fs::create_dir_all("./data")?;
            PathBuf::from(format!("./data/perf-ledger-{}", std::process::id()))
        }
    };
    let storage = StorageOptions {
        blob_files: !args.no_blob_files,
        ..StorageOptions::default()
    };
    let cluster = LocalCluster::start(
        &dir,
        LocalClusterOptions {
            bookies: args.bookies,
            storage,
            ..LocalClusterOptions::default()
        },
    )
    .await?;
    let result = run(&cluster, config, &args).await;
    cluster.shutdown().await;
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run(
    cluster: &LocalCluster,
    config: LedgerConfig,
    args: &PerfLedgerArgs,
) -> anyhow::Result<()> {
    let client = cluster.ledger_client(
        BookieClientOptions::default(),
        LedgerClientOptions::default(),
    );
    let writer = Arc::new(client.create_ledger(config).await?);
    println!(
        "ledger {} E={} Qw={} Qa={} on {} bookies, {} B entries, {} in flight, blob files {}",
        writer.id(),
        config.ensemble_size,
        config.write_quorum,
        config.ack_quorum,
        args.bookies,
        args.size,
        args.in_flight,
        if args.no_blob_files { "off" } else { "on" }
    );
    let stats = Arc::new(Mutex::new(Stats::new()?));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let reporter = tokio::spawn(report("ledger-add", stats.clone(), done_rx, None));
    let payload = Bytes::from(vec![b'x'; args.size]);
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    // Each slot keeps one add in flight: --in-flight slots pipeline that many adds.
    let permits = Arc::new(tokio::sync::Semaphore::new(args.in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < deadline {
        let permit = permits.clone().acquire_owned().await?;
        let t0 = Instant::now();
        let add = writer.add(payload.clone());
        let stats = stats.clone();
        let size = args.size;
        tasks.spawn(async move {
            let result = add.await;
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(_) => s.record(t0.elapsed().as_micros() as u64, size),
                Err(_) => s.errors += 1,
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let _ = done_tx.send(true);
    let (msgs, bytes, elapsed) = reporter.await?;
    summary("ledger-add", &stats, msgs, bytes, elapsed);
    writer.close().await?;
    Ok(())
}
