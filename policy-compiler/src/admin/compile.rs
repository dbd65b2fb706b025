//! Admin and baseline rules -> nft rules, in tier order (priority, kind,
//! name, then rule order). Each admin rule becomes one nft rule per (peer
//! kind x family) x protocol, all with the rule's verdict: Accept allows
//! (`accept` on ingress, `return` on egress so the destination's ingress
//! still applies), Deny drops, and an admin-tier Pass is a `goto` past the
//! rest of the admin tier into the pod's NetworkPolicy part (a baseline
//! Pass allows: nothing follows it but the default allow).
//!
//! A tier's rules for a pod go into a chain shared by every pod whose tier
//! reads alike ([`tier_chain`]), which the pod's chain enters by `goto`:
//! a tier is built once per distinct selection of policies instead of
//! once per pod. Being entered by `goto`, its `return` leaves the pod's
//! chain, as an egress Accept must. A Pass and the admin chain's end go to
//! [`tier_pass_chain`], which finds the pod's NetworkPolicy part by the
//! pod's address. Staged chains still inline the tier (`tier_rules`).
//! Peers are named sets keyed by their definition, shared
//! by every admin rule and pod with the same one: `apod4_/apod6_`
//! (selected pods), `anode4_/anode6_` (node addresses), `anet4_/anet6_`
//! (networks, interval sets), `atcp_/audp_/asctp_` (several ports or
//! ranges), `anam4_/anam6_` (egress named ports resolved per destination
//! pod). Comments read
//! `<Kind>/<name> <direction>[<i>] <Action>`.
//!
//! A peer address two live pods claim ([`shared_peer_rules`]) fails
//! closed: each tier first drops flows whose peer is a shared address its
//! rules tell apart, since no set choice keeps Accept and Pass sound for
//! the claimant that is not meant.

use super::{Action, AdminPeer, AdminPolicy, AdminPort, AdminRule, Subject, Tier};
use crate::compile::{family_digit, selector_key, Builder, Enforce};
use crate::index::Cluster;
use crate::ipblock::{cidr_minus, merge};
use crate::ir::*;
use crate::model::{Direction, Labels, LogMode, Pod, Protocol};
use crate::names::comment;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Whether `pod` is a subject of `policy` (compiler's predicates).
pub fn selects(cluster: &Cluster, policy: &AdminPolicy, pod: &Pod) -> bool {
    selects_in(&cluster.namespace_labels(&pod.namespace), policy, pod)
}

/// [`selects`] with the labels of the pod's namespace already looked up.
fn selects_in(ns: &Labels, policy: &AdminPolicy, pod: &Pod) -> bool {
    match &policy.subject {
        Subject::Namespaces(s) => s.matches(ns),
        Subject::Pods { namespaces, pods } => namespaces.matches(ns) && pods.matches(&pod.labels),
    }
}

/// The policies of `policies` (kept in order) whose subject is `pod`.
/// A compile finds them through its memo (`Selections::subject_of`),
/// which gives the same list.
pub(crate) fn subject_of<'p>(
    cluster: &Cluster,
    policies: &[&'p AdminPolicy],
    pod: &Pod,
) -> Vec<&'p AdminPolicy> {
    if policies.is_empty() {
        return Vec::new();
    }
    let ns = cluster.namespace_labels(&pod.namespace);
    policies
        .iter()
        .copied()
        .filter(|pol| selects_in(&ns, pol, pod))
        .collect()
}

