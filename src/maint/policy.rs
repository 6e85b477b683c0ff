//! The decisions of maintenance, as pure functions: which holders count,
//! when an object is repaired and with how many fresh fragments, which
//! fragments leave its placement. The daemon's repair pass and the churn
//! simulator call the same code.
//!
//! Lazy repair: an object is rebuilt only when fewer than `r` of its
//! fragments sit on holders that still count (connected, or away for less
//! than their gone window), and then back to `n`. Fragments of holders
//! judged gone stay in the placement as spares (at most `n - k`): a holder
//! that returns counts again and nothing is uploaded for it. When returns
//! push an object above `n`, the surplus is released (its lease
//! cancelled), so peers' disks do not fill with leftovers.

use serde::{Deserialize, Serialize};

use super::history::GoneWindow;

/// What maintenance decides by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub k: u32,
    pub n: u32,
    /// Repair when fewer than this many fragments count.
    pub r: u32,
    pub window: GoneWindow,
    /// Counting fragments kept beyond n before the surplus is released
    /// (holders that came back after their fragments were rebuilt).
    #[serde(default)]
    pub keep_extra: u32,
}

impl Policy {
    /// The defaults for `k` of `n`: repair at [`default_threshold`].
    pub fn new(k: u32, n: u32) -> Policy {
        Policy {
            k,
            n,
            r: default_threshold(k, n),
            window: GoneWindow::DEFAULT,
            keep_extra: n.saturating_sub(k),
        }
    }

    /// Checks `k <= r <= n`.
    pub fn validate(&self) -> Result<(), String> {
        if self.r < self.k || self.r > self.n {
            return Err(format!(
                "the repair threshold must lie between k and n ({} and {}), not {}",
                self.k, self.n, self.r
            ));
        }
        Ok(())
    }
}

/// Two thirds of the way from k to n, rounded up, but below n when n > k
/// (a single absence never triggers a repair): 14 for 10 of 16, 7 for 4 of
/// 8, 3 for 2 of 4. ARCHITECTURE.md ("Maintenance") gives the simulator's
/// figures behind it.
pub fn default_threshold(k: u32, n: u32) -> u32 {
    let spare = n.saturating_sub(k);
    (k + (2 * spare).div_ceil(3))
        .min(n.saturating_sub(1))
        .max(k)
}

/// How a fragment's holder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holder {
    /// Connected now.
    Up,
    /// Away, for less than its gone window: still counts.
    Away,
    /// Away longer than its window: does not count, but its fragment
    /// stays as a spare in case it returns.
    Gone,
    /// Said it lost the fragment, or failed an audit of it: dropped.
    Failed,
}

impl Holder {
    pub fn counts(self) -> bool {
        matches!(self, Holder::Up | Holder::Away)
    }
}

/// What to do with one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Positions (in the placement's fragment list) that leave it.
    pub drop: Vec<usize>,
    /// Of `drop`, the ones whose lease is cancelled (holders that still
    /// keep the bytes and answer).
    pub release: Vec<usize>,
    /// Fresh fragments to make and place.
    pub rebuild: u32,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.drop.is_empty() && self.rebuild == 0
    }
}

/// How many of an object's fragments stand each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Up or away within the window.
    pub counted: u32,
    pub gone: u32,
    pub failed: u32,
}

impl Tally {
    pub fn add(&mut self, h: Holder) {
        match h {
            Holder::Up | Holder::Away => self.counted += 1,
            Holder::Gone => self.gone += 1,
            Holder::Failed => self.failed += 1,
        }
    }

    /// Whether [`plan`] leaves an object with this tally alone (returns an
    /// empty plan): a cheap check before building the holder list, for
    /// callers that look at many objects (the simulator's passes).
    pub fn settled(&self, p: &Policy) -> bool {
        self.failed == 0
            && self.counted >= p.r
            && self.counted <= p.n + p.keep_extra
            && self.gone <= p.n - p.k
    }
}

