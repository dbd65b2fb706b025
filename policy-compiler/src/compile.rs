//! (cluster, node) -> ruleset IR. A pure function: same input, equal IR.
//!
//! Shape (see docs/ARCHITECTURE.md): base chains `forward` and `input`
//! accept established traffic, drop invalid, pass IPv6 neighbour
//! discovery, then dispatch through the verdict maps `egress_v4/v6`
//! (source address) and `ingress_v4/v6` (destination address) to the
//! per-pod chains `egr_<ns>_<pod>` / `ing_<ns>_<pod>` of local isolated
//! pods. A per-pod chain holds one or a few rules per (policy, rule index)
//! that select the pod, each with a comment naming both, then a drop.
//! Egress allows `return`, so the same packet still meets the
//! destination's ingress chain on the same node.
//!
//! Peers live in named sets shared by every pod the same policy rule
//! selects (`pod4_`/`pod6_` for selected pods, `net4_`/`net6_` interval
//! sets for ipBlocks, `tcp_`/`udp_`/`sctp_` port sets, `nam4_`/`nam6_`
//! concatenations for named ports resolved per destination pod), so a peer
//! coming or going is a set element, not a chain rewrite.

use crate::admin::compile as admin_compile;
use crate::admin::{AdminPolicy, Tier};
use crate::index::Cluster;
use crate::ipblock::{merge, AddrRange};
use crate::ir::*;
use crate::model::*;
use crate::names::{comment, ident};
use crate::srcval::NodeNet;
use std::collections::{BTreeMap, BTreeSet};

pub const CHAIN_FORWARD: &str = "forward";
pub const CHAIN_INPUT: &str = "input";
pub const BASE_PRIORITY: i32 = 0;
/// Neighbour solicitation and advertisement: the ND a pod exchanges with
/// its node or with pods on its bridge. Router solicitations and
/// advertisements and redirects have no business between pods or from a
/// pod to its node through policy.
pub const ND_TYPES: (u8, u8) = (135, 136);

pub fn map_name(direction: Direction, family: Family) -> String {
    format!("{}_{}", direction.word(), family.suffix())
}

/// How the compiler enforces a direction. Kept here, not on the model's
/// `Direction`, because only the ruleset's shape depends on it.
pub(crate) trait Enforce {
    fn short(self) -> &'static str;
    fn chain_prefix(self) -> &'static str;
    fn peer_dir(self) -> Dir;
    fn pod_dir(self) -> Dir;
    fn allow(self) -> Verdict;
    fn rules(self, p: &Policy) -> Option<&Vec<PolicyRule>>;
}

impl Enforce for Direction {
    fn short(self) -> &'static str {
        match self {
            Direction::Ingress => "in",
            Direction::Egress => "eg",
        }
    }
    fn chain_prefix(self) -> &'static str {
        match self {
            Direction::Ingress => "ing",
            Direction::Egress => "egr",
        }
    }
    /// The packet address that identifies the peer.
    fn peer_dir(self) -> Dir {
        match self {
            Direction::Ingress => Dir::Src,
            Direction::Egress => Dir::Dst,
        }
    }
    /// The packet address that identifies the local pod.
    fn pod_dir(self) -> Dir {
        match self {
            Direction::Ingress => Dir::Dst,
            Direction::Egress => Dir::Src,
        }
    }
    fn allow(self) -> Verdict {
        match self {
            Direction::Ingress => Verdict::Accept,
            // Egress must not accept: the destination's ingress chain on
            // this node has yet to see the packet.
            Direction::Egress => Verdict::Return,
        }
    }
    fn rules(self, p: &Policy) -> Option<&Vec<PolicyRule>> {
        match self {
            Direction::Ingress => p.ingress.as_ref(),
            Direction::Egress => p.egress.as_ref(),
        }
    }
}

pub fn pod_chain_name(direction: Direction, pod: &Pod) -> String {
    ident(direction.chain_prefix(), &[&pod.namespace, &pod.name])
}

/// The ruleset for `node` without source validation (no interface map):
/// what an offline compile gives when it is not told the interfaces.
pub fn compile(cluster: &Cluster, node: &str) -> Ruleset {
    compile_node(cluster, node, &NodeNet::default())
}

