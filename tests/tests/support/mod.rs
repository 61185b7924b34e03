//! A cluster of brokers in process for the tests of this directory: a metastore and three
//! bookies (`LocalCluster`), brokers with bundle ownership on short leases, and clients.
#![allow(dead_code)] // each test file uses its own part of it

use std::sync::Arc;
use std::time::Duration;

use strata_bookie::local_cluster::{LocalCluster, LocalClusterOptions};
use strata_bookie::{BookieClientOptions, LedgerClientOptions};
use strata_broker::ownership::{Ownership, OwnershipConfig};
use strata_broker::server::{BrokerServer, ServerConfig};
use strata_broker::service::{BrokerConfig, BrokerService};
use strata_client::{Client, ClientOptions};
use strata_metastore::tables::NamespacePolicies;
use strata_transport::{ServerTls, TransportTuning};

pub struct TestBroker {
    pub id: String,
    pub service: Arc<BrokerService>,
    pub server: BrokerServer,
    pub ownership: Arc<Ownership>,
    pub address: String,
}

pub async fn start_broker(cluster: &LocalCluster, dir: &std::path::Path, id: &str) -> TestBroker {
    start_broker_with(cluster, dir, id, BrokerConfig::default()).await
}

/// A broker with its own config (ledger rollover, replication).
pub async fn start_broker_with(
    cluster: &LocalCluster,
    dir: &std::path::Path,
    id: &str,
    config: BrokerConfig,
) -> TestBroker {
    let ledgers = cluster.ledger_client(
        BookieClientOptions {
            request_timeout: Duration::from_secs(3),
            ..BookieClientOptions::default()
        },
        LedgerClientOptions::default(),
    );
    let service = BrokerService::new(cluster.meta.clone(), ledgers, config);
    service
        .ensure_namespace(
            &"public/default".parse().expect("ns"),
            &NamespacePolicies::default(),
        )
        .await
        .expect("namespace");
    let (tls, _) = ServerTls::dev_in_dir(&dir.join(id), &[]).expect("tls");
    let server = BrokerServer::start(
        service.clone(),
        ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            max_frame_size: strata_proto::DEFAULT_MAX_FRAME_SIZE,
            tuning: TransportTuning::default(),
        },
        &tls,
    )
    .expect("server");
    let address = server.local_addr().expect("addr").to_string();
    let mut config = OwnershipConfig::new(id, address.clone());
    config.session_ttl = Duration::from_secs(2);
    config.refresh_interval = Duration::from_millis(500);
    let ownership = Ownership::start(cluster.meta.clone(), config)
        .await
        .expect("ownership");
    service.enable_ownership(ownership.clone());
    TestBroker {
        id: id.to_owned(),
        service,
        server,
        ownership,
        address,
    }
}

pub async fn client_of(broker: &TestBroker) -> Client {
    Client::connect(ClientOptions {
        url: format!("quic://{}", broker.address),
        ..ClientOptions::default()
    })
    .await
    .expect("connect")
}

/// A metastore and three bookies in a new temporary directory, without brokers (start them
/// with [`start_broker_with`] and a config of the test's own).
pub async fn start_cluster() -> (tempfile::TempDir, LocalCluster) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::start(&dir.path().join("cluster"), LocalClusterOptions::default())
        .await
        .expect("cluster");
    (dir, cluster)
}

pub async fn start() -> (tempfile::TempDir, LocalCluster, Vec<TestBroker>) {
    let (dir, cluster) = start_cluster().await;
    let a = start_broker(&cluster, dir.path(), "broker-a").await;
    let b = start_broker(&cluster, dir.path(), "broker-b").await;
    (dir, cluster, vec![a, b])
}

/// Stops every broker (gracefully) and the cluster.
pub async fn stop_all(brokers: Vec<TestBroker>, cluster: LocalCluster) {
    for b in brokers {
        b.server.shutdown().await;
        b.service.close_all().await;
        b.ownership.shutdown().await;
    }
    cluster.shutdown().await;
}

/// Produces `n` messages to `topic` and returns once all are acknowledged.
pub async fn produce(client: &Client, topic: &str, n: usize) {
    let producer = client.producer(topic).create().await.expect("producer");
    let mut sends = Vec::new();
    for i in 0..n {
        sends.push(
            producer
                .send_async(format!("{topic} #{i}"))
                .await
                .expect("queued"),
        );
    }
    for s in sends {
        s.await.expect("acknowledged");
    }
    producer.close().await.expect("close producer");
}

/// A client whose service URL lists every broker, so it survives any one of them going.
pub async fn client_of_all(brokers: &[TestBroker]) -> Client {
    let hosts: Vec<&str> = brokers.iter().map(|b| b.address.as_str()).collect();
    Client::connect(ClientOptions {
        url: format!("quic://{}", hosts.join(",")),
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    })
    .await
    .expect("connect")
}

/// A topic named `<prefix>-<i>` whose bundle the lookup gives to broker `owner`.
pub async fn topic_owned_by(client: &Client, owner: &str, prefix: &str) -> String {
    for i in 0..64 {
        let t = format!("persistent://public/default/{prefix}-{i}");
        if client.lookup(&t).await.expect("lookup").broker_id == owner {
            return t;
        }
    }
    panic!("no topic for {owner} among 64 names");
}

/// Stops a broker as a crash would: connections drop and its lease goes, but nothing is
/// flushed or closed (its ledgers stay OPEN, its cursors as last written). The service is
/// returned so a test can show the zombie is fenced.
pub async fn crash(broker: TestBroker) -> Arc<BrokerService> {
    broker.server.shutdown().await;
    broker.ownership.shutdown().await;
    broker.service
}
