//! ICMP errors that conntrack calls RELATED, sent by a pod that is not an
//! end of the connection they name: a hostile pod with CAP_NET_RAW embeds
//! the tuple of a connection between two other pods in a hand-built error
//! and sends it with its own (valid) source to one of them, which policy
//! forbids it to reach. Such an error carries any payload after the
//! embedded header (a channel past policy) and acts on the victim's stack
//! (a lowered path MTU, an aborted connection), so it must be dropped;
//! the same error from the connection's other end must still arrive.
//!
//! Cluster (namespace `x`): `attacker`, `friend`, `victim` and `open` on
//! node1, `remote` and `victim2` on node2. `victim` and `victim2` admit
//! only `friend`; `attacker` may reach only `remote`; `open` has no
//! policy. `friend` opens UDP flows to `victim` and `victim2`, so the
//! nodes hold their conntrack entries. The attacks: `attacker` -> `victim`
//! (both policies deny), `attacker` -> `friend` (only the attacker's
//! egress denies), `open` -> `victim` (only the victim's ingress denies),
//! `attacker` -> `victim2` on the other node. Every IPv4 error type
//! conntrack relates and the ICMPv6 error types, routed and bridged.
//!
//! The errors are received by raw ICMP/ICMPv6 sockets in the destination
//! pods and recognised by a marker and id after the embedded header.

use crate::attacker::{
    attack_pods, fold, icmp6_checksum, ip_header, netns, program_nodes, raw_receiver, rule_packets,
    send_raw, sum16, v4, v6, ARRIVAL_LIMIT, SETTLE,
};
use crate::cluster::SimCluster;
use crate::probe::{flow_socket, spawn_in};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const UDP: u8 = 17;
/// The payload an error carries after the embedded header, then its id.
const MARKER: &[u8] = b"nftpol-icmprel";
/// The port of the honest flows (nothing listens: the victim's own port
/// unreachable answers them, which does not matter here).
const FLOW_DPORT: u16 = 47_100;
/// Source ports of friend's honest flows, to victim and to victim2: below
/// the kernel's ephemeral range (32768-60999), so no socket the kernel
/// numbers can already hold them.
const FLOW_SPORT: [u16; 2] = [27_201, 27_202];

/// IPv4 (type, code): every error conntrack relates to a connection.
const V4_ERRORS: [(u8, u8, &str); 6] = [
    (3, 3, "port unreachable"),
    (3, 4, "fragmentation needed"),
    (4, 0, "source quench"),
    (5, 1, "redirect"),
    (11, 0, "time exceeded"),
    (12, 0, "parameter problem"),
];
/// ICMPv6 (type, code): conntrack calls every type below 128 an error,
/// assigned or not.
const V6_ERRORS: [(u8, u8, &str); 5] = [
    (1, 4, "port unreachable"),
    (2, 0, "packet too big"),
    (3, 0, "time exceeded"),
    (4, 0, "parameter problem"),
    (100, 0, "private experimentation type"),
];

/// An ICMP(v6) error from `src` to `dst` about the UDP datagram
/// `inner` = (source, destination, source port, destination port) that
/// `dst` sent, then [`MARKER`] and `id`: a whole IP packet.
fn icmp_error(
    src: IpAddr,
    dst: IpAddr,
    (ty, code): (u8, u8),
    inner: (IpAddr, IpAddr, u16, u16),
    id: u16,
) -> Vec<u8> {
    let (isrc, idst, sport, dport) = inner;
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(8u16 + 64).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    let inner_proto = UDP;
    let mut msg = vec![ty, code, 0, 0, 0, 0, 0, 0];
    // A path MTU for the errors that carry one (frag needed, too big).
    match (src.is_ipv6(), ty, code) {
        (false, 3, 4) => msg[6..8].copy_from_slice(&576u16.to_be_bytes()),
        (true, 2, _) => msg[4..8].copy_from_slice(&1280u32.to_be_bytes()),
        _ => {}
    }
    msg.extend(ip_header(inner_proto, isrc, idst, 64, 8 + 64));
    msg.extend(udp);
    msg.extend_from_slice(MARKER);
    msg.extend_from_slice(&id.to_be_bytes());
    let proto = if src.is_ipv6() { ICMPV6 } else { ICMP };
    let ck = if src.is_ipv6() {
        icmp6_checksum(src, dst, &msg)
    } else {
        fold(sum16(&msg))
    };
    msg[2..4].copy_from_slice(&ck.to_be_bytes());
    let mut p = ip_header(proto, src, dst, 64, msg.len());
    p.extend(msg);
    p
}

