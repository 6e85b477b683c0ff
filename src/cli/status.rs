//! `drizzle status`: the daemon's status as text (or JSON with `--json`).

use anyhow::anyhow;

use crate::daemon::{self, Request, SyncStatus};
use crate::metasync::MetaStatus;
use crate::units::human_bytes;
use crate::vault::VaultStats;

use super::args::Common;

pub(super) fn status(common: &Common, json: bool) -> anyhow::Result<()> {
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
    for s in &n.struck {
        println!("struck      {} ({} times): {}", s.peer, s.strikes, s.why);
    }
    let d = &n.refused;
    if d.busy_requests + d.malformed_requests + d.connections > 0 {
        println!(
            "turned away {} requests as busy ({} from peers over their share), {} malformed, {} connections over the limits",
            d.busy_requests, d.throttled_requests, d.malformed_requests, d.connections
        );
    }
    if let Some(st) = &s.stats {
        print_contents(st);
    }
    if let Some(sy) = &s.sync {
        print_redundancy(sy);
        print_uploads(sy);
    }
    if let Some(m) = &s.metadata {
        print_metadata(m);
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

/// The vault's contents, space and memory lines.
fn print_contents(st: &VaultStats) {
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

/// Redundancy, repairs, crowding and the durability estimate.
fn print_redundancy(sy: &SyncStatus) {
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
}

/// The upload queue and the disk cache.
fn print_uploads(sy: &SyncStatus) {
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

/// The published metadata: version, age, conflicts, errors.
fn print_metadata(m: &MetaStatus) {
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
