//! Transactional producer epochs (Kafka's `transactional.id` fencing): a named transactional
//! producer gets a new epoch each time an instance of it starts, and a transaction can only
//! be begun at the current epoch. Starting a new instance thus fences every older one (a
//! zombie that lost its connection but still runs): its open transactions are aborted and
//! it can begin no new ones.

use serde::{Deserialize, Serialize};

use super::record::JsonRecord;
use super::table::{Listing, Schema};
use super::txns::TxnRuleError;

pub const PREFIX: &str = "/txn-producers/";

/// The current epoch of a named transactional producer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnProducerRecord {
    pub epoch: u64,
    /// The client that holds the current epoch.
    pub owner: String,
}

impl JsonRecord for TxnProducerRecord {
    const FORMAT_VERSION: u32 = 1;
}

impl TxnProducerRecord {
    /// The record after a new instance (`owner`) of the producer starts: the next epoch.
    pub fn next(current: Option<&TxnProducerRecord>, owner: &str) -> Self {
        TxnProducerRecord {
            epoch: current.map_or(1, |r| r.epoch + 1),
            owner: owner.to_owned(),
        }
    }

    /// Checks that `epoch` is the current one: an older epoch is a fenced instance.
    pub fn check(&self, name: &str, epoch: u64) -> Result<(), TxnRuleError> {
        if epoch != self.epoch {
            return Err(TxnRuleError::ProducerFenced {
                name: name.to_owned(),
                epoch,
                current: self.epoch,
            });
        }
        Ok(())
    }
}

/// The producer epochs, keyed by producer name; list with parent `()`.
#[derive(Debug)]
pub struct TxnProducers;

impl Schema for TxnProducers {
    type Key = String;
    type Record = TxnProducerRecord;
    const NAME: &'static str = "transactional producer";

    fn key(name: &String) -> String {
        format!("{PREFIX}{name}")
    }
}

impl Listing for TxnProducers {
    type Parent = ();

    fn prefix(_: &()) -> String {
        PREFIX.to_owned()
    }

    fn child(_: &(), rest: &str) -> Result<String, String> {
        Ok(rest.to_owned())
    }
}

/// A producer's name and epoch, as a transaction records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEpoch {
    pub name: String,
    pub epoch: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_gets_the_next_epoch_and_fences_the_older_ones() {
        let first = TxnProducerRecord::next(None, "a");
        assert_eq!(first.epoch, 1);
        let second = TxnProducerRecord::next(Some(&first), "b");
        assert_eq!((second.epoch, second.owner.as_str()), (2, "b"));
        assert!(second.check("p", 2).is_ok());
        assert_eq!(
            second.check("p", 1),
            Err(TxnRuleError::ProducerFenced {
                name: "p".into(),
                epoch: 1,
                current: 2
            })
        );
        // A made-up future epoch is refused as well.
        assert!(second.check("p", 3).is_err());
    }
}
