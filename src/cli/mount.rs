//! `drizzle mount`: options checked before the password, recovery or
//! update from the network, then the daemon in the foreground or as a
//! background child (password on a pipe, `READY`/`ERROR` on stdout).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use zeroize::Zeroizing;

use crate::config::{validate_name, VaultConfig};
use crate::crypto::KdfParams;
use crate::daemon;
use crate::net::NodeConfig;
use crate::units::parse_size;
use crate::vault::{Vault, VaultOptions};

use super::args::{free_disk, parse_donation, Common, MountNetArgs};
use super::password::{read_password, unlock};

pub(super) fn mount(
    common: &Common,
    mountpoint: &Path,
    want: Option<&str>,
    foreground: bool,
    child: bool,
    opts: &MountNetArgs,
    kdf: KdfParams,
) -> anyhow::Result<()> {
    let data_dir = common.data_dir();
    if child {
        return run_child(&data_dir, mountpoint);
    }
    // Check the options before asking for a password.
    let setup = setup_from_args(opts, &data_dir)?;
    // A remount right after an unmount: the previous daemon may still be
    // finishing (final sync, publish) and holding the database.
    daemon::wait_previous_daemon(&data_dir, |m| eprintln!("{m}"))?;
    let recovering = check_data_dir(&data_dir, mountpoint, want, opts)?;
    let password = read_password(common, false)?;
    if let (true, Some(name)) = (recovering, want) {
        let mut progress = super::render::Progress::new();
        crate::recover::recover(
            &data_dir,
            name,
            &password,
            kdf,
            setup.node.clone(),
            &mut |e| progress.show(e),
        )?;
    }
    let (cfg, keys) = unlock(&data_dir, &password)?;
    check_threshold(opts.repair_threshold, cfg.k, cfg.n)?;
    if !recovering && !opts.net.peer.is_empty() {
        // Another device may have published a newer version meanwhile.
        let mut progress = super::render::Progress::new();
        crate::recover::update_from_network(
            &data_dir,
            &cfg,
            &keys,
            setup.node.clone(),
            &mut |e| progress.show(e),
        )?;
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
    start_background(&data_dir, mountpoint, opts, &setup, &password)?;
    println!("mounted vault '{}' at {}", cfg.vault, mountpoint.display());
    Ok(())
}

/// Checks the data dir before asking for a password: an existing vault's
/// repair threshold, or for an empty one (to recover) the vault name and
/// the mount point. True when the vault is to be recovered.
fn check_data_dir(
    data_dir: &Path,
    mountpoint: &Path,
    want: Option<&str>,
    opts: &MountNetArgs,
) -> anyhow::Result<bool> {
    if VaultConfig::path(data_dir).exists() {
        let c = VaultConfig::load(data_dir)?;
        check_threshold(opts.repair_threshold, c.k, c.n)?;
        return Ok(false);
    }
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
    Ok(true)
}

/// Starts the daemon as a background child. The child gets the options as
/// resolved here (sizes in bytes, so it does not measure the disk again)
/// in one value with the password.
fn start_background(
    data_dir: &Path,
    mountpoint: &Path,
    opts: &MountNetArgs,
    setup: &MountSetup,
    password: &str,
) -> anyhow::Result<()> {
    let settings = ChildSettings {
        opts: MountNetArgs {
            donate: Some(setup.node.donate.to_string()),
            starter_allowance: Some(setup.starter.to_string()),
            ..opts.clone()
        },
        password: password.to_string(),
    };
    spawn_daemon(data_dir, mountpoint, &settings)
}

/// The mount's settings from its flags (sizes parsed, defaults filled in:
/// donate 10% of free disk up to 50G, keep the whole cache, 1G starter).
fn setup_from_args(opts: &MountNetArgs, data_dir: &Path) -> anyhow::Result<MountSetup> {
    let donate = match &opts.donate {
        Some(d) => parse_donation(d, data_dir).context("--donate")?,
        None => crate::quota::default_donation(free_disk(data_dir)?),
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
        .unwrap_or(crate::quota::DEFAULT_STARTER);
    let node_cfg = opts.net.node_config(data_dir.join("node"), donate)?;
    Ok(MountSetup {
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
        allow_other: opts.allow_other,
        domains: match &opts.failure_domain {
            Some(s) => s
                .parse()
                .map_err(|e: String| anyhow!("bad --failure-domain: {e}"))?,
            None => Default::default(),
        },
    })
}

/// What a background mount's child gets on stdin, as one JSON value: its
/// options (parsed like the parent's flags) and the password.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChildSettings {
    opts: MountNetArgs,
    password: String,
}

/// A background mount's child: settings on stdin, `READY` or `ERROR ...`
/// on stdout once the mount is live or has failed.
fn run_child(data_dir: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    let mut input = Zeroizing::new(String::new());
    std::io::stdin().read_to_string(&mut input)?;
    let mut settings: ChildSettings =
        serde_json::from_str(&input).context("reading the mount settings from the parent")?;
    let pw = Zeroizing::new(std::mem::take(&mut settings.password));
    let setup = setup_from_args(&settings.opts, data_dir)?;
    let r = mount_foreground(data_dir, mountpoint, &pw, setup, |r| {
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
    r
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
    /// Other local users may use the mount.
    pub allow_other: bool,
    /// Failure domains for placement.
    pub domains: crate::placement::DomainRule,
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
        let mut opts = VaultOptions {
            disk_cache: setup.cache,
            allowance: crate::quota::allowance(setup.starter, setup.node.donate, cfg.k, cfg.n),
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
    remote.domains = setup.domains;
    let net = daemon::NetSetup {
        node: setup.node,
        remote,
        allow_other: setup.allow_other,
    };
    daemon::run_mount(vault, data_dir, mountpoint, net, ready)
}

/// Starts `drizzle mount --foreground` as a detached child and waits until it
/// reports the mount live (or fails).
fn spawn_daemon(
    data_dir: &Path,
    mountpoint: &Path,
    settings: &ChildSettings,
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
        .env_remove("DRIZZLE_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .process_group(0)
        .spawn()
        .context("starting the mount daemon")?;
    {
        let mut stdin = child.stdin.take().expect("piped");
        let json = Zeroizing::new(serde_json::to_string(settings)?);
        stdin.write_all(json.as_bytes())?;
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
