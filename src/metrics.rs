//! A Prometheus text-format endpoint for node operators (`--metrics ADDR`,
//! off by default; `--metrics` alone listens on 127.0.0.1:9464). Any GET
//! returns the current values; there is nothing else to ask.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{Network, NodeHandle};

pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

/// One metric: name (after `drizzle_`), type, help text, value.
type Metric = (&'static str, &'static str, &'static str, u64);

/// Renders the node's metrics in the Prometheus text format.
pub fn render(node: &NodeHandle) -> String {
    let mut out = String::new();
    for (name, kind, help, value) in gauges(node).into_iter().chain(counters(node)) {
        let _ = writeln!(out, "# HELP drizzle_{name} {help}");
        let _ = writeln!(out, "# TYPE drizzle_{name} {kind}");
        let _ = writeln!(out, "drizzle_{name} {value}");
    }
    out
}

/// Space, fragments, root records and peers now.
fn gauges(node: &NodeHandle) -> [Metric; 6] {
    let cap = node.capacity();
    let peers = node.peers();
    let connected = peers.values().filter(|p| p.connected()).count();
    let storage = peers
        .values()
        .filter(|p| p.connected() && p.storage)
        .count();
    [
        (
            "donated_bytes",
            "gauge",
            "Bytes this node offers to store for others.",
            cap.donated,
        ),
        (
            "stored_bytes",
            "gauge",
            "Bytes of fragments stored for others.",
            cap.used,
        ),
        (
            "fragments",
            "gauge",
            "Fragments stored for others.",
            node.fragment_count(),
        ),
        (
            "root_records",
            "gauge",
            "Vault root records kept.",
            node.root_count(),
        ),
        ("peers", "gauge", "Connected peers.", connected as u64),
        (
            "storage_peers",
            "gauge",
            "Connected peers that store fragments.",
            storage as u64,
        ),
    ]
}

/// The fragment protocol's counters since the node started.
fn counters(node: &NodeHandle) -> [Metric; 11] {
    let c = node.counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    [
        (
            "requests_total",
            "counter",
            "Fragment protocol requests served.",
            load(&c.requests),
        ),
        (
            "fragments_stored_total",
            "counter",
            "Fragments accepted (PUT).",
            load(&c.fragments_stored),
        ),
        (
            "fragments_served_total",
            "counter",
            "Fragments sent (GET).",
            load(&c.fragments_served),
        ),
        (
            "refused_total",
            "counter",
            "PUTs refused (full, bad id, malformed).",
            load(&c.refused),
        ),
        (
            "busy_total",
            "counter",
            "Requests answered busy (too much inbound work queued).",
            load(&c.busy),
        ),
        (
            "throttled_total",
            "counter",
            "Requests answered busy because their peer was over its share (in flight or rate).",
            load(&c.throttled),
        ),
        (
            "refused_connections_total",
            "counter",
            "Connections refused by the limits (in all, per peer, per address).",
            load(&c.conns_refused),
        ),
        (
            "errors_total",
            "counter",
            "Requests that failed on this node.",
            load(&c.errors),
        ),
        (
            "malformed_requests_total",
            "counter",
            "Requests dropped as malformed or oversized.",
            load(&c.malformed),
        ),
        (
            "received_bytes_total",
            "counter",
            "Fragment bytes received.",
            load(&c.bytes_in),
        ),
        (
            "sent_bytes_total",
            "counter",
            "Fragment bytes sent.",
            load(&c.bytes_out),
        ),
    ]
}

/// Serves `render(node)` over HTTP on `addr` until the runtime stops.
pub async fn serve(addr: &str, node: NodeHandle) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    tracing::info!("metrics on http://{addr}/metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let node = node.clone();
            tokio::spawn(async move {
                // Read (and ignore) the request head; answer every GET alike.
                let mut buf = [0u8; 2048];
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                        .await;
                let body = render(&node);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(())
}
