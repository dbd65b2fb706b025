//! The benchmark's cluster: a server pod that a tenth of all policies
//! select, where only the last of those policies admits the client, so
//! every new flow from the client is judged after every other rule of the
//! server's chain (the worst case for a chain evaluated rule by rule).
//!
//! Node `node-1` (the measured node) holds the client, the server and 98
//! filler pods (about a full node); every policy's peers are pods of
//! their own on `node-2`, so each policy has a peer set of its own. The
//! addresses of the client and the server are the ones the benchmark's
//! network namespaces use.

use policy_compiler::admin::{Action, AdminKind, AdminPeer, AdminPolicy, AdminRule, Subject, Tier};
use policy_compiler::ir::{Ruleset, Verdict};
use policy_compiler::model::*;
use policy_compiler::selector::Selector;
use policy_compiler::Cluster;
use std::net::{IpAddr, Ipv4Addr};

pub const NODE: &str = "node-1";
pub const SERVER: (&str, &str) = ("app", "srv");
pub const CLIENT: (&str, &str) = ("app", "cli");
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
/// What the policies admit (TCP and UDP).
pub const PORT: u16 = 8080;
/// A port the server listens on that no policy admits: the benchmark
/// checks that every enforcing configuration really drops it.
pub const DENIED_PORT: u16 = 8081;
const FILLERS: usize = 49;

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn select(kv: &[(&str, &str)]) -> Selector {
    Selector {
        match_labels: labels(kv).into_iter().collect(),
        match_expressions: vec![],
    }
}

fn pod(namespace: &str, name: &str, app: &str, node: &str, ip: Ipv4Addr) -> Pod {
    Pod {
        namespace: namespace.into(),
        name: name.into(),
        labels: labels(&[("app", app)]),
        node_name: Some(node.into()),
        host_network: false,
        ips: vec![IpAddr::V4(ip)],
        named_ports: vec![],
        terminal: false,
    }
}

fn peer_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 245, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// `policies` policies (a multiple of 10 keeps "a tenth" exact). Policy
/// `i` with `i % 10 == 9` selects the server; the others select filler
/// pods. Each admits the pods labelled `app=peer-<i>` in any namespace on
/// TCP and UDP `PORT`, except the last server policy, which admits the
/// client.
pub fn cluster(policies: usize) -> Cluster {
    let mut c = Cluster::new();
    let namespaces = ["app", "a-fill", "z-fill", "peers"];
    for name in namespaces {
        c.apply_namespace(Namespace {
            name: name.into(),
            labels: labels(&[(NAMESPACE_NAME_LABEL, name)]),
        });
    }
    c.apply_pod(pod(SERVER.0, SERVER.1, "srv", NODE, SERVER_IP));
    c.apply_pod(pod(CLIENT.0, CLIENT.1, "cli", NODE, CLIENT_IP));
    // Fillers sort before and after `app`, so the server sits in the middle
    // of anything ordered by pod.
    for f in 0..2 * FILLERS {
        let ns = if f < FILLERS { "a-fill" } else { "z-fill" };
        let app = format!("fill-{}", f % FILLERS);
        let ip = Ipv4Addr::new(10, 244, 1, (20 + f) as u8);
        c.apply_pod(pod(ns, &format!("pod-{f:03}"), &app, NODE, ip));
    }
    let last_server = (0..policies).rev().find(|i| i % 10 == 9);
    let ports = Some(vec![
        PortSpec {
            protocol: Protocol::Tcp,
            port: PortRef::Range(PORT, PORT),
        },
        PortSpec {
            protocol: Protocol::Udp,
            port: PortRef::Range(PORT, PORT),
        },
    ]);
    for i in 0..policies {
        let peer_app = format!("peer-{i}");
        c.apply_pod(pod("peers", &peer_app, &peer_app, "node-2", peer_ip(i)));
        let (namespace, pod_selector) = if i % 10 == 9 {
            ("app", select(&[("app", "srv")]))
        } else {
            let ns = if i % 2 == 0 { "a-fill" } else { "z-fill" };
            (ns, select(&[("app", &format!("fill-{}", i % FILLERS))]))
        };
        let from = if Some(i) == last_server {
            select(&[("app", "cli")])
        } else {
            select(&[("app", &peer_app)])
        };
        c.apply_policy(Policy {
            namespace: namespace.into(),
            name: format!("pol-{i:05}"),
            pod_selector,
            ingress: Some(vec![PolicyRule {
                peers: Some(vec![Peer::Pods {
                    pod_selector: Some(from),
                    namespace_selector: Some(Selector::everything()),
                }]),
                ports: ports.clone(),
            }]),
            egress: None,
            audit: Default::default(),
        });
    }
    c
}

