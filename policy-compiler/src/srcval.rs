//! Source validation: which host-side interface each local pod sends
//! through (the node's network view, an input of the compiler like the
//! cluster), and the per-pod `ingress` base chains bound to that
//! interface: in `inet nftpol`, one that lets through only the pod's own
//! addresses, and no source-routed packet; in `netdev nftpol` (the guard), one for what the `inet`
//! family never sees (it runs only for IPv4/IPv6 frames, after the
//! kernel took one VLAN tag off): VLAN-tagged frames, ethertypes a pod
//! never needs, and ARP or neighbour advertisements claiming an address
//! that is not the pod's.
//!
//! A port of a pod bridge that no pod is bound to yet (a pod not learned
//! yet, or an attacker that never talks to the node) fails closed: it gets
//! the same pair of chains (`l2new_<port>`, `srcnew_<port>`) with the
//! addresses of every local pod still unlearned standing in for "its own",
//! and its `inet` chain lets only neighbour discovery through, so that
//! learning can happen and nothing else passes until it has.
//!
//! The check sits on the `ingress` hook, per interface, before bridging,
//! routing and conntrack. That is the one place that still knows the port
//! a packet came in on in both pod layouts: a routed veth per pod, and pods
//! on a Linux bridge (where `forward` and `input` only see the bridge).
//! Since every packet a pod sends carries one of its own addresses past
//! this point, dispatching egress on the source address reaches the
//! sender's egress chain whatever it wrote in its header; forged packets
//! never create conntrack entries or meet an `established` accept.

use crate::compile::local_pods;
use crate::index::Cluster;
use crate::ir::*;
use crate::model::Pod;
use crate::names::{comment, ident};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

/// Ahead of everything else on the interface (the netdev `ingress`
/// priorities of other tools are usually 0 or above).
pub const SRC_PRIORITY: i32 = -500;
/// The guard runs before the `inet` chain on the same interface.
pub const GUARD_PRIORITY: i32 = -600;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Length of an IPv4 header without options, in 32-bit words.
pub const IP4_WORDS: u8 = 5;
/// The router alert option (RFC 2113, value 0) as one 32-bit word.
pub const IPOPT_ROUTER_ALERT: u32 = 0x9404_0000;
/// ICMPv6 neighbour advertisement: its target address is what it claims.
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// ICMPv6 neighbour solicitation.
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;

/// Neighbour discovery (router/neighbour solicitation and advertisement).
/// Redirect (137) is left out: pods are not routers.
pub const ND_TYPES: (u8, u8) = (133, 136);
/// MLDv2 listener report: sent from a link-local (or, during DAD, the
/// unspecified) address with hop limit 1; a bridge snoops it.
pub const MLD2_REPORT: u8 = 143;

/// The node's view of its pods' interfaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNet {
    /// Host-side interface of each local pod, keyed `namespace/name`: the
    /// pod's veth end on the node (routed layouts) or its bridge port.
    #[serde(default)]
    pub pod_interfaces: BTreeMap<String, String>,
    /// Off only for networks with asymmetric routing into pods.
    #[serde(default = "yes")]
    pub source_validation: bool,
    /// Every pod-facing port of the bridges local pods sit on. Those that
    /// no pod in `pod_interfaces` is bound to get fail-closed chains.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub bridge_ports: BTreeSet<String>,
    /// Let pods send tunnel packets (IPIP, IPv6 in IP, GRE, UDP to the
    /// VXLAN and Geneve ports), for pods that run their own overlays. Off,
    /// they are dropped at the pod's interface: the node's own overlay
    /// device would decapsulate one and take its inner source unchecked.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pod_tunnels: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

fn yes() -> bool {
    true
}

impl Default for NodeNet {
    fn default() -> Self {
        NodeNet {
            pod_interfaces: BTreeMap::new(),
            source_validation: true,
            bridge_ports: BTreeSet::new(),
            pod_tunnels: false,
        }
    }
}

impl NodeNet {
    pub fn interface_of(&self, pod: &Pod) -> Option<&str> {
        self.pod_interfaces
            .get(&format!("{}/{}", pod.namespace, pod.name))
            .map(String::as_str)
    }

    /// Local policy pods that validation cannot cover because their
    /// interface is unknown (the caller warns about them).
    pub fn unmapped<'c>(&self, cluster: &'c Cluster, node: &'c str) -> Vec<&'c Pod> {
        if !self.source_validation {
            return Vec::new();
        }
        local_pods(cluster, node)
            .filter(|p| self.interface_of(p).is_none())
            .collect()
    }

    /// The bridge ports no local pod is bound to, with the addresses of
    /// the local pods still unlearned (sorted): what such a port may claim
    /// while its pod is being learned. Empty without validation.
    pub fn unbound_ports<'n>(
        &'n self,
        cluster: &Cluster,
        node: &str,
    ) -> (Vec<&'n str>, Vec<IpAddr>) {
        if !self.source_validation || self.bridge_ports.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let bound: BTreeSet<&str> = self.pod_interfaces.values().map(String::as_str).collect();
        let ports = self
            .bridge_ports
            .iter()
            .map(String::as_str)
            .filter(|p| !bound.contains(p))
            .collect();
        let mut addrs: Vec<IpAddr> = self
            .unmapped(cluster, node)
            .iter()
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        addrs.sort();
        addrs.dedup();
        (ports, addrs)
    }
}

