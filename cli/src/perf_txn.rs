//! `strata perf txn`: a consume → transform → produce pipeline, N messages per transaction
//! (the input acks and the output committed together), against the same pipeline without
//! transactions in the same run. Reports transactions/s, messages/s and commit latency.
//!
//! Each pass preloads its own input topics (one per pipeline, so pipelines never wait on
//! each other's prefetched messages), then runs the pipelines until every input is consumed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use strata_client::{Client, InitialPosition, MessageId};

#[derive(Debug, Clone, clap::Args)]
pub struct PerfTxnArgs {
    /// Messages per transaction: one pass for each (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 100])]
    pub per_txn: Vec<usize>,
    /// Input messages per pass (over all pipelines).
    #[arg(short = 'n', long, default_value_t = 20_000)]
    pub messages: u64,
    /// Concurrent pipelines, each with its own input topic, consumer and producer.
    #[arg(long, default_value_t = 16)]
    pub pipelines: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Skip the pass without transactions.
    #[arg(long)]
    pub no_baseline: bool,
    /// Run the pass without transactions before the transactional one. The second pass runs
    /// while the store still flushes the first one's writes: alternate the order across runs.
    #[arg(long, conflicts_with = "no_baseline")]
    pub baseline_first: bool,
    /// Topic name prefix (a run stamp is added, so runs never share topics).
    #[arg(long, default_value = "perf-txn")]
    pub prefix: String,
}

/// One pass's results.
struct Pass {
    messages: u64,
    steps: u64,
    elapsed: Duration,
    /// Latencies in microseconds of each transactional step's calls (plain mode: none).
    steps_us: StepLatencies,
}

/// Where a transaction's time goes, call by call.
#[derive(Clone)]
struct StepLatencies {
    begin: Histogram<u64>,
    ack: Histogram<u64>,
    commit: Histogram<u64>,
}

impl StepLatencies {
    fn new() -> anyhow::Result<Self> {
        let h = || Histogram::new_with_bounds(1, 600_000_000, 3);
        Ok(Self {
            begin: h()?,
            ack: h()?,
            commit: h()?,
        })
    }
}

fn record_between(h: &mut Histogram<u64>, from: Instant, to: Instant) {
    let _ = h.record(((to - from).as_micros() as u64).max(1));
}

pub async fn txn(client: &Client, args: PerfTxnArgs) -> anyhow::Result<()> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let pipelines = args.pipelines.max(1);
    for &n in &args.per_txn {
        anyhow::ensure!(n > 0, "--per-txn values must be at least 1");
        let modes: &[bool] = if args.no_baseline {
            &[true]
        } else if args.baseline_first {
            &[false, true]
        } else {
            &[true, false]
        };
        for &transactional in modes {
            let mode = if transactional { "txn" } else { "plain" };
            let prefix = format!("{}-{stamp}-{n}-{mode}", args.prefix);
            let per_pipeline = args.messages / pipelines as u64;
            preload(client, &prefix, pipelines, per_pipeline, args.size).await?;
            let pass = run_pass(client, &prefix, pipelines, per_pipeline, n, transactional).await?;
            print_pass(mode, n, pipelines, &pass);
        }
    }
    Ok(())
}

fn input_topic(prefix: &str, i: usize) -> String {
    format!("{prefix}-in-{i}")
}

async fn preload(
    client: &Client,
    prefix: &str,
    pipelines: usize,
    per_pipeline: u64,
    size: usize,
) -> anyhow::Result<()> {
    let payload = Bytes::from(vec![b'x'; size]);
    for i in 0..pipelines {
        let producer = client.producer(&input_topic(prefix, i)).create().await?;
        let mut last = None;
        for _ in 0..per_pipeline {
            last = Some(producer.send_async(payload.clone()).await?);
        }
        // Receipts resolve in send order: the last one stored means all are.
        if let Some(last) = last {
            last.await?;
        }
        producer.close().await?;
    }
    Ok(())
}

