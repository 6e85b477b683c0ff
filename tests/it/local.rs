//! Other local users: the data dir, the control socket and the mount
//! belong to the user who made them; the daemon leaves no core dumps and
//! no password in its environment.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;

/// A user with no rights here.
const NOBODY: &str = "65534";

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Runs a command as user and group 65534.
fn as_nobody(args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        "--",
    ])
    .args(args);
    run_with_timeout(&mut cmd, std::time::Duration::from_secs(30))
}

/// Every file and directory under `dir` that someone else could read.
fn readable_by_others(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ty = e.file_type().unwrap();
            if ty.is_symlink() {
                continue;
            }
            if mode(&p) & 0o077 != 0 {
                out.push(format!("{} {:o}", p.display(), mode(&p)));
            }
            if ty.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn the_data_dir_the_daemon_and_the_mount_are_the_owners() {
    let mut d = Drive::init("private");
    // A path others may traverse to the mount, as to many home dirs.
    chmod(d.tmp.path(), 0o755);
    d.mount_args = local_net_args();
    d.mount();
    std::fs::write(d.p("secret"), b"mine").unwrap();
    d.sync();
    assert_eq!(mode(&d.data), 0o700);
    let open: Vec<_> = readable_by_others(&d.data);
    assert!(open.is_empty(), "others may read: {open:#?}");
    let sock = d.data.join("daemon.sock");
    assert_eq!(mode(&sock), 0o600);

    // The daemon: no core dumps, no password in its environment.
    let pid = d.status()["pid"].as_i64().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let env = String::from_utf8_lossy(&env);
    assert!(!env.contains("DRIZZLE_PASSWORD"), "{env}");
    assert!(!env.contains(PASSWORD));

    // Another user can neither use the mount...
    let mnt = d.mnt.to_str().unwrap().to_string();
    let out = as_nobody(&["ls", &mnt]);
    assert!(!out.status.success(), "another user listed the mount");
    // ...nor control the daemon, even with the data dir loosened.
    chmod(&d.data, 0o755);
    chmod(&sock, 0o777);
    let out = as_nobody(&[
        "perl",
        "-MIO::Socket::UNIX",
        "-e",
        r#"$s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!"; print $s "\"Status\"\n"; print while <$s>;"#,
        sock.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("may not control"),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!said.contains("peer_id"), "{said}");
    chmod(&d.data, 0o700);
    d.umount();
    // A data dir loosened by hand is made owner-only again at mount.
    chmod(&d.data, 0o755);

    // With --allow-other, other users may use the mount as the files'
    // modes allow, and no further.
    d.mount_args.push("--allow-other".into());
    d.mount();
    assert_eq!(mode(&d.data), 0o700);
    chmod(&d.p("secret"), 0o644);
    let file = d.p("secret").to_str().unwrap().to_string();
    let out = as_nobody(&["cat", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"mine");
    let out = as_nobody(&["sh", "-c", &format!("echo x > '{file}'")]);
    assert!(
        !out.status.success(),
        "another user wrote a 0644 file of root's"
    );
    chmod(&d.p("secret"), 0o600);
    assert!(!as_nobody(&["cat", &file]).status.success());
    d.umount();
}
