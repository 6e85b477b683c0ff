//! What every drizzle process does first to keep its secrets from other
//! local users: everything it creates is owner-only (umask 077: 0700
//! directories, 0600 files and control socket), it leaves no core dumps
//! (which would hold keys) and cannot be read by a debugger of the same
//! user (`PR_SET_DUMPABLE` 0, which also makes `/proc/PID/environ` readable
//! by root only), and it takes `DRIZZLE_PASSWORD` out of its environment
//! once read, so no child inherits it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::{umask, Mode};

/// Owner-only files, no core dumps, not dumpable. Called at start, before
/// any thread or file exists.
pub fn harden_process() {
    umask(Mode::from_bits_truncate(0o077));
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!("cannot turn off core dumps: {e}");
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("cannot mark the process undumpable: {e}");
    }
}

/// Makes a data dir made by an older version (with the umask of its day)
/// owner-only: others can then reach nothing inside it.
pub fn tighten_data_dir(dir: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::info!("made {} owner-only (mode 0700)", dir.display());
    }
    Ok(())
}

/// Whether a control client may talk to this daemon: the daemon's own
/// user, or root.
pub fn client_allowed(client_uid: u32) -> bool {
    client_uid == 0 || client_uid == nix::unistd::geteuid().as_raw()
}
