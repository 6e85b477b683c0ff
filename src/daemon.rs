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
use crate::net::{NodeConfig, NodeHandle};
use crate::remote::{Health, Remote, SyncProgress, UploadActivity};
use crate::vault::{UploadBacklog, Vault, VaultStats};

pub const SOCKET_FILE: &str = "daemon.sock";

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// A request on the control socket (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    /// Seal and store every acknowledged write; unless `local`, also wait
    /// until it is on peers at full redundancy.
    Sync {
        #[serde(default)]
        local: bool,
    },
    Umount,
}

/// A line the daemon sends before its answer to a long request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProgressLine {
    pub progress: SyncProgress,
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

/// What `drizzle status` reports (`--json` prints it as is). A mounted
/// vault reports all parts; a contribution node only `node`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// "vault" or "node".
    pub role: String,
    pub data_dir: PathBuf,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<PathBuf>,
    #[serde(flatten)]
    pub node: NodeStatus,
    #[serde(flatten)]
    pub stats: Option<VaultStats>,
    #[serde(flatten)]
    pub sync: Option<SyncStatus>,
    /// The vault's metadata on the network (root record, conflicts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<crate::metasync::MetaStatus>,
}

/// The libp2p node's part of the status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    pub peer_id: String,
    pub listen: Vec<String>,
    /// Connected peers.
    pub peers: u64,
    /// Connected peers that store fragments.
    pub storage_peers: u64,
    pub donated_bytes: u64,
    pub stored_for_others_bytes: u64,
    pub fragments_held: u64,
    /// Vault root records this node keeps (signed, encrypted, never expired).
    #[serde(default)]
    pub root_records: u64,
    pub requests_served: u64,
    /// Peers that returned bad data or failed requests (see the log).
    pub bad_peers: u64,
    /// Peers in the address book (met before, kept across restarts).
    #[serde(default)]
    pub known_peers: u64,
    /// Of those, the ones not connected now.
    #[serde(default)]
    pub known_not_connected: u64,
}

/// The vault's network state: uploads and redundancy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncStatus {
    pub k: u32,
    pub n: u32,
    pub pending_upload_bytes: u64,
    pub pending_upload_objects: u64,
    #[serde(flatten)]
    pub health: Health,
    #[serde(flatten)]
    pub activity: UploadActivity,
    /// Bytes of synced objects kept on local disk (`--cache`).
    pub disk_cache_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upload_error: Option<String>,
    /// Read availability and loss, estimated from the holders' uptime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<crate::maint::health::Durability>,
}

pub fn node_status(node: &NodeHandle) -> NodeStatus {
    let peers = node.peers();
    let cap = node.capacity();
    let known = node.known_peers();
    NodeStatus {
        peer_id: node.peer_id().to_string(),
        listen: node.listen_addrs().iter().map(|a| a.to_string()).collect(),
        peers: peers.values().filter(|p| p.connected()).count() as u64,
        storage_peers: peers
            .values()
            .filter(|p| p.connected() && p.storage)
            .count() as u64,
        donated_bytes: cap.donated,
        stored_for_others_bytes: cap.used,
        fragments_held: node.fragment_count(),
        root_records: node.root_count(),
        requests_served: node
            .counters()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        bad_peers: peers.values().filter(|p| p.strikes > 0).count() as u64,
        known_peers: known.0,
        known_not_connected: known.1,
    }
}

/// Sends one request to the daemon of `data_dir`.
pub fn request(data_dir: &Path, req: &Request) -> anyhow::Result<Response> {
    request_with_progress(data_dir, req, |_| {})
}

/// Sends one request; progress lines before the answer go to `progress`.
pub fn request_with_progress(
    data_dir: &Path,
    req: &Request,
    mut progress: impl FnMut(SyncProgress),
) -> anyhow::Result<Response> {
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
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    loop {
        answer.clear();
        reader
            .read_line(&mut answer)
            .context("reading the daemon's answer")?;
        if answer.is_empty() {
            bail!("the daemon closed the connection without answering");
        }
        match serde_json::from_str::<ProgressLine>(&answer) {
            Ok(p) => progress(p.progress),
            Err(_) => break,
        }
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

/// The network part of a mount: the node to run and the vault's coding.
pub struct NetSetup {
    pub node: NodeConfig,
    pub remote: crate::remote::RemoteConfig,
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

/// Binds the control socket, refusing if a daemon already serves `data_dir`.
fn bind_control(data_dir: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    let sock = socket_path(data_dir);
    if UnixStream::connect(&sock).is_ok() {
        bail!(
            "a drizzle daemon is already running for {}",
            data_dir.display()
        );
    }
    let _ = std::fs::remove_file(&sock);
    tokio::net::UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))
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
    let setup = async {
        let mountpoint = prepare_mountpoint(mountpoint)?;
        let listener = bind_control(data_dir)?;
        let metrics = net.node.metrics.clone();
        let node = NodeHandle::start(net.node)
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
        config.acl = fuser::SessionACL::All;
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
        Ok((mountpoint, listener, node, session, unmounter))
    };
    let (mountpoint, listener, node, session, mut unmounter) = match setup.await {
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
    publish_before_stop(&remote).await;
    node.stop();
    let backlog = vault.upload_backlog();
    if backlog.objects > 0 {
        tracing::info!(
            "{} objects ({} bytes) are not on peers yet; the upload resumes at the next mount",
            backlog.objects,
            backlog.bytes
        );
    }
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

async fn control_loop(listener: tokio::net::UnixListener, ctx: Ctx) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_client(stream, ctx).await {
                tracing::warn!("control client: {e:#}");
            }
        });
    }
}

