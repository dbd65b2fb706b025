//! Synthetic clusters for benchmarks: a deterministic generator of
//! namespaces, pods and policies in realistic proportions (default-deny,
//! same-namespace allows, namespace selectors, ipBlocks, named ports,
//! DNS egress), plus Nodes and admin policies of both API generations
//! and tiers, so compile time and memory can be measured at scale and
//! compared run to run.

use policy_compiler::admin::{
    Action, AdminKind, AdminPeer, AdminPolicy, AdminPort, AdminRule, Node, Subject, Tier,
};
use policy_compiler::ipblock::cidr_minus;
use policy_compiler::model::*;
use policy_compiler::selector::{Operator, Requirement, Selector};
use policy_compiler::Cluster;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Sizes of a synthetic cluster.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub namespaces: usize,
    pub pods: usize,
    pub policies: usize,
    pub nodes: usize,
}

impl Shape {
    /// The cluster the compiler and agent benchmarks measure
    /// (docs/BENCHMARKS.md): 20k pods, 2k namespaces, 5k policies, on 100
    /// nodes.
    pub const LARGE: Shape = Shape {
        namespaces: 2000,
        pods: 20_000,
        policies: 5000,
        nodes: 100,
    };

    /// The Kubernetes scalability limits: 150k pods on 5k nodes, with
    /// 10k namespaces and 20k policies.
    pub const LIMITS: Shape = Shape {
        namespaces: 10_000,
        pods: 150_000,
        policies: 20_000,
        nodes: 5000,
    };
}

pub fn node_name(i: usize) -> String {
    format!("node-{i:03}")
}

pub fn pod_ipv4(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + k as u32 + 1))
}

fn labels(kv: &[(&str, String)]) -> Labels {
    kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn sel(kv: &[(&str, String)]) -> Selector {
    Selector {
        match_labels: kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        match_expressions: vec![],
    }
}

/// A pod as the generator makes it (the benchmarks add and relabel them).
pub fn pod(shape: Shape, k: usize) -> Pod {
    let ns = k % shape.namespaces;
    let mut ips = vec![pod_ipv4(k)];
    if k % 10 == 0 {
        ips.push(IpAddr::V6(Ipv6Addr::from(
            0xfd00u128 << 112 | (k as u128 + 1),
        )));
    }
    Pod {
        namespace: format!("ns-{ns:04}"),
        name: format!("pod-{k:05}"),
        labels: labels(&[
            ("app", format!("app-{}", (k / shape.namespaces) % 5)),
            ("tier", ["web", "api", "db"][k % 3].to_string()),
        ]),
        node_name: Some(node_name(k % shape.nodes)),
        host_network: false,
        ips,
        named_ports: vec![NamedPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080 + (k % 3) as u16,
        }],
        terminal: false,
    }
}

/// Policy number `i`, one of six common kinds.
pub fn policy(shape: Shape, i: usize) -> Policy {
    let ns = i % shape.namespaces;
    let namespace = format!("ns-{ns:04}");
    let name = format!("pol-{i:05}");
    let app = |j: usize| ("app", format!("app-{}", j % 5));
    let rule = |peers: Option<Vec<Peer>>, ports: Option<Vec<PortSpec>>| PolicyRule { peers, ports };
    let tcp = |p: u16| PortSpec {
        protocol: Protocol::Tcp,
        port: PortRef::Range(p, p),
    };
    let pods = |pod_selector: Option<Selector>, namespace_selector: Option<Selector>| Peer::Pods {
        pod_selector,
        namespace_selector,
    };
    let (pod_selector, ingress, egress) = match i % 6 {
        0 => (Selector::everything(), Some(vec![]), None),
        1 => (
            sel(&[app(i)]),
            Some(vec![rule(
                Some(vec![pods(Some(sel(&[app(i + 1)])), None)]),
                Some(vec![tcp(80), tcp(443)]),
            )]),
            None,
        ),
        2 => (
            sel(&[("tier", "db".into())]),
            Some(vec![rule(
                Some(vec![pods(
                    Some(sel(&[("tier", "api".into())])),
                    Some(Selector {
                        match_labels: Default::default(),
                        match_expressions: vec![Requirement {
                            key: "team".into(),
                            operator: Operator::In,
                            values: [format!("team-{}", i % 40)].into(),
                        }],
                    }),
                )]),
                Some(vec![tcp(5432)]),
            )]),
            None,
        ),
        3 => {
            let cidr = "10.0.0.0/8".parse().expect("static CIDR");
            let except = vec!["10.0.64.0/18".parse().expect("static CIDR")];
            let ranges = cidr_minus(&cidr, &except);
            (
                sel(&[app(i)]),
                None,
                Some(vec![rule(
                    Some(vec![Peer::IpBlock {
                        cidr,
                        except,
                        ranges,
                    }]),
                    Some(vec![PortSpec {
                        protocol: Protocol::Tcp,
                        port: PortRef::Range(8000, 8999),
                    }]),
                )]),
            )
        }
        4 => (
            sel(&[("tier", "web".into())]),
            Some(vec![rule(
                None,
                Some(vec![PortSpec {
                    protocol: Protocol::Tcp,
                    port: PortRef::Named("http".into()),
                }]),
            )]),
            None,
        ),
        _ => (
            Selector::everything(),
            None,
            Some(vec![rule(
                Some(vec![pods(
                    Some(sel(&[("k8s-app", "kube-dns".into())])),
                    Some(sel(&[(NAMESPACE_NAME_LABEL, "kube-system".into())])),
                )]),
                Some(vec![
                    PortSpec {
                        protocol: Protocol::Udp,
                        port: PortRef::Range(53, 53),
                    },
                    tcp(53),
                ]),
            )]),
        ),
    };
    Policy {
        namespace,
        name,
        pod_selector,
        ingress,
        egress,
        audit: Default::default(),
    }
}

