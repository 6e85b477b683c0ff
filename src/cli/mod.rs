//! Command-line interface: argument parsing, password entry and the messages
//! users see. The command forms follow DESIGN.md section 7.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use zeroize::Zeroizing;

use crate::config::{validate_kn, validate_name, VaultConfig, FORMAT_VERSION};
use crate::crypto::{KdfParams, VaultKeys};
use crate::daemon::{self, Request};
use crate::net::{Multiaddr, NodeConfig};
use crate::settings::Settings;
use crate::vault::{Vault, VaultOptions};

pub mod simulate;

#[derive(Parser)]
#[command(name = "drizzle", version, about = "A peer-to-peer encrypted cloud drive", long_about = None)]
pub struct Cli {
    /// Config file (TOML; see docs/drizzle.example.toml). Default: the first
    /// of ~/.config/drizzle/config.toml and /etc/drizzle/config.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Args, Clone)]
pub struct Common {
    /// Data directory of the vault (default: $XDG_DATA_HOME/drizzle).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Read the password from this file (else DRIZZLE_PASSWORD, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// Network options shared by `mount` and `node`.
#[derive(Args, Clone, Default, Debug)]
pub struct NetArgs {
    /// Listen address, repeatable (default: a free TCP and QUIC port on all
    /// interfaces), e.g. /ip4/0.0.0.0/tcp/4001.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<String>,
    /// A peer to connect to, repeatable, e.g. /ip4/192.0.2.7/tcp/4001 (the
    /// /p2p/PEER_ID suffix is optional).
    #[arg(long = "peer", value_name = "ADDR")]
    pub peer: Vec<String>,
    /// Do not look for peers on the local network (mDNS).
    #[arg(long)]
    pub no_mdns: bool,
    /// Serve Prometheus metrics on ADDR (default 127.0.0.1:9464 when given
    /// without a value; off unless given).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = crate::metrics::DEFAULT_ADDR)]
    pub metrics: Option<String>,
    /// What any peer may store here beyond what it stores for this node
    /// (the starter grace; default 1G). Peers that take more are refused.
    #[arg(long, value_name = "SIZE")]
    pub grace: Option<String>,
    /// How often fragments whose lease ran out are deleted, in seconds
    /// (default 600).
    #[arg(long, value_name = "SECS", hide_short_help = true)]
    pub gc_secs: Option<u64>,
}

impl NetArgs {
    /// Command-line form, for handing the options to a background child.
    fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for l in &self.listen {
            a.extend(["--listen".to_string(), l.clone()]);
        }
        for p in &self.peer {
            a.extend(["--peer".to_string(), p.clone()]);
        }
        if self.no_mdns {
            a.push("--no-mdns".into());
        }
        if let Some(m) = &self.metrics {
            a.push(format!("--metrics={m}"));
        }
        if let Some(g) = &self.grace {
            a.extend(["--grace".to_string(), g.clone()]);
        }
        if let Some(g) = self.gc_secs {
            a.extend(["--gc-secs".to_string(), g.to_string()]);
        }
        a
    }