async fn status(ctx: &Ctx) -> anyhow::Result<Status> {
    let mut st = Status {
        role: if ctx.mount.is_some() { "vault" } else { "node" }.into(),
        data_dir: ctx.data_dir.clone(),
        pid: std::process::id(),
        vault: None,
        mountpoint: None,
        node: node_status(&ctx.node),
        stats: None,
        sync: None,
        metadata: None,
    };
    if let Some(m) = &ctx.mount {
        let (v, r) = (m.vault.clone(), m.remote.clone());
        let (stats, health, durability) =
            tokio::task::spawn_blocking(move || (v.stats(), r.health(), r.durability())).await?;
        let (k, n) = m.remote.redundancy();
        let UploadBacklog { objects, bytes } = m.vault.upload_backlog();
        st.vault = Some(m.vault.name().to_string());
        st.mountpoint = Some(m.mountpoint.clone());
        st.stats = Some(stats?);
        st.sync = Some(SyncStatus {
            k,
            n,
            pending_upload_bytes: bytes,
            pending_upload_objects: objects,
            health: health.map_err(|e| anyhow!(e))?,
            activity: m.remote.activity(),
            disk_cache_bytes: m.vault.disk_cache_bytes(),
            last_upload_error: m.remote.last_error(),
            durability: durability.ok(),
        });
        let r = m.remote.clone();
        st.metadata = Some(tokio::task::spawn_blocking(move || r.metadata_status()).await?);
    }
    Ok(st)
}

async fn handle_client(stream: tokio::net::UnixStream, ctx: Ctx) -> anyhow::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = tokio::io::BufReader::new(rd.take(64 * 1024));
    rd.read_line(&mut line).await?;
    let resp = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::failed(format!("bad request: {e}")),
        Ok(Request::Status) => match status(&ctx).await {
            Ok(s) => Response {
                ok: true,
                error: None,
                status: Some(s),
            },
            Err(e) => Response::failed(format!("{e:#}")),
        },
        Ok(Request::Sync { local }) => match &ctx.mount {
            None => Response::done(Ok::<(), String>(()), ""),
            Some(m) => {
                let v = m.vault.clone();
                match tokio::task::spawn_blocking(move || v.sync_all()).await? {
                    Err(e) => Response::failed(format!("sync failed: {e}")),
                    Ok(()) if local => Response::done(Ok::<(), String>(()), ""),
                    Ok(()) => {
                        let r = match sync_with_progress(&m.remote, &mut wr).await {
                            // Then the metadata and the root record, so the
                            // vault can be recovered from its name and password.
                            Ok(_) => publish_spread(&m.remote).await,
                            Err(e) => Err(e),
                        };
                        Response::done(r, "sync incomplete")
                    }
                }
            }
        },
        Ok(Request::Umount) if ctx.mount.is_none() => Response::failed(
            "this is a contribution node, not a mount: stop it with SIGTERM (systemctl stop drizzle-node)"
                .into(),
        ),
        Ok(Request::Umount) => {
            let (tx, rx) = oneshot::channel();
            ctx.stop
                .send(Stop::Request(tx))
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

/// Waits for the network sync, sending a progress line twice a second.
async fn sync_with_progress(
    remote: &Remote,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<Health, String> {
    let latest = Arc::new(std::sync::Mutex::new(None::<SyncProgress>));
    let l2 = latest.clone();
    let fut = remote.wait_synced(move |p| *l2.lock().unwrap_or_else(|e| e.into_inner()) = Some(p));
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tick.tick() => {
                let p = latest.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(progress) = p {
                    if let Ok(mut line) = serde_json::to_string(&ProgressLine { progress }) {
                        line.push('\n');
                        // A client that went away does not stop the sync.
                        let _ = wr.write_all(line.as_bytes()).await;
                    }
                }
            }
        }
    }
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
            serde_json::to_string(&Request::Sync { local: true }).unwrap(),
            r#"{"cmd":"sync","local":true}"#
        );
        assert!(matches!(
            serde_json::from_str(r#"{"cmd":"sync"}"#).unwrap(),
            Request::Sync { local: false }
        ));
        assert!(matches!(
            serde_json::from_str(r#"{"cmd":"umount"}"#).unwrap(),
            Request::Umount
        ));
    }
}
