//! The semantic evaluator: what upstream NetworkPolicy v1 semantics allow,
//! computed straight from the model objects and independent of the IR, so
//! it can judge the compiler (property tests, e2e) and explain a verdict to
//! an auditor with the policies and rules that decided it.
//!
//! It is an oracle, so it shares no semantic code with the compiler: it
//! matches selectors, tests ipBlock membership, resolves named ports and
//! decides which pods policies can select with its own predicates
//! (`spec.rs`), never with `Selector::matches`, the ipBlock ranges or
//! `Pod::resolve_port` the compiler uses. Tests in `spec.rs` hold both
//! sides to the same tables. `netpol.rs` owns the per-side verdict of
//! NetworkPolicy v1 and `admin.rs` the admin and baseline tiers; `side`
//! chains them: admin tier, NetworkPolicy, baseline tier, default allow.

pub mod admin;
mod netpol;
pub mod spec;

use crate::index::Cluster;
use crate::ir::Family;
use crate::model::*;
use serde::Serialize;
use std::net::IpAddr;

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Pod { namespace: String, name: String },
    Ip(IpAddr),
}

impl Endpoint {
    pub fn pod(namespace: &str, name: &str) -> Endpoint {
        Endpoint::Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
            Endpoint::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("pod {0} not found")]
    UnknownPod(String),
    #[error("{endpoint} has no {family:?} address")]
    NoAddress { endpoint: String, family: Family },
    #[error("{src} and {dst} share no address family")]
    NoCommonFamily { src: String, dst: String },
}

/// A rule of a policy, as an auditor names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RuleRef {
    /// `namespace/name`.
    pub policy: String,
    pub direction: Direction,
    pub index: usize,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}[{}]",
            self.policy,
            self.direction.word(),
            self.index
        )
    }
}

/// The verdict of one side (the source's egress or the destination's
/// ingress).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum SideVerdict {
    /// The endpoint is no pod a policy can select (outside the cluster, or
    /// a hostNetwork pod): policies do not restrict it.
    NotAPod,
    /// No policy selecting the pod isolates it in this direction.
    NotIsolated,
    /// A pod talking to itself: the packet never leaves the pod's network
    /// namespace, so no enforcer can see it (upstream's e2e expects it
    /// allowed too).
    SamePod,
    Allowed {
        rules: Vec<RuleRef>,
    },
    /// Isolated, and no rule of the isolating policies admits the flow.
    Denied {
        isolated_by: Vec<String>,
    },
    /// Several live pods claim the address and at least one of them is
    /// isolated in this direction: no single pod's policies can be applied,
    /// so the flow is denied (fails closed).
    SharedAddress {
        claimed_by: Vec<String>,
    },
    /// The peer's address is claimed by several live pods and an admin
    /// or baseline rule of this pod (`rule`) would judge them differently:
    /// no single claimant's verdict can apply, so the flow is denied
    /// (fails closed), whatever the tiers would say of any one claimant.
    SharedPeer {
        claimed_by: Vec<String>,
        rule: admin::AdminRuleRef,
    },
    /// An admin or baseline rule decided (Accept/Allow or Deny; a
    /// baseline Pass leaves the flow to the default allow).
    Tier {
        rule: admin::AdminRuleRef,
    },
}

impl SideVerdict {
    pub fn allows(&self) -> bool {
        match self {
            SideVerdict::Denied { .. }
            | SideVerdict::SharedAddress { .. }
            | SideVerdict::SharedPeer { .. } => false,
            SideVerdict::Tier { rule } => rule.action != crate::admin::Action::Deny,
            _ => true,
        }
    }
}

