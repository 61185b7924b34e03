//! Free-space watch: below a threshold the bookie turns read-only (adds refused, reads served),
//! as BookKeeper's disk checker does, so a full disk never fails a write half-way.
//!
//! [`DiskPolicy`] is the decision, plain logic; [`DiskMonitor`] samples the file system
//! (`statvfs`) on an interval and publishes a [`DiskStatus`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// When the bookie stops accepting adds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskThreshold {
    /// Read-only when fewer bytes than this are free.
    pub min_free_bytes: u64,
    /// Read-only when less than this fraction of the file system is free (0.05 = 5%).
    pub min_free_ratio: f64,
}

impl Default for DiskThreshold {
    fn default() -> Self {
        DiskThreshold {
            min_free_bytes: 1024 * 1024 * 1024,
            min_free_ratio: 0.05,
        }
    }
}

impl DiskThreshold {
    /// Checks the ratio is a fraction.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.min_free_ratio) {
            return Err(format!(
                "min_free_ratio {} must be at least 0 and below 1",
                self.min_free_ratio
            ));
        }
        Ok(())
    }

    /// Free bytes needed on a file system of `total` bytes.
    pub fn required_free(&self, total: u64) -> u64 {
        let by_ratio = (self.min_free_ratio * total as f64).ceil() as u64;
        self.min_free_bytes.max(by_ratio)
    }
}

/// The read-only decision, with hysteresis: once read-only, the bookie becomes writable again
/// only when 10% more than the required space is free, so it does not flap at the edge.
#[derive(Debug, Clone, Copy)]
pub struct DiskPolicy {
    pub threshold: DiskThreshold,
}

impl DiskPolicy {
    /// Whether the bookie is read-only with `free` of `total` bytes free, given its last state.
    pub fn read_only(&self, was_read_only: bool, free: u64, total: u64) -> bool {
        let required = self.threshold.required_free(total);
        if was_read_only {
            free < required.saturating_add(required / 10)
        } else {
            free < required
        }
    }
}

/// The bookie's disk as last sampled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskStatus {
    /// Bytes available to the bookie's user.
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Free bytes below which adds are refused.
    pub required_free_bytes: u64,
    pub read_only: bool,
}

impl DiskStatus {
    /// Why adds are refused (for the `ReadOnly` error).
    pub fn reason(&self, path: &Path) -> String {
        format!(
            "bookie is read-only: {} bytes free of {} on {}, below the threshold of {} bytes",
            self.free_bytes,
            self.total_bytes,
            path.display(),
            self.required_free_bytes
        )
    }
}

/// Samples `path`'s file system: (bytes available to unprivileged users, total bytes).
pub fn sample(path: &Path) -> std::io::Result<(u64, u64)> {
    let stat = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    let unit = if stat.f_frsize > 0 {
        stat.f_frsize
    } else {
        stat.f_bsize
    };
    Ok((
        stat.f_bavail.saturating_mul(unit),
        stat.f_blocks.saturating_mul(unit),
    ))
}

/// Watches the free space of one directory; see the module docs.
pub(crate) struct DiskMonitor {
    pub(crate) path: PathBuf,
    policy: DiskPolicy,
    read_only: Arc<AtomicBool>,
    status: watch::Sender<DiskStatus>,
}

impl DiskMonitor {
    /// Samples once (so the first request already sees the right state) and returns the
    /// monitor; fails if the file system cannot be queried at all.
    pub(crate) fn new(path: PathBuf, threshold: DiskThreshold) -> std::io::Result<Arc<Self>> {
        let policy = DiskPolicy { threshold };
        let (free, total) = sample(&path)?;
        let status = DiskStatus {
            free_bytes: free,
            total_bytes: total,
            required_free_bytes: threshold.required_free(total),
            read_only: policy.read_only(false, free, total),
        };
        if status.read_only {
            warn!(reason = %status.reason(&path), "bookie starts read-only");
        }
        Ok(Arc::new(DiskMonitor {
            read_only: Arc::new(AtomicBool::new(status.read_only)),
            status: watch::channel(status).0,
            path,
            policy,
        }))
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    pub(crate) fn status(&self) -> DiskStatus {
        self.status.borrow().clone()
    }

    /// A receiver of the status: its value is refreshed on every sample, but it is marked
    /// changed only when the read-only flag flips.
    pub(crate) fn subscribe(&self) -> watch::Receiver<DiskStatus> {
        self.status.subscribe()
    }

    /// Takes one sample and applies it.
    pub(crate) fn check(&self) {
        let (free, total) = match sample(&self.path) {
            Ok(s) => s,
            Err(e) => {
                // Keep the last state: a failing statvfs says nothing about free space.
                error!(path = %self.path.display(), error = %e, "cannot read free disk space");
                return;
            }
        };
        self.status.send_if_modified(|status| {
            let read_only = self.policy.read_only(status.read_only, free, total);
            let flipped = read_only != status.read_only;
            *status = DiskStatus {
                free_bytes: free,
                total_bytes: total,
                required_free_bytes: self.policy.threshold.required_free(total),
                read_only,
            };
            if flipped {
                self.read_only.store(read_only, Ordering::Release);
                if read_only {
                    warn!(reason = %status.reason(&self.path), "bookie turned read-only");
                } else {
                    info!(free_bytes = free, "bookie writable again");
                }
            }
            flipped
        });
    }

    /// Samples every `interval` until `stop` is cancelled.
    pub(crate) async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => return,
            }
            let monitor = self.clone();
            // statvfs is a blocking system call.
            if tokio::task::spawn_blocking(move || monitor.check())
                .await
                .is_err()
            {
                error!("disk check task panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    /// The larger of the absolute and relative thresholds applies.
    #[test]
    fn the_stricter_threshold_applies() {
        let t = DiskThreshold {
            min_free_bytes: GIB,
            min_free_ratio: 0.05,
        };
        assert_eq!(t.required_free(10 * GIB), GIB);
        assert_eq!(t.required_free(100 * GIB), 5 * GIB);
        assert!(
            DiskThreshold {
                min_free_ratio: 1.0,
                ..t
            }
            .validate()
            .is_err()
        );
        assert!(t.validate().is_ok());
    }

    /// Read-only below the threshold; writable again only 10% above it (no flapping).
    #[test]
    fn read_only_has_hysteresis() {
        let p = DiskPolicy {
            threshold: DiskThreshold {
                min_free_bytes: 100,
                min_free_ratio: 0.0,
            },
        };
        assert!(!p.read_only(false, 100, 1000));
        assert!(p.read_only(false, 99, 1000));
        assert!(p.read_only(true, 105, 1000));
        assert!(!p.read_only(true, 110, 1000));
        // A threshold above any disk keeps it read-only without overflowing.
        let all = DiskPolicy {
            threshold: DiskThreshold {
                min_free_bytes: u64::MAX,
                min_free_ratio: 0.0,
            },
        };
        assert!(all.read_only(true, u64::MAX - 1, u64::MAX));
    }

    /// statvfs of an existing directory reports some space and a total at least as large.
    #[test]
    fn sampling_a_directory_works() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (free, total) = sample(dir.path()).expect("statvfs");
        assert!(total > 0 && free <= total, "{free} of {total}");
        assert!(sample(&dir.path().join("missing")).is_err());
    }
}
