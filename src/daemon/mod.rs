//! The mount daemon: runtime, FUSE session, control socket, signals and a
//! clean shutdown. Also the client side of the control socket.
//!
//! Architecture invariant: wiring only. The CLI reaches a running daemon
//! through `DATA_DIR/daemon.sock` and never opens its database.
//!
//! This file runs a mount or a node from start to shutdown; `protocol` is
//! the control socket's messages and client, `control` the daemon's side
//! of the socket, `mountpoint` the mount-point checks.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::sync::{mpsc, oneshot};

use crate::mount::DrizzleFs;
use crate::net::{NodeConfig, NodeHandle};
use crate::remote::Remote;
use crate::vault::Vault;

mod control;
pub mod harden;
mod mountpoint;
mod protocol;

pub use control::node_status;
use control::{bind_control, control_loop};
pub use mountpoint::{mount_entry, prepare_mountpoint};
pub use protocol::{
    request, request_with_progress, socket_path, NodeStatus, ProgressLine, Request, Response,
    Status, SyncStatus, SOCKET_FILE,
};

/// Why the daemon stops.
enum Stop {
    Signal(&'static str),
    Request(oneshot::Sender<Response>),
    Unmounted,
}

/// What the control socket serves.
#[derive(Clone)]
struct Ctx {
    data_dir: PathBuf,
    node: NodeHandle,
    mount: Option<MountCtx>,
    stop: mpsc::Sender<Stop>,
}

#[derive(Clone)]
struct MountCtx {
    vault: Arc<Vault>,
    remote: Arc<Remote>,
    mountpoint: PathBuf,
}

impl Stop {
    /// Why, for the log.
    fn reason(&self) -> String {
        match self {
            Stop::Signal(s) => format!("{s} received"),
            Stop::Request(_) => "drizzle umount".into(),
            Stop::Unmounted => "unmounted from outside".into(),
        }
    }
}

/// Logs what is left to upload at the next mount, if anything.
fn log_backlog(vault: &Vault) {
    let backlog = vault.upload_backlog();
    if backlog.objects > 0 {
        tracing::info!(
            "{} objects ({} bytes) are not on peers yet; the upload resumes at the next mount",
            backlog.objects,
            backlog.bytes
        );
    }
}

/// The network part of a mount: the node to run and the vault's coding.
pub struct NetSetup {
    pub node: NodeConfig,
    pub remote: crate::remote::RemoteConfig,
    /// Other local users may use the mount (FUSE's `allow_other`, with the
    /// kernel checking modes); by default only the user who mounted it.
    pub allow_other: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_name("drizzle-rt")
        .enable_all()
        .build()?)
}

/// Runs a mounted vault until a signal, `drizzle umount`, or an external
/// unmount; then seals and syncs everything and unmounts. `ready` is called
/// once the mount is live (or failed).
pub fn run_mount(
    vault: Arc<Vault>,
    data_dir: &Path,
    mountpoint: &Path,
    net: NetSetup,
    ready: impl FnOnce(Result<(), String>),
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let result = rt.block_on(serve(vault.clone(), data_dir, mountpoint, net, ready));
    let shut = vault.shutdown();
    let _ = std::fs::remove_file(socket_path(data_dir));
    result?;
    shut.map_err(|e| anyhow!("final sync failed: {e}"))
}

/// The process holding the vault database of `data_dir` (its RocksDB lock),
/// if any. Only asks the kernel about the lock; never opens the database.
pub fn store_holder(data_dir: &Path) -> Option<i32> {
    let f = std::fs::File::open(data_dir.join("db").join("LOCK")).ok()?;
    let mut fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETLK(&mut fl)).ok()?;
    (fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid)
}

/// How long a mount waits for the previous daemon of its data dir to finish
/// (a remount right after an unmount), and `umount` for its daemon to exit.
pub const PREVIOUS_DAEMON_WAIT: Duration = Duration::from_secs(60);

