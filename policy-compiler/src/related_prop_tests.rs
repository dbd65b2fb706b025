//! Property tests of related packets (ICMP errors conntrack ties to a
//! connection) on generated clusters: the compiled rulesets of both
//! nodes, run by the IR interpreter along a packet's whole path, deliver
//! an error exactly when SECURITY.md says they do, and a pod's error
//! never reaches a peer it has no connection with that the semantic
//! evaluator allowed.
//!
//! The evaluator judges new connections only; it has no notion of a
//! related packet. So the property is stated against a small model of
//! the kernel and of the design, and tied to the evaluator through the
//! connections: a connection's conntrack entry exists on a node only if
//! the rulesets let its first packet that far, and a delivered error from
//! a pod must name a connection the evaluator allows, with the pod at one
//! end and the error's destination at the other.
//!
//! The kernel model: an error from S to D naming a connection is related
//! on a node when that node holds the connection's entry and D is the end
//! the named direction's packets came from (the kernel compares the outer
//! destination with the embedded source); anything else is invalid. The
//! design: a sender pod's interface admits only the pod's own addresses;
//! a related error whose source is a pod of the judging node passes only
//! when that address is the source of the connection's original or reply
//! direction; other related errors (routers, hosts outside, the node,
//! pods of other nodes, which their own node judged) pass.
//!
//! Not modelled: DNAT (the interpreter's packets carry only the two
//! directions' sources, which is all the `rel_` chains read; a Service's
//! backend is the reply source, as here) and IPv6 extension headers
//! (conntrack finds the ICMPv6 header behind them before any chain runs).

use crate::audit::AuditOptions;
use crate::compile::{compile_node_with, CHAIN_FORWARD, CHAIN_INPUT};
use crate::eval::{allowed, Endpoint};
use crate::index::Cluster;
use crate::interp::{hook_accepts, ingress_accepts, Packet};
use crate::ir::{l4, CtState, Family, Ruleset};
use crate::model::{Pod, Protocol};
use crate::prop_tests::{cluster_strategy, NODES, NODE_IPS, PORTS};
use crate::NodeNet;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Hosts outside the cluster: clients and servers of connections, and
/// routers on a path that send errors about them.
const OUTSIDE: [&str; 4] = ["192.168.7.1", "172.18.0.254", "fd99::1", "fc00::fe"];
/// Addresses a pod may write that belong to nobody (in the pod ranges too).
const NOBODY: [&str; 2] = ["10.0.1.200", "fd00::1c8"];
/// Error types: IPv4 ones conntrack relates, ICMPv6 ones (every type
/// below 128 is an error to conntrack, assigned or not).
const V4_ERRORS: [u16; 5] = [3, 4, 5, 11, 12];
const V6_ERRORS: [u16; 5] = [1, 2, 3, 4, 100];

/// Who puts a packet on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sender {
    /// A pod (namespace/name): its node judges it, after its interface's
    /// source validation.
    Pod(String, String),
    /// A node's own stack: leaves through `output`, which nftpol does not
    /// filter.
    Node(usize),
    /// Outside the cluster (a host or a router).
    Outside,
}

/// A connection whose first packet went from `client` to `server`.
#[derive(Clone, Debug)]
struct Conn {
    client: IpAddr,
    server: IpAddr,
    proto: Protocol,
    port: u16,
    /// Nodes that hold its conntrack entry: the ones the first packet
    /// reached and passed.
    on: BTreeSet<usize>,
    /// Whether any base chain judged the first packet: a node's own
    /// connection to its own pod leaves through `output` only, which
    /// nftpol never filters (kubelet probes), whatever the evaluator says.
    judged: bool,
}

fn node_of_addr(c: &Cluster, a: IpAddr) -> Option<usize> {
    if let Some(i) = NODE_IPS
        .iter()
        .position(|(v4, v6)| v4.parse::<IpAddr>().ok() == Some(a) || v6.parse().ok() == Some(a))
    {
        return Some(i);
    }
    c.claimants(a)
        .first()
        .and_then(|p| p.node_name.as_deref())
        .and_then(|n| NODES.iter().position(|x| *x == n))
}

fn is_node_ip(n: usize, a: IpAddr) -> bool {
    let (v4, v6) = NODE_IPS[n];
    v4.parse::<IpAddr>().ok() == Some(a) || v6.parse::<IpAddr>().ok() == Some(a)
}

