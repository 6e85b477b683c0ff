//! The vault's metadata on the network (the network side; the vault's side
//! is `vault::replica`): publishing heads, snapshots and the signed root
//! record, finding the newest root, and pulling metadata for a recovery or
//! for a device that another device has moved ahead of.
//!
//! Root records go to every connected storage peer (`ROOT_PUT`, so the
//! peers holding the vault's fragments keep it) and into the Kademlia DHT
//! under the key derived from the root public key. Readers ask every
//! connected peer and the DHT, drop records that do not verify under the
//! key derived from their own password, and take the highest sequence
//! number.
//!
//! Several devices: each root carries a version vector (publishes per
//! device). A device publishes only when it has changes of its own; when
//! the network's root is not one its state includes, the last device to
//! sync wins and the conflict is reported (the other device keeps its
//! local state and reports it too).
//!
//! `lookup` finds the newest root, `publish` publishes (and runs the
//! background loop), `pull` fetches metadata objects; this file holds what
//! they share.

mod lookup;
mod publish;
mod pull;

pub use lookup::{check_root, find_root, wait_for_peers, FoundRoot, Lookup};
pub use pull::{pull, pull_into, PullProgress};

pub use crate::remote::MetaStatus;

/// A unix time for messages.
pub fn describe_time(secs: u64) -> String {
    let ago = crate::maint::clock::now_secs().saturating_sub(secs);
    match ago {
        0..=119 => format!("{ago} s ago"),
        120..=7199 => format!("{} min ago", ago / 60),
        7200..=172_799 => format!("{} h ago", ago / 3600),
        _ => format!("{} days ago", ago / 86_400),
    }
}

/// What one publish did.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub seq: u64,
    pub snapshot: bool,
    pub objects: usize,
    pub bytes: u64,
    /// Peers that keep the new root record.
    pub peers: usize,
    /// Nothing had changed.
    pub unchanged: bool,
}
