//! Running as a service: the mount helper through mount(8), systemd units,
//! the config file, and logs that never contain secrets.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{bin, run_with_timeout, Drive, Node, PASSWORD};

fn helper_bin() -> PathBuf {
    let p = Path::new(&bin()).with_file_name("drizzle-mount-helper");
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins, as scripts/test does)",
        p.display()
    );
    p
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sh(cmd: &mut Command) -> String {
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Uninstalls on drop, even if the test fails.
struct Installed {
    prefix: PathBuf,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("mount-helper/install.sh"))
            .arg("--uninstall")
            .arg("--prefix")
            .arg(&self.prefix)
            .output();
    }
}

#[test]
fn mount_helper_mounts_with_mount_t_and_umount_stops_the_daemon() {
    let mut d = Drive::init("helper");
    let prefix = d.tmp.path().join("prefix");
    sh(Command::new(repo().join("mount-helper/install.sh"))
        .arg("--bin")
        .arg(bin())
        .arg("--helper")
        .arg(helper_bin())
        .arg("--prefix")
        .arg(&prefix));
    let installed = Installed {
        prefix: prefix.clone(),
    };
    assert!(Path::new("/sbin/mount.fuse.drizzle").exists());
    assert!(Path::new("/sbin/mount.drizzle").exists());
    let pwfile = d.tmp.path().join("pw");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let opts = format!(
        "data_dir={},password_file={},no_mdns,listen=/ip4/127.0.0.1/tcp/0,donate=64M,_netdev",
        d.data.display(),
        pwfile.display()
    );
    sh(Command::new("mount")
        .args(["-t", "fuse.drizzle", "helper"])
        .arg(&d.mnt)
        .args(["-o", &opts])
        .env("DRIZZLE_BIN", prefix.join("bin/drizzle"))
        .env_remove("DRIZZLE_PASSWORD"));
    std::fs::write(d.p("via-helper.txt"), b"mounted by mount(8)").unwrap();
    let pid = d.status()["pid"].as_i64().unwrap();
    // Plain umount(8): the daemon notices, flushes and exits.
    sh(Command::new("umount").arg(&d.mnt));
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "daemon still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The fstab line from the README, through `mount -T FSTAB DIR`.
    let fstab = d.tmp.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "helper {} fuse.drizzle noauto,_netdev,{opts} 0 0\n",
            d.mnt.display()
        ),
    )
    .unwrap();
    sh(Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&d.mnt)
        .env("DRIZZLE_BIN", prefix.join("bin/drizzle"))
        .env_remove("DRIZZLE_PASSWORD"));
    assert_eq!(
        std::fs::read(d.p("via-helper.txt")).unwrap(),
        b"mounted by mount(8)"
    );
    d.umount_unrecorded();
    drop(installed);
    assert!(!Path::new("/sbin/mount.fuse.drizzle").exists());
    assert!(!prefix.join("bin/drizzle").exists());
}

#[test]
fn systemd_units_verify() {
    let tmp = tempfile::tempdir().unwrap();
    for unit in ["drizzle-node.service", "drizzle-mount@.service"] {
        let text = std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap();
        std::fs::write(
            tmp.path().join(unit),
            text.replace("/usr/local/bin/drizzle", &bin()),
        )
        .unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(tmp.path().join("drizzle-node.service"))
        .arg(tmp.path().join("drizzle-mount@photos.service"))
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("systemd-analyze (scripts/setup installs systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    // Only lines about our units count (the host's own units may be odd).
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("drizzle"))
        .filter(|l| !l.contains("User=drizzle") && !l.contains("user drizzle"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
}

#[test]
fn config_file_errors_name_the_key_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("drizzle.toml");
    std::fs::write(&cfg, "[mount]\ncache = \"plenty\"\n").unwrap();
    let out = Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .args(["status", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mount.cache"), "{err}");
    assert!(err.contains(cfg.to_str().unwrap()), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Values from the file apply; flags win over them.
    std::fs::write(
        &cfg,
        "[node]\ndonate = \"3M\"\n[network]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\n",
    )
    .unwrap();
    let data = tmp.path().join("node");
    let child = Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .arg("node")
        .arg("--data-dir")
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = crate::support::KillOnDrop(child);
    let mut donated = None;
    for _ in 0..100 {
        let out = Command::new(bin())
            .args(["status", "--json", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            donated = v["donated_bytes"].as_u64();
            assert!(v["listen"][0]
                .as_str()
                .unwrap()
                .starts_with("/ip4/127.0.0.1/tcp/"));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(child);
    assert_eq!(donated, Some(3 << 20));
}

#[test]
fn logs_never_contain_the_password() {
    let node = Node::start("256M", &[]);
    let mut d = Drive::init_with("secrets", &["--k", "1", "--n", "1"]);
    d.mount_args.extend(["--peer".into(), node.addr.clone()]);
    // Debug logging everywhere, to catch anything a verbose log would leak.
    d.log_filter = Some("debug".into());
    d.mount();
    std::fs::write(d.p("note.txt"), b"secret plans").unwrap();
    let out = d.sync_network();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.umount();
    let mut logs = d.log();
    logs.push_str(&std::fs::read_to_string(node.dir.path().join("node.log")).unwrap());
    assert!(logs.contains("mounted at"), "the log is empty?");
    let hex: String = PASSWORD.bytes().map(|b| format!("{b:02x}")).collect();
    for needle in [PASSWORD, &hex, "secret plans"] {
        assert!(!logs.contains(needle), "the log contains {needle:?}");
    }
    for word in PASSWORD.split(' ').filter(|w| w.len() > 6) {
        assert!(
            !logs.contains(word),
            "the log contains part of the password: {word}"
        );
    }
}

#[test]
fn node_serves_prometheus_metrics_on_loopback() {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new(bin())
        .args([
            "node",
            "--donate",
            "5M",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .arg(format!("--metrics=127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = crate::support::KillOnDrop(child);
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s.read_to_string(&mut body).unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(child);
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("\ndrizzle_donated_bytes 5242880\n"), "{body}");
    for name in [
        "stored_bytes",
        "fragments",
        "root_records",
        "peers",
        "requests_total",
        "errors_total",
        "sent_bytes_total",
    ] {
        assert!(
            body.contains(&format!("# TYPE drizzle_{name} ")),
            "{name} missing"
        );
    }
}

#[test]
fn completions_and_help_with_examples() {
    let out = Command::new(bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("drizzle") && script.contains("mount") && script.contains("--donate"));
    for cmd in [
        "init",
        "mount",
        "node",
        "status",
        "sync",
        "umount",
        "demo",
        "completions",
    ] {
        let out = Command::new(bin()).args([cmd, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd} --help failed");
        assert!(
            help.contains("Example"),
            "{cmd} --help has no example:\n{help}"
        );
    }
}
