//! Counters of the bookie server and their Prometheus rendering.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::DiskStatus;
use crate::StorageStats;

#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) connections: AtomicU64,
    pub(crate) adds: AtomicU64,
    pub(crate) add_bytes: AtomicU64,
    pub(crate) add_errors: AtomicU64,
    pub(crate) read_only_rejections: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) read_bytes: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) lac_reads: AtomicU64,
    pub(crate) long_polls: AtomicU64,
    pub(crate) fences: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) checksum_mismatches: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
}

/// Decrements a gauge when dropped.
pub(crate) struct GaugeGuard<'a>(&'a AtomicU64);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

pub(crate) fn inc(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Relaxed);
}

impl Metrics {
    pub(crate) fn connection_opened(&self) -> GaugeGuard<'_> {
        self.connections.fetch_add(1, Relaxed);
        GaugeGuard(&self.connections)
    }

    pub(crate) fn long_poll_started(&self) -> GaugeGuard<'_> {
        self.long_polls.fetch_add(1, Relaxed);
        GaugeGuard(&self.long_polls)
    }

    pub(crate) fn snapshot(&self, disk: DiskStatus, storage: StorageStats) -> ServerStats {
        let get = |a: &AtomicU64| a.load(Relaxed);
        ServerStats {
            connections: get(&self.connections),
            adds: get(&self.adds),
            add_bytes: get(&self.add_bytes),
            add_errors: get(&self.add_errors),
            read_only_rejections: get(&self.read_only_rejections),
            reads: get(&self.reads),
            read_bytes: get(&self.read_bytes),
            read_errors: get(&self.read_errors),
            lac_reads: get(&self.lac_reads),
            long_polls: get(&self.long_polls),
            fences: get(&self.fences),
            deletes: get(&self.deletes),
            checksum_mismatches: get(&self.checksum_mismatches),
            protocol_errors: get(&self.protocol_errors),
            disk,
            storage,
        }
    }
}

/// The server's counters (since start) and gauges (now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStats {
    /// Open connections (gauge).
    pub connections: u64,
    /// Adds acknowledged.
    pub adds: u64,
    /// Payload bytes of acknowledged adds.
    pub add_bytes: u64,
    /// Adds answered with an error (read-only rejections included).
    pub add_errors: u64,
    /// Adds refused because the bookie is read-only.
    pub read_only_rejections: u64,
    /// Entries read and returned.
    pub reads: u64,
    /// Payload bytes returned by reads.
    pub read_bytes: u64,
    /// Entry reads answered with an error.
    pub read_errors: u64,
    /// LAC reads answered (long polls included).
    pub lac_reads: u64,
    /// Long polls waiting now (gauge).
    pub long_polls: u64,
    /// Fences requested by fencing reads.
    pub fences: u64,
    /// Ledgers deleted on request.
    pub deletes: u64,
    /// Reads answered `ChecksumMismatch`.
    pub checksum_mismatches: u64,
    /// Streams ended for a frame that could not be read.
    pub protocol_errors: u64,
    pub disk: DiskStatus,
    pub storage: StorageStats,
}

impl ServerStats {
    /// Prometheus text exposition of every figure.
    pub fn render_prometheus(&self) -> String {
        let rows: [(&str, &str, &str, u64); 22] = [
            (
                "strata_bookie_connections",
                "gauge",
                "Open connections",
                self.connections,
            ),
            (
                "strata_bookie_adds_total",
                "counter",
                "Adds acknowledged",
                self.adds,
            ),
            (
                "strata_bookie_add_bytes_total",
                "counter",
                "Payload bytes of acknowledged adds",
                self.add_bytes,
            ),
            (
                "strata_bookie_add_errors_total",
                "counter",
                "Adds answered with an error",
                self.add_errors,
            ),
            (
                "strata_bookie_read_only_rejections_total",
                "counter",
                "Adds refused because the bookie is read-only",
                self.read_only_rejections,
            ),
            (
                "strata_bookie_reads_total",
                "counter",
                "Entries read",
                self.reads,
            ),
            (
                "strata_bookie_read_bytes_total",
                "counter",
                "Payload bytes read",
                self.read_bytes,
            ),
            (
                "strata_bookie_read_errors_total",
                "counter",
                "Entry reads answered with an error",
                self.read_errors,
            ),
            (
                "strata_bookie_lac_reads_total",
                "counter",
                "Last-add-confirmed reads answered",
                self.lac_reads,
            ),
            (
                "strata_bookie_long_polls",
                "gauge",
                "Long-poll LAC reads waiting",
                self.long_polls,
            ),
            (
                "strata_bookie_fences_total",
                "counter",
                "Fences by fencing reads",
                self.fences,
            ),
            (
                "strata_bookie_deletes_total",
                "counter",
                "Ledgers deleted on request",
                self.deletes,
            ),
            (
                "strata_bookie_checksum_mismatch_replies_total",
                "counter",
                "Reads answered ChecksumMismatch",
                self.checksum_mismatches,
            ),
            (
                "strata_bookie_corrupt_reads_total",
                "counter",
                "Entries whose checksum did not match",
                self.storage.corrupt_reads,
            ),
            (
                "strata_bookie_protocol_errors_total",
                "counter",
                "Streams ended for an unreadable frame",
                self.protocol_errors,
            ),
            (
                "strata_bookie_read_only",
                "gauge",
                "1 if adds are refused for lack of disk space",
                u64::from(self.disk.read_only),
            ),
            (
                "strata_bookie_disk_free_bytes",
                "gauge",
                "Free bytes on the data directory's file system",
                self.disk.free_bytes,
            ),
            (
                "strata_bookie_disk_total_bytes",
                "gauge",
                "Size of the data directory's file system",
                self.disk.total_bytes,
            ),
            (
                "strata_bookie_disk_required_free_bytes",
                "gauge",
                "Free bytes below which the bookie is read-only",
                self.disk.required_free_bytes,
            ),
            (
                "strata_bookie_group_commits_total",
                "counter",
                "Group commits written (one fsync each)",
                self.storage.batches,
            ),
            (
                "strata_bookie_fenced_rejections_total",
                "counter",
                "Adds refused because the ledger is fenced",
                self.storage.fenced_rejections,
            ),
            (
                "strata_bookie_journal_queued",
                "gauge",
                "Writes queued to the journal",
                self.storage.queued,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }
}
