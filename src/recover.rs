//! Finding a vault on the network before a mount: recovery on an empty data
//! dir (`drizzle mount --vault NAME`), taking up a newer version another
//! device published, and `drizzle init` refusing a name and password that
//! already have a vault.
//!
//! Each runs a short-lived node on the data dir's node directory (the same
//! identity the mount uses afterwards) and stops it before the mount starts.
//! `create_vault` is the local half of an init (no node), shared by
//! `drizzle init` and the demo.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::config::{validate_kn, validate_name, VaultConfig, FORMAT_VERSION};
use crate::crypto::{KdfParams, VaultKeys};
use crate::metasync::{self, describe_time, FoundRoot, Lookup};
use crate::net::{NodeConfig, NodeHandle};
use crate::vault::versions::{relate, Relation};
use crate::vault::Vault;

/// What recovery, updates from the network and the init check report
/// while they work. They never print; the CLI renders these.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Keys are being derived to recover `name`.
    Recovering { name: String },
    /// The vault's root was found (version `seq`, published at unix time
    /// `published`); its metadata is being fetched.
    Found {
        name: String,
        seq: u64,
        published: u64,
    },
    /// Metadata fetched so far.
    Fetched {
        objects: u64,
        total: u64,
        bytes: u64,
    },
    /// A recovery finished.
    Recovered {
        name: String,
        bytes: u64,
        objects: u64,
        secs: f64,
    },
    /// The network holds a separate vault under this name and password;
    /// this data dir's vault stays unpublished.
    SeparateVault { name: String, published: u64 },
    /// Another device published a version this device does not include;
    /// this device keeps its own (and its unsynced changes, if `pending`).
    Diverged {
        name: String,
        published: u64,
        pending: bool,
    },
    /// A newer version another device published is being taken up.
    TakingUp { name: String, published: u64 },
    /// Taken up: now at version `seq`.
    Updated { seq: u64, bytes: u64 },
    /// No peer was reachable, so `init` could not check for an existing
    /// vault of this name and password.
    Unchecked { name: String },
}

/// How long a lookup waits for a first peer.
const PEER_WAIT: Duration = Duration::from_secs(15);

