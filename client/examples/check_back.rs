//! Check-back (RocketMQ's local-transaction pattern) with a local SQLite table: an order is
//! published and written to the database together, or neither.
//!
//! For each order: begin a transaction of producer group `orders`, send the order event in
//! it, `prepare` (the event is stored, not yet visible), then run the local database
//! transaction that records the order with the transaction's id, then commit. If the
//! process dies between the database commit and the Strata commit, the coordinator later
//! asks a checker of the group, which looks the transaction's id up in the table: found,
//! commit; not found, abort.
//!
//! The run below shows the three cases: an order committed normally, an order whose
//! database transaction fails (the event is aborted), and an order whose process "dies"
//! before its commit (the checker commits it).
//!
//! Against a running `strata standalone`:
//!
//! ```sh
//! cargo run --release -p strata-client --example check_back -- quic://127.0.0.1:6650 orders
//! strata consume orders -s check -n 2
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use strata_client::{CheckOutcome, Client, ClientOptions, Transaction, TxnId};

const GROUP: &str = "orders";

type Db = Arc<Mutex<Connection>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "quic://127.0.0.1:6650".into());
    let topic = args.next().unwrap_or_else(|| "orders".into());

    let dir = tempfile_dir()?;
    let db: Db = Arc::new(Mutex::new(Connection::open(dir.join("orders.db"))?));
    db.lock().map_err(|_| "db lock")?.execute_batch(
        "CREATE TABLE orders (item TEXT NOT NULL, txn_id INTEGER UNIQUE NOT NULL)",
    )?;

    let client = Client::connect(ClientOptions {
        url,
        ..ClientOptions::default()
    })
    .await?;
    // Any live member of the group can answer for a transaction another member left open.
    let checker_db = db.clone();
    let _checker = client.register_transaction_checker(GROUP, move |txn| {
        let outcome = match order_of(&checker_db, txn) {
            Ok(Some(item)) => {
                println!("checker: {txn} recorded {item:?} in the database: commit");
                CheckOutcome::Commit
            }
            Ok(None) => {
                println!("checker: {txn} has no order in the database: abort");
                CheckOutcome::Abort
            }
            Err(e) => {
                println!("checker: database error ({e}); ask again later");
                CheckOutcome::Unknown
            }
        };
        async move { outcome }
    });
    let producer = client.producer(&topic).create().await?;

    // 1. The whole pattern: the order is in the database and its event is delivered.
    let txn = begin(&client).await?;
    producer.send_in(&txn, "order: 1 book").await?;
    txn.prepare().await?;
    record_order(&db, "1 book", txn.id())?;
    txn.commit().await?;
    println!("order 1: recorded and committed in {}", txn.id());

    // 2. The database transaction fails: roll back there, abort here.
    let txn = begin(&client).await?;
    producer.send_in(&txn, "order: 2 pens").await?;
    txn.prepare().await?;
    match record_order(&db, "", txn.id()) {
        Ok(()) => txn.commit().await?,
        Err(e) => {
            println!("order 2: database refused it ({e}); aborting {}", txn.id());
            txn.abort().await?;
        }
    }

    // 3. The database commit happens, then the process "dies" before committing here:
    // the transaction stays prepared and open until the checker is asked.
    let txn = begin(&client).await?;
    producer.send_in(&txn, "order: 3 lamps").await?;
    txn.prepare().await?;
    record_order(&db, "3 lamps", txn.id())?;
    println!("order 3: recorded; not committing {} (a crash)", txn.id());
    let state = wait_decided(&client, txn.id()).await?;
    println!("order 3: the checker decided {} {state}", txn.id());

    producer.close().await?;
    client.close().await;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

async fn begin(client: &Client) -> Result<Transaction, strata_client::ClientError> {
    client
        .new_transaction()
        .timeout(Duration::from_secs(60))
        .check_back(GROUP, Some(Duration::from_secs(1)))
        .begin()
        .await
}

/// The local transaction: the order row carries the Strata transaction id, so a checker can
/// tell later whether it happened. An empty item violates the table's rule (a failure).
fn record_order(db: &Db, item: &str, txn: TxnId) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = db.lock().map_err(|_| "db lock")?;
    let tx = conn.transaction()?;
    if item.is_empty() {
        return Err("an order needs an item".into()); // dropping `tx` rolls it back
    }
    tx.execute(
        "INSERT INTO orders (item, txn_id) VALUES (?1, ?2)",
        params![item, txn.0 as i64],
    )?;
    tx.commit()?;
    Ok(())
}

fn order_of(db: &Db, txn: TxnId) -> Result<Option<String>, Box<dyn std::error::Error>> {
    let conn = db.lock().map_err(|_| "db lock")?;
    Ok(conn
        .query_row(
            "SELECT item FROM orders WHERE txn_id = ?1",
            params![txn.0 as i64],
            |row| row.get(0),
        )
        .optional()?)
}

/// Polls the coordinator until the transaction is decided; its final state.
async fn wait_decided(client: &Client, txn: TxnId) -> Result<String, Box<dyn std::error::Error>> {
    loop {
        let info = client.transaction_info(txn).await?;
        if info.state != "OPEN" {
            return Ok(info.state);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A fresh directory for the example's database.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("strata-check-back-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
