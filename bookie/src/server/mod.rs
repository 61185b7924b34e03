//! The bookie's QUIC server (ALPN `strata-bookie/1`), and [`BookieClient`], its client.
//!
//! # Wire protocol
//!
//! A connection starts with the version handshake on its first bidirectional stream
//! (`strata_transport::handshake`). Then the client opens long-lived bidirectional streams
//! (the [`BookieClient`] uses one per connection) and writes `BookieRequest` frames on them
//! without waiting for answers; every frame is a `u32` big-endian length and a prost body
//! (`strata_proto::frame`). Each request carries a `request_id` chosen by the client; the
//! bookie answers each request with one `BookieResponse` frame carrying the same id, as soon
//! as it completes, so answers come back out of order:
//!
//! ```text
//! client ──► AddEntry{id 1} AddEntry{id 2} ReadEntry{id 3} AddEntry{id 4} ...
//! bookie ◄── Entry{id 3} Added{id 1} Added{id 2} Added{id 4} ...
//! ```
//!
//! Adds are queued to the storage's writer in the order they arrive on a stream and
//! answered once their group commit is fsynced; many adds share one fsync. A stream has at
//! most [`ServerConfig::max_in_flight_per_stream`] requests in flight; beyond that the bookie
//! stops reading it (back-pressure through QUIC flow control).
//!
//! | request | effect | answer |
//! |---|---|---|
//! | `AddEntry` | store the entry (`recovery` allows it on a fenced ledger) | `Added` |
//! | `ReadEntry` | `fence`: fence first (BookKeeper's fencing read); then read, CRC-checked | `Entry` with the bookie's LAC |
//! | `ReadLac` | `fence` as above; `timeout_ms > 0`: long poll (below) | `Lac`: LAC, last entry, fenced |
//! | `DeleteLedger` | delete every entry and the ledger record | `Deleted` |
//!
//! Failures are `ErrorInfo { code, message }` answers with stable codes
//! (`strata_proto::ErrorCode`): `NoSuchLedger`, `NoSuchEntry`, `Fenced` (a non-recovery add
//! to a fenced ledger), `ReadOnly`, `ChecksumMismatch` (never the corrupt bytes),
//! `StorageError` (retryable), `ServiceNotReady` (shutting down), `ProtocolViolation` (a
//! request without a body). A frame that cannot be read (too large, truncated, not a
//! `BookieRequest`) ends the stream: the bookie stops reading it (`STOP_SENDING` with
//! `close_code::PROTOCOL_VIOLATION`), answers what was in flight, sends an `ErrorInfo` with
//! `request_id` 0 (`MalformedFrame` or `FrameTooLarge`) and finishes the stream. The
//! connection and its other streams go on.
//!
//! **Long poll.** `ReadLac { timeout_ms > 0, wait_for_lac_above }` is answered as soon as
//! the bookie's LAC for the ledger is above `wait_for_lac_above` (absent: as soon as there is
//! a LAC), else after `timeout_ms` (capped at [`ServerConfig::max_long_poll`]) with the LAC
//! as it is then; a tailing reader compares. The storage wakes waiters after each write to
//! the ledger, so nothing polls. A ledger unknown at the timeout is `NoSuchLedger`.
//!
//! **Read-only.** The bookie samples free space of its data directory every
//! [`ServerConfig::disk_check_interval`]; below [`DiskThreshold`] it refuses adds with
//! `ReadOnly` (saying how much is free) and serves reads, fences and deletes; it is writable
//! again once 10% more than the threshold is free. Recovery adds are still accepted, as
//! BookKeeper's high-priority writes: closing a ledger must not depend on a full bookie.
//!
//! **Shutdown.** [`BookieServer::shutdown`] refuses new connections and stops reading new
//! requests, answers every request already read (in-flight adds finish their fsync), then
//! closes connections with `close_code::SHUTDOWN`.
//!
//! # Layout
//!
//! - `stream`: one stream's request loop and response writer.
//! - `handler`: each request against [`BookieStorage`], and the error mapping.
//! - [`disk`]: the free-space policy and monitor.
//! - `metrics`: counters and [`ServerStats`].
//! - [`client`]: [`BookieClient`], pipelined calls with deadlines over cached connections.
//! - [`rpc_error`]: [`BookieRpcError`], what a call can fail with.