/// [`cluster`] plus `admin` ClusterNetworkPolicies of the admin tier whose
/// subject is the server: each denies ingress from the pods of its own
/// peer label, which the client does not carry, so the client's new flows
/// walk every admin rule and go on to the NetworkPolicy part.
pub fn with_admin(policies: usize, admin: usize) -> Cluster {
    let mut c = cluster(policies);
    for i in 0..admin {
        c.apply_admin_policy(AdminPolicy {
            kind: AdminKind::ClusterNetworkPolicy,
            name: format!("admin-{i:04}"),
            tier: Tier::Admin,
            priority: Some(i as u16),
            subject: Subject::Pods {
                namespaces: select(&[(NAMESPACE_NAME_LABEL, SERVER.0)]),
                pods: select(&[("app", "srv")]),
            },
            ingress: vec![AdminRule {
                name: String::new(),
                action: Action::Deny,
                peers: vec![AdminPeer::Pods {
                    namespaces: Selector::everything(),
                    pods: select(&[("app", &format!("peer-{i}"))]),
                }],
                ports: None,
            }],
            egress: vec![],
        });
    }
    c
}

/// The layout nftpol compiled before admin tiers were shared chains, for
/// comparison: each pod chain's `goto` to its shared admin chain replaced
/// by that chain's rules, a Pass and the tier's end going straight to the
/// pod's own NetworkPolicy part (or returning: the default allow).
pub fn inline_admin_tier(mut rs: Ruleset) -> Ruleset {
    let shared: std::collections::BTreeMap<String, Vec<policy_compiler::ir::Rule>> = rs
        .chains
        .iter()
        .filter(|(name, _)| policy_compiler::admin::compile::is_tier_chain(name))
        .map(|(name, c)| (name.clone(), c.rules.clone()))
        .collect();
    let passes = [Direction::Ingress, Direction::Egress]
        .map(policy_compiler::admin::compile::tier_pass_chain);
    let pod_chains: Vec<String> = rs
        .chains
        .keys()
        .filter(|n| n.starts_with("ing_") || n.starts_with("egr_"))
        .cloned()
        .collect();
    for name in pod_chains {
        let part = format!("{}p_{}", &name[..3], &name[4..]);
        let to_part = if rs.chains.contains_key(&part) {
            Verdict::Goto(part)
        } else {
            Verdict::Return
        };
        let chain = rs.chains.get_mut(&name).expect("listed chain");
        let mut rules = Vec::new();
        for r in chain.rules.drain(..) {
            match &r.verdict {
                Verdict::Goto(t) if shared.contains_key(t) && !passes.contains(t) => {
                    for mut a in shared[t].clone() {
                        if matches!(&a.verdict, Verdict::Goto(p) if passes.contains(p)) {
                            a.verdict = to_part.clone();
                        }
                        rules.push(a);
                    }
                }
                _ => rules.push(r),
            }
        }
        chain.rules = rules;
    }
    for name in shared.keys() {
        rs.chains.remove(name);
    }
    for p in &passes {
        rs.chains.remove(p);
    }
    rs.sets.retain(|name, _| !name.contains("_pass_"));
    rs
}
