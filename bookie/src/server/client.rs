//! [`BookieClient`]: calls to bookies over QUIC, pipelined, each with a deadline.
//!
//! One connection per bookie address, opened on first use and cached; a broken connection is
//! replaced on the next call. Each connection carries one long-lived request stream: calls
//! write their request frame (tagged with a fresh request id) through a writer task and wait
//! for the answer with that id, which a reader task hands over whatever order answers arrive
//! in. Concurrent calls therefore never wait for each other, and a writer's adds go out in
//! the order it issued them.
//!
//! A dead bookie may not be noticed by QUIC before its idle timeout, so a call that times out
//! with no answer of any kind having arrived on its connection since it was sent closes that
//! connection; the next call dials afresh.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quinn::SendStream;
use strata_proto::pb::bookie::{
    AddEntry, BookieRequest, BookieResponse, DeleteLedger, ReadEntry, ReadLac, bookie_request,
    bookie_response,
};
use strata_proto::{EntryId, FrameError, LedgerId, WireError, encode_frame};
use strata_transport::handshake::client_handshake;
use strata_transport::{
    ClientTrust, FrameReader, TransportError, TransportTuning, client_endpoint,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span};

use super::{BookieRpcError, DEFAULT_BOOKIE_MAX_FRAME};

/// Requests queued towards one connection's writer before callers wait.
const REQUEST_QUEUE: usize = 4096;
/// Request frames coalesced into one stream write.
const WRITE_BATCH: usize = 256;

/// Settings of a [`BookieClient`].
#[derive(Debug, Clone)]
pub struct BookieClientOptions {
    /// Name sent in the handshake (shows in the bookie's logs).
    pub name: String,
    /// CA of the bookies' certificates; without one only loopback bookies are trusted
    /// (development trust, see `strata_transport::tls`).
    pub ca: Option<PathBuf>,
    /// Longest wait for a new connection's QUIC handshake.
    pub connect_timeout: Duration,
    /// Deadline of every call (connecting included); a long poll gets its wait on top.
    pub request_timeout: Duration,
    pub max_frame_size: usize,
    pub tuning: TransportTuning,
}

impl Default for BookieClientOptions {
    fn default() -> Self {
        BookieClientOptions {
            name: "strata-bookie-client".into(),
            ca: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            max_frame_size: DEFAULT_BOOKIE_MAX_FRAME,
            tuning: TransportTuning::default(),
        }
    }
}

/// An entry read from a bookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookieEntry {
    pub payload: Bytes,
    /// The bookie's last-add-confirmed for the ledger when it read the entry.
    pub last_add_confirmed: Option<EntryId>,
}

/// A bookie's view of a ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LacInfo {
    /// Highest last-add-confirmed piggybacked on an add the bookie stored.
    pub last_add_confirmed: Option<EntryId>,
    /// Highest entry the bookie stores.
    pub last_entry: Option<EntryId>,
    pub fenced: bool,
}

/// Client of any number of bookies; cheap to clone (clones share the connections).
#[derive(Clone)]
pub struct BookieClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for BookieClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BookieClient")
            .field("name", &self.inner.options.name)
            .finish()
    }
}

struct ClientInner {
    options: BookieClientOptions,
    slots: std::sync::Mutex<HashMap<String, Arc<Slot>>>,
}

/// The cached connection of one bookie address; the async lock makes concurrent calls share
/// one dial, and its outcome.
#[derive(Default)]
struct Slot {
    conn: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    conn: Option<Arc<Conn>>,
    /// The last failed dial: callers that were waiting for it get its error instead of
    /// dialing again one after another.
    failed: Option<(Instant, BookieRpcError)>,
}

type Answer = Result<bookie_response::Response, BookieRpcError>;

struct Conn {
    quic: quinn::Connection,
    frames: mpsc::Sender<Bytes>,
    state: Arc<ConnState>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The reader task holds the stream, which would keep the connection open.
        self.quic.close(quinn::VarInt::from_u32(0), b"client done");
    }
}

