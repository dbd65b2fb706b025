//! Pods on one Linux bridge reach each other at layer 2, so a hostile pod
//! (CAP_NET_RAW) can hand-build Ethernet frames: destinations that a
//! pod accepts although no verdict map names them: its IPv6 link-local
//! address, broadcast (limited and subnet-directed, also in a frame sent
//! to the victim's own MAC), and IPv4/IPv6 all-hosts multicast.
//!
//! Also VLAN priority tags, in both layouts: one tag on a bridge skips
//! br_netfilter, two tags skip the `inet` ingress hook (the kernel takes
//! the first off before the hook and the second after it). The guard
//! table drops them at the pod's interface.
//!
//! Cluster (namespace `x`, all on node1's bridge): `mallory` (no policy),
//! `attacker` (egress only to `remote`), `victim` (admits only `friend`),
//! `bystander` (no policy; receives the controls), `friend`, and
//! `remote` on node2. Every frame is a UDP datagram with the sender's own
//! source address (source validation passes it), sent on an `AF_PACKET`
//! socket; unicast frames to `bystander`'s own addresses are the controls
//! that must arrive.

use crate::attacker::{
    netns, node_nft, packet, program_nodes, receiver, rule_packets, v4, v6, Arrivals,
    ARRIVAL_LIMIT, SETTLE, UDP,
};
use crate::cluster::{labels, nftpol_bin, SimCluster};
use crate::netns::run;
use crate::probe::spawn_in;
use crate::scenarios::np;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Mac = [u8; 6];

fn mac_of(ns: &str) -> Mac {
    mac_in(ns, "eth0")
}

/// The MAC of interface `dev` in namespace `ns`.
fn mac_in(ns: &str, dev: &str) -> Mac {
    let out = run(Command::new("ip").args(["-n", ns, "-o", "link", "show", dev]));
    let text = out
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {out}"));
    let mut mac = [0u8; 6];
    for (i, b) in text.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(b, 16).expect("hex");
    }
    mac
}

