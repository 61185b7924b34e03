//! The check-back index: when each open check-back transaction's producer group is next
//! asked whether it should commit or abort (RocketMQ's transaction check). The metastore
//! leader walks it in time order; see `TxnCoordinator::check_due`.

use serde::{Deserialize, Serialize};
use strata_proto::TxnId;

use super::record::JsonRecord;
use super::table::{Listing, Schema};

pub const PREFIX: &str = "/txn-checks/";

/// A transaction of `group` is due for a check at the time in its key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckMark {
    pub group: String,
}

impl JsonRecord for CheckMark {
    const FORMAT_VERSION: u32 = 1;
}

/// Keys sort by due time, then id; list with parent `()`.
#[derive(Debug)]
pub struct TxnChecks;

impl Schema for TxnChecks {
    type Key = (u64, TxnId);
    type Record = CheckMark;
    const NAME: &'static str = "transaction check";

    fn key((due_ms, id): &(u64, TxnId)) -> String {
        format!("{PREFIX}{due_ms:020}/{:020}", id.0)
    }
}

impl Listing for TxnChecks {
    type Parent = ();

    fn prefix(_: &()) -> String {
        PREFIX.to_owned()
    }

    fn child(_: &(), rest: &str) -> Result<(u64, TxnId), String> {
        super::txns::parse_time_and_id(rest)
    }
}
