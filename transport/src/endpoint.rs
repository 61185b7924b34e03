//! QUIC endpoints with Strata's transport tuning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, VarInt};

use crate::tls::provider;
use crate::{ClientTrust, ServerTls, TransportError};

/// Flow-control windows and timeouts. The defaults are sized for throughput: a producer
/// stream must keep several MiB in flight to fill a disk's bandwidth at loopback round trips
/// (small windows such as 100 KB cap a stream at window / RTT).
#[derive(Debug, Clone)]
pub struct TransportTuning {
    pub stream_receive_window: u32,
    pub connection_receive_window: u32,
    pub send_window: u64,
    pub max_concurrent_bidi_streams: u32,
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            stream_receive_window: 16 * 1024 * 1024,
            connection_receive_window: 64 * 1024 * 1024,
            send_window: 64 * 1024 * 1024,
            max_concurrent_bidi_streams: 4096,
            // A peer killed without closing its connection (kill -9, a host gone) is noticed
            // after idle_timeout: short enough for failover to follow a broker's lease.
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

impl TransportTuning {
    fn quinn_config(&self) -> Result<quinn::TransportConfig, TransportError> {
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.connection_receive_window))
            .send_window(self.send_window)
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(
                self.idle_timeout
                    .try_into()
                    .map_err(|_| TransportError::Tls("idle timeout too large".into()))?,
            ));
        Ok(t)
    }
}

/// A server endpoint bound to `addr` (port 0 picks a free port) speaking `alpn`.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: &ServerTls,
    alpn: &[u8],
    tuning: &TransportTuning,
) -> Result<Endpoint, TransportError> {
    let mut rustls_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(tls.cert_chain.clone(), tls.key.clone_key())
        .map_err(|e| TransportError::Tls(format!("server certificate/key: {e}")))?;
    rustls_config.alpn_protocols = vec![alpn.to_vec()];
    rustls_config.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(rustls_config)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(tuning.quinn_config()?));
    let bind = |source| TransportError::Bind { addr, source };
    let socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| bind(std::io::Error::other("no tokio runtime")))?;
    let local = socket.local_addr().map_err(bind)?;
    Endpoint::new(reset_config(tls, local), Some(config), socket, runtime).map_err(bind)
}

/// The endpoint's keys for stateless resets, derived from its TLS private key: a server
/// restarted with the same key (on the same address) recognises its former connections' ids
/// and resets them at their next packet, so their clients reconnect at once instead of after
/// the idle timeout. (quinn's defaults, random keys per process, make the new process drop
/// those packets as garbage and its resets unrecognisable.) The HMAC is one-way: neither key
/// reveals anything of the private key. The bound address and the host's name go into the
/// keys too, so servers sharing a certificate (a standalone's servers; brokers of one
/// deployment, each on `0.0.0.0:6650` of its own host or pod) cannot make resets for each
/// other's connections (RFC 9000, 10.3.2).
fn reset_config(tls: &ServerTls, local: SocketAddr) -> quinn::EndpointConfig {
    use aws_lc_rs::hmac;
    let secret = hmac::Key::new(hmac::HMAC_SHA256, tls.key.secret_der());
    let host = host_name();
    let derive =
        |purpose: &str| hmac::sign(&secret, format!("{purpose} {local} on {host}").as_bytes());
    let reset = derive("strata: QUIC stateless reset key, v1, for");
    let mut config =
        quinn::EndpointConfig::new(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref())));
    // Connection ids carry a keyed hash, so packets with ids this key never made are dropped
    // without a reset.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&derive("strata: QUIC connection id key, v1, for").as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// This host's name (a pod's name in Kubernetes); empty where the system does not say.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// A client endpoint for servers of one address family, speaking `alpn`.
pub fn client_endpoint(
    server: SocketAddr,
    trust: &ClientTrust,
    alpn: &[u8],
    tuning: &TransportTuning,
) -> Result<Endpoint, TransportError> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|_| TransportError::Tls("bad bind address".into()))?;
    let crypto = QuicClientConfig::try_from(trust.rustls_config(alpn)?)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(tuning.quinn_config()?));
    let mut endpoint =
        Endpoint::client(bind).map_err(|source| TransportError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}