/// The pod's IPv6 link-local address, once duplicate address detection
/// is done with it (a tentative address receives nothing); bounded.
fn link_local_of(ns: &str) -> Ipv6Addr {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = run(Command::new("ip").args([
            "-n", ns, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
        ]));
        if !out.contains("tentative") {
            if let Some(a) = out
                .split("inet6 ")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .and_then(|a| a.parse().ok())
            {
                return a;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no usable link-local address: {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Frame {
    name: String,
    from: &'static str,
    dst_mac: Mac,
    src: IpAddr,
    dst: IpAddr,
    id: u16,
    /// The pod whose receiver is watched, and whether it must get it.
    to: &'static str,
    arrives: bool,
    /// VLAN-id-0 (priority) 802.1Q tags in front of the IP header.
    tags: u8,
}

/// Sends whole Ethernet frames out of the calling thread's `eth0`.
fn send_frames(frames: &[Vec<u8>]) {
    // SAFETY: plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new("eth0").expect("name");
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex > 0, "no eth0");
    for f in frames {
        // SAFETY: sockaddr_ll is plain data, fully initialised here; the
        // frame buffer outlives the call.
        let rc = unsafe {
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_ifindex = ifindex as i32;
            sa.sll_halen = 6;
            sa.sll_addr[..6].copy_from_slice(&f[..6]);
            libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        let err = std::io::Error::last_os_error();
        assert!(rc >= 0, "send frame: {err}");
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
}

fn frame(k: &Frame, src_mac: Mac) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&k.dst_mac);
    f.extend_from_slice(&src_mac);
    for _ in 0..k.tags {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x00]);
    }
    f.extend_from_slice(if k.src.is_ipv4() {
        &[0x08, 0x00]
    } else {
        &[0x86, 0xdd]
    });
    f.extend_from_slice(&packet(UDP, k.src, k.dst, k.id, 0, 64));
    f
}

fn l2_cluster() -> SimCluster {
    let mut c = SimCluster::new(true);
    c.add_namespace("x", labels(&[("ns", "x")]));
    for (pod, node) in [
        ("mallory", "node1"),
        ("attacker", "node1"),
        ("victim", "node1"),
        ("bystander", "node1"),
        ("friend", "node1"),
        ("remote", "node2"),
    ] {
        c.add_pod("x", pod, node, labels(&[("pod", pod)]));
    }
    c.put_policy(&np(
        "x",
        "victim-admits-friend",
        "podSelector: {matchLabels: {pod: victim}}\n\
         ingress:\n- from: [{podSelector: {matchLabels: {pod: friend}}}]",
    ));
    c.put_policy(&np(
        "x",
        "attacker-to-remote-only",
        "podSelector: {matchLabels: {pod: attacker}}\npolicyTypes: [Egress]\n\
         egress:\n- to: [{podSelector: {matchLabels: {pod: remote}}}]",
    ));
    program_nodes(&mut c, true);
    c
}

#[test]
fn bridged_layer2_tricks_reach_no_isolated_pod() {
    require_root!();
    require_br_netfilter!();
    let c = l2_cluster();
    let victim_mac = mac_of(&netns(&c, "victim"));
    let bystander_mac = mac_of(&netns(&c, "bystander"));
    let victim_ll = IpAddr::V6(link_local_of(&netns(&c, "victim")));
    let bcast: Mac = [0xff; 6];
    let mcast4: Mac = [0x01, 0x00, 0x5e, 0, 0, 1];
    let mcast6: Mac = [0x33, 0x33, 0, 0, 0, 1];
    let limited = IpAddr::V4(Ipv4Addr::BROADCAST);
    let directed = IpAddr::V4(Ipv4Addr::new(10, 244, 1, 255));
    let all4 = IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1));
    let all6 = IpAddr::V6("ff02::1".parse().expect("v6"));
    let mut frames = Vec::new();
    let mut id = 3000u16;
    let mut add = |name: &str,
                   from: &'static str,
                   dst_mac: Mac,
                   src: IpAddr,
                   dst: IpAddr,
                   to: &'static str,
                   arrives: bool| {
        id += 1;
        frames.push(Frame {
            name: format!("{from}: {name}"),
            from,
            dst_mac,
            src,
            dst,
            id,
            to,
            arrives,
            tags: 0,
        });
    };
    for from in ["mallory", "attacker"] {
        let (s4, s6) = (v4(&c, from), v6(&c, from));
        if from == "mallory" {
            // Controls: the frame crafting works, and unisolated pods
            // still get unicast from their bridge neighbours.
            add(
                "IPv4 unicast to bystander (control)",
                from,
                bystander_mac,
                s4,
                v4(&c, "bystander"),
                "bystander",
                true,
            );
            add(
                "IPv6 unicast to bystander (control)",
                from,
                bystander_mac,
                s6,
                v6(&c, "bystander"),
                "bystander",
                true,
            );
            add(
                "IPv4 unicast to victim",
                from,
                victim_mac,
                s4,
                v4(&c, "victim"),
                "victim",
                false,
            );
        }
        add(
            "IPv6 to victim's link-local address",
            from,
            victim_mac,
            s6,
            victim_ll,
            "victim",
            false,
        );
        add(
            "IPv4 limited broadcast",
            from,
            bcast,
            s4,
            limited,
            "victim",
            false,
        );
        add(
            "IPv4 subnet broadcast",
            from,
            bcast,
            s4,
            directed,
            "victim",
            false,
        );
        add(
            "IPv4 subnet broadcast in a frame to victim's MAC",
            from,
            victim_mac,
            s4,
            directed,
            "victim",
            false,
        );
        add(
            "IPv4 limited broadcast in a frame to victim's MAC",
            from,
            victim_mac,
            s4,
            limited,
            "victim",
            false,
        );
        add(
            "IPv4 all-hosts multicast",
            from,
            mcast4,
            s4,
            all4,
            "victim",
            false,
        );
        add(
            "IPv6 all-nodes multicast",
            from,
            mcast6,
            s6,
            all6,
            "victim",
            false,
        );
    }
    let t0 = Instant::now();
    let wrong = deliver(&c, &frames, &["victim", "bystander"]);
    eprintln!("{} frames, {:?}", frames.len(), t0.elapsed());
    assert!(
        wrong.is_empty(),
        "{}\nnode1:\n{}",
        wrong.join("\n"),
        c.ruleset("node1")
    );
}

