//! The mount daemon: runtime, FUSE session, control socket, signals and a
//! clean shutdown. Also the client side of the control socket.
//!
//! Architecture invariant: wiring only. The CLI reaches a running daemon
//! through `DATA_DIR/daemon.sock` and never opens its database.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::mount::DrizzleFs;
use crate::vault::{Vault, VaultStats};

pub const SOCKET_FILE: &str = "daemon.sock";

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// A request on the control socket (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Sync,
    Umount,
}

/// The daemon's answer (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    fn done(r: Result<(), impl std::fmt::Display>, what: &str) -> Self {
        match r {
            Ok(()) => Response {
                ok: true,
                error: None,
                status: None,
            },
            Err(e) => Response::failed(format!("{what}: {e}")),
        }
    }

    fn failed(error: String) -> Self {
        Response {
            ok: false,
            error: Some(error),
            status: None,
        }
    }
}

/// What `drizzle status` reports (`--json` prints it as is).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub vault: String,
    pub mountpoint: PathBuf,
    pub data_dir: PathBuf,
    pub pid: u32,
    #[serde(flatten)]
    pub stats: VaultStats,
}

/// Sends one request to the daemon of `data_dir`.
pub fn request(data_dir: &Path, req: &Request) -> anyhow::Result<Response> {
    let path = socket_path(data_dir);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "no drizzle daemon is running for {} (is the vault mounted?)",
            data_dir.display()
        )
    })?;
    let timeout = match req {
        Request::Status => Some(Duration::from_secs(30)),
        _ => None,
    };
    stream.set_read_timeout(timeout)?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .context("reading the daemon's answer")?;
    if answer.is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    let resp: Response =
        serde_json::from_str(&answer).context("the daemon's answer is malformed")?;
    if !resp.ok {
        bail!(
            "{}",
            resp.error
                .unwrap_or_else(|| "the daemon reported an error".into())
        );
    }
    Ok(resp)
}

/// Why the daemon stops.
enum Stop {
    Signal(&'static str),
    Request(oneshot::Sender<Response>),
    Unmounted,
}

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

/// Runs a mounted vault until a signal, `drizzle umount`, or an external
/// unmount; then seals and syncs everything and unmounts. `ready` is called
/// once the mount is live (or failed).
pub fn run_mount(
    vault: Arc<Vault>,
    data_dir: &Path,
    mountpoint: &Path,
    ready: impl FnOnce(Result<(), String>),
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_name("drizzle-rt")
        .enable_all()
        .build()?;
    let result = rt.block_on(serve(vault.clone(), data_dir, mountpoint, ready));
    let shut = vault.shutdown();
    let _ = std::fs::remove_file(socket_path(data_dir));
    result?;
    shut.map_err(|e| anyhow!("final sync failed: {e}"))
}

async fn serve(
    vault: Arc<Vault>,
    data_dir: &Path,
    mountpoint: &Path,
    ready: impl FnOnce(Result<(), String>),
) -> anyhow::Result<()> {
    let setup = async {
        let mountpoint = prepare_mountpoint(mountpoint)?;
        let sock = socket_path(data_dir);
        if UnixStream::connect(&sock).is_ok() {
            bail!(
                "a drizzle daemon is already running for {}",
                data_dir.display()
            );
        }
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock)
            .with_context(|| format!("binding {}", sock.display()))?;
        let fs = DrizzleFs::new(vault.clone(), tokio::runtime::Handle::current(), data_dir);
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName(data_dir.to_string_lossy().into_owned()),
            fuser::MountOption::Subtype("drizzle".into()),
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::NoAtime,
        ];
        config.acl = fuser::SessionACL::All;
        config.n_threads = Some(2);
        config.clone_fd = true;
        let mut session = fuser::Session::new(fs, &mountpoint, &config)
            .with_context(|| format!("mounting at {}", mountpoint.display()))?;
        let unmounter = session.unmount_callable();
        Ok((mountpoint, listener, session, unmounter))
    };
    let (mountpoint, listener, session, mut unmounter) = match setup.await {
        Ok(v) => v,
        Err(e) => {
            ready(Err(format!("{e:#}")));
            return Err(e);
        }
    };
    let (ended_tx, mut ended_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("drizzle-fuse".into())
        .spawn(move || {
            let r = session.run();
            let _ = ended_tx.send(r);
        })?;
    tracing::info!(vault = vault.name(), "mounted at {}", mountpoint.display());
    ready(Ok(()));

    let (stop_tx, mut stop_rx) = mpsc::channel::<Stop>(4);
    let status_base = (
        vault.name().to_string(),
        mountpoint.clone(),
        data_dir.to_path_buf(),
    );
    let control = tokio::spawn(control_loop(listener, vault.clone(), stop_tx, status_base));

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // A background daemon outlives the terminal that started it: a hangup
    // must not kill it (holding a handler keeps the default action away).
    let _sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let stop = tokio::select! {
        _ = sigint.recv() => Stop::Signal("SIGINT"),
        _ = sigterm.recv() => Stop::Signal("SIGTERM"),
        Some(s) = stop_rx.recv() => s,
        _ = &mut ended_rx => Stop::Unmounted,
    };
    let reason = match &stop {
        Stop::Signal(s) => format!("{s} received"),
        Stop::Request(_) => "drizzle umount".into(),
        Stop::Unmounted => "unmounted from outside".into(),
    };
    tracing::info!("stopping: {reason}");
    control.abort();
    let v = vault.clone();
    let synced = tokio::task::spawn_blocking(move || v.sync_all()).await?;
    if let Err(e) = &synced {
        tracing::error!("sync before unmount failed: {e}");
    }
    if !matches!(stop, Stop::Unmounted) {
        if let Err(e) = unmounter.unmount() {
            tracing::warn!("unmount failed ({e}); detaching lazily");
            nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("unmounting {}", mountpoint.display()))?;
        }
        if tokio::time::timeout(Duration::from_secs(20), &mut ended_rx)
            .await
            .is_err()
        {
            tracing::warn!("the FUSE session did not end within 20 s after unmount");
        }
    }
    let v = vault.clone();
    let synced = match synced {
        Ok(()) => tokio::task::spawn_blocking(move || v.sync_all()).await?,
        Err(e) => Err(e),
    };
    tracing::info!("unmounted {}", mountpoint.display());
    if let Stop::Request(reply) = stop {
        let resp = Response::done(
            synced.as_ref().map(|_| ()),
            "unmounted, but the final sync failed",
        );
        let _ = reply.send(resp);
        // Give the reply a moment to reach the client.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    synced.map_err(|e| anyhow!("final sync failed: {e}"))
}

