//! Choosing peers for an object's fragments. Pure: the caller passes what
//! it knows about each peer, so the policy is tested without a network.
//!
//! Policy: never the vault's own node (the caller leaves it out); skip peers
//! known to be too full; prefer peers with fewer strikes (bad data, failed
//! requests), then peers that are up more of the time (measured uptime, in
//! 10% buckets: what keeps reads working and repairs rare on home peers),
//! then lower latency (in 10 ms buckets, so near-equal peers share load at
//! random); one fragment per peer while peers last, then
//! round-robin over the chosen peers (a small network: `status` reports the
//! shortfall).

use std::time::Duration;

use rand::seq::SliceRandom;

/// What placement knows about one peer.
#[derive(Clone, Debug)]
pub struct Candidate<P> {
    pub peer: P,
    /// Free donated bytes, if the peer told us.
    pub available: Option<u64>,
    pub rtt: Option<Duration>,
    pub strikes: u32,
    /// Measured fraction of time up, if known.
    pub availability: Option<f64>,
}

/// Picks a peer for each of `count` fragments of `fragment_len` bytes.
/// `None` if no peer has room.
pub fn choose<P: Clone>(cands: &[Candidate<P>], count: usize, fragment_len: u64) -> Option<Vec<P>> {
    choose_with(cands, count, fragment_len, &mut rand::rng())
}

/// [`choose`] with the caller's random source (the simulator's is seeded).
pub fn choose_with<P: Clone>(
    cands: &[Candidate<P>],
    count: usize,
    fragment_len: u64,
    rng: &mut impl rand::Rng,
) -> Option<Vec<P>> {
    let mut usable: Vec<&Candidate<P>> = cands
        .iter()
        .filter(|c| c.available.is_none_or(|a| a >= fragment_len))
        .collect();
    if usable.is_empty() || count == 0 {
        return if count == 0 { Some(Vec::new()) } else { None };
    }
    usable.shuffle(rng);
    usable.sort_by_key(|c| {
        (
            c.strikes.min(3),
            // Unknown uptime ranks as 50%.
            10 - (c.availability.unwrap_or(0.5).clamp(0.0, 1.0) * 10.0) as u32,
            c.rtt.map_or(u128::MAX, |r| r.as_millis() / 10),
        )
    });
    let distinct = usable.len().min(count);
    let mut out = Vec::with_capacity(count);
    let mut left: Vec<u64> = usable
        .iter()
        .take(distinct)
        .map(|c| c.available.unwrap_or(u64::MAX))
        .collect();
    let mut i = 0;
    let mut stuck = 0;
    while out.len() < count {
        let slot = i % distinct;
        i += 1;
        if left[slot] >= fragment_len {
            left[slot] -= fragment_len;
            out.push(usable[slot].peer.clone());
            stuck = 0;
        } else {
            stuck += 1;
            if stuck > distinct {
                return None;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(peer: u32, available: Option<u64>, rtt_ms: u64, strikes: u32) -> Candidate<u32> {
        Candidate {
            peer,
            available,
            rtt: Some(Duration::from_millis(rtt_ms)),
            strikes,
            availability: None,
        }
    }

    #[test]
    fn distinct_peers_when_there_are_enough() {
        let cands: Vec<_> = (0..20).map(|i| cand(i, Some(1 << 30), 1, 0)).collect();
        let p = choose(&cands, 16, 1000).unwrap();
        let mut d = p.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 16);
    }

    #[test]
    fn full_slow_and_striking_peers_come_last() {
        let cands = vec![
            cand(1, Some(10), 1, 0),        // full
            cand(2, Some(1 << 30), 200, 0), // slow
            cand(3, Some(1 << 30), 1, 5),   // bad
            cand(4, Some(1 << 30), 1, 0),
            cand(5, None, 2, 0),
        ];
        let p = choose(&cands, 2, 1000).unwrap();
        let mut p2 = p.clone();
        p2.sort();
        assert_eq!(p2, vec![4, 5]);
        let p = choose(&cands, 4, 1000).unwrap();
        assert!(!p.contains(&1));
        assert_eq!(p[3], 3);
    }

    #[test]
    fn peers_up_more_of_the_time_come_first() {
        let mut cands: Vec<_> = (0..6).map(|i| cand(i, Some(1 << 30), 1, 0)).collect();
        let measured = [
            Some(0.3),
            Some(0.98),
            None,
            Some(0.99),
            Some(0.2),
            Some(0.6),
        ];
        for (c, a) in cands.iter_mut().zip(measured) {
            c.availability = a;
        }
        let mut p = choose(&cands, 3, 1000).unwrap();
        p.sort();
        assert_eq!(p, vec![1, 3, 5]);
    }

    #[test]
    fn few_peers_take_several_fragments_within_their_room() {
        let cands = vec![cand(1, Some(3000), 1, 0), cand(2, Some(10_000), 1, 0)];
        let p = choose(&cands, 8, 1000).unwrap();
        assert_eq!(p.len(), 8);
        assert_eq!(p.iter().filter(|x| **x == 1).count(), 3);
        assert!(choose(&cands, 14, 1000).is_none());
        assert!(choose(&[cand(1, Some(10), 1, 0)], 1, 1000).is_none());
    }
}
