//! One side of a flow under the admin tiers: the first admin (or
//! baseline) rule, in policy order then rule order, whose peers and ports
//! match. Stated on the model with the evaluator's own predicates
//! (`spec.rs`), independent of the compiler.
//!
//! A peer address several live pods claim is judged before each tier
//! ([`shared_peer`]): when the tier's rules would judge its claimants
//! differently, no one claimant's verdict can stand for the packet, so
//! the flow is denied (fails closed).

use super::spec;
use crate::admin::{Action, AdminPeer, AdminPolicy, AdminPort, Subject, Tier};
use crate::index::Cluster;
use crate::model::{Direction, Pod, Protocol};
use serde::Serialize;
use std::net::IpAddr;

/// An admin or baseline rule, as an auditor names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AdminRuleRef {
    pub tier: Tier,
    /// `Kind/name`.
    pub policy: String,
    pub direction: Direction,
    pub index: usize,
    /// The rule's own `name`, when it has one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rule_name: String,
    pub action: Action,
    /// The action as the policy's API spells it (Allow or Accept).
    pub action_word: &'static str,
}

impl std::fmt::Display for AdminRuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tier: {} {}[{}]",
            self.tier.word(),
            self.policy,
            self.direction.word(),
            self.index
        )?;
        if !self.rule_name.is_empty() {
            write!(f, " ({})", self.rule_name)?;
        }
        write!(f, " {}", self.action_word)
    }
}

/// Whether an admin policy's subject holds `pod` (a policy pod).
pub fn subject_selects(cluster: &Cluster, s: &Subject, pod: &Pod) -> bool {
    match s {
        Subject::Namespaces(ns) => {
            spec::selects(ns, &spec::namespace_labels(cluster, &pod.namespace))
        }
        Subject::Pods { namespaces, pods } => {
            spec::selects(namespaces, &spec::namespace_labels(cluster, &pod.namespace))
                && spec::selects(pods, &pod.labels)
        }
    }
}

fn peer_matches(cluster: &Cluster, peer: &AdminPeer, ip: IpAddr, pod: Option<&Pod>) -> bool {
    match peer {
        AdminPeer::All => true,
        AdminPeer::Networks(nets) => nets.iter().any(|n| n.contains(&ip)),
        AdminPeer::Nodes(sel) => cluster
            .node_objects()
            .any(|n| n.ips.contains(&ip) && spec::selects(sel, &n.labels)),
        AdminPeer::Namespaces(ns) => {
            pod.is_some_and(|p| spec::selects(ns, &spec::namespace_labels(cluster, &p.namespace)))
        }
        AdminPeer::Pods { namespaces, pods } => pod.is_some_and(|p| {
            spec::selects(namespaces, &spec::namespace_labels(cluster, &p.namespace))
                && spec::selects(pods, &p.labels)
        }),
    }
}

fn port_matches(p: &AdminPort, protocol: Protocol, port: u16, dst: Option<&Pod>) -> bool {
    match p {
        AdminPort::Range {
            protocol: pr,
            lo,
            hi,
        } => *pr == protocol && (*lo..=*hi).contains(&port),
        AdminPort::Named(name) => dst.is_some_and(|d| spec::named_port(d, name, protocol, port)),
    }
}

/// The policies of `tier` whose subject holds `pod`, in the order they
/// are checked: priority, then kind, then name (the order nftpol gives equal priorities, which
/// upstream leaves to the implementation).
fn policies_of<'c>(cluster: &'c Cluster, tier: Tier, pod: &Pod) -> Vec<&'c AdminPolicy> {
    let mut policies: Vec<&AdminPolicy> = cluster
        .admin_policies()
        .filter(|p| p.tier == tier && subject_selects(cluster, &p.subject, pod))
        .collect();
    policies.sort_by_key(|p| (p.priority.unwrap_or(u16::MAX), p.kind, p.name.clone()));
    policies
}

fn rule_ref(pol: &AdminPolicy, tier: Tier, direction: Direction, index: usize) -> AdminRuleRef {
    let r = &pol.rules(direction)[index];
    AdminRuleRef {
        tier,
        policy: pol.id(),
        direction,
        index,
        rule_name: r.name.clone(),
        action: r.action,
        action_word: r.action.api(pol.kind),
    }
}

/// When the peer address `peer_ip` is claimed by several live pods, the
/// first rule of `tier` for `pod` (whatever its action) that tells them
/// apart: its pod or namespace peers select some claimants but not all,
/// or it has egress named ports (they resolve per pod) and selects any.
/// Such a flow is denied before the tier is consulted: a packet from (to)
/// that address may belong to either claimant, and which one decides the
/// verdict.
pub(super) fn shared_peer(
    cluster: &Cluster,
    tier: Tier,
    pod: &Pod,
    direction: Direction,
    peer_ip: IpAddr,
) -> Option<(Vec<String>, AdminRuleRef)> {
    let claimants = spec::claimants(cluster, peer_ip);
    if claimants.len() < 2 {
        return None;
    }
    for pol in policies_of(cluster, tier, pod) {
        for (index, r) in pol.rules(direction).iter().enumerate() {
            let selected = claimants
                .iter()
                .filter(|c| {
                    r.peers.iter().any(|p| {
                        matches!(
                            p,
                            AdminPeer::All | AdminPeer::Namespaces(_) | AdminPeer::Pods { .. }
                        ) && peer_matches(cluster, p, peer_ip, Some(c))
                    })
                })
                .count();
            let named = direction == Direction::Egress
                && r.ports
                    .iter()
                    .flatten()
                    .any(|p| matches!(p, AdminPort::Named(_)));
            if selected > 0 && (named || selected < claimants.len()) {
                let names = claimants
                    .iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect();
                return Some((names, rule_ref(pol, tier, direction, index)));
            }
        }
    }
    None
}

/// The first rule of `tier` that matches `pod`'s side of the flow.
#[allow(clippy::too_many_arguments)]
pub(super) fn first_match(
    cluster: &Cluster,
    tier: Tier,
    pod: &Pod,
    direction: Direction,
    (peer_ip, peer_pod): (IpAddr, Option<&Pod>),
    port_owner: Option<&Pod>,
    protocol: Protocol,
    port: u16,
) -> Option<AdminRuleRef> {
    let policies = policies_of(cluster, tier, pod);
    for pol in policies {
        for (index, r) in pol.rules(direction).iter().enumerate() {
            let peer_ok = r
                .peers
                .iter()
                .any(|p| peer_matches(cluster, p, peer_ip, peer_pod));
            let port_ok = r.ports.as_ref().is_none_or(|ps| {
                ps.iter()
                    .any(|p| port_matches(p, protocol, port, port_owner))
            });
            if peer_ok && port_ok {
                return Some(rule_ref(pol, tier, direction, index));
            }
        }
    }
    None
}