    fn node_config(&self, dir: PathBuf, donate: u64) -> anyhow::Result<NodeConfig> {
        let parse = |flag: &str, s: &String| {
            s.parse::<Multiaddr>().map_err(|e| {
                anyhow!("bad {flag} address '{s}': {e} (expected e.g. /ip4/127.0.0.1/tcp/4001)")
            })
        };
        let mut cfg = NodeConfig::new(dir, donate);
        cfg.listen = self
            .listen
            .iter()
            .map(|s| parse("--listen", s))
            .collect::<anyhow::Result<_>>()?;
        cfg.peers = self
            .peer
            .iter()
            .map(|s| parse("--peer", s))
            .collect::<anyhow::Result<_>>()?;
        cfg.mdns = !self.no_mdns;
        cfg.metrics = self.metrics.clone();
        if let Some(g) = &self.grace {
            cfg.grace = parse_size(g).context("--grace")?;
        }
        if let Some(g) = self.gc_secs {
            cfg.gc_interval = Duration::from_secs(g.max(1));
        }
        Ok(cfg)
    }
}

/// Options of `mount` beyond where and which vault.
#[derive(Args, Clone, Default, Debug)]
pub struct MountNetArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Space to store for others: bytes with K/M/G/T, or N% of free disk
    /// (default: 10% of free disk, at most 50G; 0 stores nothing).
    #[arg(long, value_name = "SIZE")]
    pub donate: Option<String>,
    /// Local disk kept for data already safe on peers (default: keep all;
    /// 0 keeps nothing once synced, so reads come from the network).
    #[arg(long, value_name = "SIZE")]
    pub cache: Option<String>,
    /// What the vault may store before it donates anything (default 1G).
    /// It may store this plus its donation times k/n.
    #[arg(long, value_name = "SIZE")]
    pub starter_allowance: Option<String>,
    /// Lease time asked of peers for each fragment, in seconds (default 30
    /// days; renewed whenever a third of it has passed: at every mount and
    /// while mounted).
    #[arg(long, value_name = "SECS", hide_short_help = true)]
    pub lease_secs: Option<u32>,
    /// A fragment holder away this long stops counting, in seconds, for
    /// every holder (default: a window that follows each holder's uptime
    /// history, from an hour to three days).
    #[arg(long, value_name = "SECS", hide_short_help = true)]
    pub lost_after_secs: Option<u64>,
    /// Rebuild an object once fewer than this many of its fragments are on
    /// holders that count (between k and n; default halfway, 13 for 10 of
    /// 16).
    #[arg(long, value_name = "R", hide_short_help = true)]
    pub repair_threshold: Option<u32>,
    /// Audit budget: percent of what each holder stores for this vault that
    /// it reads per day to answer possession audits (default 1).
    #[arg(long, value_name = "PERCENT", hide_short_help = true)]
    pub audit_percent: Option<f64>,
    /// Seconds between checks for lost holders (default 60).
    #[arg(long, value_name = "SECS", hide_short_help = true)]
    pub repair_every_secs: Option<u64>,
    /// Seconds between background publishes of changed metadata (default
    /// 30; `drizzle sync` publishes at once).
    #[arg(long, value_name = "SECS", hide_short_help = true)]
    pub publish_every_secs: Option<u64>,
    /// How long a read of data that is only on peers waits for its holders
    /// to be found (right after a start) before it fails, in seconds
    /// (default 30).
    #[arg(long, value_name = "SECS", hide_short_help = true)]
    pub read_wait_secs: Option<u64>,
    /// How long object files released by overwrites and deletes may wait
    /// for a database sync before one is made for them, in seconds
    /// (default 5).
    #[arg(long, value_name = "SECS", hide_short_help = true)]
    pub release_sync_secs: Option<u64>,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Cmd {
    /// Create a vault in the data dir.
    #[command(
        after_help = "Examples:\n  drizzle init --vault photos --data-dir ~/.local/share/drizzle\n  drizzle init --vault photos --peer /ip4/192.0.2.7/tcp/4001   # refuses if 'photos' with this password exists there"
    )]
    Init {
        #[command(flatten)]
        common: Common,
        /// Name of the vault; with the password it determines the keys.
        #[arg(long, value_name = "NAME")]
        vault: Option<String>,
        /// Fragments needed to rebuild an object [default: 10].
        #[arg(long)]
        k: Option<u32>,
        /// Fragments made per object [default: 16].
        #[arg(long)]
        n: Option<u32>,
        /// Argon2id memory, at least 64M [default: 256M].
        #[arg(long, value_name = "SIZE")]
        kdf_memory: Option<String>,
        /// Argon2id passes, at least 3 [default: 3].
        #[arg(long, value_name = "N")]
        kdf_passes: Option<u32>,
        /// Accept a password the strength estimate calls very weak.
        #[arg(long)]
        allow_weak_password: bool,
        /// A peer to ask whether this name and password already have a vault
        /// on the network (then init refuses), repeatable.
        #[arg(long = "peer", value_name = "ADDR")]
        peer: Vec<String>,
    },
    /// Mount the vault at MOUNTPOINT (in the background unless --foreground);
    /// on a data dir without a vault, `--vault NAME` recovers it from peers.
    #[command(
        after_help = "Examples:\n  drizzle mount ~/Drive\n  DRIZZLE_PASSWORD=... drizzle mount /mnt/drive --data-dir /srv/drizzle --foreground\n  drizzle mount ~/Drive --vault photos --peer /ip4/192.0.2.7/tcp/4001   # a new machine: recovers 'photos' from the network"
    )]
    Mount {
        #[command(flatten)]
        common: Common,
        mountpoint: PathBuf,
        /// Expected vault name (refused if the data dir holds another vault).
        #[arg(long, value_name = "NAME")]
        vault: Option<String>,
        /// Stay in the foreground; Ctrl-C unmounts.
        #[arg(long)]
        foreground: bool,
        /// Internal: started by a background mount (password on stdin).
        #[arg(long, hide = true)]
        daemon_child: bool,
        /// Argon2id memory the vault was created with, when recovering one
        /// made with a non-default --kdf-memory [default: 256M].
        #[arg(long, value_name = "SIZE", hide_short_help = true)]
        kdf_memory: Option<String>,
        /// Argon2id passes, when recovering (see --kdf-memory) [default: 3].
        #[arg(long, value_name = "N", hide_short_help = true)]
        kdf_passes: Option<u32>,
        #[command(flatten)]
        opts: MountNetArgs,
    },
    /// Run a contribution node: store fragments for others (no vault, no
    /// mount). Runs in the foreground; SIGTERM stops it cleanly.
    #[command(
        after_help = "Examples:\n  drizzle node --donate 500G --listen /ip4/0.0.0.0/tcp/4001\n  drizzle node --donate 20% --peer /ip4/192.0.2.7/tcp/4001 --data-dir /var/lib/drizzle"
    )]
    Node {
        /// Data directory of the node (default: $XDG_DATA_HOME/drizzle).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Space to store for others: bytes with K/M/G/T, or N% of free disk.
        #[arg(long, value_name = "SIZE")]
        donate: Option<String>,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Show the state of the vault or node running for the data dir: peers,
    /// donated and used space, redundancy health, uploads.
    #[command(
        after_help = "Examples:\n  drizzle status\n  drizzle status --json --data-dir /var/lib/drizzle   # a contribution node, for scripts"
    )]
    Status {
        #[command(flatten)]
        common: Common,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Wait until every acknowledged write is on peers at full redundancy.
    #[command(
        after_help = "Examples:\n  drizzle sync            # progress bar on a terminal; non-zero exit if peers are missing or full\n  drizzle sync --local    # only seal and store on this machine"
    )]
    Sync {
        #[command(flatten)]
        common: Common,
        /// Only seal and store locally (what fsync does, for every file).
        #[arg(long)]
        local: bool,
    },
    /// Flush and unmount a mounted vault.
    #[command(after_help = "Example:\n  drizzle umount ~/Drive      # plain umount(8) works too")]
    Umount {
        #[command(flatten)]
        common: Common,
        mountpoint: PathBuf,
    },
    /// A first try: 8 local nodes and a throwaway vault mounted at DIR,
    /// synced, read back with 3 nodes stopped, and recovered from its name
    /// and password.
    #[command(after_help = "Example:\n  drizzle demo /tmp/drive --seconds 60")]
    Demo {
        /// Where to mount (default ./drizzle-demo).
        dir: Option<PathBuf>,
        /// Stop by itself after this many seconds (default: wait for Ctrl-C).
        #[arg(long, value_name = "SECS")]
        seconds: Option<u64>,
    },
    /// Simulate months of churn: many nodes coming and going, lazy repair,
    /// leases and audits, with the daemon's own decision code.
    #[command(
        after_help = "Examples:\n  drizzle simulate --model --nodes 1000 --objects 10000 --days 90\n  drizzle simulate --model --out report/   # report.json and report.svg"
    )]
    Simulate(simulate::SimulateArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  drizzle completions bash > /etc/bash_completion.d/drizzle\n  drizzle completions zsh > \"${fpath[1]}/_drizzle\""
    )]
    Completions { shell: clap_complete::Shell },
}

pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("drizzle");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/drizzle")
}

impl Common {
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

/// Parses a donation: a SIZE or N% of the free space where `dir` lives.
pub fn parse_donation(s: &str, dir: &Path) -> anyhow::Result<u64> {
    let Some(pct) = s.trim().strip_suffix('%') else {
        return parse_size(s);
    };
    let pct: f64 = pct
        .trim()
        .parse()
        .ok()
        .filter(|p: &f64| (0.0..=100.0).contains(p))
        .ok_or_else(|| anyhow!("bad donation '{s}': a percentage must be 0% to 100%"))?;
    Ok((free_disk(dir)? as f64 * pct / 100.0) as u64)
}

/// Free bytes for unprivileged use on the filesystem holding `dir` (or its
/// nearest existing ancestor).
pub fn free_disk(dir: &Path) -> anyhow::Result<u64> {
    let mut d = dir.to_path_buf();
    while !d.exists() {
        if !d.pop() {
            break;
        }
    }
    let st = nix::sys::statvfs::statvfs(&d).with_context(|| format!("statvfs {}", d.display()))?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Parses SIZE: plain bytes or K/M/G/T (binary) suffixes.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow!("bad size '{s}': use bytes or a K/M/G/T suffix, e.g. 512M"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("size '{s}' is too large"))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Reads the password: DRIZZLE_PASSWORD, then --password-file, then a prompt.
fn read_password(common: &Common, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Some(f) = &common.password_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read password file {}", f.display()))?,
        );
        let pw = text.trim_end_matches(['\n', '\r']);
        if pw.is_empty() {
            bail!("password file {} is empty", f.display());
        }
        return Ok(Zeroizing::new(pw.to_string()));
    }
    if let Ok(pw) = std::env::var("DRIZZLE_PASSWORD") {
        if !pw.is_empty() {
            return Ok(Zeroizing::new(pw));
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password given: set DRIZZLE_PASSWORD, pass --password-file FILE, or run in a terminal");
    }
    let pw = Zeroizing::new(
        rpassword::prompt_password("Vault password: ").context("reading the password")?,
    );
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat password: ").context("reading the password")?,
        );
        if *pw != *again {
            bail!("the passwords do not match");
        }
    }
    if pw.is_empty() {
        bail!("the password is empty");
    }
    Ok(pw)
}

