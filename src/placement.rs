//! Choosing peers for an object's fragments. Pure: the caller passes what
//! it knows about each peer, so the policy is tested without a network.
//!
//! Policy: never the vault's own node (the caller leaves it out); skip peers
//! known to be too full; prefer peers with fewer strikes (bad data, failed
//! requests), then peers that are up more of the time (measured uptime, in
//! 10% buckets: what keeps reads working and repairs rare on home peers),
//! then lower latency (in 10 ms buckets, so near-equal peers share load at
//! random). Spread over failure domains (peers behind one address or in
//! one subnet may fail together, or be one operator's many identities):
//! domains take turns, and no domain gets more than the cap (n - k) of an
//! object's fragments while peers elsewhere have room. One fragment per
//! peer while peers last, then more per peer (a small network: `status`
//! reports the shortfall).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use rand::seq::SliceRandom;

/// A failure domain: peers in one may fail (or lie) together.
pub type Domain = IpAddr;

/// How peers are grouped into failure domains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DomainRule {
    /// One domain per IPv4 /24 or IPv6 /48 (the default).
    #[default]
    Subnet,
    /// One domain per IP address (many nodes on one LAN or one host, as
    /// in tests on 127.0.0.x).
    Address,
    /// Every peer its own domain (no spreading).
    Peer,
}

impl std::str::FromStr for DomainRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "subnet" => Ok(DomainRule::Subnet),
            "address" => Ok(DomainRule::Address),
            "peer" => Ok(DomainRule::Peer),
            _ => Err(format!(
                "unknown failure domain '{s}' (expected subnet, address or peer)"
            )),
        }
    }
}

impl DomainRule {
    /// The domain of a peer seen at `ip` (`None`: unknown, its own).
    pub fn domain(self, ip: Option<IpAddr>) -> Option<Domain> {
        let ip = ip?;
        match self {
            DomainRule::Peer => None,
            DomainRule::Address => Some(ip),
            DomainRule::Subnet => Some(match ip {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & 0xffff_ff00)),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & (!0u128 << 80))),
            }),
        }
    }
}

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
    /// Its failure domain, if known.
    pub domain: Option<Domain>,
}

/// The spreading rule for one object: at most `cap` fragments per domain
/// while others have room, counting those `taken` already (repair).
#[derive(Clone, Debug)]
pub struct Spread {
    pub cap: usize,
    pub taken: HashMap<Domain, usize>,
    /// Never past the cap, even with no room elsewhere (moves that are
    /// only worth making within it).
    pub strict: bool,
    /// Domains without a cap (a move within one changes no count).
    pub exempt: std::collections::HashSet<Domain>,
}

impl Spread {
    /// At most `cap` fragments per domain (n - k for a k-of-n object).
    pub fn new(cap: usize) -> Self {
        Spread {
            cap: cap.max(1),
            taken: HashMap::new(),
            strict: false,
            exempt: Default::default(),
        }
    }
}

/// Picks a peer for each of `count` fragments of `fragment_len` bytes.
/// `None` if no peer has room.
pub fn choose<P: Clone>(
    cands: &[Candidate<P>],
    count: usize,
    fragment_len: u64,
    spread: &Spread,
) -> Option<Vec<P>> {
    choose_with(cands, count, fragment_len, spread, &mut rand::rng())
}

/// [`choose`] with the caller's random source (the simulator's is seeded).
pub fn choose_with<P: Clone>(
    cands: &[Candidate<P>],
    count: usize,
    fragment_len: u64,
    spread: &Spread,
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
    let order = by_domain_turns(&usable);
    let mut left: Vec<u64> = order
        .iter()
        .map(|c| c.available.unwrap_or(u64::MAX))
        .collect();
    let mut per_domain = spread.taken.clone();
    let mut given = vec![0usize; order.len()];
    let mut out = Vec::with_capacity(count);
    // Rounds over the peers: in round r each peer holding r fragments may
    // take one more. While capped, no domain goes past the cap; once a
    // round can place nothing within it (no room outside the capped
    // domains), the rounds start over without it.
    let mut capped = true;
    let mut round = 0;
    while out.len() < count {
        let mut placed = false;
        for (slot, c) in order.iter().enumerate() {
            if out.len() == count {
                break;
            }
            if given[slot] != round || left[slot] < fragment_len {
                continue;
            }
            let used = c
                .domain
                .filter(|d| !spread.exempt.contains(d))
                .and_then(|d| per_domain.get(&d).copied())
                .unwrap_or(0);
            if capped && used >= spread.cap {
                continue;
            }
            left[slot] -= fragment_len;
            given[slot] += 1;
            if let Some(d) = c.domain {
                *per_domain.entry(d).or_default() += 1;
            }
            out.push(c.peer.clone());
            placed = true;
        }
        if placed || out.len() == count {
            round += 1;
            continue;
        }
        let more_later = given.iter().any(|g| *g > round);
        if more_later {
            // Peers ahead of this round: their turn comes.
            round += 1;
        } else if capped && !spread.strict {
            capped = false;
            round = 0;
        } else {
            return None;
        }
    }
    Some(out)
}