/// The shared chain of one tier for `pod` in `direction` (see the module
/// comment), built the first time a pod needs it; `None` when the tier
/// has no rule for the pod. Its name is a hash of everything its rules
/// depend on: the direction, the tier's policies whose subject the pod is
/// (in order), the pod's address families and, for ingress named ports,
/// how the pod resolves them. So pods whose admin tier reads alike share
/// one chain, and a name determines its rules.
pub(crate) fn tier_chain(
    b: &mut Builder<'_>,
    subject_of: &[&AdminPolicy],
    pod: &Pod,
    direction: Direction,
    tier: Tier,
) -> Option<String> {
    let pols: Vec<&AdminPolicy> = subject_of
        .iter()
        .copied()
        .filter(|p| p.tier == tier && !p.rules(direction).is_empty())
        .collect();
    if pols.is_empty() {
        return None;
    }
    let mut resolved = String::new();
    if direction == Direction::Ingress {
        let mut names: Vec<&str> = pols
            .iter()
            .flat_map(|p| p.rules(direction))
            .flat_map(|r| r.ports.iter().flatten())
            .filter_map(|p| match p {
                AdminPort::Named(n) => Some(n.as_str()),
                AdminPort::Range { .. } => None,
            })
            .collect();
        names.sort();
        names.dedup();
        for n in names {
            let ports = Protocol::ALL.map(|proto| pod.resolve_port(n, proto));
            resolved.push_str(&format!(" {n}={ports:?}"));
        }
    }
    // Most pods share their tier with others: the policies (by identity:
    // the builder borrows them from one cluster), families and resolved
    // named ports tell whether this one was decided already, without
    // writing out the rules again.
    let memo = TierKey {
        direction,
        tier,
        families: b.families(),
        policies: pols
            .iter()
            .map(|p| std::ptr::from_ref(*p) as usize)
            .collect(),
        resolved,
    };
    if let Some(known) = b.tier_chains.get(&memo) {
        return known.clone();
    }
    let chain = build_tier_chain(b, &pols, pod, &memo);
    b.tier_chains.insert(memo, chain.clone());
    chain
}

/// What a shared tier chain is decided by, for the builder's memo (see
/// [`tier_chain`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TierKey {
    direction: Direction,
    tier: Tier,
    families: Vec<Family>,
    /// The addresses of the policies, in tier order.
    policies: Vec<usize>,
    /// Ingress named ports as the pod resolves them.
    resolved: String,
}

/// [`tier_chain`] once its policies `pols` are known.
fn build_tier_chain(
    b: &mut Builder<'_>,
    pols: &[&AdminPolicy],
    pod: &Pod,
    memo: &TierKey,
) -> Option<String> {
    let TierKey {
        direction, tier, ..
    } = *memo;
    let mut key = format!("{} {:?}", direction.word(), memo.families);
    // The rules themselves, not only the names: an admin policy changing
    // recompiles only its subjects, which then name a new chain.
    for pol in pols {
        key.push_str(&format!(" {} {:?}", pol.id(), pol.rules(direction)));
    }
    key.push_str(&memo.resolved);
    let prefix = format!(
        "{}{}",
        match tier {
            Tier::Admin => "a",
            Tier::Baseline => "b",
        },
        direction.chain_prefix()
    );
    let name = crate::names::keyed(&prefix, &key);
    if b.has_chain(&name, &key) {
        return Some(name);
    }
    let pass = tier_pass_chain(direction);
    let mut rules = shared_peer_rules(b, pols, direction, tier);
    rules.extend(tier_rules(b, pols, pod, direction, tier, &pass));
    if rules.is_empty() {
        return None;
    }
    if tier == Tier::Admin {
        rules.push(Rule {
            matches: vec![],
            verdict: Verdict::Goto(pass),
            comment: Some("end of admin tier".into()),
        });
    }
    b.add_chain(name.clone(), key, rules);
    Some(name)
}

