//! How each peer usually behaves: time seen connected and disconnected,
//! and the lengths of its recent absences, counted only while this node
//! was running (our own downtime tells nothing about a peer). Kept in the
//! address book, so it survives restarts.
//!
//! The gone window of a peer (how long it may be away before its
//! fragments are rebuilt elsewhere) follows its longest recent absence: a
//! desktop that sleeps every night for 10 hours is not condemned at
//! hour 11 of the first night it is late, and a peer that is always on is
//! judged quickly.

use serde::{Deserialize, Serialize};

/// Completed absences remembered per peer.
pub const ABSENCES_KEPT: usize = 16;
/// A gap between two observations longer than this was our own downtime
/// (or a suspend) and is not counted.
pub const MAX_STEP: u64 = 300;
/// Observed time below which a peer's history is too short to judge.
const SETTLED: u64 = 24 * 3600;

/// Bounds of the gone window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoneWindow {
    /// Never judge a peer gone sooner.
    pub min: u64,
    /// Never wait longer.
    pub max: u64,
    /// For peers with too little history.
    pub unknown: u64,
}

impl GoneWindow {
    /// The defaults (see ARCHITECTURE.md, "Maintenance", for the
    /// simulator's figures behind them): at least an hour, at most a
    /// day, a day for peers we hardly know.
    pub const DEFAULT: GoneWindow = GoneWindow {
        min: 3600,
        max: 86_400,
        unknown: 86_400,
    };

    /// The same window for every peer (tests, `--lost-after-secs`).
    pub fn fixed(secs: u64) -> GoneWindow {
        GoneWindow {
            min: secs,
            max: secs,
            unknown: secs,
        }
    }
}

impl Default for GoneWindow {
    fn default() -> Self {
        GoneWindow::DEFAULT
    }
}

/// Observed behaviour of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uptime {
    /// Seconds seen connected.
    pub up: u64,
    /// Seconds seen disconnected.
    pub down: u64,
    /// Length of the absence under way (0 while connected).
    pub away: u64,
    /// Lengths of recent completed absences, oldest first.
    pub absences: Vec<u64>,
    /// Wall-clock time it was last seen connected (0: never).
    #[serde(default)]
    pub seen: u64,
}

impl Uptime {
    /// Counts `step` seconds in the state seen now. Steps longer than
    /// [`MAX_STEP`] are cut to it: a gap that long means this node was not
    /// watching.
    pub fn observe(&mut self, connected: bool, step: u64) {
        self.watched(connected, step.min(MAX_STEP));
    }

    /// Counts `secs` seconds in one state, all of them watched (the
    /// simulator, which knows when the owner was online).
    pub fn watched(&mut self, connected: bool, step: u64) {
        if connected {
            self.up += step;
            if self.away > 0 {
                self.absences.push(self.away);
                if self.absences.len() > ABSENCES_KEPT {
                    self.absences.remove(0);
                }
                self.away = 0;
            }
        } else {
            self.down += step;
            self.away += step;
        }
    }

    /// Fraction of observed time the peer was connected, with one hour of
    /// each as a prior (so a peer seen for a minute is not "100%").
    pub fn availability(&self) -> f64 {
        (self.up as f64 + 3600.0) / ((self.up + self.down) as f64 + 7200.0)
    }

    /// How long this peer may be away before it is judged gone.
    pub fn gone_window(&self, w: &GoneWindow) -> u64 {
        if self.up + self.down < SETTLED {
            return w.unknown.clamp(w.min, w.max);
        }
        self.settled_window(w)
    }

    /// The window once the history is long enough: twice the longest
    /// recent absence, within the bounds.
    fn settled_window(&self, w: &GoneWindow) -> u64 {
        let longest = self.absences.iter().copied().max().unwrap_or(0);
        longest.saturating_mul(2).clamp(w.min, w.max)
    }

    /// Watched seconds from now until [`is_gone`](Self::is_gone) says
    /// gone by watched time, if the peer stays away: its window may
    /// change meanwhile, from the one for peers we hardly know to the one
    /// its absences give, once the watched time is long enough.
    pub fn watch_until_gone(&self, w: &GoneWindow) -> u64 {
        let total = self.up + self.down;
        let past = |window: u64| (window + 1).saturating_sub(self.away);
        let settled = self.settled_window(w);
        if total >= SETTLED {
            return past(settled);
        }
        // Gone under the short-history window before the history settles?
        let early = past(w.unknown.clamp(w.min, w.max));
        if early < SETTLED - total {
            return early;
        }
        past(settled).max(SETTLED - total)
    }

