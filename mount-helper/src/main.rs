//! `drizzle-mount-helper`, installed as `mount.drizzle` and `mount.fuse.drizzle`: lets `mount -t fuse.drizzle VAULT DIR -o ...`
//! and fstab lines start a drizzle mount.
//!
//! mount(8) calls `mount.fuse.drizzle VAULT DIR [-o opts]`. Options understood:
//! `data_dir=`, `password_file=`, `config=`, `peer=` and `listen=`
//! (repeatable), `donate=`, `cache=`, `no_mdns`; generic ones (`_netdev`,
//! `noauto`, `rw`, `x-systemd.*`, ...) are ignored here. The helper execs
//! `drizzle mount DIR --vault VAULT --data-dir ... --password-file ...`.
//! `umount DIR` ends the FUSE session; the daemon then flushes and exits.

use std::os::unix::process::CommandExt;
use std::process::{exit, Command};

#[derive(Debug, PartialEq)]
struct Invocation {
    vault: String,
    mountpoint: String,
    data_dir: Option<String>,
    password_file: Option<String>,
    /// Further `drizzle mount` flags from options.
    flags: Vec<String>,
}

fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => opts.push(it.next().ok_or("-o needs a value")?.clone()),
            s if s.starts_with("-o") => opts.push(s[2..].to_string()),
            // -n (no mtab), -s (sloppy), -f (fake), -v (verbose): nothing to do.
            "-n" | "-s" | "-f" | "-v" => {}
            s if s.starts_with('-') => return Err(format!("unknown flag {s}")),
            _ => pos.push(a.clone()),
        }
    }
    let [vault, mountpoint] = <[String; 2]>::try_from(pos)
        .map_err(|_| "usage: mount.drizzle VAULT MOUNTPOINT [-o options]")?;
    let mut inv = Invocation {
        vault,
        mountpoint,
        data_dir: None,
        password_file: None,
        flags: Vec::new(),
    };
    for opt in opts.iter().flat_map(|o| o.split(',')) {
        match opt.split_once('=') {
            Some(("data_dir", v)) => inv.data_dir = Some(v.to_string()),
            Some(("password_file", v)) => inv.password_file = Some(v.to_string()),
            Some((k @ ("peer" | "listen" | "donate" | "cache" | "config"), v)) => {
                inv.flags.push(format!("--{k}"));
                inv.flags.push(v.to_string());
            }
            None if opt == "no_mdns" => inv.flags.push("--no-mdns".into()),
            None if opt == "allow_other" => inv.flags.push("--allow-other".into()),
            _ => {}
        }
    }
    Ok(inv)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let inv = match parse(&args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("mount.drizzle: {e}");
            exit(1);
        }
    };
    let drizzle = std::env::var("DRIZZLE_BIN").unwrap_or_else(|_| find_drizzle());
    let mut cmd = Command::new(&drizzle);
    cmd.arg("mount")
        .arg(&inv.mountpoint)
        .arg("--vault")
        .arg(&inv.vault);
    if let Some(d) = &inv.data_dir {
        cmd.arg("--data-dir").arg(d);
    }
    if let Some(p) = &inv.password_file {
        cmd.arg("--password-file").arg(p);
    }
    cmd.args(&inv.flags);
    let err = cmd.exec();
    eprintln!("mount.drizzle: cannot run {drizzle}: {err}");
    exit(1);
}

/// `drizzle` on PATH, else where `install.sh` puts it (mount(8) may run
/// helpers with a minimal PATH).
fn find_drizzle() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin".into(), "/usr/bin".into()])
        .map(|d| d.join("drizzle"))
        .find(|p| p.is_file())
        .map_or_else(|| "drizzle".into(), |p| p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_mount_invocations() {
        let inv = parse(&s(&[
            "photos",
            "/mnt/p",
            "-o",
            "rw,_netdev,data_dir=/srv/d,password_file=/etc/pw",
        ]))
        .unwrap();
        assert_eq!(
            inv,
            Invocation {
                vault: "photos".into(),
                mountpoint: "/mnt/p".into(),
                data_dir: Some("/srv/d".into()),
                password_file: Some("/etc/pw".into()),
                flags: vec![],
            }
        );
        let inv = parse(&s(&[
            "v",
            "/m",
            "-o",
            "peer=/ip4/10.0.0.2/tcp/4001,peer=/ip4/10.0.0.3/tcp/4001,cache=1G,no_mdns,noauto",
        ]))
        .unwrap();
        assert_eq!(
            inv.flags,
            s(&[
                "--peer",
                "/ip4/10.0.0.2/tcp/4001",
                "--peer",
                "/ip4/10.0.0.3/tcp/4001",
                "--cache",
                "1G",
                "--no-mdns"
            ])
        );
        assert!(parse(&s(&["only-one"])).is_err());
        assert!(parse(&s(&["a", "b", "-o"])).is_err());
        assert_eq!(
            parse(&s(&["a", "b", "-n", "-odata_dir=/x"]))
                .unwrap()
                .data_dir
                .as_deref(),
            Some("/x")
        );
    }
}