/// The ruleset for `node`: enforcement for every pod scheduled there, and
/// source validation on the interfaces `net` names.
pub fn compile_node(cluster: &Cluster, node: &str, net: &NodeNet) -> Ruleset {
    let shared = cluster.shared_addresses();
    let mut b = Builder {
        cluster,
        rs: Ruleset::default(),
        shared: &shared,
    };
    for direction in [Direction::Ingress, Direction::Egress] {
        for family in [Family::Ipv4, Family::Ipv6] {
            b.rs.sets.insert(
                map_name(direction, family),
                Set {
                    kind: SetKind::Vmap { family },
                    elements: BTreeSet::new(),
                },
            );
        }
    }
    b.rs.chains.insert(
        CHAIN_FORWARD.to_string(),
        base_chain(Hook::Forward, &[Direction::Egress, Direction::Ingress]),
    );
    // Pod -> its own node: only the pod's egress applies; the node's own
    // traffic to pods leaves through `output`, which is never filtered.
    b.rs.chains.insert(
        CHAIN_INPUT.to_string(),
        base_chain(Hook::Input, &[Direction::Egress]),
    );

    let local = cluster
        .pods()
        .filter(|p| p.is_policy_pod() && p.node_name.as_deref() == Some(node));
    // Both admin tiers in the order they are checked.
    let admin: Vec<&AdminPolicy> = cluster
        .tier_policies(Tier::Admin)
        .into_iter()
        .chain(cluster.tier_policies(Tier::Baseline))
        .collect();
    for pod in local {
        let selecting: Vec<&Policy> = cluster
            .policies_in(&pod.namespace)
            .filter(|pol| pol.pod_selector.matches(&pod.labels))
            .collect();
        for direction in [Direction::Ingress, Direction::Egress] {
            let isolating: Vec<&Policy> = selecting
                .iter()
                .copied()
                .filter(|pol| direction.rules(pol).is_some())
                .collect();
            b.pod_chains(pod, direction, &isolating, &admin);
        }
    }
    b.shared_address_elements(node);
    crate::srcval::add_chains(&mut b.rs, cluster, node, net);
    crate::counters::add(&mut b.rs);
    b.rs
}

/// Whether any pod in `pods` has a chain in `direction`: isolated by a
/// policy of its namespace, or the subject of an admin or baseline policy
/// with rules in that direction.
pub fn any_isolated(cluster: &Cluster, pods: &[&Pod], direction: Direction) -> bool {
    pods.iter().any(|pod| {
        cluster
            .policies_in(&pod.namespace)
            .any(|pol| pol.pod_selector.matches(&pod.labels) && direction.rules(pol).is_some())
            || cluster.admin_policies().any(|pol| {
                !pol.rules(direction).is_empty() && admin_compile::selects(cluster, pol, pod)
            })
    })
}

/// Name of the chain that drops new flows to or from a shared address.
pub fn shared_chain_name(ip: &std::net::IpAddr) -> String {
    ident("dup", &[&ip.to_string().replace(':', "-")])
}

/// The chain an admin Pass of `pod` goes to: its NetworkPolicy part.
pub fn pass_chain_name(direction: Direction, pod: &Pod) -> String {
    ident(
        &format!("{}p", direction.chain_prefix()),
        &[&pod.namespace, &pod.name],
    )
}

fn base_chain(hook: Hook, dispatch: &[Direction]) -> Chain {
    let mut rules = vec![
        Rule {
            matches: vec![Match::CtState(
                [CtState::Established, CtState::Related].into(),
            )],
            verdict: Verdict::Accept,
            comment: None,
        },
        Rule {
            matches: vec![Match::CtState([CtState::Invalid].into())],
            verdict: Verdict::Drop,
            comment: None,
        },
        // Neighbour discovery never crosses a router: hop limit 255 proves
        // the packet was not routed (the forward hook sees it already
        // decremented), so only on-link ND passes: to the node, or between
        // pods on one bridge.
        Rule {
            matches: vec![
                Match::Icmpv6Type {
                    lo: ND_TYPES.0,
                    hi: ND_TYPES.1,
                },
                Match::Ip6HopLimit(255),
            ],
            verdict: Verdict::Accept,
            comment: Some("IPv6 neighbour discovery, on-link only".into()),
        },
    ];
    for &direction in dispatch {
        for family in [Family::Ipv4, Family::Ipv6] {
            rules.push(Rule {
                matches: vec![],
                verdict: Verdict::AddrVmap {
                    family,
                    dir: direction.pod_dir(),
                    map: map_name(direction, family),
                },
                comment: None,
            });
        }
    }
    Chain {
        base: Some(BaseChain {
            hook,
            priority: BASE_PRIORITY,
            policy: ChainPolicy::Accept,
            device: None,
        }),
        rules,
    }
}