/// Decides for one object, given how each of its fragments' holders
/// stands (with the fragment's index, lower first preferred for keeping:
/// source fragments are read first).
pub fn plan(fragments: &[(u32, Holder)], p: &Policy) -> Plan {
    let mut out = Plan::default();
    let counted = fragments.iter().filter(|(_, h)| h.counts()).count() as u32;
    for (i, (_, h)) in fragments.iter().enumerate() {
        if *h == Holder::Failed {
            out.drop.push(i);
        }
    }
    if counted < p.r {
        out.rebuild = p.n - counted;
    } else if counted > p.n + p.keep_extra {
        // Surplus after returns: release away holders' first, then the
        // highest indexes.
        let mut extra: Vec<usize> = (0..fragments.len())
            .filter(|i| fragments[*i].1.counts())
            .collect();
        extra.sort_by_key(|i| {
            (
                fragments[*i].1 == Holder::Up,
                std::cmp::Reverse(fragments[*i].0),
            )
        });
        extra.truncate((counted - p.n - p.keep_extra) as usize);
        out.release.extend(&extra);
        out.drop.extend(extra);
    }
    // Spares: at most n - k gone fragments stay, the lowest indexes.
    let mut spares: Vec<usize> = (0..fragments.len())
        .filter(|i| fragments[*i].1 == Holder::Gone)
        .collect();
    spares.sort_by_key(|i| fragments[*i].0);
    out.drop
        .extend(spares.into_iter().skip((p.n - p.k) as usize));
    out.drop.sort_unstable();
    out.release.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Holder::*;

    fn frags(states: &[Holder]) -> Vec<(u32, Holder)> {
        states
            .iter()
            .enumerate()
            .map(|(i, h)| (i as u32, *h))
            .collect()
    }

    #[test]
    fn repair_waits_for_the_threshold() {
        let p = Policy::new(10, 16);
        assert_eq!(p.r, 14);
        let mut s = vec![Up; 16];
        assert!(plan(&frags(&s), &p).is_empty());
        // Two away past their windows: 14 still count, nothing to do.
        s[0] = Gone;
        s[1] = Gone;
        s[3] = Away;
        assert!(plan(&frags(&s), &p).is_empty());
        // A third: 13 count, rebuild to 16; the gone ones stay as spares.
        s[2] = Gone;
        let pl = plan(&frags(&s), &p);
        assert_eq!(pl.rebuild, 3);
        assert!(pl.drop.is_empty());
    }

    #[test]
    fn returning_holders_count_again_and_the_surplus_is_released() {
        // Up to n - k extra counting fragments are kept by default (a
        // holder that came back is likely to be away again); here none.
        let p = Policy {
            keep_extra: 0,
            ..Policy::new(2, 4)
        };
        assert_eq!(Policy::new(2, 4).keep_extra, 2);
        // Repaired earlier: 4 fresh fragments plus 2 spares of gone holders.
        let mut s = frags(&[Gone, Gone, Up, Up, Up, Up]);
        assert!(plan(&s, &p).is_empty());
        // Both return: 6 count, the two highest indexes among the
        // connected go.
        s[0].1 = Up;
        s[1].1 = Away;
        let pl = plan(&s, &p);
        assert_eq!(pl.rebuild, 0);
        assert_eq!(pl.release, vec![1, 5]);
        assert_eq!(pl.drop, vec![1, 5]);
    }

    /// `Tally::settled` agrees with `plan` on every placement of up to 9
    /// fragments in every state, for a few policies.
    #[test]
    fn a_settled_tally_is_exactly_an_empty_plan() {
        let policies = [
            Policy::new(2, 4),
            Policy {
                keep_extra: 0,
                ..Policy::new(3, 6)
            },
            Policy {
                r: 2,
                ..Policy::new(2, 5)
            },
        ];
        let states = [Up, Away, Gone, Failed];
        for p in &policies {
            for len in 0..=9u32 {
                for code in 0..4u32.pow(len) {
                    let s: Vec<Holder> = (0..len)
                        .map(|i| states[(code / 4u32.pow(i) % 4) as usize])
                        .collect();
                    let mut t = Tally::default();
                    s.iter().for_each(|h| t.add(*h));
                    assert_eq!(t.settled(p), plan(&frags(&s), p).is_empty(), "{s:?} {p:?}");
                }
            }
        }
    }

    #[test]
    fn failed_fragments_go_and_spares_are_bounded() {
        let p = Policy::new(2, 4);
        let s = frags(&[Failed, Gone, Gone, Gone, Up, Up]);
        let pl = plan(&s, &p);
        assert_eq!(pl.rebuild, 2);
        // Failed dropped, the third spare dropped (n - k = 2 kept), none
        // released (their holders are not answering).
        assert_eq!(pl.drop, vec![0, 3]);
        assert!(pl.release.is_empty());
        assert_eq!(default_threshold(2, 4), 3);
        assert_eq!(default_threshold(10, 16), 14);
        assert_eq!(default_threshold(4, 8), 7);
        assert_eq!(default_threshold(3, 3), 3);
        assert!(Policy { r: 5, ..p }.validate().is_err());
    }
}