/// The whole cluster, the same for the same shape.
pub fn cluster(shape: Shape) -> Cluster {
    let mut c = Cluster::new();
    for n in 0..shape.namespaces {
        let name = format!("ns-{n:04}");
        c.apply_namespace(Namespace {
            labels: labels(&[
                (NAMESPACE_NAME_LABEL, name.clone()),
                ("team", format!("team-{}", n % 40)),
                ("env", ["prod", "staging", "dev"][n % 3].to_string()),
            ]),
            name,
        });
    }
    for k in 0..shape.pods {
        c.apply_pod(pod(shape, k));
    }
    for i in 0..shape.policies {
        c.apply_policy(policy(shape, i));
    }
    c
}

/// Node `i`: zone and role labels, an IPv4 and an IPv6 address.
pub fn node(i: usize) -> Node {
    let mut labels = labels(&[
        ("kubernetes.io/os", "linux".into()),
        ("topology.kubernetes.io/zone", format!("zone-{}", i % 3)),
    ]);
    if i < 3 {
        labels.insert(
            "node-role.kubernetes.io/control-plane".into(),
            String::new(),
        );
    }
    Node {
        name: node_name(i),
        labels,
        ips: vec![
            IpAddr::V4(Ipv4Addr::new(
                192,
                168,
                (i / 250) as u8,
                (i % 250) as u8 + 1,
            )),
            IpAddr::V6(Ipv6Addr::from(0xfd00_0001u128 << 96 | (i as u128 + 1))),
        ],
    }
}

/// Admin policy number `i`, in the proportions a cluster administrator
/// writes them: policy 0 is the one BaselineAdminNetworkPolicy
/// (`default`); the rest alternate AdminNetworkPolicy and
/// ClusterNetworkPolicy (one in five of those in the Baseline tier).
/// Subjects: 1% cluster-wide (monitoring, DNS, metadata service, API
/// server), 20% a team's namespaces, 9% some pods of one namespace, the
/// rest one namespace. One to three rules each, actions cycling through
/// Accept, Deny and (admin tier) Pass; peers by namespace name, team,
/// environment and pod label, node label and CIDR networks (both
/// families); ports none, numbers, a range or the named port `http`.
pub fn admin_policy(shape: Shape, i: usize) -> AdminPolicy {
    let (kind, tier, name) = match i {
        0 => (
            AdminKind::BaselineAdminNetworkPolicy,
            Tier::Baseline,
            "default".to_string(),
        ),
        _ if i % 2 == 1 => (
            AdminKind::AdminNetworkPolicy,
            Tier::Admin,
            format!("anp-{i:04}"),
        ),
        _ if i % 10 == 0 => (
            AdminKind::ClusterNetworkPolicy,
            Tier::Baseline,
            format!("cnp-{i:04}"),
        ),
        _ => (
            AdminKind::ClusterNetworkPolicy,
            Tier::Admin,
            format!("cnp-{i:04}"),
        ),
    };
    let ns_name = |j: usize| {
        sel(&[(
            NAMESPACE_NAME_LABEL,
            format!("ns-{:04}", j % shape.namespaces),
        )])
    };
    let team = |j: usize| sel(&[("team", format!("team-{}", j % 40))]);
    let env = |j: usize| Selector {
        match_labels: Default::default(),
        match_expressions: vec![Requirement {
            key: "env".into(),
            operator: Operator::In,
            values: [["prod", "staging", "dev"][j % 3].to_string()].into(),
        }],
    };
    let tier_label = |j: usize| sel(&[("tier", ["web", "api", "db"][j % 3].to_string())]);
    let subject = match i % 100 {
        1..=1 => Subject::Namespaces(Selector::everything()),
        2..=21 => Subject::Namespaces(team(i)),
        22..=30 => Subject::Pods {
            namespaces: ns_name(i * 7),
            pods: tier_label(i),
        },
        _ => Subject::Namespaces(ns_name(i * 7)),
    };
    let peer = |j: usize| match j % 6 {
        0 => AdminPeer::Namespaces(ns_name(j * 13)),
        1 => AdminPeer::Namespaces(team(j)),
        2 => AdminPeer::Pods {
            namespaces: env(j),
            pods: sel(&[("app", format!("app-{}", j % 5))]),
        },
        3 => AdminPeer::Nodes(sel(&[(
            "topology.kubernetes.io/zone",
            format!("zone-{}", j % 3),
        )])),
        4 => AdminPeer::Networks(vec![
            format!("172.{}.0.0/16", 16 + j % 16)
                .parse()
                .expect("generated CIDR"),
            format!("fd00:{:x}::/32", j % 4096)
                .parse()
                .expect("generated CIDR"),
        ]),
        _ => AdminPeer::Pods {
            namespaces: ns_name(j * 3),
            pods: tier_label(j),
        },
    };
    let ports = |j: usize| match j % 5 {
        0 => None,
        1 => Some(vec![AdminPort::Range {
            protocol: Protocol::Tcp,
            lo: 443,
            hi: 443,
        }]),
        2 => Some(vec![
            AdminPort::Range {
                protocol: Protocol::Udp,
                lo: 53,
                hi: 53,
            },
            AdminPort::Range {
                protocol: Protocol::Tcp,
                lo: 53,
                hi: 53,
            },
        ]),
        3 => Some(vec![AdminPort::Named("http".into())]),
        _ => Some(vec![AdminPort::Range {
            protocol: Protocol::Tcp,
            lo: 8000,
            hi: 8999,
        }]),
    };
    let actions: &[Action] = match tier {
        Tier::Admin => &[Action::Accept, Action::Deny, Action::Pass],
        Tier::Baseline => &[Action::Accept, Action::Deny],
    };
    let rules = |direction: usize| -> Vec<AdminRule> {
        (0..1 + (i + direction) % 3)
            .map(|r| {
                let j = i * 7 + direction * 3 + r;
                // Node and network peers exist for egress only.
                let mut p = peer(j);
                if direction == 0 && matches!(p, AdminPeer::Nodes(_) | AdminPeer::Networks(_)) {
                    p = AdminPeer::Namespaces(team(j));
                }
                let mut q = ports(j / 6);
                // Named ports with node or network peers are refused.
                if matches!(p, AdminPeer::Nodes(_) | AdminPeer::Networks(_))
                    && matches!(q.as_deref(), Some([AdminPort::Named(_)]))
                {
                    q = None;
                }
                AdminRule {
                    name: format!("rule-{r}"),
                    action: actions[j % actions.len()],
                    peers: vec![p],
                    ports: q,
                }
            })
            .collect()
    };
    AdminPolicy {
        kind,
        name,
        tier,
        priority: (kind != AdminKind::BaselineAdminNetworkPolicy).then_some((i % 1000) as u16),
        subject,
        ingress: rules(0),
        egress: rules(1),
    }
}