pub(crate) struct Builder<'a> {
    pub(crate) cluster: &'a Cluster,
    pub(crate) rs: Ruleset,
    /// Addresses several policy pods claim (usually none).
    shared: &'a BTreeMap<std::net::IpAddr, Vec<&'a Pod>>,
}

/// The port matches of one rule, split by how they are enforced.
struct PortPlan {
    /// Alternatives combined with the peer matches (each a list of matches).
    plain: Vec<Vec<Match>>,
    /// Named ports (egress only): resolved per destination pod into a
    /// concatenated set that already restricts the peer.
    named: Vec<(String, Protocol)>,
}

impl Builder<'_> {
    /// Returns the set `name`, creating it with `elements` the first time:
    /// sets are per policy rule, so every pod that rule selects shares it.
    pub(crate) fn shared_set(
        &mut self,
        name: String,
        kind: SetKind,
        elements: impl FnOnce(&Cluster) -> BTreeSet<Element>,
    ) -> String {
        if !self.rs.sets.contains_key(&name) {
            let elements = elements(self.cluster);
            self.rs.sets.insert(name.clone(), Set { kind, elements });
        }
        name
    }

    /// The pod's chain in `direction`: the admin tier, then the
    /// NetworkPolicy part (the NetworkPolicies' rules and drop when they
    /// isolate the pod, else the baseline tier), then, by falling off the
    /// end, the default allow. A pod none of this touches gets no chain.
    /// When an admin Pass occurs the NetworkPolicy part is its own chain
    /// (`ingp_`/`egrp_`), the Pass's and the admin tier's end's `goto`
    /// target.
    fn pod_chains(
        &mut self,
        pod: &Pod,
        direction: Direction,
        isolating: &[&Policy],
        admin: &[&AdminPolicy],
    ) {
        let chain_name = pod_chain_name(direction, pod);
        let pass_name = pass_chain_name(direction, pod);
        let mut rules =
            admin_compile::tier_rules(self, admin, pod, direction, Tier::Admin, &pass_name);
        let tail = if isolating.is_empty() {
            admin_compile::tier_rules(self, admin, pod, direction, Tier::Baseline, &pass_name)
        } else {
            self.netpol_rules(pod, direction, isolating)
        };
        if rules.is_empty() && tail.is_empty() {
            return;
        }
        if rules
            .iter()
            .any(|r| r.verdict == Verdict::Goto(pass_name.clone()))
        {
            rules.push(Rule {
                matches: vec![],
                verdict: Verdict::Goto(pass_name.clone()),
                comment: Some("end of admin tier".into()),
            });
            self.rs.chains.insert(
                pass_name,
                Chain {
                    base: None,
                    rules: tail,
                },
            );
        } else {
            rules.extend(tail);
        }
        self.rs
            .chains
            .insert(chain_name.clone(), Chain { base: None, rules });
        for ip in &pod.ips {
            // A shared address gets its own chain (shared_address_elements).
            if self.shared.contains_key(ip) {
                continue;
            }
            if let Some(map) = self.rs.sets.get_mut(&map_name(direction, Family::of(ip))) {
                map.elements
                    .insert(Element::VmapJump(*ip, chain_name.clone()));
            }
        }
    }

    /// The NetworkPolicy part for a pod they isolate: every rule of every
    /// isolating policy, then the drop.
    fn netpol_rules(
        &mut self,
        pod: &Pod,
        direction: Direction,
        isolating: &[&Policy],
    ) -> Vec<Rule> {
        let mut rules = Vec::new();
        for pol in isolating {
            let Some(prules) = direction.rules(pol) else {
                continue;
            };
            for (i, r) in prules.iter().enumerate() {
                self.policy_rule(&mut rules, pod, direction, pol, i, r);
            }
        }
        let names: Vec<String> = isolating
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        rules.push(Rule {
            matches: vec![],
            verdict: Verdict::Drop,
            comment: Some(comment(format!(
                "{} isolated by {}",
                direction.word(),
                names.join(", ")
            ))),
        });
        rules
    }

    /// A shared address names no single pod, so no pod's policies can be
    /// applied to it: when a pod here claims it and any claimant is
    /// isolated in a direction, new flows in that direction are dropped
    /// (and counted) instead.
    fn shared_address_elements(&mut self, node: &str) {
        for (ip, pods) in self.shared {
            if !pods.iter().any(|p| p.node_name.as_deref() == Some(node)) {
                continue;
            }
            let chain = shared_chain_name(ip);
            for direction in [Direction::Ingress, Direction::Egress] {
                if !any_isolated(self.cluster, pods, direction) {
                    continue;
                }
                if let Some(map) = self.rs.sets.get_mut(&map_name(direction, Family::of(ip))) {
                    map.elements.insert(Element::VmapJump(*ip, chain.clone()));
                }
                let names: Vec<String> = pods
                    .iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect();
                self.rs
                    .chains
                    .entry(chain.clone())
                    .or_insert_with(|| Chain {
                        base: None,
                        rules: vec![Rule {
                            matches: vec![Match::Counter],
                            verdict: Verdict::Drop,
                            comment: Some(comment(format!(
                                "address {ip} shared by {}",
                                names.join(", ")
                            ))),
                        }],
                    });
            }
        }
    }

    fn policy_rule(
        &mut self,
        out: &mut Vec<Rule>,
        pod: &Pod,
        direction: Direction,
        pol: &Policy,
        index: usize,
        r: &PolicyRule,
    ) {
        let key = format!("{}{index}", direction.short());
        let parts = [pol.namespace.as_str(), pol.name.as_str(), key.as_str()];
        let note = Some(comment(format!(
            "{}/{} {}[{index}]",
            pol.namespace,
            pol.name,
            direction.word()
        )));
        let ports = self.port_plan(pod, direction, r, &parts);
        // Only named egress ports: the concatenated set alone names peers.
        let peers = if ports.plain.is_empty() {
            Vec::new()
        } else {
            self.peer_alternatives(direction, pol, r, &parts)
        };
        let verdict = direction.allow();
        for peer in &peers {
            for port in &ports.plain {
                out.push(Rule {
                    matches: peer.iter().chain(port.iter()).cloned().collect(),
                    verdict: verdict.clone(),
                    comment: note.clone(),
                });
            }
        }
        if !ports.named.is_empty() {
            for family in [Family::Ipv4, Family::Ipv6] {
                let set = self.named_port_set(family, pol, r, &ports.named, &parts);
                out.push(Rule {
                    matches: vec![Match::DAddrProtoPortInSet { family, set }],
                    verdict: verdict.clone(),
                    comment: note.clone(),
                });
            }
        }
    }

    /// One list of matches per way a peer can be identified; `[[]]` when
    /// every peer is allowed.
    fn peer_alternatives(
        &mut self,
        direction: Direction,
        pol: &Policy,
        r: &PolicyRule,
        parts: &[&str],
    ) -> Vec<Vec<Match>> {
        let Some(peers) = &r.peers else {
            return vec![vec![]];
        };
        let dir = direction.peer_dir();
        let shared = self.shared;
        let mut out = Vec::new();
        let has_pod_peer = peers.iter().any(|p| matches!(p, Peer::Pods { .. }));
        if has_pod_peer {
            for family in [Family::Ipv4, Family::Ipv6] {
                out.push(
                    self.peer_set_match("pod", family, false, dir, parts, |cluster| {
                        let pods = peer_pods(cluster, pol, peers);
                        let selected: BTreeSet<(String, String)> =
                            pods.iter().map(|p| p.key()).collect();
                        pods.into_iter()
                            .flat_map(|p| p.ips.iter())
                            .filter(|ip| Family::of(ip) == family)
                            .filter(|ip| peer_address_ok(shared, ip, &selected))
                            .map(|ip| Element::Addr(*ip))
                            .collect()
                    }),
                );
            }
        }
        for family in [Family::Ipv4, Family::Ipv6] {
            let blocks: Vec<&Peer> = peers
                .iter()
                .filter(|p| matches!(p, Peer::IpBlock { cidr, .. } if Family::of(&cidr.addr()) == family))
                .collect();
            if blocks.is_empty() {
                continue;
            }
            out.push(self.peer_set_match("net", family, true, dir, parts, |_| {
                let ranges: Vec<AddrRange> = blocks
                    .iter()
                    .flat_map(|p| match p {
                        Peer::IpBlock { ranges, .. } => ranges.clone(),
                        Peer::Pods { .. } => Vec::new(),
                    })
                    .collect();
                merge(ranges)
                    .into_iter()
                    .map(|r| Element::AddrRange(r.lo, r.hi))
                    .collect()
            }));
        }
        out
    }

    /// The match of the peer address (`dir`) against the shared address
    /// set `<prefix><4|6>_<parts>`, created with `elements` the first time.
    fn peer_set_match(
        &mut self,
        prefix: &str,
        family: Family,
        interval: bool,
        dir: Dir,
        parts: &[&str],
        elements: impl FnOnce(&Cluster) -> BTreeSet<Element>,
    ) -> Vec<Match> {
        let set = self.shared_set(
            ident(&format!("{prefix}{}", family_digit(family)), parts),
            SetKind::Addr { family, interval },
            elements,
        );
        vec![Match::AddrInSet { family, dir, set }]
    }

    fn port_plan(
        &mut self,
        pod: &Pod,
        direction: Direction,
        r: &PolicyRule,
        parts: &[&str],
    ) -> PortPlan {
        let Some(ports) = &r.ports else {
            return PortPlan {
                plain: vec![vec![]],
                named: vec![],
            };
        };
        let mut plain = Vec::new();
        let mut named = Vec::new();
        for proto in Protocol::ALL {
            let specs: Vec<&PortSpec> = ports.iter().filter(|s| s.protocol == proto).collect();
            if specs.is_empty() {
                continue;
            }
            if specs.iter().any(|s| s.port == PortRef::Any) {
                plain.push(vec![Match::L4Proto(proto.number())]);
                continue;
            }
            let mut ranges: Vec<(u16, u16)> = Vec::new();
            let mut resolved_named = false;
            for s in &specs {
                match &s.port {
                    PortRef::Range(lo, hi) => ranges.push((*lo, *hi)),
                    PortRef::Named(name) => match direction {
                        // Ingress: the destination is this chain's pod.
                        Direction::Ingress => {
                            if let Some(n) = pod.resolve_port(name, proto) {
                                ranges.push((n, n));
                                resolved_named = true;
                            }
                        }
                        Direction::Egress => named.push((name.clone(), proto)),
                    },
                    PortRef::Any => {}
                }
            }
            let ranges = merge_ports(ranges);
            match ranges.as_slice() {
                [] => {}
                [(lo, hi)] => plain.push(vec![
                    Match::L4Proto(proto.number()),
                    Match::DPort { lo: *lo, hi: *hi },
                ]),
                _ => {
                    // Ports resolved from names on this pod make the set
                    // this pod's own; numeric-only sets are shared.
                    let mut p: Vec<&str> = parts.to_vec();
                    if resolved_named {
                        p.push(&pod.name);
                    }
                    let name = self.shared_set(ident(proto.lower(), &p), SetKind::Ports, |_| {
                        ranges
                            .iter()
                            .map(|(lo, hi)| Element::PortRange(*lo, *hi))
                            .collect()
                    });
                    plain.push(vec![
                        Match::L4Proto(proto.number()),
                        Match::DPortInSet { set: name },
                    ]);
                }
            }
        }
        named.sort();
        named.dedup();
        PortPlan { plain, named }
    }

    /// `nam4_`/`nam6_`: (pod IP, protocol, port) for every destination pod
    /// that is a peer of the rule and defines one of the named ports.
    fn named_port_set(
        &mut self,
        family: Family,
        pol: &Policy,
        r: &PolicyRule,
        named: &[(String, Protocol)],
        parts: &[&str],
    ) -> String {
        let name = ident(&format!("nam{}", family_digit(family)), parts);
        if self.rs.sets.contains_key(&name) {
            return name;
        }
        let mut elements = BTreeSet::new();
        let shared = self.shared;
        let mut add = |p: &Pod, ip: &std::net::IpAddr| {
            // A named port on a shared address resolves on no single pod.
            if shared.contains_key(ip) {
                return;
            }
            for (port_name, proto) in named {
                if let Some(n) = p.resolve_port(port_name, *proto) {
                    elements.insert(Element::AddrProtoPort(*ip, proto.number(), n));
                }
            }
        };
        let in_family = |ip: &&std::net::IpAddr| Family::of(ip) == family;
        match &r.peers {
            None => {
                for p in self.cluster.pods().filter(|p| p.is_policy_pod()) {
                    p.ips.iter().filter(in_family).for_each(|ip| add(p, ip));
                }
            }
            Some(peers) => {
                for p in peer_pods(self.cluster, pol, peers) {
                    p.ips.iter().filter(in_family).for_each(|ip| add(p, ip));
                }
                let blocks: Vec<&AddrRange> = peers
                    .iter()
                    .flat_map(|p| match p {
                        Peer::IpBlock { ranges, .. } => ranges.iter().collect(),
                        Peer::Pods { .. } => Vec::new(),
                    })
                    .collect();
                if !blocks.is_empty() {
                    for p in self.cluster.pods().filter(|p| p.is_policy_pod()) {
                        for ip in p.ips.iter().filter(in_family) {
                            if blocks.iter().any(|b| b.contains(*ip)) {
                                add(p, ip);
                            }
                        }
                    }
                }
            }
        }
        self.rs.sets.insert(
            name.clone(),
            Set {
                kind: SetKind::AddrProtoPort { family },
                elements,
            },
        );
        name
    }
}

