//! Admin requests about a topic's subscriptions: list, reset, peek and skip. Each is served
//! by the topic's owner (a lookup sends the client there).

use strata_proto::pb::client::{
    Delivery, ListSubscriptions, PeekMessages, ResetCursor, SkipMessages, SubscriptionList,
    admin_response, reset_cursor,
};
use strata_proto::{MessageId, TopicName};

use crate::BrokerError;
use crate::service::BrokerService;

/// Most messages one peek returns.
pub const MAX_PEEK: u32 = 1000;

pub async fn list(
    service: &BrokerService,
    req: ListSubscriptions,
) -> Result<admin_response::Response, BrokerError> {
    let topic = service.topic(&TopicName::parse(&req.topic)?, false).await?;
    Ok(admin_response::Response::Subscriptions(SubscriptionList {
        subscriptions: topic.subscription_names().await?,
    }))
}

pub async fn reset(
    service: &BrokerService,
    req: ResetCursor,
) -> Result<admin_response::Response, BrokerError> {
    let topic = service.topic(&TopicName::parse(&req.topic)?, false).await?;
    let sub = topic.existing_subscription(&req.subscription).await?;
    let ml = topic.managed_ledger();
    let target = match req.target {
        Some(reset_cursor::Target::Earliest(_)) => ml.first_position(),
        Some(reset_cursor::Target::Latest(_)) => None,
        Some(reset_cursor::Target::PublishTimeMs(t)) => topic.first_published_at(t).await?,
        Some(reset_cursor::Target::MessageId(id)) => {
            let id = MessageId::from(id);
            if !ml.contains(id.position()) {
                return Err(BrokerError::InvalidMessageId(id.to_string()));
            }
            Some(id.position())
        }
        None => return Err(BrokerError::Protocol("reset without a target".into())),
    };
    sub.reset(target).await?;
    Ok(admin_response::Response::Done(Default::default()))
}

pub async fn peek(
    service: &BrokerService,
    req: PeekMessages,
) -> Result<admin_response::Response, BrokerError> {
    let topic = service.topic(&TopicName::parse(&req.topic)?, false).await?;
    let sub = topic.existing_subscription(&req.subscription).await?;
    let messages = sub.peek(req.count.min(MAX_PEEK) as usize).await?;
    Ok(admin_response::Response::Messages(Delivery { messages }))
}

pub async fn skip(
    service: &BrokerService,
    req: SkipMessages,
) -> Result<admin_response::Response, BrokerError> {
    let topic = service.topic(&TopicName::parse(&req.topic)?, false).await?;
    let sub = topic.existing_subscription(&req.subscription).await?;
    sub.skip(req.count as usize).await?;
    Ok(admin_response::Response::Done(Default::default()))
}
