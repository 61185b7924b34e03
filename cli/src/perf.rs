//! `strata perf produce|consume`: load generators in the manner of pulsar-perf. Every second
//! they print throughput and latency percentiles (HDR histogram) for that second; at the end
//! a summary over the whole run. Fixed-count runs show a progress bar on a terminal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use strata_client::{Client, InitialPosition};
use tokio::sync::mpsc;

#[derive(Debug, Clone, clap::Args)]
pub struct PerfProduceArgs {
    pub topic: String,
    /// Messages per second over all producers (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Most messages per batch (one batch is one stored entry).
    #[arg(long, default_value_t = 1000)]
    pub batch_max_messages: usize,
    /// Most payload bytes per batch.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub batch_max_bytes: usize,
    /// Longest a message waits for its batch to fill, in milliseconds.
    #[arg(long, default_value_t = 1)]
    pub batch_max_delay_ms: u64,
    /// Concurrent producers (each on its own stream).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Most unconfirmed messages per producer.
    #[arg(long, default_value_t = 10_000)]
    pub max_pending: usize,
    /// Messages to send in total (0 = run for --duration-secs instead).
    #[arg(short = 'n', long, default_value_t = 0)]
    pub num_messages: u64,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PerfConsumeArgs {
    pub topic: String,
    #[arg(short = 's', long, default_value = "perf-sub")]
    pub subscription: String,
    /// Messages to receive (0 = run for --duration-secs).
    #[arg(short = 'n', long, default_value_t = 0)]
    pub num_messages: u64,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Start a new subscription at the earliest message instead of the latest.
    #[arg(long)]
    pub earliest: bool,
    #[arg(long, default_value_t = 1000)]
    pub receiver_queue_size: u32,
}

/// Counters and latency histograms shared by the workers and the reporter.
pub(crate) struct Stats {
    messages: u64,
    bytes: u64,
    pub(crate) errors: u64,
    interval: Histogram<u64>,
    total: Histogram<u64>,
}

impl Stats {
    pub(crate) fn new() -> anyhow::Result<Self> {
        // Microseconds, up to 10 minutes, 3 significant digits.
        let h = Histogram::new_with_bounds(1, 600_000_000, 3)?;
        Ok(Self {
            messages: 0,
            bytes: 0,
            errors: 0,
            interval: h.clone(),
            total: h,
        })
    }

    pub(crate) fn record(&mut self, latency_us: u64, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes as u64;
        let v = latency_us.clamp(1, 600_000_000);
        let _ = self.interval.record(v);
        let _ = self.total.record(v);
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn latency_line(h: &Histogram<u64>) -> String {
    format!(
        "latency ms: p50 {:.2} p99 {:.2} p999 {:.2} max {:.2}",
        ms(h, 0.5),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0
    )
}

/// Prints a line each second until `done`; returns the final stats.
pub(crate) async fn report(
    label: &str,
    stats: Arc<Mutex<Stats>>,
    mut done: tokio::sync::watch::Receiver<bool>,
    bar: Option<ProgressBar>,
) -> (u64, u64, Duration) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_msgs, mut last_bytes, mut last_t) = (0u64, 0u64, Instant::now());
    loop {
        let finished = tokio::select! {
            _ = tick.tick() => false,
            _ = done.changed() => true,
        };
        let (msgs, bytes, errors, line) = {
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            let line = latency_line(&s.interval);
            s.interval.reset();
            (s.messages, s.bytes, s.errors, line)
        };
        let dt = last_t.elapsed().as_secs_f64().max(1e-9);
        let rate = (msgs - last_msgs) as f64 / dt;
        let mbps = (bytes - last_bytes) as f64 / dt / 1e6;
        let text = format!("{label}: {rate:>10.0} msg/s {mbps:>8.2} MB/s errors {errors} | {line}");
        match &bar {
            Some(b) => {
                b.set_position(msgs);
                b.println(text);
            }
            None => println!("{text}"),
        }
        (last_msgs, last_bytes, last_t) = (msgs, bytes, Instant::now());
        if finished {
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            return (msgs, bytes, start.elapsed());
        }
    }
}

fn progress(n: u64) -> Option<ProgressBar> {
    (n > 0).then(|| {
        let bar = ProgressBar::new(n);
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
        {
            bar.set_style(style);
        }
        bar
    })
}

pub(crate) fn summary(label: &str, stats: &Mutex<Stats>, msgs: u64, bytes: u64, elapsed: Duration) {
    let s = stats.lock().unwrap_or_else(|p| p.into_inner());
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{label} summary: {msgs} msgs in {secs:.1} s = {:.0} msg/s {:.2} MB/s errors {} | {}",
        msgs as f64 / secs,
        bytes as f64 / secs / 1e6,
        s.errors,
        latency_line(&s.total)
    );
}