pub mod client;
pub mod disk;
mod handler;
mod metrics;
pub mod rpc_error;
mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quinn::Endpoint;
use strata_transport::handshake::server_handshake;
use strata_transport::{ServerTls, TransportError, TransportTuning, close_code, server_endpoint};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::BookieStorage;
pub use client::{BookieClient, BookieClientOptions, BookieEntry, LacInfo};
use disk::DiskMonitor;
pub use disk::{DiskStatus, DiskThreshold};
use metrics::Metrics;
pub use metrics::ServerStats;
pub use rpc_error::BookieRpcError;

/// Largest frame on a bookie stream by default: an entry of up to 8 MiB with its header.
pub const DEFAULT_BOOKIE_MAX_FRAME: usize = 8 * 1024 * 1024;

/// How long a new connection may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a [`BookieServer`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// QUIC address to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Directory whose file system's free space decides read-only mode (the data directory).
    pub disk_path: PathBuf,
    pub disk_threshold: DiskThreshold,
    pub disk_check_interval: Duration,
    pub max_frame_size: usize,
    /// Requests read from one stream and not yet answered before the bookie stops reading it.
    pub max_in_flight_per_stream: usize,
    /// Longest long-poll wait; longer requests are cut to this.
    pub max_long_poll: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    pub tuning: TransportTuning,
}

impl ServerConfig {
    /// Defaults for a bookie listening on `listen` with its data in `disk_path`.
    pub fn new(listen: SocketAddr, disk_path: PathBuf) -> Self {
        ServerConfig {
            listen,
            disk_path,
            disk_threshold: DiskThreshold::default(),
            disk_check_interval: Duration::from_secs(5),
            max_frame_size: DEFAULT_BOOKIE_MAX_FRAME,
            max_in_flight_per_stream: 16 * 1024,
            max_long_poll: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            tuning: TransportTuning::default(),
        }
    }

    /// Checks every field, naming the bad one.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |field: &'static str, reason: String| Err(ServerError::Config { field, reason });
        if let Err(reason) = self.disk_threshold.validate() {
            return bad("disk_threshold", reason);
        }
        if self.disk_check_interval < Duration::from_millis(10) {
            return bad(
                "disk_check_interval",
                format!("{:?} is below 10ms", self.disk_check_interval),
            );
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_frame_size) {
            return bad(
                "max_frame_size",
                format!("{} is outside 1024..=67108864", self.max_frame_size),
            );
        }
        // Semaphore permits are u32 (the drain takes them all at once).
        if !(1..=1 << 20).contains(&self.max_in_flight_per_stream) {
            return bad(
                "max_in_flight_per_stream",
                format!("{} is outside 1..=1048576", self.max_in_flight_per_stream),
            );
        }
        Ok(())
    }
}

/// Why a [`BookieServer`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid bookie server option {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot read free space of {path}: {source}")]
    Disk {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What every connection and stream task shares.
pub(crate) struct Shared {
    storage: BookieStorage,
    disk: Arc<DiskMonitor>,
    metrics: Metrics,
    config: ServerConfig,
    shutdown: CancellationToken,
}

/// Reads a server's [`ServerStats`]; cheap to clone.
#[derive(Clone)]
pub struct StatsHandle(Arc<Shared>);

impl std::fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsHandle")
    }
}

impl StatsHandle {
    pub fn stats(&self) -> ServerStats {
        let shared = &self.0;
        shared
            .metrics
            .snapshot(shared.disk.status(), shared.storage.stats())
    }
}

/// A running bookie server; see the module docs for the protocol.
pub struct BookieServer {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    connections: TaskTracker,
    accept_task: tokio::task::JoinHandle<()>,
    disk_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for BookieServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BookieServer")
            .field("listen", &self.endpoint.local_addr().ok())
            .finish()
    }
}