/// Loads the config and derives the keys, failing clearly on a wrong password.
fn unlock(data_dir: &Path, password: &str) -> anyhow::Result<(VaultConfig, VaultKeys)> {
    let cfg = VaultConfig::load(data_dir)?;
    let keys = VaultKeys::derive(password.as_bytes(), &cfg.vault, cfg.kdf)?;
    if keys.key_check() != cfg.key_check {
        bail!("wrong password for vault '{}'", cfg.vault);
    }
    Ok((cfg, keys))
}

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
        } => init(
            &common,
            &vault.ok_or_else(|| anyhow!("--vault NAME is required"))?,
            k.unwrap_or(10),
            n.unwrap_or(16),
            kdf_from_args(kdf_memory.as_deref(), kdf_passes)?,
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
        } => mount(
            &common,
            &mountpoint,
            vault.as_deref(),
            foreground,
            daemon_child,
            &opts,
            kdf_from_args(kdf_memory.as_deref(), kdf_passes)?,
        ),
        Cmd::Node {
            data_dir,
            donate,
            net,
        } => node(
            data_dir.unwrap_or_else(default_data_dir),
            &donate.ok_or_else(|| {
                anyhow!("--donate SIZE is required (or node.donate in the config file)")
            })?,
            &net,
        ),
        Cmd::Status { common, json } => status(&common, json),
        Cmd::Sync { common, local } => sync(&common, local),
        Cmd::Umount {
            common: _,
            mountpoint,
        } => umount(&mountpoint),
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

/// Creates a vault; shared by `init` and the demo.
pub fn create_vault(
    data_dir: &Path,
    name: &str,
    password: &str,
    kdf: KdfParams,
    k: u32,
    n: u32,
) -> anyhow::Result<()> {
    validate_name(name).map_err(|e| anyhow!("bad vault name: {e}"))?;
    validate_kn(k, n).map_err(|e| anyhow!("bad --k/--n: {e}"))?;
    kdf.validate()?;
    if VaultConfig::path(data_dir).exists() {
        bail!("a vault already exists in {}", data_dir.display());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let keys = VaultKeys::derive(password.as_bytes(), name, kdf)?;
    let cfg = VaultConfig {
        format: FORMAT_VERSION,
        vault: name.to_string(),
        kdf,
        key_check: keys.key_check(),
        k,
        n,
    };
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    Vault::create(data_dir, &keys, uid, gid)?;
    cfg.create(data_dir)?;
    Ok(())
}

/// Argon2 parameters from `--kdf-memory` and `--kdf-passes` (defaults:
/// 256M, 3 passes).
fn kdf_from_args(memory: Option<&str>, passes: Option<u32>) -> anyhow::Result<KdfParams> {
    let m = parse_size(memory.unwrap_or("256M")).context("--kdf-memory")? / 1024;
    let kdf = KdfParams {
        m_kib: u32::try_from(m).map_err(|_| anyhow!("--kdf-memory is too large"))?,
        t: passes.unwrap_or(3),
        p: 2,
    };
    kdf.validate()
        .map_err(|e| anyhow!("--kdf-memory/--kdf-passes: {e}"))?;
    Ok(kdf)
}

fn init(
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
        crate::recover::refuse_existing(name, &keys, node)?;
    }
    create_vault(&data_dir, name, &password, kdf, k, n)?;
    println!("created vault '{name}' in {}", data_dir.display());
    println!("keep the vault name and password safe: together they are the only way to the data");
    Ok(())
}