/// The candidates (best first) reordered so domains take turns: the best
/// of each domain, then the second best of each, and so on.
fn by_domain_turns<'a, P>(sorted: &[&'a Candidate<P>]) -> Vec<&'a Candidate<P>> {
    // Without domains every candidate is a group of its own: the order
    // stays (the simulator's case, many times a second).
    if sorted.iter().all(|c| c.domain.is_none()) {
        return sorted.to_vec();
    }
    let mut groups: Vec<(Option<Domain>, Vec<&'a Candidate<P>>)> = Vec::new();
    for c in sorted {
        match groups
            .iter_mut()
            .find(|(d, _)| d.is_some() && *d == c.domain)
        {
            Some((_, g)) => g.push(c),
            None => groups.push((c.domain, vec![c])),
        }
    }
    let mut out = Vec::with_capacity(sorted.len());
    let mut turn = 0;
    while out.len() < sorted.len() {
        for (_, g) in &groups {
            if let Some(c) = g.get(turn) {
                out.push(*c);
            }
        }
        turn += 1;
    }
    out
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
            domain: None,
        }
    }

    fn any() -> Spread {
        Spread::new(usize::MAX)
    }

    #[test]
    fn distinct_peers_when_there_are_enough() {
        let cands: Vec<_> = (0..20).map(|i| cand(i, Some(1 << 30), 1, 0)).collect();
        let p = choose(&cands, 16, 1000, &any()).unwrap();
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
        let p = choose(&cands, 2, 1000, &any()).unwrap();
        let mut p2 = p.clone();
        p2.sort();
        assert_eq!(p2, vec![4, 5]);
        let p = choose(&cands, 4, 1000, &any()).unwrap();
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
        let mut p = choose(&cands, 3, 1000, &any()).unwrap();
        p.sort();
        assert_eq!(p, vec![1, 3, 5]);
    }

    #[test]
    fn few_peers_take_several_fragments_within_their_room() {
        let cands = vec![cand(1, Some(3000), 1, 0), cand(2, Some(10_000), 1, 0)];
        let p = choose(&cands, 8, 1000, &any()).unwrap();
        assert_eq!(p.len(), 8);
        assert_eq!(p.iter().filter(|x| **x == 1).count(), 3);
        assert!(choose(&cands, 14, 1000, &any()).is_none());
        assert!(choose(&[cand(1, Some(10), 1, 0)], 1, 1000, &any()).is_none());
    }

    #[test]
    fn sixteen_identities_behind_one_address_get_at_most_n_minus_k() {
        let rule = DomainRule::Address;
        let sybil: IpAddr = "198.51.100.7".parse().unwrap();
        let mut cands: Vec<_> = (0..16)
            .map(|i| Candidate {
                domain: rule.domain(Some(sybil)),
                ..cand(i, Some(1 << 30), 0, 0)
            })
            .collect();
        for i in 0..6u32 {
            let ip: IpAddr = format!("203.0.113.{i}").parse().unwrap();
            cands.push(Candidate {
                domain: rule.domain(Some(ip)),
                ..cand(100 + i, Some(1 << 30), 40, 0)
            });
        }
        for _ in 0..200 {
            let p = choose(&cands, 16, 1000, &Spread::new(16 - 10)).unwrap();
            assert_eq!(p.len(), 16);
            assert!(p.iter().filter(|x| **x < 100).count() <= 6, "{p:?}");
        }
        // Repair counts the holders left: two survivors there, four more.
        let mut s = Spread::new(6);
        s.taken.insert(sybil, 2);
        let p = choose(&cands, 10, 1000, &s).unwrap();
        assert!(p.iter().filter(|x| **x < 100).count() <= 4, "{p:?}");
        // With no room elsewhere the cap gives way rather than fail...
        let only: Vec<_> = cands[..16].to_vec();
        assert_eq!(choose(&only, 16, 1000, &Spread::new(6)).unwrap().len(), 16);
        // ...unless it is strict (a move only worth making within it).
        let mut strict = Spread::new(6);
        strict.strict = true;
        assert!(choose(&only, 16, 1000, &strict).is_none());
    }

    #[test]
    fn one_domain_for_all_still_gives_distinct_peers_first() {
        // A loopback cluster: every peer in one domain; the cap cannot
        // hold, and must not crowd the first peers either.
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let cands: Vec<_> = (0..12)
            .map(|i| Candidate {
                domain: Some(ip),
                ..cand(i, Some(1 << 30), 1, 0)
            })
            .collect();
        for _ in 0..50 {
            let mut p = choose(&cands, 4, 1000, &Spread::new(2)).unwrap();
            p.sort();
            p.dedup();
            assert_eq!(p.len(), 4, "{p:?}");
        }
    }

    #[test]
    fn subnets_group_addresses() {
        let r = DomainRule::Subnet;
        let d = |s: &str| r.domain(Some(s.parse().unwrap()));
        assert_eq!(d("192.0.2.1"), d("192.0.2.200"));
        assert_ne!(d("192.0.2.1"), d("192.0.3.1"));
        assert_eq!(d("2001:db8:1:2::1"), d("2001:db8:1:ffff::9"));
        assert_eq!(
            DomainRule::Peer.domain(Some("192.0.2.1".parse().unwrap())),
            None
        );
        assert!("bogus".parse::<DomainRule>().is_err());
    }
}
