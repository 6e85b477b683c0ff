//! Months in seconds: the real maintenance code (renewals, the nodes' lease
//! collection) under one simulated clock, with real nodes and a real vault
//! in this process.

use std::sync::Arc;
use std::time::Duration;

use drizzle::crypto::VaultKeys;
use drizzle::maint::{Clock, SimClock};
use drizzle::net::{NodeConfig, NodeHandle};
use drizzle::remote::{Remote, RemoteConfig};
use drizzle::vault::{Vault, VaultOptions, ROOT_INO};

use crate::inproc::{loopback, online_vault_with, runtime, start_nodes_with, write_file, Stopper};
use crate::support::{pattern, wait_for};

const DAY: u64 = 86_400;
const START: u64 = 1_800_000_000;

/// Storage nodes and a vault whose clocks are `clock`; the nodes collect
/// expired leases five times a second.
struct World {
    clock: Arc<SimClock>,
    nodes: Vec<NodeHandle>,
    rcfg: RemoteConfig,
    dir: tempfile::TempDir,
    _stop: Stopper,
    _rt: tokio::runtime::Runtime,
}

/// A mounted vault: maintenance and the vault's node on their own runtime.
struct Mounted {
    rt: tokio::runtime::Runtime,
    vnode: NodeHandle,
    vault: Arc<Vault>,
}

impl Mounted {
    fn unmount(self) {
        self.vnode.stop();
        drop(self.rt);
        self.vault.shutdown().unwrap();
        // The vault's worker threads let go of it as they stop.
        wait_for("the vault to close", Duration::from_secs(10), || {
            Arc::strong_count(&self.vault) == 1
        });
    }
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let clock = SimClock::new(START);
    let c: Arc<dyn Clock> = clock.clone();
    let nodes = rt.block_on(start_nodes_with(dir.path(), &[None; 5], 1 << 30, |cfg| {
        cfg.clock = c.clone();
        cfg.gc_interval = Duration::from_millis(200);
    }));
    let mut rcfg = RemoteConfig::new(2, 4);
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
        vnode.storage_peers().len() >= 5
    });
    write_file(&vault, "f", &pattern(3 << 20, 5));
    vault.sync_all().unwrap();
    vrt.block_on(remote.wait_synced(|_| {})).unwrap();
    drop(remote);
    Mounted {
        rt: vrt,
        vnode,
        vault,
    }
    .unmount();
    World {
        clock,
        _stop: Stopper(nodes.clone()),
        nodes,
        rcfg,
        dir,
        _rt: rt,
    }
}

impl World {
    fn fragments(&self) -> u64 {
        self.nodes.iter().map(|n| n.fragment_count()).sum()
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
        cfg.peers = self.nodes[0].listen_addrs();
        cfg.clock = self.clock.clone();
        let (v, rcfg) = (vault.clone(), self.rcfg);
        let vnode = rt.block_on(async move {
            let vnode = NodeHandle::start(cfg).await.unwrap();
            Remote::start_with(v, vnode.clone(), rcfg);
            vnode
        });
        Mounted { rt, vnode, vault }
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
