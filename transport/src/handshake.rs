//! The version handshake on a connection's first bidirectional stream.
//!
//! The client sends `Hello`; the server answers `HelloAck` with the agreed version, or closes
//! the connection with [`close_code::INCOMPATIBLE_VERSION`] and the reason as close text, so
//! the client can print exactly why it was refused.

use quinn::Connection;
use strata_proto::handshake::{hello, negotiate};
use strata_proto::pb::common::{Hello, HelloAck};

use crate::{FrameReader, FrameWriter, TransportError, close_code};

/// Client side: returns the server's `HelloAck`.
pub async fn client_handshake(
    conn: &Connection,
    name: &str,
    max_frame_size: usize,
) -> Result<HelloAck, TransportError> {
    let (send, recv) = conn.open_bi().await?;
    let mut writer = FrameWriter::new(send, max_frame_size);
    let mut reader = FrameReader::new(recv, max_frame_size);
    writer.send(&hello(name)).await?;
    writer.finish();
    match reader.recv::<HelloAck>().await {
        Ok(Some(ack)) => Ok(ack),
        Ok(None) => Err(TransportError::Protocol(
            "server ended the handshake without an answer".into(),
        )),
        Err(TransportError::Read(quinn::ReadError::ConnectionLost(e))) => Err(refusal(e)),
        Err(e) => Err(e),
    }
}

fn refusal(e: quinn::ConnectionError) -> TransportError {
    match e {
        quinn::ConnectionError::ApplicationClosed(ref close)
            if close.error_code == quinn::VarInt::from_u32(close_code::INCOMPATIBLE_VERSION) =>
        {
            TransportError::IncompatibleVersion(String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => TransportError::Connection(other),
    }
}

/// Server side: reads the `Hello`, answers, and returns the peer's hello and agreed version.
/// On an incompatible version it closes the connection with the reason and returns the error.
pub async fn server_handshake(
    conn: &Connection,
    name: &str,
    max_frame_size: usize,
) -> Result<(Hello, u32), TransportError> {
    let (send, recv) = conn.accept_bi().await?;
    let mut writer = FrameWriter::new(send, max_frame_size);
    let mut reader = FrameReader::new(recv, max_frame_size);
    let peer: Hello = match reader.recv().await {
        Ok(Some(h)) => h,
        Ok(None) => {
            return Err(protocol_close(
                conn,
                "connection's first stream ended before Hello",
            ));
        }
        Err(e @ TransportError::Frame(_)) => return Err(protocol_close(conn, &e.to_string())),
        Err(e) => return Err(e),
    };
    match negotiate(&peer) {
        Ok(version) => {
            let ack = HelloAck {
                protocol_version: version,
                peer_name: name.to_owned(),
                max_frame_size: max_frame_size as u32,
            };
            writer.send(&ack).await?;
            writer.finish();
            Ok((peer, version))
        }
        Err(e) => {
            let reason = e.to_string();
            conn.close(
                quinn::VarInt::from_u32(close_code::INCOMPATIBLE_VERSION),
                reason.as_bytes(),
            );
            Err(TransportError::IncompatibleVersion(reason))
        }
    }
}

fn protocol_close(conn: &Connection, reason: &str) -> TransportError {
    conn.close(
        quinn::VarInt::from_u32(close_code::PROTOCOL_VIOLATION),
        reason.as_bytes(),
    );
    TransportError::Protocol(reason.to_owned())
}
