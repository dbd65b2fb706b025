//! Property tests: on generated clusters and policies, the compiled IR run
//! through the interpreter gives the same verdict as the semantic
//! evaluator for every (source, destination, protocol, port), IPv4 and
//! IPv6, pods on two nodes, the nodes themselves and addresses outside the
//! cluster. Clusters carry admin and baseline policies of both API
//! generations (ties in priority, Pass, node and network peers, named
//! ports) next to NetworkPolicies. Each
//! generated case checks a few hundred flows, so a run checks several
//! hundred thousand.

use crate::admin::*;
use crate::audit::{AuditOptions, DEFAULT_DENY, WOULD_DENY};
use crate::compile::{compile, compile_node_with};
use crate::eval::{allowed, Endpoint};
use crate::index::Cluster;
use crate::interp::{cluster_accepts, Packet};
use crate::ipblock::cidr_minus;
use crate::ir::{CtState, Family, Ruleset};
use crate::model::*;
use crate::selector::{Operator, Requirement, Selector};
use ipnet::IpNet;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub(crate) const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub(crate) const NODES: [&str; 2] = ["node-1", "node-2"];
pub(crate) const PORTS: [u16; 5] = [80, 81, 443, 8080, 9000];
pub(crate) const LABEL_KEYS: [&str; 3] = ["app", "tier", "team"];
pub(crate) const LABEL_VALUES: [&str; 3] = ["a", "b", "c"];
pub(crate) const PORT_NAMES: [&str; 2] = ["http", "metrics"];
/// A generated pod's named ports: (index into PORT_NAMES, protocol,
/// number), sorted, one port per name and protocol as in a valid pod.
pub(crate) fn named_ports(ports: &[(usize, Protocol, u16)]) -> Vec<NamedPort> {
    let mut named: Vec<NamedPort> = ports
        .iter()
        .map(|(n, protocol, port)| NamedPort {
            name: PORT_NAMES[*n].to_string(),
            protocol: *protocol,
            port: *port,
        })
        .collect();
    named.sort();
    named.dedup_by(|a, b| a.name == b.name && a.protocol == b.protocol);
    named
}
const EXTERNAL: [&str; 3] = ["192.168.7.1", "10.0.200.1", "fd99::1"];
/// Node addresses (IPv4, IPv6) of NODES, in order.
pub(crate) const NODE_IPS: [(&str, &str); 2] =
    [("172.18.0.2", "fc00::2"), ("172.18.0.3", "fc00::3")];
/// Networks for admin network peers: pods, nodes, outside.
const ADMIN_NETS: [&str; 6] = [
    "10.0.1.0/24",
    "10.0.0.0/8",
    "172.18.0.3/32",
    "fd00::100/120",
    "::/0",
    "192.168.0.0/16",
];

pub(crate) fn labels_strategy() -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(
        prop::sample::select(LABEL_KEYS.to_vec()).prop_map(str::to_string),
        prop::sample::select(LABEL_VALUES.to_vec()).prop_map(str::to_string),
        0..3,
    )
    .prop_map(Labels::from)
}

fn requirement_strategy() -> impl Strategy<Value = Requirement> {
    (
        prop::sample::select(LABEL_KEYS.to_vec()),
        prop::sample::select(vec![
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
        ]),
        proptest::collection::btree_set(
            prop::sample::select(LABEL_VALUES.to_vec()).prop_map(str::to_string),
            1..3,
        ),
    )
        .prop_map(|(key, operator, values)| Requirement {
            key: key.to_string(),
            operator,
            values: match operator {
                Operator::In | Operator::NotIn => values,
                _ => Default::default(),
            },
        })
}

pub(crate) fn selector_strategy() -> impl Strategy<Value = Selector> {
    (
        proptest::collection::btree_map(
            prop::sample::select(LABEL_KEYS.to_vec()).prop_map(str::to_string),
            prop::sample::select(LABEL_VALUES.to_vec()).prop_map(str::to_string),
            0..2,
        ),
        proptest::collection::vec(requirement_strategy(), 0..2),
    )
        .prop_map(|(match_labels, match_expressions)| Selector {
            match_labels: match_labels.into(),
            match_expressions,
        })
}