/// A `NAMESPACE/POD: INTERFACE` map as `--pod-interfaces` files hold it
/// (YAML or JSON; comments and an empty file allowed).
pub fn parse_interface_map(text: &str) -> Result<BTreeMap<String, String>, String> {
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    }) {
        return Ok(BTreeMap::new());
    }
    serde_saphyr::from_str(text)
        .map_err(|e| format!("expected a map NAMESPACE/POD: INTERFACE: {e}"))
}

pub fn src_chain_name(pod: &Pod) -> String {
    ident("src", &[&pod.namespace, &pod.name])
}

/// The `inet` chain of a bridge port no pod is bound to.
pub fn unbound_src_chain_name(port: &str) -> String {
    ident("srcnew", &[port])
}

/// The guard chain of a bridge port no pod is bound to.
pub fn unbound_guard_chain_name(port: &str) -> String {
    ident("l2new", &[port])
}

fn link_local() -> IpNet {
    IpNet::new(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10)
        .expect("fe80::/10 is a valid prefix")
}

/// Neighbour discovery (types `lo..=hi`, hop limit 255) and MLDv2
/// reports (hop limit 1) from the link-local and the unspecified address.
fn nd_exemptions(lo: u8, hi: u8) -> Vec<Rule> {
    let unspecified = IpNet::from(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    let mut rules = Vec::new();
    for (net6, what) in [(link_local(), "link-local"), (unspecified, "unspecified")] {
        let src = Match::AddrPrefix {
            family: Family::Ipv6,
            dir: Dir::Src,
            net: net6,
        };
        rules.push(Rule {
            matches: vec![
                src.clone(),
                Match::Icmpv6Type { lo, hi },
                Match::Ip6HopLimit(255),
            ],
            verdict: Verdict::Accept,
            comment: Some(format!("neighbour discovery from the {what} address")),
        });
        rules.push(Rule {
            matches: vec![
                src,
                Match::Icmpv6Type {
                    lo: MLD2_REPORT,
                    hi: MLD2_REPORT,
                },
                Match::Ip6HopLimit(1),
            ],
            verdict: Verdict::Accept,
            comment: Some(format!("MLD report from the {what} address")),
        });
    }
    rules
}

/// The `inet` chain of a bridge port no pod is bound to: only what
/// learning the port's pod needs passes. Learning reads the node's
/// neighbour entry for a pod address, which the pod's own neighbour
/// solicitation or advertisement (from that address, hop limit 255)
/// creates; solicitations and advertisements from the link-local and
/// unspecified address (address resolution and duplicate address
/// detection) and MLDv2 reports (the bridge snoops them to deliver
/// solicitations for the pod's addresses) pass too, as on a learned port.
/// Router solicitation is left out: learning does not need it. IPv4
/// needs nothing here: ARP never reaches an `inet` chain, and the
/// guard checks it.
fn unbound_src_chain(port: &str, unlearned: &[IpAddr]) -> Chain {
    let own6: Vec<&IpAddr> = unlearned.iter().filter(|a| a.is_ipv6()).collect();
    // The neighbour discovery that passes here carries no route either
    // (IPv4 passes not at all).
    let mut rules = source_route_drops(false, !own6.is_empty());
    for ip in &own6 {
        rules.push(Rule {
            matches: vec![
                Match::AddrPrefix {
                    family: Family::Ipv6,
                    dir: Dir::Src,
                    net: IpNet::from(**ip),
                },
                Match::Icmpv6Type {
                    lo: ND_NEIGHBOR_SOLICIT,
                    hi: ND_NEIGHBOR_ADVERT,
                },
                Match::Ip6HopLimit(255),
            ],
            verdict: Verdict::Accept,
            comment: Some("neighbour discovery from a pod still to be learned".into()),
        });
    }
    if !own6.is_empty() {
        rules.extend(nd_exemptions(ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT));
    }
    rules.push(Rule {
        matches: vec![Match::Counter],
        verdict: Verdict::Drop,
        comment: Some(comment(format!(
            "port {port} bound to no pod yet: only ARP and neighbour discovery pass"
        ))),
    });
    Chain {
        base: Some(BaseChain {
            hook: Hook::Ingress,
            priority: SRC_PRIORITY,
            policy: ChainPolicy::Accept,
            device: Some(port.to_string()),
        }),
        rules,
    }
}

/// Adds one validation chain per local pod with a known interface.
/// Several pods naming one interface would bind several chains to it, each
/// dropping the others' sources, so such interfaces get one chain for all
/// of them.
pub fn add_chains(rs: &mut Ruleset, cluster: &Cluster, node: &str, net: &NodeNet) {
    for (dev, pods) in by_interface(cluster, node, net) {
        let first = pods[0];
        let names: Vec<String> = pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let mut own: Vec<IpAddr> = pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
        own.sort();
        own.dedup();
        // Neighbour discovery and MLD serve only pods that speak IPv6: an
        // IPv4-only pod gets no IPv6 exemption, so it sends no IPv6 at all.
        let speaks_v6 = own.iter().any(IpAddr::is_ipv6);
        let from_own = |ip: &IpAddr| Match::AddrPrefix {
            family: Family::of(ip),
            dir: Dir::Src,
            net: IpNet::from(*ip),
        };
        let accept = |matches| Rule {
            matches,
            verdict: Verdict::Accept,
            comment: None,
        };
        let mut rules: Vec<Rule> = own
            .iter()
            .map(|ip| accept(own_tcp_fast(ip, from_own(ip))))
            .collect();
        rules.extend(source_route_drops(
            own.iter().any(IpAddr::is_ipv4),
            speaks_v6,
        ));
        if !net.pod_tunnels {
            rules.extend(tunnel_drops());
        }
        for ip in &own {
            rules.push(accept(vec![from_own(ip)]));
        }
        if speaks_v6 {
            rules.extend(nd_exemptions(ND_TYPES.0, ND_TYPES.1));
        }
        rules.push(Rule {
            matches: vec![Match::Counter],
            verdict: Verdict::Drop,
            comment: Some(comment(format!(
                "forged source: not an address of {}",
                names.join(", ")
            ))),
        });
        rs.chains.insert(
            src_chain_name(first),
            Chain {
                base: Some(BaseChain {
                    hook: Hook::Ingress,
                    priority: SRC_PRIORITY,
                    policy: ChainPolicy::Accept,
                    device: Some(dev.to_string()),
                }),
                rules,
            },
        );
    }
    let (ports, unlearned) = net.unbound_ports(cluster, node);
    for port in ports {
        rs.chains.insert(
            unbound_src_chain_name(port),
            unbound_src_chain(port, &unlearned),
        );
    }
}

/// The matches of the fast path for the pod's own TCP, ahead of every
/// drop in its `src_` chain: nearly every packet a pod sends is TCP from
/// its own address, and each one would otherwise pay the source-route
/// and tunnel checks. A packet it accepts is one the rest of the chain
/// would accept too; it only skips checks that cannot match it:
///
/// - IPv4 (`ip hdrlength 5`): a source route (LSRR, SSRR), like every
///   IPv4 option, lives in the header, and a five-word header has no room
///   for one. Each fragment is checked as it comes (this hook runs before
///   reassembly, which keeps the header of the first fragment), and a
///   fragment that carries a copied option is longer than five words.
///   `meta l4proto` is the header's protocol field, so TCP here is never
///   IPIP, IPv6 in IP or GRE, nor UDP to an overlay port.
/// - IPv6 (`ip6 nexthdr tcp`): the fixed header names TCP as what follows
///   it, so there is no extension header at all: no routing header, and
///   no fragment header either (a fragment names the fragment header).
///   The transport is TCP, which no tunnel drop names.
///
/// TCP behind IPv4 options (a lone router alert passes the drops) or
/// behind IPv6 extension headers misses the fast path and meets the drops
/// like any other packet; the own-address accept after them takes it.
fn own_tcp_fast(ip: &IpAddr, from_own: Match) -> Vec<Match> {
    match ip {
        IpAddr::V4(_) => vec![
            Match::Ip4HdrLen(IP4_WORDS),
            from_own,
            Match::L4Proto(l4::TCP),
        ],
        IpAddr::V6(_) => vec![Match::Ip6NextHeader(l4::TCP), from_own],
    }
}

/// IP protocols that carry a whole IP packet: IPIP (Calico's IPIP mode),
/// IPv6 in IP (sit, ip6tnl) and GRE.
pub const TUNNEL_PROTOCOLS: [(u8, &str); 3] = [(4, "IPIP"), (41, "IPv6 in IP"), (47, "GRE")];
/// UDP ports of the overlays CNIs run on every node: VXLAN's IANA port
/// (Calico), Linux's VXLAN default (flannel, Cilium) and Geneve (Antrea,
/// OVN-Kubernetes, Cilium).
pub const TUNNEL_UDP_PORTS: [(u16, &str); 3] = [(4789, "VXLAN"), (6081, "Geneve"), (8472, "VXLAN")];

/// Drops of encapsulated packets, ahead of the address checks. A node
/// (or any other decapsulating device) takes the packet inside one in
/// as if it came from the tunnel, with whatever source the pod wrote
/// inside: the address checks here see only the outer header. Pods do
/// not run tunnels to nodes; pods that run their own overlays need
/// [`NodeNet::pod_tunnels`], which leaves the node's overlay open to them.
fn tunnel_drops() -> Vec<Rule> {
    let drop = |matches: Vec<Match>, what: String| Rule {
        matches: matches.into_iter().chain([Match::Counter]).collect(),
        verdict: Verdict::Drop,
        comment: Some(format!(
            "{what}: a decapsulating node would take its inner source unchecked"
        )),
    };
    let by_proto = TUNNEL_PROTOCOLS
        .iter()
        .map(|&(p, name)| drop(vec![Match::L4Proto(p)], format!("tunnel packet ({name})")));
    let by_port = TUNNEL_UDP_PORTS.iter().map(|&(port, name)| {
        drop(
            vec![Match::L4Proto(l4::UDP), Match::DPort { lo: port, hi: port }],
            format!("tunnel packet ({name}, UDP {port})"),
        )
    });
    by_proto.chain(by_port).collect()
}

/// Counted drops of source-routed packets, ahead of the address checks:
/// a node that honours source routes (`accept_source_route`,
/// `seg6_enabled`, `rpl_seg_enabled` on) forwards such a packet, sent to
/// the node on a flow conntrack knows, to the next address of the route,
/// and `forward` lets it through as established without judging that
/// destination.
///
/// IPv4 drops every option but a lone router alert (what the kernel
/// itself writes on IGMP reports), not only LSRR and SSRR: the kernel's
/// option parser behind `ip option lsrr exists` does not recognise a
/// route whose pointer has moved past its first address, and the node
/// still routes by it. Record route and timestamps are harmless but go
/// too; a pod has no use for them. IPv6 drops every routing header: type
/// 0 the kernel refuses anyway, type 2 (Mobile IPv6) is no pod's
/// business, types 3 (RPL) and 4 (segment routing) forward.
fn source_route_drops(v4: bool, v6: bool) -> Vec<Rule> {
    let drop = |m: Match, why: &str| Rule {
        matches: vec![m, Match::Counter],
        verdict: Verdict::Drop,
        comment: Some(why.to_string()),
    };
    let mut rules = Vec::new();
    if v4 {
        rules.push(drop(
            Match::Ip4HdrLenAbove(IP4_WORDS + 1),
            "IPv4 options longer than a router alert (no source routes: LSRR, SSRR)",
        ));
        rules.push(drop(
            Match::Ip4OptionWordNot(IPOPT_ROUTER_ALERT),
            "IPv4 option other than a router alert (no source routes: LSRR, SSRR)",
        ));
    }
    if v6 {
        rules.push(drop(
            Match::Ip6RoutingHeader,
            "IPv6 routing header (no source routes)",
        ));
    }
    rules
}

/// Local pods by the interface they send through (validation on only).
fn by_interface<'c>(
    cluster: &'c Cluster,
    node: &'c str,
    net: &'c NodeNet,
) -> BTreeMap<&'c str, Vec<&'c Pod>> {
    let mut by_if: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    if !net.source_validation {
        return by_if;
    }
    for pod in local_pods(cluster, node) {
        if let Some(dev) = net.interface_of(pod) {
            by_if.entry(dev).or_default().push(pod);
        }
    }
    by_if
}

