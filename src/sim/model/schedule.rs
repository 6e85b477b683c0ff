//! The owners' mount schedule (online `online` seconds of every `period`)
//! as arithmetic on seconds: online time between two instants, the next
//! online moment, advancing by an amount of online time.

/// The owners' mount schedule as arithmetic on seconds.
#[derive(Clone, Copy)]
pub(super) struct Schedule {
    /// Seconds from one mount to the next.
    pub(super) period: u64,
    /// Seconds online at the start of each period.
    pub(super) online: u64,
}

impl Schedule {
    pub(super) fn always(&self) -> bool {
        self.online >= self.period
    }
    pub(super) fn is_online(&self, t: u64) -> bool {
        self.always() || t % self.period < self.online
    }
    /// Online seconds in `[0, t)`.
    pub(super) fn cumulative(&self, t: u64) -> u64 {
        if self.always() {
            return t;
        }
        (t / self.period) * self.online + (t % self.period).min(self.online)
    }
    pub(super) fn online_between(&self, a: u64, b: u64) -> u64 {
        self.cumulative(b).saturating_sub(self.cumulative(a))
    }
    /// The first time at or after `t` by which `secs` online seconds have
    /// passed since `t`.
    pub(super) fn advance(&self, t: u64, secs: u64) -> u64 {
        if self.always() {
            return t + secs;
        }
        let target = self.cumulative(t) + secs;
        let (periods, rem) = (target / self.online, target % self.online);
        let at = if rem == 0 && periods > 0 {
            (periods - 1) * self.period + self.online
        } else {
            periods * self.period + rem
        };
        at.max(t)
    }
    /// The end of the owners' last online period before `t` (0 if none).
    pub(super) fn last_online_end(&self, t: u64) -> u64 {
        if self.always() {
            return t;
        }
        let start = t / self.period * self.period;
        if t - start >= self.online {
            start + self.online
        } else {
            start.saturating_sub(self.period - self.online)
        }
    }

    /// The next time the owners are online, from `t`.
    pub(super) fn next_online(&self, t: u64) -> u64 {
        if self.is_online(t) {
            t
        } else {
            (t / self.period + 1) * self.period
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DAY, HOUR};
    use super::*;

    #[test]
    fn the_schedule_counts_online_time() {
        let s = Schedule {
            period: 24 * HOUR,
            online: 8 * HOUR,
        };
        assert_eq!(s.online_between(0, DAY), 8 * HOUR);
        assert_eq!(s.online_between(7 * HOUR, 25 * HOUR), 2 * HOUR);
        // From 7:00, 3 online hours end at 2:00 the next day.
        assert_eq!(s.advance(7 * HOUR, 3 * HOUR), DAY + 2 * HOUR);
        assert_eq!(s.advance(10 * HOUR, 0), 10 * HOUR);
        assert_eq!(s.next_online(10 * HOUR), DAY);
        assert!(s.is_online(DAY + 1));
        assert_eq!(s.last_online_end(10 * HOUR), 8 * HOUR);
        assert_eq!(s.last_online_end(DAY + HOUR), 8 * HOUR);
    }
}
