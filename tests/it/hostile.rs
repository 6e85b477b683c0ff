//! A vault among honest nodes and nodes that misbehave on purpose
//! (`drizzle node --misbehave`): it acknowledges and drops, serves flipped
//! bytes, fakes its audit answers, refuses at random. Reads are bit-exact
//! or a clear EIO, never wrong; the liars are struck and shown in status
//! with the reason; repair moves what they held onto honest nodes.

use std::time::Duration;

use crate::network::peer_args;
use crate::support::*;

#[test]
fn liars_are_struck_and_repaired_around_and_reads_stay_exact() {
    let first = Node::start("1G", &[]);
    let a = first.addr.clone();
    let mut honest = vec![first];
    for _ in 0..3 {
        honest.push(Node::start("1G", &[&a]));
    }
    let modes = ["drop", "corrupt", "fake-audit", "refuse"];
    let mut hostile: Vec<Node> = modes
        .iter()
        .map(|m| Node::start_with("1G", &[&a], &["--misbehave", m]))
        .collect();
    let mut d = Drive::init_with("among-liars", &["--k", "2", "--n", "4"]);
    peer_args(&mut d, &honest, Some("0"));
    d.mount_args.extend(
        [
            // Every fragment audited on every pass, once a second.
            "--audit-percent",
            "1000000000",
            "--repair-every-secs",
            "1",
        ]
        .map(String::from),
    );
    d.mount();
    wait_for("all eight nodes", Duration::from_secs(60), || {
        d.status()["storage_peers"].as_u64().unwrap_or(0) >= 8
    });
    let files: Vec<(String, Vec<u8>)> = (0..8u64)
        .map(|i| (format!("f{i}"), pattern(1 << 20, 40 + i)))
        .collect();
    for (name, data) in &files {
        std::fs::write(d.p(name), data).unwrap();
    }
    d.sync();
    wait_for("every object uploaded", Duration::from_secs(60), || {
        d.status()["pending_upload_objects"].as_u64() == Some(0)
    });

    // Reads (no local copies: --cache 0) are exact or EIO, never wrong.
    for _ in 0..3 {
        for (name, data) in &files {
            match std::fs::read(d.p(name)) {
                Ok(back) => assert!(back == *data, "{name} read back wrong bytes"),
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}: {e}"),
            }
        }
    }

    // The liars are struck, and status says who and why.
    let liars: Vec<String> = hostile[..3].iter().map(|n| n.peer_id.clone()).collect();
    let mut struck = serde_json::Value::Null;
    wait_for("the liars struck", Duration::from_secs(60), || {
        struck = d.status()["struck"].clone();
        liars.iter().all(|l| {
            struck
                .as_array()
                .is_some_and(|v| v.iter().any(|s| s["peer"] == l.as_str()))
        })
    });
    eprintln!("struck: {struck}");
    for s in struck.as_array().unwrap() {
        assert!(!s["why"].as_str().unwrap().is_empty(), "{s}");
        let honest_id = honest.iter().any(|n| s["peer"] == n.peer_id.as_str());
        assert!(!honest_id, "an honest node was struck: {s}");
    }
    let human = String::from_utf8_lossy(&d.drizzle(&["status"]).stdout).into_owned();
    assert!(human.contains("struck"), "{human}");

    // Repair moves what the liars held: without any of them, every file
    // reads back exactly.
    std::thread::sleep(Duration::from_secs(10));
    for n in &mut hostile {
        n.kill();
    }
    wait_for(
        "every file from honest nodes",
        Duration::from_secs(90),
        || {
            files
                .iter()
                .all(|(name, data)| std::fs::read(d.p(name)).is_ok_and(|b| b == *data))
        },
    );
    d.umount();
}
