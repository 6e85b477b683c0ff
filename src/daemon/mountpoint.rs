//! Mount-point checks before a mount (missing, busy, stale `ENOTCONN`
//! mounts detached) and reading `/proc/self/mounts`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Refuses a mount point that is missing or busy; cleans a dead mount left
/// by a killed daemon ("transport endpoint is not connected").
pub fn prepare_mountpoint(mountpoint: &Path) -> anyhow::Result<PathBuf> {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!("cleaning a stale mount at {}", mountpoint.display());
            nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).with_context(
                || format!("cannot clean the stale mount at {}", mountpoint.display()),
            )?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mount point {} does not exist", mountpoint.display())
        }
        Err(e) => bail!("mount point {}: {e}", mountpoint.display()),
        Ok(m) if !m.is_dir() => bail!("mount point {} is not a directory", mountpoint.display()),
        Ok(_) => {}
    }
    let canon = mountpoint.canonicalize()?;
    if is_mountpoint(&canon)? {
        bail!(
            "mount point {} is busy: something is already mounted there",
            canon.display()
        );
    }
    Ok(canon)
}

/// The source (for drizzle: the data dir) and type of what is mounted at `path`.
pub fn mount_entry(path: &Path) -> anyhow::Result<Option<(String, String)>> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let want = path.to_string_lossy();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() >= 3 && unescape_mount_field(f[1]) == want {
            return Ok(Some((unescape_mount_field(f[0]), f[2].to_string())));
        }
    }
    Ok(None)
}

fn is_mountpoint(path: &Path) -> anyhow::Result<bool> {
    Ok(mount_entry(path)?.is_some())
}

fn unescape_mount_field(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_fields_unescape() {
        assert_eq!(unescape_mount_field("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_field("plain"), "plain");
    }
}
