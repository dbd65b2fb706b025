//! (cluster, node) -> ruleset IR. A pure function: same input, equal IR.
//!
//! Shape (see docs/ARCHITECTURE.md): base chains `forward` and `input`
//! accept established traffic, related traffic unless a local pod sends
//! it about a connection it is not an end of (`related.rs`), drop
//! invalid, pass IPv6 neighbour
//! discovery, then dispatch through the verdict maps `egress_v4/v6`
//! (source address) and `ingress_v4/v6` (destination address) to the
//! per-pod chains `egr_<ns>_<pod>` / `ing_<ns>_<pod>` of local isolated
//! pods. A per-pod chain holds the allows of the policies selecting the
//! pod, each commented with the policy rules it serves, then a drop.
//! Egress allows `return`, so the same packet still meets the
//! destination's ingress chain on the same node.
//!
//! Peers live in named sets keyed by their definition, not by the rule
//! that uses them: `pod4_<hash>` holds the pods one list of pod and
//! namespace selectors selects (peers without a namespace selector count
//! as the policy's namespace), `net4_`/`tcp_`/`udp_`/`sctp_` hold one
//! list of ipBlock ranges or ports, and `nam4_` the named ports of one
//! peer list resolved per destination pod. Every rule and pod with the
//! same peers shares one set (the same namespace selector in 500 policies
//! is one set), so a peer coming, going or changing labels is one element
//! in each set it affects, not a chain rewrite.
//!
//! The allows of a pod's NetworkPolicy part are a union, so they are
//! grouped by port match: one rule per (port match x peer kind x family),
//! whose set is the union of the peers of every policy rule admitting that
//! port (defined by the sorted list of their definitions). A pod that 500
//! policies admit on one port has one rule for them, not 500: the cost of
//! a new connection does not grow with the number of policies. The
//! rule's comment names the policy rules it serves.
//!
//! Rules are emitted only for the address families of the chain's own
//! pod, and maps and dispatch only for the families of the node's pods:
//! a chain never sees a packet of another family.

use crate::admin::compile as admin_compile;
use crate::admin::{AdminPolicy, Tier};
use crate::audit::{self, AuditOptions};
use crate::index::Cluster;
use crate::ipblock::{merge, AddrRange};
use crate::ir::*;
use crate::model::*;
use crate::names::{comment, ident, keyed, served};
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

/// The comment of the `forward` rule dropping new TCP connections that
/// do not start with a SYN.
pub const TCP_NO_SYN_COMMENT: &str = "new TCP connection without SYN: no mid-stream pick-up";

pub fn map_name(direction: Direction, family: Family) -> String {
    format!("{}_{}", direction.word(), family.suffix())
}

/// How the compiler enforces a direction. Kept here, not on the model's
/// `Direction`, because only the ruleset's shape depends on it.
pub(crate) trait Enforce {
    fn chain_prefix(self) -> &'static str;
    fn peer_dir(self) -> Dir;
    fn pod_dir(self) -> Dir;
    fn allow(self) -> Verdict;
    fn rules(self, p: &Policy) -> Option<&Vec<PolicyRule>>;
}

impl Enforce for Direction {
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
/// source validation on the interfaces `net` names. This full compile is
/// the reference: `incr` rebuilds the same ruleset from the units below
/// (one per local pod, the shared-address chains, source validation) and
/// must always equal it.
pub fn compile_node(cluster: &Cluster, node: &str, net: &NodeNet) -> Ruleset {
    compile_node_with(cluster, node, net, &AuditOptions::default())
}

/// [`compile_node`] with verdict logging for the whole node as `audit`
/// says (policies' own `nftpol.io/log` annotations apply regardless).
pub fn compile_node_with(
    cluster: &Cluster,
    node: &str,
    net: &NodeNet,
    audit: &AuditOptions,
) -> Ruleset {
    let shared = cluster.shared_addresses();
    let node_families = node_families(cluster, node);
    let fill = |_: &str| Some(cluster);
    let mut b = Builder::new(cluster, &shared, &fill, &node_families, audit);
    add_base_chains(&mut b.rs, &node_families);
    let admin = admin_policies(cluster);
    add_pass_chains(&mut b.rs, cluster, &node_families);
    for pod in local_pods(cluster, node) {
        b.pod_unit(pod, &admin);
    }
    b.shared_address_elements(node);
    crate::related::add_chains(&mut b.rs, cluster, node);
    crate::srcval::add_chains(&mut b.rs, cluster, node, net);
    b.rs.guard = crate::srcval::guard(cluster, node, net);
    crate::counters::add(&mut b.rs);
    b.rs
}

/// The policy pods scheduled on `node`, the ones that get chains.
pub(crate) fn local_pods<'c>(
    cluster: &'c Cluster,
    node: &'c str,
) -> impl Iterator<Item = &'c Pod> + 'c {
    cluster
        .pods_on(node)
        .into_iter()
        .filter(|p| p.is_policy_pod())
}

/// Both admin tiers in the order they are checked.
pub(crate) fn admin_policies(cluster: &Cluster) -> Vec<&AdminPolicy> {
    cluster
        .tier_policies(Tier::Admin)
        .into_iter()
        .chain(cluster.tier_policies(Tier::Baseline))
        .collect()
}

/// The base chains `forward` and `input`, dispatching for the node's
/// address families.
pub(crate) fn add_base_chains(rs: &mut Ruleset, families: &BTreeSet<Family>) {
    rs.chains.insert(
        CHAIN_FORWARD.to_string(),
        base_chain(
            Hook::Forward,
            &[Direction::Egress, Direction::Ingress],
            families,
        ),
    );
    // Pod -> its own node: only the pod's egress applies; the node's own
    // traffic to pods leaves through `output`, which is never filtered.
    rs.chains.insert(
        CHAIN_INPUT.to_string(),
        base_chain(Hook::Input, &[Direction::Egress], families),
    );
    crate::related::add_maps(rs, families);
}

/// Whether any admin policy is of the admin tier: then the node's
/// shared admin chains need the `<direction>_pass` chains and maps.
/// Decided on the cluster, not the node's pods, so that only admin
/// policies (which recompile the node) change it.
pub(crate) fn has_admin_tier(cluster: &Cluster) -> bool {
    cluster.admin_policies().any(|p| p.tier == Tier::Admin)
}

/// The `ingress_pass`/`egress_pass` chains (see
/// [`admin_compile::tier_pass_chain`]), when the cluster has an admin
/// tier.
pub(crate) fn add_pass_chains(rs: &mut Ruleset, cluster: &Cluster, families: &BTreeSet<Family>) {
    if !has_admin_tier(cluster) {
        return;
    }
    for direction in [Direction::Ingress, Direction::Egress] {
        let rules = families
            .iter()
            .map(|&family| Rule {
                matches: vec![],
                verdict: Verdict::AddrVmap {
                    family,
                    dir: direction.pod_dir(),
                    map: admin_compile::tier_pass_map(direction, family),
                },
                comment: None,
            })
            .collect();
        rs.chains.insert(
            admin_compile::tier_pass_chain(direction),
            Chain { base: None, rules },
        );
    }
}

/// Addresses several policy pods claim, with their claimants.
pub(crate) type SharedAddrs<'c> = BTreeMap<std::net::IpAddr, Vec<&'c Pod>>;