/// Whether `ip` may stand for a selected peer: a shared address only
/// when every pod claiming it is selected, so sharing never widens what a
/// policy admits.
fn peer_address_ok(
    shared: &BTreeMap<std::net::IpAddr, Vec<&Pod>>,
    ip: &std::net::IpAddr,
    selected: &BTreeSet<(String, String)>,
) -> bool {
    match shared.get(ip) {
        None => true,
        Some(pods) => pods.iter().all(|p| selected.contains(&p.key())),
    }
}

/// Pods any of `peers` selects (pod peers only), each once, in
/// namespace/name order.
fn peer_pods<'c>(cluster: &'c Cluster, pol: &Policy, peers: &[Peer]) -> Vec<&'c Pod> {
    let mut seen: BTreeMap<(&str, &str), &'c Pod> = BTreeMap::new();
    for peer in peers.iter().filter(|p| matches!(p, Peer::Pods { .. })) {
        for ns in cluster.namespaces_with_pods() {
            if !peer_selects_namespace(cluster, &pol.namespace, peer, ns) {
                continue;
            }
            for p in cluster.pods_in(ns) {
                if p.is_policy_pod() && peer_selects_pod_in(peer, p) {
                    seen.insert((p.namespace.as_str(), p.name.as_str()), p);
                }
            }
        }
    }
    seen.into_values().collect()
}

