//! Commands that talk to a running daemon over its control socket:
//! `drizzle sync` (with a progress bar on a terminal) and `drizzle umount`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::config::VaultConfig;
use crate::daemon::{self, Request};
use crate::units::human_bytes;

use super::args::Common;

pub(super) fn sync(common: &Common, local: bool) -> anyhow::Result<()> {
    let bar = std::io::stderr().is_terminal();
    let mut drew = false;
    let r = daemon::request_with_progress(&common.data_dir(), &Request::Sync { local }, |p| {
        if !bar {
            return;
        }
        let done = p.total_bytes.saturating_sub(p.remaining_bytes);
        let frac = if p.total_bytes == 0 {
            1.0
        } else {
            done as f64 / p.total_bytes as f64
        };
        let width = 30;
        let filled = (frac * width as f64) as usize;
        let eta = if p.rate > 0.0 {
            format!(", ETA {:.0} s", p.remaining_bytes as f64 / p.rate)
        } else {
            String::new()
        };
        eprint!(
            "\r[{}{}] {} of {} uploaded ({}/s{eta}, {} objects left)   ",
            "#".repeat(filled),
            "-".repeat(width - filled),
            human_bytes(done),
            human_bytes(p.total_bytes),
            human_bytes(p.rate as u64),
            p.remaining_objects
        );
        drew = true;
    });
    if drew {
        eprintln!();
    }
    r?;
    if local {
        println!("synced locally: every acknowledged write is sealed and stored on this machine");
    } else {
        println!(
            "synced: every acknowledged write and the vault's metadata are on peers at full redundancy"
        );
        let conflict = daemon::request(&common.data_dir(), &Request::Status)
            .ok()
            .and_then(|r| r.status)
            .and_then(|s| s.metadata)
            .and_then(|m| m.conflict);
        if let Some(c) = conflict {
            eprintln!("warning: {c}");
        }
    }
    Ok(())
}

pub(super) fn umount(mountpoint: &Path) -> anyhow::Result<()> {
    let abs = std::path::absolute(mountpoint)?;
    let path = abs.canonicalize().unwrap_or(abs);
    let (source, fstype) = daemon::mount_entry(&path)?
        .ok_or_else(|| anyhow!("nothing is mounted at {}", path.display()))?;
    // The kernel reports "fuse" or "fuse.drizzle"; the source is the data dir.
    let data_dir = PathBuf::from(source);
    if !fstype.starts_with("fuse") || !VaultConfig::path(&data_dir).exists() {
        bail!("{} is not a drizzle mount (it is {fstype})", path.display());
    }
    match daemon::request(&data_dir, &Request::Umount) {
        Ok(_) => {}
        Err(e)
            if !daemon::socket_path(&data_dir).exists()
                || e.to_string().contains("no drizzle daemon") =>
        {
            nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("unmounting {}", path.display()))?;
            eprintln!(
                "the daemon for {} was not running; removed the stale mount",
                path.display()
            );
        }
        Err(e) => return Err(e),
    }
    let mut gone = false;
    for _ in 0..300 {
        if daemon::mount_entry(&path)?.is_none() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !gone {
        bail!("{} is still mounted after 30 s", path.display());
    }
    // Returns once the daemon is done, so a mount right after succeeds.
    daemon::wait_store_released(&data_dir, daemon::PREVIOUS_DAEMON_WAIT)
        .context("the mount is gone, but its daemon has not finished")?;
    println!("unmounted {}", path.display());
    Ok(())
}
