//! A hostile pod turning the node's own tunnel endpoint against source
//! validation: overlay CNIs (flannel's VXLAN, Calico's VXLAN or IPIP
//! mode) give every node a device that decapsulates what arrives for it.
//! A pod that sends such a device an encapsulated packet has the node
//! take the inner packet in as if it came from the tunnel, with whatever
//! source the pod wrote inside: validation on the pod's interface saw
//! only the outer packet, from the pod's own address.
//!
//! Cluster: `attack_pods` with `open` (no policy) on node1 as the
//! sender. Each node gets a VXLAN device as flannel makes one (VNI 1,
//! UDP 8472, bound to its fabric address, no learning). `open` sends
//! UDP to node1's and node2's device; inside, a packet forged as
//! `friend` to `victim`/`victim2` (which admit only friend), and one
//! with its own address to `remote`. Without the tunnel drops of the
//! `src_*` chains every forged one was delivered (both layouts, both
//! families, via either node). Now none is, not even the honest one
//! (pods run no tunnels to nodes); the control is the same UDP datagram
//! sent directly, which must arrive.

use crate::attacker::{
    attack_pods, netns, node_nft, packet, program_nodes, receiver, rule_packets, send_raw, v4, v6,
    UDP,
};
use crate::cluster::SimCluster;
use crate::netns::{ip, run};
use crate::probe::spawn_in;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VXLAN_PORT: u16 = 8472;
const VXLAN_DEV: &str = "flannel.1";

/// Creates the VXLAN device on `node` and returns its MAC.
fn vxlan_device(c: &SimCluster, node: &str) -> [u8; 6] {
    let n = c.topo.node(node);
    ip(
        &n.netns,
        &[
            "link",
            "add",
            VXLAN_DEV,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &n.fabric_v4.to_string(),
            "dstport",
            &VXLAN_PORT.to_string(),
            "nolearning",
        ],
    );
    ip(&n.netns, &["link", "set", VXLAN_DEV, "up"]);
    let out = run(Command::new("ip").args(["-n", &n.netns, "-br", "link", "show", VXLAN_DEV]));
    let mac = out
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no MAC in {out}"));
    let mut b = [0u8; 6];
    for (i, h) in mac.split(':').enumerate() {
        b[i] = u8::from_str_radix(h, 16).expect("mac");
    }
    b
}

/// The VXLAN payload around `inner` (a whole IP packet) for the device
/// with MAC `mac`.
fn vxlan(mac: [u8; 6], inner: &[u8]) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    p.extend_from_slice(&mac);
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    let ethertype: u16 = if inner[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(inner);
    p
}

fn tunnelled_forgeries(bridged: bool) {
    let mut c = attack_pods(bridged, &["open"]);
    program_nodes(&mut c, bridged);
    let macs = [vxlan_device(&c, "node1"), vxlan_device(&c, "node2")];
    let stop = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = ["victim", "victim2", "remote"]
        .iter()
        .map(|p| (*p, receiver(&netns(&c, p), stop.clone())))
        .collect();
    // (name, node whose device, inner source, inner destination pod,
    // must arrive)
    let mut cases = Vec::new();
    let mut id = 5000u16;
    for six in [false, true] {
        let pick = |p: &str| if six { v6(&c, p) } else { v4(&c, p) };
        for (node, k) in [("node1", 0usize), ("node2", 1)] {
            for (what, src, dst, arrives) in [
                ("forged as friend", pick("friend"), "victim", false),
                ("forged as friend", pick("friend"), "victim2", false),
                ("own source", pick("open"), "remote", false),
            ] {
                id += 1;
                cases.push((
                    format!(
                        "{} via {node}'s VXLAN: {what} -> {dst}",
                        if six { "IPv6" } else { "IPv4" }
                    ),
                    k,
                    src,
                    dst,
                    pick(dst),
                    id,
                    arrives,
                ));
            }
        }
    }
    let fabric: Vec<IpAddr> = ["node1", "node2"]
        .iter()
        .map(|n| IpAddr::V4(c.topo.node(n).fabric_v4))
        .collect();
    let sends: Vec<(SocketAddr, Vec<u8>)> = cases
        .iter()
        .map(|(_, k, src, _, daddr, id, _)| {
            let inner = packet(UDP, *src, *daddr, *id, 0, 64);
            (
                SocketAddr::new(fabric[*k], VXLAN_PORT),
                vxlan(macs[*k], &inner),
            )
        })
        .collect();
    spawn_in(&netns(&c, "open"), move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        for (to, p) in sends {
            s.send_to(&p, to).expect("send");
        }
    })
    .join()
    .expect("sender");
    // The control: the same datagram, not tunnelled.
    let mut direct = Vec::new();
    for six in [false, true] {
        let pick = |p: &str| if six { v6(&c, p) } else { v4(&c, p) };
        id += 1;
        let (src, dst) = (pick("open"), pick("remote"));
        cases.push((
            format!(
                "{} direct: own source -> remote (control)",
                if six { "IPv6" } else { "IPv4" }
            ),
            0,
            src,
            "remote",
            dst,
            id,
            true,
        ));
        direct.push((dst, packet(UDP, src, dst, id, 0, 64)));
    }
    spawn_in(&netns(&c, "open"), move || send_raw(&direct))
        .join()
        .expect("sender");
    let t0 = Instant::now();
    let arrived = |dst: &str, src: IpAddr, id: u16| {
        receivers
            .iter()
            .any(|(p, (seen, _))| *p == dst && seen.lock().expect("lock").contains(&(UDP, src, id)))
    };
    while t0.elapsed() < crate::attacker::SETTLE
        || (!cases.iter().all(|k| !k.6 || arrived(k.3, k.2, k.5))
            && t0.elapsed() < crate::attacker::ARRIVAL_LIMIT)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let wrong: Vec<String> = cases
        .iter()
        .filter(|k| arrived(k.3, k.2, k.5) != k.6)
        .map(|k| format!("{}: {}", k.0, if k.6 { "lost" } else { "arrived" }))
        .collect();
    for (_, (_, h)) in receivers {
        h.join().expect("receiver");
    }
    let rs = c.ruleset("node1");
    assert!(wrong.is_empty(), "{}\nnode1:\n{rs}", wrong.join("\n"));
    // Dropped at open's interface, counted under the tunnel's name.
    let src = node_nft(
        &c,
        "node1",
        &["list", "chain", "inet", "nftpol", "src_x_open"],
    );
    let counted = src
        .lines()
        .find(|l| l.contains("UDP 8472"))
        .and_then(rule_packets);
    assert!(counted.is_some_and(|n| n >= 12), "{counted:?}\n{src}");
}

#[test]
fn tunnelled_forgeries_routed() {
    require_root!();
    tunnelled_forgeries(false);
}

#[test]
fn tunnelled_forgeries_bridged() {
    require_root!();
    require_br_netfilter!();
    tunnelled_forgeries(true);
}
