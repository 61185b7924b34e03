//! Transaction metrics: decisions made through this broker with their latency, and, per
//! partition served here, the open transactions and how far behind the stable position is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use strata_proto::TopicName;

use crate::topic::Topic;

/// Upper bounds (seconds) of the commit latency buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// A Prometheus histogram with fixed buckets, lock-free to record.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[slot].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
            out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {cumulative}\n"));
        }
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        out.push_str(&format!("{name}_sum {sum}\n{name}_count {cumulative}\n"));
    }
}

#[derive(Debug, Default)]
pub struct TxnMetrics {
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    /// From a commit request's arrival to the coordinator's decision.
    pub commit_latency: LatencyHistogram,
    /// The partitions served here, for their gauges (a dropped topic drops out).
    partitions: Mutex<HashMap<TopicName, Weak<Topic>>>,
}

impl TxnMetrics {
    pub fn track(&self, topic: &std::sync::Arc<Topic>) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        partitions.retain(|_, t| t.strong_count() > 0);
        partitions.insert(topic.name().clone(), std::sync::Arc::downgrade(topic));
    }

    pub fn render(&self, now_ms: u64, out: &mut String) {
        for (name, help, value) in [
            (
                "strata_broker_txn_committed_total",
                "Transactions committed through this broker",
                &self.committed,
            ),
            (
                "strata_broker_txn_aborted_total",
                "Transactions aborted through this broker (clients and operators)",
                &self.aborted,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Relaxed)
            ));
        }
        self.commit_latency.render(
            "strata_broker_txn_commit_latency_seconds",
            "Commit requests, from arrival to the coordinator's decision",
            out,
        );
        let partitions: Vec<_> = {
            let map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
            map.values().filter_map(Weak::upgrade).collect()
        };
        out.push_str(
            "# HELP strata_broker_txn_open Open transactions that wrote to the partition\n\
             # TYPE strata_broker_txn_open gauge\n",
        );
        let gauges: Vec<_> = partitions
            .iter()
            .map(|t| (t.name().to_string(), t.txn_gauges(now_ms)))
            .collect();
        for (topic, (open, _)) in &gauges {
            out.push_str(&format!(
                "strata_broker_txn_open{{topic=\"{topic}\"}} {open}\n"
            ));
        }
        out.push_str(
            "# HELP strata_broker_txn_stable_lag_seconds Age of the partition's oldest open \
             transaction: how long read-committed delivery has been held back\n\
             # TYPE strata_broker_txn_stable_lag_seconds gauge\n",
        );
        for (topic, (_, lag_ms)) in &gauges {
            out.push_str(&format!(
                "strata_broker_txn_stable_lag_seconds{{topic=\"{topic}\"}} {}\n",
                *lag_ms as f64 / 1000.0
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(60));
        let mut out = String::new();
        h.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert!(out.contains("x_sum 60.0035\n"), "{out}");
    }
}
