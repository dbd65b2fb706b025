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
    eventually, netns, node_nft, packet, program_nodes, receiver, rule_packets, v4, v6, Arrivals,
    ARRIVAL_LIMIT, SETTLE, UDP,
};
use crate::cluster::{labels, nftpol_bin, SimCluster};
use crate::netns::run;
use crate::probe::spawn_in;
use crate::probe::ANSWER_LIMIT;
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
    let deadline = Instant::now() + ARRIVAL_LIMIT;
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
    eventually(|| {
        node_neigh(&c, v4(&c, "victim")) == Some(hex(victim_mac))
            && guard_drops(&c, "node1", "ARP sender address") >= 2
            && guard_drops(&c, "node1", "neighbour advertisement") >= 1
    });
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
            ANSWER_LIMIT
        ))
        .join()
        .expect("probe"),
        "friend -> victim after the spoofing"
    );
}

/// `nft list chain FAMILY nftpol CHAIN` on node1, and the packet count
/// of its rules whose comment holds `what`.
fn chain_drops(c: &SimCluster, family: &str, chain: &str, what: &str) -> u64 {
    node_nft(c, "node1", &["list", "chain", family, "nftpol", chain])
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(rule_packets)
        .sum()
}

/// Removes every address of a pod (a pod whose network is not ready, or
/// an attacker that answers nothing): it cannot be learned.
fn unaddress(c: &SimCluster, pod: &str) {
    crate::netns::ip(&netns(c, pod), &["addr", "flush", "dev", "eth0"]);
}

/// Gives a pod its addresses (IPv4 only with `v4`) and routes back.
fn readdress(c: &SimCluster, pod: &str, with_v4: bool) {
    let ns = netns(c, pod);
    if with_v4 {
        let a = format!("{}/24", v4(c, pod));
        crate::netns::ip(&ns, &["addr", "add", &a, "dev", "eth0"]);
        crate::netns::ip(&ns, &["route", "replace", "default", "via", "10.244.1.1"]);
    }
    let a = format!("{}/64", v6(c, pod));
    crate::netns::ip(&ns, &["addr", "add", &a, "dev", "eth0", "nodad"]);
    crate::netns::ip(
        &ns,
        &[
            "-6",
            "route",
            "replace",
            "default",
            "via",
            "fd00:10:244:1::1",
        ],
    );
}

