//! Exactly-once consume → transform → produce: each input's output is committed together with
//! the input's acknowledgement, so a crash at any point either redoes a whole step or none of
//! it; the output never holds a message twice.
//!
//! Against a running `strata standalone`:
//!
//! ```sh
//! strata produce numbers -m 1 -m 2 -m 3
//! cargo run --release -p strata-client --example exactly_once -- quic://127.0.0.1:6650 numbers squares
//! strata consume squares -s check -n 3
//! ```

use std::time::Duration;

use strata_client::{Client, ClientOptions, InitialPosition};

/// Inputs handled per transaction.
const BATCH: usize = 10;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "quic://127.0.0.1:6650".into());
    let input = args.next().unwrap_or_else(|| "numbers".into());
    let output = args.next().unwrap_or_else(|| "squares".into());

    let client = Client::connect(ClientOptions {
        url,
        ..ClientOptions::default()
    })
    .await?;
    let mut consumer = client
        .consumer(&input, "squarer")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    let producer = client.producer(&output).create().await?;

    loop {
        let txn = client
            .new_transaction()
            .timeout(Duration::from_secs(30))
            .begin()
            .await?;
        let mut handled = 0;
        while handled < BATCH {
            // Stop the batch when the input is idle for a second (receive is cancel-safe).
            let Ok(received) =
                tokio::time::timeout(Duration::from_secs(1), consumer.receive()).await
            else {
                break;
            };
            let msg = received?;
            let text = String::from_utf8_lossy(&msg.payload);
            let reply = match text.trim().parse::<i64>() {
                Ok(n) => format!("{}", n.saturating_mul(n)),
                Err(_) => format!("not a number: {text}"),
            };
            producer.send_in(&txn, reply).await?;
            consumer.ack_in(&txn, msg.id).await?;
            handled += 1;
        }
        if handled == 0 {
            txn.abort().await?;
            break;
        }
        // All or nothing: on an error here the inputs come back and are handled again.
        txn.commit().await?;
        println!("committed {handled} message(s) in {}", txn.id());
    }
    producer.close().await?;
    consumer.close().await?;
    client.close().await;
    Ok(())
}
