//! Source validation: which host-side interface each local pod sends
//! through (the node's network view, an input of the compiler like the
//! cluster), and the per-pod `ingress` base chains bound to that
//! interface: in `inet nftpol`, one that lets through only the pod's own
//! addresses; in `netdev nftpol` (the guard), one for what the `inet`
//! family never sees (it runs only for IPv4/IPv6 frames, after the
//! kernel took one VLAN tag off): VLAN-tagged frames, ethertypes a pod
//! never needs, and ARP or neighbour advertisements claiming an address
//! that is not the pod's.
//!
//! The check sits on the `ingress` hook, per interface, before bridging,
//! routing and conntrack. That is the one place that still knows the port
//! a packet came in on in both pod layouts: a routed veth per pod, and pods
//! on a Linux bridge (where `forward` and `input` only see the bridge).
//! Since every packet a pod sends carries one of its own addresses past
//! this point, dispatching egress on the source address reaches the
//! sender's egress chain whatever it wrote in its header; forged packets
//! never create conntrack entries or meet an `established` accept.

use crate::index::Cluster;
use crate::ir::*;
use crate::model::Pod;
use crate::names::{comment, ident};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
/// ICMPv6 neighbour advertisement: its target address is what it claims.
pub const ND_NEIGHBOR_ADVERT: u8 = 136;

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
}

fn yes() -> bool {
    true
}

impl Default for NodeNet {
    fn default() -> Self {
        NodeNet {
            pod_interfaces: BTreeMap::new(),
            source_validation: true,
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
}

fn local_pods<'c>(cluster: &'c Cluster, node: &'c str) -> impl Iterator<Item = &'c Pod> + 'c {
    cluster
        .pods()
        .filter(move |p| p.is_policy_pod() && p.node_name.as_deref() == Some(node))
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
        let mut rules = Vec::new();
        let mut own: Vec<IpAddr> = pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
        own.sort();
        own.dedup();
        // Neighbour discovery and MLD serve only pods that speak IPv6: an
        // IPv4-only pod gets no IPv6 exemption, so it sends no IPv6 at all.
        let speaks_v6 = own.iter().any(IpAddr::is_ipv6);
        for ip in own {
            rules.push(Rule {
                matches: vec![Match::AddrPrefix {
                    family: Family::of(&ip),
                    dir: Dir::Src,
                    net: IpNet::from(ip),
                }],
                verdict: Verdict::Accept,
                comment: None,
            });
        }
        let link_local = IpNet::new(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10)
            .expect("fe80::/10 is a valid prefix");
        let unspecified = IpNet::from(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let exempt = if speaks_v6 {
            vec![(link_local, "link-local"), (unspecified, "unspecified")]
        } else {
            Vec::new()
        };
        for (net6, what) in exempt {
            let src = Match::AddrPrefix {
                family: Family::Ipv6,
                dir: Dir::Src,
                net: net6,
            };
            rules.push(Rule {
                matches: vec![
                    src.clone(),
                    Match::Icmpv6Type {
                        lo: ND_TYPES.0,
                        hi: ND_TYPES.1,
                    },
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
    let chains: BTreeMap<String, Chain> = by_interface(cluster, node, net)
        .into_iter()
        .map(|(dev, pods)| (guard_chain_name(pods[0]), guard_chain(dev, &pods)))
        .collect();
    (!chains.is_empty()).then_some(Guard { flags: 0, chains })
}

/// The guard chain of the pods sending through `dev`.
pub fn guard_chain(dev: &str, pods: &[&Pod]) -> Chain {
    let names: Vec<String> = pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let names = names.join(", ");
    let mut own: Vec<IpAddr> = pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
    own.sort();
    own.dedup();
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

    #[test]
    fn an_ipv4_only_pod_gets_no_ipv6_exemption() {
        let net = |pods: &[&str]| NodeNet {
            pod_interfaces: pods
                .iter()
                .map(|p| (format!("x/{p}"), "veth0".into()))
                .collect(),
            source_validation: true,
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
}
