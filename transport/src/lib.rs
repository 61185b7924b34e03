//! QUIC transport shared by every Strata service: quinn endpoints over rustls (aws-lc-rs
//! provider only), TLS material, length-prefixed framed streams and the version handshake.
//!
//! One ALPN per service (`strata/1`, `strata-bookie/1`, `strata-meta/1`). A connection's first
//! bidirectional stream is the handshake; every later stream is one session or one
//! request/response exchange.
//!
//! # Layout
//!
//! - [`tls`]: installing the crypto provider, loading PEM files, generating the standalone's
//!   development CA and certificate, client trust (CA roots or loopback-only dev trust).
//! - [`endpoint`]: server and client endpoints and the QUIC transport tuning.
//! - [`framed`]: [`FrameReader`] / [`FrameWriter`] over quinn streams.
//! - [`handshake`]: the `Hello` / `HelloAck` exchange on a connection's first stream.

pub mod endpoint;
pub mod error;
pub mod framed;
pub mod handshake;
pub mod tls;

pub use endpoint::{TransportTuning, client_endpoint, server_endpoint};
pub use error::TransportError;
pub use framed::{FrameReader, FrameWriter};
pub use tls::{ClientTrust, ServerTls, install_crypto_provider};

/// Application close codes used on QUIC connections.
pub mod close_code {
    /// Normal close.
    pub const OK: u32 = 0;
    /// The handshake found no common protocol version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// The peer broke the protocol (bad handshake frame, oversized frame, ...).
    pub const PROTOCOL_VIOLATION: u32 = 2;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 3;
}
