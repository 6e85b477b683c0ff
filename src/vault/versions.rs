//! How two versions of a vault's metadata relate: the version vectors
//! every published root carries, and the one rule that publishing, the
//! mount and `init` follow when the network has a version this device did
//! not make. Pure: no IO.

use super::replica::{DeviceId, PublishState, VersionVector};
use crate::crypto::ObjectId;

/// Versions: does `a` include everything `b` does?
pub fn includes(a: &VersionVector, b: &VersionVector) -> bool {
    b.iter().all(|(d, n)| a.get(d).copied().unwrap_or(0) >= *n)
}

/// How the newest version of the vault on the network relates to this
/// device's: the one rule publishing, mounting and `init` follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// This device's own version, or one its state includes: nothing to
    /// take up.
    Included,
    /// This data dir never published nor took up a version: it is a
    /// separate vault made under the same name and password (an `init`
    /// that could not ask the network) and must never replace the
    /// network's.
    Separate,
    /// The network's version includes this device's and adds to it: taken
    /// up at mount when nothing local is waiting to be published.
    Newer,
    /// Each side has changes the other lacks: this device keeps its state,
    /// and its next publish wins (last synced wins).
    Diverged,
}

/// Relates a network root (its head, publishing device and versions) to
/// this device's publish state.
pub fn relate(
    st: &PublishState,
    head: &ObjectId,
    device: DeviceId,
    vv: &VersionVector,
) -> Relation {
    if st.head.as_ref() == Some(head) || device == st.device || includes(&st.vv, vv) {
        Relation::Included
    } else if st.seq == 0 {
        Relation::Separate
    } else if includes(vv, &st.vv) {
        Relation::Newer
    } else {
        Relation::Diverged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(u8, u64)]) -> VersionVector {
        pairs.iter().map(|(d, n)| ([*d; 16], *n)).collect()
    }

    #[test]
    fn how_a_network_version_relates_to_this_device() {
        let me = [1u8; 16];
        let other = [2u8; 16];
        let head = ObjectId([7; 32]);
        let st = PublishState {
            device: me,
            seq: 3,
            vv: vv(&[(1, 3), (2, 1)]),
            head: Some(ObjectId([5; 32])),
            ..Default::default()
        };
        // Our own head, our own device, or versions we include.
        let mut same_head = st.clone();
        same_head.head = Some(head);
        assert_eq!(
            relate(&same_head, &head, other, &vv(&[(2, 9)])),
            Relation::Included
        );
        assert_eq!(relate(&st, &head, me, &vv(&[(1, 9)])), Relation::Included);
        assert_eq!(
            relate(&st, &head, other, &vv(&[(1, 2), (2, 1)])),
            Relation::Included
        );
        // The other device went on from our state: newer.
        assert_eq!(
            relate(&st, &head, other, &vv(&[(1, 3), (2, 2)])),
            Relation::Newer
        );
        // Both went on: diverged.
        assert_eq!(
            relate(&st, &head, other, &vv(&[(1, 2), (2, 2)])),
            Relation::Diverged
        );
        // A data dir that never published nor took up anything is a separate
        // vault, whatever the network's versions.
        let fresh = PublishState {
            device: me,
            ..Default::default()
        };
        assert_eq!(
            relate(&fresh, &head, other, &vv(&[(2, 1)])),
            Relation::Separate
        );
    }
}
