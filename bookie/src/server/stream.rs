//! One request stream: read frames, run each request concurrently, write each answer as it
//! completes (tagged with its request id).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use quinn::{RecvStream, SendStream};
use strata_proto::frame::LENGTH_PREFIX;
use strata_proto::pb::bookie::{BookieRequest, BookieResponse, bookie_request, bookie_response};
use strata_proto::{ErrorCode, FrameError, WireError};
use strata_transport::{FrameReader, TransportError, close_code};
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, debug, warn};

use super::Shared;
use super::handler;
use super::metrics::inc;

/// Answers buffered towards the writer before request tasks wait.
const RESPONSE_QUEUE: usize = 4096;
/// Answers coalesced into one stream write.
const WRITE_BATCH: usize = 256;
/// How long a finished stream waits for the peer to read its last answers.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the read loop stopped.
enum End {
    /// The client finished its side.
    Finished,
    /// The server is shutting down.
    Shutdown,
    /// A frame could not be read; the stream ends with this error.
    Bad(WireError),
    /// The stream or connection broke.
    Broken(String),
}

pub(super) async fn serve(shared: Arc<Shared>, send: SendStream, recv: RecvStream) {
    let max = shared.config.max_frame_size;
    let mut reader = FrameReader::new(recv, max);
    let (tx, rx) = mpsc::channel::<BookieResponse>(RESPONSE_QUEUE);
    let writer = tokio::spawn(write_responses(send, rx, max).in_current_span());
    let limit = shared.config.max_in_flight_per_stream;
    let slots = Arc::new(Semaphore::new(limit));

    let end = loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break End::Broken("request slots closed".into()),
            },
            _ = shared.shutdown.cancelled() => break End::Shutdown,
        };
        let body = tokio::select! {
            b = reader.recv_raw() => b,
            _ = shared.shutdown.cancelled() => break End::Shutdown,
        };
        let request = match body {
            Ok(Some(body)) => match BookieRequest::decode(body) {
                Ok(r) => r,
                Err(e) => {
                    break End::Bad(WireError::new(
                        ErrorCode::MalformedFrame,
                        format!("frame is not a BookieRequest: {e}"),
                    ));
                }
            },
            Ok(None) => break End::Finished,
            Err(TransportError::Frame(e)) => {
                let code = match e {
                    FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                    _ => ErrorCode::MalformedFrame,
                };
                break End::Bad(WireError::new(code, e.to_string()));
            }
            Err(e) => break End::Broken(e.to_string()),
        };
        let id = request.request_id;
        match request.request {
            Some(bookie_request::Request::Add(add)) => {
                let (ledger, entry, bytes) = (add.ledger_id, add.entry_id, add.payload.len());
                // Queued here, in arrival order; its fsync is awaited by a task of its own.
                match handler::queue_add(&shared, add).await {
                    Ok(queued) => {
                        let (shared, tx) = (shared.clone(), tx.clone());
                        tokio::spawn(async move {
                            let reply =
                                handler::finish_add(&shared, queued, ledger, entry, bytes).await;
                            let _ = tx.send(response(id, reply)).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        let _ = tx.send(response(id, Err(e))).await;
                    }
                }
            }
            Some(other) => {
                let (shared, tx) = (shared.clone(), tx.clone());
                tokio::spawn(
                    async move {
                        let reply = match other {
                            bookie_request::Request::Read(r) => handler::read(&shared, r).await,
                            bookie_request::Request::ReadLac(r) => {
                                handler::read_lac(&shared, r).await
                            }
                            bookie_request::Request::DeleteLedger(d) => {
                                handler::delete(&shared, d).await
                            }
                            bookie_request::Request::Add(_) => Err(WireError::new(
                                ErrorCode::Unknown,
                                "add dispatched as a plain request",
                            )),
                        };
                        let _ = tx.send(response(id, reply)).await;
                        drop(permit);
                    }
                    .in_current_span(),
                );
            }
            None => {
                let e = WireError::new(ErrorCode::ProtocolViolation, "request has no body");
                let _ = tx.send(response(id, Err(e))).await;
            }
        }
    };

    match &end {
        End::Bad(e) => {
            inc(&shared.metrics.protocol_errors, 1);
            debug!(error = %e, "unreadable frame: ending the stream");
            reader.stop(close_code::PROTOCOL_VIOLATION);
        }
        End::Shutdown => reader.stop(close_code::SHUTDOWN),
        End::Broken(reason) => debug!(%reason, "stream broken"),
        End::Finished => {}
    }
    // Answer everything already read: taking every slot means every request task is done.
    let all = u32::try_from(limit).unwrap_or(u32::MAX);
    let drain_timeout = shared.config.drain_timeout;
    tokio::select! {
        _ = slots.acquire_many(all) => {}
        _ = async {
            shared.shutdown.cancelled().await;
            tokio::time::sleep(drain_timeout).await;
        } => warn!("requests still in flight after {drain_timeout:?} of shutdown"),
    }
    if let End::Bad(e) = end {
        let _ = tx.send(response(0, Err(e))).await;
    }
    drop(tx);
    let _ = writer.await;
}

fn response(
    request_id: u64,
    reply: Result<bookie_response::Response, WireError>,
) -> BookieResponse {
    BookieResponse {
        request_id,
        response: Some(match reply {
            Ok(r) => r,
            Err(e) => bookie_response::Response::Error(e.into()),
        }),
    }
}

/// Appends one frame for `msg` to `buf`; an answer too large for a frame becomes an error.
fn encode_into(buf: &mut BytesMut, msg: &BookieResponse, max: usize) {
    let len = msg.encoded_len();
    if len > max {
        let error = response(
            msg.request_id,
            Err(WireError::new(
                ErrorCode::FrameTooLarge,
                FrameError::TooLarge { len, max }.to_string(),
            )),
        );
        // An error frame is tiny; it always fits.
        if error.encoded_len() <= max {
            encode_into(buf, &error, max);
        }
        return;
    }
    buf.reserve(LENGTH_PREFIX + len);
    // len <= max <= 64 MiB, so it fits a u32.
    buf.put_u32(len as u32);
    msg.encode_raw(buf);
}

/// Writes answers as they come, several per write, until every sender is gone; then finishes
/// the stream and gives the peer a moment to read it all (closing the connection sooner could
/// drop answers still in flight).
async fn write_responses(mut send: SendStream, mut rx: mpsc::Receiver<BookieResponse>, max: usize) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut buf = BytesMut::new();
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        for msg in batch.drain(..) {
            encode_into(&mut buf, &msg, max);
        }
        let chunk: Bytes = buf.split().freeze();
        if let Err(e) = send.write_all(&chunk).await {
            debug!(error = %e, "answer stream closed by the peer");
            return;
        }
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.stopped()).await;
}