/// Refuses very weak passwords (zxcvbn score 0-1) unless allowed; warns on 2.
fn check_strength(password: &str, name: &str, allow_weak: bool) -> anyhow::Result<()> {
    let est = zxcvbn::zxcvbn(password, &[name, "drizzle"]);
    let score = est.score() as u8;
    let hint = est
        .feedback()
        .and_then(|f| f.warning().map(|w| w.to_string()))
        .unwrap_or_default();
    if score <= 1 && !allow_weak {
        bail!(
            "the password is too weak (strength {score}/4{}): anyone holding the vault name can guess it offline. \
             Use a longer passphrase, or pass --allow-weak-password",
            if hint.is_empty() { String::new() } else { format!("; {hint}") }
        );
    }
    if score <= 2 {
        eprintln!("warning: the password is only moderately strong ({score}/4); a longer passphrase is safer");
    }
    Ok(())
}

fn mount(
    common: &Common,
    mountpoint: &Path,
    want: Option<&str>,
    foreground: bool,
    child: bool,
    opts: &MountNetArgs,
    kdf: KdfParams,
) -> anyhow::Result<()> {
    let data_dir = common.data_dir();
    // Check the options before asking for a password.
    let donate = match &opts.donate {
        Some(d) => parse_donation(d, &data_dir).context("--donate")?,
        None => (free_disk(&data_dir)? / 10).min(50 << 30),
    };
    let cache = opts
        .cache
        .as_deref()
        .map(parse_size)
        .transpose()
        .context("--cache")?
        .unwrap_or(u64::MAX);
    let starter = opts
        .starter_allowance
        .as_deref()
        .map(parse_size)
        .transpose()
        .context("--starter-allowance")?
        .unwrap_or(1 << 30);
    let node_cfg = opts.net.node_config(data_dir.join("node"), donate)?;
    let setup = MountSetup {
        node: node_cfg,
        cache,
        starter,
        lease_secs: opts.lease_secs.unwrap_or(crate::remote::DEFAULT_LEASE_SECS),
        lost_after: opts.lost_after_secs,
        repair_threshold: opts.repair_threshold,
        audit_percent: opts.audit_percent,
        repair_every: opts.repair_every_secs,
        publish_every: opts.publish_every_secs,
        read_wait: opts.read_wait_secs,
        release_sync: opts.release_sync_secs,
    };
    if child {
        // Started by a background mount: password on stdin, result on stdout.
        let mut pw = Zeroizing::new(String::new());
        std::io::stdin().read_to_string(&mut pw)?;
        let r = mount_foreground(&data_dir, mountpoint, &pw, setup, |r| {
            let line = match r {
                Ok(()) => "READY\n".to_string(),
                Err(e) => format!("ERROR {e}\n"),
            };
            let mut out = std::io::stdout();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        });
        if let Err(e) = &r {
            println!("ERROR {e:#}");
        }
        return r;
    }
    // A remount right after an unmount: the previous daemon may still be
    // finishing (final sync, publish) and holding the database.
    daemon::wait_previous_daemon(&data_dir, |m| eprintln!("{m}"))?;
    let recovering = !VaultConfig::path(&data_dir).exists();
    if !recovering {
        let c = VaultConfig::load(&data_dir)?;
        check_threshold(opts.repair_threshold, c.k, c.n)?;
    }
    if recovering {
        // An empty data dir and a vault name: recover it from the network.
        let Some(name) = want else {
            bail!(
                "{} is not a drizzle vault (no vault.json): create one with drizzle init --vault NAME, \
                 or recover one from the network with drizzle mount MOUNTPOINT --vault NAME --peer ADDR",
                data_dir.display()
            );
        };
        validate_name(name).map_err(|e| anyhow!("bad vault name: {e}"))?;
        daemon::prepare_mountpoint(mountpoint)?;
    }
    let password = read_password(common, false)?;
    if let (true, Some(name)) = (recovering, want) {
        crate::recover::recover(&data_dir, name, &password, kdf, setup.node.clone())?;
    }
    let (cfg, keys) = unlock(&data_dir, &password)?;
    check_threshold(opts.repair_threshold, cfg.k, cfg.n)?;
    if !recovering && !opts.net.peer.is_empty() {
        // Another device may have published a newer version meanwhile.
        crate::recover::update_from_network(&data_dir, &cfg, &keys, setup.node.clone())?;
    }
    drop(keys);
    if let Some(w) = want {
        if w != cfg.vault {
            bail!(
                "{} holds vault '{}', not '{w}'",
                data_dir.display(),
                cfg.vault
            );
        }
    }
    daemon::prepare_mountpoint(mountpoint)?;
    if foreground {
        return mount_foreground(&data_dir, mountpoint, &password, setup, |r| match r {
            Ok(()) => eprintln!(
                "mounted vault '{}' at {}; Ctrl-C unmounts",
                cfg.vault,
                mountpoint.display()
            ),
            Err(e) => eprintln!("error: {e}"),
        });
    }
    let mut child_args = opts.net.to_args();
    child_args.extend(["--donate".into(), donate.to_string()]);
    if let Some(c) = &opts.cache {
        child_args.extend(["--cache".into(), c.clone()]);
    }
    child_args.extend(["--starter-allowance".into(), starter.to_string()]);
    if let Some(l) = opts.lease_secs {
        child_args.extend(["--lease-secs".into(), l.to_string()]);
    }
    if let Some(l) = opts.lost_after_secs {
        child_args.extend(["--lost-after-secs".into(), l.to_string()]);
    }
    if let Some(r) = opts.repair_threshold {
        child_args.extend(["--repair-threshold".into(), r.to_string()]);
    }
    if let Some(a) = opts.audit_percent {
        child_args.extend(["--audit-percent".into(), a.to_string()]);
    }
    if let Some(l) = opts.repair_every_secs {
        child_args.extend(["--repair-every-secs".into(), l.to_string()]);
    }
    if let Some(l) = opts.publish_every_secs {
        child_args.extend(["--publish-every-secs".into(), l.to_string()]);
    }
    if let Some(l) = opts.read_wait_secs {
        child_args.extend(["--read-wait-secs".into(), l.to_string()]);
    }
    if let Some(l) = opts.release_sync_secs {
        child_args.extend(["--release-sync-secs".into(), l.to_string()]);
    }
    spawn_daemon(&data_dir, mountpoint, &password, &child_args)?;
    println!("mounted vault '{}' at {}", cfg.vault, mountpoint.display());
    Ok(())
}

