//! In-process cluster helpers: real libp2p nodes on 127.0.0.1 in this
//! process, and a vault (engine API, no FUSE) uploading to them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use drizzle::crypto::VaultKeys;
use drizzle::net::{Fault, Multiaddr, Network, NodeConfig, NodeHandle};
use drizzle::remote::{Remote, RemoteConfig};
use drizzle::vault::{Kind, Vault, VaultOptions, ROOT_INO};

use crate::support::wait_for;

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

/// Starts `faults.len()` nodes; each bootstraps from the first.
pub(crate) async fn start_nodes(
    dir: &Path,
    faults: &[Option<Fault>],
    donate: u64,
) -> Vec<NodeHandle> {
    start_nodes_with(dir, faults, donate, |_| {}).await
}

/// [`start_nodes`], with each node's configuration adjusted by `adjust`.
pub(crate) async fn start_nodes_with(
    dir: &Path,
    faults: &[Option<Fault>],
    donate: u64,
    adjust: impl Fn(&mut NodeConfig),
) -> Vec<NodeHandle> {
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for (i, fault) in faults.iter().enumerate() {
        let mut cfg = NodeConfig::new(dir.join(format!("node-{i}")), donate);
        // Many nodes on one host: every connection comes from one address.
        cfg.conn_limits.per_ip = 1000;
        cfg.listen = vec![loopback()];
        cfg.fault = *fault;
        adjust(&mut cfg);
        if let Some(first) = nodes.first() {
            cfg.peers = first.listen_addrs();
        }
        nodes.push(NodeHandle::start(cfg).await.unwrap());
    }
    nodes
}

/// Stops every node when dropped (even if the test fails).
pub(crate) struct Stopper(pub Vec<NodeHandle>);

impl Drop for Stopper {
    fn drop(&mut self) {
        for n in &self.0 {
            n.stop();
        }
    }
}

/// A vault (engine API, no disk cache) with its own node bootstrapped from
/// `peers`, uploading through a `Remote`.
pub(crate) fn online_vault(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    peers: Vec<Multiaddr>,
    rcfg: RemoteConfig,
) -> (Arc<Vault>, NodeHandle, Arc<Remote>) {
    online_vault_with(rt, dir, peers, rcfg, |_| {})
}

/// [`online_vault`], with the vault's node configuration adjusted.
pub(crate) fn online_vault_with(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    peers: Vec<Multiaddr>,
    rcfg: RemoteConfig,
    adjust: impl Fn(&mut NodeConfig),
) -> (Arc<Vault>, NodeHandle, Arc<Remote>) {
    std::fs::create_dir_all(dir).unwrap();
    let keys = || VaultKeys::from_master(&[7u8; 32]);
    Vault::create(dir, &keys(), 0, 0).unwrap();
    let opts = VaultOptions {
        disk_cache: 0,
        idle_flush: Duration::from_millis(50),
        ..Default::default()
    };
    let vault = Vault::open(dir, "cluster", keys(), opts).unwrap();
    let mut cfg = NodeConfig::new(dir.join("node"), 0);
    cfg.listen = vec![loopback()];
    cfg.peers = peers;
    adjust(&mut cfg);
    let (vnode, remote) = rt.block_on(async {
        let vnode = NodeHandle::start(cfg).await.unwrap();
        let remote = Remote::start_with(vault.clone(), vnode.clone(), rcfg);
        (vnode, remote)
    });
    (vault, vnode, remote)
}

/// `count` storage nodes and a vault (with its own node) that has found
/// them all; every node stops when this is dropped.
pub(crate) struct Cluster {
    pub nodes: Vec<NodeHandle>,
    pub vault: Arc<Vault>,
    pub vnode: NodeHandle,
    pub remote: Arc<Remote>,
    pub _stop: Stopper,
}

pub(crate) fn cluster(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    count: usize,
    rcfg: RemoteConfig,
) -> Cluster {
    let nodes = rt.block_on(start_nodes(dir, &vec![None; count], 1 << 30));
    let mut stop = Stopper(nodes.clone());
    let (vault, vnode, remote) =
        online_vault(rt, &dir.join("vault"), nodes[0].listen_addrs(), rcfg);
    stop.0.push(vnode.clone());
    // Kademlia finds the whole cluster from one bootstrap address.
    wait_for("peer discovery", Duration::from_secs(30), || {
        vnode.storage_peers().len() >= count
    });
    Cluster {
        nodes,
        vault,
        vnode,
        remote,
        _stop: stop,
    }
}

/// Writes a file through the vault API.
pub(crate) fn write_file(vault: &Vault, name: &str, data: &[u8]) -> u64 {
    let ino = vault
        .mknod(ROOT_INO, name.as_bytes(), Kind::File, 0o644, 0, 0, 0, None)
        .unwrap()
        .0;
    vault.open_file(ino).unwrap();
    vault.write(ino, 0, data).unwrap();
    vault.release(ino).unwrap();
    ino
}