/// Whether a peer's namespace part selects namespace `ns`.
fn peer_selects_namespace(cluster: &Cluster, policy_ns: &str, peer: &Peer, ns: &str) -> bool {
    match peer {
        Peer::Pods {
            namespace_selector: None,
            ..
        } => ns == policy_ns,
        Peer::Pods {
            namespace_selector: Some(sel),
            ..
        } => sel.matches(&cluster.namespace_labels(ns)),
        Peer::IpBlock { .. } => false,
    }
}

/// Whether a peer's pod part selects `pod` (its namespace checked apart).
fn peer_selects_pod_in(peer: &Peer, pod: &Pod) -> bool {
    match peer {
        Peer::Pods {
            pod_selector: None, ..
        } => true,
        Peer::Pods {
            pod_selector: Some(sel),
            ..
        } => sel.matches(&pod.labels),
        Peer::IpBlock { .. } => false,
    }
}

pub(crate) fn family_digit(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "4",
        Family::Ipv6 => "6",
    }
}

pub(crate) fn merge_ports(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in ranges {
        if let Some(last) = out.last_mut() {
            if u32::from(lo) <= u32::from(last.1) + 1 {
                last.1 = last.1.max(hi);
                continue;
            }
        }
        out.push((lo, hi));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_merge_only_when_touching() {
        assert_eq!(
            merge_ports(vec![(80, 80), (82, 82)]),
            vec![(80, 80), (82, 82)]
        );
        assert_eq!(merge_ports(vec![(81, 81), (80, 80)]), vec![(80, 81)]);
        assert_eq!(
            merge_ports(vec![(1, 100), (50, 60), (101, 65535)]),
            vec![(1, 65535)]
        );
        assert_eq!(
            merge_ports(vec![(65535, 65535), (65535, 65535)]),
            vec![(65535, 65535)]
        );
    }

    #[test]
    fn unisolated_cluster_compiles_to_skeleton_only() {
        let rs = compile(&Cluster::new(), "n");
        assert_eq!(rs.chains.len(), 2);
        assert_eq!(rs.sets.len(), 4);
        assert_eq!(rs.element_count(), 0);
    }
}
