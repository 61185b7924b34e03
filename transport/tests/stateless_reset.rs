//! A server that crashed and came back on the same address with the same TLS key resets its
//! former connections: the client learns at its next packet that the peer is gone
//! (`ConnectionError::Reset`) instead of waiting out the idle timeout.

use std::time::Duration;

use strata_transport::{
    ClientTrust, ServerTls, TransportTuning, client_endpoint, install_crypto_provider,
    server_endpoint,
};

const ALPN: &[u8] = b"strata-test";

/// A server in a runtime of its own, so that it can die without closing its connections (as
/// `kill -9` would): shutting that runtime down drops the endpoint's driver before any close
/// is sent.
/// Also returns a channel that says when the server has a connection established.
fn crashable_server(
    tls: ServerTls,
    tuning: TransportTuning,
) -> (
    tokio::runtime::Runtime,
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let (established_tx, established) = tokio::sync::mpsc::unbounded_channel();
    let addr = runtime.block_on(async {
        let endpoint = server_endpoint("127.0.0.1:0".parse().expect("addr"), &tls, ALPN, &tuning)
            .expect("server");
        let addr = endpoint.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(incoming) = endpoint.accept().await {
                if let Ok(connection) = incoming.await {
                    held.push(connection);
                    let _ = established_tx.send(());
                }
            }
        });
        addr
    });
    (runtime, addr, established)
}

#[test]
fn a_restarted_server_resets_its_former_connections() {
    install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let (tls, _) = ServerTls::dev_in_dir(dir.path(), &[]).expect("tls");
    // A short idle timeout, so that without a recognised reset the test fails in seconds.
    let tuning = TransportTuning {
        keep_alive: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(3),
        ..TransportTuning::default()
    };
    let (server, addr, mut established) = crashable_server(tls, tuning.clone());

    let client = tokio::runtime::Runtime::new().expect("client runtime");
    let connection = client.block_on(async {
        let endpoint =
            client_endpoint(addr, &ClientTrust::LoopbackDev, ALPN, &tuning).expect("client");
        endpoint
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake")
    });
    // The server side too (so the client is past the handshake, sending 1-RTT packets).
    client
        .block_on(established.recv())
        .expect("the server has the connection");

    drop(server); // waits until its tasks (and the socket) are gone
    // The same key (read back from the directory), the same address.
    let (tls, _) = ServerTls::dev_in_dir(dir.path(), &[]).expect("tls again");
    let reason = client.block_on(async {
        let _restarted = server_endpoint(addr, &tls, ALPN, &tuning).expect("rebind");
        tokio::time::timeout(Duration::from_secs(30), connection.closed())
            .await
            .expect("the connection ends")
    });
    assert!(
        matches!(reason, quinn::ConnectionError::Reset),
        "expected a stateless reset from the restarted server, got {reason:?}"
    );
}