/// Whether `name` is a shared tier chain ([`tier_chain`]).
pub fn is_tier_chain(name: &str) -> bool {
    ["aing_", "aegr_", "bing_", "begr_"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The chain an admin Pass, and the end of a shared admin chain, go to:
/// it sends the packet on to the NetworkPolicy part of the pod it is
/// about, by that pod's address (the `<direction>_pass_v4/v6` maps),
/// and without an element falls off the end: the default allow.
pub fn tier_pass_chain(direction: Direction) -> String {
    format!("{}_pass", direction.word())
}

/// The map from a pod's address to its NetworkPolicy part, for
/// [`tier_pass_chain`].
pub fn tier_pass_map(direction: Direction, family: Family) -> String {
    format!("{}_pass_{}", direction.word(), family.suffix())
}

/// The rules of one tier for `pod`'s chain in `direction`, from the
/// policies whose subject `pod` is ([`subject_of`]). `pass_to` is the
/// chain an admin-tier Pass jumps to.
pub(crate) fn tier_rules(
    b: &mut Builder<'_>,
    subject_of: &[&AdminPolicy],
    pod: &Pod,
    direction: Direction,
    tier: Tier,
    pass_to: &str,
) -> Vec<Rule> {
    let mut out = Vec::new();
    for pol in subject_of.iter().filter(|p| p.tier == tier) {
        for (i, r) in pol.rules(direction).iter().enumerate() {
            let verdict = match (r.action, tier) {
                (Action::Accept, _) | (Action::Pass, Tier::Baseline) => direction.allow(),
                (Action::Deny, _) => Verdict::Drop,
                (Action::Pass, Tier::Admin) => Verdict::Goto(pass_to.to_string()),
            };
            rule(b, &mut out, pod, direction, pol, i, r, verdict);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn rule(
    b: &mut Builder<'_>,
    out: &mut Vec<Rule>,
    pod: &Pod,
    direction: Direction,
    pol: &AdminPolicy,
    index: usize,
    r: &AdminRule,
    verdict: Verdict,
) {
    let note = Some(comment(format!(
        "{} {}[{index}] {}",
        pol.id(),
        direction.word(),
        r.action.api(pol.kind)
    )));
    let start = out.len();
    let (plain, named) = ports(b, pod, direction, r);
    if !plain.is_empty() {
        for peer in peers(b, direction, r) {
            for port in &plain {
                out.push(Rule {
                    matches: peer.iter().chain(port.iter()).cloned().collect(),
                    verdict: verdict.clone(),
                    comment: note.clone(),
                });
            }
        }
    }
    if !named.is_empty() {
        for family in b.families() {
            let set = named_set(b, family, r, &named);
            out.push(Rule {
                matches: vec![Match::DAddrProtoPortInSet { family, set }],
                verdict: verdict.clone(),
                comment: note.clone(),
            });
        }
    }
    // Admin policies log by the node's mode alone: a Deny counts as a
    // deny, Accept and Pass as allows.
    let mode = b.audit.log;
    let logged = match r.action {
        Action::Deny => mode >= LogMode::Deny,
        Action::Accept | Action::Pass => mode == LogMode::All,
    };
    if logged && !b.staging {
        let prefix =
            crate::audit::admin_prefix(&pol.id(), direction, index, r.action.api(pol.kind));
        b.log_each(out, start, &prefix);
    }
}

/// Comment of the rule dropping flows whose peer is an address the
/// chain's admin peers tell apart.
pub const SHARED_PEER_COMMENT: &str = "peer address shared by pods admin peers tell apart";

/// Whether `r`'s verdict can depend on which claimant of a shared peer
/// address a packet came from: its pod and namespace peers, and in egress
/// its named ports (they resolve per destination pod). `All` selects every
/// claimant alike, networks and nodes match by address.
fn tells_pods_apart(r: &AdminRule, direction: Direction) -> bool {
    let named = direction == Direction::Egress && has_named(r);
    r.peers.iter().any(|p| match p {
        AdminPeer::Namespaces(_) | AdminPeer::Pods { .. } => true,
        AdminPeer::All => named,
        AdminPeer::Nodes(_) | AdminPeer::Networks(_) => false,
    })
}

fn has_named(r: &AdminRule) -> bool {
    r.ports
        .iter()
        .flatten()
        .any(|p| matches!(p, AdminPort::Named(_)))
}

/// Whether a pod or namespace peer of `r` (or `All`) selects `pod`.
fn pod_peer_selects(cluster: &Cluster, r: &AdminRule, pod: &Pod) -> bool {
    let ns = cluster.namespace_labels(&pod.namespace);
    r.peers.iter().any(|p| match p {
        AdminPeer::All => true,
        AdminPeer::Namespaces(s) => s.matches(&ns),
        AdminPeer::Pods { namespaces, pods } => {
            namespaces.matches(&ns) && pods.matches(&pod.labels)
        }
        AdminPeer::Nodes(_) | AdminPeer::Networks(_) => false,
    })
}

/// Whether `r` tells the pods claiming one address apart: its peers
/// select some of them but not all, or (egress named ports, which resolve
/// on each pod) any of them.
fn splits(cluster: &Cluster, r: &AdminRule, direction: Direction, claimants: &[&Pod]) -> bool {
    let selected = claimants
        .iter()
        .filter(|p| pod_peer_selects(cluster, r, p))
        .count();
    let named = direction == Direction::Egress && has_named(r);
    selected > 0 && (named || selected < claimants.len())
}

/// The drop that opens `tier` in `pod`'s chain in `direction`: an admin
/// set holds a shared address as soon as any claimant is selected, which
/// fails closed for Deny but lets Accept or Pass (then NetworkPolicy or
/// the default allow) decide for the claimant the rule does not select.
/// With Pass in play no per-rule choice of the set is sound, so new flows
/// whose peer is a shared address that any rule of the tier (of the
/// policies in `subject_of`) tells apart are dropped before the tier's
/// first rule. Below it, every rule of the tier judges all claimants of
/// a shared peer alike, and NetworkPolicy admits a shared peer only when
/// it selects every claimant, so each tier stays sound on its own. The
/// set `adup4_/adup6_` is keyed by those rules' peer definitions; its
/// element at an address depends only on the address's claimants and
/// their namespaces, as `shared_set` requires. `eval::admin::shared_peer`
/// states the same rule.
pub(crate) fn shared_peer_rules(
    b: &mut Builder<'_>,
    subject_of: &[&AdminPolicy],
    direction: Direction,
    tier: Tier,
) -> Vec<Rule> {
    let rules: Vec<&AdminRule> = subject_of
        .iter()
        .filter(|pol| pol.tier == tier)
        .flat_map(|pol| pol.rules(direction))
        .filter(|r| tells_pods_apart(r, direction))
        .collect();
    if rules.is_empty() {
        return Vec::new();
    }
    let mut key: Vec<String> = rules
        .iter()
        .map(|r| match direction == Direction::Egress && has_named(r) {
            true => format!("{} with named ports", pod_peers_key(r)),
            false => pod_peers_key(r),
        })
        .collect();
    key.sort();
    key.dedup();
    let key = key.join(" || ");
    let mut out = Vec::new();
    for family in b.families() {
        let set = b.shared_set(
            &format!("adup{}", family_digit(family)),
            key.clone(),
            SetKind::Addr {
                family,
                interval: false,
            },
            {
                let rules: Vec<AdminRule> = rules.iter().map(|r| (*r).clone()).collect();
                move |c, _| {
                    c.shared_addresses()
                        .into_iter()
                        .filter(|(ip, claimants)| {
                            Family::of(ip) == family
                                && rules.iter().any(|r| splits(c, r, direction, claimants))
                        })
                        .map(|(ip, _)| Element::Addr(ip))
                        .collect()
                }
            },
        );
        out.push(Rule {
            matches: vec![Match::AddrInSet {
                family,
                dir: direction.peer_dir(),
                set,
            }],
            verdict: Verdict::Drop,
            comment: Some(SHARED_PEER_COMMENT.into()),
        });
    }
    out
}

/// Pods any pods/namespaces peer of `r` selects, in namespace/name order.
pub(super) fn peer_pods<'c>(cluster: &'c Cluster, r: &AdminRule) -> Vec<&'c Pod> {
    if r.peers.iter().any(|p| matches!(p, AdminPeer::All)) {
        return cluster.pods().filter(|p| p.is_policy_pod()).collect();
    }
    let pod_peers: Vec<&AdminPeer> = r
        .peers
        .iter()
        .filter(|p| matches!(p, AdminPeer::Namespaces(_) | AdminPeer::Pods { .. }))
        .collect();
    let mut out = Vec::new();
    if pod_peers.is_empty() {
        return out;
    }
    for ns in cluster.namespaces_with_pods() {
        let labels = cluster.namespace_labels(ns);
        let ns_peers: Vec<&&AdminPeer> = pod_peers
            .iter()
            .filter(|p| match p {
                AdminPeer::Namespaces(s) => s.matches(&labels),
                AdminPeer::Pods { namespaces, .. } => namespaces.matches(&labels),
                _ => false,
            })
            .collect();
        if ns_peers.is_empty() {
            continue;
        }
        for p in cluster.pods_in(ns).filter(|p| p.is_policy_pod()) {
            let hit = ns_peers.iter().any(|peer| match peer {
                AdminPeer::Pods { pods, .. } => pods.matches(&p.labels),
                _ => true,
            });
            if hit {
                out.push(p);
            }
        }
    }
    out
}

/// The definition of the pods the pod and namespace peers of `r` select
/// (all pods when any peer is `All`).
pub(super) fn pod_peers_key(r: &AdminRule) -> String {
    if r.peers.iter().any(|p| matches!(p, AdminPeer::All)) {
        return "every pod".into();
    }
    let mut parts: Vec<String> = r
        .peers
        .iter()
        .filter_map(|p| match p {
            AdminPeer::Namespaces(s) => Some(format!("{} / every pod", selector_key(s))),
            AdminPeer::Pods { namespaces, pods } => Some(format!(
                "{} / {}",
                selector_key(namespaces),
                selector_key(pods)
            )),
            _ => None,
        })
        .collect();
    parts.sort();
    parts.dedup();
    parts.join(" | ")
}

/// One list of matches per way the peer is identified.
fn peers(b: &mut Builder<'_>, direction: Direction, r: &AdminRule) -> Vec<Vec<Match>> {
    if r.peers.iter().any(|p| matches!(p, AdminPeer::All)) {
        return vec![vec![]];
    }
    let dir = direction.peer_dir();
    let mut out = Vec::new();
    let has_pods = r
        .peers
        .iter()
        .any(|p| matches!(p, AdminPeer::Namespaces(_) | AdminPeer::Pods { .. }));
    let node_sels: Vec<&crate::selector::Selector> = r
        .peers
        .iter()
        .filter_map(|p| match p {
            AdminPeer::Nodes(s) => Some(s),
            _ => None,
        })
        .collect();
    let nets: Vec<&ipnet::IpNet> = r
        .peers
        .iter()
        .flat_map(|p| match p {
            AdminPeer::Networks(n) => n.iter().collect(),
            _ => Vec::new(),
        })
        .collect();
    for family in b.families() {
        let d = family_digit(family);
        let in_family = move |ip: &std::net::IpAddr| Family::of(ip) == family;
        if has_pods {
            let addrs = move |pods: &[&Pod]| -> BTreeSet<Element> {
                pods.iter()
                    .flat_map(|p| p.ips.iter().copied())
                    .filter(in_family)
                    .map(Element::Addr)
                    .collect()
            };
            let set = b.shared_set_first(
                &format!("apod{d}"),
                pod_peers_key(r),
                SetKind::Addr {
                    family,
                    interval: false,
                },
                {
                    let r = r.clone();
                    move |c, _| addrs(&peer_pods(c, &r))
                },
                Some(|b: &mut Builder<'_>| addrs(&b.selections.peer_pods(r))),
            );
            out.push(vec![Match::AddrInSet { family, dir, set }]);
        }
        if !node_sels.is_empty() {
            let mut key: Vec<String> = node_sels.iter().map(|s| selector_key(s)).collect();
            key.sort();
            key.dedup();
            let set = b.shared_set(
                &format!("anode{d}"),
                key.join(" | "),
                SetKind::Addr {
                    family,
                    interval: false,
                },
                {
                    let sels: Vec<crate::selector::Selector> =
                        node_sels.iter().map(|s| (*s).clone()).collect();
                    move |c, _| {
                        c.node_objects()
                            .filter(|n| sels.iter().any(|s| s.matches(&n.labels)))
                            .flat_map(|n| n.ips.iter().copied())
                            .filter(in_family)
                            .map(Element::Addr)
                            .collect()
                    }
                },
            );
            out.push(vec![Match::AddrInSet { family, dir, set }]);
        }
        let fam_nets: Vec<&ipnet::IpNet> = nets
            .iter()
            .copied()
            .filter(|n| in_family(&n.addr()))
            .collect();
        if !fam_nets.is_empty() {
            let ranges = fam_nets.iter().flat_map(|n| cidr_minus(n, &[])).collect();
            let elements = merge(ranges)
                .into_iter()
                .map(|r| Element::AddrRange(r.lo, r.hi))
                .collect();
            let set = b.content_set(
                &format!("anet{d}"),
                SetKind::Addr {
                    family,
                    interval: true,
                },
                elements,
            );
            out.push(vec![Match::AddrInSet { family, dir, set }]);
        }
    }
    out
}

/// Port alternatives combined with peers, and egress named ports.
fn ports(
    b: &mut Builder<'_>,
    pod: &Pod,
    direction: Direction,
    r: &AdminRule,
) -> (Vec<Vec<Match>>, Vec<String>) {
    let Some(list) = &r.ports else {
        return (vec![vec![]], Vec::new());
    };
    let mut plain = Vec::new();
    let mut named = Vec::new();
    let mut by_proto: [(Protocol, Vec<(u16, u16)>); 3] = Protocol::ALL.map(|p| (p, Vec::new()));
    for p in list {
        match p {
            AdminPort::Range { protocol, lo, hi } => {
                if let Some(e) = by_proto.iter_mut().find(|e| e.0 == *protocol) {
                    e.1.push((*lo, *hi));
                }
            }
            AdminPort::Named(name) => match direction {
                // Ingress: the destination is this chain's own pod.
                Direction::Ingress => {
                    for e in by_proto.iter_mut() {
                        if let Some(n) = pod.resolve_port(name, e.0) {
                            e.1.push((n, n));
                        }
                    }
                }
                Direction::Egress => named.push(name.clone()),
            },
        }
    }
    for (proto, ranges) in by_proto {
        plain.extend(b.ports_match("a", proto, ranges));
    }
    named.sort();
    named.dedup();
    (plain, named)
}

/// `anam4_/anam6_`: (pod address, protocol, port) of every peer pod that
/// declares one of the named ports.
fn named_set(b: &mut Builder<'_>, family: Family, r: &AdminRule, named: &[String]) -> String {
    b.shared_set_first(
        &format!("anam{}", family_digit(family)),
        format!("{} named {named:?}", pod_peers_key(r)),
        SetKind::AddrProtoPort { family },
        {
            let (r, named) = (r.clone(), named.to_vec());
            move |c, _| {
                let shared = |ip: &IpAddr| c.claimants(*ip).len() > 1;
                named_elements(family, &peer_pods(c, &r), shared, &named)
            }
        },
        Some(|b: &mut Builder<'_>| {
            let pods = b.selections.peer_pods(r);
            let shared = |ip: &IpAddr| b.shared.contains_key(ip);
            named_elements(family, &pods, shared, named)
        }),
    )
}

/// The elements of [`named_set`], whose pods `pods` are the rule's
/// peers; `shared` tells the addresses several pods claim.
fn named_elements(
    family: Family,
    pods: &[&Pod],
    shared: impl Fn(&IpAddr) -> bool,
    named: &[String],
) -> BTreeSet<Element> {
    let mut elements = BTreeSet::new();
    for p in pods {
        // A named port on a shared address resolves on no single pod (as
        // for NetworkPolicy named ports).
        for ip in p
            .ips
            .iter()
            .filter(|ip| Family::of(ip) == family && !shared(ip))
        {
            for name in named {
                for proto in Protocol::ALL {
                    if let Some(n) = p.resolve_port(name, proto) {
                        elements.insert(Element::AddrProtoPort(*ip, proto.number(), n));
                    }
                }
            }
        }
    }
    elements
}

#[cfg(test)]
mod tests {
    use crate::eval::{allowed, Endpoint, SideVerdict};
    use crate::index::Cluster;
    use crate::interp::{hook_accepts, Packet};
    use crate::ir::Family;
    use crate::model::Protocol;

    /// prod/api-0 on node-1, isolated for ingress by a NetworkPolicy that
    /// admits nothing; dev/ci-0 and dev/tool-0 (labels `app: ci` and
    /// `tool_label`) both claim 10.244.2.3. The admin policy `rules` are
    /// the ingress rules of an AdminNetworkPolicy whose subject is prod.
    fn cluster(tool_label: &str, rules: &str) -> Cluster {
        let pod = |ns: &str, name: &str, app: &str, node: &str, ip: &str| {
            format!(
                "---\napiVersion: v1\nkind: Pod\n\
                 metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\n\
                 spec: {{nodeName: {node}}}\nstatus: {{podIPs: [{{ip: {ip}}}]}}\n"
            )
        };
        let yaml = [
            pod("prod", "api-0", "api", "node-1", "10.244.1.2"),
            pod("dev", "ci-0", "ci", "node-2", "10.244.2.3"),
            pod("dev", "tool-0", tool_label, "node-2", "10.244.2.3"),
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {name: closed, namespace: prod}\n\
             spec: {podSelector: {}, policyTypes: [Ingress]}\n"
                .to_string(),
            format!(
                "---\napiVersion: policy.networking.k8s.io/v1alpha1\n\
                 kind: AdminNetworkPolicy\nmetadata: {{name: dev}}\n\
                 spec:\n  priority: 20\n  subject:\n    namespaces: \
                 {{matchLabels: {{kubernetes.io/metadata.name: prod}}}}\n  ingress:\n{rules}"
            ),
        ]
        .concat();
        let loaded = crate::manifest::parse("t.yaml", &yaml);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        Cluster::from_objects(loaded.objects)
    }

    const CI: &str = "      pods:\n        namespaceSelector: \
                      {matchLabels: {kubernetes.io/metadata.name: dev}}\n        \
                      podSelector: {matchLabels: {app: ci}}\n";
    const DEV: &str = "      namespaces: {matchLabels: {kubernetes.io/metadata.name: dev}}\n";

    /// One ingress rule of the admin policy, with one peer.
    fn rule(name: &str, action: &str, peer: &str) -> String {
        format!("  - name: {name}\n    action: {action}\n    from:\n    -\n{peer}")
    }

    fn kernel_accepts(c: &Cluster) -> bool {
        let rs = crate::compile::compile(c, "node-1");
        let pkt = Packet::new_connection(
            "10.244.2.3".parse().unwrap(),
            "10.244.1.2".parse().unwrap(),
            Protocol::Tcp,
            80,
        );
        hook_accepts(&rs, crate::compile::CHAIN_FORWARD, &pkt)
    }

    fn decide(c: &Cluster, from: &str) -> crate::eval::Decision {
        let dst = Endpoint::pod("prod", "api-0");
        allowed(
            c,
            &Endpoint::pod("dev", from),
            &dst,
            Family::Ipv4,
            Protocol::Tcp,
            80,
        )
        .unwrap()
    }

    #[test]
    fn a_shared_peer_address_that_admin_peers_tell_apart_fails_closed() {
        // Pass for ci-0 (then the NetworkPolicy denies), Accept for the
        // rest of dev: a set choice per rule would accept tool-0's
        // packets and ci-0's alike, since they carry one address.
        let rules = rule("ci", "Pass", CI) + &rule("rest", "Allow", DEV);
        let c = cluster("tool", &rules);
        assert!(!kernel_accepts(&c));
        for from in ["ci-0", "tool-0"] {
            let d = decide(&c, from);
            assert!(!d.allowed, "{from}: {d:?}");
            match &d.ingress {
                SideVerdict::SharedPeer { claimed_by, rule } => {
                    assert_eq!(claimed_by, &["dev/ci-0", "dev/tool-0"]);
                    assert_eq!(rule.index, 0, "{rule}");
                }
                other => panic!("{from}: {other:?}"),
            }
        }
        let rs = crate::compile::compile(&c, "node-1");
        let text = crate::render::render_script(&rs);
        assert!(text.contains(super::SHARED_PEER_COMMENT), "{text}");
    }

    #[test]
    fn a_shared_peer_address_every_rule_judges_alike_is_judged_as_usual() {
        // Both claimants are `app: ci` now: the Pass selects both, so the
        // NetworkPolicy decides for either (and denies).
        let rules = rule("ci", "Pass", CI) + &rule("rest", "Allow", DEV);
        let c = cluster("ci", &rules);
        assert!(!kernel_accepts(&c));
        assert!(matches!(
            decide(&c, "tool-0").ingress,
            SideVerdict::Denied { .. }
        ));
        // Only the namespace-wide Allow: it selects both, and admits both.
        let c = cluster("tool", &rule("rest", "Allow", DEV));
        assert!(kernel_accepts(&c));
        for from in ["ci-0", "tool-0"] {
            assert!(decide(&c, from).allowed, "{from}");
        }
    }
}
