//! A hostile peer floods a mounted vault's node with each kind of
//! message, from many identities at once; the node must stay within a
//! memory bound and keep serving an honest peer and its own mount.
//!
//! The attackers speak the real wire format through a codec of their own
//! that can stop mid-message and never read a reply, which the real codec
//! never does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drizzle::coder::{self, Fragment};
use drizzle::net::proto::{LeaseTerms, Request, Response, PROTOCOL};
use drizzle::net::{Multiaddr, Network, NodeConfig, NodeHandle, PeerId};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::StreamProtocol;

use crate::support::{local_net_args, Drive};

/// What the node may grow above its size before the flood.
const MEMORY_BOUND: u64 = 256 << 20;
/// Identities the attacker runs (all from 127.0.0.1).
const ATTACKERS: usize = 20;

/// One message as an attacker sends it.
#[derive(Clone)]
struct Shot {
    bytes: Arc<Vec<u8>>,
    /// Send only this much, then hold the stream open forever.
    cut: Option<usize>,
}

/// Writes shots as given; reads replies only if `read` (else never).
#[derive(Clone)]
struct FloodCodec {
    read: bool,
}

impl request_response::Codec for FloodCodec {
    type Protocol = StreamProtocol;
    type Request = Shot;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> std::io::Result<Shot>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(std::io::Error::other("attackers serve nothing"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        if !self.read {
            futures::future::pending::<()>().await;
        }
        let mut v = Vec::new();
        io.take(32 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        s: Shot,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match s.cut {
            Some(n) => {
                io.write_all(&s.bytes[..n]).await?;
                io.flush().await?;
                futures::future::pending::<()>().await;
                Ok(())
            }
            None => {
                io.write_all(&s.bytes).await?;
                io.close().await
            }
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

/// A request as it goes on the wire: length, then the message.
fn frame(r: &Request) -> Vec<u8> {
    let (head, payload) = r.encode();
    let mut v = ((head.len() + payload.len()) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&head);
    v.extend_from_slice(&payload);
    v
}

/// Replies the attackers read, by first byte after the length.
#[derive(Default)]
struct Tally {
    stored: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
    connected: AtomicU64,
}

/// Runs one attacker identity: connects, sends every shot at once, and
/// keeps its streams open until aborted.
async fn attacker(
    addr: Multiaddr,
    target: PeerId,
    shots: Vec<Shot>,
    read: bool,
    tally: Arc<Tally>,
) {
    let mut swarm = crate::support::raw_swarm(
        |_| {
            request_response::Behaviour::with_codec(
                FloodCodec { read },
                [(PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(600))
                    .with_max_concurrent_streams(10_000),
            )
        },
        Duration::from_secs(600),
    );
    if swarm.dial(addr).is_err() {
        return;
    }
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { .. } => break,
            SwarmEvent::OutgoingConnectionError { .. } => return,
            _ => {}
        }
    }
    tally.connected.fetch_add(1, Ordering::Relaxed);
    for s in shots {
        swarm.behaviour_mut().send_request(&target, s);
    }
    loop {
        if let SwarmEvent::Behaviour(request_response::Event::Message {
            message: request_response::Message::Response { response, .. },
            ..
        }) = swarm.select_next_some().await
        {
            let c = match response.get(4) {
                Some(1) => &tally.stored,
                Some(10) => &tally.busy,
                _ => &tally.other,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The resident memory of a process, in bytes.
fn rss(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb << 10
}

/// An honest peer's GET of its own fragment: the right bytes, asking
/// again while the node says busy, within `limit`.
async fn honest_get(
    node: &NodeHandle,
    target: PeerId,
    frag: &Fragment,
    limit: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            node.request(target, Request::Get { id: frag.id }),
        )
        .await;
        match r {
            Ok(Ok(Response::Fragment(b))) if b[..] == frag.bytes[..] => return Ok(()),
            Ok(Ok(Response::Busy)) if start.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other if start.elapsed() >= limit => return Err(format!("{other:?}")),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The mount's own work: a write with fsync, a read back and a listing,
/// each on a thread of its own; true if all finished within 10 s.
fn mount_answers(d: &Drive, round: usize) -> bool {
    let path = d.p(&format!("probe-{round}"));
    let dir = d.mnt.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Write;
        // The same bytes each round: the mount's caches do not grow.
        let data = crate::support::pattern(1 << 20, 7);
        let ok = (|| {
            let mut f = std::fs::File::create(&path).ok()?;
            f.write_all(&data).ok()?;
            f.sync_all().ok()?;
            (std::fs::read(&path).ok()? == data).then_some(())?;
            std::fs::read_dir(&dir).ok()?.count();
            Some(())
        })();
        let _ = tx.send(ok.is_some());
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false)
}

#[test]
fn a_flooding_peer_stays_within_bounds_and_honest_work_goes_on() {
    let mut d = Drive::init("flooded");
    d.mount_args = local_net_args();
    // Room for the attacker's identities from this one address (and the
    // honest peer), but not for all of the connection flood.
    let i = d
        .mount_args
        .iter()
        .position(|a| a == "--conns-per-address")
        .unwrap();
    d.mount_args[i + 1] = "24".into();
    d.mount_args.extend(["--cache".into(), "64M".into()]);
    d.mount();
    let st = d.status();
    let pid = st["pid"].as_i64().unwrap() as i32;
    let target: PeerId = st["peer_id"].as_str().unwrap().parse().unwrap();
    let addr: Multiaddr = st["listen"][0].as_str().unwrap().parse().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The honest peer stores a fragment first.
    let mut cfg = NodeConfig::new(tmp.path().join("honest"), 0);
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.peers = vec![addr.clone()];
    let honest = rt.block_on(NodeHandle::start(cfg)).unwrap();
    let mine = coder::encode(&crate::support::pattern(300 << 10, 1), 1, 0..1)
        .unwrap()
        .remove(0);
    let lease = LeaseTerms::new(&[1; 32], &[2; 32], 3600);
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let put = Request::Put {
                id: mine.id,
                lease,
                data: mine.bytes.clone().into(),
            };
            match honest.request(target, put).await {
                Ok(Response::Stored) => break,
                other => assert!(Instant::now() < deadline, "honest PUT: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // The attacker stores one large fragment to ask for again and again.
    let big = coder::encode(&crate::support::pattern(4 << 20, 2), 1, 0..1)
        .unwrap()
        .remove(0);
    let put_big = Shot {
        bytes: Arc::new(frame(&Request::Put {
            id: big.id,
            lease,
            data: big.bytes.clone().into(),
        })),
        cut: None,
    };
    let tally = Arc::new(Tally::default());
    let h = rt.spawn(attacker(
        addr.clone(),
        target,
        vec![put_big],
        true,
        tally.clone(),
    ));
    crate::support::wait_for(
        "the attacker's fragment stored",
        Duration::from_secs(30),
        || tally.stored.load(Ordering::Relaxed) == 1,
    );
    h.abort();

    std::thread::sleep(Duration::from_secs(2));
    let idle = rss(pid);
    let peak = Arc::new(AtomicU64::new(idle));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let get = Shot {
        bytes: Arc::new(frame(&Request::Get { id: big.id })),
        cut: None,
    };
    // A PUT that claims the largest size, sends 1 MiB and stops.
    let mut claim = ((coder::MAX_FRAGMENT + 101) as u32).to_be_bytes().to_vec();
    claim.push(1);
    claim.resize(4 + (1 << 20), 7);
    let claim = Shot {
        bytes: Arc::new(claim),
        cut: Some(1 << 20),
    };
    let has = Shot {
        bytes: Arc::new(frame(&Request::Has {
            ids: vec![big.id; 4096],
        })),
        cut: None,
    };
    type Phase = (&'static str, usize, Box<dyn Fn(usize) -> Vec<Shot>>, bool);
    let phases: Vec<Phase> = vec![
        (
            "GETs of a large fragment, replies never read",
            ATTACKERS,
            Box::new(move |_| vec![get.clone(); 64]),
            false,
        ),
        (
            "PUTs that claim 16 MiB and stall",
            ATTACKERS,
            Box::new(move |_| vec![claim.clone(); 64]),
            false,
        ),
        (
            "root records under fresh keys",
            ATTACKERS,
            Box::new(|a| roots(a, 100)),
            true,
        ),
        (
            "HAS of 4096 ids",
            ATTACKERS,
            Box::new(move |_| vec![has.clone(); 300]),
            true,
        ),
        ("connections", 60, Box::new(|_| Vec::new()), true),
    ];
    let mut failures = Vec::new();
    for (what, count, shots, read) in phases {
        let tally = Arc::new(Tally::default());
        let tasks: Vec<_> = (0..count)
            .map(|a| {
                rt.spawn(attacker(
                    addr.clone(),
                    target,
                    shots(a),
                    read,
                    tally.clone(),
                ))
            })
            .collect();
        let start = Instant::now();
        let mut round = 0;
        while start.elapsed() < Duration::from_secs(12) {
            round += 1;
            if let Err(e) = rt.block_on(honest_get(&honest, target, &mine, Duration::from_secs(10)))
            {
                failures.push(format!("{what}: the honest GET failed: {e}"));
            }
            if !mount_answers(&d, round) {
                failures.push(format!("{what}: the mount did not answer within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        for t in tasks {
            t.abort();
        }
        let grown = peak.load(Ordering::Relaxed).saturating_sub(idle);
        eprintln!(
            "flood of {what}: {} attackers connected, {} stored, {} busy; peak {} MiB above idle",
            tally.connected.load(Ordering::Relaxed),
            tally.stored.load(Ordering::Relaxed),
            tally.busy.load(Ordering::Relaxed),
            grown >> 20
        );
        if grown > MEMORY_BOUND {
            failures.push(format!(
                "{what}: the node grew {} MiB above its idle size",
                grown >> 20
            ));
        }
        if what == "root records under fresh keys" {
            let kept = tally.stored.load(Ordering::Relaxed);
            if kept > (ATTACKERS * drizzle::fragstore::ROOTS_PER_PEER as usize) as u64 {
                failures.push(format!(
                    "{what}: {kept} root records kept for the attackers"
                ));
            }
        }
        if what == "connections" && tally.connected.load(Ordering::Relaxed) >= 60 {
            failures.push("every one of 60 connections from one address was accepted".into());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let st = d.status();
    eprintln!("turned away: {}", st["refused"]);
    honest.stop();
    d.umount();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(st["refused"]["busy_requests"].as_u64().unwrap() > 0, "{st}");
    assert!(st["refused"]["connections"].as_u64().unwrap() > 0, "{st}");
}

/// Root records, each signed by a fresh key, as attacker `a` sends them.
fn roots(a: usize, count: u32) -> Vec<Shot> {
    (0..count)
        .map(|i| {
            let mut seed = [9u8; 32];
            seed[..4].copy_from_slice(&(a as u32).to_be_bytes());
            seed[4..8].copy_from_slice(&i.to_be_bytes());
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let kdf = drizzle::crypto::KdfParams::default_strong();
            let r = drizzle::root::RootRecord::sign(&key, 1, kdf, vec![0; 8000]);
            Shot {
                bytes: Arc::new(frame(&Request::RootPut {
                    key: r.key(),
                    record: r.encode(),
                })),
                cut: None,
            }
        })
        .collect()
}
