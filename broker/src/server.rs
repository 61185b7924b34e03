//! The broker's QUIC server: connection handshake, then one task per stream.
//!
//! A stream's first frame says what it is: an admin request (answered, then the stream is
//! finished), a producer session or a consumer session. An error in one stream ends that
//! stream with an error frame; the connection and its other streams go on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message as _;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use strata_proto::pb::client::{
    AckReceipt, AdminRequest, AdminResponse, ClientFrame, ConsumerOpen, ConsumerReady, Done,
    InitialPosition, ProducerOpen, ProducerReady, SendReceipt, ServerFrame, SubscriptionType,
    TopicList, TopicStatsReply, admin_request, admin_response, client_frame, server_frame,
};
use strata_proto::{ErrorCode, MessageId, NamespaceName, Position, TopicName, WireError};
use strata_transport::handshake::server_handshake;
use strata_transport::{
    FrameReader, FrameWriter, ServerTls, TransportError, TransportTuning, close_code,
    server_endpoint,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::BrokerError;
use crate::managed_ledger::PendingAppend;
use crate::metrics::BrokerMetrics;
use crate::service::BrokerService;
use crate::subscription::{
    ConsumerOptions, DEFAULT_MAX_REDELIVERY_DELAY, DEFAULT_REDELIVERY_DELAY, Subscription,
};
use crate::subscription_admin;
use crate::topic::{Published, Topic};

/// Ack receipts a consumer session may have outstanding before it stops reading acks.
const MAX_PENDING_ACK_RECEIPTS: usize = 1024;

/// Frames queued towards one consumer before the dispatcher waits.
const CONSUMER_QUEUE: usize = 64;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_frame_size: usize,
    pub tuning: TransportTuning,
}

/// A running QUIC server.
pub struct BrokerServer {
    endpoint: Endpoint,
    shutdown: CancellationToken,
    accept_task: tokio::task::JoinHandle<()>,
}

impl BrokerServer {
    pub fn start(
        service: Arc<BrokerService>,
        config: ServerConfig,
        tls: &ServerTls,
    ) -> Result<Self, TransportError> {
        let endpoint = server_endpoint(
            config.listen,
            tls,
            strata_proto::ALPN_CLIENT,
            &config.tuning,
        )?;
        let shutdown = CancellationToken::new();
        let accept_task = tokio::spawn(accept_loop(
            endpoint.clone(),
            service,
            config,
            shutdown.clone(),
        ));
        Ok(Self {
            endpoint,
            shutdown,
            accept_task,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops accepting, closes connections and waits for the endpoint to go idle.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.endpoint.close(
            quinn::VarInt::from_u32(close_code::SHUTDOWN),
            b"broker shutting down",
        );
        let _ = self.accept_task.await;
        self.endpoint.wait_idle().await;
    }
}

async fn accept_loop(
    endpoint: Endpoint,
    service: Arc<BrokerService>,
    config: ServerConfig,
    shutdown: CancellationToken,
) {
    let next_conn = AtomicU64::new(1);
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            _ = shutdown.cancelled() => return,
        };
        let id = next_conn.fetch_add(1, Ordering::Relaxed);
        let service = service.clone();
        let max = config.max_frame_size;
        let span = info_span!("conn", conn = id, peer = %incoming.remote_address());
        tokio::spawn(
            async move {
                match incoming.await {
                    Ok(conn) => serve_connection(conn, service, max).await,
                    Err(e) => debug!(error = %e, "connection attempt failed"),
                }
            }
            .instrument(span),
        );
    }
}

async fn serve_connection(conn: Connection, service: Arc<BrokerService>, max_frame_size: usize) {
    match server_handshake(&conn, "strata-broker", max_frame_size).await {
        Ok((hello, version)) => debug!(client = %hello.peer_name, version, "handshake done"),
        Err(e) => {
            info!(error = %e, "handshake refused");
            return;
        }
    }
    BrokerMetrics::add(&service.metrics.connections, 1);
    let next_session = AtomicU64::new(1);
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(reason = %e, "connection closed");
                break;
            }
        };
        let session = next_session.fetch_add(1, Ordering::Relaxed);
        let service = service.clone();
        tokio::spawn(serve_stream(send, recv, service, max_frame_size, session).in_current_span());
    }
    BrokerMetrics::sub(&service.metrics.connections, 1);
}