/// Sends every frame from its pod, watches the receivers of `pods`, and
/// names each frame whose arrival is wrong.
fn deliver(c: &SimCluster, frames: &[Frame], pods: &[&'static str]) -> Vec<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for p in pods {
        let (seen, h) = receiver(&netns(c, p), stop.clone());
        receivers.push((*p, seen, h));
    }
    let mut senders: Vec<&str> = frames.iter().map(|k| k.from).collect();
    senders.dedup();
    for from in senders {
        let src_mac = mac_of(&netns(c, from));
        let bytes: Vec<Vec<u8>> = frames
            .iter()
            .filter(|k| k.from == from)
            .map(|k| frame(k, src_mac))
            .collect();
        spawn_in(&netns(c, from), move || send_frames(&bytes))
            .join()
            .expect("sender");
    }
    let sent = Instant::now();
    let all_arrived = || {
        frames.iter().filter(|k| k.arrives).all(|k| {
            receivers.iter().any(|(p, seen, _)| {
                *p == k.to && seen.lock().expect("lock").contains(&(UDP, k.src, k.id))
            })
        })
    };
    while sent.elapsed() < SETTLE || (!all_arrived() && sent.elapsed() < ARRIVAL_LIMIT) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen: Vec<(&str, Arrivals)> = Vec::new();
    for (p, s, h) in receivers {
        h.join().expect("receiver");
        seen.push((p, s.lock().expect("lock").clone()));
    }
    frames
        .iter()
        .filter(|k| {
            let got = seen
                .iter()
                .any(|(p, s)| *p == k.to && s.contains(&(UDP, k.src, k.id)));
            got != k.arrives
        })
        .map(|k| {
            format!(
                "{} (must {}arrive at {})",
                k.name,
                if k.arrives { "" } else { "not " },
                k.to
            )
        })
        .collect()
}

/// The packet counter of the guard rule whose comment holds `what`, on
/// `node`, summed over its chains.
fn guard_drops(c: &SimCluster, node: &str, what: &str) -> u64 {
    node_nft(c, node, &["list", "table", "netdev", "nftpol"])
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(rule_packets)
        .sum()
}