/// Waits while a daemon that no longer serves `data_dir` (it is shutting
/// down: its control socket is closed) still holds the vault database.
/// Returns at once if none does, or if a live daemon serves it (the mount
/// then reports that one). `say` gets one line if there is anything to wait for.
pub fn wait_previous_daemon(data_dir: &Path, say: impl FnOnce(&str)) -> anyhow::Result<()> {
    let Some(pid) = store_holder(data_dir) else {
        return Ok(());
    };
    if UnixStream::connect(socket_path(data_dir)).is_ok() {
        // It still answers: it serves a mount, unless that mount is gone
        // and it has not noticed yet (an unmount from outside a moment ago).
        let serving = match request(data_dir, &Request::Status) {
            Ok(Response {
                status: Some(st), ..
            }) => st
                .mountpoint
                .as_deref()
                .is_none_or(|m| mount_entry(m).ok().flatten().is_some()),
            _ => false,
        };
        if serving {
            return Ok(());
        }
    }
    say(&format!(
        "waiting for the previous drizzle daemon of {} (pid {pid}) to finish...",
        data_dir.display()
    ));
    wait_store_released(data_dir, PREVIOUS_DAEMON_WAIT)
}

/// Waits until no process holds the vault database of `data_dir`.
pub fn wait_store_released(data_dir: &Path, limit: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while let Some(pid) = store_holder(data_dir) {
        if start.elapsed() > limit {
            bail!(
                "the vault database in {} is still in use by process {pid} after {} s",
                data_dir.display(),
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits for SIGINT, SIGTERM or a stop request.
async fn wait_for_stop(
    stop_rx: &mut mpsc::Receiver<Stop>,
    ended: Option<&mut oneshot::Receiver<std::io::Result<()>>>,
) -> anyhow::Result<Stop> {
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // A background daemon outlives the terminal that started it: a hangup
    // must not kill it (holding a handler keeps the default action away).
    let _sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let unmounted = async {
        match ended {
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    Ok(tokio::select! {
        _ = sigint.recv() => Stop::Signal("SIGINT"),
        _ = sigterm.recv() => Stop::Signal("SIGTERM"),
        Some(s) = stop_rx.recv() => s,
        _ = unmounted => Stop::Unmounted,
    })
}

async fn serve(
    vault: Arc<Vault>,
    data_dir: &Path,
    mountpoint: &Path,
    net: NetSetup,
    ready: impl FnOnce(Result<(), String>),
) -> anyhow::Result<()> {
    let Live {
        mountpoint,
        listener,
        node,
        session,
        mut unmounter,
    } = match start_mount(&vault, data_dir, mountpoint, net.node, net.allow_other).await {
        Ok(v) => v,
        Err(e) => {
            ready(Err(format!("{e:#}")));
            return Err(e);
        }
    };
    let remote = Remote::start_with(vault.clone(), node.clone(), net.remote);
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
    let ctx = Ctx {
        data_dir: data_dir.to_path_buf(),
        node: node.clone(),
        mount: Some(MountCtx {
            vault: vault.clone(),
            remote: remote.clone(),
            mountpoint: mountpoint.clone(),
        }),
        stop: stop_tx,
    };
    let control = tokio::spawn(control_loop(listener, ctx));
    let stop = wait_for_stop(&mut stop_rx, Some(&mut ended_rx)).await?;
    tracing::info!("stopping: {}", stop.reason());
    control.abort();
    let v = vault.clone();
    let synced = tokio::task::spawn_blocking(move || v.sync_all()).await?;
    if let Err(e) = &synced {
        tracing::error!("sync before unmount failed: {e}");
    }
    unmount(&stop, &mut unmounter, &mountpoint, &mut ended_rx).await?;
    let v = vault.clone();
    let synced = match synced {
        Ok(()) => tokio::task::spawn_blocking(move || v.sync_all()).await?,
        Err(e) => Err(e),
    };
    publish_before_stop(&remote).await;
    node.stop();
    log_backlog(&vault);
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

/// A mount that is live: the FUSE session (not running yet), the node and
/// the control socket.
struct Live {
    mountpoint: PathBuf,
    listener: tokio::net::UnixListener,
    node: NodeHandle,
    session: fuser::Session<DrizzleFs>,
    unmounter: fuser::SessionUnmounter,
}

/// Everything before a mount is live: the mount point checked, the control
/// socket bound, the node (and metrics) started, the FUSE session created;
/// the node is stopped again if a later step fails.
async fn start_mount(
    vault: &Arc<Vault>,
    data_dir: &Path,
    mountpoint: &Path,
    node_cfg: NodeConfig,
    allow_other: bool,
) -> anyhow::Result<Live> {
    let mountpoint = prepare_mountpoint(mountpoint)?;
    let listener = bind_control(data_dir)?;
    let metrics = node_cfg.metrics.clone();
    let node = NodeHandle::start(node_cfg)
        .await
        .context("starting the network node")?;
    if let Some(addr) = &metrics {
        if let Err(e) = crate::metrics::serve(addr, node.clone()).await {
            node.stop();
            return Err(e);
        }
    }
    let fs = DrizzleFs::new(vault.clone(), tokio::runtime::Handle::current(), data_dir);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(data_dir.to_string_lossy().into_owned()),
        fuser::MountOption::Subtype("drizzle".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    config.acl = if allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    config.n_threads = Some(2);
    config.clone_fd = true;
    let mut session = match fuser::Session::new(fs, &mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            node.stop();
            return Err(
                anyhow::Error::new(e).context(format!("mounting at {}", mountpoint.display()))
            );
        }
    };
    let unmounter = session.unmount_callable();
    Ok(Live {
        mountpoint,
        listener,
        node,
        session,
        unmounter,
    })
}

/// Unmounts for `stop` (unless it was unmounted from outside: nothing to
/// do), lazily if the unmount fails, and waits up to 20 s for the FUSE
/// session to end.
async fn unmount(
    stop: &Stop,
    unmounter: &mut fuser::SessionUnmounter,
    mountpoint: &Path,
    ended_rx: &mut oneshot::Receiver<std::io::Result<()>>,
) -> anyhow::Result<()> {
    if matches!(stop, Stop::Unmounted) {
        return Ok(());
    }
    if let Err(e) = unmounter.unmount() {
        tracing::warn!("unmount failed ({e}); detaching lazily");
        nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", mountpoint.display()))?;
    }
    if tokio::time::timeout(Duration::from_secs(20), ended_rx)
        .await
        .is_err()
    {
        tracing::warn!("the FUSE session did not end within 20 s after unmount");
    }
    Ok(())
}

/// Runs a contribution node (no vault, no mount) until SIGINT or SIGTERM.
/// `ready` gets the running node (to print its addresses).
pub fn run_node(
    data_dir: &Path,
    cfg: NodeConfig,
    ready: impl FnOnce(&NodeHandle),
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let r = rt.block_on(async {
        let listener = bind_control(data_dir)?;
        let metrics = cfg.metrics.clone();
        let node = NodeHandle::start(cfg).await?;
        if let Some(addr) = &metrics {
            crate::metrics::serve(addr, node.clone()).await?;
        }
        ready(&node);
        let (stop_tx, mut stop_rx) = mpsc::channel::<Stop>(4);
        let ctx = Ctx {
            data_dir: data_dir.to_path_buf(),
            node: node.clone(),
            mount: None,
            stop: stop_tx,
        };
        let control = tokio::spawn(control_loop(listener, ctx));
        let stop = wait_for_stop(&mut stop_rx, None).await?;
        if let Stop::Signal(s) = stop {
            tracing::info!("stopping: {s} received");
        }
        control.abort();
        node.stop();
        // Let in-flight PUTs finish their WAL sync.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    });
    let _ = std::fs::remove_file(socket_path(data_dir));
    r
}

/// At unmount: if everything is on peers but the newest metadata is not,
/// publish it (bounded: unmount must not hang on the network).
async fn publish_before_stop(remote: &Remote) {
    if remote.vault.upload_backlog().objects > 0
        || tokio::task::block_in_place(|| remote.metadata_status()).unpublished_changes == 0
    {
        return;
    }
    if crate::metasync::wait_for_peers(remote.node(), Duration::from_secs(5)).await == 0 {
        tracing::info!("no peers: the newest metadata is published at the next mount");
        return;
    }
    match tokio::time::timeout(Duration::from_secs(15), remote.publish()).await {
        Ok(Ok(p)) if !p.unchanged => tracing::info!("published the metadata before unmounting"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("publishing the metadata before unmounting failed: {e}"),
        Err(_) => tracing::warn!("publishing the metadata before unmounting timed out"),
    }
}

/// Publishes the metadata and waits until its objects are at full
/// redundancy; if spreading moved any (or repair changed placements
/// meanwhile), publishes once more so the root names where they are now.
async fn publish_spread(remote: &Remote) -> Result<(), String> {
    let failed = |e| format!("every object is on peers, but publishing the metadata failed: {e}");
    remote.publish().await.map_err(failed)?;
    remote.wait_metadata_spread().await?;
    if tokio::task::block_in_place(|| remote.metadata_status()).unpublished_changes > 0 {
        remote.publish().await.map_err(failed)?;
        remote.wait_metadata_spread().await?;
    }
    Ok(())
}