/// Refuses a repair threshold outside k..=n.
fn check_threshold(r: Option<u32>, k: u32, n: u32) -> anyhow::Result<()> {
    if let Some(r) = r {
        let mut p = crate::maint::Policy::new(k, n);
        p.r = r;
        p.validate()
            .map_err(|e| anyhow!("bad --repair-threshold: {e}"))?;
    }
    Ok(())
}

/// What a mount needs besides the vault.
pub struct MountSetup {
    pub node: NodeConfig,
    /// Disk cache limit for synced objects.
    pub cache: u64,
    /// Free allowance before donating.
    pub starter: u64,
    /// Lease time asked of peers.
    pub lease_secs: u32,
    /// Seconds before an away holder stops counting (fixed window).
    pub lost_after: Option<u64>,
    /// Repair threshold r.
    pub repair_threshold: Option<u32>,
    /// Audit budget, percent per day.
    pub audit_percent: Option<f64>,
    /// Seconds between repair passes.
    pub repair_every: Option<u64>,
    /// Seconds between background metadata publishes.
    pub publish_every: Option<u64>,
    /// Seconds a read waits for holders to be found.
    pub read_wait: Option<u64>,
    /// Seconds released object files wait for a database sync.
    pub release_sync: Option<u64>,
}

fn mount_foreground(
    data_dir: &Path,
    mountpoint: &Path,
    password: &str,
    setup: MountSetup,
    ready: impl FnOnce(Result<(), String>),
) -> anyhow::Result<()> {
    // Again (cheap): a previous daemon may have begun stopping since.
    if let Err(e) = daemon::wait_previous_daemon(data_dir, |m| tracing::info!("{m}")) {
        ready(Err(format!("{e:#}")));
        return Err(e);
    }
    let opened = unlock(data_dir, password).and_then(|(cfg, keys)| {
        // The barter rule: storing N at overhead n/k takes N * n/k donated.
        let earned = (setup.node.donate as u128 * cfg.k as u128 / cfg.n.max(1) as u128) as u64;
        let mut opts = VaultOptions {
            disk_cache: setup.cache,
            allowance: setup.starter.saturating_add(earned),
            ..VaultOptions::default()
        };
        if let Some(s) = setup.release_sync {
            opts.release_sync = Duration::from_secs(s);
        }
        let vault = Vault::open(data_dir, &cfg.vault, keys, opts)?;
        Ok((cfg, vault))
    });
    let (cfg, vault) = match opened {
        Ok(v) => v,
        Err(e) => {
            ready(Err(format!("{e:#}")));
            return Err(e);
        }
    };
    let mut remote = crate::remote::RemoteConfig::new(cfg.k, cfg.n);
    remote.kdf = cfg.kdf;
    remote.lease_secs = setup.lease_secs;
    if let Some(s) = setup.lost_after {
        remote.window = crate::maint::GoneWindow::fixed(s);
    }
    remote.repair_threshold = setup.repair_threshold;
    if let Some(a) = setup.audit_percent {
        remote.audit_fraction = (a / 100.0).max(0.0);
    }
    if let Some(s) = setup.publish_every {
        remote.publish_every = Duration::from_secs(s.max(1));
    }
    if let Some(s) = setup.repair_every {
        remote.repair_every = Duration::from_secs(s.max(1));
    }
    if let Some(s) = setup.read_wait {
        remote.read_wait = Duration::from_secs(s);
    }
    let net = daemon::NetSetup {
        node: setup.node,
        remote,
    };
    daemon::run_mount(vault, data_dir, mountpoint, net, ready)
}

