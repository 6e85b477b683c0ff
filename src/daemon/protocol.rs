//! The control socket's protocol (`DATA_DIR/daemon.sock`, one JSON line
//! each way, progress lines while a sync runs) and its client side, which
//! the CLI uses; the status the daemon reports.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::remote::{Health, SyncProgress, UploadActivity};
use crate::vault::VaultStats;

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
    pub(super) fn done(r: Result<(), impl std::fmt::Display>, what: &str) -> Self {
        match r {
            Ok(()) => Response {
                ok: true,
                error: None,
                status: None,
            },
            Err(e) => Response::failed(format!("{what}: {e}")),
        }
    }

    pub(super) fn failed(error: String) -> Self {
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
    /// What the node turned away to protect itself (see `Defence`).
    #[serde(default)]
    pub refused: Defence,
    /// Peers struck for bad data or failed requests, most strikes first
    /// (at most 20), with the last reason.
    #[serde(default)]
    pub struck: Vec<StruckPeer>,
}

/// A peer that returned bad data or failed requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StruckPeer {
    pub peer: String,
    pub strikes: u32,
    pub why: String,
}

/// Inbound work a node refused, by reason, since it started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Defence {
    /// Requests answered busy: the node's queue or byte budget was full.
    pub busy_requests: u64,
    /// Of those, the ones whose peer was over its share (in flight, rate).
    pub throttled_requests: u64,
    /// Requests dropped as malformed or over their type's size limit.
    pub malformed_requests: u64,
    /// Connections refused: too many in all, from one peer or one address.
    pub connections: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

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
