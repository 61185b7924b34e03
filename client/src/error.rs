//! Client errors: what the broker said (with its code), or what failed on the way.

use strata_proto::{ErrorCode, WireError};
use strata_transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("no Strata server reachable at {addr} within {timeout_ms} ms")]
    ConnectTimeout { addr: String, timeout_ms: u64 },
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The broker refused the request; `code` says why.
    #[error("{0}")]
    Server(WireError),
    #[error(transparent)]
    InvalidTopicName(#[from] strata_proto::TopicNameError),
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    #[error("the {0} is closed")]
    Closed(&'static str),
}

impl ClientError {
    /// The broker's error code, if the broker refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server(e) => Some(e.code),
            _ => None,
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Server(e) => e.code.is_retryable(),
            Self::Transport(t) => t.is_retryable(),
            Self::ConnectTimeout { .. } => true,
            _ => false,
        }
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        Self::Server(e)
    }
}
