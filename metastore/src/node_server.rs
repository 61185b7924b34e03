//! The RPC server every clustered metastore node runs: raft traffic from peers, and reads and
//! writes forwarded to it as leader (see [`crate::rpc`]).

use std::net::SocketAddr;

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use strata_transport::handshake::server_handshake;
use strata_transport::{FrameReader, FrameWriter, ServerTls, TransportTuning, server_endpoint};
use tracing::{debug, warn};

use crate::rpc::{
    ALPN_RAFT, MAX_RPC_FRAME, NodeRequest, NodeResponse, RemoteError, WireEvent, WireKv, WirePage,
};
use crate::{MetaError, MetaStore};

/// A running node RPC server.
pub struct NodeServer {
    endpoint: Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl NodeServer {
    pub fn start(listen: SocketAddr, tls: &ServerTls, store: MetaStore) -> Result<Self, MetaError> {
        let endpoint = server_endpoint(listen, tls, ALPN_RAFT, &TransportTuning::default())
            .map_err(|e| MetaError::Storage(format!("starting the node RPC server: {e}")))?;
        let accept = endpoint.clone();
        let task = tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => serve_connection(conn, store).await,
                        Err(e) => debug!(error = %e, "peer connection failed"),
                    }
                });
            }
        });
        Ok(Self { endpoint, task })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops accepting and closes every peer connection.
    pub fn stop(self) {
        self.endpoint.close(
            quinn::VarInt::from_u32(strata_transport::close_code::SHUTDOWN),
            b"metastore node stopping",
        );
        self.task.abort();
    }
}

async fn serve_connection(conn: Connection, store: MetaStore) {
    if let Err(e) = server_handshake(&conn, "strata-metastore", MAX_RPC_FRAME).await {
        debug!(error = %e, "peer handshake failed");
        return;
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_stream(send, recv, store.clone()));
    }
}

async fn serve_stream(send: SendStream, recv: RecvStream, store: MetaStore) {
    let mut writer = FrameWriter::new(send, MAX_RPC_FRAME);
    let mut reader = FrameReader::new(recv, MAX_RPC_FRAME);
    let request: NodeRequest = match reader.recv_raw().await {
        Ok(Some(body)) => match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "undecodable node request");
                writer.reset(strata_transport::close_code::PROTOCOL_VIOLATION);
                return;
            }
        },
        Ok(None) => return,
        Err(e) => {
            debug!(error = %e, "reading node request");
            return;
        }
    };
    if let NodeRequest::Watch {
        prefix,
        from_revision,
    } = request
    {
        serve_watch(writer, &store, &prefix, from_revision).await;
        return;
    }
    let response = handle(&store, request).await;
    match serde_json::to_vec(&response) {
        Ok(body) => {
            if let Err(e) = writer.send_raw(&body).await {
                debug!(error = %e, "writing node response");
            }
            writer.finish();
        }
        Err(e) => warn!(error = %e, "encoding node response"),
    }
}

/// Streams a watch to a remote watcher until it goes away or the store shuts down.
async fn serve_watch(mut writer: FrameWriter, store: &MetaStore, prefix: &str, from: u64) {
    let send = |response: NodeResponse| serde_json::to_vec(&response);
    let mut watcher = match store.watch(prefix, from).await {
        Ok(w) => w,
        Err(e) => {
            if let Ok(body) = send(NodeResponse::WatchStarted(Err(remote(store, e)))) {
                let _ = writer.send_raw(&body).await;
            }
            writer.finish();
            return;
        }
    };
    let start = NodeResponse::WatchStarted(Ok(watcher.next_revision()));
    let Ok(body) = send(start) else { return };
    if writer.send_raw(&body).await.is_err() {
        return;
    }
    while let Some(item) = watcher.next().await {
        let last = item.is_err();
        let response = NodeResponse::WatchEvent(
            item.map(WireEvent::from_event)
                .map_err(|e| remote(store, e)),
        );
        let body = match send(response) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "encoding a watch event");
                return;
            }
        };
        if let Err(e) = writer.send_raw(&body).await {
            debug!(error = %e, "remote watcher went away");
            return;
        }
        if last {
            break;
        }
    }
    writer.finish();
}

