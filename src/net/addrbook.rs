//! The address book: network peers this node has met, where they listen,
//! and when they last answered, kept in `DATA_DIR/node/peers.json` across
//! restarts. After a reboot the node dials holders at their last known
//! addresses at once instead of waiting for the DHT to find them.
//!
//! It lists network peers only (peer ids and multiaddrs, as any node of
//! the network sees them): nothing says which of them hold this vault's
//! fragments. Bounded: [`MAX_PEERS`] peers (the longest unseen go first),
//! [`MAX_ADDRS`] addresses each (the newest kept).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// Peers kept at most.
pub const MAX_PEERS: usize = 1024;
/// Addresses kept per peer at most.
pub const MAX_ADDRS: usize = 8;
/// The file name under the node directory.
pub const FILE: &str = "peers.json";

/// What the book knows of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Dialable addresses, newest first (without the `/p2p/` suffix).
    pub addrs: Vec<String>,
    /// Unix seconds of the last connection.
    pub last_seen: u64,
    /// Unix seconds of the last answered request.
    #[serde(default)]
    pub last_answered: u64,
    /// How it behaved while this node watched.
    #[serde(default)]
    pub uptime: crate::maint::Uptime,
}

#[derive(Default, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    peers: HashMap<String, Entry>,
}

/// The peers a node has met; see the module doc.
#[derive(Default)]
pub struct AddressBook {
    peers: HashMap<PeerId, Entry>,
    path: Option<PathBuf>,
    dirty: bool,
    /// When uptimes were last counted, and last marked for writing.
    observed: u64,
    uptime_saved: u64,
}

/// Uptime counts alone rewrite the file at most this often (seconds).
const UPTIME_SAVE: u64 = 300;

impl AddressBook {
    /// Loads the book kept in `dir` (an unreadable or damaged file gives an
    /// empty book and a warning: it is only a hint).
    pub fn load(dir: &Path) -> AddressBook {
        let path = dir.join(FILE);
        let mut book = AddressBook {
            path: Some(path.clone()),
            ..Default::default()
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return book,
            Err(e) => {
                tracing::warn!("cannot read the address book {}: {e}", path.display());
                return book;
            }
        };
        match serde_json::from_slice::<OnDisk>(&bytes) {
            Ok(d) => {
                for (id, mut e) in d.peers {
                    let Ok(peer) = id.parse::<PeerId>() else {
                        continue;
                    };
                    e.addrs.retain(|a| a.parse::<Multiaddr>().is_ok());
                    e.addrs.truncate(MAX_ADDRS);
                    book.peers.insert(peer, e);
                }
                book.trim();
            }
            Err(e) => tracing::warn!(
                "the address book {} is damaged ({e}); starting with an empty one",
                path.display()
            ),
        }
        book
    }

