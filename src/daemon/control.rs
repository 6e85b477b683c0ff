//! The daemon's side of the control socket: binding it, accepting clients
//! and answering `status`, `sync` (with progress) and `umount`.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::net::{Network, NodeHandle};
use crate::remote::{Health, Remote, SyncProgress};
use crate::vault::UploadBacklog;

use super::protocol::{
    socket_path, NodeStatus, ProgressLine, Request, Response, Status, SyncStatus,
};
use super::{publish_spread, Ctx, Stop};

/// Binds the control socket, refusing if a daemon already serves `data_dir`.
pub(super) fn bind_control(data_dir: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    let sock = socket_path(data_dir);
    if UnixStream::connect(&sock).is_ok() {
        bail!(
            "a drizzle daemon is already running for {}",
            data_dir.display()
        );
    }
    let _ = std::fs::remove_file(&sock);
    if let Err(e) = super::harden::tighten_data_dir(data_dir) {
        tracing::warn!("cannot make {} owner-only: {e}", data_dir.display());
    }
    let l = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("binding {}", sock.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} owner-only", sock.display()))?;
    }
    Ok(l)
}

/// Tells a client of another user why it gets nothing (after taking its
/// request line, so that closing does not reset the connection before the
/// answer is read).
async fn refuse(stream: tokio::net::UnixStream, uid: u32) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::new(rd.take(64 * 1024));
    let mut line = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), rd.read_line(&mut line)).await;
    let resp = Response::failed(format!(
        "user {uid} may not control this daemon (only its owner or root may)"
    ));
    if let Ok(mut out) = serde_json::to_vec(&resp) {
        out.push(b'\n');
        let _ = wr.write_all(&out).await;
        let _ = wr.shutdown().await;
    }
}

pub(super) async fn control_loop(listener: tokio::net::UnixListener, ctx: Ctx) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Owner-only socket in an owner-only dir; and the peer is checked
        // too, in case someone loosened either.
        match stream.peer_cred() {
            Ok(c) if super::harden::client_allowed(c.uid()) => {}
            Ok(c) => {
                tracing::warn!("refused a control client of user {}", c.uid());
                refuse(stream, c.uid()).await;
                continue;
            }
            Err(e) => {
                tracing::warn!("refused a control client: {e}");
                continue;
            }
        }
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
        struck: {
            let mut v: Vec<_> = peers
                .iter()
                .filter(|(_, p)| p.strikes > 0)
                .map(|(id, p)| crate::daemon::protocol::StruckPeer {
                    peer: id.to_string(),
                    strikes: p.strikes,
                    why: p.last_strike.clone().unwrap_or_default(),
                })
                .collect();
            v.sort_by_key(|s| std::cmp::Reverse(s.strikes));
            v.truncate(20);
            v
        },
        refused: {
            use std::sync::atomic::Ordering::Relaxed;
            let c = node.counters();
            crate::daemon::protocol::Defence {
                busy_requests: c.busy.load(Relaxed),
                throttled_requests: c.throttled.load(Relaxed),
                malformed_requests: c.malformed.load(Relaxed),
                connections: c.conns_refused.load(Relaxed),
            }
        },
    }
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
