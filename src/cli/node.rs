//! `drizzle node`: a contribution node (fragment store, no vault).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::daemon::{self};
use crate::net::Network;
use crate::units::human_bytes;

use super::args::{parse_donation, NetArgs};

pub(super) fn node(data_dir: PathBuf, donate: &str, net: &NetArgs) -> anyhow::Result<()> {
    let donate = parse_donation(donate, &data_dir).context("--donate")?;
    let mut cfg = net.node_config(data_dir.join("node"), donate)?;
    // A contribution node keeps no vault, so nobody can give back to it:
    // it asks nothing in return beyond each peer's grace, and its whole
    // donation is for peers that give nothing back.
    cfg.grace_pool = Some(donate);
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