fn error_frame(e: &WireError) -> ServerFrame {
    ServerFrame {
        frame: Some(server_frame::Frame::Error(e.clone().into())),
    }
}

async fn serve_stream(
    send: SendStream,
    recv: RecvStream,
    service: Arc<BrokerService>,
    max: usize,
    session: u64,
) {
    let mut writer = FrameWriter::new(send, max);
    let mut reader = FrameReader::new(recv, max);
    let first = match reader.recv::<ClientFrame>().await {
        Ok(Some(f)) => f.frame,
        Ok(None) => return,
        Err(e) => {
            let _ = fail(&mut writer, &stream_error(e)).await;
            return;
        }
    };
    let result = match first {
        Some(client_frame::Frame::Admin(req)) => {
            let resp = handle_admin(&service, req).await;
            writer
                .send(&ServerFrame {
                    frame: Some(server_frame::Frame::Admin(resp)),
                })
                .await
                .map_err(|e| e.to_string())
        }
        Some(client_frame::Frame::ProducerOpen(open)) => {
            producer_session(&service, open, max, &mut writer, &mut reader).await
        }
        Some(client_frame::Frame::ConsumerOpen(open)) => {
            consumer_session(&service, open, max, writer, reader, session).await
        }
        Some(client_frame::Frame::CheckerOpen(open)) => {
            checker_session(&service, open, &mut writer, &mut reader).await
        }
        other => {
            let wire = WireError::new(
                ErrorCode::ProtocolViolation,
                format!("stream must start with an admin request or a session open, got {other:?}"),
            );
            fail(&mut writer, &wire).await
        }
    };
    if let Err(e) = result {
        debug!(session, error = %e, "stream ended with an error");
    }
}