/// CIDRs that cut through the generated pod addresses in various ways.
const CIDRS: [(&str, &[&str]); 7] = [
    ("10.0.0.0/16", &["10.0.1.0/24"]),
    ("10.0.1.0/24", &[]),
    ("10.0.2.0/30", &["10.0.2.2/32"]),
    ("0.0.0.0/0", &["10.0.0.0/8"]),
    ("fd00::/64", &["fd00::200/120"]),
    ("::/0", &[]),
    ("192.168.0.0/16", &["192.168.7.0/24"]),
];

fn peer_strategy() -> impl Strategy<Value = Peer> {
    prop_oneof![
        (
            proptest::option::of(selector_strategy()),
            proptest::option::of(selector_strategy())
        )
            .prop_filter("a pod peer needs a selector", |(p, n)| p.is_some()
                || n.is_some())
            .prop_map(|(pod_selector, namespace_selector)| Peer::Pods {
                pod_selector,
                namespace_selector
            }),
        prop::sample::select(CIDRS.to_vec()).prop_map(|(cidr, except)| {
            let cidr: IpNet = cidr.parse().expect("valid test CIDR");
            let except: Vec<IpNet> = except
                .iter()
                .map(|e| e.parse().expect("valid test CIDR"))
                .collect();
            let ranges = cidr_minus(&cidr, &except);
            Peer::IpBlock {
                cidr,
                except,
                ranges,
            }
        }),
    ]
}

fn port_strategy() -> impl Strategy<Value = PortSpec> {
    (
        prop::sample::select(Protocol::ALL.to_vec()),
        prop_oneof![
            Just(PortRef::Any),
            prop::sample::select(PORTS.to_vec()).prop_map(|p| PortRef::Range(p, p)),
            (prop::sample::select(PORTS.to_vec()), 0u16..600)
                .prop_map(|(p, w)| PortRef::Range(p, p.saturating_add(w))),
            prop::sample::select(PORT_NAMES.to_vec()).prop_map(|n| PortRef::Named(n.into())),
        ],
    )
        .prop_map(|(protocol, port)| PortSpec { protocol, port })
}

fn rule_strategy() -> impl Strategy<Value = PolicyRule> {
    (
        proptest::option::of(proptest::collection::vec(peer_strategy(), 1..3)),
        proptest::option::of(proptest::collection::vec(port_strategy(), 1..3)),
    )
        .prop_map(|(peers, ports)| PolicyRule { peers, ports })
}

pub(crate) fn policy_strategy() -> impl Strategy<Value = Policy> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        selector_strategy(),
        proptest::option::of(proptest::collection::vec(rule_strategy(), 0..3)),
        proptest::option::of(proptest::collection::vec(rule_strategy(), 0..3)),
        prop::sample::select(vec![LogMode::Off, LogMode::Deny, LogMode::All]),
        // One policy in four is staged.
        0u8..4,
    )
        .prop_map(|(ns, pod_selector, ingress, egress, log, stage)| Policy {
            namespace: ns.to_string(),
            name: String::new(),
            pod_selector,
            ingress,
            egress,
            audit: Audit {
                log,
                staged: stage == 0,
            },
        })
}

#[derive(Clone, Debug)]
struct PodGen {
    namespace: &'static str,
    labels: Labels,
    node: usize,
    v4: bool,
    v6: bool,
    host_network: bool,
    ports: Vec<(usize, Protocol, u16)>,
    /// Take the addresses of an earlier pod (this index modulo the pods
    /// before it) on its node: an IP reused while the old pod is still
    /// listed, which must fail closed in the kernel and the evaluator alike.
    share: Option<usize>,
}