impl BookieServer {
    /// Binds the endpoint and starts serving `storage`. Must run inside a tokio runtime.
    pub fn start(
        storage: BookieStorage,
        config: ServerConfig,
        tls: &ServerTls,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        let disk = DiskMonitor::new(config.disk_path.clone(), config.disk_threshold).map_err(
            |source| ServerError::Disk {
                path: config.disk_path.display().to_string(),
                source,
            },
        )?;
        let endpoint = server_endpoint(
            config.listen,
            tls,
            strata_proto::ALPN_BOOKIE,
            &config.tuning,
        )?;
        let shutdown = CancellationToken::new();
        let disk_task = tokio::spawn(
            disk.clone()
                .run(config.disk_check_interval, shutdown.clone()),
        );
        let shared = Arc::new(Shared {
            storage,
            disk,
            metrics: Metrics::default(),
            config,
            shutdown,
        });
        let connections = TaskTracker::new();
        let accept_task = tokio::spawn(accept_loop(
            endpoint.clone(),
            shared.clone(),
            connections.clone(),
        ));
        info!(addr = ?endpoint.local_addr().ok(), "bookie server listening");
        Ok(BookieServer {
            endpoint,
            shared,
            connections,
            accept_task,
            disk_task,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The storage this server serves.
    pub fn storage(&self) -> &BookieStorage {
        &self.shared.storage
    }

    /// Whether adds are refused for lack of disk space.
    pub fn is_read_only(&self) -> bool {
        self.shared.disk.is_read_only()
    }

    /// The disk status; marked changed when the read-only flag flips (registration uses it).
    pub fn disk_status(&self) -> watch::Receiver<DiskStatus> {
        self.shared.disk.subscribe()
    }

    /// Samples the disk now instead of at the next interval.
    pub fn check_disk(&self) {
        self.shared.disk.check();
    }

    /// Counters and gauges since start.
    pub fn stats(&self) -> ServerStats {
        self.stats_handle().stats()
    }

    /// A handle that reads the stats, for a metrics endpoint that outlives `&self` borrows.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.shared.clone())
    }

    /// Stops accepting, answers what is in flight, then closes every connection.
    pub async fn shutdown(self) {
        self.endpoint.set_server_config(None);
        self.shared.shutdown.cancel();
        let _ = self.accept_task.await;
        self.connections.close();
        let drain = self.shared.config.drain_timeout + Duration::from_secs(1);
        if tokio::time::timeout(drain, self.connections.wait())
            .await
            .is_err()
        {
            warn!("bookie connections did not drain within {drain:?}; closing them");
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(close_code::SHUTDOWN),
            b"bookie shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        let _ = self.disk_task.await;
        info!("bookie server stopped");
    }
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>, connections: TaskTracker) {
    let mut next_conn = 0u64;
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            _ = shared.shutdown.cancelled() => return,
        };
        next_conn += 1;
        let span = info_span!("bookie_conn", conn = next_conn, peer = %incoming.remote_address());
        connections.spawn(serve_connection(incoming, shared.clone()).instrument(span));
    }
}

async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let max = shared.config.max_frame_size;
    let handshake = async {
        let conn = incoming.await.map_err(|e| e.to_string())?;
        server_handshake(&conn, "strata-bookie", max)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(conn)
    };
    let conn = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match r {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                debug!(error = %e, "connection refused at handshake");
                return;
            }
            Err(_) => {
                debug!("no handshake within {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        },
        _ = shared.shutdown.cancelled() => return,
    };
    let _gauge = shared.metrics.connection_opened();
    let streams = TaskTracker::new();
    let mut next_stream = 0u64;
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    debug!(reason = %e, "connection closed");
                    break;
                }
            },
            _ = shared.shutdown.cancelled() => break,
        };
        next_stream += 1;
        streams.spawn(
            stream::serve(shared.clone(), send, recv)
                .instrument(info_span!("stream", stream = next_stream)),
        );
    }
    streams.close();
    streams.wait().await;
    if shared.shutdown.is_cancelled() {
        conn.close(
            quinn::VarInt::from_u32(close_code::SHUTDOWN),
            b"bookie shutting down",
        );
    }
}
