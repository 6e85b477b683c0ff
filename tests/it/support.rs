//! Test support: a vault in a temp dir, mounted through the real `drizzle`
//! binary, always unmounted (and its daemon killed) on drop, even when a
//! test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "tangerine submarine orchestra 4417 quietly";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_drizzle")
}

/// Runs a command with a deadline; kills it if it hangs.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "command {cmd:?} timed out after {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Drive {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub mnt: PathBuf,
    pub password: String,
    pid: Option<i32>,
}

impl Drive {
    /// A new vault (weak-but-legal KDF settings to keep tests quick).
    pub fn init(name: &str) -> Drive {
        let tmp = tempfile::Builder::new()
            .prefix("drizzle-it-")
            .tempdir()
            .unwrap();
        let data = tmp.path().join("data");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let d = Drive {
            tmp,
            data,
            mnt,
            password: PASSWORD.to_string(),
            pid: None,
        };
        let out = d.drizzle(&["init", "--vault", name, "--kdf-memory", "64M"]);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
    }

    /// Runs `drizzle SUBCOMMAND ARGS... --data-dir DATA` with the password in the environment.
    pub fn drizzle(&self, args: &[&str]) -> Output {
        self.drizzle_with(args, &self.password)
    }

    pub fn drizzle_with(&self, args: &[&str], password: &str) -> Output {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .env("DRIZZLE_PASSWORD", password);
        run_with_timeout(&mut cmd, Duration::from_secs(300))
    }

    pub fn mount(&mut self) {
        let mnt = self.mnt.to_str().unwrap().to_string();
        let out = self.drizzle(&["mount", &mnt]);
        assert!(
            out.status.success(),
            "mount failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.pid = Some(self.status()["pid"].as_i64().unwrap() as i32);
    }

    pub fn umount(&mut self) {
        let mnt = self.mnt.to_str().unwrap().to_string();
        let out = self.drizzle(&["umount", &mnt]);
        assert!(
            out.status.success(),
            "umount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_daemon_exit();
    }

    /// Unmounts a mount this `Drive` did not start itself.
    pub fn umount_unrecorded(&mut self) {
        let pid = self.status()["pid"].as_i64().unwrap() as i32;
        self.pid = Some(pid);
        self.umount();
    }

    pub fn remount(&mut self) {
        self.umount();
        self.mount();
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.drizzle(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    pub fn sync(&self) {
        let out = self.drizzle(&["sync"]);
        assert!(
            out.status.success(),
            "sync failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("drizzle.log")).unwrap_or_default()
    }

    /// Simulates a crash: SIGKILL the daemon (the mount is left dead).
    pub fn kill9(&mut self) {
        let pid = self.pid.take().expect("mounted");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        wait_pid_gone(pid);
    }

    fn wait_daemon_exit(&mut self) {
        if let Some(pid) = self.pid.take() {
            wait_pid_gone(pid);
        }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

/// True while `pid` runs (a zombie nobody reaps counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn wait_pid_gone(pid: i32) {
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().unwrap().to_string();
        if let Some(pid) = self.pid {
            let child = Command::new(bin())
                .args(["umount", &mnt, "--data-dir"])
                .arg(&self.data)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let start = Instant::now();
            if let Ok(mut child) = child {
                while child.try_wait().ok().flatten().is_none()
                    && start.elapsed() < Duration::from_secs(20)
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            while alive(pid) && start.elapsed() < Duration::from_secs(25) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Whatever is left (a dead mount after kill -9): detach it.
        let _ = nix::mount::umount2(self.mnt.as_path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Compares two trees byte for byte (content, symlinks, modes) with diff(1).
pub fn assert_same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trees differ:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A deterministic pseudo-random buffer.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
