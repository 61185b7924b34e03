//! Namespace administration through the client: create (with replication and bundle
//! policies), list, read policies, delete; each bad request gets its typed error and leaves
//! the connection working.

use strata_client::{ErrorCode, InitialPosition};
use strata_proto::pb::client::CreateNamespace;
use strata_tests::{TestStandalone, client, test_config};

fn create(namespace: &str) -> CreateNamespace {
    CreateNamespace {
        namespace: namespace.to_owned(),
        ..CreateNamespace::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_created_listed_used_and_deleted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestStandalone::start(test_config(dir.path())).await?;
    let c = client(&server).await?;

    c.create_namespace(CreateNamespace {
        ensemble_size: Some(1),
        write_quorum: Some(1),
        ack_quorum: Some(1),
        bundles: Some(8),
        ..create("acme/orders")
    })
    .await?;
    c.create_namespace(create("acme/billing")).await?;
    assert_eq!(
        c.list_namespaces("acme").await?,
        vec!["acme/billing".to_string(), "acme/orders".to_string()]
    );
    let policies: serde_json::Value =
        serde_json::from_str(&c.namespace_policies("acme/orders").await?)?;
    assert_eq!(policies["replication"]["ensemble_size"], 1);
    assert_eq!(
        policies["bundles"].as_array().map(Vec::len),
        Some(9),
        "8 bundles"
    );

    // Topics in the new namespace work end to end.
    let topic = "persistent://acme/orders/o1";
    let producer = c.producer(topic).create().await?;
    producer.send("first").await?;
    producer.close().await?;
    let mut consumer = c
        .consumer(topic, "s")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    assert_eq!(consumer.receive().await?.payload.as_ref(), b"first");
    consumer.close().await?;

    // Bad requests: typed errors.
    let err = c
        .create_namespace(create("acme/orders"))
        .await
        .expect_err("exists");
    assert_eq!(err.code(), Some(ErrorCode::NamespaceAlreadyExists), "{err}");
    let err = c
        .create_namespace(CreateNamespace {
            ensemble_size: Some(1),
            write_quorum: Some(2),
            ack_quorum: Some(1),
            ..create("acme/bad")
        })
        .await
        .expect_err("Qw > E");
    assert_eq!(err.code(), Some(ErrorCode::InvalidPolicy), "{err}");
    let err = c
        .create_namespace(CreateNamespace {
            bundles: Some(0),
            ..create("acme/bad")
        })
        .await
        .expect_err("no bundles");
    assert_eq!(err.code(), Some(ErrorCode::InvalidPolicy), "{err}");
    let err = c
        .delete_namespace("acme/orders")
        .await
        .expect_err("has a topic");
    assert_eq!(err.code(), Some(ErrorCode::NamespaceNotEmpty), "{err}");
    let err = c
        .lookup("persistent://nobody/nothing/t")
        .await
        .expect_err("missing namespace");
    assert_eq!(err.code(), Some(ErrorCode::NamespaceNotFound), "{err}");
    let err = c
        .namespace_policies("acme/none")
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Some(ErrorCode::NamespaceNotFound), "{err}");

    // After its topic goes, the namespace can be deleted.
    c.delete_topic(topic).await?;
    c.delete_namespace("acme/orders").await?;
    assert_eq!(
        c.list_namespaces("acme").await?,
        vec!["acme/billing".to_string()]
    );
    c.close().await;
    server.standalone.shutdown().await?;
    Ok(())
}