pub async fn produce(client: &Client, args: PerfProduceArgs) -> anyhow::Result<()> {
    let stats = Arc::new(Mutex::new(Stats::new()?));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let reporter = tokio::spawn(report(
        "produce",
        stats.clone(),
        done_rx,
        progress(args.num_messages),
    ));
    // A fixed-count run sends every message; otherwise the run lasts --duration-secs.
    let deadline =
        (args.num_messages == 0).then(|| Instant::now() + Duration::from_secs(args.duration_secs));
    let producers = args.producers.max(1);
    let mut workers = Vec::new();
    for p in 0..producers {
        let producer = client
            .producer(&args.topic)
            .batch_max_messages(args.batch_max_messages)
            .batch_max_bytes(args.batch_max_bytes)
            .batch_max_delay(Duration::from_millis(args.batch_max_delay_ms))
            .max_pending_messages(args.max_pending)
            .create()
            .await?;
        let quota = if args.num_messages == 0 {
            u64::MAX
        } else {
            args.num_messages / producers as u64
                + u64::from((p as u64) < args.num_messages % producers as u64)
        };
        let per_producer_rate = args.rate as f64 / producers as f64;
        let payload = Bytes::from(vec![b'x'; args.size]);
        let stats = stats.clone();
        workers.push(tokio::spawn(async move {
            // Receipts resolve in send order, so one task awaits them in order.
            let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, strata_client::SendFuture)>();
            let size = payload.len();
            let waiter_stats = stats.clone();
            let waiter = tokio::spawn(async move {
                while let Some((t0, fut)) = rx.recv().await {
                    let ok = fut.await.is_ok();
                    let mut s = waiter_stats.lock().unwrap_or_else(|p| p.into_inner());
                    if ok {
                        s.record(t0.elapsed().as_micros() as u64, size)
                    } else {
                        s.errors += 1
                    }
                }
            });
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < quota && deadline.is_none_or(|d| Instant::now() < d) {
                if per_producer_rate > 0.0 {
                    let due = start + Duration::from_secs_f64(sent as f64 / per_producer_rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let t0 = Instant::now();
                match producer.send_async(payload.clone()).await {
                    Ok(fut) => {
                        let _ = tx.send((t0, fut));
                    }
                    Err(_) => stats.lock().unwrap_or_else(|p| p.into_inner()).errors += 1,
                }
                sent += 1;
            }
            drop(tx);
            let _ = waiter.await;
            producer.close().await
        }));
    }
    for w in workers {
        w.await??;
    }
    let _ = done_tx.send(true);
    let (msgs, bytes, elapsed) = reporter.await?;
    summary("produce", &stats, msgs, bytes, elapsed);
    Ok(())
}

pub async fn consume(client: &Client, args: PerfConsumeArgs) -> anyhow::Result<()> {
    let initial = if args.earliest {
        InitialPosition::Earliest
    } else {
        InitialPosition::Latest
    };
    let mut consumer = client
        .consumer(&args.topic, &args.subscription)
        .initial_position(initial)
        .receiver_queue_size(args.receiver_queue_size)
        .subscribe()
        .await?;
    let stats = Arc::new(Mutex::new(Stats::new()?));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let reporter = tokio::spawn(report(
        "consume",
        stats.clone(),
        done_rx,
        progress(args.num_messages),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.duration_secs);
    let mut received = 0u64;
    let mut last = None;
    while args.num_messages == 0 || received < args.num_messages {
        let msg = if args.num_messages == 0 {
            match tokio::time::timeout_at(deadline, consumer.receive()).await {
                Ok(m) => m?,
                Err(_) => break,
            }
        } else {
            consumer.receive().await?
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let latency_us = now_ms.saturating_sub(msg.publish_time_ms) * 1000;
        stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(latency_us, msg.payload.len());
        received += 1;
        last = Some(msg.id);
        if received.is_multiple_of(1000) {
            consumer.ack_cumulative(msg.id).await?;
        }
    }
    if let Some(id) = last {
        consumer.ack_cumulative(id).await?;
    }
    consumer.close().await?;
    let _ = done_tx.send(true);
    let (msgs, bytes, elapsed) = reporter.await?;
    summary("consume", &stats, msgs, bytes, elapsed);
    println!("(consume latency is publish time to receive, millisecond resolution)");
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct PerfMetaArgs {
    /// Metastore nodes, `host:port[,host:port...]`.
    #[arg(long, env = "STRATA_METASTORE", default_value = "127.0.0.1:6670")]
    pub metastore: String,
    /// Concurrent clients, each doing compare-and-set puts on its own key.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Value bytes per put.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Also watch the written keys (a remote watch, as a broker would) and report the watch
    /// delivery latency: from sending a put to receiving its change on the watch.
    #[arg(long)]
    pub watch: bool,
    /// The node to watch through (default: the `--metastore` list).
    #[arg(long)]
    pub watch_from: Option<String>,
}

/// Compare-and-set puts against a metastore cluster: every client reads nothing and writes
/// its own key with `Expect::Version` of its previous write, so every put is a real CAS.
pub async fn meta(args: PerfMetaArgs) -> anyhow::Result<()> {
    use strata_metastore::{Expect, MetaClient};
    let addrs: Vec<String> = args
        .metastore
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    let client = MetaClient::new(addrs, None, Duration::from_secs(10))?;
    let stats = Arc::new(Mutex::new(Stats::new()?));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let reporter = tokio::spawn(report("cas-put", stats.clone(), done_rx, None));
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let value = Bytes::from(vec![b'v'; args.size]);
    let run = format!("{}", std::process::id());
    // Send time of each (key, version), for the watch latency.
    let sent: Arc<Mutex<HashMap<(String, u64), Instant>>> = Arc::default();
    let watch_stats = Arc::new(Mutex::new(Stats::new()?));
    let watcher = if args.watch {
        let watch_client = match &args.watch_from {
            Some(addr) => MetaClient::new(vec![addr.clone()], None, Duration::from_secs(10))?,
            None => client.clone(),
        };
        let mut watch = watch_client.watch(&format!("/perf/{run}/"), 0).await?;
        let (sent, watch_stats) = (sent.clone(), watch_stats.clone());
        Some(tokio::spawn(async move {
            while let Some(Ok(event)) = watch.next().await {
                let received = Instant::now();
                let Some(kv) = event.kv else { continue };
                let t0 = sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(kv.key, kv.version));
                if let Some(t0) = t0 {
                    watch_stats
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record((received - t0).as_micros() as u64, kv.value.len());
                }
            }
        }))
    } else {
        None
    };
    let mut workers = Vec::new();
    for c in 0..args.clients.max(1) {
        let (client, stats, value) = (client.clone(), stats.clone(), value.clone());
        let sent = sent.clone();
        let key = format!("/perf/{run}/{c}");
        workers.push(tokio::spawn(async move {
            let mut expect = Expect::Absent;
            let mut version = 0;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((key.clone(), version + 1), t0);
                match client.put(&key, value.clone(), expect).await {
                    Ok(w) => {
                        expect = Expect::Version(w.version);
                        version = w.version;
                        stats
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .record(t0.elapsed().as_micros() as u64, value.len());
                    }
                    Err(_) => stats.lock().unwrap_or_else(|p| p.into_inner()).errors += 1,
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let _ = done_tx.send(true);
    let (msgs, bytes, elapsed) = reporter.await?;
    summary("cas-put", &stats, msgs, bytes, elapsed);
    if let Some(watcher) = watcher {
        // Changes still in flight arrive within moments; then stop the watch.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !sent.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        watcher.abort();
        let count = watch_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .messages;
        summary("watch-delivery", &watch_stats, count, 0, elapsed);
    }
    Ok(())
}
