//! Client verbs: `produce`, `consume`, `topics`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use strata_client::{Client, ClientOptions, InitialPosition};

/// Connection flags shared by every client verb.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Broker URL.
    #[arg(
        long,
        global = true,
        env = "STRATA_URL",
        default_value = "quic://127.0.0.1:6650"
    )]
    pub url: String,
    /// CA certificate (PEM) to verify the broker. Not needed for a loopback broker.
    #[arg(long, global = true, env = "STRATA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Give up connecting after this many seconds.
    #[arg(long, global = true, default_value_t = 10)]
    pub connect_timeout_secs: u64,
}

impl ConnectArgs {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let options = ClientOptions {
            url: self.url.clone(),
            tls_ca: self.tls_ca.clone(),
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            name: "strata-cli".into(),
            ..ClientOptions::default()
        };
        Ok(Client::connect(options).await?)
    }
}

/// Sends each `-m` text `n` times, or each line of standard input once when no `-m` is given.
pub async fn produce(
    client: &Client,
    topic: &str,
    messages: &[String],
    n: u64,
) -> anyhow::Result<u64> {
    let producer = client.producer(topic).create().await?;
    let mut pending = Vec::new();
    let mut sent = 0u64;
    if messages.is_empty() {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let line = line.context("reading standard input")?;
            pending.push(producer.send_async(line).await?);
            sent += 1;
        }
    } else {
        for _ in 0..n {
            for m in messages {
                pending.push(producer.send_async(m.clone()).await?);
                sent += 1;
            }
        }
    }
    for p in pending {
        p.await?;
    }
    producer.close().await?;
    Ok(sent)
}

/// Prints `n` payloads (0 = forever), one per line, acknowledging each; acks are durable on return.
pub async fn consume(
    client: &Client,
    topic: &str,
    subscription: &str,
    n: u64,
    initial: InitialPosition,
) -> anyhow::Result<u64> {
    let mut consumer = client
        .consumer(topic, subscription)
        .initial_position(initial)
        .subscribe()
        .await?;
    let stdout = std::io::stdout();
    let mut received = 0u64;
    while n == 0 || received < n {
        let msg = consumer.receive().await?;
        {
            let mut out = stdout.lock();
            out.write_all(&msg.payload)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        consumer.ack(msg.id).await?;
        received += 1;
    }
    consumer.close().await?;
    Ok(received)
}
