//! Test support: a vault in a temp dir, mounted through the real `drizzle`
//! binary, always unmounted (and its daemon killed) on drop, even when a
//! test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "tangerine submarine orchestra 4417 quietly";

/// The `drizzle` binary under test: this build's, or `DRIZZLE_TEST_BIN`
/// (to run a test against another build, e.g. the previous main's).
pub fn bin() -> String {
    std::env::var("DRIZZLE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_drizzle").into())
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
    /// Extra `mount` arguments (network options).
    pub mount_args: Vec<String>,
    /// `RUST_LOG` for the commands this drive runs.
    pub log_filter: Option<String>,
    pid: Option<i32>,
}

/// Network options for test mounts: loopback only, no mDNS (tests running
/// at once must not find each other), a small donation.
pub fn local_net_args() -> Vec<String> {
    [
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--donate",
        "256M",
        "--conns-per-address",
        "1000",
    ]
    .map(String::from)
    .to_vec()
}

impl Drive {
    /// A new vault (weak-but-legal KDF settings to keep tests quick).
    pub fn init(name: &str) -> Drive {
        Self::init_with(name, &[])
    }

    /// An empty data dir and mount point (a new machine): no vault yet.
    pub fn blank() -> Drive {
        let tmp = tempfile::Builder::new()
            .prefix("drizzle-it-")
            .tempdir()
            .unwrap();
        let data = tmp.path().join("data");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        Drive {
            tmp,
            data,
            mnt,
            password: PASSWORD.to_string(),
            mount_args: local_net_args(),
            log_filter: None,
            pid: None,
        }
    }

    /// Like [`blank`](Self::blank), with the data dir at `data` (on a
    /// filesystem a test controls).
    pub fn blank_with_data(data: PathBuf) -> Drive {
        let mut d = Self::blank();
        d.data = data;
        d
    }

    /// A new vault with extra `init` arguments (e.g. `--k 3 --n 5`).
    pub fn init_with(name: &str, extra: &[&str]) -> Drive {
        let d = Self::blank();
        let mut args = vec!["init", "--vault", name, "--kdf-memory", "64M"];
        args.extend_from_slice(extra);
        let out = d.drizzle(&args);
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
        if let Some(f) = &self.log_filter {
            cmd.env("RUST_LOG", f);
        }
        run_with_timeout(&mut cmd, Duration::from_secs(300))
    }

    /// `drizzle mount MNT` with `mount_args`, as it ran (success unchecked).
    pub fn mount_output(&self) -> Output {
        let mnt = self.mnt.to_str().unwrap().to_string();
        let mut args = vec!["mount", mnt.as_str()];
        args.extend(self.mount_args.iter().map(String::as_str));
        self.drizzle(&args)
    }

    /// Mounts (which must succeed) and returns what the command printed.
    pub fn mount_checked(&mut self) -> Output {
        let out = self.mount_output();
        assert!(
            out.status.success(),
            "mount failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.pid = Some(self.status()["pid"].as_i64().unwrap() as i32);
        out
    }

    pub fn mount(&mut self) {
        self.mount_checked();
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

    /// Records the daemon now serving this drive (after a mount made by
    /// other means than [`mount`](Self::mount)).
    pub fn adopt_running(&mut self) {
        self.pid = Some(self.status()["pid"].as_i64().unwrap() as i32);
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

    /// Seals and stores every write locally (no peers involved).
    pub fn sync(&self) {
        let out = self.drizzle(&["sync", "--local"]);
        assert!(
            out.status.success(),
            "sync failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `drizzle sync`: waits for full redundancy on peers.
    pub fn sync_network(&self) -> Output {
        self.drizzle(&["sync"])
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

/// A `drizzle node` process on loopback; killed on drop.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub peer_id: String,
    child: Option<std::process::Child>,
}

impl Node {
    /// Starts a node donating `donate`, bootstrapping from `peers`.
    pub fn start(donate: &str, peers: &[&str]) -> Node {
        Self::start_with(donate, peers, &[])
    }

    /// `count` nodes donating 1G each, all bootstrapped from the first.
    pub fn several(count: usize) -> Vec<Node> {
        let first = Node::start("1G", &[]);
        let a = first.addr.clone();
        let mut v = vec![first];
        for _ in 1..count {
            v.push(Node::start("1G", &[&a]));
        }
        v
    }

    /// Like [`start`](Self::start), with extra `drizzle node` arguments.
    pub fn start_with(donate: &str, peers: &[&str], extra: &[&str]) -> Node {
        Self::start_at("127.0.0.1", donate, peers, extra)
    }

    /// Like [`start_with`](Self::start_with), listening on `ip` (any of
    /// 127.0.0.0/8: several "hosts" on one machine).
    pub fn start_at(ip: &str, donate: &str, peers: &[&str], extra: &[&str]) -> Node {
        use std::io::BufRead;
        let dir = tempfile::Builder::new()
            .prefix("drizzle-node-")
            .tempdir()
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["node", "--donate", donate, "--no-mdns"])
            .args(["--conns-per-address", "1000"])
            .args(["--listen", &format!("/ip4/{ip}/tcp/0"), "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "info");
        for p in peers {
            cmd.args(["--peer", p]);
        }
        cmd.args(extra);
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node = Node {
            dir,
            addr: String::new(),
            peer_id: String::new(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while node.addr.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(id) = line.strip_prefix("drizzle node ") {
                        node.peer_id = id.trim().to_string();
                    }
                    if let Some(a) = line.strip_prefix("listening on ") {
                        node.addr = a.trim().to_string();
                    }
                }
                Err(_) => panic!(
                    "node did not start: {}",
                    std::fs::read_to_string(node.dir.path().join("node.log")).unwrap_or_default()
                ),
            }
        }
        node
    }

    pub fn status(&self) -> serde_json::Value {
        let mut cmd = Command::new(bin());
        cmd.args(["status", "--json", "--data-dir"])
            .arg(self.dir.path());
        let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "node status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Stops the node: SIGKILL (a peer vanishing).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the node (SIGSTOP): its connections stay open and its
    /// requests go unanswered, a holder that stalls mid-transfer.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused node go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let c = self.child.as_ref().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).unwrap();
    }

    /// Stops the node cleanly (SIGTERM), as systemd does.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        c.wait().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child process killed (and reaped) when dropped, even if a test fails.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Keeps every core busy while it lives (timing-sensitive tests run beside
/// it, as on a laptop running a build).
pub struct CpuBurner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuBurner {
    pub fn start() -> CpuBurner {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for _ in 0..100_000 {
                            x = std::hint::black_box(
                                x.wrapping_mul(6364136223846793005).wrapping_add(1),
                            );
                        }
                    }
                })
            })
            .collect();
        CpuBurner { stop, threads }
    }
}

impl Drop for CpuBurner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A bare libp2p swarm (TCP, Noise, Yamux) with a fresh identity and the
/// behaviour `make` builds from it, for tests that speak the wire format
/// themselves; connections stay open while idle for `idle`.
pub fn raw_swarm<B: libp2p::swarm::NetworkBehaviour>(
    make: impl FnOnce(&libp2p::identity::Keypair) -> B,
    idle: Duration,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            Default::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|k| make(k))
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build()
}
