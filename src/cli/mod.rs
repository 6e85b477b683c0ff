//! Command-line interface: argument parsing, password entry and the messages
//! users see. The command forms follow DESIGN.md section 7.
//!
//! This file dispatches; the commands live one group per module: `args`
//! (the clap shape), `password`, `init`, `mount`, `node`, `status`,
//! `control` (sync, umount) and `simulate`.

use anyhow::anyhow;

use crate::settings::Settings;

mod args;
mod control;
mod init;
mod mount;
mod node;
mod password;
mod render;
pub mod simulate;
mod status;

pub use crate::recover::create_vault;
pub use crate::units::{human_bytes, parse_size};
pub use args::{
    default_data_dir, free_disk, parse_donation, Cli, Cmd, Common, MountNetArgs, NetArgs,
};
pub use mount::MountSetup;

/// Fills what the command line left open from the config file.
pub fn apply_settings(cmd: &mut Cmd, s: &Settings) {
    fn common(c: &mut Common, s: &Settings) {
        c.data_dir = c.data_dir.take().or_else(|| s.data_dir.clone());
        c.password_file = c.password_file.take().or_else(|| s.password_file.clone());
    }
    fn net(n: &mut NetArgs, s: &Settings) {
        if n.listen.is_empty() {
            n.listen = s.network.listen.clone();
        }
        if n.peer.is_empty() {
            n.peer = s.network.peers.clone();
        }
        if s.network.mdns == Some(false) {
            n.no_mdns = true;
        }
        if n.metrics.is_none() {
            n.metrics = s.network.metrics.clone();
        }
        if n.grace.is_none() {
            n.grace = s.network.grace.clone();
        }
    }
    match cmd {
        Cmd::Init {
            common: c,
            vault,
            k,
            n,
            kdf_memory,
            kdf_passes,
            peer,
            ..
        } => {
            common(c, s);
            if peer.is_empty() {
                *peer = s.network.peers.clone();
            }
            let i = &s.init;
            *vault = vault.take().or_else(|| i.vault.clone());
            *k = k.or(i.k);
            *n = n.or(i.n);
            *kdf_memory = kdf_memory.take().or_else(|| i.kdf_memory.clone());
            *kdf_passes = kdf_passes.or(i.kdf_passes);
        }
        Cmd::Mount {
            common: c,
            vault,
            foreground,
            opts,
            ..
        } => {
            common(c, s);
            *vault = vault.take().or_else(|| s.mount.vault.clone());
            *foreground |= s.mount.foreground == Some(true);
            opts.donate = opts.donate.take().or_else(|| s.mount.donate.clone());
            opts.cache = opts.cache.take().or_else(|| s.mount.cache.clone());
            opts.starter_allowance = opts
                .starter_allowance
                .take()
                .or_else(|| s.mount.starter_allowance.clone());
            net(&mut opts.net, s);
        }
        Cmd::Node {
            data_dir,
            donate,
            net: n,
        } => {
            *data_dir = data_dir.take().or_else(|| s.data_dir.clone());
            *donate = donate.take().or_else(|| s.node.donate.clone());
            net(n, s);
        }
        Cmd::Status { common: c, .. }
        | Cmd::Sync { common: c, .. }
        | Cmd::Umount { common: c, .. } => common(c, s),
        Cmd::Demo { .. } | Cmd::Completions { .. } | Cmd::Simulate(_) => {}
    }
}

pub fn run(mut cli: Cli, settings: &Settings) -> anyhow::Result<()> {
    apply_settings(&mut cli.command, settings);
    match cli.command {
        Cmd::Init {
            common,
            vault,
            k,
            n,
            kdf_memory,
            kdf_passes,
            allow_weak_password,
            peer,
        } => init::init(
            &common,
            &vault.ok_or_else(|| anyhow!("--vault NAME is required"))?,
            k.unwrap_or(10),
            n.unwrap_or(16),
            args::kdf_from_args(kdf_memory.as_deref(), kdf_passes)?,
            allow_weak_password,
            &peer,
        ),
        Cmd::Mount {
            common,
            mountpoint,
            vault,
            foreground,
            daemon_child,
            opts,
            kdf_memory,
            kdf_passes,
        } => mount::mount(
            &common,
            &mountpoint,
            vault.as_deref(),
            foreground,
            daemon_child,
            &opts,
            args::kdf_from_args(kdf_memory.as_deref(), kdf_passes)?,
        ),
        Cmd::Node {
            data_dir,
            donate,
            net,
        } => node::node(
            data_dir.unwrap_or_else(default_data_dir),
            &donate.ok_or_else(|| {
                anyhow!("--donate SIZE is required (or node.donate in the config file)")
            })?,
            &net,
        ),
        Cmd::Status { common, json } => status::status(&common, json),
        Cmd::Sync { common, local } => control::sync(&common, local),
        Cmd::Umount {
            common: _,
            mountpoint,
        } => control::umount(&mountpoint),
        Cmd::Demo { dir, seconds } => crate::demo::run(dir, seconds),
        Cmd::Simulate(args) => simulate::simulate(&args),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "drizzle",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}