/// A failure as the requester sees it; "not leader" carries the leader's address, so a
/// client can go straight there.
fn remote(store: &MetaStore, e: MetaError) -> RemoteError {
    match e {
        MetaError::NotLeader { leader } => {
            let addr = leader.and_then(|id| {
                let metrics = store.raft_metrics();
                let node = metrics.membership_config.membership().get_node(&id);
                node.map(|n| n.addr.clone())
            });
            RemoteError::NotLeader { leader, addr }
        }
        other => RemoteError::from(other),
    }
}

async fn handle(store: &MetaStore, request: NodeRequest) -> NodeResponse {
    let raft = store.raft();
    match request {
        NodeRequest::AppendEntries(r) => NodeResponse::AppendEntries(raft.append_entries(r).await),
        NodeRequest::Vote(r) => NodeResponse::Vote(raft.vote(r).await),
        NodeRequest::InstallSnapshot(r) => {
            NodeResponse::InstallSnapshot(raft.install_snapshot(r).await)
        }
        // Forwarded requests run here only: a node that is not leader says so rather than
        // forwarding again, so a request never travels in circles. Client requests are routed.
        NodeRequest::Write {
            cmd,
            forwarded: true,
        } => NodeResponse::Write(store.propose_here(cmd).await.map_err(|e| remote(store, e))),
        NodeRequest::Write {
            cmd,
            forwarded: false,
        } => NodeResponse::Write(store.propose(cmd).await.map_err(|e| remote(store, e))),
        NodeRequest::Get { key, forwarded } => {
            let result = if forwarded {
                store.get_here(&key).await
            } else {
                store.get(&key).await
            };
            NodeResponse::Get(
                result
                    .map(|kv| kv.map(WireKv::from_key_value))
                    .map_err(|e| remote(store, e)),
            )
        }
        NodeRequest::Scan { prefix, forwarded } => {
            let result = if forwarded {
                store.scan_here(&prefix).await
            } else {
                store.scan(&prefix).await
            };
            NodeResponse::Scan(
                result
                    .map(|kvs| kvs.into_iter().map(WireKv::from_key_value).collect())
                    .map_err(|e| remote(store, e)),
            )
        }
        NodeRequest::LeaseKeepAlive { id, forwarded } => {
            let result = if forwarded {
                store.lease_keep_alive_here(id).await
            } else {
                store.lease_keep_alive(id).await
            };
            NodeResponse::LeaseKeepAlive(
                result
                    .map(|ttl| ttl.as_millis() as u64)
                    .map_err(|e| remote(store, e)),
            )
        }
        NodeRequest::Watch { .. } => NodeResponse::WatchStarted(Err(RemoteError::Failed(
            "a watch is served as a stream".into(),
        ))),
        NodeRequest::ScanPage {
            prefix,
            start_after,
            limit,
            forwarded,
        } => {
            let result = if forwarded {
                store.scan_page_here(&prefix, &start_after, limit).await
            } else {
                store.scan_page(&prefix, &start_after, limit).await
            };
            NodeResponse::ScanPage(
                result
                    .map(|page| WirePage {
                        kvs: page.kvs.into_iter().map(WireKv::from_key_value).collect(),
                        more: page.more,
                    })
                    .map_err(|e| remote(store, e)),
            )
        }
        NodeRequest::ChangeMembership { change, forwarded } => {
            let result = if forwarded {
                store.change_membership_here(change).await
            } else {
                store.change_membership(change).await
            };
            NodeResponse::ChangeMembership(result.map_err(|e| remote(store, e)))
        }
        NodeRequest::ClusterStatus { forwarded } => {
            let result = if forwarded {
                store.status_here().await
            } else {
                store.status().await
            };
            NodeResponse::ClusterStatus(result.map_err(|e| remote(store, e)))
        }
        NodeRequest::LocalView => {
            NodeResponse::LocalView(store.local_view().await.map_err(|e| remote(store, e)))
        }
        NodeRequest::Removed { membership } => {
            store.note_membership(&membership);
            NodeResponse::Removed
        }
    }
}