    /// Writes the book if it changed (atomically: a temp file, fsynced,
    /// renamed over the old one). The file is written outside the lock.
    pub fn save_shared(book: &std::sync::Mutex<AddressBook>) -> std::io::Result<()> {
        let lock = || book.lock().unwrap_or_else(|p| p.into_inner());
        let (path, bytes) = {
            let mut b = lock();
            let Some(path) = b.path.clone().filter(|_| b.dirty) else {
                return Ok(());
            };
            let disk = OnDisk {
                version: 1,
                peers: b
                    .peers
                    .iter()
                    .map(|(p, e)| (p.to_base58(), e.clone()))
                    .collect(),
            };
            b.dirty = false;
            (
                path,
                serde_json::to_vec(&disk).map_err(std::io::Error::other)?,
            )
        };
        let written = (|| {
            let tmp = path.with_extension("json.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            lock().dirty = true;
        }
        written
    }

    /// Records an address `peer` was reached at (it moves to the front).
    pub fn note_addr(&mut self, peer: PeerId, addr: &Multiaddr, now: u64) {
        let addr = strip_p2p(addr).to_string();
        let e = self.peers.entry(peer).or_default();
        if e.addrs.first() != Some(&addr) {
            e.addrs.retain(|a| *a != addr);
            e.addrs.insert(0, addr);
            e.addrs.truncate(MAX_ADDRS);
            self.dirty = true;
        }
        e.last_seen = e.last_seen.max(now);
        self.trim();
    }

    /// Records an address `peer` says it listens on (after the ones it was
    /// reached at, while there is room: a peer cannot push those out).
    pub fn note_claimed(&mut self, peer: PeerId, addr: &Multiaddr) {
        let addr = strip_p2p(addr).to_string();
        let Some(e) = self.peers.get_mut(&peer) else {
            return;
        };
        if e.addrs.len() < MAX_ADDRS && !e.addrs.contains(&addr) {
            e.addrs.push(addr);
            self.dirty = true;
        }
    }

    /// Records a connection to `peer`.
    pub fn note_seen(&mut self, peer: PeerId, now: u64) {
        let e = self.peers.entry(peer).or_default();
        if e.last_seen < now {
            e.last_seen = now;
            self.dirty = true;
        }
        self.trim();
    }

    /// Records that `peer` answered a request.
    pub fn note_answered(&mut self, peer: PeerId, now: u64) {
        if let Some(e) = self.peers.get_mut(&peer) {
            // Minute resolution: the file is not rewritten for every answer.
            if e.last_answered + 60 <= now {
                e.last_answered = now;
                self.dirty = true;
            }
        }
    }

    /// Counts the time since the last call as up for the `connected`
    /// peers and away for the others (see [`crate::maint::history`]).
    pub fn observe(&mut self, now: u64, connected: &std::collections::HashSet<PeerId>) {
        let step = if self.observed == 0 {
            0
        } else {
            now.saturating_sub(self.observed)
        };
        self.observed = now;
        for (p, e) in self.peers.iter_mut() {
            let up = connected.contains(p);
            if step > 0 {
                e.uptime.observe(up, step);
            }
            if up {
                e.uptime.seen = now;
            }
        }
        if now >= self.uptime_saved + UPTIME_SAVE {
            self.uptime_saved = now;
            self.dirty = true;
        }
    }

    /// What the book knows of `peer`'s uptime.
    pub fn uptime(&self, peer: &PeerId) -> Option<&crate::maint::Uptime> {
        self.peers.get(peer).map(|e| &e.uptime)
    }

    /// The known addresses of `peer`, newest first.
    pub fn addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers
            .get(peer)
            .map(|e| e.addrs.iter().filter_map(|a| a.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Every peer with its entry.
    pub fn entries(&self) -> impl Iterator<Item = (&PeerId, &Entry)> {
        self.peers.iter()
    }

    /// The `count` most recently seen peers.
    pub fn recent(&self, count: usize) -> Vec<PeerId> {
        let mut all: Vec<(&PeerId, &Entry)> = self.peers.iter().collect();
        all.sort_by_key(|(_, e)| std::cmp::Reverse(e.last_seen));
        all.into_iter().take(count).map(|(p, _)| *p).collect()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    fn trim(&mut self) {
        while self.peers.len() > MAX_PEERS {
            // Peers that answered requests stay longest; identities that
            // only connected go first.
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(_, e)| (e.last_answered, e.last_seen))
                .map(|(p, _)| *p)
                .expect("not empty");
            self.peers.remove(&oldest);
            self.dirty = true;
        }
    }
}

fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_restart_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = AddressBook::load(dir.path());
        assert!(book.is_empty());
        let a = PeerId::random();
        let a1: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let a2: Multiaddr = format!("/ip4/127.0.0.1/tcp/4002/p2p/{a}").parse().unwrap();
        book.note_addr(a, &a1, 10);
        book.note_addr(a, &a2, 20);
        book.note_addr(a, &a2, 30);
        let shared = std::sync::Mutex::new(book);
        AddressBook::save_shared(&shared).unwrap();
        let book = AddressBook::load(dir.path());
        assert_eq!(
            book.addrs(&a),
            vec![
                "/ip4/127.0.0.1/tcp/4002".parse::<Multiaddr>().unwrap(),
                a1.clone()
            ]
        );
        assert_eq!(book.recent(5), vec![a]);

        let mut book = AddressBook::load(dir.path());
        for i in 0..MAX_PEERS + 10 {
            let p = PeerId::random();
            for j in 0..MAX_ADDRS + 3 {
                let ad: Multiaddr = format!("/ip4/127.0.{}.{}/tcp/{}", i / 250, i % 250, 1000 + j)
                    .parse()
                    .unwrap();
                book.note_addr(p, &ad, 100 + i as u64);
            }
            assert!(book.addrs(&p).len() <= MAX_ADDRS);
        }
        assert_eq!(book.len(), MAX_PEERS);
        // The longest unseen (peer `a`) went first.
        assert!(book.addrs(&a).is_empty());
    }

    #[test]
    fn uptime_is_counted_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = AddressBook::load(dir.path());
        let (a, b) = (PeerId::random(), PeerId::random());
        book.note_seen(a, 1);
        book.note_seen(b, 1);
        let up: std::collections::HashSet<PeerId> = [a].into();
        for t in 0..=20 {
            book.observe(1000 + t * 60, &up);
        }
        let shared = std::sync::Mutex::new(book);
        AddressBook::save_shared(&shared).unwrap();
        let book = AddressBook::load(dir.path());
        assert_eq!(book.uptime(&a).unwrap().up, 1200);
        assert_eq!(book.uptime(&b).unwrap().away, 1200);
    }

    #[test]
    fn a_damaged_file_gives_an_empty_book() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(AddressBook::load(dir.path()).is_empty());
    }
}