/// One side through every tier: a shared peer address the tier's rules
/// tell apart is denied before each admin tier; an admin Accept or Deny
/// decides; a Pass
/// (or no match) leaves it to NetworkPolicy; NetworkPolicy decides for
/// pods it isolates; otherwise the baseline tier; otherwise allowed.
fn side(
    cluster: &Cluster,
    pod: &Pod,
    direction: Direction,
    peer: (IpAddr, Option<&Pod>),
    port_owner: Option<&Pod>,
    protocol: Protocol,
    port: u16,
) -> SideVerdict {
    use crate::admin::{Action, Tier};
    let first = |tier| {
        admin::first_match(
            cluster, tier, pod, direction, peer, port_owner, protocol, port,
        )
    };
    let shared_peer = |tier| {
        admin::shared_peer(cluster, tier, pod, direction, peer.0)
            .map(|(claimed_by, rule)| SideVerdict::SharedPeer { claimed_by, rule })
    };
    if let Some(v) = shared_peer(Tier::Admin) {
        return v;
    }
    if let Some(rule) = first(Tier::Admin) {
        if rule.action != Action::Pass {
            return SideVerdict::Tier { rule };
        }
    }
    let np = netpol::side(cluster, pod, direction, peer, port_owner, protocol, port);
    if np != SideVerdict::NotIsolated {
        return np;
    }
    if let Some(v) = shared_peer(Tier::Baseline) {
        return v;
    }
    match first(Tier::Baseline) {
        Some(rule) => SideVerdict::Tier { rule },
        None => SideVerdict::NotIsolated,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub egress: SideVerdict,
    pub ingress: SideVerdict,
}

/// Resolves an endpoint to the address the packet carries and, for pods
/// that policies can select, the pod.
fn resolve<'c>(
    cluster: &'c Cluster,
    e: &Endpoint,
    family: Family,
) -> Result<(IpAddr, Option<&'c Pod>), EvalError> {
    match e {
        Endpoint::Ip(ip) => Ok((*ip, spec::policy_pod_by_ip(cluster, *ip))),
        Endpoint::Pod { namespace, name } => {
            let pod = cluster
                .pod(namespace, name)
                .ok_or_else(|| EvalError::UnknownPod(e.to_string()))?;
            let ip = pod
                .ips
                .iter()
                .copied()
                .find(|ip| Family::of(ip) == family)
                .ok_or_else(|| EvalError::NoAddress {
                    endpoint: e.to_string(),
                    family,
                })?;
            Ok((ip, spec::is_policy_pod(pod).then_some(pod)))
        }
    }
}

fn families(cluster: &Cluster, e: &Endpoint) -> Vec<Family> {
    match e {
        Endpoint::Ip(ip) => vec![Family::of(ip)],
        Endpoint::Pod { namespace, name } => cluster
            .pod(namespace, name)
            .map(|p| p.ips.iter().map(Family::of).collect())
            .unwrap_or_default(),
    }
}

/// The first address family both endpoints have (IPv4 first).
pub fn common_family(
    cluster: &Cluster,
    src: &Endpoint,
    dst: &Endpoint,
) -> Result<Family, EvalError> {
    let (a, b) = (families(cluster, src), families(cluster, dst));
    [Family::Ipv4, Family::Ipv6]
        .into_iter()
        .find(|f| a.contains(f) && b.contains(f))
        .ok_or_else(|| EvalError::NoCommonFamily {
            src: src.to_string(),
            dst: dst.to_string(),
        })
}

/// The verdict upstream semantics give a new connection from `src` to
/// `dst` on (`protocol`, `port`) over `family`.
pub fn allowed(
    cluster: &Cluster,
    src: &Endpoint,
    dst: &Endpoint,
    family: Family,
    protocol: Protocol,
    port: u16,
) -> Result<Decision, EvalError> {
    let (src_ip, src_pod) = resolve(cluster, src, family)?;
    let (dst_ip, dst_pod) = resolve(cluster, dst, family)?;
    if let (Some(a), Some(b)) = (src_pod, dst_pod) {
        if (&a.namespace, &a.name) == (&b.namespace, &b.name) {
            return Ok(Decision {
                allowed: true,
                src_ip,
                dst_ip,
                egress: SideVerdict::SamePod,
                ingress: SideVerdict::SamePod,
            });
        }
    }
    // Each side is judged by the policies of its own pod; named ports
    // resolve on the destination pod either way, and on no single pod at a
    // shared address.
    let port_owner = dst_pod.filter(|_| spec::claimants(cluster, dst_ip).len() < 2);
    let judge = |pod: Option<&Pod>, ip: IpAddr, direction, peer| match (
        pod,
        netpol::shared(cluster, ip, direction),
    ) {
        (_, Some(v)) => v,
        (None, None) => SideVerdict::NotAPod,
        (Some(pod), None) => side(cluster, pod, direction, peer, port_owner, protocol, port),
    };
    let egress = judge(src_pod, src_ip, Direction::Egress, (dst_ip, dst_pod));
    let ingress = judge(dst_pod, dst_ip, Direction::Ingress, (src_ip, src_pod));
    Ok(Decision {
        allowed: egress.allows() && ingress.allows(),
        src_ip,
        dst_ip,
        egress,
        ingress,
    })
}