fn pod_node(p: &Pod) -> Option<usize> {
    NODES
        .iter()
        .position(|n| Some(*n) == p.node_name.as_deref())
}

/// The nodes a packet from `from` to `daddr` is judged on, in order,
/// with the base chain: the sender's node (none for a node's own
/// packets, which leave through `output`), then the destination's node
/// when it is another.
fn path(c: &Cluster, from: &Sender, daddr: IpAddr) -> (Option<usize>, Vec<(usize, &'static str)>) {
    let hook = |n: usize| {
        if is_node_ip(n, daddr) {
            CHAIN_INPUT
        } else {
            CHAIN_FORWARD
        }
    };
    let first = match from {
        Sender::Pod(ns, name) => c.pod(ns, name).and_then(pod_node),
        Sender::Node(n) => Some(*n),
        Sender::Outside => None,
    };
    let mut hops = Vec::new();
    if let (Some(n), Sender::Pod(..)) = (first, from) {
        hops.push((n, hook(n)));
    }
    if let Some(d) = node_of_addr(c, daddr) {
        if Some(d) != first {
            hops.push((d, hook(d)));
        }
    }
    (first, hops)
}

fn interface(p: &Pod) -> String {
    format!("if-{}-{}", p.namespace, p.name)
}

/// Whether the sender's interface lets a packet with `saddr` through
/// (pods only: nodes and outside hosts have no pod interface).
fn leaves_sender(c: &Cluster, rulesets: &[Ruleset], from: &Sender, pkt: &Packet) -> bool {
    let Sender::Pod(ns, name) = from else {
        return true;
    };
    let Some(p) = c.pod(ns, name) else {
        return false;
    };
    let Some(n) = pod_node(p) else {
        return false;
    };
    ingress_accepts(&rulesets[n], &interface(p), pkt)
}

/// A pod with an address of `family`, a node of the cluster, or outside.
#[derive(Clone, Debug)]
struct Party {
    sender: Sender,
    addr: IpAddr,
    pod: Option<Endpoint>,
}

fn parties(c: &Cluster, family: Family) -> Vec<Party> {
    let mut v: Vec<Party> = c
        .pods()
        .filter(|p| p.is_policy_pod())
        .filter_map(|p| {
            let addr = p.ips.iter().copied().find(|a| Family::of(a) == family)?;
            Some(Party {
                sender: Sender::Pod(p.namespace.clone(), p.name.clone()),
                addr,
                pod: Some(Endpoint::pod(&p.namespace, &p.name)),
            })
        })
        .collect();
    for (n, (v4, v6)) in NODE_IPS.iter().enumerate() {
        let addr: IpAddr = if family == Family::Ipv4 { v4 } else { v6 }
            .parse()
            .expect("ip");
        v.push(Party {
            sender: Sender::Node(n),
            addr,
            pod: None,
        });
    }
    for o in OUTSIDE {
        let addr: IpAddr = o.parse().expect("ip");
        if Family::of(&addr) == family {
            v.push(Party {
                sender: Sender::Outside,
                addr,
                pod: None,
            });
        }
    }
    v
}

/// The connection from `client` to `server`: its first packet run along
/// its path; the entry exists on every node up to the first that drops.
fn open(
    c: &Cluster,
    rulesets: &[Ruleset],
    client: &Party,
    server: &Party,
    proto: Protocol,
    port: u16,
) -> Conn {
    let pkt = Packet::new_connection(client.addr, server.addr, proto, port);
    let (first, hops) = path(c, &client.sender, server.addr);
    let mut on = BTreeSet::new();
    let judged = !hops.is_empty();
    // A node's own connection has its entry there (created in `output`).
    if let (Some(n), Sender::Node(_)) = (first, &client.sender) {
        on.insert(n);
    }
    if leaves_sender(c, rulesets, &client.sender, &pkt) {
        for (n, hook) in hops {
            if !hook_accepts(&rulesets[n], hook, &pkt) {
                break;
            }
            on.insert(n);
        }
    }
    Conn {
        client: client.addr,
        server: server.addr,
        proto,
        port,
        on,
        judged,
    }
}

/// One generated error: who sends it, the source it writes, where it
/// goes, the connection it names and in which direction.
#[derive(Clone, Debug)]
struct IcmpError {
    sender: Sender,
    saddr: IpAddr,
    daddr: IpAddr,
    conn: usize,
    /// About a packet the client sent (the error goes to the client and
    /// conntrack finds the reply direction) or one the server sent.
    to_client: bool,
    ty: u16,
}

#[derive(Debug, Default)]
struct Tally {
    errors: usize,
    delivered: usize,
    /// Related and from a local pod that is not an end: the `rel_` drop.
    non_end_local: usize,
    /// From a pod that is an end, whose whole path holds the entry.
    honest_ends: usize,
    forged: usize,
}

/// What the design promises for an error, and why.
fn promised(c: &Cluster, conns: &[Conn], e: &IcmpError) -> (bool, &'static str) {
    if let Sender::Pod(ns, name) = &e.sender {
        let own = c.pod(ns, name).is_some_and(|p| p.ips.contains(&e.saddr));
        if !own {
            return (false, "forged source, dropped at the pod's interface");
        }
    }
    let k = &conns[e.conn];
    let end_for_dir = if e.to_client { k.client } else { k.server };
    let (_, hops) = path(c, &e.sender, e.daddr);
    for (n, _) in hops {
        if !k.on.contains(&n) || e.daddr != end_for_dir {
            return (false, "invalid where judged (no entry, or not to its end)");
        }
        let local_pod_source = c.claimants(e.saddr).iter().any(|p| pod_node(p) == Some(n));
        if local_pod_source && e.saddr != k.client && e.saddr != k.server {
            return (false, "a local pod that is not an end of the connection");
        }
    }
    (true, "related, from an end or from no local pod")
}

fn check(
    c: &Cluster,
    conn_gen: &[(usize, usize, bool, usize)],
    err_gen: &[(usize, usize, usize, usize, bool, usize)],
    tally: &mut Tally,
) -> Result<(), TestCaseError> {
    let rulesets: Vec<Ruleset> = NODES
        .iter()
        .map(|n| {
            let net = NodeNet {
                pod_interfaces: c
                    .pods()
                    .filter(|p| p.node_name.as_deref() == Some(*n))
                    .map(|p| (format!("{}/{}", p.namespace, p.name), interface(p)))
                    .collect(),
                ..NodeNet::default()
            };
            compile_node_with(c, n, &net, &AuditOptions::default())
        })
        .collect();
    for family in [Family::Ipv4, Family::Ipv6] {
        let ps = parties(c, family);
        let conns: Vec<Conn> = conn_gen
            .iter()
            .filter_map(|&(a, b, udp, port)| {
                let (client, server) = (&ps[a % ps.len()], &ps[b % ps.len()]);
                // Some pod at one end; no pod talking to its own address.
                let pod_end = client.pod.is_some() || server.pod.is_some();
                (pod_end && client.addr != server.addr).then(|| {
                    let proto = if udp { Protocol::Udp } else { Protocol::Tcp };
                    open(
                        c,
                        &rulesets,
                        client,
                        server,
                        proto,
                        PORTS[port % PORTS.len()],
                    )
                })
            })
            .collect();
        if conns.is_empty() {
            continue;
        }
        let errors_of = if family == Family::Ipv4 {
            &V4_ERRORS
        } else {
            &V6_ERRORS
        };
        let nobody: Vec<IpAddr> = NOBODY
            .iter()
            .map(|a| a.parse().expect("ip"))
            .filter(|a| Family::of(a) == family)
            .collect();
        for &(s, forge, d, k, to_client, ty) in err_gen {
            let from = &ps[s % ps.len()];
            let k = k % conns.len();
            // A pod writes its own address, another party's, or nobody's.
            let saddr = match forge % 4 {
                0 | 1 => from.addr,
                2 => ps[(s + forge) % ps.len()].addr,
                _ => nobody[forge % nobody.len()],
            };
            // Half the errors go to the end the named direction came from
            // (so the kernel relates them), the rest anywhere.
            let daddr = if d % 2 == 0 {
                if to_client {
                    conns[k].client
                } else {
                    conns[k].server
                }
            } else {
                ps[d / 2 % ps.len()].addr
            };
            if saddr == daddr {
                continue;
            }
            let e = IcmpError {
                sender: from.sender.clone(),
                saddr,
                daddr,
                conn: k,
                to_client,
                ty: errors_of[ty % errors_of.len()],
            };
            let conn = &conns[k];
            let related = |n: usize| {
                conn.on.contains(&n)
                    && e.daddr
                        == if e.to_client {
                            conn.client
                        } else {
                            conn.server
                        }
            };
            let pkt = |n: usize| Packet {
                saddr: e.saddr,
                daddr: e.daddr,
                proto: if family == Family::Ipv4 {
                    1 // ICMP
                } else {
                    l4::ICMPV6
                },
                dport: e.ty,
                ct: if related(n) {
                    CtState::Related
                } else {
                    CtState::Invalid
                },
                hoplimit: 64,
                ct_saddrs: related(n).then_some((conn.client, conn.server)),
            };
            let (_, hops) = path(c, &e.sender, e.daddr);
            let leaves = leaves_sender(c, &rulesets, &e.sender, &pkt(0));
            let got = leaves
                && hops
                    .iter()
                    .all(|&(n, hook)| hook_accepts(&rulesets[n], hook, &pkt(n)));
            let (want, why) = promised(c, &conns, &e);
            prop_assert_eq!(
                got,
                want,
                "{:?} about {:?}: rulesets say {}, the design says {} ({})",
                e,
                conn,
                got,
                want,
                why
            );
            tally.errors += 1;
            tally.delivered += usize::from(got);
            tally.forged += usize::from(why.starts_with("forged"));
            tally.non_end_local += usize::from(why.starts_with("a local pod"));
            // A delivered error from a pod: the pod is an end of a
            // connection the evaluator allows, and the error goes to its
            // other end.
            if got && conn.judged {
                if let Some(src) = &from.pod {
                    let ends = [conn.client, conn.server];
                    prop_assert!(
                        ends.contains(&e.saddr) && ends.contains(&e.daddr),
                        "{:?} delivered, about {:?}",
                        e,
                        conn
                    );
                    let endpoint = |a: IpAddr| {
                        ps.iter()
                            .find(|p| p.addr == a)
                            .and_then(|p| p.pod.clone())
                            .unwrap_or(Endpoint::Ip(a))
                    };
                    let (ce, se) = (endpoint(conn.client), endpoint(conn.server));
                    let verdict = allowed(c, &ce, &se, family, conn.proto, conn.port)
                        .map_err(|x| TestCaseError::fail(x.to_string()))?;
                    prop_assert!(
                        verdict.allowed,
                        "{:?} from {} delivered about {:?}, which the evaluator denies: {:?}",
                        e,
                        src,
                        conn,
                        verdict
                    );
                    tally.honest_ends += 1;
                }
            }
        }
    }
    Ok(())
}

type ConnGen = Vec<(usize, usize, bool, usize)>;
type ErrGen = Vec<(usize, usize, usize, usize, bool, usize)>;

fn gens() -> impl Strategy<Value = (ConnGen, ErrGen)> {
    (
        proptest::collection::vec((0..64usize, 0..64usize, any::<bool>(), 0..8usize), 4..12),
        proptest::collection::vec(
            (
                0..64usize,
                0..64usize,
                0..128usize,
                0..64usize,
                any::<bool>(),
                0..8usize,
            ),
            24..64,
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn related_errors_pass_only_from_an_end_of_an_allowed_connection(
        c in cluster_strategy(),
        (conns, errors) in gens(),
    ) {
        check(&c, &conns, &errors, &mut Tally::default())?;
    }
}

#[test]
fn generated_related_cases_cover_every_outcome() {
    // Guards against generators that never reach a branch of the design.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut tally = Tally::default();
    for _ in 0..40 {
        let c = cluster_strategy()
            .new_tree(&mut runner)
            .expect("generate")
            .current();
        let (conns, errors) = gens().new_tree(&mut runner).expect("generate").current();
        check(&c, &conns, &errors, &mut tally).expect("agree");
    }
    eprintln!("{tally:?}");
    assert!(tally.errors > 1000, "{tally:?}");
    assert!(tally.delivered > 50, "{tally:?}");
    assert!(tally.non_end_local > 20, "{tally:?}");
    assert!(tally.honest_ends > 20, "{tally:?}");
    assert!(tally.forged > 50, "{tally:?}");
}
