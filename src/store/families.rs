//! The column families: one per record kind, which of them replicate (and
//! their codes in journal entries), and which a vault or a node store has.

/// Column families, one per record kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    /// ino -> inode record.
    Inodes,
    /// parent ino ++ sealed name -> child ino and kind.
    Dirents,
    /// ino ++ chunk index -> object id and length.
    Chunks,
    /// object id -> reference count and size.
    Objects,
    /// object id -> sealed bytes (objects below the inline threshold).
    Blobs,
    /// ino ++ sealed attribute name -> sealed value.
    Xattrs,
    /// unlinked inodes still open when last seen; freed at the next start.
    Orphans,
    /// counters and the next inode number.
    Meta,
    /// object id -> nothing: objects not yet stored on peers (the upload queue).
    Uploads,
    /// object id -> where its fragments are (vault metadata, never in the DHT).
    Placements,
    /// object id -> size: local copies of objects safely on peers, evictable.
    Cached,
    /// fragment id ++ peer id -> nothing: fragments of deleted objects whose
    /// leases are still to be cancelled on their peers.
    Released,
    /// fragment id -> length: the fragments a node stores for others (the
    /// bytes are objects: inline in `Blobs` or files).
    Fragments,
    /// local sequence number -> one batch's changes to the replicated
    /// families, not yet published to the network (see [`REPLICATED`]).
    Journal,
    /// object id -> record of a metadata object (snapshot part or journal
    /// head) on the network; plus the publishing state.
    Chain,
    /// DHT key -> the newest valid root record a node keeps for a vault.
    Roots,
    /// Lease upkeep (sealed): when each holder's leases were last renewed.
    Leases,
}

/// The families that make up a vault's metadata on the network: every batch
/// that changes them also appends its changes to the `Journal` family.
pub const REPLICATED: [Cf; 8] = [
    Cf::Inodes,
    Cf::Dirents,
    Cf::Chunks,
    Cf::Objects,
    Cf::Xattrs,
    Cf::Orphans,
    Cf::Meta,
    Cf::Placements,
];

pub(super) const VAULT_CFS: [Cf; 15] = [
    Cf::Inodes,
    Cf::Dirents,
    Cf::Chunks,
    Cf::Objects,
    Cf::Blobs,
    Cf::Xattrs,
    Cf::Orphans,
    Cf::Meta,
    Cf::Uploads,
    Cf::Placements,
    Cf::Cached,
    Cf::Released,
    Cf::Journal,
    Cf::Chain,
    Cf::Leases,
];

pub(super) const NODE_CFS: [Cf; 4] = [Cf::Fragments, Cf::Blobs, Cf::Meta, Cf::Roots];

impl Cf {
    /// Stable name, also bound into each sealed record's associated data.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Inodes => "inodes",
            Cf::Dirents => "dirents",
            Cf::Chunks => "chunks",
            Cf::Objects => "objects",
            Cf::Blobs => "blobs",
            Cf::Xattrs => "xattrs",
            Cf::Orphans => "orphans",
            Cf::Meta => "meta",
            Cf::Uploads => "uploads",
            Cf::Placements => "placements",
            Cf::Cached => "cached",
            Cf::Released => "released",
            Cf::Fragments => "fragments",
            Cf::Journal => "journal",
            Cf::Chain => "chain",
            Cf::Roots => "roots",
            Cf::Leases => "leases",
        }
    }

    /// Code of a replicated family in journal entries and snapshots.
    pub fn code(self) -> Option<u8> {
        REPLICATED
            .iter()
            .position(|c| *c == self)
            .map(|i| i as u8 + 1)
    }

    pub fn from_code(code: u8) -> Option<Cf> {
        REPLICATED.get((code as usize).checked_sub(1)?).copied()
    }
}