/// VLAN-id-0 tagged frames from `attacker`: two tags with `friend`'s
/// address (which both victims admit) to a victim on its own node and
/// one on the other node, and, on a bridge, one tag straight to the
/// victim's MAC with the attacker's own address. An untagged frame to
/// `remote` (which the attacker's egress allows) is the control.
fn vlan_tags_are_dropped(bridged: bool) {
    let c = crate::attacker::attack_cluster(bridged);
    let node1 = c.topo.node("node1").netns.clone();
    // The next hop of a routed frame: the attacker's host-side veth, or
    // the bridge (the pods' gateway).
    let gw_mac = if bridged {
        let out =
            run(Command::new("ip").args(["-n", &node1, "-o", "link", "show", "type", "bridge"]));
        let dev = out
            .split(": ")
            .nth(1)
            .unwrap_or_else(|| panic!("no bridge on node1: {out}"));
        mac_in(&node1, dev)
    } else {
        mac_in(&node1, &format!("vp{}", c.pod_index("x", "attacker")))
    };
    let victim_mac = mac_of(&netns(&c, "victim"));
    let mut frames = Vec::new();
    let mut id = 5000u16;
    for v6fam in [false, true] {
        let pick = |p: &str| if v6fam { v6(&c, p) } else { v4(&c, p) };
        let fam = if v6fam { "IPv6" } else { "IPv4" };
        let mut add =
            |name: String, dst_mac: Mac, src: IpAddr, to: &'static str, arrives: bool, tags: u8| {
                id += 1;
                frames.push(Frame {
                    name: format!("attacker: {fam} {name}"),
                    from: "attacker",
                    dst_mac,
                    src,
                    dst: pick(to),
                    id,
                    to,
                    arrives,
                    tags,
                });
            };
        add(
            "untagged to remote (control)".into(),
            gw_mac,
            pick("attacker"),
            "remote",
            true,
            0,
        );
        for to in ["victim", "victim2"] {
            let mac = if bridged && to == "victim" {
                victim_mac
            } else {
                gw_mac
            };
            add(
                format!("two VLAN-0 tags, forged as friend, to {to}"),
                mac,
                pick("friend"),
                to,
                false,
                2,
            );
        }
        if bridged {
            add(
                "one VLAN-0 tag to victim's MAC".into(),
                victim_mac,
                pick("attacker"),
                "victim",
                false,
                1,
            );
        }
    }
    let t0 = Instant::now();
    let wrong = deliver(&c, &frames, &["victim", "victim2", "remote"]);
    eprintln!(
        "{} frames ({}), {:?}",
        frames.len(),
        if bridged { "bridged" } else { "routed" },
        t0.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "{}\nnode1:\n{}",
        wrong.join("\n"),
        c.ruleset("node1")
    );
    assert!(
        guard_drops(&c, "node1", "VLAN tag (802.1Q)") > 0,
        "tagged frames were not counted"
    );
}

#[test]
fn vlan_tags_are_dropped_routed() {
    require_root!();
    vlan_tags_are_dropped(false);
}

#[test]
fn vlan_tags_are_dropped_bridged() {
    require_root!();
    require_br_netfilter!();
    vlan_tags_are_dropped(true);
}

/// An Ethernet/IPv4 ARP frame (broadcast request, or a gratuitous
/// reply when `reply`) from `mac` claiming `spa`.
fn arp_frame(mac: Mac, spa: Ipv4Addr, tpa: Ipv4Addr, reply: bool) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[
        0x08,
        0x06,
        0,
        1,
        0x08,
        0x00,
        6,
        4,
        0,
        if reply { 2 } else { 1 },
    ]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

/// The MAC of the node's neighbour entry for `ip` (any state), if any.
fn node_neigh(c: &SimCluster, ip: IpAddr) -> Option<String> {
    let out = run(Command::new("ip").args([
        "-n",
        &c.topo.node("node1").netns,
        "neigh",
        "show",
        &ip.to_string(),
    ]));
    out.split("lladdr ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
}

/// `pod`'s `src_` chain on node1, as `nft` lists it.
fn src_chain(c: &SimCluster, pod: &str) -> String {
    run(Command::new("ip").args([
        "netns",
        "exec",
        &c.topo.node("node1").netns,
        "nft",
        "list",
        "chain",
        "inet",
        "nftpol",
        &format!("src_x_{pod}"),
    ]))
}

fn apply_node1(c: &mut SimCluster) -> String {
    let dir = c.write_manifests();
    run(Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.topo.node("node1").netns,
            nftpol_bin(),
            "apply",
        ])
        .arg("--manifests")
        .arg(&dir)
        .args(["--node-name", "node1"]))
}

