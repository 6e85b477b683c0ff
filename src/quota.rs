//! The quota rules in one place (DESIGN.md section 6): what a node donates
//! by default, what a vault may store for what its node donates (the
//! barter), what a peer may keep on a node beyond what it gives back (the
//! ledger's grace), and the disk a node never gives away.
//!
//! Architecture invariant: pure; callers measure the disk and keep the
//! ledger.

/// Stored bytes every vault may use before its node donates anything.
pub const DEFAULT_STARTER: u64 = 1 << 30;

/// What any peer may keep on a node beyond what the node keeps on it.
pub const DEFAULT_GRACE: u64 = 1 << 30;

/// Donation when none is given: a tenth of the free disk, at most 50 GiB.
pub fn default_donation(free_disk: u64) -> u64 {
    (free_disk / 10).min(50 << 30)
}

/// The barter: storing N bytes costs N * n/k of fragments on others, so a
/// node donating D earns a vault D * k/n, on top of the starter allowance.
pub fn allowance(starter: u64, donated: u64, k: u32, n: u32) -> u64 {
    let earned = (donated as u128 * k as u128 / n.max(1) as u128) as u64;
    starter.saturating_add(earned)
}

/// The ledger: a peer that keeps `takes` bytes here and `gives` bytes of
/// this node's on itself may store `len` more while it stays within the
/// grace.
pub fn within_grace(takes: u64, len: u64, gives: u64, grace: u64) -> bool {
    takes.saturating_add(len) <= grace.saturating_add(gives)
}

/// Free disk a node never gives away: 2% of the filesystem, at least
/// 256 MiB and at most 4 GiB, so storing for others can never fill the
/// disk.
pub fn safety_margin(fs_bytes: u64) -> u64 {
    (fs_bytes / 50).clamp(256 << 20, 4 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules() {
        // 10 of 16: donating 16 GiB earns 10 GiB.
        assert_eq!(allowance(0, 16 << 30, 10, 16), 10 << 30);
        assert_eq!(allowance(DEFAULT_STARTER, 0, 10, 16), DEFAULT_STARTER);
        assert_eq!(allowance(u64::MAX, u64::MAX, 10, 16), u64::MAX);
        assert!(within_grace(0, 1 << 30, 0, DEFAULT_GRACE));
        assert!(!within_grace(1, 1 << 30, 0, DEFAULT_GRACE));
        assert!(within_grace(5 << 30, 1 << 30, 5 << 30, DEFAULT_GRACE));
        assert_eq!(default_donation(1 << 40), 50 << 30);
        assert_eq!(default_donation(100 << 30), 10 << 30);
        assert_eq!(safety_margin(1 << 30), 256 << 20);
        assert_eq!(safety_margin(1 << 40), 4 << 30);
    }
}
