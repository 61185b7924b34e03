//! Transaction requests from clients and operators: begin, end (commit or abort), show,
//! list. Any broker answers them: the coordinator's state is in the metastore.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use strata_metastore::tables::{Decided, ProducerEpoch, TxnRecord};
use strata_metastore::txn_coordinator::Ending;
use strata_proto::pb::client::{
    BeginTxn, EndTxn, InitTxnProducer, TxnInfo, TxnList, TxnProducerInfo, admin_response,
};
use strata_proto::{MessageId, TopicName, TxnId};

use crate::{BrokerError, BrokerService};

pub async fn begin(
    service: &BrokerService,
    r: BeginTxn,
) -> Result<admin_response::Response, BrokerError> {
    if r.client_id.is_empty() {
        return Err(BrokerError::Protocol(
            "a transaction needs a client id".into(),
        ));
    }
    let timeout = (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms));
    let producer = if r.producer_name.is_empty() {
        None
    } else {
        check_producer_name(&r.producer_name)?;
        Some(ProducerEpoch {
            name: r.producer_name,
            epoch: r.producer_epoch,
        })
    };
    let (id, record) = service.txns.begin(&r.client_id, timeout, producer).await?;
    Ok(admin_response::Response::Txn(info(id, &record)))
}

/// Starts an instance of a named transactional producer: its new epoch fences the older
/// instances.
pub async fn init_producer(
    service: &BrokerService,
    r: InitTxnProducer,
) -> Result<admin_response::Response, BrokerError> {
    check_producer_name(&r.name)?;
    if r.client_id.is_empty() {
        return Err(BrokerError::Protocol(
            "a transactional producer needs a client id".into(),
        ));
    }
    let epoch = service.txns.init_producer(&r.name, &r.client_id).await?;
    Ok(admin_response::Response::TxnProducer(TxnProducerInfo {
        name: r.name,
        epoch,
    }))
}

/// A producer name is one metastore key segment.
fn check_producer_name(name: &str) -> Result<(), BrokerError> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if valid {
        Ok(())
    } else {
        Err(BrokerError::Protocol(format!(
            "transactional producer name {name:?}: use 1 to 200 of a-z A-Z 0-9 - _ . :"
        )))
    }
}

pub async fn end(
    service: &BrokerService,
    r: EndTxn,
) -> Result<admin_response::Response, BrokerError> {
    let id = TxnId(r.txn_id);
    let arrived = std::time::Instant::now();
    let mut last = BTreeMap::new();
    let (owner, ending) = if r.commit {
        for p in r.partitions {
            let topic = TopicName::parse(&p.topic)?;
            let position = p
                .last
                .map(|m| MessageId::from(m).position())
                .ok_or_else(|| BrokerError::Protocol(format!("no last entry for {topic}")))?;
            last.insert(topic.to_string(), position);
        }
        (Some(r.client_id.as_str()), Ending::Commit(&last))
    } else if r.operator {
        (None, Ending::Abort)
    } else {
        (Some(r.client_id.as_str()), Ending::Abort)
    };
    let (record, decided) = service.txns.end(id, owner, ending).await?;
    // Counted by the request that decided, not by its retries.
    let m = &service.metrics.txns;
    match (decided, r.commit) {
        (Decided::Now, true) => {
            m.committed.fetch_add(1, Relaxed);
            m.commit_latency.record(arrived.elapsed());
        }
        (Decided::Now, false) => {
            m.aborted.fetch_add(1, Relaxed);
        }
        (Decided::Already, _) => {}
    }
    Ok(admin_response::Response::Txn(info(id, &record)))
}

pub async fn get(
    service: &BrokerService,
    txn_id: u64,
) -> Result<admin_response::Response, BrokerError> {
    let id = TxnId(txn_id);
    let row = service.txns.get(id).await?;
    Ok(admin_response::Response::Txn(info(id, &row.record)))
}

pub async fn list(
    service: &BrokerService,
    open_only: bool,
) -> Result<admin_response::Response, BrokerError> {
    let txns = service
        .txns
        .list(open_only)
        .await?
        .iter()
        .map(|(id, r)| info(*id, r))
        .collect();
    Ok(admin_response::Response::Txns(TxnList { txns }))
}

fn info(id: TxnId, r: &TxnRecord) -> TxnInfo {
    TxnInfo {
        txn_id: id.0,
        state: r.state.to_string(),
        owner: r.owner.clone(),
        created_ms: r.created_ms,
        deadline_ms: r.deadline_ms,
        decided_ms: r.decided_ms.unwrap_or(0),
        partitions: r.partitions.keys().cloned().collect(),
        subscriptions: r
            .subscriptions
            .iter()
            .map(|(t, s)| format!("{t} {s}"))
            .collect(),
        producer: r
            .producer
            .as_ref()
            .map(|p| format!("{}@{}", p.name, p.epoch))
            .unwrap_or_default(),
    }
}
