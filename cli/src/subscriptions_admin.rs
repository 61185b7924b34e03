//! `strata subscriptions ...` and `strata topics stats`: a topic's subscriptions, their
//! cursors and figures, as a table or JSON.

use anyhow::{Context, bail};
use strata_client::Client;
use strata_proto::pb::client::{SubscriptionType, TopicStatsReply, reset_cursor};

use crate::cluster::Output;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SubscriptionsCommand {
    /// The subscriptions of a topic.
    List { topic: String },
    /// Move a subscription's cursor; its consumers resubscribe from there.
    Reset {
        topic: String,
        subscription: String,
        /// To the start of the log.
        #[arg(long, group = "target")]
        earliest: bool,
        /// To the end of the log (skip everything).
        #[arg(long, group = "target")]
        latest: bool,
        /// To the first message published at or after this time (ms since the epoch).
        #[arg(long, group = "target")]
        time_ms: Option<u64>,
        /// To this message, `ledger:entry[:batch-index]`.
        #[arg(long, group = "target")]
        message_id: Option<String>,
    },
    /// Show the next unacknowledged messages without acknowledging them.
    Peek {
        topic: String,
        subscription: String,
        #[arg(short = 'n', long, default_value_t = 1)]
        count: u32,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Acknowledge the next `count` unacknowledged messages.
    Skip {
        topic: String,
        subscription: String,
        #[arg(short = 'n', long)]
        count: u32,
    },
}

pub async fn run(client: &Client, cmd: SubscriptionsCommand) -> anyhow::Result<()> {
    match cmd {
        SubscriptionsCommand::List { topic } => {
            for s in client.list_subscriptions(&topic).await? {
                println!("{s}");
            }
        }
        SubscriptionsCommand::Reset {
            topic,
            subscription,
            earliest,
            latest,
            time_ms,
            message_id,
        } => {
            let target = match (earliest, latest, time_ms, message_id) {
                (true, ..) => reset_cursor::Target::Earliest(true),
                (_, true, ..) => reset_cursor::Target::Latest(true),
                (_, _, Some(t), _) => reset_cursor::Target::PublishTimeMs(t),
                (_, _, _, Some(id)) => reset_cursor::Target::MessageId(parse_message_id(&id)?),
                _ => bail!("give one of --earliest, --latest, --time-ms or --message-id"),
            };
            client.reset_cursor(&topic, &subscription, target).await?;
        }
        SubscriptionsCommand::Peek {
            topic,
            subscription,
            count,
            output,
        } => {
            let messages = client.peek_messages(&topic, &subscription, count).await?;
            match output {
                Output::Json => {
                    let rows: Vec<_> = messages
                        .iter()
                        .map(|m| {
                            serde_json::json!({
                                "id": m.id.to_string(),
                                "key": m.key,
                                "publish_time_ms": m.publish_time_ms,
                                "producer": m.producer_name,
                                "payload": String::from_utf8_lossy(&m.payload),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                }
                Output::Table => {
                    for m in messages {
                        println!(
                            "{:<20} {:<12} {}",
                            m.id.to_string(),
                            m.key,
                            String::from_utf8_lossy(&m.payload)
                        );
                    }
                }
            }
        }
        SubscriptionsCommand::Skip {
            topic,
            subscription,
            count,
        } => client.skip_messages(&topic, &subscription, count).await?,
    }
    Ok(())
}

/// `ledger:entry[:batch-index]`.
fn parse_message_id(s: &str) -> anyhow::Result<strata_proto::pb::common::MessageIdData> {
    let parts: Vec<&str> = s.split(':').collect();
    let num = |p: &str| {
        p.parse::<u64>()
            .with_context(|| format!("{p:?} in message id {s:?}"))
    };
    match parts.as_slice() {
        [l, e] | [l, e, _] => Ok(strata_proto::pb::common::MessageIdData {
            ledger_id: num(l)?,
            entry_id: num(e)?,
            batch_index: match parts.get(2) {
                Some(b) => u32::try_from(num(b)?).context("batch index")?,
                None => 0,
            },
        }),
        _ => bail!("message id {s:?} is not ledger:entry[:batch-index]"),
    }
}

/// `strata topics stats`: the topic's figures and each subscription's.
pub fn print_stats(s: &TopicStatsReply, output: Output) -> anyhow::Result<()> {
    let type_name = |t: i32| {
        SubscriptionType::try_from(t)
            .map(|t| t.as_str_name().to_lowercase())
            .unwrap_or_else(|_| "unknown".into())
    };
    match output {
        Output::Json => {
            let subs: Vec<_> = s
                .subscriptions
                .iter()
                .map(|sub| {
                    serde_json::json!({
                        "name": sub.name,
                        "type": type_name(sub.sub_type),
                        "consumers": sub.consumers,
                        "backlog_entries": sub.backlog_entries,
                        "unacked": sub.unacked,
                        "redelivering": sub.redelivering,
                        "dispatch_rate_msgs": sub.dispatch_rate_msgs,
                    })
                })
                .collect();
            let v = serde_json::json!({
                "topic": s.topic,
                "entries": s.entries,
                "ledgers": s.ledgers,
                "size_bytes": s.size_bytes,
                "publish_rate_msgs": s.publish_rate_msgs,
                "publish_rate_bytes": s.publish_rate_bytes,
                "subscriptions": subs,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table => {
            println!(
                "{}: entries {} ledgers {} bytes {} publish {:.1} msg/s {:.0} B/s",
                s.topic,
                s.entries,
                s.ledgers,
                s.size_bytes,
                s.publish_rate_msgs,
                s.publish_rate_bytes
            );
            println!(
                "{:<24} {:<11} {:>9} {:>9} {:>9} {:>12} {:>12}",
                "SUBSCRIPTION",
                "TYPE",
                "CONSUMERS",
                "BACKLOG",
                "UNACKED",
                "REDELIVERING",
                "MSG/S OUT"
            );
            for sub in &s.subscriptions {
                println!(
                    "{:<24} {:<11} {:>9} {:>9} {:>9} {:>12} {:>12.1}",
                    sub.name,
                    type_name(sub.sub_type),
                    sub.consumers,
                    sub.backlog_entries,
                    sub.unacked,
                    sub.redelivering,
                    sub.dispatch_rate_msgs
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_parse_with_or_without_batch_index() {
        let id = parse_message_id("7:3").expect("two parts");
        assert_eq!((id.ledger_id, id.entry_id, id.batch_index), (7, 3, 0));
        let id = parse_message_id("7:3:2").expect("three parts");
        assert_eq!(id.batch_index, 2);
        for bad in ["7", "a:1", "1:2:3:4", "1:-2"] {
            assert!(parse_message_id(bad).is_err(), "{bad}");
        }
    }
}