async fn run_pass(
    client: &Client,
    prefix: &str,
    pipelines: usize,
    per_pipeline: u64,
    n: usize,
    transactional: bool,
) -> anyhow::Result<Pass> {
    let latencies = Arc::new(Mutex::new(StepLatencies::new()?));
    let steps = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Every pipeline is set up before the clock starts, and none starts before that.
    let start_gate = Arc::new(tokio::sync::Barrier::new(pipelines + 1));
    let mut workers = Vec::new();
    for i in 0..pipelines {
        let mut consumer = client
            .consumer(&input_topic(prefix, i), "perf-txn")
            .initial_position(InitialPosition::Earliest)
            .receiver_queue_size((2 * n).max(100) as u32)
            .subscribe()
            .await?;
        let producer = client
            .producer(&format!("{prefix}-out"))
            .batch_max_messages(n.max(1))
            .create()
            .await?;
        let (client, latencies, steps) = (client.clone(), latencies.clone(), steps.clone());
        let start_gate = start_gate.clone();
        workers.push(tokio::spawn(async move {
            start_gate.wait().await;
            let mut left = per_pipeline;
            while left > 0 {
                let take = left.min(n as u64) as usize;
                let mut ids: Vec<MessageId> = Vec::with_capacity(take);
                let mut outputs = Vec::with_capacity(take);
                for _ in 0..take {
                    let m = consumer.receive().await?;
                    ids.push(m.id);
                    outputs.push(m.payload);
                }
                if transactional {
                    let t0 = Instant::now();
                    let t = client.new_transaction().begin().await?;
                    let t1 = Instant::now();
                    for out in outputs {
                        // The commit waits for these to be stored.
                        drop(producer.send_async_in(&t, out).await?);
                    }
                    // The commit waits for the acks too: they overlap the sends.
                    drop(consumer.ack_all_in_async(&t, &ids).await?);
                    let t2 = Instant::now();
                    t.commit().await?;
                    let mut l = latencies.lock().unwrap_or_else(|p| p.into_inner());
                    record_between(&mut l.begin, t0, t1);
                    record_between(&mut l.ack, t1, t2);
                    record_between(&mut l.commit, t2, Instant::now());
                } else {
                    let mut last = None;
                    for out in outputs {
                        last = Some(producer.send_async(out).await?);
                    }
                    if let Some(last) = last {
                        last.await?;
                    }
                    for id in ids {
                        consumer.ack(id).await?;
                    }
                }
                steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                left -= take as u64;
            }
            consumer.close().await?;
            producer.close().await?;
            Ok::<_, anyhow::Error>(())
        }));
    }
    start_gate.wait().await;
    let start = Instant::now();
    for w in workers {
        w.await??;
    }
    let elapsed = start.elapsed();
    let steps_us = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Pass {
        messages: per_pipeline * pipelines as u64,
        steps: steps.load(std::sync::atomic::Ordering::Relaxed),
        elapsed,
        steps_us,
    })
}

fn print_pass(mode: &str, n: usize, pipelines: usize, p: &Pass) {
    let secs = p.elapsed.as_secs_f64().max(1e-9);
    let mut line = format!(
        "mode={mode} n={n} pipelines={pipelines} messages={} steps_per_s={:.0} msgs_per_s={:.0}",
        p.messages,
        p.steps as f64 / secs,
        p.messages as f64 / secs
    );
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let l = &p.steps_us;
    if !l.commit.is_empty() {
        line += &format!(
            " commit_p50_ms={:.2} commit_p99_ms={:.2} begin_p50_ms={:.2} send_ack_p50_ms={:.2}",
            ms(&l.commit, 0.5),
            ms(&l.commit, 0.99),
            ms(&l.begin, 0.5),
            ms(&l.ack, 0.5),
        );
    }
    println!("{line}");
}