    /// True if the peer has been away longer than its window (time this
    /// node watched), or longer than the window's maximum by the wall
    /// clock since it was last seen: an owner online a few hours a day
    /// still condemns a departed holder within [`GoneWindow::max`].
    pub fn is_gone(&self, w: &GoneWindow, now: u64) -> bool {
        self.away > self.gone_window(w) || (self.seen > 0 && now.saturating_sub(self.seen) > w.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps through `hours` of a peer that is up `on` hours, then down
    /// `off`, in 60 s observations.
    fn pattern(u: &mut Uptime, hours: u64, on: u64, off: u64) {
        for m in 0..hours * 60 {
            let h = (m / 60) % (on + off);
            u.observe(h < on, 60);
        }
    }

    #[test]
    fn a_nightly_sleeper_gets_a_window_past_its_nights() {
        let w = GoneWindow::DEFAULT;
        let mut u = Uptime::default();
        assert_eq!(u.gone_window(&w), w.unknown);
        // A week, ending at the end of a day's 14 connected hours.
        pattern(&mut u, 24 * 7 - 10, 14, 10);
        assert!((0.55..0.65).contains(&u.availability()));
        assert_eq!(u.gone_window(&w), 20 * 3600);
        // Away 11 hours: late, not gone.
        for _ in 0..11 * 60 {
            u.observe(false, 60);
        }
        assert!(!u.is_gone(&w, 0));
        for _ in 0..10 * 60 {
            u.observe(false, 60);
        }
        assert!(u.is_gone(&w, 0));
        // It comes back: its history now has the long absence (twice it
        // is past the maximum).
        u.observe(true, 60);
        assert_eq!(u.away, 0);
        assert_eq!(u.gone_window(&w), w.max);
        assert_eq!(
            u.gone_window(&GoneWindow {
                max: 3 * 86_400,
                ..w
            }),
            42 * 3600
        );
    }

    #[test]
    fn an_always_on_peer_is_judged_quickly_and_our_downtime_does_not_count() {
        let w = GoneWindow::DEFAULT;
        let mut u = Uptime::default();
        pattern(&mut u, 48, 1, 0);
        assert_eq!(u.gone_window(&w), w.min);
        // This node was off for a week: one capped step.
        u.observe(false, 7 * 86_400);
        assert_eq!(u.away, MAX_STEP);
        assert!(!u.is_gone(&w, 0));
        // By the wall clock it was last seen a week ago: past the maximum.
        u.seen = 1_000;
        assert!(u.is_gone(&w, 1_000 + 7 * 86_400));
        assert!(!u.is_gone(&w, 1_000 + 3600));
        assert_eq!(Uptime::default().gone_window(&GoneWindow::fixed(3)), 3);
    }

    /// The model's shortcut agrees with stepping the peer's history until
    /// it is gone, across the switch from a short history to a settled one.
    #[test]
    fn watch_until_gone_agrees_with_watching() {
        let w = GoneWindow::DEFAULT;
        for (up, down, away, absences) in [
            (0, 0, 0, vec![]),
            (20 * 3600, 0, 0, vec![]),
            (20 * 3600, 3 * 3600, 3 * 3600, vec![]),
            (10 * 3600, 4 * 3600, 0, vec![2 * 3600]),
            (23 * 3600, 600, 0, vec![600]),
            (50 * 3600, 7200, 1200, vec![7200, 300]),
            (5 * 3600, 2 * 3600, 0, vec![11 * 3600]),
        ] {
            let start = Uptime {
                up,
                down,
                away,
                absences: absences.clone(),
                seen: 0,
            };
            let mut u = start.clone();
            let mut watched = 0;
            while !u.is_gone(&w, 0) {
                u.watched(false, 1);
                watched += 1;
            }
            assert_eq!(start.watch_until_gone(&w), watched, "{start:?}");
        }
    }
}
