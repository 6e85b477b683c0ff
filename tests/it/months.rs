//! Months in seconds: the real maintenance code (renewals, the nodes' lease
//! collection) under one simulated clock, with real nodes and a real vault
//! in this process.

use std::sync::Arc;
use std::time::Duration;

use drizzle::crypto::VaultKeys;
use drizzle::maint::{Clock, GoneWindow, SimClock};
use drizzle::net::{split_peer_addr, Multiaddr, Network, NodeConfig, NodeHandle};
use drizzle::remote::{Remote, RemoteConfig};
use drizzle::vault::records::Placement;
use drizzle::vault::{Vault, VaultOptions, ROOT_INO};

use crate::inproc::{loopback, online_vault_with, runtime, start_nodes_with, write_file};
use crate::support::{pattern, wait_for};

const DAY: u64 = 86_400;
const START: u64 = 1_800_000_000;

/// Storage nodes and a vault whose clocks are `clock`; the nodes collect
/// expired leases five times a second.
struct World {
    clock: Arc<SimClock>,
    /// Storage nodes (None while stopped).
    nodes: Vec<Option<NodeHandle>>,
    /// Where each listens (kept across restarts).
    addrs: Vec<Multiaddr>,
    rcfg: RemoteConfig,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Drop for World {
    fn drop(&mut self) {
        for n in self.nodes.iter().flatten() {
            n.stop();
        }
    }
}

/// A mounted vault: maintenance and the vault's node on their own runtime.
struct Mounted {
    rt: tokio::runtime::Runtime,
    vnode: NodeHandle,
    vault: Arc<Vault>,
    remote: Arc<Remote>,
}

impl Mounted {
    fn unmount(self) {
        self.vnode.stop();
        drop(self.remote);
        drop(self.rt);
        self.vault.shutdown().unwrap();
        // The vault's worker threads let go of it as they stop.
        wait_for("the vault to close", Duration::from_secs(10), || {
            Arc::strong_count(&self.vault) == 1
        });
    }
}

fn world() -> World {
    world_with(5, |_| {})
}

/// `count` storage nodes; `adjust` tunes maintenance.
fn world_with(count: usize, adjust: impl Fn(&mut RemoteConfig)) -> World {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let clock = SimClock::new(START);
    let c: Arc<dyn Clock> = clock.clone();
    let nodes = rt.block_on(start_nodes_with(
        dir.path(),
        &vec![None; count],
        1 << 30,
        |cfg| {
            cfg.clock = c.clone();
            cfg.gc_interval = Duration::from_millis(200);
        },
    ));
    let mut rcfg = RemoteConfig::new(2, 4);
    adjust(&mut rcfg);
    // Maintenance checks every second of real time (not once a minute).
    rcfg.repair_every = Duration::from_secs(1);
    // The first mount (upload) on a runtime of its own, ended after sync.
    let vrt = runtime();
    let (vault, vnode, remote) = online_vault_with(
        &vrt,
        &dir.path().join("vault"),
        nodes[0].listen_addrs(),
        rcfg,
        |cfg| cfg.clock = c.clone(),
    );
    wait_for("peer discovery", Duration::from_secs(30), || {
        vnode.storage_peers().len() >= count
    });
    write_file(&vault, "f", &pattern(3 << 20, 5));
    vault.sync_all().unwrap();
    vrt.block_on(remote.wait_synced(|_| {})).unwrap();
    Mounted {
        rt: vrt,
        vnode,
        vault,
        remote,
    }
    .unmount();
    World {
        clock,
        addrs: nodes
            .iter()
            .map(|n| split_peer_addr(&n.listen_addrs()[0]).0)
            .collect(),
        nodes: nodes.into_iter().map(Some).collect(),
        rcfg,
        dir,
        rt,
    }
}

impl World {
    fn fragments(&self) -> u64 {
        self.nodes
            .iter()
            .flatten()
            .map(|n| n.fragment_count())
            .sum()
    }

    /// Addresses of a running storage node, to bootstrap from.
    fn first_addrs(&self) -> Vec<Multiaddr> {
        self.nodes.iter().flatten().next().unwrap().listen_addrs()
    }

    /// Stops storage node `i` (its data stays on disk).
    fn stop_node(&mut self, i: usize) {
        let n = self.nodes[i].take().unwrap();
        n.stop();
    }

    /// Starts storage node `i` again, at the same address.
    fn restart_node(&mut self, i: usize) {
        let mut cfg = NodeConfig::new(self.dir.path().join(format!("node-{i}")), 1 << 30);
        // Many nodes on one host: every connection comes from one address.
        cfg.conn_limits.per_ip = 1000;
        cfg.listen = vec![self.addrs[i].clone()];
        cfg.peers = self.first_addrs();
        cfg.clock = self.clock.clone();
        cfg.gc_interval = Duration::from_millis(200);
        let start = std::time::Instant::now();
        // The stopped node lets go of its store as its tasks end.
        let node = loop {
            match self.rt.block_on(NodeHandle::start(cfg.clone())) {
                Ok(n) => break n,
                Err(e) if start.elapsed() < Duration::from_secs(20) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("restarting node {i}: {e:#}"),
            }
        };
        self.nodes[i] = Some(node);
    }

