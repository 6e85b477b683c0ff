//! One injectable wall clock for everything that ages: lease due dates and
//! node-side expiry, peer uptime, audit budgets, loss detection. The daemon
//! uses [`SystemClock`]; tests and the simulator use [`SimClock`] and move
//! time forward by months in microseconds.
//!
//! Wall-clock seconds, not a monotonic timer: tokio's timers stop while a
//! laptop is suspended, and lease due dates must survive restarts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Seconds since the Unix epoch, as some clock sees them.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> u64;
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// Seconds since the Unix epoch by the machine's clock (for what is
/// shown to people; maintenance takes a [`Clock`]).
pub fn now_secs() -> u64 {
    SystemClock.now()
}

/// The machine's clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct SimClock(AtomicU64);

impl SimClock {
    pub fn new(start: u64) -> Arc<SimClock> {
        Arc::new(SimClock(AtomicU64::new(start)))
    }
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    pub fn set(&self, secs: u64) {
        self.0.store(secs, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulated_clock_moves_only_when_told() {
        let c = SimClock::new(100);
        let shared: Arc<dyn Clock> = c.clone();
        assert_eq!(shared.now(), 100);
        c.advance(86_400 * 365);
        assert_eq!(shared.now(), 100 + 86_400 * 365);
        assert!(SystemClock.now() > 1_700_000_000);
    }
}
