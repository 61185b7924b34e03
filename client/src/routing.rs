//! Topic routing: any broker answers a lookup with the broker that owns the topic's bundle;
//! sessions for the topic are opened there, on a connection kept per broker. A broker that
//! no longer owns the topic answers `NotOwner`, and the session is looked up again.

use std::net::SocketAddr;

use strata_proto::pb::client::{ClientFrame, Lookup, ServerFrame, admin_request, admin_response};
use strata_proto::{ErrorCode, TopicName};
use strata_transport::{FrameReader, FrameWriter};

use crate::connection::{self, next_frame, open_stream};
use crate::{Client, ClientError};

/// Lookups and redirects a session open tries before giving up.
const MAX_REDIRECTS: usize = 5;

/// The broker serving a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOwner {
    pub broker_id: String,
    pub address: String,
}

impl Client {
    /// Which broker serves `topic` (any broker answers).
    pub async fn lookup(&self, topic: &str) -> Result<TopicOwner, ClientError> {
        let topic = TopicName::parse(topic)?;
        match self
            .admin(admin_request::Request::Lookup(Lookup {
                topic: topic.to_string(),
            }))
            .await?
        {
            admin_response::Response::Lookup(l) => Ok(TopicOwner {
                broker_id: l.broker_id,
                address: l.address,
            }),
            other => Err(ClientError::Protocol(format!(
                "expected a lookup reply, got {other:?}"
            ))),
        }
    }

    /// The connection to `address`: the first one if it is that broker's, else one opened
    /// (once) with the same options.
    pub(crate) async fn connection_to(
        &self,
        address: &str,
    ) -> Result<quinn::Connection, ClientError> {
        let first = self.service_connection().await?;
        if address.parse::<SocketAddr>().ok() == Some(first.remote_address()) {
            return Ok(first);
        }
        let mut pool = self.inner.pool.lock().await;
        if let Some(c) = pool.get(address)
            && c.connection.close_reason().is_none()
        {
            return Ok(c.connection.clone());
        }
        let mut options = self.inner.options.clone();
        options.url = format!("quic://{address}");
        let connected = connection::connect(&options).await?;
        let conn = connected.connection.clone();
        pool.insert(address.to_owned(), connected);
        Ok(conn)
    }

    /// Opens a session stream for `topic` on the broker that owns it and returns it with the
    /// broker's first answer, following lookups while brokers answer `NotOwner`.
    pub(crate) async fn open_session(
        &self,
        topic: &str,
        first: &ClientFrame,
    ) -> Result<(FrameWriter, FrameReader, ServerFrame), ClientError> {
        let max = self.max_frame_size();
        let mut last = None;
        for _ in 0..MAX_REDIRECTS {
            let owner = self.lookup(topic).await?;
            let conn = self.connection_to(&owner.address).await?;
            let (writer, mut reader) = open_stream(&conn, first, max).await?;
            match next_frame(&mut reader).await {
                Ok(Some(frame)) => return Ok((writer, reader, frame)),
                Ok(None) => {
                    return Err(ClientError::Protocol(
                        "stream ended before the session was ready".into(),
                    ));
                }
                Err(e) if e.code() == Some(ErrorCode::NotOwner) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ClientError::Closed("session")))
    }
}