    /// Starts the storage nodes `ids` again and waits until `vnode` is
    /// connected to each.
    fn restart_nodes(&mut self, ids: &[usize], vnode: &NodeHandle) {
        for &i in ids {
            self.restart_node(i);
        }
        wait_for("the holders to reconnect", Duration::from_secs(30), || {
            ids.iter()
                .all(|i| vnode.is_connected(&self.nodes[*i].as_ref().unwrap().peer_id()))
        });
    }

    /// Lets `secs` of simulated time pass in five-minute steps, each
    /// watched by the vault's node (it counts uptime every 50 ms).
    fn pass(&self, secs: u64) {
        let mut left = secs;
        while left > 0 {
            let step = left.min(300);
            self.clock.advance(step);
            left -= step;
            std::thread::sleep(Duration::from_millis(120));
        }
    }

    /// Mounts: opens the vault, starts its node and maintenance.
    fn mount(&self) -> Mounted {
        let rt = runtime();
        let opts = VaultOptions {
            disk_cache: 0,
            ..Default::default()
        };
        let vdir = self.dir.path().join("vault");
        let vault =
            Vault::open(&vdir, "cluster", VaultKeys::from_master(&[7u8; 32]), opts).unwrap();
        let mut cfg = NodeConfig::new(vdir.join("node"), 0);
        cfg.listen = vec![loopback()];
        cfg.peers = self.first_addrs();
        cfg.clock = self.clock.clone();
        cfg.book_every = Duration::from_millis(50);
        let (v, rcfg) = (vault.clone(), self.rcfg);
        let (vnode, remote) = rt.block_on(async move {
            let vnode = NodeHandle::start(cfg).await.unwrap();
            let remote = Remote::start_with(v, vnode.clone(), rcfg);
            (vnode, remote)
        });
        Mounted {
            rt,
            vnode,
            vault,
            remote,
        }
    }

    /// Waits until every holder's leases were renewed at the clock's time.
    fn wait_renewed(&self, m: &Mounted) {
        let now = self.clock.now();
        wait_for("renewals", Duration::from_secs(30), || {
            let r = m.vault.lease_renewals().unwrap();
            r.len() >= 4 && r.values().all(|x| x.at == now)
        });
    }

    /// Lets the nodes' lease collection run at the clock's time.
    fn let_nodes_collect(&self) {
        std::thread::sleep(Duration::from_millis(600));
    }