/// A producer group's checker: passes it the coordinator's questions about the group's
/// prepared transactions until the client closes the stream.
async fn checker_session(
    service: &Arc<BrokerService>,
    open: strata_proto::pb::client::TxnCheckerOpen,
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
) -> Result<(), String> {
    if open.group.is_empty() {
        let wire = WireError::new(ErrorCode::ProtocolViolation, "a checker needs a group");
        return fail(writer, &wire).await;
    }
    let (session, mut questions) = service.checkers.add(&open.group, &open.client_id);
    let outcome = async {
        loop {
            tokio::select! {
                question = questions.recv() => {
                    let Some(txn) = question else { return Ok(()) };
                    let check = strata_proto::pb::client::TxnCheck { txn_id: txn.0 };
                    writer
                        .send(&ServerFrame {
                            frame: Some(server_frame::Frame::TxnCheck(check)),
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                }
                // The client sends nothing more: the stream ending ends the session.
                frame = reader.recv::<ClientFrame>() => {
                    if !matches!(frame, Ok(Some(_))) {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    service.checkers.remove(&open.group, session);
    outcome
}

async fn handle_admin(service: &BrokerService, req: AdminRequest) -> AdminResponse {
    let result: Result<admin_response::Response, BrokerError> = async {
        match req.request {
            Some(admin_request::Request::CreateTopic(c)) => {
                service.create_topic(&TopicName::parse(&c.topic)?).await?;
                Ok(admin_response::Response::Done(Done {}))
            }
            Some(admin_request::Request::DeleteTopic(d)) => {
                let topic = TopicName::parse(&d.topic)?;
                if d.partition {
                    service.delete_topic_or_partition(&topic).await?;
                } else {
                    service.delete_topic(&topic).await?;
                }
                Ok(admin_response::Response::Done(Done {}))
            }
            Some(admin_request::Request::ListTopics(l)) => {
                let ns: NamespaceName = if l.namespace.is_empty() {
                    "public/default".parse()?
                } else {
                    l.namespace.parse()?
                };
                Ok(admin_response::Response::Topics(TopicList {
                    topics: service.list_topics(&ns).await?,
                    partitioned: service.list_partitioned_topics(&ns).await?,
                }))
            }
            Some(admin_request::Request::TopicStats(s)) => {
                let name = TopicName::parse(&s.topic)?;
                let topic = service.topic(&name, false).await?;
                let (entries, size_bytes, ledgers) = topic.managed_ledger().stats();
                let mut subscriptions = Vec::new();
                for sub_name in topic.subscription_names().await? {
                    let sub = topic
                        .subscription(&sub_name, InitialPosition::Earliest)
                        .await?;
                    let st = sub.stats().await;
                    subscriptions.push(strata_proto::pb::client::SubscriptionStats {
                        name: sub_name,
                        mark_delete: st.mark_delete.map(|p| MessageId::at(p, 0).into()),
                        backlog_entries: st.backlog_entries,
                        sub_type: st.sub_type as i32,
                        consumers: st.consumers,
                        unacked: st.unacked,
                        redelivering: st.redelivering,
                        dispatch_rate_msgs: sub.dispatched.rate(),
                    });
                }
                Ok(admin_response::Response::Stats(TopicStatsReply {
                    topic: name.to_string(),
                    entries,
                    ledgers,
                    size_bytes,
                    subscriptions,
                    publish_rate_msgs: topic.published_msgs.rate(),
                    publish_rate_bytes: topic.published_bytes.rate(),
                }))
            }
            Some(admin_request::Request::Lookup(l)) => {
                let owner = service.lookup(&TopicName::parse(&l.topic)?).await?;
                Ok(admin_response::Response::Lookup(
                    strata_proto::pb::client::LookupReply {
                        broker_id: owner.broker_id.0,
                        address: owner.address,
                    },
                ))
            }
            Some(admin_request::Request::CreateNamespace(c)) => {
                let ns: NamespaceName = c.namespace.parse()?;
                service
                    .create_namespace(&ns, &crate::admin::policies_from(&c)?)
                    .await?;
                Ok(admin_response::Response::Done(Done {}))
            }
            Some(admin_request::Request::UpdateNamespace(c)) => {
                let ns: NamespaceName = c.namespace.parse()?;
                service
                    .update_namespace(&ns, |p| {
                        if c.bundles.is_some() {
                            // Re-cutting bundles would move loaded topics between owners.
                            return Err(BrokerError::InvalidPolicy(
                                "bundles are changed with split-bundle, not an update".into(),
                            ));
                        }
                        crate::admin::apply_changes(p, &c)
                    })
                    .await?;
                Ok(admin_response::Response::Done(Done {}))
            }
            Some(admin_request::Request::ListNamespaces(l)) => Ok(
                admin_response::Response::Namespaces(strata_proto::pb::client::NamespaceList {
                    namespaces: service.list_namespaces(&l.tenant).await?,
                }),
            ),
            Some(admin_request::Request::DeleteNamespace(d)) => {
                service.delete_namespace(&d.namespace.parse()?).await?;
                Ok(admin_response::Response::Done(Done {}))
            }
            Some(admin_request::Request::GetNamespace(g)) => {
                let ns: NamespaceName = g.namespace.parse()?;
                let policies = service.namespace(&ns).await?;
                Ok(admin_response::Response::Namespace(
                    strata_proto::pb::client::NamespaceInfo {
                        namespace: ns.to_string(),
                        policies_json: crate::admin::policies_json(&policies),
                    },
                ))
            }
            Some(admin_request::Request::NamespaceBundles(n)) => {
                let ns: NamespaceName = n.namespace.parse()?;
                let bundles = service
                    .namespace_bundles(&ns)
                    .await?
                    .into_iter()
                    .map(|(bundle, owner)| strata_proto::pb::client::BundleInfo {
                        range: bundle.range.to_string(),
                        owner_id: owner
                            .as_ref()
                            .map(|o| o.broker_id.0.clone())
                            .unwrap_or_default(),
                        owner_address: owner.map(|o| o.address).unwrap_or_default(),
                    })
                    .collect();
                Ok(admin_response::Response::Bundles(
                    strata_proto::pb::client::BundleList { bundles },
                ))
            }
            Some(admin_request::Request::SplitBundle(u)) => {
                let bundle = strata_metastore::tables::NamespaceBundle {
                    namespace: u.namespace.parse()?,
                    range: u.range.parse().map_err(BrokerError::InvalidPolicy)?,
                };
                service.split_bundle(&bundle).await?;
                Ok(admin_response::Response::Done(Done {}))
            }
            Some(admin_request::Request::UnloadBundle(u)) => {
                let bundle = strata_metastore::tables::NamespaceBundle {
                    namespace: u.namespace.parse()?,
                    range: u.range.parse().map_err(BrokerError::Protocol)?,
                };
                service.unload_bundle(&bundle).await?;
                Ok(admin_response::Response::Done(Done {}))
            }
            Some(admin_request::Request::ListSubscriptions(r)) => {
                subscription_admin::list(service, r).await
            }
            Some(admin_request::Request::ResetCursor(r)) => {
                subscription_admin::reset(service, r).await
            }
            Some(admin_request::Request::PeekMessages(r)) => {
                subscription_admin::peek(service, r).await
            }
            Some(admin_request::Request::SkipMessages(r)) => {
                subscription_admin::skip(service, r).await
            }
            Some(admin_request::Request::CreatePartitionedTopic(c)) => {
                let topic = TopicName::parse(&c.topic)?;
                service
                    .create_partitioned_topic(&topic, c.partitions)
                    .await?;
                Ok(admin_response::Response::Done(Done {}))
            }
            Some(admin_request::Request::DeletePartitionedTopic(d)) => {
                let topic = TopicName::parse(&d.topic)?;
                service.delete_partitioned_topic(&topic).await?;
                Ok(admin_response::Response::Done(Done {}))
            }
            Some(admin_request::Request::PartitionedTopicMetadata(m)) => {
                let topic = TopicName::parse(&m.topic)?;
                let partitions = service.partitions_of(&topic).await?;
                Ok(admin_response::Response::Partitioned(
                    strata_proto::pb::client::PartitionedTopicInfo {
                        topic: topic.to_string(),
                        partitions,
                    },
                ))
            }
            Some(admin_request::Request::CreateTenant(c)) => {
                service.create_tenant(&c.tenant, c.admin_roles).await?;
                Ok(admin_response::Response::Done(Done {}))
            }
            Some(admin_request::Request::ListTenants(_)) => Ok(admin_response::Response::Tenants(
                strata_proto::pb::client::TenantList {
                    tenants: service.list_tenants().await?,
                },
            )),
            Some(admin_request::Request::DeleteTenant(d)) => {
                service.delete_tenant(&d.tenant).await?;
                Ok(admin_response::Response::Done(Done {}))
            }
            Some(admin_request::Request::BeginTxn(r)) => crate::txn_admin::begin(service, r).await,
            Some(admin_request::Request::EndTxn(r)) => crate::txn_admin::end(service, r).await,
            Some(admin_request::Request::GetTxn(r)) => {
                crate::txn_admin::get(service, r.txn_id).await
            }
            Some(admin_request::Request::ListTxns(r)) => {
                crate::txn_admin::list(service, r.open_only).await
            }
            Some(admin_request::Request::InitTxnProducer(r)) => {
                crate::txn_admin::init_producer(service, r).await
            }
            Some(admin_request::Request::PrepareTxn(r)) => {
                crate::txn_admin::prepare(service, r).await
            }
            None => Err(BrokerError::Protocol("empty admin request".into())),
        }
    }
    .await;
    AdminResponse {
        response: Some(
            result.unwrap_or_else(|e| admin_response::Response::Error(e.to_wire().into())),
        ),
    }
}

async fn producer_session(
    service: &Arc<BrokerService>,
    open: ProducerOpen,
    max_frame_size: usize,
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
) -> Result<(), String> {
    let topic = match open_topic(service, &open.topic).await {
        Ok(t) => t,
        Err(e) => return fail(writer, &e.to_wire()).await,
    };
    if let Some(e) = topic.quota_refusal() {
        return fail(writer, &e.to_wire()).await;
    }
    let client_id = open.client_id;
    let name = if open.producer_name.is_empty() {
        generated_producer_name()
    } else {
        open.producer_name
    };
    // Taken before the last stored id is read: a failure after it ends this session.
    let session = topic.producer_session();
    let last_sequence_id = match topic.last_sequence_id(&name).await {
        Ok(id) => id,
        Err(e) => return fail(writer, &e.to_wire()).await,
    };
    let ready = ProducerReady {
        producer_name: name.clone(),
        last_sequence_id,
    };
    writer
        .send(&ServerFrame {
            frame: Some(server_frame::Frame::ProducerReady(ready)),
        })
        .await
        .map_err(|e| e.to_string())?;
    BrokerMetrics::add(&service.metrics.producers, 1);
    let span = info_span!("producer", topic = %topic.name(), producer = %name);
    // Receipts are written by their own task, in order, as entries become durable.
    let (receipts_tx, mut receipts_rx) =
        mpsc::channel::<(SentBatch, Result<Published, BrokerError>)>(4096);
    let receipt_writer = async {
        // Once the session is ending (a receipt could not be written, or a batch was not
        // stored), nothing more is taken in, but every batch already handed to the log is
        // still followed to its end: the dedup marks it as durable (or the state as stale),
        // or a resend on the next session would be answered "in flight" for ever.
        let mut ending: Option<String> = None;
        while let Some((sent, published)) = receipts_rx.recv().await {
            let SentBatch {
                sequence_id, count, ..
            } = sent;
            let receipt = match published {
                Ok(Published::Stored(fut)) => {
                    match settle_stored(service, &topic, &name, sent, fut).await {
                        Ok(pos) => SendReceipt {
                            sequence_id,
                            message_id: Some(MessageId::at(pos, 0).into()),
                            count,
                            error: None,
                            duplicate: false,
                        },
                        Err(e) => failed_receipt(service, sequence_id, &e),
                    }
                }
                Ok(Published::Duplicate(pos)) => {
                    BrokerMetrics::add(&service.metrics.duplicates, 1);
                    SendReceipt {
                        sequence_id,
                        message_id: pos.map(|p| MessageId::at(p, 0).into()),
                        count,
                        error: None,
                        duplicate: true,
                    }
                }
                Err(e) => failed_receipt(service, sequence_id, &e),
            };
            if ending.is_some() {
                continue;
            }
            let failed = receipt.error.is_some();
            let sent = writer
                .send(&ServerFrame {
                    frame: Some(server_frame::Frame::Receipt(receipt)),
                })
                .await;
            if let Err(e) = sent {
                ending = Some(e.to_string());
            } else if failed {
                // Stop at the first batch not stored, so what this producer stored is an
                // in-order prefix of what it sent; the client resends the rest on a new
                // session (or fails it, if the error is not one to retry).
                ending = Some("a batch could not be stored; producer session ended".to_owned());
            }
            if ending.is_some() {
                receipts_rx.close();
            }
        }
        ending.map_or(Ok(()), Err)
    };
    // Owns the receipt sender: when reading ends, the receipt writer drains and ends too.
    let (topic, name, client_id) = (&topic, &name, &client_id);
    let frame_reader = async move {
        loop {
            let frame = match reader.recv::<ClientFrame>().await {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(stream_error(e)),
            };
            match frame.frame {
                Some(client_frame::Frame::Send(batch)) => {
                    // Every message must fit in a Delivery frame later, with its id and
                    // producer name added: refuse what could never be delivered.
                    let overhead = name.len() + 128;
                    if let Some(m) = batch
                        .messages
                        .iter()
                        .find(|m| m.encoded_len() + overhead > max_frame_size)
                    {
                        return Err(WireError::new(
                            ErrorCode::FrameTooLarge,
                            format!(
                                "message of {} bytes cannot be delivered within the {max_frame_size}-byte frame limit",
                                m.encoded_len()
                            ),
                        ));
                    }
                    let count = batch.messages.len() as u32;
                    let bytes: u64 = batch.messages.iter().map(|m| m.payload.len() as u64).sum();
                    // A malformed start refuses the batch, as any refusal of it would.
                    let published = match crate::txn_admin::start_from_wire(batch.txn_start) {
                        Ok(start) => {
                            let txn = (batch.txn_id != 0).then_some(crate::topic::TxnWrite {
                                id: strata_proto::TxnId(batch.txn_id),
                                client: client_id.as_str(),
                                start: start.as_ref(),
                            });
                            topic
                                .publish(session, name, batch.sequence_id, batch.messages, txn)
                                .await
                        }
                        Err(e) => Err(e),
                    };
                    let refused = published.is_err();
                    let sent = SentBatch {
                        sequence_id: batch.sequence_id,
                        count,
                        bytes,
                    };
                    if let Err(mpsc::error::SendError((sent, published))) =
                        receipts_tx.send((sent, published)).await
                    {
                        // The session is ending: no receipt goes out, but a batch handed to
                        // the log is still followed to its end (see the receipt writer).
                        if let Ok(Published::Stored(fut)) = published {
                            let _ = settle_stored(service, topic, name, sent, fut).await;
                        }
                        return Ok(());
                    }
                    if refused {
                        // After a refused batch, none of the later ones may be stored (a
                        // resend of the refused one would be taken for a duplicate of them):
                        // the receipt writer ends the session at the refusal.
                        return Ok(());
                    }
                }
                other => {
                    return Err(WireError::new(
                        ErrorCode::ProtocolViolation,
                        format!("producer stream expects SendBatch frames, got {other:?}"),
                    ));
                }
            }
        }
    };
    let (read_result, write_result) = async { tokio::join!(frame_reader, receipt_writer) }
        .instrument(span)
        .await;
    BrokerMetrics::sub(&service.metrics.producers, 1);
    // Receipts for everything accepted before a bad frame were written; then say why we stop.
    match read_result {
        Err(wire) if write_result.is_ok() => fail(writer, &wire).await,
        Err(wire) => Err(wire.to_string()),
        Ok(()) => {
            writer.finish();
            write_result
        }
    }
}

/// The wire error for a stream that could not be read.
fn stream_error(e: TransportError) -> WireError {
    match &e {
        TransportError::Frame(strata_proto::FrameError::TooLarge { .. }) => {
            WireError::new(ErrorCode::FrameTooLarge, e.to_string())
        }
        TransportError::Frame(_) => WireError::new(ErrorCode::MalformedFrame, e.to_string()),
        _ => WireError::new(ErrorCode::Unknown, e.to_string()),
    }
}

/// A batch a producer sent: its sequence id, and its message and payload-byte counts for
/// the metrics.
#[derive(Debug, Clone, Copy)]
struct SentBatch {
    sequence_id: u64,
    count: u32,
    bytes: u64,
}

/// Waits for a batch handed to the log to become durable, then records it in the dedup
/// state and the metrics; a failure leaves the dedup state to be rebuilt from the log.
async fn settle_stored(
    service: &BrokerService,
    topic: &Topic,
    producer_name: &str,
    batch: SentBatch,
    stored: PendingAppend,
) -> Result<Position, BrokerError> {
    match stored.await {
        Ok(pos) => {
            topic.persisted(producer_name, batch.sequence_id, pos).await;
            topic.published_msgs.add(u64::from(batch.count));
            topic.published_bytes.add(batch.bytes);
            BrokerMetrics::add(&service.metrics.entries_in, 1);
            BrokerMetrics::add(&service.metrics.messages_in, u64::from(batch.count));
            BrokerMetrics::add(&service.metrics.bytes_in, batch.bytes);
            Ok(pos)
        }
        Err(e) => {
            topic.publish_failed().await;
            Err(e)
        }
    }
}

fn failed_receipt(service: &BrokerService, sequence_id: u64, e: &BrokerError) -> SendReceipt {
    warn!(sequence_id, error = %e, "batch not stored");
    BrokerMetrics::add(&service.metrics.publish_errors, 1);
    SendReceipt {
        sequence_id,
        message_id: None,
        count: 0,
        error: Some(e.to_wire().into()),
        duplicate: false,
    }
}

/// A name for a producer that brought none. Dedup state is kept per name for as long as the
/// topic lives, so the name must never be handed out again, by any broker: a clock reading in
/// nanoseconds plus a per-process counter makes a collision practically impossible.
fn generated_producer_name() -> String {
    static NEXT_PRODUCER: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "strata-{nanos:x}-{}-{}",
        std::process::id(),
        NEXT_PRODUCER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn open_topic(
    service: &BrokerService,
    name: &str,
) -> Result<Arc<crate::topic::Topic>, BrokerError> {
    let name = TopicName::parse(name)?;
    service.topic(&name, true).await
}

async fn fail(writer: &mut FrameWriter, e: &WireError) -> Result<(), String> {
    let _ = writer.send(&error_frame(e)).await;
    writer.finish();
    Err(e.to_string())
}

/// What the consumer asked for, with the broker's defaults for what it left unset.
fn consumer_options(open: &ConsumerOpen, max_frame_size: usize) -> ConsumerOptions {
    let ms = |v: u64| (v > 0).then(|| std::time::Duration::from_millis(v));
    ConsumerOptions {
        sub_type: SubscriptionType::try_from(open.sub_type).unwrap_or(SubscriptionType::Exclusive),
        name: open.consumer_name.clone(),
        max_frame_size,
        ack_timeout: ms(open.ack_timeout_ms),
        redelivery_delay: ms(open.redelivery_delay_ms).unwrap_or(DEFAULT_REDELIVERY_DELAY),
        max_redelivery_delay: ms(open.max_redelivery_delay_ms)
            .unwrap_or(DEFAULT_MAX_REDELIVERY_DELAY),
        read_uncommitted: open.read_uncommitted,
    }
}

async fn consumer_session(
    service: &Arc<BrokerService>,
    open: ConsumerOpen,
    max_frame_size: usize,
    mut writer: FrameWriter,
    mut reader: FrameReader,
    session: u64,
) -> Result<(), String> {
    let initial =
        InitialPosition::try_from(open.initial_position).unwrap_or(InitialPosition::Latest);
    // Checked before anything is created for it.
    if open.subscription.is_empty() || open.subscription.contains('/') {
        return fail(
            &mut writer,
            &WireError::new(
                ErrorCode::ProtocolViolation,
                "subscription name must be non-empty and contain no '/'",
            ),
        )
        .await;
    }
    let sub: Arc<Subscription> = match open_topic(service, &open.topic).await {
        Ok(topic) => match topic.subscription(&open.subscription, initial).await {
            Ok(s) => s,
            Err(e) => return fail(&mut writer, &e.to_wire()).await,
        },
        Err(e) => return fail(&mut writer, &e.to_wire()).await,
    };
    static NEXT_CONSUMER: AtomicU64 = AtomicU64::new(1);
    let consumer_id = NEXT_CONSUMER.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<ServerFrame>(CONSUMER_QUEUE);
    let options = consumer_options(&open, max_frame_size);
    if let Err(e) = sub.attach(consumer_id, tx.clone(), options).await {
        return fail(&mut writer, &e.to_wire()).await;
    }
    BrokerMetrics::add(&service.metrics.consumers, 1);
    let _ = tx
        .send(ServerFrame {
            frame: Some(server_frame::Frame::ConsumerReady(ConsumerReady {})),
        })
        .await;
    let metrics = &service.metrics;
    let frame_writer = async move {
        while let Some(frame) = rx.recv().await {
            if let Some(server_frame::Frame::Delivery(d)) = &frame.frame {
                BrokerMetrics::add(&metrics.messages_out, d.messages.len() as u64);
            }
            let fatal = matches!(frame.frame, Some(server_frame::Frame::Error(_)));
            if let Err(e) = writer.send(&frame).await {
                warn!(error = %e, "consumer stream write failed");
                break;
            }
            if fatal {
                break;
            }
        }
        writer.finish();
    };
    let receipt_slots = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_ACK_RECEIPTS));
    let frame_reader = async {
        loop {
            let frame = match reader.recv::<ClientFrame>().await {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let wire = stream_error(e);
                    let _ = tx.send(error_frame(&wire)).await;
                    return Err(wire.to_string());
                }
            };
            match frame.frame {
                Some(client_frame::Frame::Flow(f)) => sub.add_permits(consumer_id, f.permits).await,
                Some(client_frame::Frame::Nack(nack)) => {
                    let ids = nack.message_ids.into_iter().map(MessageId::from).collect();
                    if let Err(e) = sub.negative_ack(consumer_id, ids).await {
                        // Like a failed ack without a receipt: reported, the session goes on.
                        let receipt = AckReceipt {
                            request_id: 0,
                            error: Some(e.to_wire().into()),
                        };
                        let _ = tx
                            .send(ServerFrame {
                                frame: Some(server_frame::Frame::AckReceipt(receipt)),
                            })
                            .await;
                    }
                }
                Some(client_frame::Frame::Ack(ack)) if ack.txn_id != 0 => {
                    // Acks in a transaction: durable in the metastore when this returns.
                    let ids = ack.message_ids.into_iter().map(MessageId::from).collect();
                    let outcome = match crate::txn_admin::start_from_wire(ack.txn_start) {
                        Ok(start) => {
                            let write = crate::topic::TxnWrite {
                                id: strata_proto::TxnId(ack.txn_id),
                                client: &open.client_id,
                                start: start.as_ref(),
                            };
                            sub.apply_txn_acks(
                                consumer_id,
                                write,
                                ids,
                                ack.cumulative,
                                &service.txns,
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    };
                    let receipt = AckReceipt {
                        request_id: ack.request_id,
                        error: outcome.err().map(|e| e.to_wire().into()),
                    };
                    let _ = tx
                        .send(ServerFrame {
                            frame: Some(server_frame::Frame::AckReceipt(receipt)),
                        })
                        .await;
                }
                Some(client_frame::Frame::Ack(ack)) => {
                    let ids = ack.message_ids.into_iter().map(MessageId::from).collect();
                    let outcome = sub.apply_acks(consumer_id, ids, ack.cumulative).await;
                    let request_id = ack.request_id;
                    if request_id == 0 && outcome.is_ok() {
                        continue;
                    }
                    let (sub, tx) = (sub.clone(), tx.clone());
                    // Bounded: a client that sends acks but never reads its answers is slowed
                    // down here instead of piling up tasks.
                    let Ok(permit) = receipt_slots.clone().acquire_owned().await else {
                        return Ok(());
                    };
                    // Waiting for durability must not hold up reading the next frames.
                    tokio::spawn(async move {
                        let _permit = permit;
                        let outcome = match outcome {
                            Ok(seq) => sub.wait_durable(seq).await,
                            Err(e) => Err(e),
                        };
                        let receipt = AckReceipt {
                            request_id,
                            error: outcome.err().map(|e| e.to_wire().into()),
                        };
                        let _ = tx
                            .send(ServerFrame {
                                frame: Some(server_frame::Frame::AckReceipt(receipt)),
                            })
                            .await;
                    });
                }
                other => {
                    return Err(format!(
                        "consumer stream expects Flow, Ack or Nack frames, got {other:?}"
                    ));
                }
            }
        }
    };
    let span = info_span!("consumer", subscription = %open.subscription, session);
    tokio::pin!(frame_writer);
    let (result, writer_done) = async {
        tokio::select! {
            r = frame_reader => (r, false),
            _ = &mut frame_writer => (Ok(()), true),
        }
    }
    .instrument(span)
    .await;
    sub.detach(consumer_id).await;
    drop(tx);
    if !writer_done {
        // Let the writer flush what is queued (an error frame included) once every sender is gone.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), frame_writer).await;
    }
    BrokerMetrics::sub(&service.metrics.consumers, 1);
    result
}
