//! Transaction requests from clients and operators: begin, end (commit or abort), show,
//! list. Any broker answers them: the coordinator's state is in the metastore.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use strata_metastore::tables::{Decided, ProducerEpoch, TxnRecord, TxnRuleError};
use strata_metastore::txn_coordinator::{Actor, BeginOptions, CoordinatorError, Ending};
use strata_metastore::txn_start::TxnStart;
use strata_proto::pb::client::{
    self as pb, BeginTxn, EndTxn, InitTxnProducer, PartitionEnd, PrepareTxn, TxnInfo, TxnList,
    TxnProducerInfo, admin_response,
};
use strata_proto::{MessageId, Position, TopicName, TxnId};

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
    let producer = producer_of(r.producer_name, r.producer_epoch)?;
    let check_back = group_of(r.group)?.map(|group| {
        let interval =
            (r.check_interval_ms > 0).then(|| Duration::from_millis(r.check_interval_ms));
        (group, interval)
    });
    let options = BeginOptions {
        timeout,
        producer,
        check_back,
    };
    if r.lazy && !service.config.eager_begin {
        let (id, start) = service.txns.issue(&r.client_id, options).await?;
        let mut reply = info(id, &start.record(&r.client_id));
        reply.start = Some(start_to_wire(&start));
        return Ok(admin_response::Response::Txn(reply));
    }
    let (id, record) = service.txns.begin_with(&r.client_id, options).await?;
    Ok(admin_response::Response::Txn(info(id, &record)))
}

fn start_to_wire(start: &TxnStart) -> pb::TxnStart {
    let (producer_name, producer_epoch) = start
        .producer
        .as_ref()
        .map(|p| (p.name.clone(), p.epoch))
        .unwrap_or_default();
    let (group, check_interval_ms) = start.check_back.clone().unwrap_or_default();
    pb::TxnStart {
        created_ms: start.created_ms,
        deadline_ms: start.deadline_ms,
        producer_name,
        producer_epoch,
        group,
        check_interval_ms,
    }
}

/// A lazily begun transaction's start as a client sent it back, its names checked (the
/// coordinator checks its times when it creates the record).
pub(crate) fn start_from_wire(
    start: Option<pb::TxnStart>,
) -> Result<Option<TxnStart>, BrokerError> {
    let Some(s) = start else {
        return Ok(None);
    };
    Ok(Some(TxnStart {
        created_ms: s.created_ms,
        deadline_ms: s.deadline_ms,
        producer: producer_of(s.producer_name, s.producer_epoch)?,
        check_back: group_of(s.group)?.map(|group| (group, s.check_interval_ms)),
    }))
}

/// Records that a transaction's sends are done (check-back: a checker may commit it now).
pub async fn prepare(
    service: &BrokerService,
    r: PrepareTxn,
) -> Result<admin_response::Response, BrokerError> {
    let last = partition_ends(r.partitions)?;
    let start = start_from_wire(r.txn_start)?;
    let record = service
        .txns
        .prepare(TxnId(r.txn_id), &r.client_id, &last, start.as_ref())
        .await?;
    Ok(admin_response::Response::Txn(info(
        TxnId(r.txn_id),
        &record,
    )))
}

/// The last entry per partition a client names, by full topic name.
fn partition_ends(
    partitions: Vec<PartitionEnd>,
) -> Result<BTreeMap<String, Position>, BrokerError> {
    let mut last = BTreeMap::new();
    for p in partitions {
        let topic = TopicName::parse(&p.topic)?;
        let position = p
            .last
            .map(|m| MessageId::from(m).position())
            .ok_or_else(|| BrokerError::Protocol(format!("no last entry for {topic}")))?;
        last.insert(topic.to_string(), position);
    }
    Ok(last)
}

/// Starts an instance of a named transactional producer: its new epoch fences the older
/// instances.
pub async fn init_producer(
    service: &BrokerService,
    r: InitTxnProducer,
) -> Result<admin_response::Response, BrokerError> {
    check_name("transactional producer", &r.name)?;
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

/// The transactional producer a request names (empty: none), its name checked.
fn producer_of(name: String, epoch: u64) -> Result<Option<ProducerEpoch>, BrokerError> {
    if name.is_empty() {
        return Ok(None);
    }
    check_name("transactional producer", &name)?;
    Ok(Some(ProducerEpoch { name, epoch }))
}

/// The check-back producer group a request names (empty: none), its name checked.
fn group_of(group: String) -> Result<Option<String>, BrokerError> {
    if group.is_empty() {
        return Ok(None);
    }
    check_name("producer group", &group)?;
    Ok(Some(group))
}

/// A producer or group name is one metastore key segment.
fn check_name(what: &str, name: &str) -> Result<(), BrokerError> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if valid {
        Ok(())
    } else {
        Err(BrokerError::Protocol(format!(
            "{what} name {name:?}: use 1 to 200 of a-z A-Z 0-9 - _ . :"
        )))
    }
}

pub async fn end(
    service: &BrokerService,
    r: EndTxn,
) -> Result<admin_response::Response, BrokerError> {
    let id = TxnId(r.txn_id);
    let arrived = std::time::Instant::now();
    let last = partition_ends(r.partitions)?;
    let actor = if r.operator {
        Actor::Operator
    } else if !r.group.is_empty() {
        // Only a checker of the group (with a session here) answers for it.
        if !service.checkers.is_member(&r.group, &r.client_id) {
            return Err(CoordinatorError::Rule(TxnRuleError::NotInGroup {
                id,
                group: r.group.clone(),
            })
            .into());
        }
        Actor::Group(&r.group)
    } else {
        Actor::Client(&r.client_id)
    };
    if r.operator && r.commit {
        return Err(BrokerError::Protocol(
            "operators may abort transactions, not commit them".into(),
        ));
    }
    let ending = if r.commit {
        Ending::Commit(&last)
    } else {
        Ending::Abort
    };
    let start = start_from_wire(r.txn_start)?;
    let (record, decided) = service.txns.end(id, actor, ending, start.as_ref()).await?;
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
        group: r.group.clone().unwrap_or_default(),
        prepared: r.prepared,
        checks: r.checks,
        start: None,
    }
}
