//! Broker metrics, rendered as Prometheus text on the HTTP side port.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct BrokerMetrics {
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub entries_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub publish_errors: AtomicU64,
    pub duplicates: AtomicU64,
    pub connections: AtomicU64,
    pub producers: AtomicU64,
    pub consumers: AtomicU64,
    pub txns: crate::txn_metrics::TxnMetrics,
}

impl BrokerMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &str, &AtomicU64); 9] = [
            (
                "strata_broker_messages_in_total",
                "counter",
                "Messages stored",
                &self.messages_in,
            ),
            (
                "strata_broker_bytes_in_total",
                "counter",
                "Payload bytes stored",
                &self.bytes_in,
            ),
            (
                "strata_broker_entries_in_total",
                "counter",
                "Entries (producer batches) stored",
                &self.entries_in,
            ),
            (
                "strata_broker_messages_out_total",
                "counter",
                "Messages delivered",
                &self.messages_out,
            ),
            (
                "strata_broker_publish_errors_total",
                "counter",
                "Batches that failed to store",
                &self.publish_errors,
            ),
            (
                "strata_broker_duplicate_batches_total",
                "counter",
                "Resent producer batches recognised as already stored",
                &self.duplicates,
            ),
            (
                "strata_broker_connections",
                "gauge",
                "Open client connections",
                &self.connections,
            ),
            (
                "strata_broker_producers",
                "gauge",
                "Open producer sessions",
                &self.producers,
            ),
            (
                "strata_broker_consumers",
                "gauge",
                "Open consumer sessions",
                &self.consumers,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                value.load(Relaxed)
            ));
        }
        self.txns
            .render(strata_metastore::tables::now_ms(), &mut out);
        out
    }
}