/// How a set's elements are computed from a cluster (and the shared
/// addresses), owning what it needs: `incr` keeps it for each set, so the
/// elements at a few addresses are recomputed by calling it on a cluster
/// cut down to them, without compiling a pod's chains.
pub(crate) type Recipe =
    std::sync::Arc<dyn Fn(&Cluster, &SharedAddrs<'_>) -> BTreeSet<Element> + Send + Sync>;

/// Which cluster a set's elements are computed from, by set name: `None`
/// leaves the set empty (the caller knows its elements already). The full
/// compile computes every set from the whole cluster; `incr` recomputes
/// only the sets an event can change, some of them from a cluster cut down
/// to the objects holding the addresses the event touched.
pub(crate) type Fill<'a> = dyn Fn(&str) -> Option<&'a Cluster> + 'a;

/// The address families of the node's policy pods. Packets reach a pod's
/// chain only through the verdict maps of its own addresses, so a family
/// no local pod has needs no map, no dispatch and no rule: an IPv4-only
/// node gets no IPv6 twins, and its first IPv6 pod brings them.
pub fn node_families(cluster: &Cluster, node: &str) -> BTreeSet<Family> {
    local_pods(cluster, node)
        .flat_map(|p| p.ips.iter().map(Family::of))
        .collect()
}

/// Whether any pod in `pods` has a chain in `direction`: isolated by a
/// policy of its namespace, or the subject of an admin or baseline policy
/// with rules in that direction.
pub fn any_isolated(cluster: &Cluster, pods: &[&Pod], direction: Direction) -> bool {
    pods.iter().any(|pod| {
        cluster.policies_in(&pod.namespace).any(|pol| {
            !pol.audit.staged
                && pol.pod_selector.matches(&pod.labels)
                && direction.rules(pol).is_some()
        }) || cluster.admin_policies().any(|pol| {
            !pol.rules(direction).is_empty() && admin_compile::selects(cluster, pol, pod)
        })
    })
}

/// Name of the chain that drops new flows to or from a shared address.
pub fn shared_chain_name(ip: &std::net::IpAddr) -> String {
    ident("dup", &[&ip.to_string().replace(':', "-")])
}

/// The staged chain of `pod` (see [`audit`]), and the staged
/// NetworkPolicy part an admin Pass in it goes to.
pub fn staged_chain_names(direction: Direction, pod: &Pod) -> (String, String) {
    let p = direction.chain_prefix();
    (
        ident(&format!("{p}s"), &[&pod.namespace, &pod.name]),
        ident(&format!("{p}sp"), &[&pod.namespace, &pod.name]),
    )
}

/// The chain an admin Pass of `pod` goes to: its NetworkPolicy part.
pub fn pass_chain_name(direction: Direction, pod: &Pod) -> String {
    ident(
        &format!("{}p", direction.chain_prefix()),
        &[&pod.namespace, &pod.name],
    )
}

/// Destinations that name no pod, which `forward` meets only between pods
/// on one bridge (no router forwards them): IPv6 link-local unicast,
/// multicast, broadcast. A pod accepts such packets (a link-local address
/// is its own, broadcast and all-hosts groups reach every socket bound to
/// the port) although the ingress verdict maps, keyed by pod addresses,
/// never judge them; so they would pass every ingress isolation on the
/// bridge. They are dropped for all pods, isolated or not: a bridge
/// floods them to every port, and on-link neighbour discovery, accepted
/// above, is the one such traffic pods need.
fn no_pod_destinations(families: &BTreeSet<Family>) -> Vec<Rule> {
    let prefix = |family, net: &str| Match::AddrPrefix {
        family,
        dir: Dir::Dst,
        net: net.parse().expect("a valid literal prefix"),
    };
    let mut rules = Vec::new();
    let mut drop = |m: Match, what: &str| {
        rules.push(Rule {
            matches: vec![m, Match::Counter],
            verdict: Verdict::Drop,
            comment: Some(format!("{what}: no pod to judge it for")),
        })
    };
    if families.contains(&Family::Ipv4) {
        drop(prefix(Family::Ipv4, "224.0.0.0/4"), "IPv4 multicast");
        drop(Match::DaddrBroadcast, "IPv4 broadcast");
    }
    if families.contains(&Family::Ipv6) {
        drop(prefix(Family::Ipv6, "ff00::/8"), "IPv6 multicast");
        drop(prefix(Family::Ipv6, "fe80::/10"), "IPv6 link-local");
    }
    rules
}

/// IPv6 sources that name no pod, which `forward` meets only between
/// pods on one bridge (the kernel never routes them): link-local and
/// unspecified. Source validation lets them out of a pod for neighbour
/// discovery and MLD, and the egress verdict maps, keyed by pod
/// addresses, never judge them; so a pod could send router solicitations
/// and advertisements or MLD reports past its own egress policy to a
/// neighbour's global address, and an advertisement makes the sender
/// that neighbour's default router. On-link NS/NA, accepted above, is
/// the only such traffic pods exchange; the rest is dropped for all pods,
/// as for destinations that name no pod.
fn no_pod_sources() -> Vec<Rule> {
    [
        ("fe80::/10", "IPv6 link-local source"),
        ("::/128", "IPv6 unspecified source"),
    ]
    .into_iter()
    .map(|(net, what)| Rule {
        matches: vec![
            Match::AddrPrefix {
                family: Family::Ipv6,
                dir: Dir::Src,
                net: net.parse().expect("a valid literal prefix"),
            },
            Match::Counter,
        ],
        verdict: Verdict::Drop,
        comment: Some(format!("{what}: no pod's egress to judge it")),
    })
    .collect()
}

fn base_chain(hook: Hook, dispatch: &[Direction], families: &BTreeSet<Family>) -> Chain {
    let mut rules = vec![Rule {
        matches: vec![Match::CtState([CtState::Established].into())],
        verdict: Verdict::Accept,
        comment: None,
    }];
    // Related packets (ICMP errors) only from an end of the connection
    // they name, when a local pod sends them (`related.rs`).
    rules.extend(crate::related::base_rules(families));
    rules.push(Rule {
        matches: vec![Match::CtState([CtState::Invalid].into())],
        verdict: Verdict::Drop,
        comment: None,
    });
    // A connection whose conntrack entry is gone (cut by revocation, or
    // flushed) would be picked up mid-stream as a new one in whichever
    // direction its next segment goes (the kernel's default
    // nf_conntrack_tcp_loose): a server that may open connections to its
    // client would revive a cut connection, its client's packets passing
    // as replies. A TCP connection through the node starts with a SYN.
    // Not in `input`: there the other end is the node, which `output`
    // (never filtered) lets pick up such a connection anyway.
    if hook == Hook::Forward {
        rules.push(Rule {
            matches: vec![Match::CtState([CtState::New].into()), Match::TcpNotSyn],
            verdict: Verdict::Drop,
            comment: Some(TCP_NO_SYN_COMMENT.into()),
        });
    }
    // Neighbour discovery never crosses a router: hop limit 255 proves
    // the packet was not routed (the forward hook sees it already
    // decremented), so only on-link ND passes: to the node, or between
    // pods on one bridge. Without IPv6 pods nothing filters IPv6 anyway.
    if families.contains(&Family::Ipv6) {
        rules.push(Rule {
            matches: vec![
                Match::Icmpv6Type {
                    lo: ND_TYPES.0,
                    hi: ND_TYPES.1,
                },
                Match::Ip6HopLimit(255),
            ],
            verdict: Verdict::Accept,
            comment: Some("IPv6 neighbour discovery, on-link only".into()),
        });
        if hook == Hook::Forward {
            rules.extend(no_pod_sources());
        }
    }
    for &direction in dispatch {
        if direction == Direction::Ingress {
            rules.extend(no_pod_destinations(families));
        }
        for &family in families {
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
    pub(crate) shared: &'a SharedAddrs<'a>,
    fill: &'a Fill<'a>,
    /// The address families of the pod whose chains are being built: its
    /// chains only ever see packets of these, so rules naming another
    /// family's addresses are left out.
    families: BTreeSet<Family>,
    /// The definition of every set made so far, by name.
    set_keys: BTreeMap<String, String>,
    /// The definition of every shared tier chain made so far, by name.
    chain_keys: BTreeMap<String, String>,
    pub(crate) audit: &'a AuditOptions,
    /// Compiling a staged chain: verdicts are not logged there (the
    /// enforced chain logs them), only what would be denied.
    pub(crate) staging: bool,
    /// When kept (`incr` does), the recipe of every set made, by name.
    pub(crate) recipes: Option<BTreeMap<String, Recipe>>,
    /// What the admin part selects in `cluster`, worked out once.
    pub(crate) selections: crate::admin::select::Selections<'a>,
    /// The shared tier chain (or none) of every tier decided so far.
    pub(crate) tier_chains: std::collections::HashMap<admin_compile::TierKey, Option<String>>,
}

/// The allows of a pod's chain that share one port match.
#[derive(Default)]
struct PortGroup<'p> {
    /// A rule of the group admits every peer.
    every_peer: bool,
    /// (policy, peers, the rule's name) of the rules with pod peers.
    pods: Vec<(&'p Policy, &'p [Peer], String)>,
    /// The ipBlock ranges of every rule of the group, with the rule's name.
    blocks: Vec<(AddrRange, String)>,
    /// The policy rules the group serves, in chain order.
    notes: Vec<String>,
}

impl<'p> PortGroup<'p> {
    fn add(&mut self, pol: &'p Policy, r: &'p PolicyRule, note: &str) {
        match &r.peers {
            None => self.every_peer = true,
            Some(peers) => {
                if peers.iter().any(|p| matches!(p, Peer::Pods { .. })) {
                    self.pods.push((pol, peers, note.to_string()));
                }
                for p in peers {
                    if let Peer::IpBlock { ranges, .. } = p {
                        self.blocks
                            .extend(ranges.iter().map(|r| (*r, note.to_string())));
                    }
                }
            }
        }
        if self.notes.last().map(String::as_str) != Some(note) {
            self.notes.push(note.to_string());
        }
    }
}

/// A rule with egress named ports: its policy, itself, and the names.
type NamedRule<'p> = (&'p Policy, &'p PolicyRule, Vec<(String, Protocol)>);

/// What a named-port set's recipe keeps of a [`NamedRule`]: the policy's
/// namespace, the rule's peers and the names.
type OwnedNamedRule = (String, Option<Vec<Peer>>, Vec<(String, Protocol)>);

/// The rules of a pod's chain with egress named ports.
#[derive(Default)]
struct NamedGroup<'p> {
    rules: Vec<NamedRule<'p>>,
    notes: Vec<String>,
}

/// The port matches of one rule, split by how they are enforced.
struct PortPlan {
    /// Alternatives combined with the peer matches (each a list of matches).
    plain: Vec<Vec<Match>>,
    /// Named ports (egress only): resolved per destination pod into a
    /// concatenated set that already restricts the peer.
    named: Vec<(String, Protocol)>,
}

impl<'a> Builder<'a> {
    /// A builder holding only the (empty) dispatch maps of the node's
    /// address families, logging as `audit` says.
    pub(crate) fn new(
        cluster: &'a Cluster,
        shared: &'a SharedAddrs<'a>,
        fill: &'a Fill<'a>,
        node_families: &BTreeSet<Family>,
        audit: &'a AuditOptions,
    ) -> Builder<'a> {
        let mut rs = Ruleset::default();
        let passes = has_admin_tier(cluster);
        for direction in [Direction::Ingress, Direction::Egress] {
            for &family in node_families {
                let mut maps = vec![map_name(direction, family)];
                if passes {
                    maps.push(admin_compile::tier_pass_map(direction, family));
                }
                for name in maps {
                    rs.sets.insert(
                        name,
                        Set {
                            kind: SetKind::Vmap { family },
                            elements: BTreeSet::new(),
                        },
                    );
                }
            }
        }
        Builder {
            cluster,
            rs,
            shared,
            fill,
            families: BTreeSet::new(),
            set_keys: BTreeMap::new(),
            chain_keys: BTreeMap::new(),
            audit,
            staging: false,
            recipes: None,
            selections: crate::admin::select::Selections::new(cluster),
            tier_chains: std::collections::HashMap::new(),
        }
    }

    /// A local pod's chains in both directions, the dispatch elements that
    /// reach them and the sets they name.
    pub(crate) fn pod_unit(&mut self, pod: &Pod, admin: &[&'a AdminPolicy]) {
        self.families = pod.ips.iter().map(Family::of).collect();
        let selecting: Vec<&Policy> = self
            .cluster
            .policies_in(&pod.namespace)
            .filter(|pol| pol.pod_selector.matches(&pod.labels))
            .collect();
        let subject_of = self.selections.subject_of(admin, pod);
        for direction in [Direction::Ingress, Direction::Egress] {
            let (staged, isolating): (Vec<&Policy>, Vec<&Policy>) = selecting
                .iter()
                .copied()
                .filter(|pol| direction.rules(pol).is_some())
                .partition(|pol| pol.audit.staged);
            self.pod_chains(pod, direction, &isolating, &staged, &subject_of);
        }
    }

    /// The families rules of the current pod's chains are emitted for.
    pub(crate) fn families(&self) -> Vec<Family> {
        self.families.iter().copied().collect()
    }

    /// Returns the set defined by `key` (see [`keyed`]), creating it with
    /// `elements` the first time: every rule of every pod whose peers or
    /// ports have the same definition shares one set, so a peer pod coming,
    /// going or changing labels is one element in each set it affects.
    ///
    /// `elements` must depend on nothing but its arguments (the cluster and
    /// the shared addresses), so a set's name determines its elements, and each
    /// element that holds one address (`Addr`, `AddrProtoPort`) must depend
    /// only on the objects holding that address, so that computing it from
    /// a cluster cut down to those objects gives the same element. Interval
    /// and port sets must not depend on pods other than the chain's own.
    /// `incr` relies on all three; its property test checks them.
    pub(crate) fn shared_set(
        &mut self,
        prefix: &str,
        key: String,
        kind: SetKind,
        elements: impl Fn(&Cluster, &SharedAddrs<'_>) -> BTreeSet<Element> + Send + Sync + 'static,
    ) -> String {
        self.shared_set_first(prefix, key, kind, elements, None::<fn(&mut Self) -> _>)
    }

    /// [`Builder::shared_set`] whose elements, when computed from the
    /// builder's own cluster, come from `first` instead: the same
    /// elements, found through what this compile already worked out
    /// (`selections`). `elements` stays the set's recipe.
    pub(crate) fn shared_set_first(
        &mut self,
        prefix: &str,
        key: String,
        kind: SetKind,
        elements: impl Fn(&Cluster, &SharedAddrs<'_>) -> BTreeSet<Element> + Send + Sync + 'static,
        first: Option<impl FnOnce(&mut Self) -> BTreeSet<Element>>,
    ) -> String {
        let name = keyed(prefix, &key);
        match self.set_keys.get(&name) {
            Some(known) => debug_assert_eq!(known, &key, "set name collision"),
            None => {
                let computed = match ((self.fill)(&name), first) {
                    (Some(cluster), Some(first))
                        if std::ptr::eq(cluster, self.selections.cluster()) =>
                    {
                        first(self)
                    }
                    (Some(cluster), _) => elements(cluster, self.shared),
                    (None, _) => BTreeSet::new(),
                };
                self.rs.sets.insert(
                    name.clone(),
                    Set {
                        kind,
                        elements: computed,
                    },
                );
                self.set_keys.insert(name.clone(), key);
                if let Some(r) = &mut self.recipes {
                    r.insert(name.clone(), std::sync::Arc::new(elements));
                }
            }
        }
        name
    }

    /// Whether this builder has built the shared chain `name`, defined by
    /// `key`, already.
    pub(crate) fn has_chain(&self, name: &str, key: &str) -> bool {
        match self.chain_keys.get(name) {
            Some(known) => {
                debug_assert_eq!(known, key, "chain name collision");
                true
            }
            None => false,
        }
    }

    /// Adds the shared chain `name`, defined by `key`.
    pub(crate) fn add_chain(&mut self, name: String, key: String, rules: Vec<Rule>) {
        self.rs
            .chains
            .insert(name.clone(), Chain { base: None, rules });
        self.chain_keys.insert(name, key);
    }

    /// A set whose elements are its definition (ipBlocks, port lists).
    /// The match of one protocol's ports: nothing for no ports, a plain
    /// range for one merged range, else a port set shared by content
    /// (named ports resolved on this pod are plain numbers by now, so pods
    /// that resolve them alike share it). `prefix` keeps the admin tier's
    /// sets apart from NetworkPolicy's.
    pub(crate) fn ports_match(
        &mut self,
        prefix: &str,
        proto: Protocol,
        ranges: Vec<(u16, u16)>,
    ) -> Option<Vec<Match>> {
        let ranges = merge_ports(ranges);
        let port = match ranges.as_slice() {
            [] => return None,
            [(lo, hi)] => Match::DPort { lo: *lo, hi: *hi },
            _ => {
                let elements = ranges
                    .iter()
                    .map(|(lo, hi)| Element::PortRange(*lo, *hi))
                    .collect();
                let set = self.content_set(
                    &format!("{prefix}{}", proto.lower()),
                    SetKind::Ports,
                    elements,
                );
                Match::DPortInSet { set }
            }
        };
        Some(vec![Match::L4Proto(proto.number()), port])
    }

    pub(crate) fn content_set(
        &mut self,
        prefix: &str,
        kind: SetKind,
        elements: BTreeSet<Element>,
    ) -> String {
        let key = format!("{kind:?} {elements:?}");
        self.shared_set(prefix, key, kind, move |_, _| elements.clone())
    }

    /// The pod's chain in `direction`: the admin tier, then the
    /// NetworkPolicy part (the NetworkPolicies' rules and drop when they
    /// isolate the pod, else the baseline tier), then, by falling off the
    /// end, the default allow. A pod none of this touches gets no chain.
    /// The tiers are shared chains entered by `goto`
    /// ([`admin_compile::tier_chain`]); with an admin tier the
    /// NetworkPolicy part is a chain of its own (`ingp_`/`egrp_`) that the
    /// pass map leads to by the pod's address. `subject_of`: the admin and
    /// baseline policies whose subject the pod is, in tier order.
    ///
    /// Staged policies isolating the pod get a staged chain, jumped to
    /// first, only while no enforced policy isolates it: enforced
    /// policies already deny everything the staged ones could add to, so
    /// nothing more would be denied.
    fn pod_chains(
        &mut self,
        pod: &Pod,
        direction: Direction,
        isolating: &[&Policy],
        staged: &[&Policy],
        subject_of: &[&AdminPolicy],
    ) {
        let chain_name = pod_chain_name(direction, pod);
        let staged_jump = (isolating.is_empty() && !staged.is_empty())
            .then(|| self.staged_chain(pod, direction, staged, subject_of));
        let admin = admin_compile::tier_chain(self, subject_of, pod, direction, Tier::Admin);
        let tail = if isolating.is_empty() {
            admin_compile::tier_chain(self, subject_of, pod, direction, Tier::Baseline)
                .map(|baseline| {
                    vec![Rule {
                        matches: vec![],
                        verdict: Verdict::Goto(baseline),
                        comment: Some("baseline tier".into()),
                    }]
                })
                .unwrap_or_default()
        } else {
            self.netpol_rules(pod, direction, isolating)
        };
        if admin.is_none() && tail.is_empty() && staged_jump.is_none() {
            return;
        }
        let mut rules = Vec::new();
        if let Some(staged_chain) = staged_jump {
            // The admin tier's shared-peer drop first (the shared chain
            // opens with it too): the staged chain then judges only what
            // the enforced chain may let through.
            rules.extend(admin_compile::shared_peer_rules(
                self,
                subject_of,
                direction,
                Tier::Admin,
            ));
            rules.push(Rule {
                matches: vec![],
                verdict: Verdict::Jump(staged_chain),
                comment: Some("staged policies (audit only)".into()),
            });
        }
        // With an admin tier, the pod's NetworkPolicy part is a chain of
        // its own that the shared admin chain reaches by the pod's address
        // (a Pass, or its end); a pod with nothing there needs none.
        let pass = match admin {
            Some(admin) => {
                rules.push(Rule {
                    matches: vec![],
                    verdict: Verdict::Goto(admin),
                    comment: Some("admin tier".into()),
                });
                let pass = pass_chain_name(direction, pod);
                if tail.is_empty() {
                    None
                } else {
                    self.rs.chains.insert(
                        pass.clone(),
                        Chain {
                            base: None,
                            rules: tail,
                        },
                    );
                    Some(pass)
                }
            }
            None => {
                rules.extend(tail);
                None
            }
        };
        self.rs
            .chains
            .insert(chain_name.clone(), Chain { base: None, rules });
        for ip in &pod.ips {
            // A shared address gets its own chain (shared_address_elements).
            if self.shared.contains_key(ip) {
                continue;
            }
            let family = Family::of(ip);
            if let Some(map) = self.rs.sets.get_mut(&map_name(direction, family)) {
                map.elements
                    .insert(Element::VmapJump(*ip, chain_name.clone()));
            }
            if let Some(pass) = &pass {
                let name = admin_compile::tier_pass_map(direction, family);
                if let Some(map) = self.rs.sets.get_mut(&name) {
                    map.elements.insert(Element::VmapJump(*ip, pass.clone()));
                }
            }
        }
    }

    /// The staged chain of a pod: its admin tier and the staged
    /// policies' rules, compiled as if they were enforced, every verdict
    /// turned into a `return` and the default drop into a `would-deny`
    /// log. Returns its name.
    fn staged_chain(
        &mut self,
        pod: &Pod,
        direction: Direction,
        staged: &[&Policy],
        subject_of: &[&AdminPolicy],
    ) -> String {
        let (name, pass) = staged_chain_names(direction, pod);
        self.staging = true;
        let mut rules =
            admin_compile::tier_rules(self, subject_of, pod, direction, Tier::Admin, &pass);
        let mut tail = self.netpol_rules(pod, direction, staged);
        self.staging = false;
        audit::stage(&mut rules, |c| c.to_string());
        audit::stage(&mut tail, |c| c.to_string());
        tail.pop();
        tail.extend(self.audit.would_deny(direction, staged));
        self.insert_tiered_chain(name.clone(), pass, rules, tail);
        name
    }

    /// Inserts the chain `name`: the admin-tier `rules`, then `tail` (the
    /// NetworkPolicy part and what follows it). When an admin Pass jumps
    /// past the rest of the admin tier, `tail` is its own chain `pass`,
    /// the goto target, and the admin tier ends in a goto to it.
    fn insert_tiered_chain(
        &mut self,
        name: String,
        pass: String,
        mut rules: Vec<Rule>,
        tail: Vec<Rule>,
    ) {
        if rules
            .iter()
            .any(|r| r.verdict == Verdict::Goto(pass.clone()))
        {
            rules.push(Rule {
                matches: vec![],
                verdict: Verdict::Goto(pass.clone()),
                comment: Some("end of admin tier".into()),
            });
            self.rs.chains.insert(
                pass,
                Chain {
                    base: None,
                    rules: tail,
                },
            );
        } else {
            rules.extend(tail);
        }
        self.rs.chains.insert(name, Chain { base: None, rules });
    }

    /// The NetworkPolicy part for a pod they isolate: the allows of every
    /// rule of every isolating policy, then the drop. The allows are a
    /// union, so their order does not matter: rules are grouped by their
    /// port match, and each group is one nft rule per peer kind and family
    /// whose set holds the peers of every rule in the group. A pod that 500
    /// policies admit on one port walks one rule, not 500.
    fn netpol_rules(
        &mut self,
        pod: &Pod,
        direction: Direction,
        isolating: &[&Policy],
    ) -> Vec<Rule> {
        let mut groups: BTreeMap<Vec<Match>, PortGroup> = BTreeMap::new();
        let mut named = NamedGroup::default();
        for &pol in isolating {
            let Some(prules) = direction.rules(pol) else {
                continue;
            };
            for (i, r) in prules.iter().enumerate() {
                let note = format!("{}/{} {}[{i}]", pol.namespace, pol.name, direction.word());
                let ports = self.port_plan(pod, direction, r);
                for port in ports.plain {
                    groups.entry(port).or_default().add(pol, r, &note);
                }
                if !ports.named.is_empty() {
                    named.rules.push((pol, r, ports.named));
                    named.notes.push(note);
                }
            }
        }
        let mut rules = Vec::new();
        for (port, group) in &groups {
            self.port_group_rules(&mut rules, direction, port, group);
        }
        if !named.rules.is_empty() {
            for family in self.families() {
                let set = self.named_port_set(family, &named.rules);
                rules.push(Rule {
                    matches: vec![Match::DAddrProtoPortInSet { family, set }],
                    verdict: direction.allow(),
                    comment: Some(served(&named.notes)),
                });
            }
        }
        // Allows are grouped across policies, so an allow rule is logged
        // when any policy isolating the pod logs all, with the rules it
        // serves (its comment) as prefix.
        if isolating.iter().any(|p| self.audit.mode(p) == LogMode::All) && !self.staging {
            let allows = std::mem::take(&mut rules);
            for r in allows {
                let prefix = format!("{} allow", r.comment.as_deref().unwrap_or_default());
                rules.push(self.audit.log_before(&r, prefix));
                rules.push(r);
            }
        }
        let names: Vec<String> = isolating
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let drop = Rule {
            matches: vec![],
            verdict: Verdict::Drop,
            comment: Some(comment(format!(
                "{} isolated by {}",
                direction.word(),
                names.join(", ")
            ))),
        };
        let logged = isolating
            .iter()
            .any(|p| self.audit.mode(p) >= LogMode::Deny);
        if logged && !self.staging {
            rules.push(
                self.audit
                    .log_before(&drop, audit::default_deny_prefix(pod)),
            );
        }
        rules.push(drop);
        rules
    }

    /// A shared address names no single pod, so no pod's policies can be
    /// applied to it: when a pod here claims it and any claimant is
    /// isolated in a direction, new flows in that direction are dropped
    /// (and counted) instead.
    pub(crate) fn shared_address_elements(&mut self, node: &str) {
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

    /// The rules of one port group: nothing but the port match when a rule
    /// of the group admits every peer, else one rule per family for the
    /// group's pod peers and one for its ipBlocks.
    fn port_group_rules(
        &mut self,
        out: &mut Vec<Rule>,
        direction: Direction,
        port: &[Match],
        group: &PortGroup,
    ) {
        let verdict = direction.allow();
        let rule = |peer: Option<Match>, notes: &[String]| Rule {
            matches: peer.into_iter().chain(port.iter().cloned()).collect(),
            verdict: verdict.clone(),
            comment: Some(served(notes)),
        };
        if group.every_peer {
            // It admits what every other rule of the group admits.
            out.push(rule(None, &group.notes));
            return;
        }
        let dir = direction.peer_dir();
        for family in self.families() {
            if !group.pods.is_empty() {
                let set = self.pod_peer_set(family, &group.pods);
                let notes: Vec<String> = group.pods.iter().map(|p| p.2.clone()).collect();
                out.push(rule(Some(Match::AddrInSet { family, dir, set }), &notes));
            }
            let ranges: Vec<AddrRange> = group
                .blocks
                .iter()
                .filter(|r| Family::of(&r.0.lo) == family)
                .map(|r| r.0)
                .collect();
            let mut notes: Vec<String> = Vec::new();
            for (r, note) in &group.blocks {
                if Family::of(&r.lo) == family && !notes.contains(note) {
                    notes.push(note.clone());
                }
            }
            if !ranges.is_empty() {
                let elements = merge(ranges)
                    .into_iter()
                    .map(|r| Element::AddrRange(r.lo, r.hi))
                    .collect();
                let set = self.content_set(
                    &format!("net{}", family_digit(family)),
                    SetKind::Addr {
                        family,
                        interval: true,
                    },
                    elements,
                );
                out.push(rule(Some(Match::AddrInSet { family, dir, set }), &notes));
            }
        }
    }

    /// Puts a log rule before each rule of `out` from `start` on.
    pub(crate) fn log_each(&self, out: &mut Vec<Rule>, start: usize, prefix: &str) {
        let rules = out.split_off(start);
        for r in rules {
            out.push(self.audit.log_before(&r, prefix.to_string()));
            out.push(r);
        }
    }

    /// `pod4_`/`pod6_`: the addresses of the pods any of `defs` (policy,
    /// peers) selects. Its definition is the sorted list of theirs, so it
    /// stays the same set while pods come, go and change labels.
    fn pod_peer_set(&mut self, family: Family, defs: &[(&Policy, &[Peer], String)]) -> String {
        let mut keyed_defs: BTreeMap<String, (&Policy, &[Peer])> = BTreeMap::new();
        for (pol, peers, _) in defs {
            keyed_defs.insert(pod_peers_key(&pol.namespace, peers), (*pol, *peers));
        }
        let key = keyed_defs.keys().cloned().collect::<Vec<_>>().join(" || ");
        let owned: Vec<(String, Vec<Peer>)> = keyed_defs
            .values()
            .map(|(pol, peers)| (pol.namespace.clone(), peers.to_vec()))
            .collect();
        self.shared_set_first(
            &format!("pod{}", family_digit(family)),
            key,
            SetKind::Addr {
                family,
                interval: false,
            },
            move |cluster, shared| {
                let mut elements = BTreeSet::new();
                for (ns, peers) in &owned {
                    let pods = peer_pods(cluster, ns, peers);
                    peer_elements(&mut elements, family, shared, &pods);
                }
                elements
            },
            Some(|b: &mut Builder<'_>| {
                let mut elements = BTreeSet::new();
                for (key, (pol, peers)) in &keyed_defs {
                    let pods = b.selections.netpol_peer_pods(key, &pol.namespace, peers);
                    peer_elements(&mut elements, family, b.shared, &pods);
                }
                elements
            }),
        )
    }

    fn port_plan(&mut self, pod: &Pod, direction: Direction, r: &PolicyRule) -> PortPlan {
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
            for s in &specs {
                match &s.port {
                    PortRef::Range(lo, hi) => ranges.push((*lo, *hi)),
                    PortRef::Named(name) => match direction {
                        // Ingress: the destination is this chain's pod.
                        Direction::Ingress => {
                            if let Some(n) = pod.resolve_port(name, proto) {
                                ranges.push((n, n));
                            }
                        }
                        Direction::Egress => named.push((name.clone(), proto)),
                    },
                    PortRef::Any => {}
                }
            }
            plain.extend(self.ports_match("", proto, ranges));
        }
        named.sort();
        named.dedup();
        PortPlan { plain, named }
    }

    /// `nam4_`/`nam6_`: (pod IP, protocol, port) for every destination pod
    /// that is a peer of one of `rules` and defines one of its named ports.
    fn named_port_set(&mut self, family: Family, rules: &[NamedRule]) -> String {
        let mut keys: Vec<String> = rules
            .iter()
            .map(|(pol, r, named)| {
                format!(
                    "{} named {named:?}",
                    r.peers.as_ref().map_or_else(
                        || "every peer".to_string(),
                        |p| peers_key(&pol.namespace, p)
                    )
                )
            })
            .collect();
        keys.sort();
        keys.dedup();
        let key = keys.join(" || ");
        let prefix = format!("nam{}", family_digit(family));
        if let Some(name) = self.known_set(&prefix, &key) {
            return name;
        }
        let rules: Vec<OwnedNamedRule> = rules
            .iter()
            .map(|(pol, r, named)| (pol.namespace.clone(), r.peers.clone(), named.clone()))
            .collect();
        self.shared_set(
            &prefix,
            key,
            SetKind::AddrProtoPort { family },
            move |cluster, shared| {
                let mut elements = BTreeSet::new();
                for (ns, peers, named) in &rules {
                    elements.extend(named_port_elements(
                        cluster,
                        shared,
                        family,
                        ns,
                        peers.as_deref(),
                        named,
                    ));
                }
                elements
            },
        )
    }

    /// The name of the set `key` defines, when it was made already.
    fn known_set(&self, prefix: &str, key: &str) -> Option<String> {
        let name = keyed(prefix, key);
        self.set_keys.contains_key(&name).then_some(name)
    }
}

/// (pod address, protocol, port) of every pod among `peers` (of a rule
/// of a policy in `policy_ns`; `None`: every pod) that declares one of
/// the `named` ports, from `cluster`.
fn named_port_elements(
    cluster: &Cluster,
    shared: &SharedAddrs<'_>,
    family: Family,
    policy_ns: &str,
    peers: Option<&[Peer]>,
    named: &[(String, Protocol)],
) -> BTreeSet<Element> {
    let mut elements = BTreeSet::new();
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
    match peers {
        None => {
            for p in cluster.pods().filter(|p| p.is_policy_pod()) {
                p.ips.iter().filter(in_family).for_each(|ip| add(p, ip));
            }
        }
        Some(peers) => {
            for p in peer_pods(cluster, policy_ns, peers) {
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
                for p in cluster.pods().filter(|p| p.is_policy_pod()) {
                    for ip in p.ips.iter().filter(in_family) {
                        if blocks.iter().any(|b| b.contains(*ip)) {
                            add(p, ip);
                        }
                    }
                }
            }
        }
    }
    elements
}

/// A selector as text, the same for selectors that differ only in the
/// order of their expressions.
pub(crate) fn selector_key(s: &crate::selector::Selector) -> String {
    let mut exprs = s.match_expressions.clone();
    exprs.sort();
    exprs.dedup();
    format!("{:?} {exprs:?}", s.match_labels)
}

/// The definition of the pod peers of a rule of a policy in `policy_ns`:
/// peers without a namespace selector stand for the policy's namespace,
/// so equal peer lists of policies in different namespaces differ, and
/// equal namespace-selector peers of any namespace's policies are one.
pub(crate) fn pod_peers_key(policy_ns: &str, peers: &[Peer]) -> String {
    let mut parts: Vec<String> = peers
        .iter()
        .filter_map(|p| match p {
            Peer::Pods {
                pod_selector,
                namespace_selector,
            } => Some(format!(
                "{} / {}",
                namespace_selector
                    .as_ref()
                    .map_or_else(|| format!("namespace {policy_ns:?}"), selector_key),
                pod_selector
                    .as_ref()
                    .map_or_else(|| "every pod".to_string(), selector_key)
            )),
            Peer::IpBlock { .. } => None,
        })
        .collect();
    parts.sort();
    parts.dedup();
    parts.join(" | ")
}

/// The definition of all peers of a rule: its pod peers and its blocks.
fn peers_key(policy_ns: &str, peers: &[Peer]) -> String {
    let mut blocks: Vec<&AddrRange> = peers
        .iter()
        .flat_map(|p| match p {
            Peer::IpBlock { ranges, .. } => ranges.iter().collect(),
            Peer::Pods { .. } => Vec::new(),
        })
        .collect();
    blocks.sort_by_key(|r| (r.lo, r.hi));
    blocks.dedup();
    format!("{} blocks {blocks:?}", pod_peers_key(policy_ns, peers))
}

/// Adds the addresses in `family` of the selected peer pods `pods` to
/// `elements`: a shared address only when every pod claiming it is
/// selected, so sharing never widens what a policy admits.
fn peer_elements(
    elements: &mut BTreeSet<Element>,
    family: Family,
    shared: &SharedAddrs<'_>,
    pods: &[&Pod],
) {
    let selected: BTreeSet<(&str, &str)> = match shared.is_empty() {
        true => BTreeSet::new(),
        false => pods
            .iter()
            .map(|p| (p.namespace.as_str(), p.name.as_str()))
            .collect(),
    };
    let ok = |ip: &std::net::IpAddr| match shared.get(ip) {
        None => true,
        Some(claimants) => claimants
            .iter()
            .all(|p| selected.contains(&(p.namespace.as_str(), p.name.as_str()))),
    };
    elements.extend(
        pods.iter()
            .flat_map(|p| p.ips.iter())
            .filter(|ip| Family::of(ip) == family && ok(ip))
            .map(|ip| Element::Addr(*ip)),
    );
}

/// Pods any of `peers` (of a policy in `policy_ns`) selects (pod peers
/// only), each once, in namespace/name order.
pub(crate) fn peer_pods<'c>(cluster: &'c Cluster, policy_ns: &str, peers: &[Peer]) -> Vec<&'c Pod> {
    let mut seen: BTreeMap<(&str, &str), &'c Pod> = BTreeMap::new();
    let mut add = |ns: &'c str, peer: &Peer| {
        for p in cluster.pods_in(ns) {
            if p.is_policy_pod() && peer_selects_pod_in(peer, p) {
                seen.insert((p.namespace.as_str(), p.name.as_str()), p);
            }
        }
    };
    for peer in peers.iter().filter(|p| matches!(p, Peer::Pods { .. })) {
        match peer {
            // The policy's own namespace: no need to look at the others.
            Peer::Pods {
                namespace_selector: None,
                ..
            } => {
                if let Some(ns) = cluster.namespace_with_pods(policy_ns) {
                    add(ns, peer);
                }
            }
            _ => {
                for ns in cluster.namespaces_with_pods() {
                    if peer_selects_namespace(cluster, policy_ns, peer, ns) {
                        add(ns, peer);
                    }
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
        // No pod, no family: no maps and no dispatch.
        assert_eq!(rs.sets.len(), 0);
        // established, related, invalid, no mid-stream TCP (forward only).
        assert_eq!(rs.rule_count(), 7);
        assert_eq!(rs.element_count(), 0);
    }

    fn cluster_of(yaml: &str) -> Cluster {
        let loaded = crate::manifest::parse("t.yaml", yaml);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        Cluster::from_objects(loaded.objects)
    }

    fn mentions_ipv6(rs: &Ruleset) -> Vec<String> {
        let text = crate::render::render_script(rs);
        text.lines()
            .filter(|l| l.contains("ip6") || l.contains("ipv6") || l.contains("_v6"))
            .map(str::to_string)
            .collect()
    }

    const TWO_PODS: &str = include_str!("testdata/b-from-a.yaml");
    const DUAL_STACK_POD: &str = "
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: x, labels: {app: b}}
spec: {nodeName: n1}
status: {podIPs: [{ip: 10.0.0.4}, {ip: 'fd00::4'}]}
";

    /// Pods x/a, y/b (servers on n1), z/c (client on n2); x and y each
    /// have a policy admitting namespace z's `role: client` pods on 80 and
    /// 443, and all of namespace `z` on 8443.
    fn two_policies_same_peers(client_role: &str) -> Cluster {
        let pod = |ns: &str, name: &str, role: &str, node: &str, ip: u8| {
            format!(
                "---\napiVersion: v1\nkind: Pod\n\
                 metadata: {{name: {name}, namespace: {ns}, labels: {{role: {role}}}}}\n\
                 spec: {{nodeName: {node}}}\nstatus: {{podIPs: [{{ip: 10.0.0.{ip}}}]}}\n"
            )
        };
        let policy = |ns: &str| {
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{name: from-z, namespace: {ns}}}\n\
                 spec: {{podSelector: {{}}, ingress: [\
                 {{from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: z}}}}, \
                 podSelector: {{matchLabels: {{role: client}}}}}}], ports: [{{port: 80}}, {{port: 443}}]}}, \
                 {{from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: z}}}}}}], \
                 ports: [{{port: 8443}}]}}]}}\n"
            )
        };
        let yaml = [
            pod("x", "a", "server", "n1", 1),
            pod("y", "b", "server", "n1", 2),
            pod("z", "c", client_role, "n2", 3),
            policy("x"),
            policy("y"),
        ]
        .concat();
        cluster_of(&yaml)
    }

    #[test]
    fn rules_with_the_same_peers_share_one_set_across_policies_and_pods() {
        let rs = compile(&two_policies_same_peers("client"), "n1");
        let pod_sets: Vec<&String> = rs.sets.keys().filter(|n| n.starts_with("pod4_")).collect();
        // Two distinct peer definitions, whatever the number of policies,
        // rules and pods using them; the port list is one set too.
        assert_eq!(pod_sets.len(), 2, "{:?}", rs.sets.keys());
        assert_eq!(rs.sets.keys().filter(|n| n.starts_with("tcp_")).count(), 1);
        for set in pod_sets {
            assert_eq!(
                rs.sets[set].elements,
                [Element::Addr("10.0.0.3".parse().unwrap())].into()
            );
        }
        // Each chain still names its own policy rules.
        let comments: BTreeSet<&str> = rs.chains["ing_y_b"]
            .rules
            .iter()
            .filter_map(|r| r.comment.as_deref())
            .collect();
        assert!(
            comments.contains("y/from-z ingress[0]") && comments.contains("y/from-z ingress[1]"),
            "{comments:?}"
        );
    }

    #[test]
    fn a_peer_label_change_touches_each_affected_set_once_and_no_chain() {
        let before = compile(&two_policies_same_peers("client"), "n1");
        let after = compile(&two_policies_same_peers("idle"), "n1");
        let tx = crate::diff::diff(&after, &before);
        let touched: Vec<&crate::diff::Op> = tx.ops.iter().collect();
        // The role selector's set loses the client, once for both
        // policies; the namespace-only set keeps it; no chain changes.
        assert_eq!(touched.len(), 1, "{touched:?}");
        assert!(
            matches!(touched[0], crate::diff::Op::DelElements { elements, .. } if elements.len() == 1),
            "{touched:?}"
        );
    }

    /// Server x/s on n1 selected by `n` policies, policy i admitting the
    /// pods `app: peer-<i>` of namespace p (on n2) on TCP 8080, and one
    /// more policy admitting 10.1.0.0/16 on 8080.
    /// `pods` pods in namespace x (every third labelled `tier: db`) on
    /// node n1, under two admin policies (one for every pod of x, one for
    /// its db pods, with a Pass) and a baseline one.
    fn admin_subjects(pods: usize) -> Cluster {
        let mut yaml = String::from(
            r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: all-x}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}
  ingress:
  - {action: Deny, from: [{namespaces: {matchLabels: {team: red}}}]}
  - {action: Pass, from: [{namespaces: {matchLabels: {team: blue}}}]}
  egress:
  - {action: Accept, to: [{networks: [10.9.0.0/16]}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: db}
spec:
  tier: Admin
  priority: 2
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {tier: db}}}}
  ingress:
  - {action: Accept, from: [{namespaces: {matchLabels: {team: green}}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: base}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  ingress:
  - {action: Deny, from: [{namespaces: {}}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {tier: web}}
  ingress: [{ports: [{port: 80}]}]
"#,
        );
        for i in 0..pods {
            let tier = if i % 3 == 0 { "db" } else { "web" };
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\n\
                 metadata: {{name: p{i}, namespace: x, labels: {{tier: {tier}}}}}\n\
                 spec: {{nodeName: n1}}\nstatus: {{podIPs: [{{ip: 10.0.0.{}}}]}}\n",
                i + 1
            ));
        }
        cluster_of(&yaml)
    }

    #[test]
    fn pods_whose_admin_tier_reads_alike_share_one_chain_built_once() {
        let rs = compile(&admin_subjects(30), "n1");
        let shared: Vec<&String> = rs
            .chains
            .keys()
            .filter(|n| admin_compile::is_tier_chain(n))
            .collect();
        // Admin ingress: all-x alone (web pods) and all-x then db (db
        // pods); admin egress: all-x; baseline ingress: base. No more,
        // however many pods.
        assert_eq!(shared.len(), 4, "{shared:?}");
        assert_eq!(
            rs.rule_count(),
            compile(&admin_subjects(60), "n1").rule_count()
                - 30 * 2 // a pod chain per direction, one `goto` each
                - 20 * 2 // the web pods' NetworkPolicy parts: an allow and a drop
                - 10 // the db pods' baseline `goto`
                - 30 * 3, // a `rel_` chain per pod address (related.rs)
            "the admin rules are not copied per pod"
        );
        // The pod chain enters the tier by goto, and the NetworkPolicy part
        // is reached by the pod's address.
        let web = &rs.chains["ing_x_p1"].rules;
        assert!(
            matches!(&web[..], [Rule { verdict: Verdict::Goto(t), .. }] if t.starts_with("aing_"))
        );
        let pass = &rs.sets[&admin_compile::tier_pass_map(Direction::Ingress, Family::Ipv4)];
        assert!(pass.elements.contains(&Element::VmapJump(
            "10.0.0.2".parse().unwrap(),
            "ingp_x_p1".into()
        )));
        let db = &rs.chains["ingp_x_p0"].rules;
        assert!(
            matches!(&db[..], [Rule { verdict: Verdict::Goto(t), .. }] if t.starts_with("bing_"))
        );
    }

    fn server_of_many_policies(n: usize) -> Cluster {
        let mut yaml = String::from(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: s, namespace: x, labels: {app: srv}}\n\
             spec: {nodeName: n1}\nstatus: {podIPs: [{ip: 10.0.0.1}]}\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {name: net, namespace: x}\nspec: {podSelector: {}, ingress: [\
             {from: [{ipBlock: {cidr: 10.1.0.0/16}}], ports: [{port: 8080}]}]}\n",
        );
        for i in 0..n {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\n\
                 metadata: {{name: peer-{i}, namespace: p, labels: {{app: peer-{i}}}}}\n\
                 spec: {{nodeName: n2}}\nstatus: {{podIPs: [{{ip: 10.0.1.{}}}]}}\n\
                 ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{name: pol-{i:03}, namespace: x}}\n\
                 spec: {{podSelector: {{matchLabels: {{app: srv}}}}, ingress: [\
                 {{from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: peer-{i}}}}}}}], \
                 ports: [{{port: 8080}}]}}]}}\n",
                i + 1
            ));
        }
        cluster_of(&yaml)
    }

    #[test]
    fn the_chain_of_a_pod_does_not_grow_with_the_policies_admitting_it_on_a_port() {
        for n in [1, 10, 100] {
            let rs = compile(&server_of_many_policies(n), "n1");
            let chain = &rs.chains["ing_x_s"];
            // Pod peers, the ipBlock, the drop: whatever the policy count.
            assert_eq!(chain.rules.len(), 3, "{n} policies: {chain:?}");
            let pods = chain.rules.iter().find_map(|r| match r.matches.first() {
                Some(Match::AddrInSet { set, .. }) if set.starts_with("pod4_") => Some(set),
                _ => None,
            });
            let pods = pods.expect("a pod peer rule");
            assert_eq!(rs.sets[pods].elements.len(), n);
            let comment = chain.rules[0].comment.clone().unwrap_or_default();
            assert!(comment.len() <= crate::names::MAX_COMMENT, "{comment}");
            // The pod rule names the policies with pod peers only.
            assert!(comment.starts_with("x/pol-000 ingress[0]"), "{comment}");
            assert_eq!(chain.rules[1].comment.as_deref(), Some("x/net ingress[0]"));
            if n > 4 {
                assert!(comment.ends_with(" more"), "{comment}");
            }
        }
    }

    #[test]
    fn a_new_policy_admitting_a_pod_on_a_known_port_changes_its_rule_not_its_length() {
        let before = compile(&server_of_many_policies(10), "n1");
        let after = compile(&server_of_many_policies(11), "n1");
        assert_eq!(
            before.chains["ing_x_s"].rules.len(),
            after.chains["ing_x_s"].rules.len()
        );
        // Every flow still gets the verdict the evaluator gives.
        let c = server_of_many_policies(11);
        for i in 0..11u8 {
            let peer = std::net::IpAddr::from([10, 0, 1, i + 1]);
            for (port, want) in [(8080, true), (8081, false)] {
                let pkt = crate::interp::Packet::new_connection(
                    peer,
                    "10.0.0.1".parse().unwrap(),
                    Protocol::Tcp,
                    port,
                );
                assert_eq!(
                    crate::interp::hook_accepts(&after, CHAIN_FORWARD, &pkt),
                    want,
                    "peer {i} port {port}"
                );
            }
        }
        assert_eq!(c.policy_count(), 12);
    }

    #[test]
    fn an_ipv4_only_node_gets_no_ipv6_maps_sets_or_rules() {
        let rs = compile(&cluster_of(TWO_PODS), "n1");
        assert!(mentions_ipv6(&rs).is_empty(), "{:?}", mentions_ipv6(&rs));
        assert!(rs.sets.contains_key("ingress_v4"));
        // One allow rule and the drop: no IPv6 twin.
        assert_eq!(rs.chains["ing_x_b"].rules.len(), 2);
    }

    #[test]
    fn forward_judges_link_local_and_unspecified_sources_only_as_on_link_nd() {
        // x/e is isolated by nothing: only the base chain can drop.
        let open_pod = DUAL_STACK_POD
            .replace("name: d", "name: e")
            .replace("app: b", "app: open")
            .replace("10.0.0.4", "10.0.0.5")
            .replace("fd00::4", "fd00::5");
        let rs = compile(
            &cluster_of(&format!("{TWO_PODS}{DUAL_STACK_POD}{open_pod}")),
            "n1",
        );
        let to_pod = |saddr: &str, icmp: u16, hoplimit: u8| {
            let pkt = crate::interp::Packet {
                saddr: saddr.parse().unwrap(),
                daddr: "fd00::5".parse().unwrap(),
                proto: 58,
                dport: icmp,
                ct: CtState::New,
                hoplimit,
                ct_saddrs: None,
            };
            crate::interp::hook_accepts(&rs, CHAIN_FORWARD, &pkt)
        };
        // What source validation lets out for ND and MLD reaches no
        // neighbour but as on-link NS/NA: no egress chain would judge it.
        for src in ["fe80::1", "::"] {
            for (icmp, hoplimit) in [(133, 255), (134, 255), (143, 1)] {
                assert!(!to_pod(src, icmp, hoplimit), "{src} type {icmp}");
            }
            for icmp in [135, 136] {
                assert!(to_pod(src, icmp, 255), "{src} type {icmp}");
            }
        }
        // Any other source goes on to the policies.
        assert!(to_pod("fd00::4", 134, 255));
        let pkt = crate::interp::Packet {
            saddr: "fd00::5".parse().unwrap(),
            daddr: "fd00::4".parse().unwrap(),
            proto: 58,
            dport: 134,
            ct: CtState::New,
            hoplimit: 255,
            ct_saddrs: None,
        };
        let trace = crate::interp::trace(&rs, CHAIN_FORWARD, &pkt);
        let last = trace.steps.last().expect("a deciding rule");
        assert!(last.chain.starts_with("ing_"), "{last:?}");
    }

    #[test]
    fn the_first_ipv6_pod_brings_ipv6_back_for_its_own_chains_only() {
        let rs = compile(&cluster_of(&format!("{TWO_PODS}{DUAL_STACK_POD}")), "n1");
        for map in ["ingress_v6", "egress_v6"] {
            assert!(rs.sets.contains_key(map), "{map}");
        }
        assert!(rs.chains["forward"].rules.iter().any(|r| r
            .matches
            .iter()
            .any(|m| matches!(m, Match::Icmpv6Type { .. }))));
        let v6_rules = |chain: &str| {
            rs.chains[chain]
                .rules
                .iter()
                .filter(|r| {
                    r.matches.iter().any(|m| {
                        matches!(
                            m,
                            Match::AddrInSet {
                                family: Family::Ipv6,
                                ..
                            }
                        )
                    })
                })
                .count()
        };
        // x/d is dual-stack: its chain sees IPv6 packets. x/b is IPv4-only:
        // its chain never does, so it stays without IPv6 rules.
        assert_eq!(v6_rules("ing_x_d"), 1);
        assert_eq!(v6_rules("ing_x_b"), 0);
        // On a node without the dual-stack pod nothing of IPv6 appears.
        let other = compile(&cluster_of(&format!("{TWO_PODS}{DUAL_STACK_POD}")), "n2");
        assert!(mentions_ipv6(&other).is_empty());
    }
}