/// [`cluster`] plus a Node object per node and `admin` admin policies
/// ([`admin_policy`]).
pub fn cluster_with_admin(shape: Shape, admin: usize) -> Cluster {
    let mut c = cluster(shape);
    for i in 0..shape.nodes {
        c.apply_node(node(i));
    }
    for i in 0..admin {
        c.apply_admin_policy(admin_policy(shape, i));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_synthetic_cluster_compiles_with_isolated_pods() {
        let shape = Shape {
            namespaces: 20,
            pods: 200,
            policies: 50,
            nodes: 4,
        };
        let c = cluster(shape);
        assert_eq!(c.pod_count(), 200);
        assert_eq!(c.policy_count(), 50);
        let rs = policy_compiler::compile(&c, &node_name(1));
        assert!(rs.chains.len() > 10, "{} chains", rs.chains.len());
        assert!(rs.element_count() > 20);
    }

    #[test]
    fn admin_policies_mix_kinds_tiers_actions_and_peers() {
        let shape = Shape {
            namespaces: 20,
            pods: 200,
            policies: 50,
            nodes: 4,
        };
        let policies: Vec<AdminPolicy> = (0..60).map(|i| admin_policy(shape, i)).collect();
        let kinds: std::collections::BTreeSet<_> =
            policies.iter().map(|p| (p.kind, p.tier)).collect();
        assert_eq!(kinds.len(), 4, "{kinds:?}");
        let rules = || {
            policies
                .iter()
                .flat_map(|p| p.ingress.iter().chain(&p.egress))
        };
        for a in [Action::Accept, Action::Deny, Action::Pass] {
            assert!(rules().any(|r| r.action == a), "{a:?}");
        }
        assert!(rules().any(|r| matches!(r.peers[0], AdminPeer::Nodes(_))));
        assert!(rules().any(|r| matches!(r.peers[0], AdminPeer::Networks(_))));
        assert!(rules().any(|r| matches!(r.ports.as_deref(), Some([AdminPort::Named(_)]))));
        let c = cluster_with_admin(shape, 500);
        let plain = policy_compiler::compile(&cluster(shape), &node_name(1));
        let rs = policy_compiler::compile(&c, &node_name(1));
        assert!(
            rs.rule_count() > plain.rule_count() + 20,
            "{} rules with admin policies, {} without",
            rs.rule_count(),
            plain.rule_count()
        );
    }
}