/// A bridge port no pod is bound to fails closed. Three pods join node1's
/// bridge after it was programmed, none of them answering the node yet:
/// `apply` gives each port the `l2new_`/`srcnew_` pair. From its fresh
/// port, `intruder` (which never answers) forges `friend`'s address to
/// `victim` (which admits `friend`), sends with its own address to
/// `bystander` (no policy), and claims `victim`'s addresses in ARP and in
/// a neighbour advertisement: nothing arrives, the node's ARP entry for
/// the victim stays, each drop is counted. Then `newbie` and `six` (IPv6
/// only in its namespace) get their addresses: the next `apply` learns
/// them through their fail-closed ports (ARP reply, neighbour
/// advertisement to the node's nudge) and they work normally, while the
/// intruder's port stays closed. Tampering with the new chains is
/// repaired, and without them the forged frame is delivered.
#[test]
fn a_port_no_pod_is_bound_to_fails_closed() {
    require_root!();
    require_br_netfilter!();
    let mut c = crate::attacker::attack_pods(true, &["bystander"]);
    program_nodes(&mut c, true);
    for pod in ["intruder", "newbie", "six"] {
        c.add_pod("x", pod, "node1", labels(&[("pod", pod)]));
        unaddress(&c, pod);
    }
    c.topo.wait_links_up();
    let port = |c: &SimCluster, p: &str| format!("vp{}", c.pod_index("x", p));
    let out = apply_node1(&mut c);
    let guard = node_nft(&c, "node1", &["list", "table", "netdev", "nftpol"]);
    let inet = c.ruleset("node1");
    for p in ["intruder", "newbie", "six"] {
        assert!(
            guard.contains(&format!("chain l2new_{}", port(&c, p)))
                && inet.contains(&format!("chain srcnew_{}", port(&c, p))),
            "{p}'s port is not closed: {out}\n{guard}\n{inet}"
        );
    }
    let out = apply_node1(&mut c);
    assert!(out.contains("no changes"), "read-back differs: {out}");

    let (IpAddr::V4(victim4), IpAddr::V6(victim6)) = (v4(&c, "victim"), v6(&c, "victim")) else {
        panic!("pod addresses");
    };
    let victim_mac = mac_of(&netns(&c, "victim"));
    let bystander_mac = mac_of(&netns(&c, "bystander"));
    let intruder_mac = mac_of(&netns(&c, "intruder"));
    // The node resolves the victim (a datagram to its discard port);
    // bounded.
    let to = v4(&c, "victim");
    let deadline = Instant::now() + ARRIVAL_LIMIT;
    while node_neigh(&c, to).is_none() {
        assert!(
            Instant::now() < deadline,
            "the node never resolved the victim"
        );
        spawn_in(&c.topo.node("node1").netns, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
            let _ = s.send_to(b"", (to, 9));
        })
        .join()
        .expect("resolve");
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim_entry = node_neigh(&c, to);
    let forged = |c: &SimCluster, id0: u16, arrives: bool| {
        let mut frames = Vec::new();
        for (i, fam6) in [false, true].into_iter().enumerate() {
            let pick = |p: &str| if fam6 { v6(c, p) } else { v4(c, p) };
            let id = id0 + 2 * i as u16;
            frames.push(Frame {
                name: format!(
                    "intruder as friend to victim (IPv{})",
                    if fam6 { 6 } else { 4 }
                ),
                from: "intruder",
                dst_mac: victim_mac,
                src: pick("friend"),
                dst: pick("victim"),
                id,
                to: "victim",
                arrives,
                tags: 0,
            });
            frames.push(Frame {
                name: format!(
                    "intruder as itself to bystander (IPv{})",
                    if fam6 { 6 } else { 4 }
                ),
                from: "intruder",
                dst_mac: bystander_mac,
                src: pick("intruder"),
                dst: pick("bystander"),
                id: id + 1,
                to: "bystander",
                arrives,
                tags: 0,
            });
            frames.push(Frame {
                name: format!(
                    "friend to victim, control (IPv{})",
                    if fam6 { 6 } else { 4 }
                ),
                from: "friend",
                dst_mac: victim_mac,
                src: pick("friend"),
                dst: pick("victim"),
                id: id + 100,
                to: "victim",
                arrives: true,
                tags: 0,
            });
        }
        frames
    };
    let wrong = deliver(&c, &forged(&c, 7000, false), &["victim", "bystander"]);
    assert!(
        wrong.is_empty(),
        "{}\n{}",
        wrong.join("\n"),
        c.ruleset("node1")
    );

    let claims = claims_of(intruder_mac, victim4, victim6);
    let sent = claims.clone();
    spawn_in(&netns(&c, "intruder"), move || send_frames(&sent))
        .join()
        .expect("sender");
    std::thread::sleep(SETTLE);
    assert_eq!(
        node_neigh(&c, v4(&c, "victim")),
        victim_entry,
        "the intruder's ARP claim moved the node's entry"
    );
    let l2new = format!("l2new_{}", port(&c, "intruder"));
    let srcnew = format!("srcnew_{}", port(&c, "intruder"));
    eventually(|| {
        chain_drops(&c, "netdev", &l2new, "ARP sender address") >= 2
            && chain_drops(&c, "netdev", &l2new, "neighbour advertisement") >= 1
            && chain_drops(&c, "inet", &srcnew, "bound to no pod") >= 4
    });
    assert!(chain_drops(&c, "netdev", &l2new, "ARP sender address") >= 2);
    assert!(chain_drops(&c, "netdev", &l2new, "neighbour advertisement") >= 1);
    assert!(chain_drops(&c, "inet", &srcnew, "bound to no pod") >= 4);

    // The legitimate pods come up and are learned through their closed
    // ports (the node's nudge, or the kernel's own retries of the
    // resolution the first nudge started, is answered); bounded.
    readdress(&c, "newbie", true);
    readdress(&c, "six", false);
    let learned = |c: &SimCluster, p: &str| {
        node_nft(c, "node1", &["list", "chains", "inet"]).contains(&format!("chain src_x_{p} "))
    };
    let t0 = Instant::now();
    let mut applies = 0;
    // Bounded by time more than by count: on a loaded machine the
    // kernel's resolution retries and each apply take longer.
    while !(learned(&c, "newbie") && learned(&c, "six")) {
        assert!(
            applies < 100 && t0.elapsed() < ARRIVAL_LIMIT,
            "not learned after {applies} applies, {:?}",
            t0.elapsed()
        );
        if applies > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        apply_node1(&mut c);
        applies += 1;
    }
    eprintln!("learned after {applies} apply(s), {:?}", t0.elapsed());
    let guard = node_nft(&c, "node1", &["list", "table", "netdev", "nftpol"]);
    for p in ["newbie", "six"] {
        assert!(
            src_chain(&c, p).contains(&port(&c, p))
                && !guard.contains(&format!("chain l2new_{}", port(&c, p))),
            "{p} was not learned on its own port:\n{guard}"
        );
    }
    assert!(guard.contains(&format!("chain {l2new}")), "{guard}");
    let probe = |from: &str, to: IpAddr| {
        spawn_in(&netns(&c, from), move || {
            crate::probe::probe_once(to, crate::probe::Proto::Tcp, 80, ANSWER_LIMIT)
        })
        .join()
        .expect("probe")
    };
    for (from, to) in [
        ("newbie", v4(&c, "bystander")),
        ("newbie", v6(&c, "bystander")),
        ("six", v6(&c, "bystander")),
        ("bystander", v6(&c, "six")),
    ] {
        assert!(probe(from, to), "{from} -> {to} after learning");
    }

    // Tampering with the new chains is seen and repaired.
    node_nft(&c, "node1", &["flush", "chain", "netdev", "nftpol", &l2new]);
    node_nft(&c, "node1", &["delete", "chain", "inet", "nftpol", &srcnew]);
    let out = apply_node1(&mut c);
    assert!(!out.contains("no changes"), "tampering not seen: {out}");
    assert!(
        node_nft(&c, "node1", &["list", "chain", "netdev", "nftpol", &l2new])
            .contains("ARP sender address")
            && node_nft(&c, "node1", &["list", "chain", "inet", "nftpol", &srcnew])
                .contains("bound to no pod"),
        "not repaired: {out}"
    );

    // Without the new chains the forged frames arrive (the attack the
    // chains stop is real on this topology).
    node_nft(
        &c,
        "node1",
        &["delete", "chain", "netdev", "nftpol", &l2new],
    );
    node_nft(&c, "node1", &["delete", "chain", "inet", "nftpol", &srcnew]);
    let frames: Vec<Frame> = forged(&c, 7200, true)
        .into_iter()
        .filter(|f| f.name.contains("as friend"))
        .collect();
    let wrong = deliver(&c, &frames, &["victim"]);
    assert!(wrong.is_empty(), "without the chains: {}", wrong.join("\n"));
}

