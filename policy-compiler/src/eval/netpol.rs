//! One side of a flow under NetworkPolicy v1: whether the policies that
//! select a pod isolate it in a direction, and which of their rules admit
//! the peer on the port.

use super::spec;
use super::{RuleRef, SideVerdict};
use crate::index::Cluster;
use crate::model::{Direction, Peer, Pod, Policy, PolicyRule, PortSpec, Protocol};
use std::net::IpAddr;

/// The rules of `policy` in `direction`, `None` when the policy does not
/// isolate that direction.
fn rules_of(policy: &Policy, direction: Direction) -> Option<&[PolicyRule]> {
    match direction {
        Direction::Ingress => policy.ingress.as_deref(),
        Direction::Egress => policy.egress.as_deref(),
    }
}

/// The verdict for `pod`'s side of a flow in `direction`. `peer` is the
/// other end (its address and, when policies can select it, the pod);
/// `port_owner` is the destination pod, on which named ports resolve.
pub(super) fn side(
    cluster: &Cluster,
    pod: &Pod,
    direction: Direction,
    (peer_ip, peer_pod): (IpAddr, Option<&Pod>),
    port_owner: Option<&Pod>,
    protocol: Protocol,
    port: u16,
) -> SideVerdict {
    let mut isolated_by = Vec::new();
    let mut rules = Vec::new();
    let selecting = cluster
        .policies()
        .filter(|p| !p.audit.staged)
        .filter(|p| p.namespace == pod.namespace && spec::selects(&p.pod_selector, &pod.labels));
    for pol in selecting {
        let Some(prules) = rules_of(pol, direction) else {
            continue;
        };
        let name = format!("{}/{}", pol.namespace, pol.name);
        for (index, r) in prules.iter().enumerate() {
            let peer_ok = r.peers.as_ref().is_none_or(|peers| {
                peers
                    .iter()
                    .any(|p| peer_admits(cluster, &pol.namespace, p, peer_ip, peer_pod))
            });
            let port_ok = r.ports.as_ref().is_none_or(|specs| {
                specs
                    .iter()
                    .any(|s| port_admits(s, protocol, port, port_owner))
            });
            if peer_ok && port_ok {
                rules.push(RuleRef {
                    policy: name.clone(),
                    direction,
                    index,
                });
            }
        }
        isolated_by.push(name);
    }
    if isolated_by.is_empty() {
        SideVerdict::NotIsolated
    } else if rules.is_empty() {
        SideVerdict::Denied { isolated_by }
    } else {
        SideVerdict::Allowed { rules }
    }
}

/// The verdict for a shared address (see [`SideVerdict::SharedAddress`]):
/// `None` when at most one pod claims `ip`.
pub(super) fn shared(cluster: &Cluster, ip: IpAddr, direction: Direction) -> Option<SideVerdict> {
    let claimants = spec::claimants(cluster, ip);
    if claimants.len() < 2 {
        return None;
    }
    // Any policy that would judge a claimant in this direction counts:
    // NetworkPolicy isolation, or an admin or baseline policy with rules
    // in this direction whose subject holds it.
    let isolated = claimants.iter().any(|pod| {
        cluster.policies().any(|p| {
            !p.audit.staged
                && p.namespace == pod.namespace
                && spec::selects(&p.pod_selector, &pod.labels)
                && rules_of(p, direction).is_some()
        }) || cluster.admin_policies().any(|p| {
            !p.rules(direction).is_empty()
                && super::admin::subject_selects(cluster, &p.subject, pod)
        })
    });
    Some(if isolated {
        SideVerdict::SharedAddress {
            claimed_by: claimants
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect(),
        }
    } else {
        SideVerdict::NotIsolated
    })
}

/// Whether one `from`/`to` entry of a policy in `policy_ns` admits the
/// peer at `ip` (`pod` when policies can select it).
fn peer_admits(
    cluster: &Cluster,
    policy_ns: &str,
    peer: &Peer,
    ip: IpAddr,
    pod: Option<&Pod>,
) -> bool {
    match peer {
        Peer::IpBlock { cidr, except, .. } => spec::in_ip_block(cidr, except, ip),
        Peer::Pods {
            pod_selector,
            namespace_selector,
        } => {
            let selected = |p: &Pod| {
                let namespace_ok = match namespace_selector {
                    None => p.namespace == policy_ns,
                    Some(sel) => spec::selects(sel, &spec::namespace_labels(cluster, &p.namespace)),
                };
                namespace_ok
                    && pod_selector
                        .as_ref()
                        .is_none_or(|sel| spec::selects(sel, &p.labels))
            };
            // A shared address stands for a selected peer only when every
            // pod claiming it is selected: sharing never widens an allow.
            let claimants = spec::claimants(cluster, ip);
            if claimants.len() > 1 {
                claimants.into_iter().all(selected)
            } else {
                pod.is_some_and(selected)
            }
        }
    }
}

/// Whether one `ports` entry admits (`protocol`, `port`) towards `dst`.
fn port_admits(s: &PortSpec, protocol: Protocol, port: u16, dst: Option<&Pod>) -> bool {
    use crate::model::PortRef;
    s.protocol == protocol
        && match &s.port {
            PortRef::Any => true,
            PortRef::Range(lo, hi) => (*lo..=*hi).contains(&port),
            PortRef::Named(name) => dst.is_some_and(|p| spec::named_port(p, name, protocol, port)),
        }
}
