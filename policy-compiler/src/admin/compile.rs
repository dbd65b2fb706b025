//! Admin and baseline rules -> nft rules of a pod's chain, in tier order
//! (priority, kind, name, then rule order). Each admin rule becomes one nft
//! rule per (peer kind x family) x protocol, all with the rule's verdict:
//! Accept allows (`accept` on ingress, `return` on egress so the
//! destination's ingress still applies), Deny drops, and an admin-tier
//! Pass is a `goto` to the pod's NetworkPolicy part, which skips the rest
//! of the admin tier (a baseline Pass allows: nothing follows it but the
//! default allow). Peers are named sets keyed by their definition, shared
//! by every admin rule and pod with the same one: `apod4_/apod6_`
//! (selected pods), `anode4_/anode6_` (node addresses), `anet4_/anet6_`
//! (networks, interval sets), `atcp_/audp_/asctp_` (several ports or
//! ranges), `anam4_/anam6_` (egress named ports resolved per destination
//! pod). Comments read
//! `<Kind>/<name> <direction>[<i>] <Action>`.

use super::{Action, AdminPeer, AdminPolicy, AdminPort, AdminRule, Subject, Tier};
use crate::compile::{family_digit, selector_key, Builder, Enforce};
use crate::index::Cluster;
use crate::ipblock::{cidr_minus, merge};
use crate::ir::*;
use crate::model::{Direction, Labels, LogMode, Pod, Protocol};
use crate::names::comment;
use std::collections::BTreeSet;

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
/// Computed once per pod for both directions and tiers: with hundreds of
/// admin policies, matching every subject again per chain was most of a
/// node's compile time.
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

/// Pods any pods/namespaces peer of `r` selects, in namespace/name order.
fn peer_pods<'c>(cluster: &'c Cluster, r: &AdminRule) -> Vec<&'c Pod> {
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
fn pod_peers_key(r: &AdminRule) -> String {
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
            let set = b.shared_set(
                &format!("apod{d}"),
                pod_peers_key(r),
                SetKind::Addr {
                    family,
                    interval: false,
                },
                |c| {
                    peer_pods(c, r)
                        .into_iter()
                        .flat_map(|p| p.ips.iter().copied())
                        .filter(in_family)
                        .map(Element::Addr)
                        .collect()
                },
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
                |c| {
                    c.node_objects()
                        .filter(|n| node_sels.iter().any(|s| s.matches(&n.labels)))
                        .flat_map(|n| n.ips.iter().copied())
                        .filter(in_family)
                        .map(Element::Addr)
                        .collect()
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
    b.shared_set(
        &format!("anam{}", family_digit(family)),
        format!("{} named {named:?}", pod_peers_key(r)),
        SetKind::AddrProtoPort { family },
        |c| {
            let mut elements = BTreeSet::new();
            for p in peer_pods(c, r) {
                // A named port on a shared address resolves on no single
                // pod (as for NetworkPolicy named ports).
                for ip in p
                    .ips
                    .iter()
                    .filter(|ip| Family::of(ip) == family && c.claimants(**ip).len() < 2)
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
        },
    )
}
