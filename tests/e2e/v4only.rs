//! An IPv4-only pod whose kernel still runs IPv6 on its link gets no IPv6
//! exemption from source validation: neighbour-discovery-shaped ICMPv6
//! it sends from a link-local source (as a dual-stack pod may) or from the
//! IPv6 address its kernel has but the API does not list is dropped at
//! its interface and counted, in the kernel, not only in the compiled
//! chain. The same message from a dual-stack pod reaches the node (the
//! control).

use crate::attacker::{netns, packet, program_nodes, receiver, send_raw, ARRIVAL_LIMIT, SETTLE};
use crate::cluster::{labels, SimCluster};
use crate::netns::run;
use crate::probe::spawn_in;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ICMPV6: u8 = 58;
const NEIGHBOUR_SOLICITATION: u8 = 135;

/// The packets node1 dropped and counted for x/v4only (its source
/// validation chain, and any other drop naming it).
fn drops(c: &SimCluster) -> u64 {
    let out = run(Command::new("ip").args([
        "netns",
        "exec",
        &c.topo.node("node1").netns,
        "nft",
        "list",
        "ruleset",
    ]));
    out.lines()
        .filter(|l| l.contains("drop") && l.contains("x/v4only"))
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "packets").nth(1))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

#[test]
fn nd_from_an_ipv4_only_pod_is_dropped() {
    require_root!();
    let mut c = SimCluster::new(false);
    c.add_namespace("x", labels(&[("ns", "x")]));
    c.add_pod("x", "dual", "node1", labels(&[("pod", "dual")]));
    // A pod the API lists with its IPv4 address only; its namespace has
    // an IPv6 address and link-local as every test pod does. Added to
    // the topology last, so the other pods' indices stay theirs.
    let net = c.topo.add_pod("node1");
    c.extra_objects.push(format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: v4only, namespace: x, labels: {{pod: v4only}}}}\n\
         spec: {{nodeName: node1, containers: [{{name: c, image: i}}]}}\n\
         status: {{phase: Running, podIP: {v4}, podIPs: [{{ip: {v4}}}]}}\n",
        v4 = net.v4
    ));
    program_nodes(&mut c, false);
    let rs = c.ruleset("node1");
    assert!(rs.contains("chain src_x_v4only"), "{rs}");

    let node1 = c.topo.node("node1");
    let node_v6 = IpAddr::V6(node1.fabric_v6);
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, h) = receiver(&node1.netns, stop.clone());
    let link_local: IpAddr = "fe80::4:1".parse().expect("v6");
    // (sender netns, source, id, must arrive)
    let cases = [
        (netns(&c, "dual"), link_local, 4001u16, true),
        (net.netns.clone(), link_local, 4002, false),
        (net.netns.clone(), IpAddr::V6(net.v6), 4003, false),
    ];
    let before = drops(&c);
    for (from, src, id, _) in &cases {
        let p = vec![(
            node_v6,
            packet(ICMPV6, *src, node_v6, *id, NEIGHBOUR_SOLICITATION, 255),
        )];
        spawn_in(from, move || send_raw(&p)).join().expect("sender");
    }
    let arrived = |id: u16, src: IpAddr| seen.lock().expect("lock").contains(&(ICMPV6, src, id));
    let sent = Instant::now();
    while sent.elapsed() < SETTLE || (!arrived(4001, link_local) && sent.elapsed() < ARRIVAL_LIMIT)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    h.join().expect("receiver");
    for (_, src, id, arrives) in &cases {
        assert_eq!(
            arrived(*id, *src),
            *arrives,
            "NS from {src} (id {id}) must {}arrive at the node\n{rs}",
            if *arrives { "" } else { "not " }
        );
    }
    let counted = drops(&c) - before;
    // The pod's own kernel resolves its gateway with neighbour
    // solicitations first: those are dropped and counted too, so the
    // crafted packets may never leave its neighbour queue. Either way its
    // IPv6 stops at its interface; with the exemption (as a dual-stack
    // pod has) the resolution and the crafted packet pass: the control.
    assert!(counted >= 1, "{counted} drops counted\n{rs}");
}