/// The interface each local pod's `src_` chain in `rs` is bound to:
/// what an earlier apply learned (`namespace/name` -> interface).
pub fn bindings_in(rs: &Ruleset, cluster: &Cluster, node: &str) -> BTreeMap<String, String> {
    local_pods(cluster, node)
        .filter_map(|p| {
            let dev = rs
                .chains
                .get(&src_chain_name(p))?
                .base
                .as_ref()?
                .device
                .clone()?;
            Some((format!("{}/{}", p.namespace, p.name), dev))
        })
        .collect()
}

pub fn guard_chain_name(pod: &Pod) -> String {
    ident("l2", &[&pod.namespace, &pod.name])
}

/// The `netdev nftpol` table: one chain per interface of
/// [`add_chains`], or `None` when there is none.
pub fn guard(cluster: &Cluster, node: &str, net: &NodeNet) -> Option<Guard> {
    let mut chains: BTreeMap<String, Chain> = by_interface(cluster, node, net)
        .into_iter()
        .map(|(dev, pods)| (guard_chain_name(pods[0]), guard_chain(dev, &pods)))
        .collect();
    let (ports, unlearned) = net.unbound_ports(cluster, node);
    for port in ports {
        chains.insert(
            unbound_guard_chain_name(port),
            claims_guard(port, "a pod still to be learned", &unlearned),
        );
    }
    chains.values_mut().for_each(crate::l2fast::add_fast_paths);
    (!chains.is_empty()).then_some(Guard { flags: 0, chains })
}