/// (source, id) of every marked error a pod's stack received.
type Seen = Arc<Mutex<BTreeSet<(IpAddr, u16)>>>;

/// Raw ICMP and ICMPv6 sockets in `netns`, recording marked errors until
/// `stop` is set (or a minute passed).
fn error_receiver(netns: &str, stop: Arc<AtomicBool>) -> (Seen, std::thread::JoinHandle<()>) {
    let socks = [(libc::AF_INET, ICMP), (libc::AF_INET6, ICMPV6)];
    raw_receiver(netns, &socks, stop, |_, src, msg| {
        let tail = msg.len().checked_sub(MARKER.len() + 2)?;
        (&msg[tail..tail + MARKER.len()] == MARKER).then(|| {
            (
                src,
                u16::from_be_bytes([msg[msg.len() - 2], msg[msg.len() - 1]]),
            )
        })
    })
}

struct Case {
    name: String,
    from: &'static str,
    to: &'static str,
    packet: Vec<u8>,
    src: IpAddr,
    dst: IpAddr,
    id: u16,
    arrives: bool,
}

/// The cluster of this module, programmed by `nftpol apply` on both nodes.
fn related_cluster(bridged: bool) -> SimCluster {
    let mut c = attack_pods(bridged, &["open"]);
    program_nodes(&mut c, bridged);
    c
}

