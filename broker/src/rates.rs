//! Message and byte rates for stats: counts per second over the last few whole seconds, as a
//! plain struct (the caller passes the time).

/// Seconds the rate is averaged over.
pub const WINDOW_SECS: u64 = 10;

/// Counts per whole second for the last `WINDOW_SECS` seconds (and the current one).
#[derive(Debug, Default)]
pub struct RateWindow {
    /// (second, count), indexed by second modulo the window (+1 for the current second).
    buckets: [(u64, u64); WINDOW_SECS as usize + 1],
}

impl RateWindow {
    pub fn add(&mut self, now_secs: u64, n: u64) {
        let slot = &mut self.buckets[(now_secs % (WINDOW_SECS + 1)) as usize];
        if slot.0 != now_secs {
            *slot = (now_secs, 0);
        }
        slot.1 += n;
    }

    /// Per second, over the `WINDOW_SECS` whole seconds before `now_secs`.
    pub fn rate(&self, now_secs: u64) -> f64 {
        let from = now_secs.saturating_sub(WINDOW_SECS);
        let total: u64 = self
            .buckets
            .iter()
            .filter(|(second, _)| *second >= from && *second < now_secs)
            .map(|(_, count)| count)
            .sum();
        total as f64 / WINDOW_SECS as f64
    }
}

/// A [`RateWindow`] behind a lock, on the wall clock.
#[derive(Debug, Default)]
pub struct RateMeter(std::sync::Mutex<RateWindow>);

impl RateMeter {
    pub fn add(&self, n: u64) {
        self.lock().add(now_secs(), n);
    }

    pub fn rate(&self) -> f64 {
        self.lock().rate(now_secs())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RateWindow> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rate averages the whole seconds of the window; the current second and anything
    /// older than the window do not count.
    #[test]
    fn rate_averages_the_last_whole_seconds() {
        let mut w = RateWindow::default();
        for second in 100..110 {
            w.add(second, 50);
        }
        w.add(110, 1_000); // the current second: not yet counted
        assert_eq!(w.rate(110), 50.0);
        assert_eq!(
            w.rate(115),
            25.0 + 100.0,
            "five old seconds gone, the 1000 counted"
        );
        assert_eq!(w.rate(200), 0.0, "idle for longer than the window");
    }

    /// A slot reused for a later second starts from zero.
    #[test]
    fn reused_slots_start_again() {
        let mut w = RateWindow::default();
        w.add(1, 7);
        w.add(1 + WINDOW_SECS + 1, 3);
        assert_eq!(w.rate(WINDOW_SECS + 3), 0.3);
    }
}