/// The guard chain of the pods sending through `dev`.
pub fn guard_chain(dev: &str, pods: &[&Pod]) -> Chain {
    let names: Vec<String> = pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let mut own: Vec<IpAddr> = pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
    own.sort();
    own.dedup();
    claims_guard(dev, &names.join(", "), &own)
}

/// A guard chain on `dev` whose ARP and neighbour advertisements may
/// claim only `own` (and what every port may claim: 0.0.0.0 in a probe,
/// link-local targets); `names` says whose addresses those are.
fn claims_guard(dev: &str, names: &str, own: &[IpAddr]) -> Chain {
    let ether = |ty: u16, negate: bool| Match::EtherType { ty, negate };
    let drop = |mut matches: Vec<Match>, why: String| {
        matches.push(Match::Counter);
        Rule {
            matches,
            verdict: Verdict::Drop,
            comment: Some(comment(why)),
        }
    };
    let mut rules = vec![
        drop(
            vec![ether(ETH_P_8021Q, false)],
            "VLAN tag (802.1Q): pods send untagged frames".into(),
        ),
        drop(
            vec![ether(ETH_P_8021AD, false)],
            "VLAN tag (802.1ad): pods send untagged frames".into(),
        ),
        drop(
            vec![
                ether(ETH_P_IP, true),
                ether(ETH_P_IPV6, true),
                ether(ETH_P_ARP, true),
            ],
            "ethertype other than IPv4, IPv6 and ARP".into(),
        ),
        // The checks below read ARP fields at Ethernet/IPv4 offsets.
        drop(
            vec![ether(ETH_P_ARP, false), Match::ArpNotEthIpv4],
            "ARP that is not Ethernet/IPv4".into(),
        ),
    ];
    // A probe (RFC 5227) has the unspecified sender address.
    let mut arp = vec![ether(ETH_P_ARP, false)];
    arp.extend(
        own.iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .chain([std::net::Ipv4Addr::UNSPECIFIED])
            .map(Match::ArpSenderIpNot),
    );
    rules.push(drop(arp, format!("ARP sender address not of {names}")));
    let own6: Vec<Ipv6Addr> = own
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        })
        .collect();
    // An IPv4-only pod sends no IPv6 past its `inet` chain at all.
    if !own6.is_empty() {
        let mut na = vec![Match::Icmpv6Type {
            lo: ND_NEIGHBOR_ADVERT,
            hi: ND_NEIGHBOR_ADVERT,
        }];
        na.extend(
            own6.iter()
                .map(|a| ipnet::Ipv6Net::from(*a))
                .chain([
                    ipnet::Ipv6Net::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10)
                        .expect("fe80::/10 is a valid prefix"),
                ])
                .map(Match::NdTargetNot),
        );
        rules.push(drop(
            na,
            format!("neighbour advertisement for an address not of {names}"),
        ));
    }
    Chain {
        base: Some(BaseChain {
            hook: Hook::Ingress,
            priority: GUARD_PRIORITY,
            policy: ChainPolicy::Accept,
            device: Some(dev.to_string()),
        }),
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_map_files() {
        let m = parse_interface_map("# comment\nx/a: vp0\n\"y/b\": vp1\n").expect("map");
        assert_eq!(m.get("x/a").map(String::as_str), Some("vp0"));
        assert_eq!(m.len(), 2);
        assert!(parse_interface_map("").expect("empty").is_empty());
        assert!(parse_interface_map("- a\n").is_err());
    }

    fn chain_of(yaml: &str, net: &NodeNet) -> Chain {
        let loaded = crate::manifest::parse("t.yaml", yaml);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let cluster = Cluster::from_objects(loaded.objects);
        let mut rs = Ruleset::default();
        add_chains(&mut rs, &cluster, "n1", net);
        assert_eq!(rs.chains.len(), 1, "{:?}", rs.chains.keys());
        rs.chains.into_values().next().expect("one chain")
    }

    fn pod(name: &str, ips: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x}}\n\
             spec: {{nodeName: n1}}\nstatus: {{podIPs: [{ips}]}}\n"
        )
    }

    fn accepts(chain: &Chain, saddr: &str, icmp_type: u8, hoplimit: u8) -> bool {
        let mut rs = Ruleset::default();
        rs.chains.insert("src".into(), chain.clone());
        let pkt = crate::interp::Packet {
            saddr: saddr.parse().unwrap(),
            daddr: "ff02::1".parse().unwrap(),
            proto: crate::ir::l4::ICMPV6,
            dport: u16::from(icmp_type),
            ct: CtState::New,
            hoplimit,
            ct_saddrs: None,
        };
        crate::interp::hook_accepts(&rs, "src", &pkt)
    }

    /// A node where pod `x/d` is on `veth0`.
    fn pod_d_on_veth0(pod_tunnels: bool) -> NodeNet {
        NodeNet {
            pod_interfaces: [("x/d".to_string(), "veth0".to_string())].into(),
            pod_tunnels,
            ..NodeNet::default()
        }
    }

    #[test]
    fn tunnel_packets_are_dropped_even_from_the_pods_own_address() {
        for pod_tunnels in [false, true] {
            let net = pod_d_on_veth0(pod_tunnels);
            tunnels_pass_only_when_allowed(&net);
        }
    }

    /// The pod's own TCP leaves first, and only without IPv4 options or
    /// IPv6 extension headers (nothing a source-route or tunnel drop could
    /// match); a forged TCP segment still meets the final drop.
    #[test]
    fn own_tcp_without_options_leaves_first() {
        for pod_tunnels in [false, true] {
            let net = pod_d_on_veth0(pod_tunnels);
            let chain = chain_of(&pod("d", "{ip: 10.0.0.2}, {ip: 'fd00::2'}"), &net);
            let head: Vec<String> = chain.rules[..3]
                .iter()
                .map(crate::render::render_rule)
                .collect();
            assert_eq!(
                head,
                [
                    "ip hdrlength 5 ip saddr 10.0.0.2 meta l4proto tcp accept",
                    "ip6 nexthdr tcp ip6 saddr fd00::2 accept",
                    "ip hdrlength > 6 counter drop comment \"IPv4 options longer than a router alert (no source routes: LSRR, SSRR)\"",
                ],
                "{chain:#?}"
            );
            // No other TCP accept: TCP behind options takes the drops and
            // then the plain own-address accept.
            let tcp = |r: &&Rule| {
                r.matches.contains(&Match::L4Proto(l4::TCP))
                    || r.matches.contains(&Match::Ip6NextHeader(l4::TCP))
            };
            assert_eq!(chain.rules.iter().filter(tcp).count(), 2, "{chain:#?}");
        }
        let net = pod_d_on_veth0(false);
        let chain = chain_of(&pod("d", "{ip: 10.0.0.2}, {ip: 'fd00::2'}"), &net);
        let mut rs = Ruleset::default();
        rs.chains.insert("src".into(), chain);
        for (saddr, ok) in [
            ("10.0.0.2", true),
            ("fd00::2", true),
            ("10.0.0.3", false),
            ("fd00::3", false),
        ] {
            let daddr = if saddr.contains(':') {
                "fd00::1"
            } else {
                "10.0.0.1"
            };
            let pkt = crate::interp::Packet {
                saddr: saddr.parse().unwrap(),
                daddr: daddr.parse().unwrap(),
                proto: l4::TCP,
                dport: 443,
                ct: CtState::New,
                hoplimit: 64,
                ct_saddrs: None,
            };
            assert_eq!(
                crate::interp::hook_accepts(&rs, "src", &pkt),
                ok,
                "TCP from {saddr}"
            );
            // The interpreter's packets carry no options: the fast path
            // decides the pod's own TCP, and nothing else.
            let t = crate::interp::trace(&rs, "src", &pkt);
            let fast = t.deciding().is_some_and(|d| d.index < 2);
            assert_eq!(fast, ok, "TCP from {saddr}: {t:?}");
            let udp = crate::interp::Packet {
                proto: l4::UDP,
                ..pkt
            };
            let t = crate::interp::trace(&rs, "src", &udp);
            assert!(t.deciding().is_some_and(|d| d.index >= 2), "{t:?}");
        }
    }

    /// With `pod_tunnels` off, no tunnel packet passes even from the pod's
    /// own address; on, they pass like any other; forged ones never do.
    fn tunnels_pass_only_when_allowed(net: &NodeNet) {
        let mut rs = Ruleset::default();
        rs.chains.insert(
            "src".into(),
            chain_of(&pod("d", "{ip: 10.0.0.2}, {ip: 'fd00::2'}"), net),
        );
        let pass = |saddr: &str, daddr: &str, proto: u8, dport: u16| {
            let pkt = crate::interp::Packet {
                saddr: saddr.parse().unwrap(),
                daddr: daddr.parse().unwrap(),
                proto,
                dport,
                ct: CtState::New,
                hoplimit: 64,
                ct_saddrs: None,
            };
            crate::interp::hook_accepts(&rs, "src", &pkt)
        };
        let allowed = net.pod_tunnels;
        for (saddr, daddr) in [("10.0.0.2", "10.0.0.1"), ("fd00::2", "fd00::1")] {
            for p in [4, 41, 47] {
                assert_eq!(
                    pass(saddr, daddr, p, 0),
                    allowed,
                    "protocol {p} from {saddr}"
                );
            }
            for port in [4789, 6081, 8472] {
                assert_eq!(
                    pass(saddr, daddr, l4::UDP, port),
                    allowed,
                    "UDP {port} from {saddr}"
                );
                assert!(pass(saddr, daddr, l4::TCP, port), "TCP {port} from {saddr}");
            }
            assert!(pass(saddr, daddr, l4::UDP, 53), "UDP 53 from {saddr}");
        }
        for (saddr, daddr) in [("10.0.0.3", "10.0.0.1"), ("fd00::3", "fd00::1")] {
            assert!(!pass(saddr, daddr, 47, 0), "forged GRE from {saddr}");
            assert!(
                !pass(saddr, daddr, l4::UDP, 8472),
                "forged VXLAN from {saddr}"
            );
        }
    }

    #[test]
    fn source_routed_packets_are_dropped_before_the_address_checks() {
        let net = NodeNet {
            pod_interfaces: [("x/a".to_string(), "veth0".to_string())].into(),
            ..NodeNet::default()
        };
        // After the own-TCP fast path, which no routed packet matches.
        let drops = |c: &Chain| -> Vec<String> {
            c.rules
                .iter()
                .skip_while(|r| r.verdict == Verdict::Accept)
                .take_while(|r| r.verdict == Verdict::Drop)
                .map(crate::render::render_rule)
                .filter(|r| r.contains("no source routes"))
                .collect()
        };
        let v4 = [
            "ip hdrlength > 6 counter drop comment \"IPv4 options longer than a router alert (no source routes: LSRR, SSRR)\"",
            "ip hdrlength 6 @nh,160,32 != 0x94040000 counter drop comment \"IPv4 option other than a router alert (no source routes: LSRR, SSRR)\"",
        ];
        let v6 = "exthdr rt exists counter drop comment \"IPv6 routing header (no source routes)\"";
        let dual = chain_of(&pod("a", "{ip: 10.0.0.2}, {ip: 'fd00::2'}"), &net);
        assert_eq!(drops(&dual), [v4[0], v4[1], v6], "{dual:?}");
        // Each family's drops only where the pod has an address of it
        // (the final drop refuses the other family whole).
        let only4 = chain_of(&pod("a", "{ip: 10.0.0.2}"), &net);
        assert_eq!(drops(&only4), v4, "{only4:?}");
        let only6 = chain_of(&pod("a", "{ip: 'fd00::2'}"), &net);
        assert_eq!(drops(&only6), [v6], "{only6:?}");
        // Plain packets (no options, no routing header) still pass.
        assert!(accepts(&dual, "fd00::2", 128, 64));
        // A bridge port no pod is bound to yet passes only neighbour
        // discovery, and none with a routing header.
        let yaml = pod("old", "{ip: 10.0.0.1}") + &pod("new", "{ip: 10.0.0.2}, {ip: 'fd00::2'}");
        let rs = bridged(&yaml, &[("old", "vp0")], &["vp0", "vp1"]);
        assert_eq!(drops(&rs.chains["srcnew_vp1"])[..1], [v6], "{rs:?}");
    }

    #[test]
    fn an_ipv4_only_pod_gets_no_ipv6_exemption() {
        let net = |pods: &[&str]| NodeNet {
            pod_interfaces: pods
                .iter()
                .map(|p| (format!("x/{p}"), "veth0".into()))
                .collect(),
            ..NodeNet::default()
        };
        let v4 = chain_of(&pod("a", "{ip: 10.0.0.1}"), &net(&["a"]));
        let dual = chain_of(&pod("d", "{ip: 10.0.0.2}, {ip: 'fd00::2'}"), &net(&["d"]));
        for (saddr, icmp_type, hoplimit) in
            [("fe80::1", 135, 255), ("::", 135, 255), ("fe80::1", 143, 1)]
        {
            assert!(
                !accepts(&v4, saddr, icmp_type, hoplimit),
                "{saddr} type {icmp_type}: {v4:?}"
            );
            assert!(
                accepts(&dual, saddr, icmp_type, hoplimit),
                "{saddr} type {icmp_type}: {dual:?}"
            );
        }
        let v6_rules = |c: &Chain| {
            c.rules
                .iter()
                .filter(|r| {
                    r.matches
                        .iter()
                        .any(|m| matches!(m, Match::Icmpv6Type { .. }))
                })
                .count()
        };
        assert_eq!(v6_rules(&v4), 0, "{v4:?}");
        assert_eq!(v6_rules(&dual), 4, "{dual:?}");
        // Pods sharing one interface (one chain): exempt while any of
        // them speaks IPv6.
        let shared = chain_of(
            &(pod("a", "{ip: 10.0.0.1}") + &pod("d", "{ip: 10.0.0.2}, {ip: 'fd00::2'}")),
            &net(&["a", "d"]),
        );
        assert_eq!(v6_rules(&shared), 4, "{shared:?}");
    }

    fn bridged(yaml: &str, bound: &[(&str, &str)], ports: &[&str]) -> Ruleset {
        let loaded = crate::manifest::parse("t.yaml", yaml);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let cluster = Cluster::from_objects(loaded.objects);
        let net = NodeNet {
            pod_interfaces: bound
                .iter()
                .map(|(p, d)| (format!("x/{p}"), d.to_string()))
                .collect(),
            bridge_ports: ports.iter().map(|p| p.to_string()).collect(),
            ..NodeNet::default()
        };
        crate::compile::compile_node(&cluster, "n1", &net)
    }

    fn packet(saddr: &str, proto: u8, dport: u16, hoplimit: u8) -> crate::interp::Packet {
        let saddr: IpAddr = saddr.parse().unwrap();
        crate::interp::Packet {
            saddr,
            daddr: if saddr.is_ipv4() {
                "10.0.0.9".parse().unwrap()
            } else {
                "fd00::9".parse().unwrap()
            },
            proto,
            dport,
            ct: CtState::New,
            hoplimit,
            ct_saddrs: None,
        }
    }

    #[test]
    fn a_bridge_port_bound_to_no_pod_passes_only_what_learning_needs() {
        let yaml = pod("old", "{ip: 10.0.0.1}, {ip: 'fd00::1'}")
            + &pod("new", "{ip: 10.0.0.2}, {ip: 'fd00::2'}");
        let rs = bridged(&yaml, &[("old", "vp0")], &["vp0", "vp1"]);
        // The learned pod's port keeps its own chains; only vp1 is new.
        let news: Vec<&String> = rs.chains.keys().filter(|k| k.contains("new")).collect();
        assert_eq!(news, ["srcnew_vp1"], "{:?}", rs.chains.keys());
        let guard = rs.guard.as_ref().expect("guard");
        assert!(guard.chains.contains_key("l2_x_old"));
        let l2new = guard.chains.get("l2new_vp1").expect("l2new_vp1");
        assert_eq!(
            l2new.base.as_ref().and_then(|b| b.device.as_deref()),
            Some("vp1")
        );
        let icmpv6 = crate::ir::l4::ICMPV6;
        let udp = crate::ir::l4::UDP;
        let on_new = |saddr: &str, proto: u8, dport: u16, hoplimit: u8| {
            crate::interp::hook_accepts(&rs, "srcnew_vp1", &packet(saddr, proto, dport, hoplimit))
        };
        // What learning needs: the unlearned pod's NS/NA from its own
        // address, and ND and DAD from link-local and unspecified.
        for (saddr, ty) in [
            ("fd00::2", 135),
            ("fd00::2", 136),
            ("fe80::1", 135),
            ("::", 135),
        ] {
            assert!(on_new(saddr, icmpv6, ty, 255), "{saddr} type {ty}");
        }
        assert!(on_new("fe80::1", icmpv6, 143, 1), "MLD report");
        // Everything else is dropped: the unlearned pod's own traffic,
        // ND that was routed or is not NS/NA, and claims of the learned
        // pod's address.
        for (saddr, proto, dport, hoplimit) in [
            ("10.0.0.2", udp, 53, 64),
            ("fd00::2", udp, 53, 64),
            ("fd00::2", icmpv6, 135, 254),
            ("fd00::2", icmpv6, 133, 255),
            ("fe80::1", icmpv6, 134, 255),
            ("fd00::1", icmpv6, 136, 255),
            ("10.0.0.1", udp, 53, 64),
        ] {
            assert!(
                !on_new(saddr, proto, dport, hoplimit),
                "{saddr} {proto}/{dport} hop limit {hoplimit}"
            );
        }
        let last = rs.chains["srcnew_vp1"].rules.last().expect("rules");
        assert!(
            matches!(last.verdict, Verdict::Drop)
                && last.matches.contains(&Match::Counter)
                && last
                    .comment
                    .as_deref()
                    .is_some_and(|c| c.contains("port vp1 bound to no pod")),
            "{last:?}"
        );
        // ARP and advertisements may claim only the unlearned pod's
        // addresses (and what every port may: a probe, link-local).
        let arp: Vec<&Match> = l2new
            .rules
            .iter()
            .filter(|r| {
                r.comment
                    .as_deref()
                    .is_some_and(|c| c.starts_with("ARP sender"))
            })
            .flat_map(|r| &r.matches)
            .collect();
        assert!(arp.contains(&&Match::ArpSenderIpNot("10.0.0.2".parse().unwrap())));
        assert!(arp.contains(&&Match::ArpSenderIpNot(std::net::Ipv4Addr::UNSPECIFIED)));
        assert!(!arp.contains(&&Match::ArpSenderIpNot("10.0.0.1".parse().unwrap())));
        let na: Vec<&Match> = l2new
            .rules
            .iter()
            .filter(|r| {
                r.comment
                    .as_deref()
                    .is_some_and(|c| c.starts_with("neighbour advert"))
            })
            .flat_map(|r| &r.matches)
            .collect();
        assert!(na.contains(&&Match::NdTargetNot("fd00::2/128".parse().unwrap())));
        assert!(!na.contains(&&Match::NdTargetNot("fd00::1/128".parse().unwrap())));
        // The ordinary guard rules are there too.
        assert!(l2new.rules.iter().any(|r| r
            .comment
            .as_deref()
            .is_some_and(|c| c.starts_with("VLAN tag"))));
    }

    #[test]
    fn once_learned_the_port_gets_the_pods_chains_and_ports_need_validation() {
        let yaml = pod("old", "{ip: 10.0.0.1}") + &pod("new", "{ip: 10.0.0.2}");
        let rs = bridged(&yaml, &[("old", "vp0"), ("new", "vp1")], &["vp0", "vp1"]);
        assert!(!rs.chains.keys().any(|k| k.starts_with("srcnew")));
        let guard = rs.guard.as_ref().expect("guard");
        assert!(guard.chains.contains_key("l2_x_new"));
        assert!(!guard.chains.keys().any(|k| k.starts_with("l2new")));
        // An IPv4-only unlearned pod: no IPv6 exemption on a new port.
        let rs = bridged(&yaml, &[("old", "vp0")], &["vp0", "vp1"]);
        assert_eq!(
            rs.chains["srcnew_vp1"].rules.len(),
            1,
            "{:?}",
            rs.chains["srcnew_vp1"]
        );
        // Without validation there are no port chains at all.
        let loaded = crate::manifest::parse("t.yaml", &yaml);
        let cluster = Cluster::from_objects(loaded.objects);
        let net = NodeNet {
            source_validation: false,
            bridge_ports: ["vp0".to_string(), "vp1".to_string()].into(),
            ..NodeNet::default()
        };
        let rs = crate::compile::compile_node(&cluster, "n1", &net);
        assert!(rs.guard.is_none() && !rs.chains.keys().any(|k| k.starts_with("src")));
    }
}
