//! Connecting to a broker: URL parsing, TLS trust, the QUIC connection and its handshake.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use strata_proto::DEFAULT_MAX_FRAME_SIZE;
use strata_proto::pb::client::{ClientFrame, ServerFrame};
use strata_transport::handshake::client_handshake;
use strata_transport::{ClientTrust, FrameReader, FrameWriter, TransportTuning, client_endpoint};

use crate::ClientError;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `quic://host:port`, or several brokers as `quic://host1:port1,host2:port2`: the
    /// client talks to the first that answers and moves to the next when it goes away.
    pub url: String,
    /// CA certificate (PEM) to verify the broker; required for non-loopback brokers.
    pub tls_ca: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub max_frame_size: usize,
    pub name: String,
    pub tuning: TransportTuning,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            url: "quic://127.0.0.1:6650".into(),
            tls_ca: None,
            connect_timeout: Duration::from_secs(10),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            name: "strata-client".into(),
            tuning: TransportTuning::default(),
        }
    }
}

/// The broker URLs of a service URL: `quic://a:1,b:2` gives `quic://a:1` and `quic://b:2`.
pub(crate) fn service_urls(url: &str) -> Result<Vec<String>, ClientError> {
    let rest = url
        .strip_prefix("quic://")
        .ok_or_else(|| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason: "must start with quic://".to_owned(),
        })?;
    let urls: Vec<String> = rest
        .split(',')
        .map(|hostport| format!("quic://{}", hostport.trim()))
        .collect();
    for u in &urls {
        parse_url(u)?;
    }
    Ok(urls)
}

/// Splits `quic://host:port` into host and resolved address.
pub(crate) fn parse_url(url: &str) -> Result<(String, SocketAddr), ClientError> {
    let bad = |reason: &str| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("quic://")
        .ok_or_else(|| bad("must start with quic://"))?;
    let authority = rest.trim_end_matches('/');
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad("missing :port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("port is not a number 0-65535"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| bad(&format!("cannot resolve host: {e}")))?
        .next()
        .ok_or_else(|| bad("host resolves to no address"))?;
    Ok((host, addr))
}

pub(crate) struct Connected {
    pub endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
}

pub(crate) async fn connect(opts: &ClientOptions) -> Result<Connected, ClientError> {
    let (host, addr) = parse_url(&opts.url)?;
    let trust = ClientTrust::resolve(opts.tls_ca.as_deref(), &host)?;
    if matches!(trust, ClientTrust::LoopbackDev) {
        tracing::info!(%host, "no CA given: trusting the loopback server's certificate (development mode)");
    }
    let endpoint = client_endpoint(addr, &trust, strata_proto::ALPN_CLIENT, &opts.tuning)?;
    let server_name =
        if host.parse::<std::net::IpAddr>().is_ok() || host.contains('.') || host == "localhost" {
            host.clone()
        } else {
            "localhost".into()
        };
    let attempt = async {
        let connecting = endpoint.connect(addr, &server_name).map_err(|e| {
            strata_transport::TransportError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            }
        })?;
        let connection =
            connecting
                .await
                .map_err(|e| strata_transport::TransportError::Connect {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })?;
        client_handshake(&connection, &opts.name, opts.max_frame_size).await?;
        Ok::<_, ClientError>(connection)
    };
    let connection = tokio::time::timeout(opts.connect_timeout, attempt)
        .await
        .map_err(|_| ClientError::ConnectTimeout {
            addr: addr.to_string(),
            timeout_ms: opts.connect_timeout.as_millis() as u64,
        })??;
    Ok(Connected {
        endpoint,
        connection,
    })
}

/// Opens a stream and sends its first frame.
pub(crate) async fn open_stream(
    conn: &quinn::Connection,
    first: &ClientFrame,
    max: usize,
) -> Result<(FrameWriter, FrameReader), ClientError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(strata_transport::TransportError::from)?;
    let mut writer = FrameWriter::new(send, max);
    let reader = FrameReader::new(recv, max);
    writer.send(first).await?;
    Ok((writer, reader))
}

/// Reads the next server frame, turning an error frame into `ClientError::Server`.
pub(crate) async fn next_frame(
    reader: &mut FrameReader,
) -> Result<Option<ServerFrame>, ClientError> {
    match reader.recv::<ServerFrame>().await? {
        Some(ServerFrame {
            frame: Some(strata_proto::pb::client::server_frame::Frame::Error(e)),
        }) => Err(ClientError::Server(e.into())),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_what_is_wrong() {
        let (host, addr) = parse_url("quic://127.0.0.1:6650").expect("valid");
        assert_eq!((host.as_str(), addr.port()), ("127.0.0.1", 6650));
        assert!(parse_url("quic://[::1]:1").is_ok());
        for (bad, why) in [
            ("http://x:1", "quic://"),
            ("quic://host", ":port"),
            ("quic://h:notaport", "port"),
            ("quic://:5", "host"),
        ] {
            let err = parse_url(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn service_urls_split_on_commas_and_check_each() {
        let urls = service_urls("quic://127.0.0.1:1, 127.0.0.1:2").expect("valid");
        assert_eq!(urls, ["quic://127.0.0.1:1", "quic://127.0.0.1:2"]);
        let err = service_urls("quic://127.0.0.1:1,nohost").expect_err("bad second");
        assert!(err.to_string().contains(":port"), "{err}");
    }
}