/// friend's honest UDP flows to victim and victim2 (policy admits them),
/// in both families: the conntrack entries the errors name.
fn open_flows(c: &SimCluster) {
    let targets: Vec<(IpAddr, u16)> = [false, true]
        .iter()
        .flat_map(|&six| {
            let pick = |p: &str| if six { v6(c, p) } else { v4(c, p) };
            [
                (pick("victim"), FLOW_SPORT[0]),
                (pick("victim2"), FLOW_SPORT[1]),
            ]
        })
        .collect();
    let sent = targets.clone();
    spawn_in(&netns(c, "friend"), move || {
        for (dst, sport) in sent {
            let bind: IpAddr = if dst.is_ipv6() {
                Ipv6Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::UNSPECIFIED.into()
            };
            // The IPv6 socket binds the port the IPv4 one held a moment
            // before (dual-stack): see flow_socket.
            let s = flow_socket(std::net::SocketAddr::new(bind, sport));
            s.send_to(b"flow", (dst, FLOW_DPORT)).expect("send flow");
        }
    })
    .join()
    .expect("flows");
    // Every node the flows cross holds their entries before any error is
    // sent (else a related error reads as unrelated): polled, since a
    // loaded machine can run the forwarding softirq late. victim is on
    // friend's node, victim2 on the other.
    let src_of = |dst: &IpAddr| {
        if dst.is_ipv6() {
            v6(c, "friend")
        } else {
            v4(c, "friend")
        }
    };
    let on_node1: Vec<(IpAddr, IpAddr, u16)> =
        targets.iter().map(|(d, sp)| (src_of(d), *d, *sp)).collect();
    let on_node2: Vec<(IpAddr, IpAddr, u16)> = on_node1
        .iter()
        .copied()
        .filter(|&(_, _, sp)| sp == FLOW_SPORT[1])
        .collect();
    for (node, flows) in [("node1", on_node1), ("node2", on_node2)] {
        let ns = c.topo.node(node).netns.clone();
        let missing = spawn_in(&ns, move || {
            let t0 = Instant::now();
            loop {
                let mut have = BTreeSet::new();
                let mut ct = nftpol::netlink::conntrack::Conntrack::open().expect("conntrack");
                ct.dump(|e| {
                    if e.orig.proto == UDP && e.orig.dport == FLOW_DPORT {
                        have.insert((e.orig.src, e.orig.dst, e.orig.sport));
                    }
                })
                .expect("conntrack dump");
                let missing: Vec<_> = flows
                    .iter()
                    .filter(|f| !have.contains(f))
                    .copied()
                    .collect();
                if missing.is_empty() || t0.elapsed() > ARRIVAL_LIMIT {
                    return missing;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .expect("conntrack poll");
        assert!(
            missing.is_empty(),
            "{node} never tracked the flows {missing:?}"
        );
    }
}

fn cases(c: &SimCluster) -> Vec<Case> {
    let mut out = Vec::new();
    let mut id = 3000u16;
    for six in [false, true] {
        let pick = |p: &str| if six { v6(c, p) } else { v4(c, p) };
        let fam = if six { "IPv6" } else { "IPv4" };
        let errors: &[(u8, u8, &str)] = if six { &V6_ERRORS } else { &V4_ERRORS };
        // (sender, receiver, the flow's peer of the receiver, the flow's
        // source port, whether the receiver sent the flow's datagram,
        // must arrive, what it shows)
        let shapes: [(&str, &str, &str, u16, bool, bool, &str); 6] = [
            (
                "attacker",
                "victim",
                "friend",
                FLOW_SPORT[0],
                false,
                false,
                "both policies deny",
            ),
            (
                "attacker",
                "friend",
                "victim",
                FLOW_SPORT[0],
                true,
                false,
                "the sender's egress denies",
            ),
            (
                "open",
                "victim",
                "friend",
                FLOW_SPORT[0],
                false,
                false,
                "the receiver's ingress denies",
            ),
            (
                "attacker",
                "victim2",
                "friend",
                FLOW_SPORT[1],
                false,
                false,
                "to the other node",
            ),
            (
                "friend",
                "victim",
                "friend",
                FLOW_SPORT[0],
                false,
                true,
                "the flow's own end (control)",
            ),
            (
                "friend",
                "victim2",
                "friend",
                FLOW_SPORT[1],
                false,
                true,
                "the flow's own end across nodes (control)",
            ),
        ];
        for &(from, to, peer, sport, to_is_client, arrives, what) in &shapes {
            for &(ty, code, tname) in errors {
                id += 1;
                // The datagram the receiver sent that the error is about:
                // the flow's, or the answer to it.
                let inner = if to_is_client {
                    (pick(to), pick(peer), sport, FLOW_DPORT)
                } else {
                    (pick(to), pick(peer), FLOW_DPORT, sport)
                };
                let (src, dst) = (pick(from), pick(to));
                out.push(Case {
                    name: format!("{fam} {tname} {from} -> {to} ({what})"),
                    from,
                    to,
                    packet: icmp_error(src, dst, (ty, code), inner, id),
                    src,
                    dst,
                    id,
                    arrives,
                });
            }
        }
    }
    out
}

/// Sends every case from its pod, then lists the ones whose outcome is
/// wrong.
fn run_cases(c: &SimCluster, cases: &[Case]) -> Vec<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let receivers: Vec<(&str, Seen, std::thread::JoinHandle<()>)> = ["victim", "victim2", "friend"]
        .into_iter()
        .map(|p| {
            let (seen, h) = error_receiver(&netns(c, p), stop.clone());
            (p, seen, h)
        })
        .collect();
    for from in ["attacker", "open", "friend"] {
        let packets: Vec<(IpAddr, Vec<u8>)> = cases
            .iter()
            .filter(|k| k.from == from)
            .map(|k| (k.dst, k.packet.clone()))
            .collect();
        spawn_in(&netns(c, from), move || send_raw(&packets))
            .join()
            .expect("sender");
    }
    let arrived = |k: &Case| {
        receivers
            .iter()
            .any(|(p, seen, _)| *p == k.to && seen.lock().expect("lock").contains(&(k.src, k.id)))
    };
    let sent = Instant::now();
    while sent.elapsed() < SETTLE
        || (!cases.iter().all(|k| !k.arrives || arrived(k)) && sent.elapsed() < ARRIVAL_LIMIT)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let wrong = cases
        .iter()
        .filter(|k| arrived(k) != k.arrives)
        .map(|k| {
            format!(
                "{}: {} (must {}arrive)",
                k.name,
                if k.arrives { "lost" } else { "arrived" },
                if k.arrives { "" } else { "not " }
            )
        })
        .collect();
    for (_, _, h) in receivers {
        h.join().expect("receiver");
    }
    wrong
}

fn errors_from_outside_a_connection_are_dropped(bridged: bool) {
    let c = related_cluster(bridged);
    open_flows(&c);
    let t0 = Instant::now();
    let cases = cases(&c);
    let wrong = run_cases(&c, &cases);
    eprintln!(
        "{} ICMP errors ({}), {:?}",
        cases.len(),
        if bridged { "bridged" } else { "routed" },
        t0.elapsed()
    );
    let rs = c.ruleset("node1");
    assert!(wrong.is_empty(), "{}\nnode1:\n{rs}", wrong.join("\n"));
    // Dropped by the attacker's related-packet chain, counted.
    let attacker = v4(&c, "attacker");
    let counted = rs
        .lines()
        .find(|l| l.contains(&format!("related packet from {attacker},")))
        .and_then(rule_packets);
    assert!(counted.is_some_and(|n| n > 0), "{counted:?}\n{rs}");
}

#[test]
fn related_errors_routed() {
    require_root!();
    errors_from_outside_a_connection_are_dropped(false);
}

#[test]
fn related_errors_bridged() {
    require_root!();
    require_br_netfilter!();
    errors_from_outside_a_connection_are_dropped(true);
}