struct ConnState {
    bookie: String,
    pending: std::sync::Mutex<Pending>,
    next_id: AtomicU64,
    opened: Instant,
    /// When the last answer arrived, in ms since `opened`.
    last_answer_ms: AtomicU64,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    /// Set once the connection failed; later calls get this error.
    failed: Option<BookieRpcError>,
}

impl ConnState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn register(&self) -> Result<(u64, oneshot::Receiver<Answer>), BookieRpcError> {
        let mut pending = self.lock();
        if let Some(e) = &pending.failed {
            return Err(e.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        pending.waiting.insert(id, tx);
        Ok((id, rx))
    }

    fn forget(&self, id: u64) {
        self.lock().waiting.remove(&id);
    }

    fn answer(&self, response: BookieResponse) {
        self.last_answer_ms
            .store(self.elapsed_ms(), Ordering::Relaxed);
        let waiter = self.lock().waiting.remove(&response.request_id);
        // No waiter: the caller gave up (deadline) before the answer came.
        if let Some(waiter) = waiter {
            let answer = response.response.ok_or_else(|| BookieRpcError::Protocol {
                bookie: self.bookie.clone(),
                reason: format!("answer to request {} has no body", response.request_id),
            });
            let _ = waiter.send(answer);
        }
    }

    /// Refuses later calls with `error`; calls already sent still get their answers (the
    /// reader fails whatever is left when the stream ends).
    fn refuse_new(&self, error: BookieRpcError) {
        self.lock().failed.get_or_insert(error);
    }

    /// Fails every waiting call and every later one with `error`.
    fn fail(&self, error: BookieRpcError) {
        let mut pending = self.lock();
        let error = pending.failed.get_or_insert(error).clone();
        for (_, waiter) in pending.waiting.drain() {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    fn failure(&self) -> BookieRpcError {
        self.lock()
            .failed
            .clone()
            .unwrap_or_else(|| BookieRpcError::Unreachable {
                bookie: self.bookie.clone(),
                reason: "connection closed".into(),
            })
    }
}

impl Conn {
    fn is_open(&self) -> bool {
        self.quic.close_reason().is_none() && self.state.lock().failed.is_none()
    }
}

/// Removes a call's waiter however the call ends (answered, timed out, cancelled).
struct WaiterGuard<'a> {
    state: &'a ConnState,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.state.forget(self.id);
    }
}

impl BookieClient {
    pub fn new(options: BookieClientOptions) -> Self {
        BookieClient {
            inner: Arc::new(ClientInner {
                options,
                slots: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn options(&self) -> &BookieClientOptions {
        &self.inner.options
    }

    /// Stores an entry on `bookie` (`host:port`); `Ok` once it is fsynced there.
    /// `last_add_confirmed` is the writer's LAC, piggybacked; `recovery` lets a recovery
    /// writer add to a fenced ledger.
    pub async fn add(
        &self,
        bookie: &str,
        ledger: LedgerId,
        entry: EntryId,
        last_add_confirmed: Option<EntryId>,
        payload: Bytes,
        recovery: bool,
    ) -> Result<(), BookieRpcError> {
        let request = bookie_request::Request::Add(AddEntry {
            ledger_id: ledger.0,
            entry_id: entry.0,
            last_add_confirmed: last_add_confirmed.map(|e| e.0),
            payload,
            recovery,
        });
        match self.call(bookie, request, self.timeout()).await? {
            bookie_response::Response::Added(a)
                if a.ledger_id == ledger.0 && a.entry_id == entry.0 =>
            {
                Ok(())
            }
            other => Err(unexpected(bookie, ledger, Some(entry), "Added", other)),
        }
    }

    /// Reads an entry; with `fence`, fences the ledger on the bookie first (recovery).
    pub async fn read(
        &self,
        bookie: &str,
        ledger: LedgerId,
        entry: EntryId,
        fence: bool,
    ) -> Result<BookieEntry, BookieRpcError> {
        let request = bookie_request::Request::Read(ReadEntry {
            ledger_id: ledger.0,
            entry_id: entry.0,
            fence,
        });
        match self.call(bookie, request, self.timeout()).await? {
            bookie_response::Response::Entry(e)
                if e.ledger_id == ledger.0 && e.entry_id == entry.0 =>
            {
                Ok(BookieEntry {
                    payload: e.payload,
                    last_add_confirmed: e.last_add_confirmed.map(EntryId),
                })
            }
            other => Err(unexpected(bookie, ledger, Some(entry), "Entry", other)),
        }
    }

    /// The bookie's LAC and last entry of the ledger; with `fence`, fences it first
    /// (recovery: from then on the old writer's adds fail with `Fenced`).
    pub async fn read_lac(
        &self,
        bookie: &str,
        ledger: LedgerId,
        fence: bool,
    ) -> Result<LacInfo, BookieRpcError> {
        self.lac(bookie, ledger, fence, None, Duration::ZERO).await
    }

    /// Waits until the bookie's LAC of the ledger is above `above` (any LAC when `None`) or
    /// `wait` passes (the bookie caps it, 60 s by default), and returns the bookie's view then;
    /// compare its LAC to tell which. For tailing readers.
    pub async fn read_lac_long_poll(
        &self,
        bookie: &str,
        ledger: LedgerId,
        above: Option<EntryId>,
        wait: Duration,
    ) -> Result<LacInfo, BookieRpcError> {
        self.lac(
            bookie,
            ledger,
            false,
            above,
            wait.max(Duration::from_millis(1)),
        )
        .await
    }

    async fn lac(
        &self,
        bookie: &str,
        ledger: LedgerId,
        fence: bool,
        above: Option<EntryId>,
        wait: Duration,
    ) -> Result<LacInfo, BookieRpcError> {
        let timeout_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let request = bookie_request::Request::ReadLac(ReadLac {
            ledger_id: ledger.0,
            fence,
            wait_for_lac_above: above.map(|e| e.0),
            timeout_ms,
        });
        let deadline = self.timeout() + Duration::from_millis(u64::from(timeout_ms));
        match self.call(bookie, request, deadline).await? {
            bookie_response::Response::Lac(l) if l.ledger_id == ledger.0 => Ok(LacInfo {
                last_add_confirmed: l.last_add_confirmed.map(EntryId),
                last_entry: l.last_entry_id.map(EntryId),
                fenced: l.fenced,
            }),
            other => Err(unexpected(bookie, ledger, None, "Lac", other)),
        }
    }

    /// Deletes the ledger's entries and record on the bookie (a no-op if it has none).
    pub async fn delete(&self, bookie: &str, ledger: LedgerId) -> Result<(), BookieRpcError> {
        let request = bookie_request::Request::DeleteLedger(DeleteLedger {
            ledger_id: ledger.0,
        });
        match self.call(bookie, request, self.timeout()).await? {
            bookie_response::Response::Deleted(d) if d.ledger_id == ledger.0 => Ok(()),
            other => Err(unexpected(bookie, ledger, None, "Deleted", other)),
        }
    }

    /// Closes every cached connection; calls in flight on them fail as unreachable.
    pub async fn close(&self) {
        let slots: Vec<Arc<Slot>> = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            if let Some(conn) = slot.conn.lock().await.conn.take() {
                conn.state.fail(BookieRpcError::Unreachable {
                    bookie: conn.state.bookie.clone(),
                    reason: "client closed".into(),
                });
                conn.quic
                    .close(quinn::VarInt::from_u32(0), b"client closed");
            }
        }
    }

    fn timeout(&self) -> Duration {
        self.inner.options.request_timeout
    }

    /// Sends one request and waits for its answer until `timeout` (connecting included).
    async fn call(
        &self,
        bookie: &str,
        request: bookie_request::Request,
        timeout: Duration,
    ) -> Result<bookie_response::Response, BookieRpcError> {
        let deadline = Instant::now() + timeout;
        let timed_out = || BookieRpcError::Timeout {
            bookie: bookie.to_owned(),
            after: timeout,
        };
        let conn = tokio::time::timeout_at(deadline, self.connection(bookie))
            .await
            .map_err(|_| timed_out())??;
        let (id, answer) = conn.state.register()?;
        let _guard = WaiterGuard {
            state: &conn.state,
            id,
        };
        let message = BookieRequest {
            request: Some(request),
            request_id: id,
        };
        let frame =
            encode_frame(&message, self.inner.options.max_frame_size).map_err(|e| match e {
                FrameError::TooLarge { len, max } => BookieRpcError::TooLarge { len, max },
                other => BookieRpcError::Protocol {
                    bookie: bookie.to_owned(),
                    reason: other.to_string(),
                },
            })?;
        let sent_ms = conn.state.elapsed_ms();
        match tokio::time::timeout_at(deadline, conn.frames.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(conn.state.failure()),
            Err(_) => return Err(timed_out()),
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(conn.state.failure()),
            Err(_) => {
                if conn.state.last_answer_ms.load(Ordering::Relaxed) < sent_ms {
                    // Nothing at all came back since this request left: treat the connection
                    // as dead rather than wait for QUIC's idle timeout.
                    debug!(bookie, "no answer on the connection; closing it");
                    conn.state.fail(BookieRpcError::Unreachable {
                        bookie: bookie.to_owned(),
                        reason: format!("no answer within {timeout:?}"),
                    });
                    conn.quic.close(quinn::VarInt::from_u32(0), b"no answer");
                }
                Err(timed_out())
            }
        }
    }

    async fn connection(&self, bookie: &str) -> Result<Arc<Conn>, BookieRpcError> {
        let slot = {
            let mut slots = self
                .inner
                .slots
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match slots.get(bookie) {
                Some(slot) => slot.clone(),
                None => slots.entry(bookie.to_owned()).or_default().clone(),
            }
        };
        let waiting_since = Instant::now();
        let mut cached = slot.conn.lock().await;
        if let Some(conn) = cached.conn.as_ref()
            && conn.is_open()
        {
            return Ok(conn.clone());
        }
        if let Some((at, e)) = &cached.failed
            && *at >= waiting_since
        {
            return Err(e.clone());
        }
        cached.conn = None;
        match connect(&self.inner.options, bookie).await {
            Ok(conn) => {
                let conn = Arc::new(conn);
                cached.conn = Some(conn.clone());
                cached.failed = None;
                Ok(conn)
            }
            Err(e) => {
                cached.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }
}

/// The error for an answer that is not the expected kind (a typed error, or a wrong answer).
fn unexpected(
    bookie: &str,
    ledger: LedgerId,
    entry: Option<EntryId>,
    expected: &str,
    answer: bookie_response::Response,
) -> BookieRpcError {
    match answer {
        bookie_response::Response::Error(e) => {
            BookieRpcError::from_wire(bookie, ledger, entry, WireError::from(e))
        }
        other => BookieRpcError::Protocol {
            bookie: bookie.to_owned(),
            reason: format!("expected {expected} for ledger {ledger}, got {other:?}"),
        },
    }
}

async fn connect(options: &BookieClientOptions, bookie: &str) -> Result<Conn, BookieRpcError> {
    let unreachable = |reason: String| BookieRpcError::Unreachable {
        bookie: bookie.to_owned(),
        reason,
    };
    let (host, port) = bookie
        .rsplit_once(':')
        .ok_or_else(|| unreachable("address has no :port".into()))?;
    let host = host.trim_matches(['[', ']']);
    let port: u16 = port
        .parse()
        .map_err(|e| unreachable(format!("bad port {port:?}: {e}")))?;
    let sock: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| unreachable(format!("resolving {host}: {e}")))?
        .next()
        .ok_or_else(|| unreachable(format!("{host} resolves to no address")))?;
    let transport = |e: TransportError| unreachable(e.to_string());
    let trust = ClientTrust::resolve(options.ca.as_deref(), host).map_err(transport)?;
    let endpoint = client_endpoint(sock, &trust, strata_proto::ALPN_BOOKIE, &options.tuning)
        .map_err(transport)?;
    let connecting = endpoint
        .connect(sock, host)
        .map_err(|e| unreachable(e.to_string()))?;
    let quic = tokio::time::timeout(options.connect_timeout, connecting)
        .await
        .map_err(|_| {
            unreachable(format!(
                "no QUIC handshake within {:?}",
                options.connect_timeout
            ))
        })?
        .map_err(|e| unreachable(e.to_string()))?;
    client_handshake(&quic, &options.name, options.max_frame_size)
        .await
        .map_err(|e| match e {
            // Retrying cannot help: the bookie speaks no version this client does.
            TransportError::IncompatibleVersion(reason) => BookieRpcError::Protocol {
                bookie: bookie.to_owned(),
                reason: format!("incompatible protocol version: {reason}"),
            },
            other => transport(other),
        })?;
    let (send, recv) = quic
        .open_bi()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let state = Arc::new(ConnState {
        bookie: bookie.to_owned(),
        pending: std::sync::Mutex::new(Pending::default()),
        next_id: AtomicU64::new(1),
        opened: Instant::now(),
        last_answer_ms: AtomicU64::new(0),
    });
    let (frames, queue) = mpsc::channel(REQUEST_QUEUE);
    let span = info_span!("bookie_client", bookie);
    tokio::spawn(write_requests(send, queue, state.clone()).instrument(span.clone()));
    let reader = FrameReader::new(recv, options.max_frame_size);
    tokio::spawn(read_answers(reader, state.clone()).instrument(span));
    debug!(bookie, "connected to bookie");
    Ok(Conn {
        quic,
        frames,
        state,
    })
}

/// Writes queued request frames, several per write, until the connection is dropped.
async fn write_requests(
    mut send: SendStream,
    mut queue: mpsc::Receiver<Bytes>,
    state: Arc<ConnState>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        if let Err(e) = send.write_all_chunks(&mut batch).await {
            // The bookie stopped reading (shutdown, or it refused a frame): what it read is
            // still answered on the other direction.
            state.refuse_new(BookieRpcError::Unreachable {
                bookie: state.bookie.clone(),
                reason: format!("sending requests: {e}"),
            });
            return;
        }
        batch.clear();
    }
    let _ = send.finish();
}

/// Hands each answer to its caller until the stream ends; then fails whoever still waits.
async fn read_answers(mut reader: FrameReader, state: Arc<ConnState>) {
    let bookie = state.bookie.clone();
    let error = loop {
        match reader.recv::<BookieResponse>().await {
            Ok(Some(response)) => {
                if response.request_id == 0
                    && let Some(bookie_response::Response::Error(e)) = response.response
                {
                    break BookieRpcError::Protocol {
                        bookie,
                        reason: format!("bookie ended the stream: {}", WireError::from(e)),
                    };
                }
                state.answer(response);
            }
            Ok(None) => {
                break BookieRpcError::Unreachable {
                    bookie,
                    reason: "bookie ended the stream".into(),
                };
            }
            Err(e @ TransportError::Frame(_)) => {
                break BookieRpcError::Protocol {
                    bookie,
                    reason: e.to_string(),
                };
            }
            Err(e) => {
                break BookieRpcError::Unreachable {
                    bookie,
                    reason: e.to_string(),
                };
            }
        }
    };
    debug!(error = %error, "bookie connection ended");
    state.fail(error);
}
