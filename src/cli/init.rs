//! `drizzle init`: a new vault in the data dir, refused if the name and
//! password already have one on the network.

use anyhow::{anyhow, bail};

use crate::config::{validate_kn, validate_name, VaultConfig};
use crate::crypto::{KdfParams, VaultKeys};
use crate::recover::create_vault;

use super::args::{Common, NetArgs};
use super::password::{check_strength, read_password};

pub(super) fn init(
    common: &Common,
    name: &str,
    k: u32,
    n: u32,
    kdf: KdfParams,
    allow_weak: bool,
    peers: &[String],
) -> anyhow::Result<()> {
    let data_dir = common.data_dir();
    if VaultConfig::path(&data_dir).exists() {
        bail!("a vault already exists in {}", data_dir.display());
    }
    validate_name(name).map_err(|e| anyhow!("bad vault name: {e}"))?;
    validate_kn(k, n).map_err(|e| anyhow!("bad --k/--n: {e}"))?;
    let password = read_password(common, true)?;
    check_strength(&password, name, allow_weak)?;
    if !peers.is_empty() {
        let net = NetArgs {
            peer: peers.to_vec(),
            no_mdns: true,
            ..Default::default()
        };
        let node = net.node_config(data_dir.join("node"), 0)?;
        let keys = VaultKeys::derive(password.as_bytes(), name, kdf)?;
        let mut progress = super::render::Progress::new();
        crate::recover::refuse_existing(name, &keys, node, &mut |e| progress.show(e))?;
    }
    create_vault(&data_dir, name, &password, kdf, k, n)?;
    println!("created vault '{name}' in {}", data_dir.display());
    println!("keep the vault name and password safe: together they are the only way to the data");
    Ok(())
}
