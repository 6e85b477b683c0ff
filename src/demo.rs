//! `drizzle demo`: eight local contribution nodes, a throwaway vault mounted
//! with sample files, a full sync to the nodes, a read that survives
//! stopping three of them, and a recovery of the vault on an empty data dir
//! from its name and password alone. For a first try; everything is deleted
//! at the end.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;

use crate::config::VaultConfig;
use crate::crypto::{KdfParams, VaultKeys};
use crate::daemon::{self, NetSetup, Request};
use crate::net::{Multiaddr, NodeConfig, NodeHandle};
use crate::recover::create_vault;
use crate::units::human_bytes;
use crate::vault::{Vault, VaultOptions};

/// Local contribution nodes the demo starts.
const NODES: usize = 8;
/// The demo vault's coding: any 5 of 8 fragments rebuild an object.
const K: u32 = 5;
const N: u32 = 8;
/// Nodes the demo stops before reading back (n - k).
const STOPPED: usize = (N - K) as usize;

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")
}

pub fn run(dir: Option<PathBuf>, seconds: Option<u64>) -> anyhow::Result<()> {
    let mount_dir = dir.unwrap_or_else(|| PathBuf::from("drizzle-demo"));
    let created_mount_dir = !mount_dir.exists();
    std::fs::create_dir_all(&mount_dir)
        .with_context(|| format!("creating {}", mount_dir.display()))?;
    let mount_dir = mount_dir.canonicalize()?;
    let data = tempfile::Builder::new().prefix("drizzle-demo-").tempdir()?;
    let password = throwaway_password();

    println!("drizzle demo");
    println!("  vault     demo (a throwaway vault; password: {password})");
    println!("  data dir  {} (sealed data only)", data.path().display());
    println!("  mount     {}", mount_dir.display());

    // The contribution nodes run on their own runtime in this process.
    let (node_rt, nodes) = start_nodes(data.path())?;
    println!(
        "  peers     {NODES} contribution nodes on 127.0.0.1, 1 GiB donated each (first: {})",
        nodes[0].listen_addrs()[0]
    );

    let vault_dir = data.path().join("vault");
    let kdf = KdfParams::default_strong();
    create_vault(&vault_dir, "demo", &password, kdf, K, N)?;
    let cfg = VaultConfig::load(&vault_dir)?;
    let keys = VaultKeys::derive(password.as_bytes(), &cfg.vault, cfg.kdf)?;
    // Keep no synced data on local disk: reads after the sync come from peers.
    let opts = VaultOptions {
        disk_cache: 0,
        ..VaultOptions::default()
    };
    let vault = Vault::open(&vault_dir, "demo", keys, opts)?;
    let mut node_cfg = NodeConfig::new(vault_dir.join("node"), 0);
    node_cfg.listen = vec![loopback()];
    node_cfg.peers = nodes[0].listen_addrs();
    let net = NetSetup {
        node: node_cfg,
        remote: crate::remote::RemoteConfig::new(K, N),
        allow_other: false,
    };

    let v2 = vault.clone();
    let md = mount_dir.clone();
    let dd = vault_dir.clone();
    let demo_nodes = nodes.clone();
    let pw = password.clone();
    let result = daemon::run_mount(vault, &vault_dir, &mount_dir, net, move |r| {
        if let Err(e) = r {
            eprintln!("demo: mount failed: {e}");
            return;
        }
        std::thread::spawn(move || {
            if let Err(e) = show(&v2, &md, &dd, &demo_nodes, &pw, seconds) {
                eprintln!("demo: {e:#}");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::this(),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
        });
    });
    for n in &nodes {
        n.stop();
    }
    drop(node_rt);
    if created_mount_dir {
        let _ = std::fs::remove_dir(&mount_dir);
    }
    println!("demo stopped; the throwaway vault and nodes are deleted");
    result
}

/// A random password for the throwaway vault.
fn throwaway_password() -> String {
    let mut raw = [0u8; 12];
    rand::rng().fill_bytes(&mut raw);
    format!(
        "demo-{}",
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// The contribution nodes, on a runtime of their own in this process, each
/// with a data dir under `data` and 1 GiB donated; all but the first join
/// through the first.
fn start_nodes(data: &Path) -> anyhow::Result<(tokio::runtime::Runtime, Vec<NodeHandle>)> {
    let node_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("demo-nodes")
        .enable_all()
        .build()?;
    let nodes: Vec<NodeHandle> = node_rt.block_on(async {
        let mut nodes: Vec<NodeHandle> = Vec::new();
        for i in 0..NODES {
            let mut cfg = NodeConfig::new(data.join(format!("node-{i}")), 1 << 30);
            // Many nodes on one host: every connection comes from one address.
            cfg.conn_limits.per_ip = 1000;
            cfg.listen = vec![loopback()];
            if let Some(first) = nodes.first() {
                cfg.peers = first.listen_addrs();
            }
            nodes.push(NodeHandle::start(cfg).await?);
        }
        anyhow::Ok(nodes)
    })?;
    Ok((node_rt, nodes))
}

fn show(
    vault: &Arc<Vault>,
    mount: &Path,
    data_dir: &Path,
    nodes: &[NodeHandle],
    password: &str,
    seconds: Option<u64>,
) -> anyhow::Result<()> {
    let big = write_samples(mount)?;
    println!();
    println!("Wrote sample files (12 MiB of random data) through the mount.");
    println!(
        "Syncing: sealing, coding into {N} fragments per object, spreading them over the nodes..."
    );
    let started = std::time::Instant::now();
    daemon::request(data_dir, &Request::Sync { local: false })?;
    let st = daemon::request(data_dir, &Request::Status)?
        .status
        .context("no status")?;
    let (Some(stats), Some(sync)) = (&st.stats, &st.sync) else {
        anyhow::bail!("status without vault parts");
    };
    println!(
        "  synced in {:.1} s: {} stored as {} objects, {} healthy ({K} of {N} fragments each needed), {} peers",
        started.elapsed().as_secs_f64(),
        human_bytes(stats.stored_bytes),
        stats.objects,
        sync.health.healthy,
        st.node.storage_peers
    );
    let held: Vec<String> = nodes
        .iter()
        .map(|n| n.fragment_count().to_string())
        .collect();
    println!("  fragments held per node: {}", held.join(" "));

    for n in &nodes[..STOPPED] {
        n.stop();
    }
    vault.drop_memory_cache();
    std::thread::sleep(Duration::from_millis(300));
    let mut back = Vec::new();
    std::fs::File::open(mount.join("latest"))?.read_to_end(&mut back)?;
    anyhow::ensure!(back == big, "read-back of the sample file differs");
    println!(
        "Stopped {STOPPED} of the {NODES} nodes, emptied every cache, and read the 12 MiB back from the\n\
         remaining nodes through the mount: identical."
    );
    recover_elsewhere(data_dir, &nodes[STOPPED..], password, &big)?;
    println!();
    print_try(mount, data_dir);
    match seconds {
        Some(n) => {
            println!("The demo stops by itself in {n} s.");
            std::thread::sleep(Duration::from_secs(n));
            nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGINT)?;
        }
        None => println!("Press Ctrl-C to unmount and delete the demo vault and nodes."),
    }
    Ok(())
}

/// Writes the sample files through the mount (a README, 12 MiB of random
/// data, a symlink to it) and syncs the large one; returns its bytes.
fn write_samples(mount: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::write(
        mount.join("README.txt"),
        "Hello from drizzle!\nEverything in this folder is encrypted before it leaves the program.\n",
    )?;
    std::fs::create_dir_all(mount.join("photos/2026"))?;
    let mut big = vec![0u8; 12 << 20];
    rand::rng().fill_bytes(&mut big);
    let mut f = std::fs::File::create(mount.join("photos/2026/large-random.bin"))?;
    f.write_all(&big)?;
    f.sync_all()?;
    std::os::unix::fs::symlink("photos/2026/large-random.bin", mount.join("latest"))?;
    Ok(big)
}

/// What to try in another terminal while the demo runs.
fn print_try(mount: &Path, data_dir: &Path) {
    println!("Try, in another terminal:");
    println!(
        "  ls -la {}            # an ordinary directory",
        mount.display()
    );
    println!("  cp -r /usr/share/doc/bash {}/", mount.display());
    // The binary by its full path: after scripts/demo it is not on PATH.
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "drizzle".into());
    println!("  {exe} sync --data-dir {}    # fails: 3 nodes are gone, so new data cannot reach full redundancy", data_dir.display());
    println!("  {exe} status --data-dir {}", data_dir.display());
    println!(
        "  grep -r Hello {}     # nothing: the disk holds only sealed data",
        data_dir.display()
    );
}

/// A new machine: an empty data dir, the vault name and the password, and
/// one of the remaining nodes as a peer. Finds the root record, fetches the
/// metadata, opens the vault and reads the large sample file from the peers.
fn recover_elsewhere(
    data_dir: &Path,
    nodes: &[NodeHandle],
    password: &str,
    expect: &[u8],
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let dir = data_dir
        .parent()
        .context("demo data dir has a parent")?
        .join("new-machine");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let kdf = KdfParams::default_strong();
    let (files, fetched, readme) = rt.block_on(async {
        let mut cfg = NodeConfig::new(dir.join("node"), 0);
        cfg.listen = vec![loopback()];
        cfg.peers = nodes[0].listen_addrs();
        let node = NodeHandle::start(cfg).await?;
        crate::metasync::wait_for_peers(&node, Duration::from_secs(15)).await;
        let keys = VaultKeys::derive(password.as_bytes(), "demo", kdf)?;
        let look = crate::metasync::find_root(&node, &keys).await;
        let found = look
            .best
            .context("the demo vault's root record was not found")?;
        let pulled = crate::metasync::pull_into(&node, &keys, &found, &dir, None, |_| {})
            .await
            .map_err(anyhow::Error::msg)?;
        let opts = VaultOptions {
            disk_cache: 0,
            ..VaultOptions::default()
        };
        let vault = Vault::open(&dir, "demo", keys, opts)?;
        let _remote = crate::remote::Remote::start(vault.clone(), node.clone(), K, N);
        let v = vault.clone();
        let readme = tokio::task::spawn_blocking(move || {
            let mut dir = crate::vault::ROOT_INO;
            for name in ["photos", "2026"] {
                dir = v.lookup(dir, name.as_bytes())?.0;
            }
            let (ino, inode) = v.lookup(dir, b"large-random.bin")?;
            v.open_file(ino)?;
            let mut data = Vec::with_capacity(inode.size as usize);
            while (data.len() as u64) < inode.size {
                let got = v.read(ino, data.len() as u64, 1 << 20)?;
                if got.is_empty() {
                    break;
                }
                data.extend_from_slice(&got);
            }
            v.release(ino)?;
            Ok::<_, crate::vault::VaultError>(data)
        })
        .await??;
        let files = vault.stats()?.files;
        vault.shutdown()?;
        node.stop();
        anyhow::Ok((files, pulled, readme))
    })?;
    anyhow::ensure!(readme == expect, "the recovered sample file differs");
    println!(
        "Recovered the vault on an empty data dir from its name and password alone: found its\n\
         signed root record, fetched {} of metadata ({} objects), {} files; the 12 MiB file read\n\
         from the peers: identical ({:.1} s).",
        human_bytes(fetched.bytes),
        fetched.objects,
        files,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