fn node(data_dir: PathBuf, donate: &str, net: &NetArgs) -> anyhow::Result<()> {
    let donate = parse_donation(donate, &data_dir).context("--donate")?;
    let cfg = net.node_config(data_dir.join("node"), donate)?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    daemon::run_node(&data_dir, cfg, |node| {
        println!("drizzle node {}", node.peer_id());
        println!("donating {}", human_bytes(donate));
        for a in node.listen_addrs() {
            println!("listening on {a}");
        }
        let _ = std::io::stdout().flush();
    })
}

fn sync(common: &Common, local: bool) -> anyhow::Result<()> {
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

/// Starts `drizzle mount --foreground` as a detached child and waits until it
/// reports the mount live (or fails).
fn spawn_daemon(
    data_dir: &Path,
    mountpoint: &Path,
    password: &str,
    extra: &[String],
) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let log_path = data_dir.join("drizzle.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening the log {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating the drizzle binary")?;
    let mut child = Command::new(exe)
        .arg("mount")
        .arg(mountpoint)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--foreground")
        .arg("--daemon-child")
        .args(extra)
        .env_remove("DRIZZLE_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .process_group(0)
        .spawn()
        .context("starting the mount daemon")?;
    {
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(password.as_bytes())?;
    }
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let line = line.trim_end();
    if line == "READY" {
        return Ok(());
    }
    if let Some(msg) = line.strip_prefix("ERROR ") {
        let _ = child.wait();
        bail!("{msg}");
    }
    let _ = child.wait();
    bail!(
        "the mount daemon exited unexpectedly; see {}",
        log_path.display()
    )
}

fn status(common: &Common, json: bool) -> anyhow::Result<()> {
    let resp = daemon::request(&common.data_dir(), &Request::Status)?;
    let s = resp
        .status
        .ok_or_else(|| anyhow!("the daemon sent no status"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let n = &s.node;
    match (&s.vault, &s.mountpoint) {
        (Some(v), Some(m)) => {
            println!("vault       {v}");
            println!("mounted at  {} (pid {})", m.display(), s.pid);
        }
        _ => println!("contribution node (pid {})", s.pid),
    }
    println!("data dir    {}", s.data_dir.display());
    println!("peer id     {}", n.peer_id);
    for a in &n.listen {
        println!("listening   {a}");
    }
    println!(
        "peers       {} connected, {} storing fragments, {} known but not connected{}",
        n.peers,
        n.storage_peers,
        n.known_not_connected,
        if n.bad_peers > 0 {
            format!(
                ", {} returned bad data or failed (see the log)",
                n.bad_peers
            )
        } else {
            String::new()
        }
    );
    println!(
        "donated     {} {} of {} used by others ({} fragments, {} vault root records)",
        bar(n.stored_for_others_bytes, n.donated_bytes),
        human_bytes(n.stored_for_others_bytes),
        human_bytes(n.donated_bytes),
        n.fragments_held,
        n.root_records
    );
    if let Some(st) = &s.stats {
        println!("contents    {} files, {} directories", st.files, st.dirs);
        println!(
            "data        {} in files, {} stored in {} objects",
            human_bytes(st.logical_bytes),
            human_bytes(st.stored_bytes),
            st.objects
        );
        println!(
            "space       {} {} of {} allowed (donate more to store more)",
            bar(st.used_bytes, st.allowed_bytes),
            human_bytes(st.used_bytes),
            human_bytes(st.allowed_bytes)
        );
        println!(
            "cache       {} in memory, {} pending seal",
            human_bytes(st.cache_bytes),
            human_bytes(st.pending_bytes)
        );
    }
    if let Some(sy) = &s.sync {
        let h = &sy.health;
        let total = h.healthy + h.degraded + h.lost;
        println!(
            "redundancy  {} {} of {} objects healthy ({} of {} fragments needed), {} degraded, {} lost",
            bar(h.healthy, total),
            h.healthy,
            total,
            sy.k,
            sy.n,
            h.degraded,
            h.lost
        );
        if sy.activity.repaired_objects > 0 {
            println!(
                "            {} objects repaired since the mount (lost or failed holders)",
                sy.activity.repaired_objects
            );
        }
        if h.crowded > 0 {
            println!(
                "            {} objects crowded (several fragments on one peer): they spread \
                 as more storage peers appear ({} needed)",
                h.crowded, sy.n
            );
        }
        if sy.activity.spread_objects > 0 {
            println!(
                "            {} crowded objects spread onto more peers since the mount",
                sy.activity.spread_objects
            );
        }
        if let Some(d) = sy.durability.filter(|d| d.objects > 0) {
            println!(
                "durability  reads find {} fragments {:.2}% of the time (holders up {:.0}% on \
                 average); estimated yearly loss {:.1e} per object",
                sy.k,
                d.read_availability * 100.0,
                d.holder_availability * 100.0,
                d.yearly_loss
            );
            if d.at_or_below_threshold > 0 {
                println!(
                    "WARNING     {} objects are down to {} or fewer counting holders: they are \
                     rebuilt below {}; keep the vault mounted until status shows none",
                    d.at_or_below_threshold, d.repair_threshold, d.repair_threshold
                );
            }
        }
        let a = &sy.activity;
        let moving = if a.upload_rate > 0.0 && sy.pending_upload_bytes > 0 {
            format!(
                ", {} in flight at {}/s, ETA {:.0} s",
                a.uploads_in_flight,
                human_bytes(a.upload_rate as u64),
                sy.pending_upload_bytes as f64 / a.upload_rate
            )
        } else {
            String::new()
        };
        println!(
            "uploads     {} in {} objects waiting{moving}",
            human_bytes(sy.pending_upload_bytes),
            sy.pending_upload_objects,
        );
        println!(
            "disk cache  {} of synced data kept locally",
            human_bytes(sy.disk_cache_bytes)
        );
        if let Some(e) = &sy.last_upload_error {
            println!("            last upload error: {e}");
        }
    }
    if let Some(m) = &s.metadata {
        if m.root_seq == 0 {
            println!("metadata    not on the network yet (drizzle sync publishes it)");
        } else {
            println!(
                "metadata    version {} on the network, published {}; {} changes not yet published",
                m.root_seq,
                crate::metasync::describe_time(m.root_time),
                m.unpublished_changes
            );
        }
        if let Some(c) = &m.conflict {
            println!("            {c}");
        }
        if let Some(e) = &m.publish_error {
            println!("            last publish error: {e}");
        }
    }
    Ok(())
}

/// A ten-cell bar of `part` out of `whole`.
fn bar(part: u64, whole: u64) -> String {
    let cells = if whole == 0 {
        0
    } else {
        ((part as f64 / whole as f64) * 10.0).round().min(10.0) as usize
    };
    format!("[{}{}]", "#".repeat(cells), ".".repeat(10 - cells))
}

fn umount(mountpoint: &Path) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn weak_passwords_are_refused() {
        assert!(check_strength("password", "v", false).is_err());
        assert!(check_strength("password", "v", true).is_ok());
        assert!(check_strength("correct horse battery staple 9431!", "v", false).is_ok());
    }
}
