//! A UDP relay that delays every datagram by a fixed time in each direction, to give a
//! loopback QUIC connection a real round-trip time (this kernel has no `netem`).
//!
//! Usage: `udp_delay LISTEN_ADDR UPSTREAM_ADDR DELAY_MS`. One client at a time: replies go to
//! the address that sent the latest datagram. Used by `bench/windows.sh`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

type Queue = mpsc::UnboundedSender<(Instant, Vec<u8>)>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, delay_ms] = args.as_slice() else {
        anyhow::bail!("usage: udp_delay LISTEN_ADDR UPSTREAM_ADDR DELAY_MS");
    };
    let delay = Duration::from_millis(delay_ms.parse()?);
    let front = Arc::new(UdpSocket::bind(listen.as_str()).await?);
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    back.connect(upstream.as_str()).await?;
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();

    // Constant delay keeps FIFO order equal to deadline order, so one queue per direction.
    let (to_server, mut server_rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let (to_client, mut client_rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let b = back.clone();
    tokio::spawn(async move {
        while let Some((due, data)) = server_rx.recv().await {
            tokio::time::sleep_until(due).await;
            let _ = b.send(&data).await;
        }
    });
    let (f, c) = (front.clone(), client.clone());
    tokio::spawn(async move {
        while let Some((due, data)) = client_rx.recv().await {
            tokio::time::sleep_until(due).await;
            let addr = *c.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(addr) = addr {
                let _ = f.send_to(&data, addr).await;
            }
        }
    });
    let b = back.clone();
    tokio::spawn(relay_back(b, to_client, delay));
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = front.recv_from(&mut buf).await?;
        *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(from);
        let _ = to_server.send((Instant::now() + delay, buf[..n].to_vec()));
    }
}

async fn relay_back(back: Arc<UdpSocket>, to_client: Queue, delay: Duration) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = back.recv(&mut buf).await?;
        let _ = to_client.send((Instant::now() + delay, buf[..n].to_vec()));
    }
}
