//! How safe the vault is, estimated from the measured uptime of its actual
//! holders: the chance a read finds k fragments on holders that are up,
//! the yearly loss probability by the Markov model ([`super::markov`]),
//! and the objects at or below the repair threshold. `drizzle status`
//! shows it.

use serde::{Deserialize, Serialize};

use super::markov;
use super::policy::Policy;

/// Holders assumed to leave for good per day (5% a month), for the loss
/// estimate: departures cannot be told from long absences until long after.
pub const ASSUMED_DEPARTURES_PER_DAY: f64 = 0.05 / 30.0;

/// The estimate `status` shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Durability {
    /// Mean over objects of P(at least k of its holders are up).
    pub read_availability: f64,
    /// Mean over objects of the probability of losing it within a year.
    pub yearly_loss: f64,
    /// Objects with r or fewer fragments on holders that count.
    pub at_or_below_threshold: u64,
    pub repair_threshold: u32,
    /// Mean measured availability of the holders.
    pub holder_availability: f64,
    /// Mean time from a holder leaving to its fragments being rebuilt, as
    /// assumed (gone window plus an hour), in hours.
    pub repair_hours: f64,
    /// Objects the estimate covers (a sample of at most [`SAMPLE`]).
    pub objects: u64,
}

/// Objects looked at, at most.
pub const SAMPLE: usize = 2000;

/// One fragment's holder, as the estimate sees it.
#[derive(Clone, Copy, Debug)]
pub struct HolderView {
    /// Measured fraction of time up.
    pub availability: f64,
    /// Whether it counts for repair (up, or away within its window).
    pub counts: bool,
    /// Its gone window, seconds.
    pub window: u64,
}

/// Estimates from each object's holders.
pub fn estimate(objects: &[Vec<HolderView>], p: &Policy) -> Durability {
    if objects.is_empty() {
        return Durability {
            read_availability: 1.0,
            repair_threshold: p.r,
            ..Default::default()
        };
    }
    let (mut read, mut below, mut avail_sum, mut holders, mut window_sum) = (0.0, 0, 0.0, 0, 0.0);
    let mut counted = Vec::with_capacity(objects.len());
    for o in objects {
        let up: Vec<f64> = o
            .iter()
            .filter(|h| h.counts)
            .map(|h| h.availability)
            .collect();
        read += markov::read_availability(p.k as usize, &up);
        let c = up.len() as u32;
        below += (c <= p.r) as u64;
        counted.push(c);
        for h in o {
            avail_sum += h.availability;
            window_sum += h.window as f64;
            holders += 1;
        }
    }
    let repair_hours = window_sum / holders.max(1) as f64 / 3600.0 + 1.0;
    let mu = 24.0 / repair_hours;
    // One chain per distinct survivor count.
    let mut by_count = std::collections::BTreeMap::new();
    let mut loss = 0.0;
    for c in counted {
        let c = c.min(p.n);
        loss += *by_count.entry(c).or_insert_with(|| {
            markov::loss_probability_from(p.k, p.n, p.r, ASSUMED_DEPARTURES_PER_DAY, mu, 365.0, c)
        });
    }
    let n = objects.len() as f64;
    Durability {
        read_availability: read / n,
        yearly_loss: loss / n,
        at_or_below_threshold: below,
        repair_threshold: p.r,
        holder_availability: avail_sum / holders.max(1) as f64,
        repair_hours,
        objects: objects.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holders(count: usize, availability: f64) -> Vec<HolderView> {
        vec![
            HolderView {
                availability,
                counts: true,
                window: 20 * 3600,
            };
            count
        ]
    }

    #[test]
    fn estimates_follow_the_holders() {
        let p = Policy::new(10, 16);
        let good = estimate(&[holders(16, 0.9)], &p);
        assert!((good.read_availability - 0.9995).abs() < 0.001);
        assert_eq!(good.at_or_below_threshold, 0);
        assert!(good.yearly_loss < 1e-4);
        // Home peers at 50%: reads mostly fail; an object down to 12
        // counting holders is flagged and likelier to be lost.
        let mut weak = holders(16, 0.5);
        for h in &mut weak[..4] {
            h.counts = false;
        }
        let bad = estimate(&[weak], &p);
        assert!(bad.read_availability < 0.05);
        assert_eq!(bad.at_or_below_threshold, 1);
        assert!(bad.yearly_loss > good.yearly_loss, "{bad:?} {good:?}");
        assert_eq!(estimate(&[], &p).read_availability, 1.0);
    }
}
