//! Identities are free: one host running many nodes must not end up
//! holding enough of an object's fragments to lose (or withhold) it.

use crate::support::*;

#[test]
fn sixteen_identities_behind_one_address_hold_at_most_n_minus_k_of_an_object() {
    // Six honest hosts, each its own address, and one host with sixteen
    // identities (all as close as the honest ones: loopback).
    let first = Node::start_at("127.0.0.11", "1G", &[], &[]);
    let a = first.addr.clone();
    let mut honest = vec![first];
    for i in 12..17 {
        honest.push(Node::start_at(&format!("127.0.0.{i}"), "1G", &[&a], &[]));
    }
    let sybils: Vec<Node> = (0..16)
        .map(|_| Node::start_at("127.0.0.2", "1G", &[&a], &[]))
        .collect();
    let mut d = Drive::init("spread");
    d.mount_args = local_net_args();
    d.mount_args
        .extend(["--peer", &a, "--failure-domain", "address"].map(String::from));
    d.mount();
    wait_for(
        "every node found",
        std::time::Duration::from_secs(60),
        || d.status()["storage_peers"].as_u64().unwrap_or(0) >= 22,
    );
    for i in 0..4u64 {
        std::fs::write(d.p(&format!("f{i}")), pattern(3 << 20, i)).unwrap();
    }
    // (`drizzle sync` would report the objects short of full redundancy:
    // six independent peers cannot hold ten fragments one each.)
    d.sync();
    wait_for(
        "every object uploaded",
        std::time::Duration::from_secs(60),
        || d.status()["pending_upload_objects"].as_u64() == Some(0),
    );
    let held = |nodes: &[Node]| -> u64 {
        nodes
            .iter()
            .map(|n| n.status()["fragments_held"].as_u64().unwrap())
            .sum()
    };
    let (on_sybils, on_honest) = (held(&sybils), held(&honest));
    let objects = (on_sybils + on_honest) / 16;
    eprintln!(
        "{objects} objects: {on_sybils} fragments on the sybil host, {on_honest} on honest ones"
    );
    assert!(objects >= 4, "{on_sybils} + {on_honest}");
    // Every object has at most n - k = 6 there, so the total is bounded:
    assert!(
        on_sybils <= 6 * objects,
        "{on_sybils} of {objects} objects' fragments on one host"
    );
    // ...and the honest hosts hold the rest: the object survives the
    // sybil host vanishing.
    drop(sybils);
    d.umount();
}