/// Runs `f` with a node on `cfg`, then stops the node and its runtime
/// (releasing the node's database for the mount that follows).
fn with_node<T>(
    cfg: NodeConfig,
    f: impl AsyncFnOnce(&NodeHandle) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let r = rt.block_on(async {
        let node = NodeHandle::start(cfg)
            .await
            .context("starting the network node")?;
        let r = f(&node).await;
        node.stop();
        r
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    r
}

/// Waits for peers and asks them (and the DHT) for the vault's root.
async fn lookup(node: &NodeHandle, keys: &VaultKeys) -> Lookup {
    metasync::wait_for_peers(node, PEER_WAIT).await;
    metasync::find_root(node, keys).await
}

/// Recovers vault `name` into the empty data dir: finds its root, fetches
/// and checks its metadata, and writes the vault config. File contents stay
/// on peers until read.
pub fn recover(
    data_dir: &Path,
    name: &str,
    password: &str,
    kdf: KdfParams,
    node: NodeConfig,
    report: &mut dyn FnMut(Event),
) -> anyhow::Result<()> {
    let started = Instant::now();
    report(Event::Recovering { name: name.into() });
    let keys = VaultKeys::derive(password.as_bytes(), name, kdf)?;
    let dir = data_dir.to_path_buf();
    let (found, fetched) = with_node(node, async |node| {
        let look = lookup(node, &keys).await;
        let Some(found) = look.best else {
            let mut msg = not_found(name, &look);
            if let Some(other) = other_kdf_hint(kdf) {
                msg.push_str(&other);
            }
            bail!(msg);
        };
        report(Event::Found {
            name: name.into(),
            seq: found.record.seq,
            published: found.payload.time,
        });
        let p = metasync::pull_into(node, &keys, &found, &dir, None, |p| {
            report(Event::Fetched {
                objects: p.objects as u64,
                total: p.total_objects as u64,
                bytes: p.bytes,
            })
        })
        .await
        .map_err(|e| anyhow!("recovering vault '{name}' failed: {e}"))?;
        Ok((found, p))
    })?;
    // The keys opened the root, so `kdf` is what the vault was made with.
    write_config(data_dir, name, &keys, kdf, &found)?;
    report(Event::Recovered {
        name: name.into(),
        bytes: fetched.bytes,
        objects: fetched.objects as u64,
        secs: started.elapsed().as_secs_f64(),
    });
    Ok(())
}

/// A hint for vaults made with non-default Argon2 parameters.
fn other_kdf_hint(used: KdfParams) -> Option<String> {
    (used == KdfParams::default_strong()).then(|| {
        " (a vault created with other --kdf-memory/--kdf-passes needs the same values here)".into()
    })
}

fn not_found(name: &str, look: &Lookup) -> String {
    if look.asked == 0 {
        return format!(
            "no peers were reachable to ask for vault '{name}' (waited {} s): give a reachable \
             peer with --peer ADDR, or run where mDNS finds one",
            PEER_WAIT.as_secs()
        );
    }
    let mut msg = format!(
        "no vault named '{name}' with this password was found on the network ({} peers asked, {} answered",
        look.asked, look.answered
    );
    if look.invalid > 0 {
        msg.push_str(&format!(", {} invalid records ignored", look.invalid));
    }
    msg.push_str("); check the name and the password, and give a reachable peer with --peer ADDR");
    msg
}

fn write_config(
    data_dir: &Path,
    name: &str,
    keys: &VaultKeys,
    kdf: KdfParams,
    found: &FoundRoot,
) -> anyhow::Result<()> {
    let cfg = VaultConfig {
        format: FORMAT_VERSION,
        vault: name.to_string(),
        kdf,
        key_check: keys.key_check(),
        k: found.payload.k,
        n: found.payload.n,
    };
    cfg.create(data_dir)?;
    Ok(())
}

/// Before mounting an existing vault: if another device published a newer
/// version that includes this device's, and this device has no changes of
/// its own waiting, take it up. A version that does not include this
/// device's is a conflict: this device keeps its own and says so.
pub fn update_from_network(
    data_dir: &Path,
    cfg: &VaultConfig,
    keys: &VaultKeys,
    node: NodeConfig,
    report: &mut dyn FnMut(Event),
) -> anyhow::Result<()> {
    let (st, pending) = match Vault::local_publish_state(data_dir, keys) {
        Ok(v) => v,
        // A daemon already serves this data dir: the mount reports that.
        Err(crate::vault::VaultError::Store(crate::store::StoreError::Locked(_))) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let dir = data_dir.to_path_buf();
    with_node(node, async |node| {
        if metasync::wait_for_peers(node, Duration::from_secs(5)).await == 0 {
            tracing::info!("no peers reachable: mounting the local state");
            return Ok(());
        }
        let look = metasync::find_root(node, keys).await;
        let Some(found) = look.best else {
            return Ok(());
        };
        let p = &found.payload;
        let relation = relate(&st, &p.head.id, p.device, &p.vv);
        if relation == Relation::Included {
            return Ok(());
        }
        let name = cfg.vault.clone();
        if relation == Relation::Separate {
            report(Event::SeparateVault {
                name,
                published: p.time,
            });
            return Ok(());
        }
        if relation == Relation::Diverged || pending {
            report(Event::Diverged {
                name,
                published: p.time,
                pending,
            });
            return Ok(());
        }
        report(Event::TakingUp {
            name,
            published: p.time,
        });
        let got = metasync::pull_into(node, keys, &found, &dir, Some(st.device), |_| {})
            .await
            .map_err(|e| anyhow!("updating from the network failed: {e}"))?;
        report(Event::Updated {
            seq: found.record.seq,
            bytes: got.bytes,
        });
        Ok(())
    })
}

/// `drizzle init` with peers: refuses a name and password that already
/// have a vault on the network.
pub fn refuse_existing(
    name: &str,
    keys: &VaultKeys,
    node: NodeConfig,
    report: &mut dyn FnMut(Event),
) -> anyhow::Result<()> {
    with_node(node, async |node| {
        if metasync::wait_for_peers(node, PEER_WAIT).await == 0 {
            report(Event::Unchecked { name: name.into() });
            return Ok(());
        }
        let look = metasync::find_root(node, keys).await;
        if let Some(found) = look.best {
            bail!(
                "a vault named '{name}' with this password already exists on the network \
                 (version {}, published {}); to use it here, mount it on an empty data dir: \
                 drizzle mount MOUNTPOINT --vault '{name}' --peer ADDR",
                found.record.seq,
                describe_time(found.payload.time)
            );
        }
        Ok(())
    })
}

/// Creates a vault; shared by `init` and the demo.
pub fn create_vault(
    data_dir: &Path,
    name: &str,
    password: &str,
    kdf: KdfParams,
    k: u32,
    n: u32,
) -> anyhow::Result<()> {
    validate_name(name).map_err(|e| anyhow!("bad vault name: {e}"))?;
    validate_kn(k, n).map_err(|e| anyhow!("bad --k/--n: {e}"))?;
    kdf.validate()?;
    if VaultConfig::path(data_dir).exists() {
        bail!("a vault already exists in {}", data_dir.display());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let keys = VaultKeys::derive(password.as_bytes(), name, kdf)?;
    let cfg = VaultConfig {
        format: FORMAT_VERSION,
        vault: name.to_string(),
        kdf,
        key_check: keys.key_check(),
        k,
        n,
    };
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    Vault::create(data_dir, &keys, uid, gid)?;
    cfg.create(data_dir)?;
    Ok(())
}