fn pod_strategy() -> impl Strategy<Value = PodGen> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        labels_strategy(),
        0..NODES.len(),
        prop_oneof![Just((true, true)), Just((true, false)), Just((false, true))],
        prop::bool::weighted(0.05),
        proptest::collection::vec(
            (
                0..PORT_NAMES.len(),
                prop::sample::select(Protocol::ALL.to_vec()),
                prop::sample::select(PORTS.to_vec()),
            ),
            0..3,
        ),
        prop::option::weighted(0.15, 0..8usize),
    )
        .prop_map(
            |(namespace, labels, node, (v4, v6), host_network, ports, share)| PodGen {
                namespace,
                labels,
                node,
                v4,
                v6,
                host_network,
                ports,
                share,
            },
        )
}

fn admin_peer_strategy(egress: bool) -> BoxedStrategy<AdminPeer> {
    let pods = prop_oneof![
        selector_strategy().prop_map(AdminPeer::Namespaces),
        (selector_strategy(), selector_strategy())
            .prop_map(|(namespaces, pods)| AdminPeer::Pods { namespaces, pods }),
    ];
    if !egress {
        return pods.boxed();
    }
    prop_oneof![
        4 => pods,
        1 => selector_strategy().prop_map(AdminPeer::Nodes),
        1 => proptest::collection::vec(prop::sample::select(ADMIN_NETS.to_vec()), 1..3)
            .prop_map(|v| AdminPeer::Networks(v.iter().map(|n| n.parse().expect("net")).collect())),
        1 => Just(AdminPeer::All),
    ]
    .boxed()
}

fn admin_port_strategy() -> impl Strategy<Value = AdminPort> {
    prop_oneof![
        (
            prop::sample::select(Protocol::ALL.to_vec()),
            prop::sample::select(PORTS.to_vec())
        )
            .prop_map(|(protocol, p)| AdminPort::Range {
                protocol,
                lo: p,
                hi: p
            }),
        (
            prop::sample::select(Protocol::ALL.to_vec()),
            prop::sample::select(PORTS.to_vec()),
            0u16..600
        )
            .prop_map(|(protocol, p, w)| AdminPort::Range {
                protocol,
                lo: p,
                hi: p.saturating_add(w)
            }),
        prop::sample::select(PORT_NAMES.to_vec()).prop_map(|n| AdminPort::Named(n.into())),
    ]
}

fn admin_rule_strategy(egress: bool, baseline_v1: bool) -> impl Strategy<Value = AdminRule> {
    let actions = if baseline_v1 {
        vec![Action::Accept, Action::Deny]
    } else {
        vec![Action::Accept, Action::Deny, Action::Pass]
    };
    (
        prop::sample::select(actions),
        proptest::collection::vec(admin_peer_strategy(egress), 1..3),
        proptest::option::of(proptest::collection::vec(admin_port_strategy(), 1..3)),
    )
        .prop_map(|(action, peers, mut ports)| {
            // Named ports exist only on pods (the API rejects the mix).
            if peers
                .iter()
                .any(|p| matches!(p, AdminPeer::Nodes(_) | AdminPeer::Networks(_)))
            {
                if let Some(ps) = &mut ports {
                    ps.retain(|p| !matches!(p, AdminPort::Named(_)));
                    if ps.is_empty() {
                        ports = None;
                    }
                }
            }
            AdminRule {
                name: String::new(),
                action,
                peers,
                ports,
            }
        })
}

pub(crate) fn admin_policy_strategy() -> impl Strategy<Value = AdminPolicy> {
    (
        prop::sample::select(vec![
            (AdminKind::ClusterNetworkPolicy, Tier::Admin),
            (AdminKind::ClusterNetworkPolicy, Tier::Baseline),
            (AdminKind::AdminNetworkPolicy, Tier::Admin),
            (AdminKind::BaselineAdminNetworkPolicy, Tier::Baseline),
        ]),
        // Few priorities, so ties happen.
        0u16..3,
        prop_oneof![
            selector_strategy().prop_map(Subject::Namespaces),
            (selector_strategy(), selector_strategy())
                .prop_map(|(namespaces, pods)| Subject::Pods { namespaces, pods }),
        ],
        any::<u64>(),
    )
        .prop_flat_map(|((kind, tier), priority, subject, seed)| {
            let v1b = kind == AdminKind::BaselineAdminNetworkPolicy;
            (
                proptest::collection::vec(admin_rule_strategy(false, v1b), 0..3),
                proptest::collection::vec(admin_rule_strategy(true, v1b), 0..3),
            )
                .prop_map(move |(ingress, egress)| AdminPolicy {
                    kind,
                    name: format!("a{seed}"),
                    tier,
                    priority: (!v1b).then_some(priority),
                    subject: subject.clone(),
                    ingress,
                    egress,
                })
        })
}