async fn control_loop(
    listener: tokio::net::UnixListener,
    vault: Arc<Vault>,
    stop: mpsc::Sender<Stop>,
    base: (String, PathBuf, PathBuf),
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (vault, stop, base) = (vault.clone(), stop.clone(), base.clone());
        tokio::spawn(async move {
            if let Err(e) = handle_client(stream, vault, stop, base).await {
                tracing::warn!("control client: {e:#}");
            }
        });
    }
}

async fn handle_client(
    stream: tokio::net::UnixStream,
    vault: Arc<Vault>,
    stop: mpsc::Sender<Stop>,
    (name, mountpoint, data_dir): (String, PathBuf, PathBuf),
) -> anyhow::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = tokio::io::BufReader::new(rd.take(64 * 1024));
    rd.read_line(&mut line).await?;
    let resp = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::failed(format!("bad request: {e}")),
        Ok(Request::Status) => {
            let v = vault.clone();
            match tokio::task::spawn_blocking(move || v.stats()).await? {
                Ok(stats) => Response {
                    ok: true,
                    error: None,
                    status: Some(Status {
                        vault: name,
                        mountpoint,
                        data_dir,
                        pid: std::process::id(),
                        stats,
                    }),
                },
                Err(e) => Response::failed(e.to_string()),
            }
        }
        Ok(Request::Sync) => {
            let v = vault.clone();
            Response::done(
                tokio::task::spawn_blocking(move || v.sync_all()).await?,
                "sync failed",
            )
        }
        Ok(Request::Umount) => {
            let (tx, rx) = oneshot::channel();
            stop.send(Stop::Request(tx))
                .await
                .map_err(|_| anyhow!("daemon is stopping"))?;
            rx.await.unwrap_or(Response::done(Ok::<(), String>(()), ""))
        }
    };
    let mut out = serde_json::to_string(&resp)?;
    out.push('\n');
    wr.write_all(out.as_bytes()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_fields_unescape() {
        assert_eq!(unescape_mount_field("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_field("plain"), "plain");
    }

    #[test]
    fn request_wire_format_is_stable() {
        assert_eq!(
            serde_json::to_string(&Request::Sync).unwrap(),
            r#"{"cmd":"sync"}"#
        );
        assert!(matches!(
            serde_json::from_str(r#"{"cmd":"umount"}"#).unwrap(),
            Request::Umount
        ));
    }
}
