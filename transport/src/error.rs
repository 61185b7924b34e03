//! Transport errors: what went wrong on the wire, kept precise so callers can tell cases apart.

use strata_proto::FrameError;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind QUIC endpoint on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("server refused the protocol version: {0}")]
    IncompatibleVersion(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl TransportError {
    /// Whether a new connection attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Connection(_) | Self::Write(_) | Self::Read(_)
        )
    }
}
