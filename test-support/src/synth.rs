//! Synthetic clusters for benchmarks: a deterministic generator of
//! namespaces, pods and policies in realistic proportions (default-deny,
//! same-namespace allows, namespace selectors, ipBlocks, named ports,
//! DNS egress), so compile time and memory can be measured at scale and
//! compared run to run.

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
    /// The size the targets name: 20k pods, 2k namespaces, 5k
    /// policies, on 100 nodes.
    pub const LARGE: Shape = Shape {
        namespaces: 2000,
        pods: 20_000,
        policies: 5000,
        nodes: 100,
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
        match_labels: labels(kv).into_iter().collect(),
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
}
