//! The command line's shape: the clap commands and flags, and parsing of
//! the values they take (data dir, donation, Argon2 parameters).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand};

use crate::crypto::KdfParams;
use crate::net::{Multiaddr, NodeConfig};
use crate::units::parse_size;

use super::simulate;

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
#[derive(Args, Clone, Default, Debug, serde::Serialize, serde::Deserialize)]
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
    /// Inbound connections accepted from one IP address (default 16;
    /// raise it for many nodes on one host, as in a test cluster).
    #[arg(long, value_name = "N", hide_short_help = true)]
    pub conns_per_address: Option<usize>,
    /// For tests of hostile peers only: misbehave on purpose (corrupt,
    /// truncate, stall, drop, fake-audit, refuse).
    #[arg(long, value_name = "MODE", hide = true)]
    #[serde(default)]
    pub misbehave: Option<String>,
}

impl NetArgs {
    pub(super) fn node_config(&self, dir: PathBuf, donate: u64) -> anyhow::Result<NodeConfig> {
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
        if let Some(n) = self.conns_per_address {
            cfg.conn_limits.per_ip = n;
        }
        if let Some(m) = &self.misbehave {
            cfg.fault = Some(
                m.parse()
                    .map_err(|e: String| anyhow!("bad --misbehave: {e}"))?,
            );
            eprintln!("warning: this node misbehaves on purpose ({m}); for tests only");
        }
        Ok(cfg)
    }
}

/// Options of `mount` beyond where and which vault.
#[derive(Args, Clone, Default, Debug, serde::Serialize, serde::Deserialize)]
pub struct MountNetArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Space to store for others: bytes with K/M/G/T, or N% of free disk
    /// (default: 10% of free disk, at most 50G; 0 stores nothing).
    #[arg(long, value_name = "SIZE")]
    pub donate: Option<String>,
    /// How peers are grouped into failure domains, each of which holds at
    /// most n - k fragments of an object while others have room: subnet
    /// (IPv4 /24, IPv6 /48; the default), address, or peer (no grouping).
    #[arg(long, value_name = "RULE", hide_short_help = true)]
    #[serde(default)]
    pub failure_domain: Option<String>,
    /// Let other local users use the mount (like FUSE's allow_other; the
    /// files' owners and modes still decide what each may do). By default
    /// only the user who mounts it can.
    #[arg(long)]
    #[serde(default)]
    pub allow_other: bool,
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
    /// history, from an hour to a day).
    #[arg(long, value_name = "SECS", hide_short_help = true)]
    pub lost_after_secs: Option<u64>,
    /// Rebuild an object once fewer than this many of its fragments are on
    /// holders that count (between k and n; default two thirds of the way
    /// from k, 14 for 10 of 16).
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
    pub(super) fn data_dir(&self) -> PathBuf {
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

/// Argon2 parameters from `--kdf-memory` and `--kdf-passes` (defaults:
/// 256M, 3 passes).
pub(super) fn kdf_from_args(
    memory: Option<&str>,
    passes: Option<u32>,
) -> anyhow::Result<KdfParams> {
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