/// Waits (bounded by `limit`) until `nft list ARGS` on node1 holds
/// `what`; the time it took, or `Err` with the listing.
fn wait_listing(
    c: &SimCluster,
    args: &[&str],
    what: &str,
    limit: Duration,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    loop {
        let out = node_nft(c, "node1", args);
        if out.contains(what) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return Err(out);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent as deployed (learning pod interfaces from the node, no
/// `--pod-interfaces`): a pod that joins node1's bridge before its
/// network is ready gets a closed port; when its addresses come up, with
/// no API event at all, the agent learns it in seconds (while a bridged
/// pod is unlearned it looks again every second and nudges it), not at
/// the drift check (10 minutes here, far past the generous bounds a
/// loaded machine needs), and the pod then works.
#[test]
fn the_agent_learns_a_bridged_pod_without_an_event() {
    require_root!();
    require_br_netfilter!();
    let mut c = crate::attacker::attack_pods(true, &["bystander"]);
    program_nodes(&mut c, true);
    let dir = c.dir.join("agent-manifests");
    c.write_manifests_to(&dir);
    let node1 = c.topo.node("node1").netns.clone();
    let mut agent = crate::agent::Agent::spawn(
        &node1,
        "node1",
        &dir,
        c.dir.join("agent.log"),
        &["--drift-interval", "600s"],
    );
    agent.wait_reconciled().unwrap_or_else(|e| panic!("{e}"));
    c.add_pod("x", "late", "node1", labels(&[("pod", "late")]));
    unaddress(&c, "late");
    c.topo.wait_links_up();
    c.write_manifests_to(&dir);
    let port = format!("vp{}", c.pod_index("x", "late"));
    let guard = ["list", "table", "netdev", "nftpol"];
    wait_listing(
        &c,
        &guard,
        &format!("chain l2new_{port} "),
        crate::agent::CONVERGE,
    )
    .unwrap_or_else(|out| panic!("the new port was not closed:\n{out}\n{}", agent.log_text()));
    readdress(&c, "late", true);
    let took = wait_listing(
        &c,
        &["list", "chains", "inet"],
        "chain src_x_late ",
        crate::agent::CONVERGE,
    )
    .unwrap_or_else(|out| panic!("the pod was not learned:\n{out}\n{}", agent.log_text()));
    eprintln!("learned {took:?} after its addresses came up");
    let out = node_nft(&c, "node1", &guard);
    assert!(!out.contains(&format!("chain l2new_{port} ")), "{out}");
    for (from, to) in [
        ("late", v4(&c, "bystander")),
        ("late", v6(&c, "bystander")),
        ("bystander", v4(&c, "late")),
    ] {
        let ok = spawn_in(&netns(&c, from), move || {
            crate::probe::probe_once(to, crate::probe::Proto::Tcp, 80, ANSWER_LIMIT)
        })
        .join()
        .expect("probe");
        assert!(ok, "{from} -> {to} after learning\n{}", agent.log_text());
    }
}

/// A pod cannot steal a newer pod's port by claiming its addresses in ARP
/// before that pod's network is up. `intruder` joins node1's bridge and
/// never answers for its own address (its port stays closed); `late`
/// joins with its network not ready yet. The intruder claims `late`'s
/// addresses (ARP request to the gateway, gratuitous reply, neighbour
/// advertisement), which its closed port lets through since `late` is not
/// learned, so the node's ARP entry for `late` names the intruder. When
/// `late`'s addresses come up it is learned on its own port (from the
/// addresses in its namespace, not from the node's ARP table), the
/// intruder's port stays closed, and frames the intruder sends as `late`
/// are not delivered while `late`'s own are.
#[test]
fn a_claim_of_a_pod_not_yet_up_does_not_bind_it_to_the_claimer() {
    require_root!();
    require_br_netfilter!();
    let mut c = crate::attacker::attack_pods(true, &["bystander"]);
    program_nodes(&mut c, true);
    for pod in ["intruder", "late"] {
        c.add_pod("x", pod, "node1", labels(&[("pod", pod)]));
        unaddress(&c, pod);
    }
    c.topo.wait_links_up();
    let port = |c: &SimCluster, p: &str| format!("vp{}", c.pod_index("x", p));
    apply_node1(&mut c);
    let (IpAddr::V4(late4), IpAddr::V6(late6)) = (v4(&c, "late"), v6(&c, "late")) else {
        panic!("pod addresses");
    };
    let intruder_mac = mac_of(&netns(&c, "intruder"));
    let claims = claims_of(intruder_mac, late4, late6);
    let hex = intruder_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let claim = |c: &SimCluster| {
        let sent = claims.clone();
        spawn_in(&netns(c, "intruder"), move || send_frames(&sent))
            .join()
            .expect("sender");
    };
    claim(&c);
    eventually(|| node_neigh(&c, v4(&c, "late")) == Some(hex.clone()));
    assert_eq!(
        node_neigh(&c, v4(&c, "late")),
        Some(hex.clone()),
        "the claim did not reach the node (the attack is not set up)"
    );

    // `late`'s network comes up while the intruder keeps claiming it;
    // bounded.
    readdress(&c, "late", true);
    let learned = |c: &SimCluster| {
        node_nft(c, "node1", &["list", "chains", "inet"]).contains("chain src_x_late ")
    };
    let mut applies = 0;
    let t0 = Instant::now();
    // Bounded by time more than by count: on a loaded machine the
    // kernel's resolution retries and each apply take longer.
    while !learned(&c) {
        assert!(
            applies < 100 && t0.elapsed() < ARRIVAL_LIMIT,
            "late not learned after {applies} applies, {:?}",
            t0.elapsed()
        );
        if applies > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        claim(&c);
        apply_node1(&mut c);
        applies += 1;
    }
    let guard = node_nft(&c, "node1", &["list", "table", "netdev", "nftpol"]);
    let chain = src_chain(&c, "late");
    assert!(
        chain.contains(&port(&c, "late")),
        "late was not learned on its own port ({}):\n{chain}\n{guard}",
        port(&c, "late")
    );
    assert!(
        !chain.contains(&port(&c, "intruder")),
        "late was learned on the intruder's port:\n{chain}"
    );
    assert!(
        guard.contains(&format!("chain l2new_{} ", port(&c, "intruder"))),
        "the intruder's port is not closed:\n{guard}"
    );
    let inet = c.ruleset("node1");
    assert!(
        !inet.contains("chain src_x_intruder "),
        "the intruder was learned:\n{inet}"
    );
    let bystander_mac = mac_of(&netns(&c, "bystander"));
    let mut frames = Vec::new();
    for (i, fam6) in [false, true].into_iter().enumerate() {
        let pick = |p: &str| if fam6 { v6(&c, p) } else { v4(&c, p) };
        let v = if fam6 { 6 } else { 4 };
        frames.push(Frame {
            name: format!("intruder as late to bystander (IPv{v})"),
            from: "intruder",
            dst_mac: bystander_mac,
            src: pick("late"),
            dst: pick("bystander"),
            id: 7400 + 2 * i as u16,
            to: "bystander",
            arrives: false,
            tags: 0,
        });
        frames.push(Frame {
            name: format!("late as itself to bystander, control (IPv{v})"),
            from: "late",
            dst_mac: bystander_mac,
            src: pick("late"),
            dst: pick("bystander"),
            id: 7401 + 2 * i as u16,
            to: "bystander",
            arrives: true,
            tags: 0,
        });
    }
    let wrong = deliver(&c, &frames, &["bystander"]);
    assert!(
        wrong.is_empty(),
        "{}\n{}",
        wrong.join("\n"),
        c.ruleset("node1")
    );
}

/// What an intruder sends to claim `v4` and `v6` as its own: an ARP
/// request to the gateway and a gratuitous ARP reply with `v4` as sender,
/// and an override neighbour advertisement for `v6` to all nodes.
fn claims_of(intruder_mac: Mac, v4: Ipv4Addr, v6: Ipv6Addr) -> Vec<Vec<u8>> {
    let gw = Ipv4Addr::new(10, 244, 1, 1);
    let mut claims = vec![
        arp_frame(intruder_mac, v4, gw, false),
        arp_frame(intruder_mac, v4, v4, true),
    ];
    let ll = IpAddr::V6("fe80::bad".parse().expect("v6"));
    let all = IpAddr::V6("ff02::1".parse().expect("v6"));
    let mut na = crate::attacker::packet(crate::attacker::ICMPV6, ll, all, 1, 136, 255);
    let body = 40;
    na[body + 4] = 0x20; // override
    na[body + 8..body + 24].copy_from_slice(&v6.octets());
    let ck = crate::attacker::icmp6_checksum(ll, all, &na[body..]);
    na[body + 2..body + 4].copy_from_slice(&ck.to_be_bytes());
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
    f.extend_from_slice(&intruder_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&na);
    claims.push(f);
    claims
}
