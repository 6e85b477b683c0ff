//! Building the libp2p swarm: the node's identity (kept in
//! `DATA_DIR/node/identity`), the transports and behaviours, and what goes
//! back into it at start (kept root records, peers from the address book).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use libp2p::kad::store::RecordStore;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::Multiaddr;
use libp2p::{identify, identity, kad, mdns, ping, Swarm};

use super::proto::PROTOCOL;
use crate::fragstore::FragmentStore;

use super::{addrbook, codec, Behaviour, IDENTIFY_PROTOCOL, KAD_PROTOCOL};

pub(super) fn load_identity(dir: &Path) -> anyhow::Result<identity::Keypair> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("identity");
    match std::fs::read(&path) {
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("node identity {} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = identity::Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .context("encoding node identity")?;
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Fragment protocol streams a connection may have open at once (each
/// way); a peer's requests in flight are bounded further when served.
const MAX_STREAMS: usize = 64;

/// A connection nothing used for this long is closed. Storage peers are
/// asked for their capacity every 15 s, so those connections stay.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Listen addresses used when none are given: a free port on all interfaces.
pub fn default_listen() -> Vec<Multiaddr> {
    vec![
        "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
        "/ip4/0.0.0.0/udp/0/quic-v1"
            .parse()
            .expect("valid multiaddr"),
    ]
}

/// The swarm with this node's transports (TCP and QUIC, Noise, Yamux) and
/// behaviours (identify, Kademlia in server mode, ping, mDNS if `mdns_on`,
/// the fragment protocol).
pub(super) fn build_swarm(
    key: identity::Keypair,
    mdns_on: bool,
    codec: codec::Codec,
    limits: super::limits::Limits,
) -> anyhow::Result<Swarm<Behaviour>> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .context("setting up TCP")?
        .with_quic()
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let mut kcfg = kad::Config::new(KAD_PROTOCOL);
            kcfg.set_periodic_bootstrap_interval(Some(Duration::from_secs(60)));
            // Root records are checked before they are kept (Kademlia
            // checks nothing) and never expire (DESIGN.md section 4).
            kcfg.set_record_filtering(kad::StoreInserts::FilterBoth);
            kcfg.set_record_ttl(None);
            kcfg.set_publication_interval(None);
            let store = kad::store::MemoryStore::with_config(
                id,
                kad::store::MemoryStoreConfig {
                    // Only checked root records enter (the fragment
                    // store's limits apply first); this bounds the rest.
                    max_records: crate::fragstore::MAX_ROOTS as usize + 64,
                    max_value_bytes: crate::root::MAX_ROOT,
                    ..Default::default()
                },
            );
            let mut kad = kad::Behaviour::with_config(id, store, kcfg);
            // Loopback and LAN nodes never get a confirmed external
            // address; without server mode nobody would answer queries.
            kad.set_mode(Some(kad::Mode::Server));
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), id)?)
            } else {
                None
            };
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                limits,
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.into(),
                    key.public(),
                )),
                kad,
                ping: ping::Behaviour::new(ping::Config::new()),
                mdns: mdns.into(),
                frag: request_response::Behaviour::with_codec(
                    codec,
                    [(PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60))
                        .with_max_concurrent_streams(MAX_STREAMS),
                ),
            })
        })
        .map_err(|e| anyhow::anyhow!("setting up the node: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    Ok(swarm)
}

/// Puts back what the node kept: root records into the DHT store, and the
/// address book's peers into Kademlia and the swarm; returns the book.
pub(super) fn restore(
    swarm: &mut Swarm<Behaviour>,
    frags: &FragmentStore,
    dir: &Path,
) -> anyhow::Result<addrbook::AddressBook> {
    // Root records kept across restarts go back into the DHT store.
    for (k, v) in frags.roots().context("reading root records")? {
        let mut r = kad::Record::new(kad::RecordKey::new(&k), v);
        r.expires = None;
        let _ = swarm.behaviour_mut().kad.store_mut().put(r);
    }
    // Peers met before: their addresses go to Kademlia and the swarm, and
    // the most recent are dialed now (holders are reachable at once
    // after a restart, before any DHT query).
    let book = addrbook::AddressBook::load(dir);
    for (peer, e) in book.entries() {
        for a in e.addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
            swarm.behaviour_mut().kad.add_address(peer, a.clone());
            swarm.add_peer_address(*peer, a);
        }
    }
    Ok(book)
}