pub(crate) fn cluster_strategy() -> impl Strategy<Value = Cluster> {
    (
        proptest::collection::vec(labels_strategy(), NAMESPACES.len()),
        proptest::collection::vec(pod_strategy(), 2..8),
        proptest::collection::vec(policy_strategy(), 0..5),
        proptest::collection::vec(admin_policy_strategy(), 0..4),
        proptest::collection::vec(labels_strategy(), NODES.len()),
    )
        .prop_map(|(ns_labels, pods, policies, admin, node_labels)| {
            let mut c = Cluster::new();
            for (name, mut labels) in NAMESPACES.iter().zip(ns_labels) {
                labels.insert(NAMESPACE_NAME_LABEL.into(), name.to_string());
                c.apply_namespace(Namespace {
                    name: name.to_string(),
                    labels,
                });
            }
            // (node, address index) of each pod, for sharing.
            let mut placed: Vec<(usize, usize)> = Vec::new();
            for (i, mut g) in pods.into_iter().enumerate() {
                let slot = match g.share {
                    Some(k) if i > 0 => placed[k % i],
                    _ => (g.node, i),
                };
                g.node = slot.0;
                placed.push(slot);
                let mut ips = Vec::new();
                // Pods of node N live in 10.0.N.0/24 and fd00::N00/120.
                if g.v4 {
                    ips.push(
                        format!("10.0.{}.{}", g.node + 1, slot.1 + 1)
                            .parse()
                            .expect("ip"),
                    );
                }
                if g.v6 {
                    ips.push(
                        format!("fd00::{}{:02x}", g.node + 1, slot.1 + 1)
                            .parse()
                            .expect("ip"),
                    );
                }
                let named_ports = named_ports(&g.ports);
                c.apply_pod(Pod {
                    namespace: g.namespace.to_string(),
                    name: format!("p{i}"),
                    labels: g.labels,
                    node_name: Some(NODES[g.node].to_string()),
                    host_network: g.host_network,
                    ips,
                    named_ports,
                    terminal: false,
                });
            }
            for (i, mut p) in policies.into_iter().enumerate() {
                p.name = format!("pol{i}");
                c.apply_policy(p);
            }
            for (i, mut p) in admin.into_iter().enumerate() {
                p.name = if p.kind == AdminKind::BaselineAdminNetworkPolicy {
                    "default".into()
                } else {
                    format!("adm{i}")
                };
                c.apply_admin_policy(p);
            }
            for ((name, (v4, v6)), labels) in NODES.iter().zip(NODE_IPS).zip(node_labels) {
                c.apply_node(Node {
                    name: name.to_string(),
                    labels,
                    ips: vec![v4.parse().expect("ip"), v6.parse().expect("ip")],
                });
            }
            c
        })
}

fn endpoints(c: &Cluster) -> Vec<Endpoint> {
    let mut v: Vec<Endpoint> = c
        .pods()
        .filter(|p| p.is_policy_pod())
        .map(|p| Endpoint::pod(&p.namespace, &p.name))
        .collect();
    v.extend(
        EXTERNAL
            .iter()
            .chain(NODE_IPS.iter().flat_map(|(a, b)| [a, b]))
            .map(|ip| Endpoint::Ip(ip.parse().expect("ip"))),
    );
    v
}

fn address(c: &Cluster, e: &Endpoint, family: Family) -> Option<IpAddr> {
    match e {
        Endpoint::Ip(ip) => (Family::of(ip) == family).then_some(*ip),
        Endpoint::Pod { namespace, name } => c
            .pod(namespace, name)?
            .ips
            .iter()
            .copied()
            .find(|ip| Family::of(ip) == family),
    }
}