/// On a bridge, `attacker` claims `victim`'s IPv4 address in ARP (a
/// request to the gateway and a gratuitous reply) and its IPv6 address in
/// a neighbour advertisement: the guard drops and counts them, the
/// node's ARP entry for the victim keeps the victim's MAC, and the next
/// `apply` keeps every binding. Then the node's entry is poisoned
/// directly (as a claim from a port nftpol has not learned would do):
/// `apply` still keeps the victim on its own port and the attacker's
/// chain never admits the victim's address.
#[test]
fn arp_spoofing_moves_no_binding() {
    require_root!();
    require_br_netfilter!();
    let mut c = crate::attacker::attack_cluster(true);
    let (IpAddr::V4(victim4), IpAddr::V6(victim6)) = (v4(&c, "victim"), v6(&c, "victim")) else {
        panic!("pod addresses");
    };
    let victim_mac = mac_of(&netns(&c, "victim"));
    let attacker_mac = mac_of(&netns(&c, "attacker"));
    let hex = |m: Mac| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    assert_eq!(
        node_neigh(&c, v4(&c, "victim")),
        Some(hex(victim_mac)),
        "warm-up taught the node the victim"
    );
    let victim_chain = src_chain(&c, "victim");
    let gw = Ipv4Addr::new(10, 244, 1, 1);
    let mut frames = vec![
        arp_frame(attacker_mac, victim4, gw, false),
        arp_frame(attacker_mac, victim4, victim4, true),
    ];
    // An unsolicited advertisement (override flag) for the victim's
    // address, from the attacker's link-local address, hop limit 255.
    let ll = IpAddr::V6(link_local_of(&netns(&c, "attacker")));
    let all = IpAddr::V6("ff02::1".parse().expect("v6"));
    let mut na = crate::attacker::packet(crate::attacker::ICMPV6, ll, all, 1, 136, 255);
    let body = 40;
    na[body + 4] = 0x20; // override
    na[body + 8..body + 24].copy_from_slice(&victim6.octets());
    let ck = crate::attacker::icmp6_checksum(ll, all, &na[body..]);
    na[body + 2..body + 4].copy_from_slice(&ck.to_be_bytes());
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
    f.extend_from_slice(&attacker_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&na);
    frames.push(f);
    spawn_in(&netns(&c, "attacker"), move || send_frames(&frames))
        .join()
        .expect("sender");
    std::thread::sleep(SETTLE);
    assert_eq!(
        node_neigh(&c, v4(&c, "victim")),
        Some(hex(victim_mac)),
        "the ARP claim reached the node"
    );
    assert!(
        guard_drops(&c, "node1", "ARP sender address") >= 2,
        "ARP claims were not counted"
    );
    assert!(
        guard_drops(&c, "node1", "neighbour advertisement") >= 1,
        "the advertisement was not counted"
    );
    let out = apply_node1(&mut c);
    assert!(
        out.contains("no changes"),
        "apply after the claims changed something: {out}"
    );
    // A claim the guard never saw: the node's entry now names the
    // attacker's MAC, and its bridge port.
    run(Command::new("ip").args([
        "-n",
        &c.topo.node("node1").netns,
        "neigh",
        "replace",
        &victim4.to_string(),
        "lladdr",
        &hex(attacker_mac),
        "dev",
        crate::netns::BRIDGE,
        "nud",
        "reachable",
    ]));
    let out = apply_node1(&mut c);
    assert_eq!(
        src_chain(&c, "victim"),
        victim_chain,
        "the victim's binding moved: {out}"
    );
    let attacker_chain = src_chain(&c, "attacker");
    assert!(
        !attacker_chain.contains(&victim4.to_string()),
        "the attacker's chain admits the victim:\n{attacker_chain}"
    );
    // The victim is still validated and reachable as its policy says.
    let friend = netns(&c, "friend");
    let to = v4(&c, "victim");
    assert!(
        spawn_in(&friend, move || crate::probe::probe_once(
            to,
            crate::probe::Proto::Tcp,
            80,
            Duration::from_secs(2)
        ))
        .join()
        .expect("probe"),
        "friend -> victim after the spoofing"
    );
}