    /// Mounts and reads the file back from the nodes (no local copy).
    fn read_back(&self) {
        let m = self.mount();
        let ino = m.vault.lookup(ROOT_INO, b"f").unwrap().0;
        assert!(m.vault.read(ino, 0, 3 << 20).unwrap() == pattern(3 << 20, 5));
        m.unmount();
    }
}

/// A laptop mounted a few seconds every 9 days for 120 simulated days,
/// with 30-day leases: every lease is renewed at each mount and nothing
/// expires on the nodes.
#[test]
fn short_mounts_every_nine_days_keep_every_lease_for_months() {
    let w = world();
    let held = w.fragments();
    assert!(held >= 4);
    let mut day = 0;
    while day + 9 <= 120 {
        day += 9;
        w.clock.advance(9 * DAY);
        w.let_nodes_collect();
        assert_eq!(w.fragments(), held, "fragments expired by day {day}");
        let m = w.mount();
        w.wait_renewed(&m);
        m.unmount();
    }
    // Past the end of any lease granted before the last mount but one.
    w.clock.advance(20 * DAY);
    w.let_nodes_collect();
    assert_eq!(w.fragments(), held);
    w.read_back();
    // Unmounted for longer than a lease: the nodes collect everything.
    w.clock.advance(31 * DAY);
    wait_for("expiry", Duration::from_secs(10), || w.fragments() == 0);
}

/// The machine sleeps while mounted (the clock jumps 25 days at a time,
/// tokio's timers do not): due leases are renewed right after each wake.
#[test]
fn a_mounted_laptop_that_sleeps_for_weeks_renews_on_waking() {
    let w = world();
    let held = w.fragments();
    let m = w.mount();
    w.wait_renewed(&m);
    for _ in 0..5 {
        w.clock.advance(25 * DAY);
        w.wait_renewed(&m);
        w.let_nodes_collect();
        assert_eq!(w.fragments(), held);
    }
    m.unmount();
    w.read_back();
}

/// Lazy repair under simulated time, with real nodes going away and
/// coming back: two holders of an object away for less than their gone
/// window cost nothing; away for longer, the object (down to k fragments
/// that count, below the threshold r = 3) is rebuilt on the other nodes;
/// when they come back their fragments count again and nothing is
/// uploaded for them.
#[test]
fn holders_away_are_repaired_only_past_their_window_and_count_again_on_return() {
    let mut w = world_with(6, |r| {
        r.window = GoneWindow {
            min: 3600,
            max: 6 * 3600,
            unknown: 2 * 3600,
        };
    });
    let m = w.mount();
    w.wait_renewed(&m);
    let (id, before) = m.vault.placements().unwrap().remove(0);
    let holder_of = |p: &Placement| -> Vec<usize> {
        (0..w.nodes.len())
            .filter(|i| {
                let b = w.nodes[*i].as_ref().map(|n| n.peer_id().to_bytes());
                p.fragments.iter().any(|f| Some(&f.peer) == b.as_ref())
            })
            .collect()
    };
    let gone = holder_of(&before)[..2].to_vec();
    let placement = || {
        m.vault
            .placements()
            .unwrap()
            .into_iter()
            .find(|(i, _)| *i == id)
            .unwrap()
            .1
    };

    // Away an hour: within the window (2 h for peers not known a day yet).
    for &i in &gone {
        w.stop_node(i);
    }
    w.pass(3600);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(m.remote.activity().repaired_objects, 0);
    assert_eq!(placement(), before);
    w.restart_nodes(&gone, &m.vnode);
    w.pass(600);

    // Away three hours: past the window, the object is rebuilt.
    for &i in &gone {
        w.stop_node(i);
    }
    let held = w.fragments();
    w.pass(3 * 3600);
    wait_for("repair", Duration::from_secs(60), || {
        w.pass(60);
        m.remote.activity().repaired_objects > 0
    });
    let repaired = placement();
    assert_eq!(repaired.fragments.len(), 6, "4 counting and the 2 spares");
    assert!(w.fragments() > held, "fresh fragments on the other nodes");

    // They return: their fragments count again, nothing is uploaded.
    w.restart_nodes(&gone, &m.vnode);
    let total = w.fragments();
    w.pass(1800);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        placement(),
        repaired,
        "kept: 6 counting is within n + (n - k)"
    );
    assert_eq!(
        w.fragments(),
        total,
        "nothing uploaded for the returning holders"
    );
    let d = m.remote.durability().unwrap();
    assert_eq!(d.at_or_below_threshold, 0);
    m.unmount();
}

/// A file deleted while one of its holders is away for good: the holders
/// that are connected have their leases cancelled at once; the absent
/// holder's cancel waits, and is forgotten a lease time after it was first
/// tried (its lease has run out by then), so cancels for holders that
/// never return do not pile up.
#[test]
fn cancels_for_a_holder_that_never_returns_are_dropped_after_a_lease() {
    let mut w = world();
    let m = w.mount();
    w.wait_renewed(&m);
    let (_, placement) = m.vault.placements().unwrap().remove(0);
    let away_peer = placement.fragments[0].peer.clone();
    let away = (0..w.nodes.len())
        .find(|i| w.nodes[*i].as_ref().unwrap().peer_id().to_bytes() == away_peer)
        .unwrap();
    w.stop_node(away);
    m.vault.unlink(ROOT_INO, b"f").unwrap();
    let pending = || m.vault.released(None, 1000).unwrap();
    wait_for(
        "the connected holders' cancels",
        Duration::from_secs(30),
        || {
            let p = pending();
            !p.is_empty() && p.iter().all(|r| r.peer == away_peer && r.since.is_some())
        },
    );
    w.clock.advance(29 * DAY);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!pending().is_empty(), "dropped before its lease ran out");
    w.clock.advance(2 * DAY);
    wait_for(
        "the stale cancel to be forgotten",
        Duration::from_secs(30),
        || pending().is_empty(),
    );
    m.unmount();
}

/// A vault mounted through a year of simulated time keeps its root
/// record on the nodes: the publish loop re-offers it by the maintenance
/// clock (a timer of real time would never come due here), so the nodes'
/// expiry of records nobody offers for 180 days never drops it.
#[test]
fn a_vault_mounted_for_a_year_keeps_its_root_record_on_the_nodes() {
    let w = world_with(5, |r| r.publish_every = Duration::from_millis(200));
    let m = w.mount();
    let roots = || -> Vec<u64> { w.nodes.iter().flatten().map(|n| n.root_count()).collect() };
    wait_for("the root on every node", Duration::from_secs(30), || {
        roots().iter().all(|c| *c >= 1)
    });
    for step in 1..=4 {
        w.clock.advance(100 * DAY);
        std::thread::sleep(Duration::from_secs(2));
        w.let_nodes_collect();
        assert!(
            roots().iter().all(|c| *c >= 1),
            "root records dropped after {} days: {:?}",
            step * 100,
            roots()
        );
    }
    m.unmount();
}