fn has_admin_pod_peers(c: &Cluster) -> bool {
    c.admin_policies().any(|p| {
        p.ingress
            .iter()
            .chain(&p.egress)
            .flat_map(|r| &r.peers)
            .any(|peer| matches!(peer, AdminPeer::Namespaces(_) | AdminPeer::Pods { .. }))
    })
}

/// Checks every flow; returns how many were checked. The rulesets log
/// (every policy's own mode, and a node-wide mode that varies with the
/// case) and hold staged policies, and still must decide exactly as the
/// evaluator does without them; what they log must be what the
/// evaluator says the staged policies would deny.
fn check_cluster(c: &Cluster) -> Result<usize, TestCaseError> {
    let opts = AuditOptions {
        log: [LogMode::Off, LogMode::Deny, LogMode::All][c.pod_count() % 3],
        ..AuditOptions::default()
    };
    let rulesets: BTreeMap<String, Ruleset> = NODES
        .iter()
        .map(|n| {
            let rs = compile_node_with(c, n, &crate::NodeNet::default(), &opts);
            (n.to_string(), rs)
        })
        .collect();
    let as_if = c.with_staged_enforced();
    let eps = endpoints(c);
    let mut checked = 0;
    for src in &eps {
        for dst in &eps {
            if src == dst || (matches!(src, Endpoint::Ip(_)) && matches!(dst, Endpoint::Ip(_))) {
                continue;
            }
            for family in [Family::Ipv4, Family::Ipv6] {
                let (Some(s), Some(d)) = (address(c, src, family), address(c, dst, family)) else {
                    continue;
                };
                for proto in Protocol::ALL {
                    for port in PORTS {
                        let want = allowed(c, src, dst, family, proto, port)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        let pkt = Packet {
                            saddr: s,
                            daddr: d,
                            proto: proto.number(),
                            dport: port,
                            ct: CtState::New,
                            hoplimit: 64,
                            ct_saddrs: None,
                        };
                        let got = cluster_accepts(c, &rulesets, &pkt);
                        check_logs(c, as_if.as_ref(), &rulesets, (src, dst), &pkt, &want)?;
                        prop_assert_eq!(
                            got,
                            want.allowed,
                            "{} -> {} {}/{:?} {:?}: ruleset says {}, semantics say {:?}\n{:#?}\n{:#?}",
                            src,
                            dst,
                            port,
                            proto,
                            family,
                            got,
                            want,
                            c.policies().collect::<Vec<_>>(),
                            c.admin_policies().collect::<Vec<_>>()
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    Ok(checked)
}

/// What the log rules report for one flow, on the destination pod's node
/// (where the flow meets the ingress chain, after the source's egress
/// chain when the source is local too): a `would-deny` of ingress exactly
/// when the staged policies would deny it and no enforced one isolates
/// the pod; a `default-deny` only for a packet the ruleset drops.
fn check_logs(
    c: &Cluster,
    as_if: Option<&Cluster>,
    rulesets: &BTreeMap<String, Ruleset>,
    (src, dst): (&Endpoint, &Endpoint),
    pkt: &Packet,
    want: &crate::eval::Decision,
) -> Result<(), TestCaseError> {
    use crate::eval::SideVerdict;
    let Endpoint::Pod { namespace, name } = dst else {
        return Ok(());
    };
    let Some(node) = c.pod(namespace, name).and_then(|p| p.node_name.clone()) else {
        return Ok(());
    };
    if c.claimants(pkt.daddr).len() > 1 || c.claimants(pkt.saddr).len() > 1 {
        return Ok(());
    }
    let t = crate::interp::trace(&rulesets[&node], crate::compile::CHAIN_FORWARD, pkt);
    let prefixes = t.log_prefixes();
    if prefixes.iter().any(|p| p.ends_with(DEFAULT_DENY)) {
        prop_assert!(
            !t.accepted,
            "default-deny logged for an accepted packet: {t:?}"
        );
    }
    let logged = prefixes
        .iter()
        .any(|p| p.ends_with(&format!("ingress {WOULD_DENY}")));
    let src_local = match src {
        Endpoint::Pod { namespace, name } => c
            .pod(namespace, name)
            .is_some_and(|p| p.node_name.as_deref() == Some(node.as_str())),
        Endpoint::Ip(_) => false,
    };
    let reaches_ingress = !src_local || want.egress.allows();
    let expected = match as_if {
        None => false,
        Some(as_if) => {
            let staged = allowed(
                as_if,
                src,
                dst,
                Family::of(&pkt.saddr),
                Protocol::from_number(pkt.proto).expect("proto"),
                pkt.dport,
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            reaches_ingress
                && matches!(staged.ingress, SideVerdict::Denied { .. })
                && !matches!(
                    want.ingress,
                    SideVerdict::Denied { .. } | SideVerdict::Allowed { .. }
                )
                && !matches!(staged.ingress, SideVerdict::Tier { .. })
        }
    };
    prop_assert_eq!(
        logged,
        expected,
        "would-deny of ingress {} -> {}: {:?} {:?}",
        src,
        dst,
        t,
        want
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn compiled_ruleset_agrees_with_semantics(c in cluster_strategy()) {
        check_cluster(&c)?;
    }

    #[test]
    fn compile_is_deterministic(c in cluster_strategy()) {
        for n in NODES {
            let a = crate::render::render_script(&compile(&c, n));
            let rebuilt = Cluster::from_objects(
                c.namespaces().cloned().map(crate::manifest::Object::Namespace)
                    .chain(c.pods().rev().cloned().map(crate::manifest::Object::Pod))
                    .chain(c.policies().rev().cloned().map(crate::manifest::Object::Policy))
                    .chain(c.admin_policies().rev().cloned().map(crate::manifest::Object::AdminPolicy))
                    .chain(c.node_objects().rev().cloned().map(crate::manifest::Object::Node)),
            );
            prop_assert_eq!(a, crate::render::render_script(&compile(&rebuilt, n)));
        }
    }
}

/// Replies of allowed connections pass by conntrack, and a new connection
/// the evaluator denies is dropped even when the reverse is allowed.
#[test]
fn established_replies_pass() {
    let text = include_str!("../../examples/policies/01-web-allow.yaml");
    let loaded = crate::manifest::parse("01-web-allow.yaml", text);
    assert!(loaded.errors.is_empty());
    let c = Cluster::from_objects(loaded.objects);
    let rs = compile(&c, "node-1");
    let app: IpAddr = "10.244.1.10".parse().expect("ip");
    let untrusted: IpAddr = "10.244.2.21".parse().expect("ip");
    let mut pkt = Packet {
        saddr: app,
        daddr: untrusted,
        proto: crate::ir::l4::TCP,
        dport: 80,
        ct: CtState::New,
        hoplimit: 64,
        ct_saddrs: None,
    };
    assert!(!crate::interp::hook_accepts(&rs, "forward", &pkt));
    pkt.ct = CtState::Established;
    assert!(crate::interp::hook_accepts(&rs, "forward", &pkt));
}

#[test]
fn generated_cases_check_many_flows() {
    // Guards against a generator that silently checks nothing.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut total = 0;
    let mut shared = 0;
    let mut shared_admin = 0;
    for _ in 0..20 {
        let c = cluster_strategy()
            .new_tree(&mut runner)
            .expect("generate")
            .current();
        total += check_cluster(&c).expect("agree");
        let has_shared = !c.shared_addresses().is_empty();
        shared += usize::from(has_shared);
        shared_admin += usize::from(has_shared && has_admin_pod_peers(&c));
    }
    assert!(total > 2000, "only {total} flows checked");
    assert!(
        shared > 0,
        "no generated cluster had two live pods sharing an address whose flows were checked"
    );
    assert!(
        shared_admin > 0,
        "no generated cluster had a shared address next to admin pod or namespace peers"
    );
}
